//! The process's allocator: the system's, except that shrinking a large block moves it, glibc
//! kept to two arenas ([`limit_arenas`]), its mmap threshold fixed ([`fix_mmap_threshold`]),
//! its trim threshold raised ([`raise_trim_threshold`]), and its free pages handed back every
//! few row groups ([`row_group_written`]).
//!
//! parquet's column writer compresses each page into a buffer the size of the uncompressed
//! page (about 1 MiB), then `shrink_to_fit`s it to the compressed size and keeps it until the
//! row group is written out. glibc shrinks such a block in place, so every page kept leaves a
//! hole of the compressed-away bytes right behind it, between two blocks that live for the whole
//! row group; the next 1 MiB buffers do not fit there and the heap grows instead. Peak RSS
//! crept from 200 to 240 MB over an 8 M-record conversion while the memory in use at each
//! row-group boundary stayed at 60-80 MiB (`mallinfo2`).
//!
//! Moving a shrinking block to a fresh block of the new size frees the large one whole, for the
//! next page to reuse. Measured on generated inputs (2 alternating runs each, 2 cores, default
//! settings): peak RSS 193-212 → 159-162 MB on 2 M short reads, 221 → 174-181 MB on 8 M,
//! 239 → 196 MB on 80 k long reads, at the same CPU time. The copy is of the compressed bytes
//! only, once per page.
//!
//! Measured and not adopted: jemalloc (peak 256-284 MB, no faster), mimalloc (+20% CPU),
//! `malloc_trim` after every row group (11-15 MB lower peaks, but +1.4 s of system time on
//! 8 M records; [`row_group_written`] trims after every fourth), and low
//! `MALLOC_MMAP_THRESHOLD_`/`MALLOC_TRIM_THRESHOLD_` settings (a page fault for every large
//! buffer: +2.5 s of system time on a 3.6 s conversion; [`fix_mmap_threshold`] keeps 4 MiB).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// glibc malloc arenas the process uses, unless `MALLOC_ARENA_MAX` sets another number.
///
/// glibc gives threads up to 8 arenas per core, and each keeps the free memory of what passed
/// through it. Our buffers are made on one thread and freed on another (batches by the reader,
/// arrays by the decoders, pages by the column encoders), so every arena grows to its own high
/// water mark. Two arenas, 2 alternating runs each on generated inputs, 2 cores: peak RSS
/// 153-163 → 142-150 MB on 2 M unaligned reads and 173-178 → 154-168 MB on 8 M, 169-181 →
/// 153-159 MB on 8 M short reads, 190-198 → 171-180 MB on 20 k long reads, with less system
/// time and the same user time. One arena was no better (180 MB on 8 M unaligned reads). Lock
/// contention is not a concern: a 2 M-record conversion makes about 150,000 `malloc` calls in
/// all (25,000 a second), because per-record work does not allocate.
const ARENAS: i32 = 2;

