//! glibc's mmap threshold stays where `fix_mmap_threshold` puts it.
//!
//! Its own test binary: the threshold is process-wide state that glibc changes as blocks are
//! freed, so nothing else may allocate large blocks in this process.

#![cfg(all(target_os = "linux", target_env = "gnu"))]

/// Bytes glibc currently has in mapped blocks.
fn mapped_bytes() -> usize {
    // SAFETY: `mallinfo2` only reads glibc's counters.
    unsafe { libc::mallinfo2() }.hblkhd
}

/// Freeing a 16 MiB mapped block would raise glibc's own threshold to 16 MiB, and a 6 MiB
/// buffer after it would come from the heap, where its pages stay when it is freed: the RSS
/// creep long reads showed. Fixed at 4 MiB, the 6 MiB buffer is still mapped.
#[test]
fn blocks_over_the_fixed_threshold_stay_mapped_after_a_larger_one_is_freed() {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
        return; // the operator's setting wins, and this test has nothing to check
    }
    assert!(bamflow_engine::heap::fix_mmap_threshold());

    drop(std::hint::black_box(vec![1u8; 16 << 20]));
    let before = mapped_bytes();
    let buffer = std::hint::black_box(vec![1u8; 6 << 20]);
    let mapped = mapped_bytes() - before;
    assert!(
        mapped >= 6 << 20,
        "a 6 MiB buffer was not mapped: {mapped} bytes more in mapped blocks"
    );
    drop(buffer);
}
