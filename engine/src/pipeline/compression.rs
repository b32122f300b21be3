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
/// Column text a trial compresses at most: two pages at levels 1 and 3 took 20-40 ms; columns
/// with a [`small_table`] compress them once more, in parallel with the others.
const TRIAL_BYTES: usize = 2 * PAGE_BYTES;
/// Files smaller than this get no trial and their `auto` columns level 1. Below it the trial
/// compresses about as much text as the whole conversion, twice: on 1.7 MB files of 11,500
/// short reads it was 31% of all CPU (20 one-shot conversions under perf), for a choice that
/// saves at most a few hundred kilobytes.
pub const TRIAL_MIN_FILE_BYTES: u64 = TRIAL_BYTES as u64;

/// The small match-finder table (log2 of its entries) a column's level-1 trial also tries.
///
/// Level 1's table has 8192 entries, and in SEQ's 4 letters and QUAL's ~40 it can keep finding
/// matches of 5-6 bytes that are far away or there by chance: they cost more to encode than
/// the Huffman-coded literals they replace, and time to find. A small table only finds near
/// matches (overlapping reads, runs of one quality). Whole conversions at level 1, column bytes
/// against the default table (shared-bench corpus: short / unaligned / long; then the
/// generator's short reads):
///
/// | table | SEQ | QUAL |
/// |---|---|---|
/// | 2^6  | −16.6% / −2.8% / −5.8%; −15.7% | −3.1% / −1.9% / 0 |
/// | 2^8  | −11.5% / −2.3% / −4.6% | −4.4% / −1.5% / 0; **+5.9%** |
/// | 2^10 | −7.8% / −1.5% / −2.4% | −3.7% / −0.4% / 0 |
///
/// ONT qualities are noise: zstd finds no matches in them at any size. The generator's smooth
/// random-walk qualities repeat at a distance, and there the small table loses, as it may on
/// binned (NovaSeq-style) qualities; so the file's own sample decides (`LevelTrial`). zstd's
/// own benchmark on 1 MiB blocks puts level 1 with 2^10 entries 22-25% faster on SEQ than
/// with its 2^13.
///
/// Read names and `tags` win on some inputs and lose on others, so the trial settles them too:
///
/// | table | read names | `tags` |
/// |---|---|---|
/// | 2^8  | +10% / +28% / +3% | +2.0% / −10.1% / +4.9% |
/// | 2^10 | −2.7% / +26% / +3% | +1.6% / −7.9% / +4.6% |
///
/// With 2^8 entries for `tags` the unaligned single-cell reads (CB/UB/CR/UR text) convert with
/// 5% less user CPU (3 alternating runs). CIGAR is never smaller (+4-16% on long reads).
pub fn small_table(column: &str) -> Option<u32> {
    match column {
        "seq" => Some(6),
        "qual" | "tags" => Some(8),
        "qname" => Some(10),
        _ => None,
    }
}

/// zstd's target length that turns level 1 into Huffman-coded literals only: under the `fast`
/// strategy the target length is the step between the positions where a match is looked for,
/// and at its maximum (a block, 128 KiB) there is about one look per block. The writer keeps
/// literal compression on, which zstd otherwise turns off with a target length.
pub const LITERALS_ONLY_TARGET_LENGTH: u32 = 1 << 17;

/// Literals only are kept when their trial output is at most this much larger than level 1's
/// with a table: they take about 30-40% less of the column's compression time (zstd's own
/// benchmark, 1 MiB blocks), the trade [`AUTO_TOLERANCE`] makes against level 3 for 10%. Half
/// of that allowance, since the column is the largest of the file: binned single-cell
/// qualities, 4.2% larger than with the small table, made the conversion 9% faster in wall
/// time and the output 0.85% larger (4 alternating runs, 2 cores).
pub const LITERALS_TOLERANCE: f64 = 1.05;

