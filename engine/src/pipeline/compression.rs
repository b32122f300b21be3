//! zstd levels per column, and the trial that settles a text column's level when it is `auto`.
//!
//! zstd's level-3 match finder (`dfast`) is never cheaper than level 1, and whether its extra
//! time buys anything depends on the column and the instrument. Single-threaded `zstd -b1`/`-b3`
//! with 1 MiB blocks (a page each) on the first records of the shared-bench corpus and of the
//! generator's long reads, as level 3's size change for its time change:
//! - QUAL: noise-like ONT qualities +2% for 3.6× the time; ART Illumina qualities −1% for the
//!   same time; the generator's smooth random-walk qualities −22% for 2.1× the time.
//! - SEQ: unaligned single-cell reads −6% for 1.4× the time; ONT reads −3% for 1.4×; the
//!   generator's long reads −8% for 1.2×.
//! - `tags`: unaligned single-cell reads −4% for 1.2× the time; long reads' MM/ML +4% for 1.8×.
//! - QNAME: Illumina names +11% for 1.9× the time.
//!
//! Where level 3 helps by a few percent it costs 17-43% more of that column's compression, and
//! zstd is about half of a conversion's CPU: on the corpus, every text column at level 1 made
//! unaligned reads 12% faster for 4.5% more output, and long reads 15% faster for 1.1% more
//! (3 and 2 alternating runs, 2 cores). So `auto` compresses a sample of the file's own column
//! text both ways and takes level 3 only where it is far smaller, as on smooth qualities:
//! level 1 is kept when it costs at most [`AUTO_TOLERANCE`] in size.

use std::collections::BTreeMap;

use arrow_array::{Array, RecordBatch, StringArray};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Level 1 is kept when its trial output is at most this much larger than at `zstd_level`.
/// It was 1.02 until the measurements above; that took level 3 for 2-6% smaller SEQ and `tags`,
/// the most expensive trade on the list.
pub const AUTO_TOLERANCE: f64 = 1.10;
/// Parquet compresses one data page at a time; the trial compresses the same way.
const PAGE_BYTES: usize = 1 << 20;
/// Column text a trial compresses at most: two pages at levels 1 and 3 take 20-40 ms.
const TRIAL_BYTES: usize = 2 * PAGE_BYTES;
/// Files smaller than this get no trial and their `auto` columns level 1. Below it the trial
/// compresses about as much text as the whole conversion, twice: on 1.7 MB files of 11,500
/// short reads it was 31% of all CPU (20 one-shot conversions under perf), for a choice that
/// saves at most a few hundred kilobytes.
pub const TRIAL_MIN_FILE_BYTES: u64 = TRIAL_BYTES as u64;

/// A column's own level: a number, or `"auto"` (text columns only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ColumnLevel {
    /// A fixed level, 1-22.
    Level(i32),
    /// Chosen per file by the level trial.
    Auto(AutoWord),
}

/// The word `auto`, as TOML and JSON spell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AutoWord {
    #[serde(rename = "auto")]
    /// `"auto"`.
    Auto,
}

impl ColumnLevel {
    /// The `auto` level.
    pub const AUTO: Self = Self::Auto(AutoWord::Auto);
}

impl std::str::FromStr for ColumnLevel {
    type Err = std::num::ParseIntError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "auto" {
            return Ok(Self::AUTO);
        }
        text.parse().map(Self::Level)
    }
}

/// What compressing a sample of one column's text at level 1 and at `level` gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LevelTrial {
    /// Bytes of text compressed.
    pub sample_bytes: usize,
    /// The level tried against 1.
    pub level: i32,
    /// Compressed bytes at that level.
    pub bytes_at_level: usize,
    /// Compressed bytes at level 1.
    pub bytes_at_1: usize,
}

impl LevelTrial {
    /// Compresses up to `TRIAL_BYTES` of `text` page by page at level 1 and at `level`, the
    /// two levels in parallel on the current rayon pool; `None` when there is no text or zstd
    /// fails.
    ///
    /// The trial runs before the pipeline starts, so its slowest task idles the other cores:
    /// five columns done one per task left one core with the slowest column's two levels.
    pub fn of(text: &[u8], level: i32) -> Option<Self> {
        let text = &text[..text.len().min(TRIAL_BYTES)];
        if text.is_empty() {
            return None;
        }
        let compressed = |level| -> Option<usize> {
            let mut compressor = zstd::bulk::Compressor::new(level).ok()?;
            text.chunks(PAGE_BYTES)
                .map(|page| compressor.compress(page).ok().map(|c| c.len()))
                .sum()
        };
        let (bytes_at_level, bytes_at_1) = rayon::join(|| compressed(level), || compressed(1));
        Some(Self {
            sample_bytes: text.len(),
            level,
            bytes_at_level: bytes_at_level?,
            bytes_at_1: bytes_at_1?,
        })
    }

