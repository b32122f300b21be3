//! Column subsets, promoted tags, configuration, the profile command, and output that does not
//! depend on threads or batch sizes.

use bamflow_tests::generator::{DataKind, Spec};
use bamflow_tests::sam_text::{self, Cell, TagOrder};
use bamflow_tests::{bamflow, samtools_view};
use serde_json::Value;

use crate::support::{convert_ok, manifest, stdout_of, TestDir};

/// samtools' record lines (header removed).
fn records(bam: &std::path::Path) -> Vec<String> {
    samtools_view(bam, &[])
        .unwrap()
        .into_iter()
        .filter(|l| !l.starts_with('@'))
        .collect()
}

#[test]
fn column_subset_holds_exactly_those_columns_in_that_order() {
    let dir = TestDir::new();
    for bam in [
        dir.bam_from_data("cigars.sam"),
        dir.bam_from_data("star_fields.sam"),
        dir.generated(DataKind::Short, 3_000, 2),
    ] {
        for columns in [
            &["end", "qname", "pos"][..],
            &["seq"],
            &["tags", "rnext", "flag", "qual", "cigar"],
            &["rname", "mapq", "pnext", "tlen"],
        ] {
            let out = dir.path(&format!(
                "{}-{}",
                bam.file_stem().unwrap().to_string_lossy(),
                columns.join("_")
            ));
            let dataset = convert_ok(&bam, &out, &["--columns", &columns.join(",")]);
            assert_eq!(dataset.columns, columns);
            let expected: Vec<_> = records(&bam)
                .iter()
                .map(|l| sam_text::samtools_columns(l, columns))
                .collect();
            let actual: Vec<_> = dataset
                .rows
                .iter()
                .map(|r| sam_text::row_strings(r))
                .collect();
            assert_eq!(actual, expected, "columns {columns:?} of {}", bam.display());
        }
    }
}

#[test]
fn promoted_tags_get_typed_columns_and_leave_tags() {
    let dir = TestDir::new();
    let bam = dir.bam_from_data("tag_types.sam");
    let specs = [
        "Xc:i", "XI:i", "Xf:f", "XZ:Z", "XH:H", "XA:A", "Bc:B:i", "BI:B:i", "Bf:B:f", "NM:i",
        "XY:Z",
    ];
    let dataset = convert_ok(&bam, &dir.path("out"), &["--tags", &specs.join(",")]);

    let types: Vec<String> = dataset.types.iter().map(|t| t.to_string()).collect();
    assert_eq!(
        &types[13..],
        [
            "Int64",
            "Int64",
            "Float32",
            "Utf8",
            "Utf8",
            "Utf8",
            "List(non-null Int64)",
            "List(non-null Int64)",
            "List(non-null Float32)",
            "Int64",
            "Utf8",
            "Utf8", // tag_layout
        ]
    );
    assert_eq!(
        dataset.columns.last().map(String::as_str),
        Some("tag_layout")
    );
    assert_eq!(dataset.schema_version, "2");
    let theirs = samtools_view(&bam, &[]).unwrap();
    let ours = dataset.to_sam(&specs).unwrap();
    sam_text::compare(&ours, &theirs, TagOrder::Unordered).unwrap();

    let col = |name: &str| dataset.columns.iter().position(|c| c == name).unwrap();
    let scalars = &dataset.rows[0];
    assert_eq!(scalars[col("XI")], Cell::Int(4_294_967_295));
    assert_eq!(scalars[col("Xf")], Cell::Float(0.1));
    assert_eq!(
        scalars[col("XY")],
        Cell::Text(String::new()),
        "empty Z is a value, not null"
    );
    let Cell::Text(tags) = &scalars[col("tags")] else {
        panic!("tags")
    };
    assert!(
        !tags.contains("XI:") && !tags.contains("Xf:") && tags.contains("Xs:i:-32768"),
        "{tags}"
    );

    let arrays = &dataset.rows[1];
    assert_eq!(arrays[col("Bc")], Cell::IntList(vec![-128, 0, 127]));
    assert_eq!(arrays[col("BI")], Cell::IntList(vec![0, 4_294_967_295]));
    assert_eq!(arrays[col("Xc")], Cell::Null);

    // Only the first NM fits the column; the second stays in tags, in its place.
    let duplicated = &dataset.rows[3];
    assert_eq!(duplicated[col("NM")], Cell::Int(0));
    assert_eq!(
        duplicated[col("tags")],
        Cell::Text("MD:Z:5\tAS:i:5\tNM:i:1\tRG:Z:x\tZZ:A:!".into())
    );
}

