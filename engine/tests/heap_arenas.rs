//! glibc keeps to the arenas `limit_arenas` allows, however many threads allocate.
//!
//! Its own test binary: arenas are process-wide, and the cap must be set before other
//! threads allocate.

#![cfg(all(target_os = "linux", target_env = "gnu"))]

use std::ffi::CString;
use std::sync::{Arc, Barrier};

/// The number of arenas in glibc's `malloc_info` report (`<heap nr="…">` elements).
fn arenas() -> usize {
    let path = std::env::temp_dir().join(format!("bamflow-arenas-{}.xml", std::process::id()));
    let c_path = CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a file opened for writing, handed to malloc_info, then closed once.
    unsafe {
        let file = libc::fopen(c_path.as_ptr(), c"w".as_ptr());
        assert!(!file.is_null());
        assert_eq!(libc::malloc_info(0, file), 0);
        libc::fclose(file);
    }
    let report = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    report.matches("<heap nr=").count()
}

/// Eight threads allocate at the same time, as reader, decoders, encoders and writer do;
/// without the cap glibc would give most of them an arena of their own.
#[test]
fn eight_threads_allocating_at_once_share_two_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return; // the operator's setting wins, and this test has nothing to check
    }
    assert!(bamflow_engine::heap::limit_arenas());

    let barrier = Arc::new(Barrier::new(9));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let block = std::hint::black_box(vec![i as u8; 64 << 10]);
                barrier.wait(); // all hold their blocks while the arenas are counted
                barrier.wait();
                drop(block);
            })
        })
        .collect();
    barrier.wait();
    let arenas = arenas();
    barrier.wait();
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(arenas <= 2, "{arenas} arenas");
}
