//! Profile: the header and a sample of records → what the file looks like and how to batch it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bamflow_plugin_api::{RecordView, Tag, TagValue};
use rayon::ThreadPool;
use serde::{Deserialize, Serialize};

use super::bgzf::{BgzfStream, BlockReader};
use super::compression::{self, LevelTrial};
use super::decode::Decoder;
use super::header::{self, BamHeader, HeaderLimits};
use super::schema::OutputSchema;
use super::source::{BatchLimits, RecordSource};
use super::{ConvertError, RawBatch, Stage};
use crate::input::{Input, SMALL_READ_AHEAD};

/// Records read for the profile; enough for stable percentiles, cheap on any file.
const SAMPLE_RECORDS: usize = 10_000;
/// Records read when the profile only plans batches ([`SampleSize::Plan`]): the plan uses the
/// mean record size, which a thousand records give as well as ten thousand. On a file of
/// 11,500 short reads the full sample inflated and framed most of the file a second time:
/// one-shot conversions of such a file took 7% less CPU and 9% less wall time with this one.
const PLAN_RECORDS: usize = 1_000;
/// Raw bytes read for the profile at most, so a long-read file is sampled quickly too: the
/// profile runs before the pipeline starts, mostly on one core. 8 MiB is 230 long reads of the
/// shared-bench corpus, plenty for the batch plan (it uses the mean); `bamflow profile` took
/// 90-120 ms there, against 150-170 ms with the 32 MiB it used to read.
const SAMPLE_BYTES: usize = 8 << 20;
/// Raw bytes of the sample the zstd level trial decodes at most: a read's SEQ and QUAL text
/// are about 2.5 times its raw bytes' share, so this gives each about 2 MiB of text.
const TRIAL_RAW_BYTES: usize = 4 << 20;

/// Decoded data is held in this many batch-sized pieces at once across the pipeline: batches
/// queued and being framed, being decoded, and decoded batches queued and being written, with
/// Arrow arrays taking about 1.5× their raw bytes.
const IN_FLIGHT_BATCHES_PER_WORKER: usize = 7;
const MIN_BATCH_BYTES: usize = 64 << 10;
const MAX_BATCH_BYTES: usize = 64 << 20;

/// Mean, median and 99th percentile of a sampled quantity.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Distribution {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

impl Distribution {
    fn of(mut values: Vec<u64>) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_unstable();
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        let mean = values.iter().sum::<u64>() as f64 / values.len() as f64;
        Self {
            mean,
            p50: at(0.5),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// A BAM index found beside the file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IndexInfo {
    /// `bai` or `csi`.
    pub kind: String,
    /// The index file.
    pub path: PathBuf,
}

/// How records are batched: sized so everything in flight fits `batch_memory_mb`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct BatchPlan {
    /// Batches decoded in parallel at once.
    pub window: usize,
    /// Raw record bytes after which a batch closes.
    pub max_bytes: usize,
    /// About how many records a batch holds, from the sampled mean record size; batches close
    /// at it only when `batch_records` fixes it (otherwise their bytes close them).
    pub max_records: usize,
}

impl BatchPlan {
    /// Sizes batches for `memory_mb` of in-flight data on `threads` workers.
    pub fn new(memory_mb: usize, threads: usize, mean_record_bytes: f64) -> Self {
        let window = threads.max(1);
        let budget = memory_mb.saturating_mul(1 << 20);
        let max_bytes = (budget / (IN_FLIGHT_BATCHES_PER_WORKER * window))
            .clamp(MIN_BATCH_BYTES, MAX_BATCH_BYTES);
        let max_records = (max_bytes as f64 / mean_record_bytes.max(36.0)).ceil() as usize;
        Self {
            window,
            max_bytes,
            max_records: max_records.max(1),
        }
    }

    /// Fixes the records per batch, when given.
    pub fn with_max_records(self, max_records: Option<usize>) -> Self {
        Self {
            max_records: max_records.unwrap_or(self.max_records),
            ..self
        }
    }

