//! Every field of every record: datasets rebuilt as SAM text equal `samtools view -h --no-PG`.

use std::process::Command;

use bamflow_tests::generator::{DataKind, Spec};
use bamflow_tests::sam_text::{self, Cell, TagOrder};
use bamflow_tests::samtools_view;

use crate::support::{assert_matches_samtools, convert_ok, manifest, raw_bam_header, TestDir};

#[test]
fn sam_corpus_matches_samtools_line_for_line() {
    let dir = TestDir::new();
    for name in [
        "tag_types.sam",
        "star_fields.sam",
        "mates_and_positions.sam",
        "cigars.sam",
        "header_only.sam",
    ] {
        let bam = dir.bam_from_data(name);
        assert_matches_samtools(&bam, &dir.path(&format!("{name}.out")), &[]);
    }
}

#[test]
fn header_only_file_gets_one_empty_part_with_schema_and_header() {
    let dir = TestDir::new();
    let bam = dir.bam_from_data("header_only.sam");
    let out = dir.path("out");
    let dataset = convert_ok(&bam, &out, &[]);
    assert_eq!(dataset.parts, ["part-00000.parquet"]);
    assert!(dataset.rows.is_empty());
    assert!(dataset
        .sam_header
        .contains("@CO\tA file with a header and no records."));
    assert_eq!(dataset.columns.len(), 13);
}

#[test]
fn generated_short_long_and_unaligned_files_match_samtools() {
    let dir = TestDir::new();
    let long = Spec {
        max_read_length: 60_000,
        ..Spec::new(DataKind::Long, 60, 7)
    };
    let inputs = [
        dir.generated(DataKind::Short, 20_000, 1),
        dir.generated_spec(&long),
        dir.generated(DataKind::Unaligned, 10_000, 3),
    ];
    for (i, bam) in inputs.iter().enumerate() {
        let dataset = assert_matches_samtools(bam, &dir.path(&format!("out{i}")), &[]);
        assert!(!dataset.rows.is_empty());
    }
}

#[test]
fn megabase_read_with_cg_tag_cigar_matches_samtools() {
    // A 1 Mbp ONT-like read has ~80k CIGAR operations: noodles' writer stores them in a CG
    // tag, and the record spans dozens of BGZF blocks.
    let dir = TestDir::new();
    let spec = Spec {
        max_read_length: 1_000_000,
        ..Spec::new(DataKind::Long, 3, 11)
    };
    let bam = dir.generated_spec(&spec);
    let dataset = assert_matches_samtools(&bam, &dir.path("out"), &[]);

    let cigar = dataset.columns.iter().position(|c| c == "cigar").unwrap();
    let tags = dataset.columns.iter().position(|c| c == "tags").unwrap();
    let longest = dataset
        .rows
        .iter()
        .filter_map(|row| match &row[cigar] {
            Cell::Text(c) => Some((c.chars().filter(|c| c.is_ascii_alphabetic()).count(), row)),
            _ => None,
        })
        .max_by_key(|(ops, _)| *ops)
        .unwrap();
    assert!(
        longest.0 > 65_535,
        "longest CIGAR has only {} ops",
        longest.0
    );
    let Cell::Text(tag_text) = &longest.1[tags] else {
        panic!("no tags")
    };
    assert!(
        !tag_text.split('\t').any(|t| t.starts_with("CG:")),
        "CG must not appear in tags"
    );
}

#[test]
fn cg_tag_written_by_samtools_is_moved_back_into_cigar() {
    let dir = TestDir::new();
    let ops = 70_000;
    let cigar = "1M1I".repeat(ops / 2);
    let seq: String = "ACGT".chars().cycle().take(ops).collect();
    let qual = "I".repeat(ops);
    let sam = format!(
        "@HD\tVN:1.6\n@SQ\tSN:chr1\tLN:100000\nmany_ops\t0\tchr1\t10\t60\t{cigar}\t*\t0\t0\t{seq}\t{qual}\tNM:i:{}\n",
        ops / 2
    );
    let bam = dir.bam_from_sam("cg", &sam);
    let dataset = assert_matches_samtools(&bam, &dir.path("out"), &[]);
    let end = dataset.columns.iter().position(|c| c == "end").unwrap();
    assert_eq!(dataset.rows[0][end], Cell::Int(10 + ops as i64 / 2 - 1));
}

