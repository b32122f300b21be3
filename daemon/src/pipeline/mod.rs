//! The conversion engine: one BAM file → one Parquet dataset.
//!
//! ```text
//! reader thread:  BGZF frames ─▶ inflate (pool) ─▶ frame records ─▶ RawBatch
//!                                                                      │ bounded channel
//! calling thread: window of RawBatches ─▶ decode (pool, in parallel) ──┤
//!                                                                      │ bounded channel
//! writer thread:  Arrow batches ─▶ Parquet parts (fsync, rename)  ◀────┘
//! ```
//!
//! [`convert`] is the only function that knows this order. Memory is bounded by a fixed set of
//! [`RawBatch`] buffers that circulate between the reader and the decoder (the reader waits for
//! a free one) and by the bounded channel to the writer, never by the file size. Windows keep
//! their order through `par_iter().collect()`, so rows come out in record order with no reorder
//! buffer.

pub mod bgzf;
pub mod columns;
pub mod decode;
pub mod encode;
pub mod header;
pub mod profile;
pub mod sam_text;
pub mod schema;
pub mod source;
pub mod write;

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arrow_array::RecordBatch;
use crossbeam_channel::{bounded, Receiver, Sender};
use noodles_bgzf::VirtualPosition;
use parquet::file::metadata::KeyValue;
use rayon::prelude::*;
use rayon::ThreadPool;

use self::bgzf::{BgzfError, BgzfStream, BlockReader};
use self::decode::{DecodeError, Decoder};
use self::header::{HeaderError, HeaderLimits};
use self::profile::{BatchPlan, Profile, ProfileOptions};
use self::schema::{OutputSchema, SCHEMA_VERSION};
use self::source::{BatchLimits, RecordSource, SourceError};
use self::write::{ParquetSink, PartInfo, WriteError, WriteOptions};
use crate::dataset::{self, Counts, DatasetError, Manifest, SourceInfo, Staging};

/// Raw, decompressed records in one buffer (SAMv1 §4.2 layout, without `block_size`).
#[derive(Clone, Debug, Default)]
pub struct RawBatch {
    /// Position of this batch in the file's sequence of batches.
    pub seq: u64,
    /// Index (0-based) of the first record in the file.
    pub first_record: u64,
    /// Virtual position of the first record.
    pub start: VirtualPosition,
    pub data: Vec<u8>,
    /// Record `i` is `data[offsets[i]..offsets[i + 1]]`; starts with 0.
    pub offsets: Vec<u32>,
}

impl RawBatch {
    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.data.clear();
        self.offsets.clear();
        self.offsets.push(0);
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The records' bytes, in order.
    pub fn records(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.offsets
            .windows(2)
            .map(|w| &self.data[w[0] as usize..w[1] as usize])
    }
}

/// Everything a conversion needs to know, resolved from config and flags.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub schema: OutputSchema,
    pub threads: usize,
    pub zstd_level: i32,
    pub part_records: u64,
    pub batch_memory_mb: usize,
    /// Fixed records per batch; `None` lets the profile choose from `batch_memory_mb`.
    pub batch_records: Option<usize>,
    pub max_record_bytes: usize,
    pub max_header_bytes: usize,
    pub row_group_rows: usize,
    pub row_group_bytes: usize,
    pub allow_missing_eof: bool,
}

impl ConvertOptions {
    fn profile_options(&self) -> ProfileOptions {
        ProfileOptions {
            header_limits: self.header_limits(),
            max_record_bytes: self.max_record_bytes,
            batch_memory_mb: self.batch_memory_mb,
            batch_records: self.batch_records,
            threads: self.threads,
        }
    }

    fn header_limits(&self) -> HeaderLimits {
        HeaderLimits {
            max_header_bytes: self.max_header_bytes,
        }
    }

    fn write_options(&self) -> WriteOptions {
        WriteOptions {
            zstd_level: self.zstd_level,
            part_records: self.part_records,
            row_group_rows: self.row_group_rows,
            row_group_bytes: self.row_group_bytes,
        }
    }
}

/// Where in the pipeline a conversion failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Open,
    Read,
    Inflate,
    Header,
    Frame,
    Decode,
    Write,
    Publish,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Open => "open",
            Self::Read => "read",
            Self::Inflate => "inflate",
            Self::Header => "header",
            Self::Frame => "frame",
            Self::Decode => "decode",
            Self::Write => "write",
            Self::Publish => "publish",
        })
    }
}

