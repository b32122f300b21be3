//! The conversion engine: one BAM file → one Parquet dataset.
//!
//! ```text
//! reader thread:  BGZF frames ─▶ inflate (pool) ─▶ frame records ─▶ RawBatch
//!                                                                      │ bounded channel
//! calling thread: each RawBatch ─▶ decode (pool, one task per batch) ──┤
//!                                                                      │ bounded channel
//! writer thread:  Arrow batches ─▶ Parquet parts (fsync, rename) ─▶ checkpoint
//! ```
//!
//! A conversion starts from its [`checkpoint`] when an interrupted run left
//! one: the reader seeks to the saved virtual offset and part numbering continues. A write or
//! fsync error abandons the part being written and redoes it from the last checkpoint.
//!
//! [`convert`] is the only function that knows this order. Memory is bounded by a fixed set of
//! [`RawBatch`] buffers that circulate between the reader and the decoder (the reader waits for
//! a free one) and by the bounded channel to the writer, never by the file size. Batches
//! decode in any order and are handed on oldest first, so rows come out in record order.

// The stages. Those whose types appear in errors, the manifest or the daemon's metrics are
// public but hidden from the documented API.
#[doc(hidden)]
pub mod bgzf;
#[doc(hidden)]
pub mod busy;
mod cells;
mod columns;
pub mod compression;
#[doc(hidden)]
pub mod decode;
mod encode;
pub mod filter;
#[doc(hidden)]
pub mod header;
mod in_place;
mod part_file;
pub mod profile;
mod read;
#[doc(hidden)]
pub mod region;
mod runs;
mod sam_text;
pub mod scan;
pub mod schema;
#[doc(hidden)]
pub mod source;
pub mod split;
mod walk;
#[doc(hidden)]
pub mod write;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crossbeam_channel::{bounded, Receiver};
use noodles_bgzf::VirtualPosition;
use parquet::file::metadata::KeyValue;
use rayon::ThreadPool;

use self::bgzf::{BgzfError, BgzfStream, BlockReader};
use self::busy::{BusyTimes, SerialSeconds, SerialThread, StageSeconds};
use self::compression::ColumnLevel;
use self::decode::{DecodeError, Decoder};
use self::filter::{FilterChain, FilterError, FilterOptions, PluginFilter};
use self::header::{HeaderError, HeaderLimits};
use self::profile::{Profile, ProfileOptions, SampleSize, TrialPlan};
use self::read::{Position, Reading};
use self::schema::OutputSchema;
use self::source::SourceError;
use self::write::{Chunk, Committed, ParquetSink, PartInfo, WriteError, WriteOptions};
use crate::checkpoint::{self, Checkpoint, CheckpointError, Settings, Start};
use crate::dataset::{self, DatasetError, Manifest, SourceInfo, Staging};
use crate::input::{Input, SMALL_READ_AHEAD};

/// Attempts at a conversion whose output writes fail before it gives up; each redoes only the
/// part that failed.
const WRITE_ATTEMPTS: u32 = 3;

/// Raw, decompressed records in one buffer (SAMv1 §4.2 layout): as they were inflated, each
/// behind its `block_size`, or back to back without it.
#[derive(Clone, Debug, Default)]
pub struct RawBatch {
    /// Position of this batch in the file's sequence of batches.
    pub seq: u64,
    /// Index (0-based) of the first record in the file.
    pub first_record: u64,
    /// Virtual position of the first record.
    pub start: VirtualPosition,
    /// Virtual position just after the last record.
    pub end: VirtualPosition,
    /// The records' bytes, in order.
    pub data: Vec<u8>,
    /// Record `i` is `data[offsets[i]..offsets[i + 1]]`, after its `block_size` when
    /// `prefixed`.
    pub offsets: Vec<u32>,
    /// Whether each record is still behind its 4-byte `block_size`, as it was inflated (the
    /// conversion frames records where they were inflated); [`RawBatch::compact`] removes them.
    pub prefixed: bool,
}

impl RawBatch {
    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.data.clear();
        self.offsets.clear();
        self.offsets.push(0);
        self.prefixed = false;
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes before each record that are not its own.
    fn prefix(&self) -> usize {
        if self.prefixed {
            4
        } else {
            0
        }
    }

    /// Keeps the records whose `keep` byte is 1, in order, moving them to the front of the
    /// buffer (no allocation).
    pub fn retain(&mut self, keep: &[u8]) {
        let mut write = 0;
        let mut kept = 1;
        for i in 0..self.len() {
            let (start, end) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
            if keep.get(i) == Some(&1) {
                self.data.copy_within(start..end, write);
                write += end - start;
                self.offsets[kept] = write as u32;
                kept += 1;
            }
        }
        self.data.truncate(write);
        self.offsets.truncate(kept);
        if let Some(first) = self.offsets.first_mut() {
            *first = 0;
        }
    }

    /// Moves the records back to back to the front of the buffer without their `block_size`
    /// fields: the layout filters are given (DESIGN §7). Filtering is the only step that
    /// needs it, so only filtered conversions pay for the copy, on the workers.
    pub fn compact(&mut self) {
        let prefix = self.prefix();
        let Some(&first) = self.offsets.first() else {
            return;
        };
        if prefix == 0 && first == 0 {
            return;
        }
        let (mut start, mut write) = (first as usize, 0);
        for i in 0..self.len() {
            let end = self.offsets[i + 1] as usize;
            self.data.copy_within(start + prefix..end, write);
            self.offsets[i] = write as u32;
            write += end - start - prefix;
            start = end;
        }
        let len = self.len();
        self.offsets[len] = write as u32;
        self.data.truncate(write);
        self.prefixed = false;
    }

    /// The records' bytes, in order.
    pub fn records(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        let prefix = self.prefix();
        self.offsets
            .windows(2)
            .map(move |w| &self.data[w[0] as usize + prefix..w[1] as usize])
    }
}

/// Everything a conversion needs to know, resolved from config and flags.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// The columns written.
    pub schema: OutputSchema,
    /// Worker threads of the pool a one-shot conversion starts.
    pub threads: usize,
    /// zstd level of every column without its own.
    pub zstd_level: i32,
    /// Levels of single columns, by output column name; they win over `zstd_level`.
    pub column_zstd_levels: BTreeMap<String, ColumnLevel>,
    /// Input records per part: the checkpoint unit.
    pub part_records: u64,
    /// Memory for record batches in flight, MiB.
    pub batch_memory_mb: usize,
    /// Fixed records per batch; `None` lets the profile choose from `batch_memory_mb`.
    pub batch_records: Option<usize>,
    /// Largest record accepted, bytes.
    pub max_record_bytes: usize,
    /// Largest header accepted, bytes.
    pub max_header_bytes: usize,
    /// Rows after which a row group closes.
    pub row_group_rows: usize,
    /// Arrow bytes of the rows' values after which a row group closes (`cells::range_bytes`).
    pub row_group_bytes: usize,
    /// Convert a file without the BGZF EOF block (it may be truncated).
    pub allow_missing_eof: bool,
    /// Continue from the checkpoint of an interrupted conversion into the same output (the
    /// daemon always does); otherwise such leftovers are discarded.
    pub resume: bool,
    /// The claim epoch this conversion runs under, when hosts share the output storage: the
    /// staging folder is then per epoch and inherited from earlier ones
    /// ([`crate::dataset::Staging::open_for`]).
    pub epoch: Option<u64>,
    /// The filters, built-in and plugins.
    pub filters: FilterOptions,
}