#[test]
fn a_value_of_another_type_stays_in_tags() {
    let dir = TestDir::new();
    let bam = dir.bam_from_data("tag_types.sam");
    // XZ is a string and Bf a float array: neither fits an integer column.
    let dataset = convert_ok(&bam, &dir.path("out"), &["--tags", "XZ:i,Bf:B:i"]);
    let col = |name: &str| dataset.columns.iter().position(|c| c == name).unwrap();
    assert!(dataset
        .rows
        .iter()
        .all(|r| r[col("XZ")] == Cell::Null && r[col("Bf")] == Cell::Null));
    let theirs = samtools_view(&bam, &[]).unwrap();
    sam_text::compare(&dataset.to_sam(&[]).unwrap(), &theirs, TagOrder::Exact).unwrap();
}

#[test]
fn promoted_tag_not_selected_stays_in_tags() {
    let dir = TestDir::new();
    let bam = dir.bam_from_data("tag_types.sam");
    let dataset = convert_ok(
        &bam,
        &dir.path("out"),
        &["--tags", "Xc:i", "--columns", "qname,tags"],
    );
    assert_eq!(dataset.columns, ["qname", "tags"]);
    let Cell::Text(tags) = &dataset.rows[0][1] else {
        panic!()
    };
    assert!(tags.contains("Xc:i:-128"), "{tags}");
}

/// The part files of a dataset, in name order.
fn part_files(dataset: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut parts: Vec<_> = std::fs::read_dir(dataset)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "parquet"))
        .collect();
    parts.sort();
    parts
}

/// The bytes of every part of a dataset, by file name.
fn part_bytes(dataset: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    part_files(dataset)
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect()
}

fn row_group_count(dataset: &std::path::Path) -> usize {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    part_files(dataset)
        .into_iter()
        .map(|path| {
            let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
            reader.metadata().num_row_groups()
        })
        .sum()
}

/// Converts `bam` at 1, 2 and 4 threads and batches of 1, 7 and the profile's size; every
/// part must be byte-identical to the single-threaded conversion's, and the rows equal.
fn assert_reproducible(dir: &TestDir, bam: &std::path::Path, config: &str, extra: &[&str]) {
    let stem = bam.file_stem().unwrap().to_string_lossy().into_owned();
    let config_path = dir.path(&format!("{stem}.toml"));
    std::fs::write(&config_path, config).unwrap();
    let config_path = config_path.to_str().unwrap();
    let run = |threads: &str, batch: &str| {
        let out = dir.path(&format!("{stem}-t{threads}-b{batch}"));
        let mut args = vec!["--config", config_path, "--threads", threads];
        args.extend(["--batch-records", batch]);
        args.extend_from_slice(extra);
        let dataset = convert_ok(bam, &out, &args);
        (out, dataset)
    };
    let (reference_dir, reference) = run("1", "0");
    let reference_parts = part_bytes(&reference_dir);
    assert!(
        row_group_count(&reference_dir) > reference_parts.len(),
        "{config}: the limit under test must close row groups inside parts"
    );
    for threads in ["1", "2", "4"] {
        for batch in ["1", "7", "0"] {
            if (threads, batch) == ("1", "0") {
                continue;
            }
            let (out, dataset) = run(threads, batch);
            assert_eq!(
                dataset.rows, reference.rows,
                "threads {threads}, batch {batch}"
            );
            let parts = part_bytes(&out);
            assert_eq!(parts.len(), reference_parts.len());
            for ((name, bytes), (_, expected)) in parts.iter().zip(&reference_parts) {
                assert!(
                    bytes == expected,
                    "{config}: {name} differs at threads {threads}, batch {batch}"
                );
            }
        }
    }
}