/// The cause of a failed conversion.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Bgzf(#[from] BgzfError),
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("cannot start the worker pool")]
    ThreadPool(#[from] rayon::ThreadPoolBuildError),
    #[error("a pipeline thread panicked")]
    Panicked,
    #[error("cancelled")]
    Cancelled,
}

/// A conversion failed: which file, in which stage, and why (with offsets in the source).
#[derive(Debug, thiserror::Error)]
#[error("{}: {stage} failed", path.display())]
pub struct ConvertError {
    pub path: PathBuf,
    pub stage: Stage,
    #[source]
    pub source: StageError,
}

impl ConvertError {
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
            _ => None,
        }
    }

    /// Whether the conversion was stopped on purpose rather than failing.
    pub fn is_cancelled(&self) -> bool {
        matches!(self.source, StageError::Cancelled)
    }
}

/// Progress of a running conversion.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    pub records_read: u64,
    pub rows_written: u64,
    /// Compressed bytes of the input consumed so far.
    pub bytes_read: u64,
}

/// Hears about a conversion as it runs (progress bar, metrics) and may cancel it.
pub trait Observer: Sync {
    /// Called once per window of batches, never per record.
    fn progress(&self, _progress: Progress) {}

    /// Checked once per window; `true` stops the conversion with [`StageError::Cancelled`].
    fn cancelled(&self) -> bool {
        false
    }
}

/// What a finished conversion produced.
#[derive(Clone, Debug)]
pub struct ConvertSummary {
    pub output: PathBuf,
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
        convert_on(&self.pool, input, output, options, observer)
    }
}

fn convert_on(
    pool: &Arc<ThreadPool>,
    input: &Path,
    output: &Path,
    options: &ConvertOptions,
    observer: &dyn Observer,
) -> Result<ConvertSummary, ConvertError> {
    let started = SystemTime::now();
    let clock = Instant::now();
    let fail = |stage, source: StageError| ConvertError::new(input, stage, source);

    let source_info = SourceInfo::of(input).map_err(|e| fail(Stage::Open, e.into()))?;
    check_complete(input, options.allow_missing_eof)?;

    let (profile, header) = profile::profile(input, &options.profile_options(), pool)?;
    let staging = Staging::create(output).map_err(|e| fail(Stage::Publish, e.into()))?;

    let metadata = part_metadata(&header.text, &source_info).map_err(|e| fail(Stage::Write, e))?;
    let schema = options.schema.arrow().clone();
    let sink = ParquetSink::new(
        staging.path(),
        schema,
        &options.write_options(),
        metadata,
        Arc::clone(pool),
    )
    .map_err(|e| fail(Stage::Write, e.into()))?;

    let decoder = Decoder::new(options.schema.clone(), &header.reference_names);
    let run = Run {
        input,
        options,
        plan: profile.batch,
        pool,
        observer,
    };
    let (sink, counts) = run.stages(&decoder, sink)?;
    let parts = sink.finish().map_err(|e| fail(Stage::Write, e.into()))?;

    let seconds = clock.elapsed().as_secs_f64();
    let manifest = manifest(
        source_info,
        counts,
        parts,
        options,
        profile,
        started,
        seconds,
    );
    let output = staging
        .publish(&manifest)
        .map_err(|e| fail(Stage::Publish, e.into()))?;
    Ok(ConvertSummary { output, manifest })
}

/// Reads just the SAM header text of a BAM file (e.g. for `{sample}` in output templates).
///
/// # Errors
///
/// Returns a [`ConvertError`] when the header cannot be read.
pub fn read_header_text(input: &Path, options: &ConvertOptions) -> Result<String, ConvertError> {
    let file = File::open(input).map_err(|e| ConvertError::new(input, Stage::Open, e.into()))?;
    let reader = BlockReader::new(BufReader::new(file), 0, single_thread_pool(input)?);
    let mut stream = BgzfStream::new(reader);
    let header = header::read_header(&mut stream, options.header_limits())
        .map_err(|e| ConvertError::from_header(input, e))?;
    Ok(header.text)
}

