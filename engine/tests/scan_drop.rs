//! A scan dropped before its end leaves no thread behind.
//!
//! Its own test binary: it counts this process's threads, which tests running beside it in
//! one binary would change.

use bamflow_engine::options::ConvertConfig;
use bamflow_engine::pipeline::Engine;
use bamflow_tests::generator::{self, DataKind, Spec};

#[test]
fn a_scan_dropped_early_stops_its_reader() {
    let dir = tempfile::tempdir().unwrap();
    let bam = dir.path().join("in.bam");
    generator::write_bam(&bam, &Spec::new(DataKind::Short, 20_000, 48)).unwrap();
    let engine = Engine::new(2).unwrap();
    let options = ConvertConfig {
        batch_records: Some(500),
        ..ConvertConfig::default()
    }
    .resolve(2)
    .unwrap();
    let threads = || std::fs::read_dir("/proc/self/task").unwrap().count();
    let before = threads();
    let mut batches = engine.scan(&bam, &options).unwrap();
    assert_eq!(batches.next().unwrap().unwrap().num_rows(), 500);
    drop(batches);
    // The reading threads are joined by the drop; the pool's workers stay.
    assert_eq!(threads(), before);
}