    /// When the reader closes a batch, for parts of `part_records`.
    pub fn limits(&self, part_records: u64) -> BatchLimits {
        BatchLimits {
            max_records: self.max_records,
            max_bytes: self.max_bytes,
            part_records,
        }
    }
}

/// What `bamflow profile` prints and `convert` plans with.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Profile {
    /// The input.
    pub path: PathBuf,
    /// Its size.
    pub file_bytes: u64,
    /// Bytes of its SAM header text.
    pub header_text_bytes: usize,
    /// Reference sequences in its header.
    pub references: usize,
    /// `SO` of the `@HD` line, e.g. `coordinate`; `unknown` when absent.
    pub sort_order: String,
    /// The index beside it, if any.
    pub index: Option<IndexInfo>,
    /// Records in the sample.
    pub records_sampled: usize,
    /// Whether the sample is the whole file.
    pub sampled_whole_file: bool,
    /// Record sizes in the sample, bytes.
    pub record_bytes: Distribution,
    /// Read lengths in the sample.
    pub read_length: Distribution,
    /// Share of unmapped records in the sample.
    pub unmapped_fraction: f64,
    /// Tags seen in the sample, with the SAM types they had (e.g. `i`, `Z`, `B:C`).
    pub tags: BTreeMap<String, BTreeSet<String>>,
    /// How records are batched.
    pub batch: BatchPlan,
    /// Text columns whose level is `auto`, their sample compressed at level 1 and at
    /// `zstd_level`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub level_trials: BTreeMap<String, LevelTrial>,
}

/// Settings the profile needs.
#[derive(Clone, Debug)]
pub struct ProfileOptions {
    /// Limits for the header.
    pub header_limits: HeaderLimits,
    /// Largest record accepted.
    pub max_record_bytes: usize,
    /// Memory for batches in flight, MiB.
    pub batch_memory_mb: usize,
    /// Overrides the records per batch the profile would choose.
    pub batch_records: Option<usize>,
    /// Worker threads.
    pub threads: usize,
    /// Columns whose zstd level is `auto`, to try on the sample.
    pub level_trial: Option<TrialPlan>,
    /// How much of the file is sampled.
    pub sample: SampleSize,
}

/// How many records the profile reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleSize {
    /// Enough for stable percentiles of the file's sizes and tags: what `bamflow profile`
    /// shows.
    Describe,
    /// What reading the file needs: the batch plan, and the zstd level trial when one runs
    /// (which gets the full sample). A conversion or scan of a small file then reads most of
    /// it once, not twice.
    Plan,
}

/// What the zstd level trial compresses: the sample decoded with `schema`, the text of
/// `columns`, at level 1 and at `level`.
#[derive(Clone, Debug)]
pub struct TrialPlan {
    /// The columns written.
    pub schema: OutputSchema,
    /// The `auto` columns to try.
    pub columns: Vec<String>,
    /// The level tried against 1.
    pub level: i32,
}