/// Refuses a file that does not end with the BGZF EOF block, unless allowed.
fn check_complete(input: &Path, allow_missing_eof: bool) -> Result<(), ConvertError> {
    let fail = |stage, source: StageError| ConvertError::new(input, stage, source);
    let file = File::open(input).map_err(|e| fail(Stage::Open, e.into()))?;
    if file
        .metadata()
        .map_err(|e| fail(Stage::Open, e.into()))?
        .len()
        == 0
    {
        return Err(fail(Stage::Read, BgzfError::Empty.into()));
    }
    if !allow_missing_eof && !bgzf::has_eof_block(&file).map_err(|e| fail(Stage::Read, e.into()))? {
        // A file that is not BGZF at all deserves that message rather than "truncated".
        let mut stream = BgzfStream::new(BlockReader::new(
            BufReader::new(file),
            0,
            single_thread_pool(input)?,
        ));
        stream
            .at_end()
            .map_err(|e| ConvertError::from_bgzf(input, e))?;
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
fn part_metadata(header_text: &str, source: &SourceInfo) -> Result<Vec<KeyValue>, StageError> {
    let source = serde_json::to_string(source).map_err(|e| StageError::Io(e.into()))?;
    Ok(vec![
        KeyValue::new("bamflow:sam_header".to_owned(), header_text.to_owned()),
        KeyValue::new(
            "bamflow:schema_version".to_owned(),
            SCHEMA_VERSION.to_string(),
        ),
        KeyValue::new("bamflow:source".to_owned(), source),
    ])
}

fn manifest(
    source: SourceInfo,
    counts: Counts,
    parts: Vec<PartInfo>,
    options: &ConvertOptions,
    profile: Profile,
    started: SystemTime,
    seconds: f64,
) -> Manifest {
    let bytes_in = source.size;
    let bytes_out = parts.iter().map(|p| p.bytes).sum();
    Manifest {
        bamflow_version: env!("CARGO_PKG_VERSION"),
        schema_version: SCHEMA_VERSION,
        records_per_second: counts.read as f64 / seconds.max(1e-9),
        source,
        counts,
        parts,
        columns: options.schema.column_names(),
        tags: options
            .schema
            .promoted
            .iter()
            .map(ToString::to_string)
            .collect(),
        filters: Vec::new(),
        profile,
        started: dataset::timestamp(started),
        finished: dataset::timestamp(SystemTime::now()),
        seconds,
        bytes_in,
        bytes_out,
    }
}

/// Decoded batches on their way to the writer, with the input records each covers.
type DecodedWindow = Vec<(RecordBatch, u64)>;

/// One conversion's running pipeline.
struct Run<'a> {
    input: &'a Path,
    options: &'a ConvertOptions,
    plan: BatchPlan,
    pool: &'a Arc<ThreadPool>,
    observer: &'a dyn Observer,
}

impl Run<'_> {
    /// Runs reader, decoder and writer until the input is consumed or a stage fails.
    fn stages(
        &self,
        decoder: &Decoder,
        sink: ParquetSink,
    ) -> Result<(ParquetSink, Counts), ConvertError> {
        let window = self.plan.window;
        let limits = self.plan.limits(self.options.part_records);
        let (raw_tx, raw_rx) = bounded(window);
        let (decoded_tx, decoded_rx) = bounded::<DecodedWindow>(1);
        // The only RawBatch buffers there will ever be: the reader waits for one to come back.
        let (free_tx, free_rx) = bounded(2 * window);
        for _ in 0..2 * window {
            let _ = free_tx.send(RawBatch::default());
        }
        let bytes_read = AtomicU64::new(0);

        std::thread::scope(|scope| {
            let reader = std::thread::Builder::new()
                .name("bamflow-reader".into())
                .spawn_scoped(scope, || self.read(limits, free_rx, raw_tx, &bytes_read));
            let writer = std::thread::Builder::new()
                .name("bamflow-writer".into())
                .spawn_scoped(scope, || self.write(sink, decoded_rx));
            let (reader, writer) = match (reader, writer) {
                (Ok(r), Ok(w)) => (r, w),
                (Err(e), _) | (_, Err(e)) => {
                    return Err(ConvertError::new(self.input, Stage::Open, e.into()))
                }
            };

            let decoded = self.decode(decoder, raw_rx, free_tx, decoded_tx, &bytes_read);
            let panicked = || ConvertError::new(self.input, Stage::Decode, StageError::Panicked);
            reader.join().map_err(|_| panicked())?;
            let written = writer.join().map_err(|_| panicked())?;
            // A decode (or forwarded read) error explains a writer that stopped early.
            let counts = decoded?;
            let (sink, rows) = written?;
            Ok((
                sink,
                Counts {
                    read: counts,
                    written: rows,
                    ..Counts::default()
                },
            ))
        })
    }

    /// Reader thread: frames batches into free buffers and sends them on, in order.
    fn read(
        &self,
        limits: BatchLimits,
        free: Receiver<RawBatch>,
        out: Sender<Result<RawBatch, ConvertError>>,
        bytes_read: &AtomicU64,
    ) {
        let result = (|| {
            let file = File::open(self.input)
                .map_err(|e| ConvertError::new(self.input, Stage::Open, e.into()))?;
            let reader = BlockReader::new(
                BufReader::with_capacity(1 << 20, file),
                0,
                Arc::clone(self.pool),
            );
            let mut stream = BgzfStream::new(reader);
            header::read_header(&mut stream, self.options.header_limits())
                .map_err(|e| ConvertError::from_header(self.input, e))?;
            let mut source = RecordSource::new(stream, 0, self.options.max_record_bytes);

            // A closed channel means the decoder stopped; its error is the one reported.
            while let Ok(mut batch) = free.recv() {
                let more = source
                    .read_batch(&mut batch, limits)
                    .map_err(|e| ConvertError::from_source(self.input, e))?;
                if !more {
                    break;
                }
                let position = source.virtual_position().map_or(0, |p| p.compressed());
                bytes_read.store(position, Ordering::Relaxed);
                if out.send(Ok(batch)).is_err() {
                    break;
                }
            }
            Ok(())
        })();
        if let Err(error) = result {
            let _ = out.send(Err(error));
        }
    }

    /// Calling thread: decodes windows of batches in parallel; returns the records read.
    fn decode(
        &self,
        decoder: &Decoder,
        raw: Receiver<Result<RawBatch, ConvertError>>,
        free: Sender<RawBatch>,
        out: Sender<DecodedWindow>,
        bytes_read: &AtomicU64,
    ) -> Result<u64, ConvertError> {
        let mut progress = Progress::default();
        let mut window = Vec::with_capacity(self.plan.window);
        loop {
            if self.observer.cancelled() {
                return Err(ConvertError::new(
                    self.input,
                    Stage::Decode,
                    StageError::Cancelled,
                ));
            }
            window.clear();
            while window.len() < self.plan.window {
                match raw.recv() {
                    Ok(batch) => window.push(batch?),
                    Err(_) => break,
                }
            }
            if window.is_empty() {
                return Ok(progress.records_read);
            }

            let decoded: Vec<_> = self
                .pool
                .install(|| window.par_iter().map(|b| decoder.decode(b)).collect());
            let mut batches = Vec::with_capacity(decoded.len());
            for (raw_batch, result) in window.drain(..).zip(decoded) {
                let rows =
                    result.map_err(|e| ConvertError::new(self.input, Stage::Decode, e.into()))?;
                progress.records_read += raw_batch.len() as u64;
                progress.rows_written += rows.num_rows() as u64;
                batches.push((rows, raw_batch.len() as u64));
                // There is room for every buffer, so this never blocks.
                let _ = free.send(raw_batch);
            }
            if out.send(batches).is_err() {
                // The writer failed; its error is reported by `stages`.
                return Ok(progress.records_read);
            }
            progress.bytes_read = bytes_read.load(Ordering::Relaxed);
            self.observer.progress(progress);
        }
    }

    /// Writer thread: writes windows in order; returns the sink (not yet finished) and rows.
    fn write(
        &self,
        mut sink: ParquetSink,
        windows: Receiver<DecodedWindow>,
    ) -> Result<(ParquetSink, u64), ConvertError> {
        let mut rows = 0;
        for window in windows {
            sink.accept(&window)
                .map_err(|e| ConvertError::new(self.input, Stage::Write, e.into()))?;
            rows += window
                .iter()
                .map(|(batch, _)| batch.num_rows() as u64)
                .sum::<u64>();
        }
        Ok((sink, rows))
    }
}
