//! Column encoders of one row group, each an ordered queue of work on the shared pool.
//!
//! The writer thread only queues each cell's arrays; turning an array into Parquet's leaf
//! (definition levels for every nullable value) happens here, in parallel, as the first step of
//! encoding it. Done on the writer thread, it was a fifth of that thread's CPU, the serial bound
//! of a conversion on many cores.
//!
//! Columns cost very different amounts: zstd on QUAL takes about half the CPU of a whole
//! conversion, `flag` almost nothing. Encoding each batch with `par_iter` over columns would make
//! every batch wait for QUAL while the other workers idle. Here each column instead drains its
//! own queue of leaves, one task at a time (so its pages stay in order), concurrently with the
//! other columns, later batches and decoding. A column that falls `MAX_QUEUED` batches behind
//! makes [`ColumnEncoders::submit`] wait, which bounds the memory its queued leaves hold.
//!
//! Once the row group is sealed, each column closes (compressing its last page) as soon as its
//! own queue is empty, so the small columns are done while QUAL still encodes. Nothing here
//! waits inside a pool job: a worker waiting in a `par_iter` join steals other queued work and
//! holds whoever waits for the join hostage until that work returns.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use arrow_array::ArrayRef;
use arrow_schema::FieldRef;
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnChunk, ArrowColumnWriter};
use parquet::errors::ParquetError;
use rayon::ThreadPool;

use super::busy::{BusyStage, BusyTimes};

/// Batches a column may fall behind before the writer waits for it.
const MAX_QUEUED: usize = 4;

struct ColumnState {
    /// `None` while a worker is writing with it.
    writer: Option<ArrowColumnWriter>,
    /// The column's arrays of each submitted batch, written one by one (a cell each,
    /// [`super::cells`]).
    queue: VecDeque<Vec<ArrayRef>>,
    /// The closed column, once the row group is sealed and the queue drained.
    chunk: Option<ArrowColumnChunk>,
    running: bool,
}

struct State {
    columns: Vec<ColumnState>,
    /// No more leaves will come: columns close when their queues are empty.
    sealed: bool,
    error: Option<ParquetError>,
}

struct Shared {
    /// Each column's field (one leaf column each), in schema order.
    fields: Vec<FieldRef>,
    state: Mutex<State>,
    changed: Condvar,
    busy: Arc<BusyTimes>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A worker never panics while holding the lock (it writes outside it), so a poisoned
        // lock still holds consistent state.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed
            .wait(guard)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The column writers of the open row group, fed asynchronously.
pub struct ColumnEncoders {
    shared: Arc<Shared>,
    pool: Arc<ThreadPool>,
}

impl ColumnEncoders {
    /// Encoders for `fields`, each a column without nested leaves, with their `writers`.
    ///
    /// # Errors
    ///
    /// Returns an error when the writers are not one per field.
    pub fn new(
        fields: &[FieldRef],
        writers: Vec<ArrowColumnWriter>,
        pool: Arc<ThreadPool>,
        busy: Arc<BusyTimes>,
    ) -> Result<Self, ParquetError> {
        if fields.len() != writers.len() {
            return Err(ParquetError::General(format!(
                "{} column writers for {} fields: a field with nested leaves",
                writers.len(),
                fields.len()
            )));
        }
        let columns = writers
            .into_iter()
            .map(|writer| ColumnState {
                writer: Some(writer),
                queue: VecDeque::new(),
                chunk: None,
                running: false,
            })
            .collect();
        let state = Mutex::new(State {
            columns,
            sealed: false,
            error: None,
        });
        Ok(Self {
            shared: Arc::new(Shared {
                fields: fields.to_vec(),
                state,
                changed: Condvar::new(),
                busy,
            }),
            pool,
        })
    }

    /// Queues one batch for encoding: for each column, in schema order, its arrays (one per
    /// cell) to write in order.
    ///
    /// # Errors
    ///
    /// Returns the first encoding error of an earlier batch.
    pub fn submit(&self, arrays: Vec<Vec<ArrayRef>>) -> Result<(), ParquetError> {
        let mut state = self.shared.lock();
        while state.error.is_none() && state.columns.iter().any(|c| c.queue.len() >= MAX_QUEUED) {
            state = self.shared.wait(state);
        }
        if let Some(error) = state.error.take() {
            return Err(error);
        }
        for (index, cells) in arrays.into_iter().enumerate() {
            let Some(column) = state.columns.get_mut(index) else {
                break;
            };
            column.queue.push_back(cells);
            self.start(&mut state, index);
        }
        Ok(())
    }

    /// Ends the row group: each column closes once its queued leaves are written.
    pub fn seal(&self) {
        let mut state = self.shared.lock();
        state.sealed = true;
        for index in 0..state.columns.len() {
            self.start(&mut state, index);
        }
    }

    /// Starts a worker on a column that has work and none running.
    fn start(&self, state: &mut State, index: usize) {
        let Some(column) = state.columns.get_mut(index) else {
            return;
        };
        if !column.running && column.writer.is_some() {
            column.running = true;
            let shared = Arc::clone(&self.shared);
            self.pool.spawn(move || drain(&shared, index));
        }
    }

    /// Whether the row group is sealed and every column closed (so
    /// [`ColumnEncoders::finish`] will not wait).
    pub fn is_done(&self) -> bool {
        let state = self.shared.lock();
        state.sealed && state.columns.iter().all(|c| !c.running)
    }

