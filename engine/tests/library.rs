//! The engine used as a library, through its public API only: convert a generated BAM into a
//! dataset, and stream the same BAM as Arrow record batches whose rows equal the dataset's.

use std::path::Path;

use bamflow_engine::options::{ConvertConfig, FilterConfig};
use bamflow_engine::pipeline::{ConvertOptions, Engine};
use bamflow_tests::generator::{self, DataKind, Spec};
use bamflow_tests::sam_text;

fn generated(dir: &Path, kind: DataKind, records: usize, seed: u64) -> std::path::PathBuf {
    let path = dir.join(format!("{kind:?}-{seed}.bam"));
    generator::write_bam(&path, &Spec::new(kind, records, seed)).unwrap();
    path
}

/// Converts `bam` and scans it with the same options; the rows must be equal, in order.
fn assert_scan_equals_dataset(engine: &Engine, bam: &Path, out: &Path, options: &ConvertOptions) {
    let summary = engine.convert(bam, out, options, &()).unwrap();
    let dataset = sam_text::read_dataset(&summary.output).unwrap();

    let batches = engine.scan(bam, options).unwrap();
    let schema = batches.schema();
    let batches: Vec<_> = batches.collect::<Result<_, _>>().unwrap();
    assert!(batches.iter().all(|b| b.schema() == schema));
    let columns: Vec<_> = schema.fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(columns, dataset.columns);
    let rows = sam_text::rows_of(&batches).unwrap();
    assert_eq!(rows.len() as u64, summary.manifest.counts.written);
    assert!(
        rows == dataset.rows,
        "{}: scanned rows differ",
        bam.display()
    );
}

#[test]
fn scanned_batches_equal_the_converted_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(2).unwrap();
    // Small batches and parts, so both cross many batch and part boundaries.
    let small = ConvertConfig {
        batch_records: Some(700),
        part_records: Some(2_000),
        ..ConvertConfig::default()
    };
    for (i, (kind, records)) in [
        (DataKind::Short, 6_000),
        (DataKind::Long, 60),
        (DataKind::Unaligned, 3_000),
    ]
    .into_iter()
    .enumerate()
    {
        let bam = generated(dir.path(), kind, records, 40 + i as u64);
        let options = small.resolve(2).unwrap();
        assert_scan_equals_dataset(
            &engine,
            &bam,
            &dir.path().join(format!("all-{i}")),
            &options,
        );
    }

    // A projection, a promoted tag and filters: the same rows either way.
    let bam = generated(dir.path(), DataKind::Short, 6_000, 47);
    let mut options = ConvertConfig {
        columns: Some(vec![
            "qname".into(),
            "flag".into(),
            "pos".into(),
            "NM".into(),
        ]),
        tags: Some(vec!["NM:i".into()]),
        batch_records: Some(500),
        ..ConvertConfig::default()
    }
    .resolve(2)
    .unwrap();
    options.filters = FilterConfig {
        min_mapq: Some(30),
        exclude_flags: Some(0x10),
        ..FilterConfig::default()
    }
    .resolve(Vec::new())
    .unwrap();
    assert_scan_equals_dataset(&engine, &bam, &dir.path().join("subset"), &options);
}

#[test]
fn a_scan_of_a_file_that_is_not_bam_fails_at_once_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.bam");
    std::fs::write(&path, "sample\tlane\n").unwrap();
    let engine = Engine::new(1).unwrap();
    let error = engine
        .scan(&path, &ConvertOptions::default())
        .err()
        .unwrap();
    let message = bamflow_engine::pipeline::chain(&error);
    assert!(
        message.contains("notes.bam") && message.contains("not a BGZF file"),
        "{message}"
    );
}

#[test]
fn the_header_of_a_bam_and_of_its_dataset_is_what_samtools_prints() {
    let dir = tempfile::tempdir().unwrap();
    let bam = generated(dir.path(), DataKind::Short, 500, 3);
    let samtools = std::process::Command::new("samtools")
        .args(["view", "-H", "--no-PG"])
        .arg(&bam)
        .output()
        .expect("samtools runs");
    let expected = String::from_utf8(samtools.stdout).unwrap();
    assert!(expected.starts_with("@HD"), "{expected}");
    assert_eq!(
        bamflow_engine::pipeline::read_header(&bam).unwrap(),
        expected
    );

    let engine = Engine::new(1).unwrap();
    let out = dir.path().join("out");
    engine
        .convert(&bam, &out, &ConvertOptions::default(), &())
        .unwrap();
    assert_eq!(
        bamflow_engine::pipeline::read_header(&out).unwrap(),
        expected
    );

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let error = bamflow_engine::pipeline::read_header(&empty).unwrap_err();
    assert_eq!(error.stage(), bamflow_engine::pipeline::Stage::Open);
}

/// An observer that stops the conversion at its first batch.
struct StopAtOnce;

impl bamflow_engine::pipeline::Observer for StopAtOnce {
    fn cancelled(&self) -> bool {
        true
    }
}

#[test]
fn a_cancelled_conversion_keeps_its_staging_until_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let bam = generated(dir.path(), DataKind::Short, 2_000, 4);
    let out = dir.path().join("out");
    let engine = Engine::new(1).unwrap();
    let error = engine
        .convert(&bam, &out, &ConvertOptions::default(), &StopAtOnce)
        .unwrap_err();
    assert!(error.is_cancelled());
    let staging = dir.path().join(".out.staging");
    assert!(staging.is_dir() && !out.exists());

    bamflow_engine::dataset::discard_staging(&out).unwrap();
    assert!(!staging.exists() && !out.exists());
}