/// Caps glibc's arenas at two (`ARENAS`); call it before any thread starts. Returns whether the
/// cap was set: not when `MALLOC_ARENA_MAX` is set (the operator's choice wins), nor on a
/// system without glibc.
pub fn limit_arenas() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    return set_unless_operator("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, ARENAS);
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// glibc's mmap threshold, fixed: blocks this large or larger are mapped, and unmapped when freed.
///
/// By default glibc raises the threshold to the size of every mapped block freed (up to 32 MiB)
/// and keeps twice that free at the top of the heap. Long reads make decoded columns of a few
/// MiB whose sizes vary batch to batch; once the threshold had risen past them they came from
/// the heap, and peak RSS kept climbing over a run: 80 k generated long reads (up to 300 kbp)
/// peaked at 194-209 MB against 168-175 MB for 20 k. Fixed at 4 MiB (which also pinned the
/// heap's trim threshold at glibc's 128 KiB, until [`raise_trim_threshold`]), 182-186 MB (3
/// runs each, 2 cores), for about 1.3 s more system time in a 28 s run; short and unaligned
/// reads showed no difference in time or RSS (3-5 alternating runs). Below 4 MiB every batch-sized buffer is mapped and faulted
/// in afresh: at 1 MiB, 11 s of system time instead of 5 in the same run.
const MMAP_THRESHOLD: i32 = 4 << 20;

/// Fixes glibc's mmap threshold at `MMAP_THRESHOLD` (4 MiB); call it before any thread starts.
/// Returns whether it was set: not when `MALLOC_MMAP_THRESHOLD_` is set (the operator's choice
/// wins), nor on a system without glibc.
pub fn fix_mmap_threshold() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    return set_unless_operator(
        "MALLOC_MMAP_THRESHOLD_",
        libc::M_MMAP_THRESHOLD,
        MMAP_THRESHOLD,
    );
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// Free bytes glibc keeps at the top of its heap before it gives them back to the system.
///
/// Fixing the mmap threshold ([`fix_mmap_threshold`]) also fixes this one at glibc's 128 KiB,
/// and a row group's buffers, freed together at the top of the heap, were handed back and
/// faulted in again for the next row group: about half of a conversion's system time. At 16
/// MiB, shared-bench inputs (2 cores, 2-3 alternating runs each) converted with 45-55% less
/// system time and 5-10% less wall time (unaligned 1.23 → 1.15 s, 2 M short 1.64 → 1.49 s,
/// long 1.84 → 1.68 s) for 5-10 MB more peak RSS (80 k generated long reads 170 → 176 MB);
/// 8 MiB saved less, and 32-64 MiB little more for up to 20 MB. [`row_group_written`]'s periodic `malloc_trim` still returns everything free, so
/// this bounds only what is held between two trims.
const TRIM_THRESHOLD: i32 = 16 << 20;

/// Raises glibc's trim threshold to `TRIM_THRESHOLD` (16 MiB); call it before any thread
/// starts. Returns whether it was set: not when `MALLOC_TRIM_THRESHOLD_` is set (the operator's
/// choice wins), nor on a system without glibc.
pub fn raise_trim_threshold() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    return set_unless_operator(
        "MALLOC_TRIM_THRESHOLD_",
        libc::M_TRIM_THRESHOLD,
        TRIM_THRESHOLD,
    );
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// Sets a glibc malloc parameter, unless the operator set it through the environment variable
/// glibc reads for it (`env`); returns whether glibc took it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_unless_operator(env: &str, parameter: libc::c_int, value: libc::c_int) -> bool {
    if std::env::var_os(env).is_some() {
        return false;
    }
    // SAFETY: `mallopt` changes a malloc parameter and touches no memory of ours.
    unsafe { libc::mallopt(parameter, value) == 1 }
}

/// Row groups written between two `malloc_trim` calls.
///
/// What is left of RSS growth over a run is glibc holding free pages scattered among live
/// blocks (heaptrack: the heap in use at the peak grew 137 → 145 MB from 2 M to 8 M short reads
/// while RSS grew 20 MB more). `malloc_trim(0)` returns them. After every row group it cost
/// 1.4 s of system time on 8 M short reads. After every fourth, 5 alternating runs each of the
/// generated 2 M and 8 M short reads (2 cores) peaked at 140-146 / 146-158 MiB without it
/// (medians 141 → 153, +8.5%) and 144-150 / 146-151 MiB with it (146 → 148, +1.4%; two more
/// runs of the final build: 147 / 151-157 MiB), with system time within the runs' spread
/// (8 M: 2.0-3.4 s without, 2.2-3.3 s with).
const TRIM_EVERY_ROW_GROUPS: usize = 4;

/// Counts a written row group, and every `TRIM_EVERY_ROW_GROUPS` (4) across the process returns
/// glibc's free pages to the system. Does nothing without glibc.
pub fn row_group_written() {
    static WRITTEN: AtomicUsize = AtomicUsize::new(0);
    let written = WRITTEN.fetch_add(1, Ordering::Relaxed) + 1;
    if written.is_multiple_of(TRIM_EVERY_ROW_GROUPS) {
        return_free_memory();
    }
}

