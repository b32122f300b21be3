//! `bamflow verify`: a dataset against its BAM, and against a BAM or a dataset that differ.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, UInt8Array};
use bamflow_tests::bamflow;
use bamflow_tests::generator::DataKind;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

use crate::support::{convert_ok, TestDir};

fn verify(dataset: &Path, bam: &Path) -> (Option<i32>, String) {
    let out = bamflow(&["verify"]).arg(dataset).arg(bam).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// Rewrites one part with `edit` applied to its batches, keeping its metadata (the SAM
/// header): a dataset changed behind bamflow's back.
fn rewrite_part(part: &Path, edit: impl FnOnce(Vec<RecordBatch>) -> Vec<RecordBatch>) {
    let file = std::fs::File::open(part).unwrap();
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let metadata = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    let batches = edit(builder.build().unwrap().map(Result::unwrap).collect());
    let properties = WriterProperties::builder()
        .set_key_value_metadata(Some(metadata))
        .build();
    let mut writer = ArrowWriter::try_new(
        std::fs::File::create(part).unwrap(),
        batches[0].schema(),
        Some(properties),
    )
    .unwrap();
    for batch in &batches {
        writer.write(batch).unwrap();
    }
    writer.close().unwrap();
}

/// Rewrites one part with the MAPQ of its row `row` changed.
pub(crate) fn change_mapq(part: &Path, row: usize) {
    rewrite_part(part, |batches| {
        let mapq = batches[0].schema().index_of("mapq").unwrap();
        let mut seen = 0;
        batches
            .into_iter()
            .map(|batch| {
                let n = batch.num_rows();
                if !(seen..seen + n).contains(&row) {
                    seen += n;
                    return batch;
                }
                let column = batch
                    .column(mapq)
                    .as_any()
                    .downcast_ref::<UInt8Array>()
                    .unwrap();
                let values: UInt8Array = (0..n)
                    .map(|i| {
                        let v = column.value(i);
                        Some(if i == row - seen { v ^ 1 } else { v })
                    })
                    .collect();
                seen += n;
                let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
                columns[mapq] = Arc::new(values);
                RecordBatch::try_new(batch.schema(), columns).unwrap()
            })
            .collect()
    });
}

#[test]
fn verify_passes_a_faithful_dataset_and_names_the_first_changed_field() {
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 12_000, 61);
    let out = dir.path("out");
    convert_ok(&bam, &out, &["--part-records", "5000", "--tags", "NM:i"]);

    let (code, text) = verify(&out, &bam);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("identical") && text.contains("12"), "{text}");

    // One value in the second part: record 5,000 + 123 + 1.
    change_mapq(&out.join("part-00001.parquet"), 123);
    let (code, text) = verify(&out, &bam);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("1 of"), "{text}");
    assert!(text.contains("record 5124 mapq"), "{text}");

    // Another BAM: the header and the records differ.
    let other = dir.generated(DataKind::Short, 12_000, 62);
    let (code, text) = verify(&out, &other);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("header line"), "{text}");
}

#[test]
fn verify_refuses_a_partial_dataset_with_its_reason() {
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 2_000, 63);
    for (name, flags, reason) in [
        ("filtered", ["--min-mapq", "30"], "written with filters"),
        (
            "narrow",
            ["--columns", "qname,flag,pos"],
            "without the columns rname",
        ),
    ] {
        let out = dir.path(name);
        convert_ok(&bam, &out, &flags);
        let (code, text) = verify(&out, &bam);
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains(reason), "{text}");
    }
}

#[test]
fn every_sam_case_and_generated_kind_verifies_after_conversion() {
    let dir = TestDir::new();
    let mut bams = sam_cases(&dir);
    bams.push(dir.generated(DataKind::Long, 40, 65));
    bams.push(dir.generated(DataKind::Unaligned, 2_000, 66));
    assert!(bams.len() >= 7);
    for (i, bam) in bams.iter().enumerate() {
        let out = dir.path(&format!("out-{i}"));
        convert_ok(bam, &out, &["--tags", "NM:i,AS:i"]);
        let (code, text) = verify(&out, bam);
        assert_eq!(code, Some(0), "{}: {text}", bam.display());
    }
}

