//! Bad input is normal input: exit status 1, one message naming the file, the stage and the
//! offset or record, and nothing at OUT_DIR.

use std::path::{Path, PathBuf};

use bamflow_tests::generator::DataKind;
use bamflow_tests::{convert, sam_to_bam};

use crate::support::{raw_bam_header, TestDir};

const EOF_BLOCK: [u8; 28] = [
    0x1f, 0x8b, 0x08, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0x06, 0x00, 0x42, 0x43, 0x02, 0x00,
    0x1b, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];

/// Converts `input` and checks the failure: status 1, the message, no output, no staging left.
fn assert_fails(dir: &TestDir, input: &Path, extra: &[&str], stage: &str, expected: &[&str]) {
    let out = dir.path("out");
    let result = convert(input, &out, extra);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(
        result.status.code(),
        Some(1),
        "{}: {stderr}",
        input.display()
    );
    let message = stderr.trim_end();
    assert_eq!(message.lines().count(), 1, "one line: {message}");
    assert!(
        message.contains(&input.file_name().unwrap().to_string_lossy().into_owned()),
        "names the file: {message}"
    );
    assert!(
        message.contains(&format!(": {stage} failed: ")),
        "names stage {stage}: {message}"
    );
    // Once (outside the file's name): a cause printed by its error and again by the chain
    // reads as a stutter.
    let causes = message.replace(&*input.to_string_lossy(), "");
    for fragment in expected {
        assert_eq!(
            causes.matches(fragment).count(),
            1,
            "{message:?} lacks {fragment:?} or repeats it"
        );
    }
    assert!(!message.contains("panicked"), "{message}");
    assert!(!out.exists(), "OUT_DIR must not exist after a failure");
    let staging: Vec<_> = std::fs::read_dir(dir.root())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".out"))
        .collect();
    assert!(staging.is_empty(), "staging left behind");
}

fn write(dir: &TestDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn header(text_len: i32, references: &[(&str, u32)]) -> Vec<u8> {
    let text = b"@HD\tVN:1.6\n";
    let written = &text[..(text_len.max(0) as usize).min(text.len())];
    raw_bam_header(written, text_len, references)
}

fn good_header() -> Vec<u8> {
    header(11, &[("chr1", 1000)])
}

/// One raw record (with its block_size), unmapped unless `reference_id` ≥ 0.
fn record(name: &[u8], reference_id: i32, tags: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&reference_id.to_le_bytes());
    body.extend_from_slice(&(if reference_id >= 0 { 10i32 } else { -1 }).to_le_bytes());
    body.push(name.len() as u8);
    body.push(255);
    body.extend_from_slice(&4680u16.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&4u16.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&(-1i32).to_le_bytes());
    body.extend_from_slice(&(-1i32).to_le_bytes());
    body.extend_from_slice(&0i32.to_le_bytes());
    body.extend_from_slice(name);
    body.extend_from_slice(tags);
    let mut raw = (body.len() as u32).to_le_bytes().to_vec();
    raw.extend_from_slice(&body);
    raw
}

/// Offsets of each BGZF block in a file.
fn block_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = 0;
    while at + 18 <= bytes.len() {
        offsets.push(at);
        at += usize::from(u16::from_le_bytes([bytes[at + 16], bytes[at + 17]])) + 1;
    }
    offsets
}

#[test]
fn empty_file() {
    let dir = TestDir::new();
    let input = write(&dir, "empty.bam", b"");
    assert_fails(&dir, &input, &[], "read", &["file is empty"]);
}

#[test]
fn text_cram_and_plain_gzip_named_bam() {
    let dir = TestDir::new();
    let sam = write(
        &dir,
        "sam_text.bam",
        b"@HD\tVN:1.6\nr1\t4\t*\t0\t0\t*\t*\t0\t0\t*\t*\n",
    );
    assert_fails(
        &dir,
        &sam,
        &[],
        "read",
        &["not a BGZF file", "byte 0", "looks like text"],
    );

    let cram = write(&dir, "cram.bam", b"CRAM\x03\x00rest-of-a-cram-file");
    assert_fails(&dir, &cram, &[], "read", &["CRAM"]);

    let mut gz = Vec::new();
    let status = std::process::Command::new("gzip")
        .arg("-c")
        .arg(&sam)
        .stdout(std::process::Stdio::piped())
        .output()
        .unwrap();
    gz.extend_from_slice(&status.stdout);
    let gzip = write(&dir, "gzip.bam", &gz);
    assert_fails(
        &dir,
        &gzip,
        &[],
        "read",
        &["plain gzip, not BGZF", "byte 0"],
    );
}

#[test]
fn missing_eof_block_and_truncation() {
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 3_000, 1);
    let bytes = std::fs::read(&bam).unwrap();

    let no_eof = write(&dir, "no_eof.bam", &bytes[..bytes.len() - 28]);
    assert_fails(
        &dir,
        &no_eof,
        &[],
        "read",
        &["does not end with the BGZF EOF block", "may be truncated"],
    );

    let cut = bytes.len() / 2;
    let half = write(&dir, "half.bam", &bytes[..cut]);
    assert_fails(&dir, &half, &[], "read", &["may be truncated"]);
    let block = block_offsets(&bytes[..cut]).into_iter().last().unwrap();
    assert_fails(
        &dir,
        &half,
        &["--allow-missing-eof"],
        "read",
        &[&format!("BGZF block at byte {block} is truncated")],
    );

    // Cut at a block boundary in the middle of the records, then end cleanly: the last
    // record is incomplete.
    let offsets = block_offsets(&bytes);
    let boundary = offsets[offsets.len() / 2];
    let mut clipped = bytes[..boundary].to_vec();
    clipped.extend_from_slice(&EOF_BLOCK);
    let clipped = write(&dir, "clipped.bam", &clipped);
    assert_fails(&dir, &clipped, &[], "frame", &["is truncated", "record "]);
}

