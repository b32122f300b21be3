//! A conformance harness for any plugin: does it create a state, accept empty and one-record
//! batches and the largest records, answer with a valid mask, answer the same way twice, and
//! how many nanoseconds does it spend per record? `bamflow plugin check PATH` runs it.

use std::time::Instant;

use crate::host::{State, Table};
use crate::{Batch, RecordBuilder};

/// The header plugins are created with: two references and a read group.
pub const HEADER: &str = "@HD\tVN:1.6\tSO:coordinate\n@SQ\tSN:chr1\tLN:248956422\n\
                          @SQ\tSN:chr2\tLN:242193529\n@RG\tID:rg1\tSM:sample1\n";

/// Records in the timing run.
const TIMED_RECORDS: usize = 200_000;
const BATCH_RECORDS: usize = 4_096;

/// One check's outcome.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

/// What the harness found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub name: String,
    pub version: String,
    pub checks: Vec<Check>,
    /// Mean time per record over the timing run, when the plugin got that far.
    pub nanos_per_record: Option<f64>,
    /// Fraction of the timing run's records kept.
    pub kept_fraction: Option<f64>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    fn check(&mut self, name: &'static str, result: Result<String, String>) -> bool {
        let passed = result.is_ok();
        let detail = result.unwrap_or_else(|e| e);
        self.checks.push(Check {
            name,
            passed,
            detail,
        });
        passed
    }
}

/// Raw records in one buffer, as the host passes them.
#[derive(Clone, Debug, Default)]
pub struct OwnedBatch {
    pub data: Vec<u8>,
    pub offsets: Vec<u32>,
}

impl OwnedBatch {
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut batch = Self {
            data: Vec::new(),
            offsets: vec![0],
        };
        for record in records {
            batch.data.extend_from_slice(record);
            batch.offsets.push(batch.data.len() as u32);
        }
        batch
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Realistic records: mapped and unmapped, several MAPQs, flags and CIGARs, CB/UB/NM/RG tags.
pub fn sample_records(count: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n.max(1)
    };
    let barcodes = [
        "AAACCCAAGAAACACT",
        "AAACCCAAGAAACCAT",
        "TTTGTTGTCTTTGCTA",
        "GGGTCATCAGCTTAGC",
    ];
    (0..count)
        .map(|i| {
            let len = 50 + next(250) as usize;
            let bases: Vec<u8> = (0..len).map(|_| b"ACGT"[next(4) as usize]).collect();
            let qualities: Vec<u8> = (0..len).map(|_| 2 + next(40) as u8).collect();
            let name = format!("read{i}");
            let mut record = RecordBuilder::new(name.as_bytes()).sequence(&bases, &qualities);
            if next(10) > 0 {
                let clip = next(20) as u32;
                record = record
                    .reference(next(2) as i32, next(1_000_000) as i32)
                    .mapq(next(61) as u8)
                    .flags([0, 16, 99, 147, 83, 163, 1024, 512][next(8) as usize])
                    .cigar(&[(b'S', clip), (b'M', len as u32 - clip)]);
            }
            record
                .tag_int(*b"NM", next(5) as i32)
                .tag_string(*b"CB", barcodes[next(4) as usize])
                .tag_string(*b"UB", "ACGTACGTAC")
                .tag_string(*b"RG", "rg1")
                .build()
        })
        .collect()
}

/// The largest records a plugin must handle: a 1 Mbp read with a long CIGAR and a big array
/// tag, and a read name of the maximum 254 bytes.
pub fn largest_records() -> Vec<Vec<u8>> {
    let len = 1_000_000;
    let bases: Vec<u8> = (0..len).map(|i| b"ACGT"[i % 4]).collect();
    let qualities = vec![30; len];
    let cigar: Vec<(u8, u32)> = (0..50_000)
        .map(|i| if i % 2 == 0 { (b'M', 19) } else { (b'I', 1) })
        .collect();
    let long = RecordBuilder::new(b"long-read")
        .reference(0, 1000)
        .mapq(60)
        .flags(0)
        .cigar(&cigar)
        .sequence(&bases, &qualities)
        .tag_int_array(*b"ML", &vec![128; 100_000])
        .tag_string(*b"CB", "AAACCCAAGAAACACT")
        .build();
    let name = vec![b'n'; 254];
    let long_name = RecordBuilder::new(&name).build();
    vec![long, long_name]
}