/// Whether a column's level-1 trial also tries [literals only](LITERALS_ONLY_TARGET_LENGTH).
///
/// Bases and qualities are a few dozen symbols at most, and apart from overlapping reads
/// (SEQ of sorted short reads) the matches zstd finds in them cost about what the literals
/// they replace would: Huffman coding alone is as small or smaller, at nearly twice the speed.
/// Whole conversions, column bytes and the conversion's user CPU against the trial's choice
/// before (shared-bench corpus, 2 cores, 2-4 runs each):
///
/// | input | SEQ | QUAL | user CPU |
/// |---|---|---|---|
/// | short | (overlapping reads: matches pay) | −7.8% | −19% |
/// | unaligned | −1.1% | +4.2% ([`LITERALS_TOLERANCE`]) | −12% |
/// | long | −1.9% | equal (no matches either way) | −10% |
///
/// Read names, CIGAR and `tags` are made of repeated words; without matches they are 2-3
/// times larger, so they are not tried.
pub fn literals_only(column: &str) -> bool {
    matches!(column, "seq" | "qual")
}

/// How level 1 looks for matches in a column, as its trial settles it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchSearch {
    /// zstd's own table for level 1.
    OwnTable,
    /// A [`small_table`] of `2^hash_log` entries.
    SmallTable(u32),
    /// No search: [literals only](LITERALS_ONLY_TARGET_LENGTH).
    LiteralsOnly,
}

/// What level 1 gave with a column's [`small_table`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableTrial {
    /// The table's size, log2 of its entries (zstd's `hashLog`).
    pub hash_log: u32,
    /// Compressed bytes at level 1 with it.
    pub bytes_at_1: usize,
}

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
    /// Level 1 with the column's small match table, where it has one (absent in manifests and
    /// plans written before it was tried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub small_table: Option<TableTrial>,
    /// Compressed bytes at level 1 with [literals only](LITERALS_ONLY_TARGET_LENGTH), where the
    /// column is tried so (absent in manifests and plans written before it was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literals_only: Option<usize>,
}

impl LevelTrial {
    /// Compresses up to `TRIAL_BYTES` of `text` page by page at `level`, at level 1, and at level
    /// 1 with `column`'s [`small_table`] and with [`literals_only`] where the column is tried
    /// so, in parallel on the current rayon pool; `None` when there is no text or zstd fails.
    ///
    /// The trial runs before the pipeline starts, so its slowest task idles the other cores:
    /// five columns done one per task left one core with the slowest column's two levels.
    pub fn of(column: &str, text: &[u8], level: i32) -> Option<Self> {
        use zstd::stream::raw::CParameter;
        let text = &text[..text.len().min(TRIAL_BYTES)];
        if text.is_empty() {
            return None;
        }
        let compressed = |level, parameters: &[CParameter]| -> Option<usize> {
            let mut compressor = zstd::bulk::Compressor::new(level).ok()?;
            for &parameter in parameters {
                compressor.set_parameter(parameter).ok()?;
            }
            text.chunks(PAGE_BYTES)
                .map(|page| compressor.compress(page).ok().map(|c| c.len()))
                .sum()
        };
        // `Some(None)`: the column is not tried so; `None`: zstd failed.
        let with_small_table = || -> Option<Option<TableTrial>> {
            let Some(hash_log) = small_table(column) else {
                return Some(None);
            };
            let bytes_at_1 = compressed(1, &[CParameter::HashLog(hash_log)])?;
            Some(Some(TableTrial {
                hash_log,
                bytes_at_1,
            }))
        };
        let with_literals_only = || -> Option<Option<usize>> {
            if !literals_only(column) {
                return Some(None);
            }
            let literals_only = [
                CParameter::TargetLength(LITERALS_ONLY_TARGET_LENGTH),
                CParameter::LiteralCompressionMode(zstd::zstd_safe::ParamSwitch::Enable),
            ];
            compressed(1, &literals_only).map(Some)
        };
        let ((bytes_at_level, bytes_at_1), (small_table, literals_only)) = rayon::join(
            || rayon::join(|| compressed(level, &[]), || compressed(1, &[])),
            || rayon::join(with_small_table, with_literals_only),
        );
        Some(Self {
            sample_bytes: text.len(),
            level,
            bytes_at_level: bytes_at_level?,
            bytes_at_1: bytes_at_1?,
            small_table: small_table?,
            literals_only: literals_only?,
        })
    }

    /// The smaller of zstd's own table and the small table at level 1 (the small one on a
    /// tie: it is faster), with its bytes.
    fn table_at_1(&self) -> (usize, MatchSearch) {
        let own = (self.bytes_at_1, MatchSearch::OwnTable);
        self.small_table
            .filter(|small| small.bytes_at_1 <= own.0)
            .map_or(own, |small| {
                (small.bytes_at_1, MatchSearch::SmallTable(small.hash_log))
            })
    }

