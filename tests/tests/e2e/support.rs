//! Shared helpers for the end-to-end tests.

use std::path::{Path, PathBuf};

use bamflow_tests::generator::{self, DataKind, Spec};
use bamflow_tests::sam_text::{self, Dataset, TagOrder};
use bamflow_tests::{convert, sam_to_bam, samtools_view};

/// A temporary folder that lives as long as the test.
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    /// A folder on tmpfs (`/dev/shm`) when there is one. These tests check behaviour, not disk
    /// durability; on a disk, every fsync of the pipeline waits for the journal to write out
    /// all the data other tests running beside it have just written, which made runs on a
    /// loaded 2-core machine stall for tens of seconds.
    pub fn new() -> Self {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        };
        Self {
            dir: dir.expect("temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A watched folder `inbox`, created.
    pub fn inbox(&self) -> PathBuf {
        let inbox = self.path("inbox");
        std::fs::create_dir(&inbox).unwrap();
        inbox
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A BAM built by samtools from a SAM file of `tests/data`.
    pub fn bam_from_data(&self, name: &str) -> PathBuf {
        let sam = std::fs::read_to_string(data_file(name)).expect("test data");
        self.bam_from_sam(name, &sam)
    }

    /// A BAM built by samtools from SAM text.
    pub fn bam_from_sam(&self, name: &str, sam: &str) -> PathBuf {
        let bam = self.path(&format!("{name}.bam"));
        sam_to_bam(sam, &bam).expect("samtools view -b");
        bam
    }

    /// A BAM from the deterministic generator.
    pub fn generated(&self, kind: DataKind, records: usize, seed: u64) -> PathBuf {
        self.generated_spec(&Spec::new(kind, records, seed))
    }

    pub fn generated_spec(&self, spec: &Spec) -> PathBuf {
        let bam = self.path(&format!(
            "{:?}-{}-{}.bam",
            spec.kind, spec.records, spec.seed
        ));
        generator::write_bam(&bam, spec).expect("generator writes");
        bam
    }
}

/// The uncompressed start of a BAM: magic, header text, reference list. `text_len` is written
/// as given, so tests can make it lie.
pub fn raw_bam_header(text: &[u8], text_len: i32, references: &[(&str, u32)]) -> Vec<u8> {
    let mut raw = b"BAM\x01".to_vec();
    raw.extend_from_slice(&text_len.to_le_bytes());
    raw.extend_from_slice(text);
    raw.extend_from_slice(&(references.len() as i32).to_le_bytes());
    for (name, len) in references {
        raw.extend_from_slice(&(name.len() as i32 + 1).to_le_bytes());
        raw.extend_from_slice(name.as_bytes());
        raw.push(0);
        raw.extend_from_slice(&len.to_le_bytes());
    }
    raw
}

impl TestDir {
    /// BGZF-compresses an uncompressed BAM stream with noodles' writer (EOF block included).
    pub fn bgzf_file(&self, name: &str, raw: &[u8]) -> PathBuf {
        use std::io::Write;
        let path = self.path(name);
        let mut writer = noodles_bgzf::io::Writer::new(std::fs::File::create(&path).unwrap());
        writer.write_all(raw).unwrap();
        writer.finish().unwrap();
        path
    }
}

pub fn data_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(name)
}

/// A plain HTTP/1.0 GET; returns the status code and the body.
pub fn http_get(address: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connects");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

/// Percent-encodes a query string value.
pub fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A published dataset's `_manifest.json`.
pub fn manifest(dataset: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dataset.join("_manifest.json")).unwrap()).unwrap()
}

/// Converts and panics with bamflow's stderr when it fails.
pub fn convert_ok(input: &Path, output: &Path, extra: &[&str]) -> Dataset {
    let result = convert(input, output, extra);
    assert!(
        result.status.success(),
        "bamflow convert failed ({}): {}",
        result.status,
        String::from_utf8_lossy(&result.stderr)
    );
    sam_text::read_dataset(output).expect("dataset reads back")
}

/// Converts `bam` with all columns and checks every line against `samtools view -h --no-PG`.
pub fn assert_matches_samtools(bam: &Path, out: &Path, extra: &[&str]) -> Dataset {
    let dataset = convert_ok(bam, out, extra);
    assert_dataset_matches_samtools(&dataset, bam);
    dataset
}

/// Checks every line of a dataset (all columns) against `samtools view -h --no-PG` of `bam`.
pub fn assert_dataset_matches_samtools(dataset: &Dataset, bam: &Path) {
    let ours = dataset.to_sam(&[]).expect("all columns present");
    let theirs = samtools_view(bam, &[]).expect("samtools view");
    if let Err(e) = sam_text::compare(&ours, &theirs, TagOrder::Exact) {
        panic!("{} does not match samtools: {e:#}", bam.display());
    }
}

/// The value of the one sample `series` (name and labels exactly as printed) in a scrape.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// Runs `command`, fails the test with its stderr unless it succeeds, and returns its stdout.
pub fn stdout_of(command: &mut std::process::Command) -> String {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
