//! The reading half of a conversion: the input's records, from the start or a checkpoint, or
//! only an index's spans, framed into raw batches by a reader thread, filtered and decoded on
//! the pool, and handed on as Arrow chunks in record order. The dataset writer
//! ([`super::Build`]) and the streaming reader ([`super::scan`]) both stand on it.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arrow_array::RecordBatch;
use crossbeam_channel::{bounded, Receiver, Sender};
use noodles_bgzf::VirtualPosition;
use rayon::ThreadPool;

use super::bgzf::{BgzfError, BgzfStream, BlockReader};
use super::busy::{BusyStage, BusyTimes, SerialThread};
use super::decode::Decoder;
use super::filter::{FilterChain, FilterError};
use super::header;
use super::in_place::{InPlaceSource, RunPlan};
use super::profile::BatchPlan;
use super::region::Span;
use super::runs::RunReader;
use super::source::BatchLimits;
use super::write::Chunk;
use super::{ConvertError, ConvertOptions, Observer, Progress, RawBatch, Stage, StageError};
use crate::checkpoint::{self, CheckpointError};
use crate::hash::{FullHash, HashedFile};
use crate::input::Input;

/// Everything reading needs: the input, how to batch, filter and decode it, and where to.
pub(super) struct Reading<'a> {
    pub input: &'a Path,
    pub options: &'a ConvertOptions,
    pub plan: BatchPlan,
    pub pool: &'a Arc<ThreadPool>,
    pub observer: &'a dyn Observer,
    pub decoder: &'a Decoder,
    pub filters: &'a FilterChain,
    /// Index spans to read instead of the whole file (region queries).
    pub spans: Option<&'a [Span]>,
    pub busy: &'a Arc<BusyTimes>,
    /// The staging folder whose checkpoint a resume position came from, for its errors.
    pub staging: Option<&'a Path>,
    /// Where the first record starts (the header's end).
    pub records_start: VirtualPosition,
    /// Receives the SHA-256 of the whole input, made as it is read, when a stream reads it
    /// all (no regions).
    pub full_hash: Option<&'a Mutex<Option<String>>>,
}