impl ConvertOptions {
    /// What profiling a file needs of these options.
    pub fn profile_options(&self) -> ProfileOptions {
        ProfileOptions {
            header_limits: self.header_limits(),
            max_record_bytes: self.max_record_bytes,
            batch_memory_mb: self.batch_memory_mb,
            batch_records: self.batch_records,
            threads: self.threads,
            level_trial: self.level_trial(),
            sample: SampleSize::Describe,
        }
    }

    /// The written columns whose level is `auto`, tried against `zstd_level`.
    fn level_trial(&self) -> Option<TrialPlan> {
        let columns: Vec<String> = self
            .schema
            .column_names()
            .into_iter()
            .filter(|name| self.column_zstd_levels.get(name) == Some(&ColumnLevel::AUTO))
            .collect();
        (!columns.is_empty()).then(|| TrialPlan {
            schema: self.schema.clone(),
            columns,
            level: self.zstd_level,
        })
    }

    fn header_limits(&self) -> HeaderLimits {
        HeaderLimits {
            max_header_bytes: self.max_header_bytes,
        }
    }

    /// What the parts' content depends on; a checkpoint made with other settings is not used.
    fn checkpoint_settings(&self) -> Settings {
        Settings {
            columns: self.schema.column_names(),
            tags: self
                .schema
                .promoted
                .iter()
                .map(ToString::to_string)
                .collect(),
            filters: self.filters.describe(),
            part_records: self.part_records,
        }
    }

    fn write_options(
        &self,
        column_zstd_levels: BTreeMap<String, i32>,
        column_zstd_hash_logs: BTreeMap<String, u32>,
        column_zstd_target_lengths: BTreeMap<String, u32>,
    ) -> WriteOptions {
        WriteOptions {
            zstd_level: self.zstd_level,
            column_zstd_levels,
            column_zstd_hash_logs,
            column_zstd_target_lengths,
            part_records: self.part_records,
            row_group_rows: self.row_group_rows,
            row_group_bytes: self.row_group_bytes,
            // QUAL compresses as one chain per row group: on 2 cores that chain keeps a core
            // busy anyway, and another row group in memory only costs RSS; from 4 threads up a
            // second (and more) lets QUAL use more than one core.
            row_groups_in_flight: 1 + self.threads / 4,
        }
    }
}

/// Where in the pipeline a conversion failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Checking the output folder and creating its staging folder, before any work.
    Output,
    /// Opening and identifying the input.
    Open,
    /// Reading BGZF blocks.
    Read,
    /// Inflating them.
    Inflate,
    /// Parsing the BAM header.
    Header,
    /// Framing records.
    Frame,
    /// Filtering (built-ins and plugins, regions).
    Filter,
    /// Decoding records into columns.
    Decode,
    /// Encoding and writing parts.
    Write,
    /// Saving or trusting a checkpoint.
    Checkpoint,
    /// Sealing and renaming the dataset.
    Publish,
    /// Comparing the published dataset with its input (the daemon's `verify = true`).
    Verify,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Self; 12] = [
        Self::Output,
        Self::Open,
        Self::Read,
        Self::Inflate,
        Self::Header,
        Self::Frame,
        Self::Filter,
        Self::Decode,
        Self::Write,
        Self::Checkpoint,
        Self::Publish,
        Self::Verify,
    ];
}

/// What kind of failure a conversion met, as the `kind` label of the error metric says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The operating system refused a read, write, fsync or rename.
    Io,
    /// The input is not a valid BAM file (format, corruption, truncation), or cannot answer a
    /// region query (no index, unknown reference).
    InvalidInput,
    /// The input exceeds a configured limit (record or header size).
    Limit,
    /// An interrupted conversion's checkpoint cannot be trusted.
    Checkpoint,
    /// A filter plugin was refused, rejected its config or failed.
    Plugin,
    /// Something in bamflow itself (a thread pool, a panic, an encoder).
    Internal,
    /// A commit was refused because another process took the file over.
    Fenced,
}

impl ErrorKind {
    /// Every kind.
    pub const ALL: [Self; 7] = [
        Self::Io,
        Self::InvalidInput,
        Self::Limit,
        Self::Checkpoint,
        Self::Plugin,
        Self::Internal,
        Self::Fenced,
    ];

    /// The `kind` label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Io => "io",
            Self::InvalidInput => "invalid_input",
            Self::Limit => "limit",
            Self::Checkpoint => "checkpoint",
            Self::Plugin => "plugin",
            Self::Internal => "internal",
            Self::Fenced => "fenced",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Output => "output",
            Self::Open => "open",
            Self::Read => "read",
            Self::Inflate => "inflate",
            Self::Header => "header",
            Self::Frame => "frame",
            Self::Filter => "filter",
            Self::Decode => "decode",
            Self::Write => "write",
            Self::Checkpoint => "checkpoint",
            Self::Publish => "publish",
            Self::Verify => "verify",
        })
    }
}