/// A BAM of each SAM case in `tests/data`, built by samtools.
fn sam_cases(dir: &TestDir) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(crate::support::data_file(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".sam"))
        .map(|name| dir.bam_from_data(&name))
        .collect()
}

/// Exports the dataset `out` (converted from `bam`) to `exported-<i>.bam` and asserts that
/// samtools prints it as it prints `bam`; returns the exported file.
fn assert_exports_identically(
    dir: &TestDir,
    out: &Path,
    bam: &Path,
    i: usize,
) -> std::path::PathBuf {
    let exported = dir.path(&format!("exported-{i}.bam"));
    let run = bamflow(&["export"])
        .arg(out)
        .arg(&exported)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}: {}",
        bam.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        sam_text(&exported) == sam_text(bam),
        "{}: the export differs from the source",
        bam.display()
    );
    exported
}

/// `samtools view -h --no-PG`, the oracle an export must reproduce.
fn sam_text(bam: &Path) -> Vec<u8> {
    sam_text_with(bam, &[])
}

/// [`sam_text`] with more `samtools view` options (a filter).
fn sam_text_with(bam: &Path, options: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("samtools")
        .args(["view", "-h", "--no-PG"])
        .args(options)
        .arg(bam)
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

#[test]
fn every_sam_case_and_generated_kind_exports_to_what_samtools_printed() {
    let dir = TestDir::new();
    let mut bams = sam_cases(&dir);
    bams.push(dir.generated(DataKind::Short, 5_000, 67));
    bams.push(dir.generated(DataKind::Long, 30, 68));
    bams.push(dir.generated(DataKind::Unaligned, 2_000, 69));
    for (i, bam) in bams.iter().enumerate() {
        let out = dir.path(&format!("out-{i}"));
        convert_ok(bam, &out, &["--part-records", "1000"]);
        let exported = assert_exports_identically(&dir, &out, bam, i);
        let (code, text) = verify(&out, &exported);
        assert_eq!(code, Some(0), "{text}");

        // Promoted tags of every type go back where they stood, arrays with their subtypes.
        let promoted = dir.path(&format!("promoted-{i}"));
        convert_ok(
            bam,
            &promoted,
            &["--part-records", "1000", "--tags", EVERY_TYPE],
        );
        let exported = assert_exports_identically(&dir, &promoted, bam, i + bams.len());
        let (code, text) = verify(&promoted, &exported);
        assert_eq!(code, Some(0), "{text}");
    }
}

/// Promoted tags of every type and array subtype the test data holds (`tag_types.sam`: every
/// scalar and `B` subtype, empty arrays; `dup_and_order`: a tag twice, promoted tags first; the
/// generated kinds: aligner tags, `MM`/`ML`, `CB`/`UB`).
const EVERY_TYPE: &str = "NM:i,MD:Z,AS:i,XA:A,XH:H,Xf:f,XF:f,Xi:i,XI:i,Bc:B:i,BC:B:i,BS:B:i,\
Bi:B:i,BI:B:i,Be:B:i,Bf:B:f,Bg:B:f,MM:Z,ML:B:i,CB:Z,UB:Z";

/// Rewrites one part without its column `name`.
fn drop_column(part: &Path, name: &str) {
    rewrite_part(part, |batches| {
        let index = batches[0].schema().index_of(name).unwrap();
        batches
            .into_iter()
            .map(|mut batch| {
                batch.remove_column(index);
                batch
            })
            .collect()
    });
}

#[test]
fn export_refuses_a_part_without_a_column_its_manifest_lists() {
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 500, 73);
    let out = dir.path("narrowed");
    convert_ok(&bam, &out, &[]);
    drop_column(&out.join("part-00000.parquet"), "tags");
    let exported = dir.path("narrowed.bam");
    let run = bamflow(&["export"])
        .arg(&out)
        .arg(&exported)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{text}");
    assert!(
        text.contains("record 1: the part has no column \"tags\""),
        "{text}"
    );
    assert!(!exported.exists());
}