impl Reading<'_> {
    /// Reads from `from` until the input is consumed, `out` is closed or a stage fails: a
    /// reader thread frames batches, this thread has them decoded on the pool and sends the
    /// chunks on in record order. Returns the progress made.
    pub fn stream(&self, from: Position, out: Sender<Chunk>) -> Result<Progress, ConvertError> {
        let window = self.plan.window;
        let mut limits = self.plan.limits(self.options.part_records);
        if self.options.batch_records.is_none() {
            // A batch is a run of inflated blocks, closed by its bytes. The plan's record count
            // comes from a sample's mean size, and closing on it too would cut most runs short
            // a few records before their end, copying the rest into a batch of its own.
            limits.max_records = usize::MAX;
        }
        let (raw_tx, raw_rx) = bounded(window);
        // The only RawBatch buffers there will ever be: the reader waits for one to come back.
        let (free_tx, free_rx) = bounded(2 * window);
        for _ in 0..2 * window {
            let _ = free_tx.send(RawBatch::default());
        }
        let bytes_read = AtomicU64::new(0);
        std::thread::scope(|scope| {
            let reader = std::thread::Builder::new()
                .name("bamflow-reader".into())
                .spawn_scoped(scope, || {
                    self.busy.on_thread(SerialThread::Reader, || {
                        self.read(from, limits, free_rx, raw_tx, &bytes_read)
                    })
                })
                .map_err(|e| ConvertError::new(self.input, Stage::Open, e.into()))?;
            let decoded = self.busy.on_thread(SerialThread::Dispatch, || {
                self.decode(raw_rx, free_tx, out, &bytes_read)
            });
            reader
                .join()
                .map_err(|_| ConvertError::new(self.input, Stage::Decode, StageError::Panicked))?;
            decoded
        })
    }

    /// Opens the input positioned at `from`: after the header at the start, or at a checkpoint's
    /// virtual offset.
    fn open(
        &self,
        from: Position,
        hash: Option<&Arc<FullHash>>,
    ) -> Result<InPlaceSource<HashedFile>, ConvertError> {
        if from.record == 0 {
            // Just after the header, as the profile found it; the header is not parsed again.
            if let Some(source) = self.open_at(self.records_start, 0, hash)? {
                return Ok(source);
            }
            tracing::debug!(path = %self.input.display(), "Reading the header again to find the first record.");
            let blocks = BlockReader::new(self.file_at(0, None)?, 0, Arc::clone(self.pool));
            let mut stream = BgzfStream::new(blocks);
            header::read_header(&mut stream, self.options.header_limits())
                .map_err(|e| ConvertError::from_header(self.input, e))?;
            let start = stream
                .virtual_position()
                .map_err(|e| ConvertError::from_bgzf(self.input, e))?;
            return self.open_at(start, 0, hash)?.ok_or_else(|| {
                let error = BgzfError::Corrupt {
                    offset: start.compressed(),
                    reason: "the first record is not where the header ends",
                };
                ConvertError::from_bgzf(self.input, error)
            });
        }
        let position = VirtualPosition::from(from.virtual_offset);
        self.open_at(position, from.record, hash)?.ok_or_else(|| {
            let corrupt = CheckpointError::Corrupt {
                path: self.staging.map_or_else(
                    || self.input.to_owned(),
                    |staging| staging.join(checkpoint::FILE_NAME),
                ),
                reason: format!(
                    "virtual offset {} of record {} is not in the input",
                    from.virtual_offset, from.record
                ),
            };
            ConvertError::new(self.input, Stage::Checkpoint, corrupt.into())
        })
    }

    /// Opens the input at a record's virtual position; `None` when the file has no such
    /// position.
    fn open_at(
        &self,
        position: VirtualPosition,
        record: u64,
        hash: Option<&Arc<FullHash>>,
    ) -> Result<Option<InPlaceSource<HashedFile>>, ConvertError> {
        let start = position.compressed();
        let runs = RunReader::new(self.file_at(start, hash)?, start, Arc::clone(self.pool))
            .with_busy(Arc::clone(self.busy))
            .walking(self.options.max_record_bytes);
        let plan = RunPlan {
            bytes: self.plan.max_bytes,
            depth: self.plan.window,
            max_record_bytes: self.options.max_record_bytes,
        };
        InPlaceSource::open(runs, position, record, plan)
            .map_err(|e| ConvertError::from_source(self.input, e))
    }

    /// The input from compressed offset `start` (a block boundary).
    ///
    /// Buffered reads, not a memory map: a `memmap2` reader measured the same (3 alternating
    /// runs each on the shared-bench short and long inputs, 2 cores: reader busy 0.10-0.19 s
    /// either way, walls within the runs' noise), and a map turns a file truncated under the
    /// daemon into SIGBUS instead of an error naming the file and offset.
    ///
    /// With `hash`, every byte read also goes into the input's full SHA-256, which has read
    /// the file up to `start`.
    fn file_at(
        &self,
        start: u64,
        hash: Option<&Arc<FullHash>>,
    ) -> Result<HashedFile, ConvertError> {
        let fail = |stage, source: StageError| ConvertError::new(self.input, stage, source);
        let file = Input::open(self.input)
            .map_err(|e| fail(Stage::Open, e.into()))?
            .reader_from(start, self.read_ahead())
            .map_err(|e| fail(Stage::Read, e.into()))?;
        Ok(HashedFile::new(
            file,
            start,
            hash.cloned(),
            Some(Arc::clone(self.busy)),
        ))
    }

    /// How far a remote input is read ahead of the reader: a quarter of the batch memory, so
    /// that requests in flight stay within what the conversion may hold (a local file's page
    /// cache reads ahead by itself).
    fn read_ahead(&self) -> usize {
        (self.options.batch_memory_mb << 20) / 4
    }

    /// The input's full SHA-256, primed with the bytes before where reading starts (the
    /// header; on a resume, what earlier runs read), when it is wanted.
    fn start_full_hash(&self, from: Position) -> Option<Arc<FullHash>> {
        self.full_hash?;
        let start = if from.record == 0 {
            self.records_start.compressed()
        } else {
            VirtualPosition::from(from.virtual_offset).compressed()
        };
        FullHash::starting_at(self.input, start)
            .inspect_err(|error| {
                tracing::warn!(path = %self.input.display(), %error, "Cannot hash the input.");
            })
            .ok()
    }

    /// Reader thread: frames batches into free buffers and sends them on, in order: the whole
    /// file, or the index spans of the regions.
    fn read(
        &self,
        from: Position,
        limits: BatchLimits,
        free: Receiver<RawBatch>,
        out: Sender<Result<RawBatch, ConvertError>>,
        bytes_read: &AtomicU64,
    ) {
        let result = (|| {
            let mut feed = Feed {
                free: &free,
                out: &out,
                spare: None,
                bytes_read,
                base: if from.record == 0 {
                    0
                } else {
                    VirtualPosition::from(from.virtual_offset).compressed()
                },
            };
            let Some(spans) = self.spans else {
                let hash = self.start_full_hash(from);
                let mut source = self.open(from, hash.as_ref())?;
                let whole = feed.drain(&mut source, limits, self.input)?;
                // Waits for the hashing thread to hash every block read.
                drop(source);
                if let (true, Some(hash), Some(slot)) = (whole, hash, self.full_hash) {
                    // Only the EOF block's tail, at most, is left to read.
                    let digest = hash.finish(self.input).unwrap_or_else(|error| {
                        tracing::warn!(path = %self.input.display(), %error, "Cannot finish the input's SHA-256.");
                        None
                    });
                    *slot.lock().unwrap_or_else(PoisonError::into_inner) = digest;
                }
                return Ok(());
            };
            let mut record = from.record;
            // Resuming: spans wholly before the checkpoint are done; the one holding it
            // continues from it.
            let resume_at = (from.record > 0).then_some(from.virtual_offset);
            for span in spans {
                let (start, end) = (u64::from(span.start), u64::from(span.end));
                let start = match resume_at {
                    Some(at) if end <= at => continue,
                    Some(at) if start < at => at,
                    _ => start,
                };
                let mut source = self
                    .open_at(VirtualPosition::from(start), record, None)?
                    .ok_or_else(|| {
                        let error = FilterError::Region {
                            region: format!("index span {start}-{end}"),
                            reason:
                                "the index points outside the file; rebuild it with samtools index"
                                    .to_owned(),
                        };
                        ConvertError::new(self.input, Stage::Filter, error.into())
                    })?
                    .ending_at(span.end);
                if !feed.drain(&mut source, limits, self.input)? {
                    return Ok(());
                }
                record = source.next_record();
            }
            Ok(())
        })();
        if let Err(error) = result {
            let _ = out.send(Err(error));
        }
    }

    /// Calling thread: decodes batches on the pool as they arrive, up to one per worker at a
    /// time, and hands them to the writer in record order; returns the progress made.
    ///
    /// Each batch starts decoding as soon as the reader has framed it. Gathering a window of
    /// batches first and decoding it with `par_iter` made every window wait for its last batch
    /// to be framed and for its slowest one to decode, a barrier that grows with the cores.
    fn decode(
        &self,
        raw: Receiver<Result<RawBatch, ConvertError>>,
        free: Sender<RawBatch>,
        out: Sender<Chunk>,
        bytes_read: &AtomicU64,
    ) -> Result<Progress, ConvertError> {
        let mut progress = Progress::default();
        self.pool.in_place_scope(|scope| {
            let mut in_flight: VecDeque<Receiver<Decoded>> =
                VecDeque::with_capacity(self.plan.window);
            let mut reading = true;
            loop {
                if self.observer.cancelled() {
                    return Err(ConvertError::new(
                        self.input,
                        Stage::Decode,
                        StageError::Cancelled,
                    ));
                }
                let room = reading && in_flight.len() < self.plan.window;
                let next = match (in_flight.front(), room) {
                    (None, false) => return Ok(progress),
                    (None, true) => Next::Raw(raw.recv()),
                    (Some(oldest), false) => Next::Decoded(oldest.recv()),
                    // Whichever comes first: a batch to start or the oldest one finished.
                    (Some(oldest), true) => crossbeam_channel::select! {
                        recv(raw) -> batch => Next::Raw(batch),
                        recv(oldest) -> decoded => Next::Decoded(decoded),
                    },
                };
                match next {
                    Next::Raw(Ok(batch)) => {
                        let (done, decoded) = bounded(1);
                        let mut batch = batch?;
                        scope.spawn(move |_| {
                            let result = self.decode_batch(&mut batch);
                            let _ = done.send(Decoded { batch, result });
                        });
                        in_flight.push_back(decoded);
                    }
                    Next::Raw(Err(_)) => reading = false,
                    Next::Decoded(decoded) => {
                        in_flight.pop_front();
                        // The job ends by sending; only a panic gets here, and the scope
                        // re-raises it.
                        let Ok(Decoded { batch, result }) = decoded else {
                            return Err(ConvertError::new(
                                self.input,
                                Stage::Decode,
                                StageError::Panicked,
                            ));
                        };
                        let Rows {
                            rows,
                            records,
                            dropped,
                        } = result?;
                        progress.records_read += records;
                        progress.rows_written += rows.num_rows() as u64;
                        let chunk = Chunk {
                            rows,
                            records,
                            end: u64::from(batch.end),
                            filtered: dropped,
                        };
                        // There is room for every buffer, so this never blocks.
                        let _ = free.send(batch);
                        for (name, &n) in self.filters.names().zip(&chunk.filtered) {
                            self.observer.filtered(name, n);
                        }
                        if out.send(chunk).is_err() {
                            // The writer failed; its error is reported by `stages`.
                            return Ok(progress);
                        }
                        progress.bytes_read = bytes_read.load(Ordering::Relaxed);
                        progress.busy = self.busy.snapshot();
                        self.observer.progress(progress);
                    }
                }
            }
        })
    }

    /// Filters one batch in place and decodes what is left.
    fn decode_batch(&self, batch: &mut RawBatch) -> Result<Rows, ConvertError> {
        let records = batch.len() as u64;
        let dropped = self
            .busy
            .time(BusyStage::Filter, || filter_batch(self.filters, batch))
            .map_err(|e| ConvertError::new(self.input, Stage::Filter, e.into()))?;
        let rows = self
            .busy
            .time(BusyStage::Decode, || self.decoder.decode(batch))
            .map_err(|e| ConvertError::new(self.input, Stage::Decode, e.into()))?;
        Ok(Rows {
            rows,
            records,
            dropped,
        })
    }
}