/// The cause of a failed conversion.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    /// An I/O error.
    Io(#[from] io::Error),
    #[error(transparent)]
    /// The BGZF layer.
    Bgzf(#[from] BgzfError),
    #[error(transparent)]
    /// The BAM header.
    Header(#[from] HeaderError),
    #[error(transparent)]
    /// Record framing.
    Source(#[from] SourceError),
    #[error(transparent)]
    /// Decoding a record.
    Decode(#[from] DecodeError),
    #[error(transparent)]
    /// Writing a part.
    Write(#[from] WriteError),
    #[error(transparent)]
    /// Staging or publishing the dataset.
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    /// A checkpoint.
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    /// A filter.
    Filter(#[from] FilterError),
    #[error(transparent)]
    /// A split plan, a task of one, or committing them.
    Split(#[from] split::SplitError),
    #[error("cannot start the worker pool")]
    /// The worker pool could not start.
    ThreadPool(#[from] rayon::ThreadPoolBuildError),
    #[error("a pipeline thread panicked")]
    /// A pipeline thread panicked (a bug).
    Panicked,
    #[error("cancelled")]
    /// The observer cancelled the conversion.
    Cancelled,
    #[error("not {step}: {reason}")]
    /// The observer refused a commit ([`Observer::confirm`]): this process no longer holds
    /// the file. Nothing of the step was done.
    Fenced {
        /// The step refused.
        step: Commit,
        /// Why, in the observer's words.
        reason: String,
    },
}

/// A durable step that makes a conversion's work visible to others, which
/// [`Observer::confirm`] may refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    /// Renaming part `n` (from 0) to its final name.
    Part(usize),
    /// Saving the checkpoint.
    Checkpoint,
    /// Renaming the sealed staging folder to the dataset.
    Publish,
}

impl fmt::Display for Commit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Part(n) => write!(f, "committing part {n}"),
            Self::Checkpoint => f.write_str("saving the checkpoint"),
            Self::Publish => f.write_str("publishing the dataset"),
        }
    }
}

/// A conversion failed: which file, in which stage, and why (with offsets in the source).
#[derive(Debug, thiserror::Error)]
#[error("{}: {stage} failed", path.display())]
pub struct ConvertError {
    /// The input.
    pub path: PathBuf,
    /// Where it failed.
    pub stage: Stage,
    /// Why.
    #[source]
    pub source: StageError,
}

impl ConvertError {
    /// The stage that failed.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// The failure of `path` at `stage`.
    pub fn new(path: &Path, stage: Stage, source: StageError) -> Self {
        Self {
            path: path.to_owned(),
            stage,
            source,
        }
    }

    /// Attributes a framing error to reading, inflating or framing.
    pub fn from_source(path: &Path, error: SourceError) -> Self {
        match error {
            SourceError::Bgzf(e) => Self::from_bgzf(path, e),
            other => Self::new(path, Stage::Frame, other.into()),
        }
    }

    fn from_bgzf(path: &Path, error: BgzfError) -> Self {
        let stage = if error.is_inflate() {
            Stage::Inflate
        } else {
            Stage::Read
        };
        Self::new(path, stage, error.into())
    }

    /// Attributes a header error to reading, inflating or the header itself.
    pub fn from_header(path: &Path, error: HeaderError) -> Self {
        match error {
            HeaderError::Bgzf(e) => Self::from_bgzf(path, e),
            other => Self::new(path, Stage::Header, other.into()),
        }
    }
}

/// An error and its causes, `: `-separated, as `anyhow`'s `{:#}` prints them.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Where in the input a failure happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Location {
    /// Compressed byte offset (of the BGZF block).
    Byte(u64),
    /// Record number, counting from 1.
    Record(u64),
}

impl ConvertError {
    /// The byte offset or record the failure refers to, when it has one.
    pub fn location(&self) -> Option<Location> {
        match &self.source {
            StageError::Bgzf(e)
            | StageError::Header(HeaderError::Bgzf(e))
            | StageError::Source(SourceError::Bgzf(e)) => e.offset().map(Location::Byte),
            StageError::Source(e) => e.offset().map(Location::Byte),
            StageError::Decode(e) => e.record().map(Location::Record),
            StageError::Filter(e) => e.record().map(Location::Record),
            _ => None,
        }
    }

    /// The kind of failure, for metrics.
    pub fn kind(&self) -> ErrorKind {
        match &self.source {
            StageError::Source(SourceError::RecordTooLarge { .. }) => ErrorKind::Limit,
            StageError::Header(e) if e.is_limit() => ErrorKind::Limit,
            StageError::Bgzf(BgzfError::Io { .. }) => ErrorKind::Io,
            StageError::Bgzf(_) | StageError::Header(_) | StageError::Source(_) => {
                ErrorKind::InvalidInput
            }
            StageError::Decode(_) => ErrorKind::InvalidInput,
            // No index, or a reference the header lacks: the input cannot answer the query.
            StageError::Filter(FilterError::Region { .. }) => ErrorKind::InvalidInput,
            StageError::Filter(_) => ErrorKind::Plugin,
            StageError::Checkpoint(
                CheckpointError::Durable(_) | CheckpointError::Cleanup { .. },
            ) => ErrorKind::Io,
            StageError::Checkpoint(_) => ErrorKind::Checkpoint,
            StageError::Io(_) | StageError::Write(_) | StageError::Dataset(_) => ErrorKind::Io,
            StageError::ThreadPool(_) | StageError::Panicked | StageError::Cancelled => {
                ErrorKind::Internal
            }
            StageError::Fenced { .. } => ErrorKind::Fenced,
            // A plan that does not fit the input or settings, or a task not done: usage.
            StageError::Split(split::SplitError::Io { .. }) => ErrorKind::Io,
            StageError::Split(_) => ErrorKind::InvalidInput,
        }
    }

    /// Whether the conversion was stopped on purpose rather than failing.
    pub fn is_cancelled(&self) -> bool {
        matches!(self.source, StageError::Cancelled)
    }

    /// Whether the observer refused a commit: the input is fine, but this process may no
    /// longer convert it.
    pub fn is_fenced(&self) -> bool {
        matches!(self.source, StageError::Fenced { .. })
    }

    /// Whether writing output failed at the operating system (a full disk, an I/O error), so
    /// the part may be redone on a fresh file.
    fn is_output_io(&self) -> bool {
        matches!(
            self.source,
            StageError::Write(WriteError::Durable(_) | WriteError::Create { .. })
                | StageError::Checkpoint(CheckpointError::Durable(_))
        ) || matches!(
            &self.source,
            StageError::Write(WriteError::Parquet { source, .. })
                if matches!(source, parquet::errors::ParquetError::External(e) if e.is::<io::Error>())
        )
    }
}

/// Progress of a running conversion, cumulative since it started (this run, when resumed).
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    /// Input records read so far.
    pub records_read: u64,
    /// Rows decoded and sent to the writer so far.
    pub rows_written: u64,
    /// Compressed bytes of the input consumed so far.
    pub bytes_read: u64,
    /// Busy seconds per stage so far.
    pub busy: StageSeconds,
}

/// Hears about a conversion as it runs (progress bar, metrics) and may cancel it.
pub trait Observer: Sync {
    /// Called once per batch, never per record.
    fn progress(&self, _progress: Progress) {}

    /// Called once per part, after the part is durable and the checkpoint recording it is
    /// saved; `commit_seconds` is how long closing, syncing and renaming the part took.
    fn checkpointed(&self, _part: &PartInfo, _commit_seconds: f64) {}

    /// Called when the conversion continues from the checkpoint of an interrupted run.
    fn resumed(&self) {}

    /// Called once per batch with the records each filter dropped in it.
    fn filtered(&self, _filter: &str, _records: u64) {}

    /// Called when a filter plugin is loaded for the conversion.
    fn plugin_loaded(&self, _name: &str, _version: &str) {}

    /// Checked once per batch; `true` stops the conversion with [`StageError::Cancelled`].
    fn cancelled(&self) -> bool {
        false
    }

    /// Asked right before each [`Commit`]; an error stops the conversion with
    /// [`StageError::Fenced`] without taking the step. A coordinator confirms here that this
    /// process still holds the file (its claim epoch), so a holder that was frozen past its
    /// lease never commits after a takeover.
    fn confirm(&self, _step: Commit) -> Result<(), String> {
        Ok(())
    }
}

/// Observes nothing: `&()` for a conversion or scan nobody watches.
impl Observer for () {}

/// What a finished conversion produced.
#[derive(Clone, Debug)]
pub struct ConvertSummary {
    /// The published dataset folder.
    pub output: PathBuf,
    /// Its `_manifest.json`.
    pub manifest: Manifest,
}

/// Converts `input` into the dataset folder `output`.
///
/// # Errors
///
/// Returns a [`ConvertError`] naming the file, the stage and (in its source) the offset or
/// record. Nothing then exists at `output`.
pub fn convert(
    input: &Path,
    output: &Path,
    options: &ConvertOptions,
    observer: &dyn Observer,
) -> Result<ConvertSummary, ConvertError> {
    let engine = Engine::new(options.threads)
        .map_err(|e| ConvertError::new(input, Stage::Open, e.into()))?;
    engine.convert(input, output, options, observer)
}

/// The worker pool conversions run on: one per process, shared by every file converted at
/// once, so concurrent files divide the cores instead of oversubscribing them.
#[derive(Clone, Debug)]
pub struct Engine {
    pool: Arc<ThreadPool>,
}

impl Engine {
    /// Starts a pool of `threads` workers.
    ///
    /// # Errors
    ///
    /// Returns rayon's error when the threads cannot be started.
    pub fn new(threads: usize) -> Result<Self, rayon::ThreadPoolBuildError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("bamflow-worker-{i}"))
            .build()?;
        Ok(Self {
            pool: Arc::new(pool),
        })
    }

    /// Converts `input` into the dataset folder `output` on this engine's pool.
    ///
    /// # Errors
    ///
    /// Returns a [`ConvertError`] naming the file, the stage and (in its source) the offset
    /// or record. Nothing then exists at `output`.
    pub fn convert(
        &self,
        input: &Path,
        output: &Path,
        options: &ConvertOptions,
        observer: &dyn Observer,
    ) -> Result<ConvertSummary, ConvertError> {
        convert_on(&self.pool, input, None, output, options, observer, None)
    }

    /// Splits `input` into `tasks` splits at record boundaries for conversions with `options`
    /// ([`split`]): one pass that inflates on this engine's pool and frames the records.
    ///
    /// # Errors
    ///
    /// Returns a [`ConvertError`] when the input cannot be read or framed, or `options` has
    /// regions.
    pub fn plan(
        &self,
        input: &Path,
        tasks: usize,
        options: &ConvertOptions,
    ) -> Result<split::SplitPlan, ConvertError> {
        split::plan(&self.pool, input, tasks, options)
    }

    /// Converts split `task` of `plan` into the staging folder of the dataset `output`
    /// ([`split::task_output`]), always resuming its own checkpoint; [`split::commit`] publishes the
    /// dataset once every task is done. A task already done is returned as it is.
    ///
    /// # Errors
    ///
    /// As [`Engine::convert`]; an input or settings other than the plan's fail at stage
    /// `open` ([`split::SplitError`]), and a second runner of the same task at stage `output`.
    pub fn convert_task(
        &self,
        input: &Path,
        output: &Path,
        plan: &split::SplitPlan,
        task: usize,
        options: &ConvertOptions,
        observer: &dyn Observer,
    ) -> Result<ConvertSummary, ConvertError> {
        let fail = |source: StageError| ConvertError::new(input, Stage::Open, source);
        let split = plan.split(task).map_err(|e| fail(e.into()))?;
        let target = split::task_output(output, task)?;
        if let Some(manifest) = split::finished_task(&target, plan) {
            return Ok(ConvertSummary {
                output: target,
                manifest,
            });
        }
        let source = SourceInfo::of(input).map_err(|e| fail(e.into()))?;
        split::check_task(plan, &source, options).map_err(|e| fail(e.into()))?;
        // A rerun (a requeued array task) continues where the last run's parts end.
        let options = ConvertOptions {
            resume: true,
            ..options.clone()
        };
        convert_on(
            &self.pool,
            input,
            Some(source),
            &target,
            &options,
            observer,
            Some(split),
        )
    }

    /// [`Engine::convert`] of an input the caller has identified already, e.g. to look it up
    /// in a ledger: its content is not hashed again. `source` (its `filed_as` included) is
    /// what the manifest records; the conversion checks the input still has its size and
    /// mtime.
    ///
    /// # Errors
    ///
    /// As [`Engine::convert`]; an input whose size or mtime changed since `source` was taken
    /// fails at stage `open`.
    pub fn convert_identified(
        &self,
        input: &Path,
        source: SourceInfo,
        output: &Path,
        options: &ConvertOptions,
        observer: &dyn Observer,
    ) -> Result<ConvertSummary, ConvertError> {
        convert_on(
            &self.pool,
            input,
            Some(source),
            output,
            options,
            observer,
            None,
        )
    }

    /// Streams `input` as Arrow record batches with the dataset's schema: the same columns,
    /// promoted tags, filters and regions as [`Engine::convert`] with the same `options`, in
    /// record order and bounded memory, decoded on this engine's pool.
    ///
    /// # Errors
    ///
    /// Returns a [`ConvertError`] when the input cannot be opened, its header or sample read,
    /// or a filter or region set up; errors met later come out of the iterator.
    pub fn scan(
        &self,
        input: &Path,
        options: &ConvertOptions,
    ) -> Result<scan::RecordBatches, ConvertError> {
        scan::RecordBatches::open(&self.pool, input, options, None)
    }

    /// [`Engine::scan`] of split `task` of `plan` only: its records, in order, for one worker
    /// of many (a Spark partition). The columns and filters are `options`', whatever the
    /// plan's settings.
    ///
    /// # Errors
    ///
    /// As [`Engine::scan`]; an input other than the plan's, a task the plan lacks or regions
    /// fail at stage `open` ([`split::SplitError`]).
    pub fn scan_task(
        &self,
        input: &Path,
        plan: &split::SplitPlan,
        task: usize,
        options: &ConvertOptions,
    ) -> Result<scan::RecordBatches, ConvertError> {
        let fail = |source: StageError| ConvertError::new(input, Stage::Open, source);
        let split = plan.split(task).map_err(|e| fail(e.into()))?;
        let source = SourceInfo::of(input).map_err(|e| fail(e.into()))?;
        split::check_scan(plan, &source, options).map_err(|e| fail(e.into()))?;
        scan::RecordBatches::open(&self.pool, input, options, Some(split))
    }

    /// Profiles `input` as a conversion with `options` would: its header, a sample of its
    /// records, and the batch plan (what `bamflow profile` prints).
    ///
    /// # Errors
    ///
    /// Returns a [`ConvertError`] when the header or the sample cannot be read.
    pub fn profile(&self, input: &Path, options: &ConvertOptions) -> Result<Profile, ConvertError> {
        profile::profile(input, &options.profile_options(), &self.pool).map(|(profile, _)| profile)
    }
}