/// `bamflow export --allow-partial`: the exit status and the warnings it printed.
fn export_partial(dataset: &Path, out: &Path) -> String {
    let run = bamflow(&["export", "--allow-partial"])
        .arg(dataset)
        .arg(out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{text}");
    text
}

#[test]
fn allow_partial_exports_what_the_dataset_has_and_says_what_differs() {
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 3_000, 74);

    // Filtered: exactly the records samtools keeps with the same filter.
    let filtered = dir.path("filtered");
    convert_ok(&bam, &filtered, &["--min-mapq", "30"]);
    let exported = dir.path("filtered.bam");
    let warned = export_partial(&filtered, &exported);
    assert!(warned.contains("written with filters"), "{warned}");
    assert!(
        sam_text(&exported) == sam_text_with(&bam, &["-q", "30"]),
        "the filtered export differs"
    );

    // A column subset: the fields it has, SAM's "unavailable" for the others.
    let narrow = dir.path("narrow");
    convert_ok(&bam, &narrow, &["--columns", "qname,flag,pos"]);
    let exported = dir.path("narrow.bam");
    let warned = export_partial(&narrow, &exported);
    assert!(warned.contains("written without the columns"), "{warned}");
    let ours = String::from_utf8_lossy(&sam_text(&exported)).into_owned();
    let theirs = String::from_utf8_lossy(&sam_text(&bam)).into_owned();
    let records = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('@'))
            .map(str::to_owned)
            .collect()
    };
    let (ours, theirs) = (records(&ours), records(&theirs));
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(&theirs) {
        let (a, b): (Vec<&str>, Vec<&str>) = (a.split('\t').collect(), b.split('\t').collect());
        assert_eq!((a[0], a[1], a[3]), (b[0], b[1], b[3]));
        assert_eq!((a[2], a[4], a[5], a[9], a[10]), ("*", "255", "*", "*", "*"));
    }
}

#[test]
fn export_refuses_what_it_could_not_put_back() {
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 500, 70);
    let filtered = dir.path("filtered");
    convert_ok(&bam, &filtered, &["--min-mapq", "30"]);
    // A dataset of schema version 1 (before the tag layout was recorded): promoted tags whose
    // places are unknown. It still verifies: every value is there.
    let version_1 = dir.path("version-1");
    convert_ok(&bam, &version_1, &["--tags", "NM:i"]);
    as_schema_version_1(&version_1);
    let (code, text) = verify(&version_1, &bam);
    assert_eq!(code, Some(0), "{text}");

    for (out, reason) in [
        (&filtered, "written with filters"),
        (
            &version_1,
            "promoted tags (NM:i) left the tags text and their places in it were not recorded",
        ),
    ] {
        let exported = out.with_extension("bam");
        let run = bamflow(&["export"])
            .arg(out)
            .arg(&exported)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{text}");
        assert!(text.contains(reason), "{text}");
        assert!(!exported.exists());
    }
}

/// Makes a dataset with promoted tags what bamflow wrote before schema version 2: no
/// `tag_layout` column in its parts nor its manifest.
fn as_schema_version_1(dataset: &Path) {
    for entry in std::fs::read_dir(dataset).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "parquet") {
            drop_column(&path, "tag_layout");
        }
    }
    let path = dataset.join("_manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    manifest["schema_version"] = 1.into();
    let columns = manifest["columns"].as_array_mut().unwrap();
    columns.retain(|c| c != "tag_layout");
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
}