/// Reads the header and a sample of records from the start of `path`.
///
/// # Errors
///
/// Returns a [`ConvertError`] naming the stage when the file cannot be read.
pub fn profile(
    path: &Path,
    options: &ProfileOptions,
    pool: &Arc<ThreadPool>,
) -> Result<(Profile, BamHeader), ConvertError> {
    let fail = |stage, source| ConvertError::new(path, stage, source);
    let file = Input::open(path).map_err(|e| fail(Stage::Open, e.into()))?;
    let file_bytes = file.len().map_err(|e| fail(Stage::Open, e.into()))?;
    let file = file
        .reader_from(0, SMALL_READ_AHEAD)
        .map_err(|e| fail(Stage::Open, e.into()))?;

    let mut stream = BgzfStream::new(BlockReader::new(BufReader::new(file), 0, Arc::clone(pool)));
    let header = header::read_header(&mut stream, options.header_limits)
        .map_err(|e| ConvertError::from_header(path, e))?;
    let mut source = RecordSource::new(stream, 0, options.max_record_bytes);

    let trial = options
        .level_trial
        .as_ref()
        .filter(|_| file_bytes >= compression::TRIAL_MIN_FILE_BYTES);
    let mut batch = RawBatch::default();
    let limits = BatchLimits {
        max_records: match options.sample {
            SampleSize::Plan if trial.is_none() => PLAN_RECORDS,
            _ => SAMPLE_RECORDS,
        },
        max_bytes: SAMPLE_BYTES,
        part_records: u64::MAX,
    };
    source
        .read_batch(&mut batch, limits)
        .map_err(|e| ConvertError::from_source(path, e))?;
    let more = source
        .read_batch(
            &mut RawBatch::default(),
            BatchLimits {
                max_records: 1,
                ..limits
            },
        )
        .map_err(|e| ConvertError::from_source(path, e))?;
    let sampled_whole_file = !more;

    // The level trial compresses on the pool; describing the sample needs one core.
    let (sample, level_trials) = pool.install(|| {
        rayon::join(
            || Sample::of(&batch),
            || {
                trial
                    .map(|plan| level_trials(&batch, &header, plan))
                    .unwrap_or_default()
            },
        )
    });
    let mean_record_bytes = sample.record_bytes.mean + 4.0;
    let profile = Profile {
        path: path.to_owned(),
        file_bytes,
        header_text_bytes: header.text.len(),
        references: header.reference_names.len(),
        sort_order: sort_order(&header.text),
        index: find_index(path),
        records_sampled: batch.len(),
        sampled_whole_file,
        record_bytes: sample.record_bytes,
        read_length: sample.read_length,
        unmapped_fraction: sample.unmapped as f64 / batch.len().max(1) as f64,
        tags: sample.tags,
        batch: BatchPlan::new(options.batch_memory_mb, options.threads, mean_record_bytes)
            .with_max_records(options.batch_records),
        level_trials,
    };
    Ok((profile, header))
}

/// Decodes the start of the sample as the conversion will, then tries the planned columns'
/// text. A sample that does not decode gets no trials: the conversion reports the bad record
/// itself.
fn level_trials(
    batch: &RawBatch,
    header: &BamHeader,
    plan: &TrialPlan,
) -> BTreeMap<String, LevelTrial> {
    let decoder = Decoder::new(plan.schema.clone(), &header.reference_names);
    match decoder.decode(&trial_records(batch)) {
        Ok(sample) => compression::trials(&sample, &plan.columns, plan.level),
        Err(_) => BTreeMap::new(),
    }
}

/// The sample's first records up to [`TRIAL_RAW_BYTES`]: the trial compresses at most 2 MiB of
/// a column, and decoding a long-read sample whole held 15 MB more at the peak.
fn trial_records(batch: &RawBatch) -> RawBatch {
    // The records that end within the budget, and at least one.
    let n = batch
        .offsets
        .iter()
        .skip(1)
        .take_while(|&&end| end as usize <= TRIAL_RAW_BYTES)
        .count()
        .max(1)
        .min(batch.len());
    let end = batch.offsets.get(n).map_or(0, |&end| end as usize);
    RawBatch {
        data: batch.data.get(..end).unwrap_or_default().to_vec(),
        offsets: batch.offsets.get(..=n).unwrap_or_default().to_vec(),
        ..*batch
    }
}

struct Sample {
    record_bytes: Distribution,
    read_length: Distribution,
    unmapped: usize,
    tags: BTreeMap<String, BTreeSet<String>>,
}

impl Sample {
    fn of(batch: &RawBatch) -> Self {
        let mut sizes = Vec::with_capacity(batch.len());
        let mut lengths = Vec::with_capacity(batch.len());
        let mut unmapped = 0;
        // Collected as plain bytes and named once at the end: a String per tag of every sampled
        // record took 10-20 ms of the profile on short reads, all on one core.
        let mut kinds: HashSet<TagKind> = HashSet::new();

        // Malformed records are the decoder's to report, with their record number; the profile
        // just describes the ones it can read.
        for view in batch
            .records()
            .filter_map(|bytes| RecordView::new(bytes).ok())
        {
            sizes.push(view.as_bytes().len() as u64);
            lengths.push(view.sequence_len() as u64);
            unmapped += usize::from(view.is_unmapped());
            kinds.extend(
                view.tags()
                    .map_while(Result::ok)
                    .map(|tag| TagKind::of(&tag)),
            );
        }
        let mut tags: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for kind in kinds {
            tags.entry(String::from_utf8_lossy(&kind.name).into_owned())
                .or_default()
                .insert(kind.type_name());
        }
        Self {
            record_bytes: Distribution::of(sizes),
            read_length: Distribution::of(lengths),
            unmapped,
            tags,
        }
    }
}

