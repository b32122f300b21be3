//! glibc keeps freed memory at the top of its heap up to `raise_trim_threshold`'s 16 MiB.
//!
//! Its own test binary: the thresholds are process-wide state, and what glibc holds free
//! depends on every other allocation in the process.

#![cfg(all(target_os = "linux", target_env = "gnu"))]

/// Bytes glibc holds free in its arenas.
fn free_bytes() -> usize {
    // SAFETY: `mallinfo2` only reads glibc's counters.
    unsafe { libc::mallinfo2() }.fordblks
}

/// Free bytes glibc holds after a 3 MiB buffer (under the 4 MiB mmap threshold, so from the
/// heap) is made and freed, beyond what it held before.
fn kept_of_a_freed_buffer() -> usize {
    let before = free_bytes();
    drop(std::hint::black_box(vec![1u8; 3 << 20]));
    free_bytes().saturating_sub(before)
}

/// Freed at the top of the heap, the buffer's pages stay with glibc under the 16 MiB
/// threshold; at glibc's own 128 KiB they go back to the system at once, and the next row
/// group's buffers fault them in again.
#[test]
fn a_freed_buffer_under_the_trim_threshold_stays_with_glibc() {
    let operator = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]
        .iter()
        .any(|env| std::env::var_os(env).is_some());
    if operator {
        return; // the operator's settings win, and this test has nothing to check
    }
    assert!(bamflow_engine::heap::fix_mmap_threshold());
    assert!(bamflow_engine::heap::raise_trim_threshold());
    let kept = kept_of_a_freed_buffer();
    assert!(kept >= 2 << 20, "glibc kept {kept} bytes under 16 MiB");

    // glibc's own threshold again.
    // SAFETY: `mallopt` changes a malloc parameter and touches no memory of ours.
    let set = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 10) };
    assert_eq!(set, 1);
    let kept = kept_of_a_freed_buffer();
    assert!(kept < 1 << 20, "glibc kept {kept} bytes under 128 KiB");
}