#[test]
fn long_header_spanning_blocks_matches_samtools() {
    let dir = TestDir::new();
    let mut sam = String::from("@HD\tVN:1.6\tSO:coordinate\n");
    for i in 0..20_000 {
        sam.push_str(&format!(
            "@SQ\tSN:contig_{i:06}_with_a_long_descriptive_name\tLN:{}\n",
            1000 + i
        ));
    }
    for i in 0..500 {
        sam.push_str(&format!("@CO\tcomment line {i} {}\n", "x".repeat(200)));
    }
    sam.push_str(
        "r1\t0\tcontig_019999_with_a_long_descriptive_name\t5\t60\t4M\t*\t0\t0\tACGT\tIIII\n",
    );
    let bam = dir.bam_from_sam("long_header", &sam);
    let dataset = assert_matches_samtools(&bam, &dir.path("out"), &[]);
    assert!(dataset.sam_header.len() > 1 << 20);
}

#[test]
fn header_text_is_stored_as_samtools_prints_it() {
    // NUL padding is dropped, a missing final newline added, and @SQ lines built from the
    // binary reference list when the text has none.
    let dir = TestDir::new();
    let cases: [(&str, &[u8]); 3] = [
        (
            "padded",
            b"@HD\tVN:1.6\n@SQ\tSN:chr1\tLN:100\n@SQ\tSN:chr2\tLN:200\n\0\0\0\0\0\0",
        ),
        ("no_sq", b"@HD\tVN:1.6\tSO:unsorted\n@CO\thello"),
        ("empty", b""),
    ];
    for (name, text) in cases {
        let raw = raw_bam_header(text, text.len() as i32, &[("chr1", 100), ("chr2", 200)]);
        let bam = dir.bgzf_file(&format!("{name}.bam"), &raw);
        assert_matches_samtools(&bam, &dir.path(&format!("{name}.out")), &[]);
    }
}

#[test]
fn dataset_of_several_parts_holds_every_record_once_in_order() {
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 10_000, 5);
    let out = dir.path("out");
    let dataset = assert_matches_samtools(&bam, &out, &["--part-records", "1500"]);
    let records = samtools_view(&bam, &["-c"]).unwrap()[0]
        .parse::<usize>()
        .unwrap();
    assert_eq!(dataset.rows.len(), records);
    assert_eq!(dataset.parts.len(), records.div_ceil(1500));

    let manifest = manifest(&out);
    assert_eq!(manifest["counts"]["read"], records);
    assert_eq!(manifest["counts"]["written"], records);
    assert_eq!(manifest["schema_version"], 1);
    let parts = manifest["parts"].as_array().unwrap();
    assert_eq!(parts.len(), dataset.parts.len());
    for (i, part) in parts.iter().enumerate() {
        assert_eq!(part["file"], format!("part-{i:05}.parquet"));
        let expected_rows = if i + 1 < parts.len() {
            1500
        } else {
            records - 1500 * i
        };
        assert_eq!(part["rows"], expected_rows);
        assert_eq!(
            part["bytes"],
            std::fs::metadata(out.join(format!("part-{i:05}.parquet")))
                .unwrap()
                .len()
        );
    }
    assert!(out.join("_SUCCESS").is_file());

    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.retain(|n| !n.starts_with("part-"));
    names.sort();
    assert_eq!(
        names,
        ["_SUCCESS", "_manifest.json"],
        "nothing else in the dataset folder"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.root())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "staging folder left behind: {leftovers:?}"
    );
}

#[test]
fn comparison_catches_a_changed_value() {
    let dir = TestDir::new();
    let bam = dir.bam_from_data("tag_types.sam");
    let dataset = convert_ok(&bam, &dir.path("out"), &[]);
    let theirs = samtools_view(&bam, &[]).unwrap();
    let ours = dataset.to_sam(&[]).unwrap();
    sam_text::compare(&ours, &theirs, TagOrder::Exact).unwrap();

    let qual = dataset.columns.iter().position(|c| c == "qual").unwrap();
    let mut changed = dataset.clone();
    changed.rows[1][qual] = Cell::Text("####$".into());
    let err =
        sam_text::compare(&changed.to_sam(&[]).unwrap(), &theirs, TagOrder::Exact).unwrap_err();
    assert!(err.to_string().contains("arrays\t16"), "{err}");

    let tags = dataset.columns.iter().position(|c| c == "tags").unwrap();
    let mut changed = dataset.clone();
    let Cell::Text(t) = &changed.rows[0][tags] else {
        panic!()
    };
    changed.rows[0][tags] = Cell::Text(t.replace("Xf:f:0.1", "Xf:f:0.11"));
    assert!(sam_text::compare(&changed.to_sam(&[]).unwrap(), &theirs, TagOrder::Exact).is_err());

    let mut dropped = ours.clone();
    dropped.pop();
    assert!(sam_text::compare(&dropped, &theirs, TagOrder::Exact).is_err());
}