/// A batch back from the pool (filtered in place), with its rows, or the error.
struct Decoded {
    batch: RawBatch,
    result: Result<Rows, ConvertError>,
}

/// One batch's rows, the records they came from, and what each filter dropped.
struct Rows {
    rows: RecordBatch,
    records: u64,
    dropped: Vec<u64>,
}

/// What the decoding thread waited for.
enum Next {
    Raw(Result<Result<RawBatch, ConvertError>, crossbeam_channel::RecvError>),
    Decoded(Result<Decoded, crossbeam_channel::RecvError>),
}

/// Filters a batch in place; returns what each filter dropped.
fn filter_batch(filters: &FilterChain, batch: &mut RawBatch) -> Result<Vec<u64>, FilterError> {
    if filters.is_empty() {
        return Ok(Vec::new());
    }
    let mut keep = Vec::with_capacity(batch.len());
    filters.apply(batch, &mut keep)
}

/// The reader thread's end of the buffer loop: takes free buffers, fills them, sends them on.
struct Feed<'a> {
    free: &'a Receiver<RawBatch>,
    out: &'a Sender<Result<RawBatch, ConvertError>>,
    /// A free buffer a finished span did not fill, kept for the next one.
    spare: Option<RawBatch>,
    bytes_read: &'a AtomicU64,
    /// Compressed offset reading started from, so progress counts this run's bytes only.
    base: u64,
}