    /// Seals the row group, waits until every column is closed and returns the closed
    /// columns, in schema order.
    ///
    /// # Errors
    ///
    /// Returns the first encoding error.
    pub fn finish(self) -> Result<Vec<ArrowColumnChunk>, ParquetError> {
        self.seal();
        let mut state = self.shared.lock();
        while state.columns.iter().any(|c| c.running) {
            state = self.shared.wait(state);
        }
        if let Some(error) = state.error.take() {
            return Err(error);
        }
        let chunks = state
            .columns
            .iter_mut()
            .filter_map(|c| c.chunk.take())
            .collect::<Vec<_>>();
        if chunks.len() != state.columns.len() {
            return Err(ParquetError::General("a column writer was lost".into()));
        }
        Ok(chunks)
    }
}

/// Worker: writes a column's queued leaves in order until its queue is empty, then closes the
/// column if the row group is sealed.
fn drain(shared: &Shared, index: usize) {
    let mut state = shared.lock();
    loop {
        let sealed = state.sealed;
        let column = &mut state.columns[index];
        // Only this task writes the column while `running`, so the writer is always here.
        let Some(mut writer) = column.writer.take() else {
            column.running = false;
            shared.changed.notify_all();
            return;
        };
        let Some(cells) = column.queue.pop_front() else {
            if !sealed {
                column.writer = Some(writer);
                column.running = false;
                shared.changed.notify_all();
                return;
            }
            drop(state);
            let closed = shared.busy.time(BusyStage::Encode, || writer.close());
            state = shared.lock();
            match closed {
                Ok(chunk) => state.columns[index].chunk = Some(chunk),
                Err(error) => {
                    state.error.get_or_insert(error);
                }
            }
            state.columns[index].running = false;
            shared.changed.notify_all();
            return;
        };
        // A batch was taken off the queue: a waiting submit may go on.
        shared.changed.notify_all();
        drop(state);

        let result = shared.busy.time(BusyStage::Encode, || {
            cells.iter().try_for_each(|array| {
                compute_leaves(&shared.fields[index], array)?
                    .iter()
                    .try_for_each(|leaf| writer.write(leaf))
            })
        });

        state = shared.lock();
        let column = &mut state.columns[index];
        column.writer = Some(writer);
        if let Err(error) = result {
            column.queue.clear();
            state.error.get_or_insert(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int32Type;
    use arrow_array::{ArrayRef, Int32Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    use super::*;

    fn batch(schema: &Arc<Schema>, from: i32, rows: i32) -> RecordBatch {
        let numbers: ArrayRef = Arc::new(Int32Array::from_iter_values(from..from + rows));
        let text: ArrayRef = Arc::new(StringArray::from_iter_values(
            (from..from + rows).map(|i| format!("row {i} {}", "q".repeat(i as usize % 50))),
        ));
        RecordBatch::try_new(Arc::clone(schema), vec![numbers, text]).unwrap()
    }

    /// Encodes `batches` as row groups of `per_group` batches through ColumnEncoders, on a
    /// pool of two, and returns the file.
    fn encode(schema: &Arc<Schema>, batches: &[RecordBatch], per_group: usize) -> std::fs::File {
        let pool = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap(),
        );
        let busy = Arc::new(BusyTimes::default());
        let properties = WriterProperties::builder().build();
        let (mut file, factory) =
            ArrowWriter::try_new(Vec::new(), Arc::clone(schema), Some(properties))
                .and_then(ArrowWriter::into_serialized_writer)
                .unwrap();
        for (index, group) in batches.chunks(per_group).enumerate() {
            let writers = factory.create_column_writers(index).unwrap();
            let encoders = ColumnEncoders::new(
                schema.fields(),
                writers,
                Arc::clone(&pool),
                Arc::clone(&busy),
            )
            .unwrap();
            for batch in group {
                let arrays = batch
                    .columns()
                    .iter()
                    .map(|a| vec![Arc::clone(a)])
                    .collect();
                encoders.submit(arrays).unwrap();
            }
            let chunks = encoders.finish().unwrap();
            let mut row_group = file.next_row_group().unwrap();
            for chunk in chunks {
                chunk.append_to_row_group(&mut row_group).unwrap();
            }
            row_group.close().unwrap();
        }
        let mut out = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut out, &file.into_inner().unwrap()).unwrap();
        out
    }

    #[test]
    fn queued_batches_are_written_in_order_into_their_row_groups() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int32, false),
            Field::new("text", DataType::Utf8, false),
        ]));
        // More batches per row group than a column may queue: submit must wait, not drop.
        let batches: Vec<_> = (0..23).map(|i| batch(&schema, i * 1_000, 1_000)).collect();
        let file = encode(&schema, &batches, 10);

        let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        assert_eq!(reader.metadata().num_row_groups(), 3);
        let mut expected = 0;
        for read in reader.build().unwrap() {
            let read = read.unwrap();
            let numbers = read.column(0).as_primitive::<Int32Type>();
            let text = read.column(1).as_string::<i32>();
            for row in 0..read.num_rows() {
                assert_eq!(numbers.value(row), expected);
                assert!(text.value(row).starts_with(&format!("row {expected} ")));
                expected += 1;
            }
        }
        assert_eq!(expected, 23_000);
    }

    #[test]
    fn an_empty_row_group_closes() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int32, false)]));
        let pool = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap(),
        );
        let (_, factory) = ArrowWriter::try_new(Vec::new(), Arc::clone(&schema), None)
            .and_then(ArrowWriter::into_serialized_writer)
            .unwrap();
        let encoders = ColumnEncoders::new(
            schema.fields(),
            factory.create_column_writers(0).unwrap(),
            pool,
            Arc::new(BusyTimes::default()),
        )
        .unwrap();
        encoders.seal();
        let chunks = encoders.finish().unwrap();
        assert_eq!(chunks.len(), 1);
    }
}