#[test]
fn parts_are_byte_identical_for_every_thread_count_and_batch_size() {
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 6_000, 13);
    // Small row groups by rows: several per part, and from 4 threads two encoding at once.
    assert_reproducible(
        &dir,
        &bam,
        "[convert]\nrow_group_rows = 300\n",
        &["--part-records", "2500"],
    );
}

#[test]
fn pages_end_at_the_same_rows_for_every_thread_count_and_batch_size() {
    let dir = TestDir::new();
    // About 4.5 MB of qualities and as much sequence: several 1 MiB pages per column chunk,
    // whose ends the column writers decide. A promoted integer array is a list column.
    let long = dir.generated(DataKind::Long, 150, 15);
    assert_reproducible(
        &dir,
        &long,
        "[convert]\nrow_group_rows = 100\n",
        &["--tags", "ML:B:i,de:f"],
    );
}

#[test]
fn parts_are_byte_identical_when_row_groups_close_on_bytes() {
    let dir = TestDir::new();
    let short = dir.generated(DataKind::Short, 6_000, 14);
    assert_reproducible(&dir, &short, "[convert]\nrow_group_mb = 1\n", &[]);
    let long = dir.generated(DataKind::Long, 150, 16);
    assert_reproducible(&dir, &long, "[convert]\nrow_group_mb = 3\n", &[]);
}

#[test]
fn config_file_sets_defaults_and_flags_win() {
    let dir = TestDir::new();
    let bam = dir.bam_from_data("tag_types.sam");
    let config = dir.path("bamflow.toml");
    std::fs::write(
        &config,
        "[convert]\ncolumns = [\"qname\", \"NM\"]\ntags = [\"NM:i\"]\nzstd_level = 19\n",
    )
    .unwrap();

    let from_file = convert_ok(
        &bam,
        &dir.path("a"),
        &["--config", config.to_str().unwrap()],
    );
    assert_eq!(from_file.columns, ["qname", "NM"]);

    let flags_win = convert_ok(
        &bam,
        &dir.path("b"),
        &["--config", config.to_str().unwrap(), "--columns", "flag"],
    );
    assert_eq!(flags_win.columns, ["flag"]);
}

/// Compressed bytes of each column chunk named `column`, over every part and row group.
fn chunk_sizes(dataset: &std::path::Path, column: &str) -> Vec<i64> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let part = std::fs::File::open(dataset.join("part-00000.parquet")).unwrap();
    let metadata = SerializedFileReader::new(part).unwrap().metadata().clone();
    metadata
        .row_groups()
        .iter()
        .flat_map(|rg| rg.columns())
        .filter(|c| c.column_path().parts()[0] == column)
        .map(|c| c.compressed_size())
        .collect()
}

