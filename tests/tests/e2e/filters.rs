//! Filters (DESIGN.md §2, §7): built-ins against `samtools view -q/-f/-F` and region queries,
//! plugins against samtools' own tag filter, and plugins that must be refused or fail their file.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use bamflow_tests::generator::DataKind;
use bamflow_tests::sam_text::{self, Dataset, TagOrder};
use bamflow_tests::{convert, plugin_library, samtools_view_regions};
use serde_json::Value;

use crate::harness::{config, Daemon};
use crate::support::{convert_ok, manifest, stdout_of, TestDir};

/// `samtools view -h --no-PG [args] BAM [regions]`, as lines.
fn samtools(bam: &Path, args: &[&str], regions: &[&str]) -> Vec<String> {
    samtools_view_regions(bam, args, regions).expect("samtools view")
}

/// A config file `NAME.toml` with one `[[plugin]]`: the workspace library `library` and
/// further keys (`sha256 = …`, `config = { … }`).
fn plugin_config(dir: &TestDir, name: &str, library: &str, keys: &str) -> String {
    let path = dir.path(&format!("{name}.toml"));
    let text = format!(
        "[[plugin]]\npath = \"{}\"\n{keys}\n",
        plugin_library(library).display()
    );
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

fn assert_same(dataset: &Dataset, theirs: &[String], what: &str) {
    let ours = dataset.to_sam(&[]).unwrap();
    if let Err(e) = sam_text::compare(&ours, theirs, TagOrder::Exact) {
        panic!("{what}: {e:#}");
    }
}

/// A coordinate-sorted, indexed copy of a generated BAM (`csi` picks a CSI index over BAI).
fn indexed(dir: &TestDir, records: usize, seed: u64, csi: bool) -> PathBuf {
    let raw = dir.generated(DataKind::Short, records, seed);
    let sorted = dir.path(&format!("sorted-{seed}-{csi}.bam"));
    let status = Command::new("samtools")
        .args(["sort", "--no-PG", "-o"])
        .arg(&sorted)
        .arg(&raw)
        .status()
        .unwrap();
    assert!(status.success());
    let mut index = Command::new("samtools");
    index.arg("index");
    if csi {
        index.arg("-c");
    }
    assert!(index.arg(&sorted).status().unwrap().success());
    sorted
}

#[test]
fn flag_and_mapq_filters_match_samtools_and_count_what_they_drop() {
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 6_000, 81);
    let cases: &[(&[&str], &[&str])] = &[
        (&["--min-mapq", "30"], &["-q", "30"]),
        (&["--include-flags", "0x2"], &["-f", "0x2"]),
        (&["--exclude-flags", "1024"], &["-F", "1024"]),
        (
            &[
                "--include-flags",
                "0x41",
                "--exclude-flags",
                "0x10",
                "--min-mapq",
                "5",
            ],
            &["-f", "0x41", "-F", "0x10", "-q", "5"],
        ),
    ];
    for (i, (ours, theirs)) in cases.iter().enumerate() {
        let out = dir.path(&format!("out{i}"));
        let mut args = ours.to_vec();
        args.extend(["--part-records", "1000"]);
        let dataset = convert_ok(&bam, &out, &args);
        assert_same(&dataset, &samtools(&bam, theirs, &[]), &format!("{ours:?}"));

        let counts = &manifest(&out)["counts"];
        let dropped: u64 = counts["filtered"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        let (read, written) = (
            counts["read"].as_u64().unwrap(),
            counts["written"].as_u64().unwrap(),
        );
        assert_eq!(read - written, dropped, "{ours:?}: {counts}");
        assert_eq!(written, dataset.rows.len() as u64);
        assert!(
            dropped > 0,
            "{ours:?} dropped nothing: pick a stricter case"
        );
    }
}

#[test]
fn regions_read_only_their_blocks_and_match_samtools() {
    let dir = TestDir::new();
    for csi in [false, true] {
        let bam = indexed(&dir, 40_000, 82, csi);
        let total = samtools(&bam, &["-c"], &[])[0].parse::<u64>().unwrap();
        // Overlapping regions: a record in both appears once, as with samtools -M.
        let regions = [
            "chr1:100,000-180,000",
            "chr1:150000-200000",
            "chr2:1000-30000",
        ];
        let out = dir.path(&format!("regions-{csi}"));
        let mut args = vec!["--part-records", "2000"];
        for region in &regions {
            args.extend(["--region", region]);
        }
        let dataset = convert_ok(&bam, &out, &args);
        assert_same(&dataset, &samtools(&bam, &["-M"], &regions), "regions");
        let counts = &manifest(&out)["counts"];
        let read = counts["read"].as_u64().unwrap();
        assert!(
            read < total / 4,
            "read {read} of {total} records: the index was not used"
        );
        assert_eq!(
            manifest(&out)["filters"][0],
            "regions=chr1:100000-180000,chr1:150000-200000,chr2:1000-30000"
        );

        // A whole reference, with an unmapped-but-placed mate or two among its records.
        let out = dir.path(&format!("chr2-{csi}"));
        let dataset = convert_ok(&bam, &out, &["--region", "chr2"]);
        assert_same(&dataset, &samtools(&bam, &[], &["chr2"]), "chr2");
    }

    // Without an index, regions are an error that says so; a reference the file lacks too.
    let bam = dir.generated(DataKind::Short, 1_000, 83);
    let out = dir.path("no-index");
    let result = convert(&bam, &out, &["--region", "chr1:1-1000"]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("filter failed") && stderr.contains("regions need an index"),
        "{stderr}"
    );
    let bam = indexed(&dir, 1_000, 84, false);
    let result = convert(&bam, &dir.path("bad-ref"), &["--region", "chrUn:1-5"]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no such reference"), "{stderr}");

    // An index older than the BAM still answers, with samtools' warning.
    let index = PathBuf::from(format!("{}.bai", bam.display()));
    let touched = std::process::Command::new("touch")
        .args(["-d", "2001-01-01"])
        .arg(&index)
        .status()
        .unwrap();
    assert!(touched.success());
    let result = convert(&bam, &dir.path("stale"), &["--region", "chr1:1-5000"]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(stderr.contains("index is older than the BAM"), "{stderr}");
}

#[test]
fn tag_allowlist_plugin_keeps_what_samtools_keeps() {
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Unaligned, 5_000, 85);
    // Half of the barcodes the file holds.
    let barcodes: Vec<String> = samtools(&bam, &[], &[])
        .iter()
        .filter(|l| !l.starts_with('@'))
        .filter_map(|l| {
            l.split('\t')
                .find_map(|f| f.strip_prefix("CB:Z:"))
                .map(str::to_owned)
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .step_by(2)
        .collect();
    assert!(barcodes.len() > 10, "{barcodes:?}");
    let allowlist = dir.path("barcodes.txt");
    std::fs::write(&allowlist, format!("# cells\n{}\n", barcodes.join("\n"))).unwrap();
    let config = plugin_config(
        &dir,
        "plugins",
        "bamflow_tag_allowlist",
        &format!(
            "config = {{ tag = \"CB\", allowlist = \"{}\" }}",
            allowlist.display()
        ),
    );
    let out = dir.path("cells");
    let dataset = convert_ok(&bam, &out, &["--config", &config]);
    let tag_file = format!("CB:{}", allowlist.display());
    assert_same(
        &dataset,
        &samtools(&bam, &["-D", &tag_file], &[]),
        "tag-allowlist",
    );
    let counts = &manifest(&out)["counts"];
    assert!(
        counts["filtered"]["tag-allowlist"].as_u64().unwrap() > 0,
        "{counts}"
    );
}

/// A C plugin built with gcc: a valid table but for another ABI major.
fn other_abi_plugin(dir: &TestDir) -> PathBuf {
    let source = dir.path("abi2.c");
    std::fs::write(
        &source,
        r#"
#include <stddef.h>
#include <stdint.h>
struct table {
    uint32_t abi_major; uint32_t table_size; const char *name; const char *version; uint64_t flags;
    void *create; void *filter_batch; void *last_error; void *destroy;
};
static const struct table TABLE = { 2, sizeof(struct table), "future", "2.0.0", 0, 0, 0, 0, 0 };
const struct table *bamflow_plugin_v1(void) { return &TABLE; }
"#,
    )
    .unwrap();
    let library = dir.path("libabi2.so");
    let status = Command::new("gcc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .status()
        .expect("gcc runs");
    assert!(status.success());
    library
}

#[test]
fn bad_plugins_are_refused_with_a_clear_message() {
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 500, 86);
    let refused = |name: &str, args: &[&str], expected: &[&str]| {
        let result = convert(&bam, &dir.path(name), args);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(1), "{name}: {stderr}");
        for text in expected {
            assert!(stderr.contains(text), "{name}: no {text:?} in {stderr}");
        }
        assert!(!dir.path(name).exists());
    };

    let abi2 = other_abi_plugin(&dir);
    refused(
        "abi",
        &["--plugin", abi2.to_str().unwrap()],
        &["built for plugin ABI 2", "ABI 1"],
    );

    let writable = dir.path("writable-folder");
    std::fs::create_dir(&writable).unwrap();
    let copy = writable.join("libnoop.so");
    std::fs::copy(plugin_library("bamflow_test_noop"), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o666)).unwrap();
    refused(
        "writable",
        &["--plugin", copy.to_str().unwrap()],
        &["writable by group or others"],
    );

    let pinned = plugin_config(
        &dir,
        "pinned",
        "bamflow_test_noop",
        &format!("sha256 = \"{}\"", "0".repeat(64)),
    );
    refused(
        "sha",
        &["--config", &pinned],
        &["SHA-256 is", "but the config pins"],
    );

    refused(
        "missing",
        &["--plugin", dir.path("libnothing.so").to_str().unwrap()],
        &["cannot read it"],
    );

    let rejecting = plugin_config(
        &dir,
        "rejecting",
        "bamflow_test_misbehaving",
        "config = { mode = \"reject\" }",
    );
    refused(
        "rejecting",
        &["--config", &rejecting],
        &["misbehaving", "rejected on purpose"],
    );

    // The conformance harness passes good plugins and reports ns per record.
    let result = Command::new(bamflow_tests::bamflow_bin())
        .args(["plugin", "check"])
        .arg(plugin_library("bamflow_test_noop"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(result.status.success(), "{stdout}");
    assert!(
        stdout.contains("ns per record") && !stdout.contains("FAIL"),
        "{stdout}"
    );
    let result = Command::new(bamflow_tests::bamflow_bin())
        .args(["plugin", "check"])
        .arg(&abi2)
        .output()
        .unwrap();
    assert_eq!(result.status.code(), Some(1));
}

#[test]
fn a_panicking_plugin_fails_its_file_and_the_daemon_goes_on() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let config = config(&dir, &inbox, "");
    let text = std::fs::read_to_string(&config).unwrap()
        + &format!(
            "\n[[plugin]]\npath = \"{}\"\n",
            plugin_library("bamflow_test_misbehaving").display()
        );
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(dir.root(), Some(&config));

    let sam = "@HD\tVN:1.6\n@SQ\tSN:chr1\tLN:1000\n\
               ok1\t0\tchr1\t10\t60\t4M\t*\t0\t0\tACGT\tIIII\n\
               panic-me\t0\tchr1\t20\t60\t4M\t*\t0\t0\tACGT\tIIII\n";
    let bad = dir.bam_from_sam("panics", sam);
    std::fs::copy(&bad, inbox.join("panics.bam")).unwrap();
    let good = dir.generated(DataKind::Short, 1_000, 87);
    std::fs::copy(&good, inbox.join("good.bam")).unwrap();

    daemon.wait_for(
        "the panicking file to be set aside and the good one converted",
        || {
            inbox.join("failed/panics.bam.error.json").exists()
                && inbox.join("done/good.bam").exists()
        },
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(inbox.join("failed/panics.bam.error.json")).unwrap())
            .unwrap();
    assert_eq!(report["stage"], "filter");
    let message = report["message"].as_str().unwrap();
    assert!(
        message.contains("misbehaving")
            && message.contains("panicked")
            && message.contains("panic-me"),
        "{message}"
    );
    assert_eq!(report["location"]["record"], 1, "the batch's first record");

    let dataset = sam_text::read_dataset(&dir.path("lake/test/good")).unwrap();
    assert_eq!(
        dataset.rows.len(),
        samtools(&good, &["-c"], &[])[0].parse::<usize>().unwrap()
    );
    daemon.stop();
}

#[test]
fn generated_short_reads_are_coordinate_sorted_as_their_header_says() {
    // samtools index refuses unsorted positions; the generator once emitted a contig's last
    // mates out of order.
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 60_000, 88);
    stdout_of(Command::new("samtools").arg("index").arg(&bam));
}

/// `--region R` for each region.
fn region_args<'a>(regions: &[&'a str]) -> Vec<&'a str> {
    regions.iter().flat_map(|r| ["--region", r]).collect()
}