    /// The level `auto` settles on.
    pub fn choice(&self) -> i32 {
        if self.bytes_at_1 as f64 <= self.bytes_at_level as f64 * AUTO_TOLERANCE {
            1
        } else {
            self.level
        }
    }
}

/// Tries each named text column of the decoded sample, in parallel on the current rayon pool.
/// A column that is missing, not text or empty in the sample gets no trial.
pub fn trials(
    sample: &RecordBatch,
    columns: &[String],
    level: i32,
) -> BTreeMap<String, LevelTrial> {
    columns
        .par_iter()
        .filter_map(|name| {
            let column = sample.column_by_name(name)?;
            let text = column.as_any().downcast_ref::<StringArray>()?;
            Some((name.clone(), LevelTrial::of(text_of(text), level)?))
        })
        .collect()
}

/// The bytes of a text column's values, without the 4-byte length a PLAIN page puts before
/// each. Framing the sample as PLAIN was tried on the shared-bench corpus: every choice stayed
/// the same but short reads' `tags`, which it moved to level 3 (trial 1.028, over the 1.02
/// tolerance of the time) although the whole column was within it (28.8 vs 28.3 MB, 1.018) and
/// level 3 cost 3.5% more CPU.
fn text_of(array: &StringArray) -> &[u8] {
    let offsets = array.value_offsets();
    let start = offsets.first().map_or(0, |&o| o as usize);
    let end = offsets.last().map_or(0, |&o| o as usize);
    array.value_data().get(start..end).unwrap_or_default()
}

/// The levels the writer uses: `auto` becomes the trial's choice, or level 1 when a written
/// column had nothing to try (a small file, or no text in the sample): `auto` means level 1
/// unless the file's own text shows the higher level pays. An `auto` column that is not
/// `written` is dropped.
pub fn resolve(
    levels: &BTreeMap<String, ColumnLevel>,
    trials: &BTreeMap<String, LevelTrial>,
    written: impl Fn(&str) -> bool,
) -> BTreeMap<String, i32> {
    levels
        .iter()
        .filter_map(|(column, level)| {
            let level = match level {
                ColumnLevel::Level(level) => *level,
                ColumnLevel::Auto(_) => match trials.get(column) {
                    Some(trial) => trial.choice(),
                    None if written(column) => 1,
                    None => return None,
                },
            };
            Some((column.clone(), level))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(bytes_at_level: usize, bytes_at_1: usize) -> LevelTrial {
        LevelTrial {
            sample_bytes: 1000,
            level: 3,
            bytes_at_level,
            bytes_at_1,
        }
    }

    #[test]
    fn auto_keeps_level_1_only_within_the_tolerance() {
        assert_eq!(trial(100, 90).choice(), 1);
        assert_eq!(trial(100, 110).choice(), 1);
        assert_eq!(trial(100, 111).choice(), 3);
    }

    #[test]
    fn resolve_replaces_auto_and_keeps_numbers() {
        let levels = BTreeMap::from([
            ("qual".to_owned(), ColumnLevel::AUTO),
            ("seq".to_owned(), ColumnLevel::Level(5)),
        ]);
        let trials = BTreeMap::from([("qual".to_owned(), trial(100, 150))]);
        let with = resolve(&levels, &trials, |_| true);
        assert_eq!(
            with,
            BTreeMap::from([("qual".to_owned(), 3), ("seq".to_owned(), 5)])
        );
        let untried = resolve(&levels, &BTreeMap::new(), |_| true);
        assert_eq!(
            untried,
            BTreeMap::from([("qual".to_owned(), 1), ("seq".to_owned(), 5)])
        );
        let unwritten = resolve(&levels, &BTreeMap::new(), |c| c == "seq");
        assert_eq!(unwritten, BTreeMap::from([("seq".to_owned(), 5)]));
    }

    #[test]
    fn trials_sample_only_the_values_of_text_columns() {
        // A sliced array's buffer holds text outside the slice; the trial must not see it.
        let names = StringArray::from(vec!["x".repeat(5000), "AC".repeat(4000), "y".repeat(5000)]);
        let names = names.slice(1, 1);
        let counts = arrow_array::Int32Array::from(vec![7]);
        let sample = RecordBatch::try_from_iter([
            ("seq", std::sync::Arc::new(names) as arrow_array::ArrayRef),
            ("n", std::sync::Arc::new(counts) as arrow_array::ArrayRef),
        ])
        .unwrap();
        let columns = ["seq", "n", "absent"].map(String::from);
        let trials = trials(&sample, &columns, 3);
        assert_eq!(trials.keys().collect::<Vec<_>>(), ["seq"]);
        assert_eq!(trials["seq"].sample_bytes, 8000);
        assert_eq!(trials["seq"].level, 3);
    }

    #[test]
    fn levels_parse_from_text() {
        assert_eq!("auto".parse::<ColumnLevel>(), Ok(ColumnLevel::AUTO));
        assert_eq!("7".parse::<ColumnLevel>(), Ok(ColumnLevel::Level(7)));
        assert!("high".parse::<ColumnLevel>().is_err());
    }
}