#[test]
fn columns_have_their_own_zstd_levels_and_the_manifest_says_so() {
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 30_000, 7);
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path(name);
        convert_ok(&bam, &out, extra);
        let manifest = manifest(&out);
        (out, manifest)
    };
    let pinned = ["--tags", "MD:Z", "--column-zstd-level", "qual=1"];
    let (default, manifest) = run("default", &pinned);
    assert_eq!(manifest["zstd_level"], 3);
    assert_eq!(
        manifest["column_zstd_levels"],
        serde_json::json!({"qual": 1})
    );
    // QUAL pinned here too: left `auto`, the generator's qualities may take literals only.
    let (all_one, _) = run(
        "one",
        &[
            "--tags",
            "MD:Z",
            "--zstd-level",
            "1",
            "--column-zstd-level",
            "qual=1",
        ],
    );
    let (all_three, manifest) = run(
        "three",
        &["--tags", "MD:Z", "--column-zstd-level", "qual=3"],
    );
    assert_eq!(
        manifest["column_zstd_levels"],
        serde_json::json!({"qual": 3})
    );
    let (md_one, _) = run(
        "md",
        &["--tags", "MD:Z", "--column-zstd-level", "qual=1,MD=1"],
    );

    // Each column chunk is the same bytes as in the run whose level it shares.
    let sizes = |out: &std::path::Path, column| chunk_sizes(out, column);
    assert_eq!(sizes(&default, "qual"), sizes(&all_one, "qual"));
    assert_ne!(sizes(&default, "qual"), sizes(&all_three, "qual"));
    for column in ["seq", "qname", "tags", "MD"] {
        assert_eq!(
            sizes(&default, column),
            sizes(&all_three, column),
            "{column}"
        );
        assert_ne!(sizes(&default, column), sizes(&all_one, column), "{column}");
    }
    assert_eq!(sizes(&md_one, "MD"), sizes(&all_one, "MD"));
    assert_eq!(sizes(&md_one, "seq"), sizes(&default, "seq"));
}

