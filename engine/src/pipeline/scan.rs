//! BAM → Arrow record batches: a conversion's reading half without the dataset, for programs
//! that consume the rows themselves (Python, a Spark data source, DataFusion).
//!
//! The batches have the dataset's schema — the same columns, projection, promoted tags,
//! filters and regions as [`Engine::convert`](super::Engine::convert) with the same options —
//! and come in record order. Memory is bounded as in a conversion: a fixed set of raw buffers
//! circulates, and at most one window of decoded batches waits for the consumer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use arrow_array::{RecordBatch, RecordBatchReader};
use arrow_schema::{ArrowError, SchemaRef};
use crossbeam_channel::{bounded, Receiver};
use rayon::ThreadPool;

use super::busy::BusyTimes;
use super::decode::Decoder;
use super::read::{Position, Reading};
use super::split::{self, Split};
use super::write::Chunk;
use super::{prepare, ConvertError, ConvertOptions, Prepared, Purpose, Stage, StageError};

/// The record batches of one BAM file, in record order; see [`Engine::scan`](super::Engine::scan).
///
/// A reading thread runs ahead of the consumer by at most one window of batches. Dropping the
/// iterator early stops it (within one batch) and waits for it.
pub struct RecordBatches {
    input: PathBuf,
    schema: SchemaRef,
    chunks: Receiver<Chunk>,
    /// The reading thread; its result once the chunks end.
    reader: Option<JoinHandle<Result<(), ConvertError>>>,
}

impl RecordBatches {
    /// Opens `input` and starts reading it on `pool`: the header, profile, filters and index
    /// are read here, so a file that cannot be read fails now, not at the first batch.
    pub(super) fn open(
        pool: &Arc<ThreadPool>,
        input: &Path,
        options: &ConvertOptions,
        split: Option<&Split>,
    ) -> Result<Self, ConvertError> {
        let fail = |stage, source: StageError| ConvertError::new(input, stage, source);
        let Prepared {
            profile,
            header,
            filters,
            spans,
        } = prepare(pool, input, options, &(), Purpose::Scan)?;
        let (spans, from) = match split {
            Some(split) => {
                let (spans, from) = split::reading(split);
                (Some(spans), from)
            }
            None => (spans, Position::START),
        };
        let decoder = Decoder::new(options.schema.clone(), &header.reference_names);
        let records_start = header.records_start;
        let plan = profile.batch;
        let (chunks_tx, chunks) = bounded(plan.window);
        let schema = Arc::clone(options.schema.arrow());

        let (pool, path, options) = (Arc::clone(pool), input.to_owned(), options.clone());
        let reader = std::thread::Builder::new()
            .name("bamflow-scan".into())
            .spawn(move || {
                let busy = Arc::new(BusyTimes::default());
                let reading = Reading {
                    input: &path,
                    options: &options,
                    plan,
                    pool: &pool,
                    observer: &(),
                    decoder: &decoder,
                    filters: &filters,
                    spans: spans.as_deref(),
                    busy: &busy,
                    staging: None,
                    records_start,
                    full_hash: None,
                };
                reading.stream(from, chunks_tx).map(|_| ())
            })
            .map_err(|e| fail(Stage::Open, e.into()))?;
        Ok(Self {
            input: input.to_owned(),
            schema,
            chunks,
            reader: Some(reader),
        })
    }

    /// The schema of every batch: the dataset's.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// The batches as an Arrow [`RecordBatchReader`] (errors become
    /// [`ArrowError::ExternalError`] holding the [`ConvertError`]), for the Arrow C stream
    /// interface and the libraries built on it.
    pub fn into_arrow(self) -> impl RecordBatchReader + Send {
        ArrowReader(self)
    }

    /// Waits for the reading thread and takes its result.
    fn finish(&mut self) -> Option<ConvertError> {
        let reader = self.reader.take()?;
        match reader.join() {
            Ok(result) => result.err(),
            Err(_) => Some(ConvertError::new(
                &self.input,
                Stage::Decode,
                StageError::Panicked,
            )),
        }
    }
}

impl Iterator for RecordBatches {
    type Item = Result<RecordBatch, ConvertError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.chunks.recv() {
                // Every record of the batch was filtered out.
                Ok(chunk) if chunk.rows.num_rows() == 0 => continue,
                Ok(chunk) => return Some(Ok(chunk.rows)),
                Err(_) => return self.finish().map(Err),
            }
        }
    }
}

impl Drop for RecordBatches {
    fn drop(&mut self) {
        // Closing the channel stops the reading thread at its next batch.
        drop(std::mem::replace(
            &mut self.chunks,
            crossbeam_channel::never(),
        ));
        let _ = self.finish();
    }
}

/// [`RecordBatches`] with Arrow's error type.
struct ArrowReader(RecordBatches);

impl Iterator for ArrowReader {
    type Item = Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = self.0.next()?;
        Some(next.map_err(|e| ArrowError::ExternalError(Box::new(e))))
    }
}

impl RecordBatchReader for ArrowReader {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }
}