#[test]
fn corrupt_block_fails_its_crc_or_inflate() {
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 3_000, 2);
    let mut bytes = std::fs::read(&bam).unwrap();
    let offsets = block_offsets(&bytes);
    let block = offsets[2];
    let next = offsets[3];
    // Flip bytes in the middle of the deflate data of block 2.
    let mid = (block + next) / 2;
    for b in &mut bytes[mid..mid + 4] {
        *b ^= 0x5a;
    }
    let corrupt = write(&dir, "corrupt.bam", &bytes);
    assert_fails(
        &dir,
        &corrupt,
        &[],
        "inflate",
        &[&format!("BGZF block at byte {block}")],
    );

    // A wrong CRC32 alone, with data that still inflates.
    let mut bytes = std::fs::read(&bam).unwrap();
    bytes[next - 8] ^= 0xff;
    let crc = write(&dir, "crc.bam", &bytes);
    assert_fails(
        &dir,
        &crc,
        &[],
        "inflate",
        &[&format!("BGZF block at byte {block} fails its CRC32 check")],
    );
}

#[test]
fn bgzf_that_is_not_bam() {
    let dir = TestDir::new();
    let input = dir.bgzf_file("text.bam", b"chr1\t100\t200\nchr2\t5\t10\n");
    assert_fails(&dir, &input, &[], "header", &["not a BAM file", "chr1"]);
}

#[test]
fn absurd_header_sizes() {
    let dir = TestDir::new();
    let huge_text = dir.bgzf_file("huge_text.bam", &header(i32::MAX, &[]));
    assert_fails(
        &dir,
        &huge_text,
        &[],
        "header",
        &["text of 2147483647 bytes exceeds", "max_header_bytes"],
    );

    let negative = dir.bgzf_file("negative.bam", &header(-5, &[]));
    assert_fails(
        &dir,
        &negative,
        &[],
        "header",
        &["negative text length (-5)"],
    );

    let mut many_refs = header(11, &[]);
    let at = many_refs.len() - 4;
    many_refs[at..].copy_from_slice(&i32::MAX.to_le_bytes());
    let many_refs = dir.bgzf_file("many_refs.bam", &many_refs);
    assert_fails(&dir, &many_refs, &[], "header", &["header is truncated"]);
}

#[test]
fn absurd_record_sizes_are_refused_not_allocated() {
    let dir = TestDir::new();
    let mut raw = good_header();
    raw.extend_from_slice(&record(b"ok\0", 0, b""));
    raw.extend_from_slice(&(2u32 << 30).to_le_bytes());
    raw.extend_from_slice(&[0; 64]);
    let input = dir.bgzf_file("huge_record.bam", &raw);
    assert_fails(
        &dir,
        &input,
        &[],
        "frame",
        &["record 2", "claims 2147483648 bytes", "max_record_bytes"],
    );

    let mut raw = good_header();
    raw.extend_from_slice(&10u32.to_le_bytes());
    raw.extend_from_slice(&[0; 10]);
    let input = dir.bgzf_file("tiny_record.bam", &raw);
    assert_fails(&dir, &input, &[], "frame", &["record 1", "claims 10 bytes"]);
}

#[test]
fn malformed_records_name_record_and_field() {
    let dir = TestDir::new();
    let t = |name: &str, record_bytes: Vec<u8>, expected: &[&str]| {
        let mut raw = good_header();
        raw.extend_from_slice(&record(b"fine\0", 0, b"NMC\x01"));
        raw.extend_from_slice(&record_bytes);
        let input = dir.bgzf_file(name, &raw);
        assert_fails(&dir, &input, &[], "decode", expected);
    };
    t(
        "no_nul.bam",
        record(b"name", 0, b""),
        &["record 2", "read name is not NUL-terminated"],
    );
    t(
        "bad_utf8.bam",
        record(b"r\0", 0, b"XZZ\xff\xfe\0"),
        &["record 2", "field tag XZ: not valid UTF-8"],
    );
    t(
        "bad_name_utf8.bam",
        record(b"\xc3\x28\0", 0, b""),
        &["record 2", "field qname: not valid UTF-8"],
    );
    t(
        "bad_ref.bam",
        record(b"r\0", 7, b""),
        &[
            "record 2",
            "reference id 7 is not in the header's 1 references",
        ],
    );
    t(
        "bad_tag_type.bam",
        record(b"r\0", 0, b"XXq\x01"),
        &["record 2", "invalid type 'q'"],
    );
    t(
        "truncated_tag.bam",
        record(b"r\0", 0, b"XXi\x01"),
        &["record 2", "truncated"],
    );
}

#[test]
fn existing_output_is_not_overwritten() {
    let dir = TestDir::new();
    let bam = dir.path("ok.bam");
    sam_to_bam(
        "@HD\tVN:1.6\n@SQ\tSN:c\tLN:9\nr\t4\t*\t0\t0\t*\t*\t0\t0\t*\t*\n",
        &bam,
    )
    .unwrap();
    std::fs::create_dir(dir.path("out")).unwrap();
    std::fs::write(dir.path("out/keep.txt"), b"mine").unwrap();
    let result = convert(&bam, &dir.path("out"), &[]);
    assert_eq!(result.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&result.stderr);
    // Refused before any work, and named for what it is, not as a failed publish.
    assert!(
        stderr.contains(": output failed: output ") && stderr.contains("already exists"),
        "{stderr}"
    );
    assert!(!stderr.contains("publish"), "{stderr}");
    assert_eq!(std::fs::read(dir.path("out/keep.txt")).unwrap(), b"mine");
}