#[test]
fn the_unplaced_region_star_matches_samtools() {
    let dir = TestDir::new();
    for csi in [false, true] {
        let bam = indexed(&dir, 6_000, 91, csi);
        for regions in [&["*"][..], &["chr1:1-100000", "*"]] {
            let theirs = samtools(&bam, &["-M"], regions);
            let unplaced = theirs
                .iter()
                .filter(|l| !l.starts_with('@') && l.split('\t').nth(2) == Some("*"))
                .count();
            assert!(unplaced > 0, "the generator made no unplaced reads");
            let out = dir.path(&format!("star-{csi}-{}", regions.len()));
            let dataset = convert_ok(&bam, &out, &region_args(regions));
            assert_same(&dataset, &theirs, &format!("{regions:?} (csi: {csi})"));
        }
    }

    // No placed record at all: nothing in the index says where the unplaced ones start.
    let sam = "@HD\tVN:1.6\tSO:coordinate\n@SQ\tSN:chr1\tLN:1000\n\
               u1\t4\t*\t0\t0\t*\t*\t0\t0\tACGT\tIIII\n\
               u2\t4\t*\t0\t0\t*\t*\t0\t0\tGGCC\tIIII\n";
    let bam = dir.bam_from_sam("unplaced_only", sam);
    assert!(Command::new("samtools")
        .arg("index")
        .arg(&bam)
        .status()
        .unwrap()
        .success());
    let dataset = convert_ok(&bam, &dir.path("star-only"), &["--region", "*"]);
    assert_eq!(dataset.rows.len(), 2);
    assert_same(&dataset, &samtools(&bam, &[], &["*"]), "unplaced only");
}