/// A tag's name and type as one sampled record has it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct TagKind {
    name: [u8; 2],
    sam_type: u8,
    /// The integer's type code or the array's element type; 0 for other types.
    code: u8,
}

impl TagKind {
    fn of(tag: &Tag<'_>) -> Self {
        let code = match &tag.value {
            TagValue::Integer { code, .. } => *code,
            TagValue::Array(array) => array.subtype(),
            _ => 0,
        };
        Self {
            name: tag.name,
            sam_type: tag.value.sam_type(),
            code,
        }
    }

    fn type_name(self) -> String {
        match self.sam_type {
            b'i' => format!("i ({})", char::from(self.code)),
            b'B' => format!("B:{}", char::from(self.code)),
            other => char::from(other).to_string(),
        }
    }
}

fn sort_order(text: &str) -> String {
    text.lines()
        .find(|line| line.starts_with("@HD\t"))
        .and_then(|hd| hd.split('\t').find_map(|field| field.strip_prefix("SO:")))
        .unwrap_or("unknown")
        .to_owned()
}

/// Looks for `x.bam.bai`, `x.bai` and `x.bam.csi`, as samtools does.
fn find_index(path: &Path) -> Option<IndexInfo> {
    let with_suffix = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [
        ("bai", with_suffix(".bai")),
        ("bai", path.with_extension("bai")),
        ("csi", with_suffix(".csi")),
    ]
    .into_iter()
    .find(|(_, p)| p.is_file())
    .map(|(kind, path)| IndexInfo {
        kind: kind.to_owned(),
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trial_decodes_the_records_within_its_budget_and_at_least_one() {
        let batch = |sizes: &[usize]| {
            let mut batch = RawBatch::default();
            batch.clear();
            for &size in sizes {
                batch.data.resize(batch.data.len() + size, 0);
                batch.offsets.push(batch.data.len() as u32);
            }
            batch
        };
        let mib = 1 << 20;
        let trial = trial_records(&batch(&[mib, mib, mib, mib, mib]));
        assert_eq!((trial.len(), trial.data.len()), (4, TRIAL_RAW_BYTES));
        let trial = trial_records(&batch(&[5 * mib, mib]));
        assert_eq!((trial.len(), trial.data.len()), (1, 5 * mib));
        assert!(trial_records(&batch(&[])).is_empty());
        assert!(trial_records(&RawBatch::default()).is_empty());
    }

    #[test]
    fn batch_plan_fits_the_memory_budget() {
        let plan = BatchPlan::new(64, 2, 400.0);
        assert_eq!(plan.window, 2);
        assert!(plan.max_bytes * IN_FLIGHT_BATCHES_PER_WORKER * plan.window <= 64 << 20);
        assert_eq!(
            plan.max_records,
            (plan.max_bytes as f64 / 400.0).ceil() as usize
        );

        let long_reads = BatchPlan::new(64, 2, 2_000_000.0);
        assert_eq!(
            long_reads.max_records, 3,
            "a batch still holds a few long reads"
        );
    }

    #[test]
    fn reads_sort_order_from_hd() {
        assert_eq!(
            sort_order("@HD\tVN:1.6\tSO:coordinate\n@SQ\tSN:a\tLN:1\n"),
            "coordinate"
        );
        assert_eq!(sort_order("@CO\tSO:x\n"), "unknown");
    }

    #[test]
    fn distribution_percentiles() {
        let d = Distribution::of((1..=100).collect());
        assert_eq!((d.p50, d.p99, d.max), (51, 99, 100));
        assert_eq!(d.mean, 50.5);
    }
}