fn convert_on(
    pool: &Arc<ThreadPool>,
    input: &Path,
    identified: Option<SourceInfo>,
    output: &Path,
    options: &ConvertOptions,
    observer: &dyn Observer,
    split: Option<&split::Split>,
) -> Result<ConvertSummary, ConvertError> {
    let started = SystemTime::now();
    let clock = Instant::now();
    let fail = |stage, source: StageError| ConvertError::new(input, stage, source);

    // An existing output is refused before the input is read.
    if output.symlink_metadata().is_ok() {
        let exists = DatasetError::AlreadyExists {
            path: output.to_owned(),
        };
        return Err(fail(Stage::Output, exists.into()));
    }
    let source_info = match identified {
        Some(source) => {
            let now = SourceInfo::stat(input).map_err(|e| fail(Stage::Open, e.into()))?;
            if (now.size, &now.mtime) != (source.size, &source.mtime) {
                let changed = io::Error::other(format!(
                    "the input changed since it was identified: {} bytes, mtime {} (was {} bytes, {})",
                    now.size, now.mtime, source.size, source.mtime
                ));
                return Err(fail(Stage::Open, changed.into()));
            }
            source
        }
        None => SourceInfo::of(input).map_err(|e| fail(Stage::Open, e.into()))?,
    };
    let Prepared {
        profile,
        header,
        filters,
        spans,
    } = prepare(pool, input, options, observer, Purpose::Convert)?;
    // A task of a split plan reads its split, as a region reads its index spans.
    let (spans, origin) = match split {
        Some(split) => {
            let (spans, from) = split::reading(split);
            (Some(spans), from)
        }
        None => (spans, Position::START),
    };
    let mut staging =
        Staging::open_for(output, options.epoch).map_err(|e| fail(Stage::Output, e.into()))?;
    // A run that died after sealing its dataset and before renaming it left it complete.
    if let Some(manifest) = staging.sealed() {
        if options.resume && sealed_matches(&manifest, &source_info, options) {
            checkpoint::verify_parts(staging.path(), &manifest.parts)
                .map_err(|e| fail(Stage::Checkpoint, e.into()))?;
            tracing::info!(path = %input.display(), output = %output.display(), "Publishing the dataset an interrupted run had completed.");
            return publish(staging, manifest, input, observer);
        }
        // Another input's or other settings' dataset: not to be mixed with, or mistaken for,
        // this one.
        checkpoint::discard(staging.path()).map_err(|e| fail(Stage::Checkpoint, e.into()))?;
    }
    let metadata = part_metadata(&header.text, &source_info, options.schema.version())
        .map_err(|e| fail(Stage::Write, e))?;
    let decoder = Decoder::new(options.schema.clone(), &header.reference_names);
    let staging_dir = staging.path().to_owned();
    let busy = Arc::new(BusyTimes::default());
    let written = options.schema.column_names();
    let levels = compression::resolve(
        &options.column_zstd_levels,
        &profile.level_trials,
        |column| written.iter().any(|c| c == column),
    );
    let hash_logs = compression::hash_logs(&options.column_zstd_levels, &profile.level_trials);
    let target_lengths =
        compression::target_lengths(&options.column_zstd_levels, &profile.level_trials);
    let write = options.write_options(levels, hash_logs, target_lengths);
    let full_hash = std::sync::Mutex::new(None);
    let build = Build {
        reading: Reading {
            input,
            options,
            plan: profile.batch,
            pool,
            observer,
            decoder: &decoder,
            filters: &filters,
            spans: spans.as_deref(),
            busy: &busy,
            staging: Some(&staging_dir),
            records_start: header.records_start,
            full_hash: Some(&full_hash),
        },
        write: &write,
        staging: &staging_dir,
        source: &source_info,
        metadata,
        origin,
    };

    let mut attempt = 1;
    let done = loop {
        match build.run(options.resume || attempt > 1) {
            Ok(done) => break done,
            Err(error) => {
                // Progress worth resuming stays on disk: a stopped conversion continues at the
                // next start, and a checkpoint that cannot be trusted is evidence.
                if error.is_cancelled()
                    || error.is_fenced()
                    || (error.stage == Stage::Checkpoint && !error.is_output_io())
                {
                    staging.keep();
                }
                if !error.is_output_io() || attempt == WRITE_ATTEMPTS {
                    return Err(error);
                }
                tracing::warn!(
                    path = %input.display(),
                    attempt,
                    error = %chain(&error),
                    "Writing output failed; redoing the part from the last checkpoint."
                );
                attempt += 1;
            }
        }
    };

    let seconds = clock.elapsed().as_secs_f64();
    let mut source_info = source_info;
    source_info.sha256 = full_hash
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let manifest = manifest(
        source_info,
        done,
        options,
        &write,
        profile,
        Timing {
            started,
            seconds,
            stages: busy.snapshot(),
            serial: busy.serial_snapshot(),
        },
    );
    staging
        .seal(&manifest)
        .map_err(|e| fail(Stage::Publish, e.into()))?;
    publish(staging, manifest, input, observer)
}