#[test]
fn braced_reference_names_match_samtools() {
    let dir = TestDir::new();
    let sam = "@HD\tVN:1.6\tSO:coordinate\n\
               @SQ\tSN:chr1,chr3\tLN:1000\n@SQ\tSN:chr1:100\tLN:1000\n@SQ\tSN:chr1\tLN:1000\n\
               a1\t0\tchr1,chr3\t10\t60\t4M\t*\t0\t0\tACGT\tIIII\n\
               a2\t0\tchr1,chr3\t900\t60\t4M\t*\t0\t0\tACGT\tIIII\n\
               b1\t0\tchr1:100\t20\t60\t4M\t*\t0\t0\tACGT\tIIII\n\
               b2\t0\tchr1:100\t80\t60\t4M\t*\t0\t0\tACGT\tIIII\n\
               c1\t0\tchr1\t30\t60\t4M\t*\t0\t0\tACGT\tIIII\n";
    let bam = dir.bam_from_sam("braced", sam);
    assert!(Command::new("samtools")
        .arg("index")
        .arg(&bam)
        .status()
        .unwrap()
        .success());
    for (i, regions) in [
        &["{chr1,chr3}"][..],
        &["{chr1:100}:1-50"],
        &["{chr1,chr3}:800-1000", "{chr1:100}", "chr1"],
    ]
    .into_iter()
    .enumerate()
    {
        // Not -M: samtools 1.16's multi-region iterator does not read braces. Its one-region-
        // at-a-time output is the union in file order here, since the regions are disjoint
        // and listed in the file's order.
        let theirs = samtools(&bam, &[], regions);
        assert!(theirs.iter().any(|l| !l.starts_with('@')), "{regions:?}");
        let out = dir.path(&format!("braced-{i}"));
        let dataset = convert_ok(&bam, &out, &region_args(regions));
        assert_same(&dataset, &theirs, &format!("{regions:?}"));
    }
}