/// Returns glibc's free pages to the system now: the daemon calls it when a file is done, so
/// an idle daemon holds what it uses, not what its last conversion freed. Does nothing
/// without glibc.
pub fn return_free_memory() {
    // SAFETY: `malloc_trim` only releases memory glibc holds free; no live block moves.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Blocks at least this large are moved, not shrunk in place, when they shrink. Smaller ones
/// come from glibc's per-size bins, where in-place shrinking leaves no lasting hole.
const MOVE_ON_SHRINK: usize = 64 << 10;

/// [`System`], with shrinking reallocations of large blocks done as allocate, copy, free.
///
/// Installed by the `bamflow` binary with `#[global_allocator]`.
pub struct ShrinkByMove;

// SAFETY: every method forwards to `System` with the layout it was given, except `realloc`'s
// shrinking branch, which keeps the `GlobalAlloc::realloc` contract by hand: the new block has
// the old alignment and `new_size` bytes, the first `new_size` bytes are copied, and on failure
// null is returned with the old block untouched.
unsafe impl GlobalAlloc for ShrinkByMove {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees for `alloc` are `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees for `alloc_zeroed` are `System.alloc_zeroed`'s.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, which is `System` for every block.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= layout.size() || layout.size() < MOVE_ON_SHRINK {
            // SAFETY: the caller's guarantees for `realloc` are `System.realloc`'s.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: the caller guarantees `new_size`, rounded up to the alignment, fits an
        // isize; it is smaller than a size that already did, and the alignment is the old one.
        let shrunk = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: `shrunk` has a non-zero size (`new_size` > 0 per `realloc`'s contract).
        let moved = unsafe { System.alloc(shrunk) };
        if !moved.is_null() {
            // SAFETY: `ptr` holds `layout.size()` > `new_size` bytes, `moved` holds
            // `new_size`, and two live blocks never overlap; `ptr` came from `System` with
            // `layout` and is freed once, after the copy.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, moved, new_size);
                System.dealloc(ptr, layout);
            }
        }
        moved
    }
}

/// Peak resident set size of this process (`VmHWM`), 0 when unknown.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let kib = line.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?;
                kib.trim().parse::<u64>().ok()
            })
        })
        .map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reallocates through the allocator under test, as `Vec` would, and checks the bytes.
    fn resize(ptr: *mut u8, layout: Layout, new_size: usize) -> (*mut u8, Layout) {
        // SAFETY: `ptr` was allocated by ShrinkByMove with `layout`; sizes are non-zero.
        let resized = unsafe { ShrinkByMove.realloc(ptr, layout, new_size) };
        assert!(!resized.is_null());
        let new_layout = Layout::from_size_align(new_size, layout.align()).unwrap();
        let kept = layout.size().min(new_size);
        // SAFETY: `resized` is non-null and holds at least `kept` initialised bytes.
        let bytes = unsafe { std::slice::from_raw_parts(resized, kept) };
        assert!(
            bytes.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
            "{} → {new_size} bytes (align {}) lost data",
            layout.size(),
            layout.align()
        );
        (resized, new_layout)
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_arena_cap_unless_the_operator_set_one() {
        let operator = std::env::var_os("MALLOC_ARENA_MAX").is_some();
        assert_eq!(limit_arenas(), !operator);
    }

    /// Only that glibc took the threshold: whether a block is mapped depends also on the free
    /// space at the top of the calling thread's arena, so a test thread cannot see the effect;
    /// the RSS figures above are from whole conversions.
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_mmap_threshold_unless_the_operator_set_one() {
        let operator = std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some();
        assert_eq!(fix_mmap_threshold(), !operator);
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_trim_threshold_unless_the_operator_set_one() {
        let operator = std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_some();
        assert_eq!(raise_trim_threshold(), !operator);
    }

    #[test]
    fn reallocation_keeps_bytes_and_alignment_in_every_direction() {
        let sizes = [
            1,
            100,
            4096,
            MOVE_ON_SHRINK - 1,
            MOVE_ON_SHRINK,
            1 << 20,
            3 << 20,
        ];
        for align in [1, 8, 64, 4096] {
            for &from in &sizes {
                for &to in &sizes {
                    let layout = Layout::from_size_align(from, align).unwrap();
                    // SAFETY: every size tried is non-zero.
                    let ptr = unsafe { ShrinkByMove.alloc(layout) };
                    assert!(!ptr.is_null());
                    for i in 0..from {
                        // SAFETY: `i` < `from`, the block's size.
                        unsafe { *ptr.add(i) = (i % 251) as u8 };
                    }
                    let (resized, new_layout) = resize(ptr, layout, to);
                    assert_eq!(resized as usize % align, 0, "{from} → {to}, align {align}");
                    // SAFETY: `resized` is the live block of `new_layout`, freed once.
                    unsafe { ShrinkByMove.dealloc(resized, new_layout) };
                }
            }
        }
    }

    #[test]
    fn a_large_shrink_moves_the_block() {
        let layout = Layout::from_size_align(1 << 20, 1).unwrap();
        // SAFETY: a non-zero size.
        let ptr = unsafe { ShrinkByMove.alloc(layout) };
        assert!(!ptr.is_null());
        for i in 0..1000 {
            // SAFETY: `i` < 1000 < the block's 1 MiB.
            unsafe { *ptr.add(i) = (i % 251) as u8 };
        }
        // The new block is allocated while the old one is still held, so it cannot be the
        // same; glibc's own realloc returns the same pointer here.
        let (moved, new_layout) = resize(ptr, layout, 1000);
        assert_ne!(
            moved, ptr,
            "a 1 MiB block shrunk to 1000 bytes stayed in place"
        );
        // SAFETY: `moved` is the live block of `new_layout`, freed once.
        unsafe { ShrinkByMove.dealloc(moved, new_layout) };
    }
}