/// What reading a file needs before its first record: its profile and header, the filters
/// built for it, and the index spans of its regions.
struct Prepared {
    profile: Profile,
    header: header::BamHeader,
    filters: FilterChain,
    spans: Option<Vec<region::Span>>,
}

/// Checks the input is complete, profiles it and sets up its filters and regions: a plugin or
/// region that cannot work fails the file before anything is read or written.
/// What the records are read for: a scan writes nothing, so it skips the zstd level trial.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Convert,
    Scan,
}

fn prepare(
    pool: &Arc<ThreadPool>,
    input: &Path,
    options: &ConvertOptions,
    observer: &dyn Observer,
    purpose: Purpose,
) -> Result<Prepared, ConvertError> {
    let fail = |source: StageError| ConvertError::new(input, Stage::Filter, source);
    check_complete(input, options.allow_missing_eof)?;
    let mut profile_options = ProfileOptions {
        sample: SampleSize::Plan,
        ..options.profile_options()
    };
    if purpose == Purpose::Scan {
        profile_options.level_trial = None;
    }
    let (profile, header) = profile::profile(input, &profile_options, pool)?;
    let filters = filter_chain(&options.filters, &header, observer).map_err(|e| fail(e.into()))?;
    let spans = if options.filters.regions.is_empty() {
        None
    } else {
        region::spans(input, &options.filters.regions, &header.reference_names)
            .map_err(|e| fail(e.into()))?
    };
    Ok(Prepared {
        profile,
        header,
        filters,
        spans,
    })
}