#[test]
fn pyarrow_and_duckdb_read_the_dataset() {
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 5_000, 9);
    let out = dir.path("out");
    convert_ok(
        &bam,
        &out,
        &["--part-records", "2000", "--tags", "NM:i,MD:Z"],
    );
    let records: usize = samtools_view(&bam, &["-c"]).unwrap()[0].parse().unwrap();

    let script = r#"
import sys, pyarrow.dataset as ds, duckdb
path, expected = sys.argv[1], int(sys.argv[2])
table = ds.dataset(path, format="parquet").to_table()
assert table.num_rows == expected, (table.num_rows, expected)
types = {f.name: str(f.type) for f in table.schema}
assert types["rname"] == "dictionary<values=string, indices=int32, ordered=0>", types["rname"]
assert types["flag"] == "uint16" and types["mapq"] == "uint8" and types["NM"] == "int64", types
assert list(types)[:13] == ["qname","flag","rname","pos","mapq","cigar","rnext","pnext","tlen","seq","qual","end","tags"]
import pyarrow.parquet as pq
meta = pq.ParquetFile(f"{path}/part-00000.parquet").metadata
pos = meta.row_group(0).column(3)
assert pos.path_in_schema == "pos" and pos.has_column_index and pos.has_offset_index, "page index"
assert pos.statistics.has_min_max and pos.statistics.min >= 1
group = meta.row_group(0)
chunks = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
# DESIGN §3's pruning columns keep statistics and a column index; every column an offset index.
for name in ["flag", "rname", "pos", "mapq", "tlen"]:
    chunk = chunks[name]
    assert chunk.is_stats_set and chunk.statistics.has_min_max and chunk.has_column_index, name
assert all(chunk.has_offset_index for chunk in chunks.values())
assert meta.row_group(0).column(0).compression == "ZSTD"
con = duckdb.connect()
n, mapped = con.execute(f"select count(*), count(rname) from read_parquet('{path}/*.parquet')").fetchone()
assert n == expected, (n, expected)
first = con.execute(f"select min(pos) from read_parquet('{path}/part-00000.parquet') where rname = 'chr1'").fetchone()[0]
assert first is not None and first >= 1
print("ok", n, mapped)
"#;
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&out)
        .arg(records.to_string())
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "independent readers failed (install pyarrow and duckdb): {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every column chunk uses only encodings that Spark's default (vectorized) Parquet reader
/// decodes: Spark 3.5 fails on DELTA_LENGTH_BYTE_ARRAY pages ("Failed to read 150 bytes"), so
/// strings, promoted text tags and list tags must stay PLAIN. `bench/spark_check.py` reads a
/// dataset with Spark itself; this pins the file-level property in every CI run, and that the
/// columns with few values are dictionaries (as keys they are smaller than as integers).
#[test]
fn every_column_uses_encodings_spark_reads() {
    use parquet::basic::Encoding;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 30_000, 11);
    let out = dir.path("out");
    convert_ok(&bam, &out, &["--tags", "NM:i,MD:Z,RG:Z"]);
    let readable = [
        Encoding::PLAIN,
        Encoding::RLE,
        Encoding::RLE_DICTIONARY,
        Encoding::PLAIN_DICTIONARY,
        Encoding::DELTA_BINARY_PACKED,
    ];
    let part = std::fs::File::open(out.join("part-00000.parquet")).unwrap();
    let metadata = SerializedFileReader::new(part).unwrap().metadata().clone();
    // Every encoding of each column, over all row groups.
    let mut encodings = std::collections::BTreeMap::<String, Vec<Encoding>>::new();
    for chunk in metadata.row_groups().iter().flat_map(|rg| rg.columns()) {
        let column = encodings.entry(chunk.column_path().string()).or_default();
        column.extend(chunk.encodings());
    }
    for (column, used) in &encodings {
        for encoding in used {
            assert!(
                readable.contains(encoding),
                "{column} is written with {encoding:?}, which Spark's vectorized reader fails on"
            );
        }
    }
    for column in ["qname", "seq", "qual", "tags", "MD", "pos"] {
        assert!(encodings.contains_key(column), "{column} not checked");
    }
    for column in ["rname", "flag", "mapq", "tlen"] {
        let used = encodings.get(column).map(Vec::as_slice).unwrap_or_default();
        assert!(
            used.contains(&Encoding::RLE_DICTIONARY),
            "{column} is not a dictionary: {used:?}"
        );
    }
}