    /// How level 1 searches for matches, when level 1 is within [`AUTO_TOLERANCE`] of `level`:
    /// the fastest way that is, literals only where they are also within
    /// [`LITERALS_TOLERANCE`] of the smaller table, else that table. `None`: `level` it is.
    fn level_1_search(&self) -> Option<MatchSearch> {
        let within_level =
            |bytes: usize| bytes as f64 <= self.bytes_at_level as f64 * AUTO_TOLERANCE;
        let (table_bytes, table) = self.table_at_1();
        let literals = self.literals_only.filter(|&bytes| {
            bytes as f64 <= table_bytes as f64 * LITERALS_TOLERANCE && within_level(bytes)
        });
        match literals {
            Some(_) => Some(MatchSearch::LiteralsOnly),
            None => within_level(table_bytes).then_some(table),
        }
    }

    /// The level `auto` settles on: level 1 when one of its ways of searching for matches
    /// ([`match_search`]) is within [`AUTO_TOLERANCE`] of `level`, else `level`.
    ///
    /// [`match_search`]: Self::match_search
    pub fn choice(&self) -> i32 {
        self.level_1_search().map_or(self.level, |_| 1)
    }

    /// How the chosen level searches for matches. At level 1: literals only where they are
    /// within [`LITERALS_TOLERANCE`] of the smaller of zstd's own table and the small table
    /// (and within [`AUTO_TOLERANCE`] of `level`), else that table; at a higher level, zstd's
    /// own table.
    pub fn match_search(&self) -> MatchSearch {
        self.level_1_search().unwrap_or(MatchSearch::OwnTable)
    }

    /// The match table `auto` settles on, when not zstd's own for the chosen level.
    pub fn hash_log(&self) -> Option<u32> {
        match self.match_search() {
            MatchSearch::SmallTable(hash_log) => Some(hash_log),
            MatchSearch::OwnTable | MatchSearch::LiteralsOnly => None,
        }
    }

    /// The target length `auto` settles on, when not zstd's own for the chosen level.
    pub fn target_length(&self) -> Option<u32> {
        (self.match_search() == MatchSearch::LiteralsOnly).then_some(LITERALS_ONLY_TARGET_LENGTH)
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
            Some((
                name.clone(),
                LevelTrial::of(name, &plain_values(text), level)?,
            ))
        })
        .collect()
}