#[test]
fn the_daemon_deletes_only_verified_inputs() {
    use crate::harness::{config, Daemon};

    let dir = TestDir::new();
    let inbox = dir.inbox();
    let config = config(
        &dir,
        &inbox,
        "on_success = \"delete\"\nverify = true\n[watch.convert]\npart_records = 2000",
    );
    // Stalls before verifying, once: time to damage the second file's dataset.
    let faults = std::ffi::OsStr::new("before-verify=stall@2");
    let daemon = Daemon::start_with(dir.root(), Some(&config), &[("BAMFLOW_FAULTS", faults)]);

    let good = dir.generated(DataKind::Short, 5_000, 71);
    std::fs::copy(&good, inbox.join("good.bam")).unwrap();
    daemon.wait_for("the verified input deleted", || {
        !inbox.join("good.bam").exists() && dir.path("lake/test/good/_SUCCESS").exists()
    });

    let damaged = dir.generated(DataKind::Short, 5_000, 72);
    std::fs::copy(&damaged, inbox.join("damaged.bam")).unwrap();
    let dataset = dir.path("lake/test/damaged");
    daemon.wait_for("the dataset published", || {
        dataset.join("_SUCCESS").exists()
    });
    change_mapq(&dataset.join("part-00001.parquet"), 7);
    daemon.wait_for("the input failed", || {
        inbox.join("failed/damaged.bam.error.json").exists()
    });
    let log = daemon.stop();

    // Kept, byte for byte, with the reason.
    assert_eq!(
        std::fs::read(inbox.join("failed/damaged.bam")).unwrap(),
        std::fs::read(&damaged).unwrap()
    );
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(inbox.join("failed/damaged.bam.error.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["stage"], "verify", "{report}");
    assert_eq!(report["location"]["record"], 2008, "{report}");
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("record 2008 mapq"),
        "{report}"
    );
    assert!(log.contains("Dataset verified against its input."), "{log}");
}

#[test]
fn verify_is_refused_in_a_watch_that_filters() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let config =
        crate::harness::config(&dir, &inbox, "verify = true\n[watch.filter]\nmin_mapq = 30");
    let out = bamflow(&["check-config"]).arg(&config).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("verify") && text.contains("without filters"),
        "{text}"
    );
}

#[test]
fn long_cigars_and_a_1_mib_header_export_to_what_samtools_printed() {
    let dir = TestDir::new();
    // 70,000 CIGAR operations: stored by samtools in a CG tag, printed as the CIGAR.
    let ops = 70_000;
    let sam = format!(
        "@HD\tVN:1.6\n@SQ\tSN:chr1\tLN:100000\nmany_ops\t0\tchr1\t10\t60\t{}\t*\t0\t0\t{}\t{}\tNM:i:{}\n",
        "1M1I".repeat(ops / 2),
        "ACGT".chars().cycle().take(ops).collect::<String>(),
        "I".repeat(ops),
        ops / 2
    );
    let cg = dir.bam_from_sam("cg", &sam);
    // A header over 1 MiB: 20,000 references and long comments.
    let mut sam = String::from("@HD\tVN:1.6\tSO:coordinate\n");
    for i in 0..20_000 {
        sam.push_str(&format!(
            "@SQ\tSN:contig_{i:06}_long_name\tLN:{}\n",
            1000 + i
        ));
    }
    for i in 0..2_000 {
        sam.push_str(&format!("@CO\tcomment {i} {}\n", "x".repeat(300)));
    }
    sam.push_str("r1\t0\tcontig_019999_long_name\t5\t60\t4M\t*\t0\t0\tACGT\tIIII\n");
    let header = dir.bam_from_sam("long_header", &sam);
    for (i, bam) in [cg, header].iter().enumerate() {
        let out = dir.path(&format!("out-{i}"));
        convert_ok(bam, &out, &[]);
        assert_exports_identically(&dir, &out, bam, i);
    }
}