impl Feed<'_> {
    /// Sends batches from `source` until it ends; `Ok(false)` when the decoder stopped.
    fn drain(
        &mut self,
        source: &mut InPlaceSource<HashedFile>,
        limits: BatchLimits,
        input: &Path,
    ) -> Result<bool, ConvertError> {
        loop {
            let mut batch = match self.spare.take() {
                Some(batch) => batch,
                // A closed channel means the decoder stopped; its error is the one reported.
                None => match self.free.recv() {
                    Ok(batch) => batch,
                    Err(_) => return Ok(false),
                },
            };
            let more = source
                .read_batch(&mut batch, limits)
                .map_err(|e| ConvertError::from_source(input, e))?;
            if !more {
                self.spare = Some(batch);
                return Ok(true);
            }
            self.bytes_read.store(
                batch.end.compressed().saturating_sub(self.base),
                Ordering::Relaxed,
            );
            if self.out.send(Ok(batch)).is_err() {
                return Ok(false);
            }
        }
    }
}

/// Where reading starts: record number and virtual offset (record 0: after the header).
#[derive(Clone, Copy, Debug)]
pub(super) struct Position {
    pub record: u64,
    pub virtual_offset: u64,
}

impl Position {
    /// The first record, after the header.
    pub const START: Self = Self {
        record: 0,
        virtual_offset: 0,
    };
}
