//! The trim every few row groups really hands glibc's scattered free pages back.
//!
//! Its own test binary, so this process runs nothing else: resident memory before and after
//! is this test's alone, and the process-wide row-group count starts at zero.

#![cfg(all(target_os = "linux", target_env = "gnu"))]

/// Resident bytes of this process now (`VmRSS`).
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .unwrap();
    kib * 1024
}

#[test]
fn every_fourth_row_group_returns_free_pages_held_between_live_blocks() {
    const BLOCK: usize = 48 << 10; // below glibc's mmap threshold: from the heap
    const BLOCKS: usize = 2_000; // about 94 MiB

    let mut blocks: Vec<Vec<u8>> = (0..BLOCKS).map(|i| vec![i as u8 | 1; BLOCK]).collect();
    // Free every other block: the holes sit between live blocks, so glibc cannot shrink the
    // heap from its top, and keeps the pages resident.
    let mut index = 0;
    blocks.retain(|_| {
        index += 1;
        index % 2 == 0
    });
    let before = resident_bytes();

    for _ in 0..3 {
        bamflow_engine::heap::row_group_written();
    }
    let after_three = resident_bytes();
    bamflow_engine::heap::row_group_written();
    let after_four = resident_bytes();

    let freed = (BLOCKS / 2 * BLOCK) as u64;
    assert!(
        before.saturating_sub(after_three) < freed / 4,
        "trimmed before the fourth row group: {before} -> {after_three}"
    );
    assert!(
        after_three.saturating_sub(after_four) > freed / 2,
        "the fourth row group returned too little: {after_three} -> {after_four} of {freed} freed"
    );
    assert_eq!(blocks.len(), BLOCKS / 2);
}