/// Publishes a sealed staging folder: the checkpoint goes first, then the folder is renamed.
/// A crash between the two leaves a sealed folder that the next run publishes as it is.
fn publish(
    staging: Staging,
    manifest: Manifest,
    input: &Path,
    observer: &dyn Observer,
) -> Result<ConvertSummary, ConvertError> {
    let fail = |source: StageError| ConvertError::new(input, Stage::Publish, source);
    confirm(observer, Commit::Publish).map_err(fail)?;
    checkpoint::remove_from(staging.path()).map_err(|e| fail(e.into()))?;
    // Sealed, checkpoint removed, not yet renamed: what a crash here leaves must be published
    // by the next run.
    let _ = crate::faults::point("dataset-sealed");
    let output = staging.publish().map_err(|e| fail(e.into()))?;
    Ok(ConvertSummary { output, manifest })
}

/// Whether a sealed staging folder's dataset is what this conversion would make: the same
/// input content, columns, tags and filters.
fn sealed_matches(manifest: &Manifest, source: &SourceInfo, options: &ConvertOptions) -> bool {
    let settings = options.checkpoint_settings();
    manifest.source.same_content(source)
        && manifest.columns == settings.columns
        && manifest.tags == settings.tags
        && manifest.filters == settings.filters
}

/// Asks the observer whether `step` may be taken.
fn confirm(observer: &dyn Observer, step: Commit) -> Result<(), StageError> {
    observer
        .confirm(step)
        .map_err(|reason| StageError::Fenced { step, reason })
}

/// What one attempt at a conversion finished with.
struct Done {
    checkpoint: Checkpoint,
    /// Records this attempt read (the rest came from the checkpoint it resumed).
    records_now: u64,
}

/// Everything an attempt at building the dataset in its staging folder needs: the reading
/// half, and where and how to write.
struct Build<'a> {
    reading: Reading<'a>,
    /// Encoding settings, with each `auto` column level settled by the profile's trial.
    write: &'a WriteOptions,
    staging: &'a Path,
    source: &'a SourceInfo,
    metadata: Vec<KeyValue>,
    /// Where a fresh start begins: the first record, or a split's.
    origin: Position,
}

impl Build<'_> {
    /// Converts from the checkpoint (when `resume`) or from the start, into the staging folder.
    fn run(&self, resume: bool) -> Result<Done, ConvertError> {
        let fail = |stage, source: StageError| ConvertError::new(self.reading.input, stage, source);
        let checkpoint = self.start(resume).map_err(|e| fail(Stage::Checkpoint, e))?;
        let sink = ParquetSink::new(
            self.staging,
            self.reading.options.schema.arrow().clone(),
            self.write,
            self.metadata.clone(),
            Arc::clone(self.reading.pool),
            Arc::clone(self.reading.busy),
        )
        .map_err(|e| fail(Stage::Write, e.into()))?
        .resume_after(checkpoint.parts.len());

        let first_record = checkpoint.next_record;
        let (sink, mut checkpoint, mut progress) = self.stages(sink, checkpoint)?;
        confirm(self.reading.observer, Commit::Part(sink.part_index()))
            .map_err(|e| fail(Stage::Write, e))?;
        let last = sink.finish().map_err(|e| fail(Stage::Write, e.into()))?;
        if let Some(committed) = last {
            self.save(&mut checkpoint, committed)
                .map_err(|e| e.attribute(self.reading.input))?;
        }
        // The last part's time and bytes, and the stages' final totals.
        progress.busy = self.reading.busy.snapshot();
        self.reading.observer.progress(progress);
        Ok(Done {
            records_now: checkpoint.next_record - first_record,
            checkpoint,
        })
    }

    /// The checkpoint this attempt starts from, after cleaning the staging folder for it.
    fn start(&self, resume: bool) -> Result<Checkpoint, StageError> {
        let settings = self.reading.options.checkpoint_settings();
        let start = if resume {
            checkpoint::plan(self.staging, self.source, &settings)?
        } else {
            checkpoint::discard(self.staging)?
        };
        let path = self.reading.input.display();
        let fresh = || {
            let mut checkpoint = Checkpoint::start(self.source, settings.clone());
            checkpoint.next_record = self.origin.record;
            checkpoint.next_virtual_offset = self.origin.virtual_offset;
            checkpoint
        };
        match start {
            Start::Fresh { reason: None } => Ok(fresh()),
            Start::Fresh {
                reason: Some(reason),
            } => {
                tracing::warn!(path = %path, staging = %self.staging.display(), %reason, "Starting over: {reason}.");
                Ok(fresh())
            }
            Start::Resume(mut checkpoint) => {
                // Saved at once, so every resume counts, even one a crash cuts short.
                checkpoint.resumes += 1;
                confirm(self.reading.observer, Commit::Checkpoint)?;
                checkpoint.save(self.staging)?;
                tracing::info!(
                    path = %path,
                    part = checkpoint.parts.len(),
                    record = checkpoint.next_record,
                    resumes = checkpoint.resumes,
                    "Resuming conversion from its checkpoint."
                );
                self.reading.observer.resumed();
                Ok(*checkpoint)
            }
        }
    }
}

/// Reads just the SAM header text of a BAM file (e.g. for `{sample}` in output templates).
///
/// # Errors
///
/// Returns a [`ConvertError`] when the header cannot be read.
pub fn read_header_text(input: &Path, options: &ConvertOptions) -> Result<String, ConvertError> {
    let file = Input::open(input)
        .and_then(|input| input.reader_from(0, SMALL_READ_AHEAD))
        .map_err(|e| ConvertError::new(input, Stage::Open, e.into()))?;
    let reader = BlockReader::new(BufReader::new(file), 0, single_thread_pool(input)?);
    let mut stream = BgzfStream::new(reader);
    let header = header::read_header(&mut stream, options.header_limits())
        .map_err(|e| ConvertError::from_header(input, e))?;
    Ok(header.text)
}

/// The SAM header, as `samtools view -H --no-PG` prints it, of a BAM file or of a dataset
/// folder (from its first part's `bamflow:sam_header`, which every part carries).
///
/// # Errors
///
/// Returns a [`ConvertError`] at stage `open` when the path cannot be read, or `header` when
/// the BAM header is invalid or the dataset has no part carrying one.
pub fn read_header(path: &Path) -> Result<String, ConvertError> {
    if path.is_dir() {
        return dataset_header(path);
    }
    read_header_text(path, &ConvertOptions::default())
}