/// `auto` (the default on every text column) keeps level 1 where a trial on the file's first
/// records finds it no more than 10% larger. QUAL shows both outcomes: level 1 on the
/// generator's Illumina-like qualities, level 3 on its smooth random-walk long-read qualities,
/// where level 3 is far smaller. All but CIGAR also try level 1 with a small match table, and
/// SEQ and QUAL with literals only (kept within 5% of the smaller table): SEQ's overlapping
/// short reads take the small table, the long reads' SEQ (no overlaps) literals only.
#[test]
fn auto_levels_follow_the_trial_on_the_files_own_columns() {
    let dir = TestDir::new();
    let short = dir.generated(DataKind::Short, 20_000, 3);
    let long = dir.generated_spec(&Spec {
        max_read_length: 60_000,
        ..Spec::new(DataKind::Long, 150, 5)
    });
    for (bam, expected) in [(short.clone(), 1), (long.clone(), 3)] {
        let out = dir.path(&format!("{}.d", bam.display()));
        convert_ok(&bam, &out, &[]);
        let manifest = manifest(&out);
        let trials = manifest["profile"]["level_trials"].as_object().unwrap();
        let columns: Vec<&str> = trials.keys().map(String::as_str).collect();
        assert_eq!(columns, ["cigar", "qname", "qual", "seq", "tags"]);
        // Each column's level, and how level 1 searches for matches, are the trial's choice:
        // the fastest way of level 1 within 10% of level 3: literals only if also within 5% of
        // the smaller of zstd's own table and the small table, else that table.
        for (column, trial) in trials {
            let at_level = trial["bytes_at_level"].as_f64().unwrap();
            let small = &trial["small_table"];
            assert_eq!(small.is_null(), column == "cigar");
            let literals = &trial["literals_only"];
            assert_eq!(
                literals.is_null(),
                !["seq", "qual"].contains(&column.as_str())
            );
            let within_level = |bytes: f64| bytes <= at_level * 1.10;
            let mut table = (trial["bytes_at_1"].as_f64().unwrap(), "own");
            if let Some(bytes) = small["bytes_at_1"].as_f64().filter(|&b| b <= table.0) {
                table = (bytes, "small");
            }
            let literals = literals
                .as_f64()
                .filter(|&b| b <= table.0 * 1.05 && within_level(b));
            let search = match literals {
                Some(_) => Some("literals"),
                None => within_level(table.0).then_some(table.1),
            };
            assert_eq!(trial["level"], 3);
            let choice = if search.is_some() { 1 } else { 3 };
            assert_eq!(
                manifest["column_zstd_levels"][column], choice,
                "{column}: {trial}"
            );
            let search = search.unwrap_or("own");
            let table = (search == "small").then(|| &small["hash_log"]);
            assert_eq!(
                manifest["column_zstd_hash_logs"].get(column),
                table,
                "{column}: {trial}"
            );
            let target_length = manifest["column_zstd_target_lengths"].get(column);
            assert_eq!(
                target_length.and_then(|t| t.as_u64()),
                (search == "literals").then_some(1 << 17),
                "{column}: {trial}"
            );
        }
        assert_eq!(
            manifest["column_zstd_levels"]["qual"],
            expected,
            "{}",
            bam.display()
        );
        // Where the trial kept level 3, level 1 on the whole file is larger beyond the tolerance;
        // where it kept level 1 with zstd's own table, a fixed level 1 gives the same bytes.
        let forced = dir.path(&format!("{}.one", bam.display()));
        convert_ok(&bam, &forced, &["--column-zstd-level", "qual=1"]);
        let auto_bytes: i64 = chunk_sizes(&out, "qual").iter().sum();
        let one_bytes: i64 = chunk_sizes(&forced, "qual").iter().sum();
        if expected == 3 {
            assert!(
                one_bytes as f64 > auto_bytes as f64 * 1.1,
                "{one_bytes} vs {auto_bytes}"
            );
        } else if manifest["column_zstd_hash_logs"].get("qual").is_none()
            && manifest["column_zstd_target_lengths"].get("qual").is_none()
        {
            assert_eq!(one_bytes, auto_bytes);
        }
    }
    // SEQ of the short reads took the small table, and the whole column is smaller for it
    // than at a fixed level 1 with zstd's own.
    let out = dir.path(&format!("{}.d", short.display()));
    assert_eq!(manifest(&out)["column_zstd_hash_logs"]["seq"], 6);
    let forced = dir.path(&format!("{}.seq", short.display()));
    convert_ok(&short, &forced, &["--column-zstd-level", "seq=1"]);
    let small: i64 = chunk_sizes(&out, "seq").iter().sum();
    let own: i64 = chunk_sizes(&forced, "seq").iter().sum();
    assert!(small < own, "{small} vs {own}");
    // SEQ of the long reads took literals only, and is smaller for it too.
    let out = dir.path(&format!("{}.d", long.display()));
    assert_eq!(manifest(&out)["column_zstd_target_lengths"]["seq"], 1 << 17);
    let forced = dir.path(&format!("{}.seq", long.display()));
    convert_ok(&long, &forced, &["--column-zstd-level", "seq=1"]);
    let literals: i64 = chunk_sizes(&out, "seq").iter().sum();
    let own: i64 = chunk_sizes(&forced, "seq").iter().sum();
    assert!(literals < own, "{literals} vs {own}");
}