/// Up to `TRIAL_BYTES` of a text column's values as a PLAIN page holds them: each after its
/// length in 4 little-endian bytes.
///
/// Literals only pay for those lengths as rare symbols in the Huffman code, where matches can
/// take them in: on the generator's smooth short-read qualities the trial without them put
/// literals only at 2.0% over zstd's own table (within [`LITERALS_TOLERANCE`]), and the whole
/// column came out 5.9% larger; with them the trial says 5.8%. The corpus's choices are the
/// same either way. (Level choices were once tried both ways too, and differed only where a
/// column was at the edge of the tolerance of the time.)
fn plain_values(array: &StringArray) -> Vec<u8> {
    let values = array.value_data().len() + 4 * array.len();
    let mut page = Vec::with_capacity(TRIAL_BYTES.min(values));
    for value in array.iter().flatten() {
        if page.len() >= TRIAL_BYTES {
            break;
        }
        page.extend_from_slice(&(value.len() as u32).to_le_bytes());
        page.extend_from_slice(value.as_bytes());
    }
    page
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

/// The match tables of the columns whose `auto` level trial chose level 1 with a small table;
/// every other column keeps zstd's table for its level.
pub fn hash_logs(
    levels: &BTreeMap<String, ColumnLevel>,
    trials: &BTreeMap<String, LevelTrial>,
) -> BTreeMap<String, u32> {
    auto_parameter(levels, trials, LevelTrial::hash_log)
}

/// The target lengths of the columns whose `auto` level trial chose level 1 with literals only;
/// every other column keeps zstd's for its level.
pub fn target_lengths(
    levels: &BTreeMap<String, ColumnLevel>,
    trials: &BTreeMap<String, LevelTrial>,
) -> BTreeMap<String, u32> {
    auto_parameter(levels, trials, LevelTrial::target_length)
}

/// One zstd parameter of each `auto` column whose trial set it.
fn auto_parameter(
    levels: &BTreeMap<String, ColumnLevel>,
    trials: &BTreeMap<String, LevelTrial>,
    parameter: impl Fn(&LevelTrial) -> Option<u32>,
) -> BTreeMap<String, u32> {
    levels
        .iter()
        .filter(|(_, level)| matches!(level, ColumnLevel::Auto(_)))
        .filter_map(|(column, _)| Some((column.clone(), parameter(trials.get(column)?)?)))
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
            small_table: None,
            literals_only: None,
        }
    }

    fn with_small_table(trial: LevelTrial, bytes_at_1: usize) -> LevelTrial {
        let small_table = Some(TableTrial {
            hash_log: 8,
            bytes_at_1,
        });
        LevelTrial {
            small_table,
            ..trial
        }
    }

    #[test]
    fn a_small_table_is_taken_only_where_level_1_is_no_larger_with_it() {
        // Smaller with the small table: level 1 with it.
        let smaller = with_small_table(trial(100, 105), 95);
        assert_eq!((smaller.choice(), smaller.hash_log()), (1, Some(8)));
        // Larger with it (smooth or binned qualities): zstd's own table.
        let larger = with_small_table(trial(100, 105), 106);
        assert_eq!((larger.choice(), larger.hash_log()), (1, None));
        // The small table can bring level 1 within the tolerance of level 3...
        let within = with_small_table(trial(100, 115), 108);
        assert_eq!((within.choice(), within.hash_log()), (1, Some(8)));
        // ...and when level 3 still wins, level 3 keeps its own table.
        let beaten = with_small_table(trial(100, 130), 120);
        assert_eq!((beaten.choice(), beaten.hash_log()), (3, None));
    }

    #[test]
    fn literals_only_is_taken_where_it_is_within_its_tolerance_of_the_smallest_table() {
        let literals = |trial, bytes| LevelTrial {
            literals_only: Some(bytes),
            ..trial
        };
        let search = |trial: LevelTrial| (trial.choice(), trial.match_search());
        // Smaller than both tables (short-read qualities, long-read bases).
        let smaller = literals(with_small_table(trial(100, 105), 95), 90);
        assert_eq!(search(smaller), (1, MatchSearch::LiteralsOnly));
        assert_eq!(
            (smaller.hash_log(), smaller.target_length()),
            (None, Some(LITERALS_ONLY_TARGET_LENGTH))
        );
        // A tie goes to the faster way (noise-like qualities: no matches either way).
        let tie = literals(with_small_table(trial(100, 95), 95), 95);
        assert_eq!(search(tie), (1, MatchSearch::LiteralsOnly));
        // A little larger than the small table (binned qualities): still literals only...
        let within = literals(with_small_table(trial(100, 105), 95), 99);
        assert_eq!(search(within), (1, MatchSearch::LiteralsOnly));
        // ...but not beyond the tolerance: the small table.
        let larger = literals(with_small_table(trial(100, 105), 95), 100);
        assert_eq!(search(larger), (1, MatchSearch::SmallTable(8)));
        assert_eq!((larger.hash_log(), larger.target_length()), (Some(8), None));
        // Larger than zstd's own table (overlapping reads' bases), with no small table tried.
        let overlapping = literals(trial(100, 95), 300);
        assert_eq!(search(overlapping), (1, MatchSearch::OwnTable));
        // Literals only within 5% of the table but not within 10% of level 3, the table within
        // it: level 1 with the table, not level 3.
        let table_only = literals(with_small_table(trial(100, 115), 108), 112);
        assert_eq!(search(table_only), (1, MatchSearch::SmallTable(8)));
        // Level 3 far smaller than any way of level 1: level 3 with its own search.
        let beaten = literals(with_small_table(trial(100, 130), 125), 120);
        assert_eq!(search(beaten), (3, MatchSearch::OwnTable));
        assert_eq!((beaten.hash_log(), beaten.target_length()), (None, None));
    }

    #[test]
    fn only_auto_columns_get_literals_only() {
        let levels = BTreeMap::from([
            ("qual".to_owned(), ColumnLevel::AUTO),
            ("seq".to_owned(), ColumnLevel::Level(1)),
        ]);
        let literals = LevelTrial {
            literals_only: Some(50),
            ..trial(100, 105)
        };
        let trials = BTreeMap::from([("qual".to_owned(), literals), ("seq".to_owned(), literals)]);
        let lengths = target_lengths(&levels, &trials);
        let qual = ("qual".to_owned(), LITERALS_ONLY_TARGET_LENGTH);
        assert_eq!(lengths, BTreeMap::from([qual]));
        assert!(hash_logs(&levels, &trials).is_empty());
    }

    #[test]
    fn only_auto_columns_get_a_small_table() {
        let levels = BTreeMap::from([
            ("qual".to_owned(), ColumnLevel::AUTO),
            ("seq".to_owned(), ColumnLevel::Level(1)),
        ]);
        let trials = BTreeMap::from([
            ("qual".to_owned(), with_small_table(trial(100, 105), 95)),
            ("seq".to_owned(), with_small_table(trial(100, 105), 95)),
        ]);
        let tables = hash_logs(&levels, &trials);
        assert_eq!(tables, BTreeMap::from([("qual".to_owned(), 8)]));
    }

    #[test]
    fn old_trials_without_a_small_table_or_literals_only_still_read() {
        let old = r#"{"sample_bytes":10,"level":3,"bytes_at_level":50,"bytes_at_1":52}"#;
        let trial: LevelTrial = serde_json::from_str(old).unwrap();
        assert_eq!((trial.small_table, trial.choice()), (None, 1));
        assert_eq!(trial.literals_only, None);
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
        // The value and its length, as a PLAIN page holds it.
        assert_eq!(trials["seq"].sample_bytes, 4 + 8000);
        assert_eq!(trials["seq"].level, 3);
    }

    /// `len` random bases (xorshift from `seed`).
    fn random_bases(seed: u64, len: usize) -> Vec<u8> {
        let mut next = crate::pipeline::tests::xorshift(seed);
        (0..len)
            .map(|_| b"ACGT"[(next() >> 33) as usize % 4])
            .collect()
    }

    /// SEQ of sorted reads: 150-base windows every 37 bases of one random genome.
    fn overlapping_reads() -> Vec<u8> {
        let genome = random_bases(0x2545_f491_4f6c_dd1d, 600_000);
        (0..genome.len() - 150)
            .step_by(37)
            .flat_map(|start| &genome[start..start + 150])
            .copied()
            .collect()
    }

    #[test]
    fn the_trial_tries_a_small_table_where_the_column_has_one() {
        let text = overlapping_reads();
        let sample = &text[..TRIAL_BYTES];
        let level_1_own_table: usize = sample
            .chunks(PAGE_BYTES)
            .map(|page| zstd::bulk::compress(page, 1).unwrap().len())
            .sum();
        let seq = LevelTrial::of("seq", &text, 3).unwrap();
        let cigar = LevelTrial::of("cigar", &text, 3).unwrap();
        assert_eq!(cigar.small_table, None);
        assert_eq!(
            (seq.bytes_at_1, cigar.bytes_at_1),
            (level_1_own_table, level_1_own_table)
        );
        // On overlapping reads the near matches are the ones worth finding.
        let small = seq.small_table.unwrap();
        assert_eq!(small.hash_log, 6);
        assert!(small.bytes_at_1 < level_1_own_table, "{seq:?}");
        assert_eq!(seq.hash_log(), Some(6));
    }

    #[test]
    fn the_trial_tries_literals_only_on_bases_and_qualities() {
        // Bases with no overlaps: Huffman coding alone beats every match zstd finds.
        let bases = random_bases(0x9e37_79b9_7f4a_7c15, TRIAL_BYTES);
        let seq = LevelTrial::of("seq", &bases, 3).unwrap();
        let literals = seq.literals_only.unwrap();
        assert!(literals < seq.bytes_at_1, "{seq:?}");
        assert_eq!(seq.match_search(), MatchSearch::LiteralsOnly);
        // About 2 bits a base: literals Huffman-coded, not stored raw.
        assert!(literals < bases.len() / 3, "{literals}");
        // Columns of words are not tried so.
        for column in ["qname", "cigar", "tags"] {
            let trial = LevelTrial::of(column, &bases, 3).unwrap();
            assert_eq!(trial.literals_only, None, "{column}");
        }
    }

    #[test]
    fn levels_parse_from_text() {
        assert_eq!("auto".parse::<ColumnLevel>(), Ok(ColumnLevel::AUTO));
        assert_eq!("7".parse::<ColumnLevel>(), Ok(ColumnLevel::Level(7)));
        assert!("high".parse::<ColumnLevel>().is_err());
    }
}