fn dataset_header(dir: &Path) -> Result<String, ConvertError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};

    let fail = |stage, error: io::Error| ConvertError::new(dir, stage, error.into());
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| fail(Stage::Open, e))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "parquet"))
        .collect();
    parts.sort();
    let first = parts.first().ok_or_else(|| {
        let none = io::Error::new(io::ErrorKind::NotFound, "no Parquet part in the folder");
        fail(Stage::Open, none)
    })?;
    let invalid = |message: String| {
        let error = io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {message}", first.display()),
        );
        fail(Stage::Header, error)
    };
    let file = File::open(first).map_err(|e| fail(Stage::Open, e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| invalid(e.to_string()))?;
    reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .into_iter()
        .flatten()
        .find(|kv| kv.key == "bamflow:sam_header")
        .and_then(|kv| kv.value.clone())
        .ok_or_else(|| invalid("no bamflow:sam_header in its metadata".to_owned()))
}

/// Refuses a file that does not end with the BGZF EOF block, unless allowed.
fn check_complete(input: &Path, allow_missing_eof: bool) -> Result<(), ConvertError> {
    let fail = |stage, source: StageError| ConvertError::new(input, stage, source);
    let file = Input::open(input).map_err(|e| fail(Stage::Open, e.into()))?;
    if file.is_empty().map_err(|e| fail(Stage::Open, e.into()))? {
        return Err(fail(Stage::Read, BgzfError::Empty.into()));
    }
    if !allow_missing_eof && !bgzf::has_eof_block(&file).map_err(|e| fail(Stage::Read, e.into()))? {
        // A file that is not BGZF at all deserves that message rather than "truncated".
        bgzf::check_first_frame(&file).map_err(|e| ConvertError::from_bgzf(input, e))?;
        return Err(fail(Stage::Read, BgzfError::MissingEof.into()));
    }
    Ok(())
}

fn single_thread_pool(input: &Path) -> Result<Arc<ThreadPool>, ConvertError> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build();
    pool.map(Arc::new)
        .map_err(|e| ConvertError::new(input, Stage::Open, e.into()))
}

/// Key/value metadata stored in every part's footer.
fn part_metadata(
    header_text: &str,
    source: &SourceInfo,
    schema_version: u32,
) -> Result<Vec<KeyValue>, StageError> {
    let source = serde_json::to_string(source).map_err(|e| StageError::Io(e.into()))?;
    Ok(vec![
        KeyValue::new("bamflow:sam_header".to_owned(), header_text.to_owned()),
        KeyValue::new(
            "bamflow:schema_version".to_owned(),
            schema_version.to_string(),
        ),
        KeyValue::new("bamflow:source".to_owned(), source),
    ])
}

/// When a conversion ran and where its time went.
struct Timing {
    started: SystemTime,
    seconds: f64,
    stages: StageSeconds,
    serial: SerialSeconds,
}

fn manifest(
    source: SourceInfo,
    done: Done,
    options: &ConvertOptions,
    write: &WriteOptions,
    profile: Profile,
    timing: Timing,
) -> Manifest {
    let Timing {
        started,
        seconds,
        stages,
        serial,
    } = timing;
    let Done {
        checkpoint,
        records_now,
    } = done;
    let bytes_in = source.size;
    let bytes_out: u64 = checkpoint.parts.iter().map(|p| p.bytes).sum();
    Manifest {
        bamflow_version: env!("CARGO_PKG_VERSION").to_owned(),
        schema_version: options.schema.version(),
        // Of this run: records resumed from a checkpoint took no time now.
        records_per_second: records_now as f64 / seconds.max(1e-9),
        source,
        counts: checkpoint.counts,
        parts: checkpoint.parts,
        columns: options.schema.column_names(),
        tags: options
            .schema
            .promoted
            .iter()
            .map(ToString::to_string)
            .collect(),
        filters: options.filters.describe(),
        zstd_level: options.zstd_level,
        column_zstd_levels: write.column_zstd_levels.clone(),
        column_zstd_hash_logs: write.column_zstd_hash_logs.clone(),
        column_zstd_target_lengths: write.column_zstd_target_lengths.clone(),
        profile,
        resumes: checkpoint.resumes,
        started: dataset::timestamp(started),
        finished: dataset::timestamp(SystemTime::now()),
        seconds,
        stage_seconds: stages,
        serial_cpu_seconds: serial,
        peak_rss_bytes: crate::heap::peak_rss_bytes(),
        compression_ratio: bytes_out as f64 / bytes_in.max(1) as f64,
        bytes_in,
        bytes_out,
        tasks: None,
    }
}

/// The running pipeline of one attempt: reader, decoder and writer.
impl Build<'_> {
    /// Runs reader, decoder and writer from the checkpoint until the input is consumed or a
    /// stage fails; returns the sink (its last part still open) and the checkpoint so far.
    fn stages(
        &self,
        sink: ParquetSink,
        checkpoint: Checkpoint,
    ) -> Result<(ParquetSink, Checkpoint, Progress), ConvertError> {
        let (decoded_tx, decoded_rx) = bounded::<Chunk>(self.reading.plan.window);
        let from = Position {
            record: checkpoint.next_record,
            virtual_offset: checkpoint.next_virtual_offset,
        };
        std::thread::scope(|scope| {
            let writer = std::thread::Builder::new()
                .name("bamflow-writer".into())
                .spawn_scoped(scope, || {
                    self.reading.busy.on_thread(SerialThread::Writer, || {
                        self.write(sink, checkpoint, decoded_rx)
                    })
                })
                .map_err(|e| ConvertError::new(self.reading.input, Stage::Open, e.into()))?;
            let decoded = self.reading.stream(from, decoded_tx);
            let written = writer.join().map_err(|_| {
                ConvertError::new(self.reading.input, Stage::Write, StageError::Panicked)
            })?;
            // A decode (or forwarded read) error explains a writer that stopped early.
            let progress = decoded?;
            let (sink, checkpoint) = written?;
            Ok((sink, checkpoint, progress))
        })
    }

    /// Writer thread: writes chunks in order and saves a checkpoint after every part; returns
    /// the sink (its last part not yet committed) and the checkpoint.
    fn write(
        &self,
        mut sink: ParquetSink,
        mut checkpoint: Checkpoint,
        chunks: Receiver<Chunk>,
    ) -> Result<(ParquetSink, Checkpoint), ConvertError> {
        for chunk in chunks {
            if sink.fills_part(&chunk) {
                confirm(self.reading.observer, Commit::Part(sink.part_index()))
                    .map_err(|e| ConvertError::new(self.reading.input, Stage::Write, e))?;
            }
            sink.accept(&chunk, &mut |part| self.save(&mut checkpoint, part))
                .map_err(|e| e.attribute(self.reading.input))?;
        }
        Ok((sink, checkpoint))
    }

    /// Records a durable part in the checkpoint and saves it.
    fn save(&self, checkpoint: &mut Checkpoint, committed: Committed) -> Result<(), SinkError> {
        let Committed {
            part,
            next_virtual_offset,
            seconds,
            filtered,
        } = committed;
        let filtered = self
            .reading
            .filters
            .names()
            .map(str::to_owned)
            .zip(filtered);
        checkpoint.add_part(part.clone(), next_virtual_offset, filtered);
        confirm(self.reading.observer, Commit::Checkpoint).map_err(|e| {
            SinkError::Checkpoint(ConvertError::new(self.reading.input, Stage::Checkpoint, e))
        })?;
        checkpoint.save(self.staging).map_err(|e| {
            SinkError::Checkpoint(ConvertError::new(
                self.reading.input,
                Stage::Checkpoint,
                e.into(),
            ))
        })?;
        self.reading.observer.checkpointed(&part, seconds);
        Ok(())
    }
}