#[test]
fn usage_and_config_errors_exit_2() {
    let dir = TestDir::new();
    let bam = dir.bam_from_data("tag_types.sam");
    let config = dir.path("bad.toml");
    std::fs::write(&config, "[convert]\nzstd_level = 3\ncolums = []\n").unwrap();

    let t = |args: &[&str], expected: &str| {
        let output = bamflow(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    };
    let (b, o) = (bam.to_str().unwrap(), dir.path("out"));
    let o = o.to_str().unwrap();
    t(
        &["convert", b, o, "--config", config.to_str().unwrap()],
        "bad.toml:3:1",
    );
    t(
        &["convert", b, o, "--columns", "qname,nope"],
        "unknown column \"nope\"",
    );
    t(&["convert", b, o, "--tags", "NM"], "invalid tag \"NM\"");
    t(
        &["convert", b, o, "--zstd-level", "40"],
        "convert.zstd_level",
    );
    t(
        &["convert", b, o, "--column-zstd-level", "qual=0"],
        "convert.column_zstd_levels: qual: 0 is outside 1..=22",
    );
    t(
        &["convert", b, o, "--column-zstd-level", "quals=1"],
        "\"quals\" is not a column",
    );
    t(
        &["convert", b, o, "--column-zstd-level", "qual"],
        "is not COLUMN=LEVEL",
    );
    t(&["convert", b], "OUTPUT");
    t(
        &["check-config", config.to_str().unwrap()],
        "unknown key `convert.colums`",
    );
    assert!(!dir.path("out").exists());
}

#[test]
fn check_config_accepts_the_sample_config_once_its_folders_exist() {
    let sample_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/bamflow.toml");
    let sample = std::fs::read_to_string(&sample_path).unwrap();

    // As shipped, it names /srv/drop/novaseq, which a test machine does not have.
    let output = bamflow(&["check-config", sample_path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !std::path::Path::new("/srv/drop/novaseq").is_dir() {
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        let path_line = sample
            .lines()
            .position(|l| l.starts_with("path = "))
            .unwrap()
            + 1;
        assert!(stderr.contains(&format!("bamflow.toml:{path_line}:1: watch[0].path: folder /srv/drop/novaseq does not exist")), "{stderr}");
    }

    let dir = TestDir::new();
    std::fs::create_dir(dir.path("novaseq")).unwrap();
    let copy = dir.path("bamflow.toml");
    std::fs::write(
        &copy,
        sample.replace("/srv/drop/novaseq", dir.path("novaseq").to_str().unwrap()),
    )
    .unwrap();
    stdout_of(&mut bamflow(&["check-config", copy.to_str().unwrap()]));
}

/// A conversion reads only the sample it plans with: a file too small for the zstd level trial
/// gets a thousand records (the batch plan uses their mean size), not the ten thousand
/// `bamflow profile` describes it with, which were most of a small file read a second time.
#[test]
fn a_file_too_small_for_the_level_trial_is_sampled_for_its_batch_plan_only() {
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 4_000, 21);
    let described: Value = serde_json::from_slice(
        &bamflow(&["profile", bam.to_str().unwrap()])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(described["sampled_whole_file"], true);

    let out = dir.path("out");
    convert_ok(&bam, &out, &[]);
    let profile = &manifest(&out)["profile"];
    assert_eq!(profile["records_sampled"], 1_000);
    assert_eq!(profile["sampled_whole_file"], false);
    assert_eq!(profile["level_trials"], Value::Null);
    let mean = |p: &Value| p["record_bytes"]["mean"].as_f64().unwrap();
    assert!((mean(profile) / mean(&described) - 1.0).abs() < 0.05);
}

#[test]
fn profile_prints_sizes_tags_sort_order_and_batch_plan() {
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 4_000, 21);
    let output = bamflow(&["profile", bam.to_str().unwrap(), "--threads", "2"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let profile: Value = serde_json::from_slice(&output.stdout).unwrap();

    let records: u64 = samtools_view(&bam, &["-c"]).unwrap()[0].parse().unwrap();
    assert_eq!(profile["records_sampled"], records);
    assert_eq!(profile["sampled_whole_file"], true);
    assert_eq!(profile["sort_order"], "coordinate");
    assert_eq!(profile["index"], Value::Null);
    assert_eq!(profile["read_length"]["p50"], 150);
    assert!(profile["record_bytes"]["mean"].as_f64().unwrap() > 300.0);
    assert!(profile["tags"]["NM"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t.as_str().unwrap().starts_with('i')));
    assert_eq!(profile["tags"]["MD"], serde_json::json!(["Z"]));
    assert_eq!(profile["batch"]["window"], 2);
    assert!(profile["batch"]["max_records"].as_u64().unwrap() > 1000);

    let status = std::process::Command::new("samtools")
        .arg("index")
        .arg(&bam)
        .status()
        .unwrap();
    assert!(status.success());
    let output = bamflow(&["profile", bam.to_str().unwrap()])
        .output()
        .unwrap();
    let profile: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(profile["index"]["kind"], "bai");
}