/// Runs the plugin on `batch` and checks its mask holds only 0 and 1.
fn filter(state: &mut State, batch: &OwnedBatch) -> Result<Vec<u8>, String> {
    let view = Batch::new(&batch.data, &batch.offsets).map_err(|e| e.to_string())?;
    let mut keep = vec![1u8; batch.len()];
    state
        .filter(&view, &mut keep)
        .map_err(|e| format!("status {}: {}", e.status, e.message))?;
    match keep.iter().find(|&&k| k > 1) {
        Some(k) => Err(format!("keep mask holds {k}, not 0 or 1")),
        None => Ok(keep),
    }
}

fn create(table: Table, config_json: &str) -> Result<State, String> {
    table
        .create(config_json, HEADER)
        .map_err(|e| format!("create failed (status {}): {}", e.status, e.message))
}

/// Runs every check on a plugin's table, creating its states with `config_json`.
///
pub fn check(table: Table, config_json: &str) -> Report {
    let mut report = Report {
        name: table.name(),
        version: table.version(),
        ..Report::default()
    };
    let mut state = match create(table, config_json) {
        Ok(state) => {
            report.check("create", Ok("state created with the given config".into()));
            state
        }
        Err(e) => {
            report.check("create", Err(e));
            return report;
        }
    };

    let empty = OwnedBatch::from_records([]);
    report.check(
        "empty batch",
        filter(&mut state, &empty).map(|_| "ok".into()),
    );
    let one = sample_records(1, 1);
    let one = OwnedBatch::from_records(one.iter().map(Vec::as_slice));
    report.check(
        "one-record batch",
        filter(&mut state, &one).map(|m| format!("keep = {}", m[0])),
    );
    let largest = largest_records();
    let largest = OwnedBatch::from_records(largest.iter().map(Vec::as_slice));
    report.check(
        "largest records",
        filter(&mut state, &largest)
            .map(|_| "a 1 Mbp read with 50,000 CIGAR ops and a 254-byte name".into()),
    );

    // The same records twice on this state, and once on a fresh one: the same masks.
    let records = sample_records(10_000, 7);
    let batch = OwnedBatch::from_records(records.iter().map(Vec::as_slice));
    let first = filter(&mut state, &batch);
    let second = filter(&mut state, &batch);
    let fresh = create(table, config_json).and_then(|mut s| filter(&mut s, &batch));
    let deterministic = match (first, second, fresh) {
        (Ok(a), Ok(b), Ok(c)) if a == b && b == c => Ok(format!(
            "kept {} of {} three times",
            a.iter().filter(|&&k| k == 1).count(),
            a.len()
        )),
        (Ok(_), Ok(_), Ok(_)) => Err("the same records gave different masks".into()),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(e),
    };
    report.check("deterministic", deterministic);

    // Timing: realistic batches, as the engine sends them.
    let records = sample_records(TIMED_RECORDS, 11);
    let batches: Vec<OwnedBatch> = records
        .chunks(BATCH_RECORDS)
        .map(|chunk| OwnedBatch::from_records(chunk.iter().map(Vec::as_slice)))
        .collect();
    let started = Instant::now();
    let mut kept = 0;
    for batch in &batches {
        match filter(&mut state, batch) {
            Ok(mask) => kept += mask.iter().filter(|&&k| k == 1).count(),
            Err(e) => {
                report.check("timing", Err(e));
                return report;
            }
        }
    }
    let nanos = started.elapsed().as_nanos() as f64 / TIMED_RECORDS as f64;
    report.nanos_per_record = Some(nanos);
    report.kept_fraction = Some(kept as f64 / TIMED_RECORDS as f64);
    report.check("timing", Ok(format!("{nanos:.1} ns per record")));
    report
}