/// What stops the sink: its own write error, or a checkpoint that could not be saved.
enum SinkError {
    Write(WriteError),
    Checkpoint(ConvertError),
}

impl SinkError {
    fn attribute(self, input: &Path) -> ConvertError {
        match self {
            Self::Write(e) => ConvertError::new(input, Stage::Write, e.into()),
            Self::Checkpoint(e) => e,
        }
    }
}

impl From<WriteError> for SinkError {
    fn from(error: WriteError) -> Self {
        Self::Write(error)
    }
}

/// The built-in filters and the plugins of a conversion, plugins loaded and their first state
/// created with this file's header.
fn filter_chain(
    options: &FilterOptions,
    header: &header::BamHeader,
    observer: &dyn Observer,
) -> Result<FilterChain, FilterError> {
    let mut filters = FilterChain::builtins(options, &header.reference_names)?;
    for spec in &options.plugins {
        let plugin = crate::plugin::Plugin::load(&spec.path, spec.sha256.as_deref())?;
        observer.plugin_loaded(plugin.name(), plugin.version());
        filters.push(Box::new(PluginFilter::new(
            plugin,
            &spec.config_json,
            &header.text,
        )?));
    }
    Ok(FilterChain::new(filters))
}

#[cfg(test)]
pub(crate) mod tests {
    use bamflow_plugin_api::RecordBuilder;

    use super::*;

    /// A pool of `threads` workers for a test's inflate and decode jobs.
    pub(crate) fn pool(threads: usize) -> Arc<rayon::ThreadPool> {
        Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap(),
        )
    }

    /// A xorshift64 generator from `seed` (not 0): test data that is random but the same
    /// every run.
    pub(crate) fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// `count` BGZF blocks of `len` random bytes each (random bytes do not compress, so each
    /// write is a block of its own): where each block starts, their bytes, and the file.
    pub(crate) fn incompressible_blocks(
        count: usize,
        len: usize,
    ) -> (Vec<u64>, Vec<Vec<u8>>, Vec<u8>) {
        use std::io::Write;

        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        let mut writer = noodles_bgzf::io::Writer::new(Vec::new());
        let (mut starts, mut blocks) = (Vec::new(), Vec::new());
        for _ in 0..count {
            starts.push(writer.virtual_position().compressed());
            let block: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            writer.write_all(&block).unwrap();
            writer.flush().unwrap();
            blocks.push(block);
        }
        (starts, blocks, writer.finish().unwrap())
    }

    /// A raw batch of `records`, as the reader frames them.
    pub(crate) fn raw_batch(records: &[Vec<u8>]) -> RawBatch {
        let mut batch = RawBatch::default();
        batch.clear();
        for record in records {
            batch.data.extend_from_slice(record);
            batch.offsets.push(batch.data.len() as u32);
        }
        batch
    }

    /// Records as they were inflated: each behind its `block_size`, after `head` bytes of the
    /// record before.
    fn prefixed_batch(records: &[Vec<u8>], head: usize) -> RawBatch {
        let mut batch = RawBatch {
            data: vec![0xee; head],
            offsets: vec![head as u32],
            prefixed: true,
            ..RawBatch::default()
        };
        for record in records {
            batch
                .data
                .extend_from_slice(&(record.len() as u32).to_le_bytes());
            batch.data.extend_from_slice(record);
            batch.offsets.push(batch.data.len() as u32);
        }
        batch
    }

    #[test]
    fn a_batch_framed_in_place_compacts_to_the_plugin_layout() {
        let records: Vec<Vec<u8>> = (0..5)
            .map(|i| RecordBuilder::new(format!("read{i}{}", "x".repeat(i)).as_bytes()).build())
            .collect();
        let mut batch = prefixed_batch(&records, 17);
        assert!(batch.records().eq(records.iter().map(Vec::as_slice)));
        batch.compact();
        assert!(!batch.prefixed);
        assert_eq!(batch.data, records.concat());
        assert!(batch.records().eq(records.iter().map(Vec::as_slice)));
        assert!(bamflow_plugin_api::Batch::new(&batch.data, &batch.offsets).is_ok());
        // Compacting again changes nothing.
        let before = batch.clone();
        batch.compact();
        assert_eq!((batch.data, batch.offsets), (before.data, before.offsets));
        // Retaining keeps each record's prefix and starts the buffer at 0.
        let mut batch = prefixed_batch(&records, 3);
        batch.retain(&[0, 1, 0, 1, 1]);
        let kept: Vec<&[u8]> = batch.records().collect();
        assert_eq!(kept, [&records[1][..], &records[3], &records[4]]);
        assert_eq!(batch.offsets[0], 0);
    }

    #[test]
    fn retain_keeps_the_marked_records_in_order_in_place() {
        let records: Vec<Vec<u8>> = (0..6)
            .map(|i| RecordBuilder::new(format!("read{i}{}", "x".repeat(i)).as_bytes()).build())
            .collect();
        let mut batch = raw_batch(&records);
        let capacity = batch.data.capacity();
        batch.retain(&[1, 0, 0, 1, 1, 0]);
        let kept: Vec<&[u8]> = batch.records().collect();
        assert_eq!(kept, [&records[0][..], &records[3], &records[4]]);
        assert_eq!(batch.data.capacity(), capacity, "compacted in place");

        batch.retain(&[0, 0, 0]);
        assert!(batch.is_empty());
        assert_eq!(batch.offsets, [0]);
        // A keep mask shorter than the batch drops what it does not cover.
        let mut batch = raw_batch(&records);
        batch.retain(&[1]);
        assert_eq!(batch.len(), 1);
    }

    #[test]
    fn error_kinds_follow_the_cause() {
        let kind = |source| ConvertError::new(Path::new("x.bam"), Stage::Filter, source).kind();
        let region = FilterError::Region {
            region: "chr9".to_owned(),
            reason: "no index".to_owned(),
        };
        assert_eq!(kind(StageError::Filter(region)), ErrorKind::InvalidInput);
        let too_large = SourceError::RecordTooLarge {
            record: 1,
            offset: 0,
            size: 1 << 30,
            limit: 1 << 26,
        };
        assert_eq!(kind(StageError::Source(too_large)), ErrorKind::Limit);
        assert_eq!(kind(StageError::Panicked), ErrorKind::Internal);
    }
}
