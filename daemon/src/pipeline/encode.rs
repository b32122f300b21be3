//! Column encoders of one row group, each an ordered queue of work on the shared pool.
//!
//! Columns cost very different amounts: zstd on QUAL takes about half the CPU of a whole
//! conversion, `flag` almost nothing. Encoding each batch with `par_iter` over columns would make
//! every batch wait for QUAL while the other workers idle. Here each column instead drains its
//! own queue of leaves, one task at a time (so its pages stay in order), concurrently with the
//! other columns, later batches and decoding; the only barrier is at row-group close. A column
//! that falls `MAX_QUEUED` batches behind makes [`ColumnEncoders::submit`] wait, which bounds
//! the memory its queued leaves hold.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use parquet::arrow::arrow_writer::{ArrowColumnWriter, ArrowLeafColumn};
use parquet::errors::ParquetError;
use rayon::ThreadPool;

use super::busy::{BusyStage, BusyTimes};

/// Batches a column may fall behind before the writer waits for it.
const MAX_QUEUED: usize = 4;

struct ColumnState {
    /// `None` while a worker is writing with it.
    writer: Option<ArrowColumnWriter>,
    queue: VecDeque<Vec<ArrowLeafColumn>>,
    running: bool,
    estimated_bytes: usize,
}

struct State {
    columns: Vec<ColumnState>,
    error: Option<ParquetError>,
}

struct Shared {
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
    pub fn new(
        writers: Vec<ArrowColumnWriter>,
        pool: Arc<ThreadPool>,
        busy: Arc<BusyTimes>,
    ) -> Self {
        let columns = writers
            .into_iter()
            .map(|writer| ColumnState {
                writer: Some(writer),
                queue: VecDeque::new(),
                running: false,
                estimated_bytes: 0,
            })
            .collect();
        let state = Mutex::new(State {
            columns,
            error: None,
        });
        Self {
            shared: Arc::new(Shared {
                state,
                changed: Condvar::new(),
                busy,
            }),
            pool,
        }
    }

    /// Queues one batch's leaves (one list per column, in schema order) for encoding.
    ///
    /// # Errors
    ///
    /// Returns the first encoding error of an earlier batch.
    pub fn submit(&self, leaves: Vec<Vec<ArrowLeafColumn>>) -> Result<(), ParquetError> {
        let mut state = self.shared.lock();
        while state.error.is_none() && state.columns.iter().any(|c| c.queue.len() >= MAX_QUEUED) {
            state = self.shared.wait(state);
        }
        if let Some(error) = state.error.take() {
            return Err(error);
        }
        for (index, leaves) in leaves.into_iter().enumerate() {
            let Some(column) = state.columns.get_mut(index) else {
                break;
            };
            column.queue.push_back(leaves);
            if !column.running {
                column.running = true;
                let shared = Arc::clone(&self.shared);
                self.pool.spawn(move || drain(&shared, index));
            }
        }
        Ok(())
    }

    /// Whether every queued leaf has been written (so [`ColumnEncoders::finish`] will not wait).
    pub fn is_idle(&self) -> bool {
        self.shared.lock().columns.iter().all(|c| !c.running)
    }

    /// Estimated encoded size of the row group so far (as of the last finished writes).
    pub fn estimated_bytes(&self) -> usize {
        self.shared
            .lock()
            .columns
            .iter()
            .map(|c| c.estimated_bytes)
            .sum()
    }

    /// Waits until every queued leaf is written and returns the writers, in schema order.
    ///
    /// # Errors
    ///
    /// Returns the first encoding error.
    pub fn finish(self) -> Result<Vec<ArrowColumnWriter>, ParquetError> {
        let mut state = self.shared.lock();
        while state.columns.iter().any(|c| c.running) {
            state = self.shared.wait(state);
        }
        if let Some(error) = state.error.take() {
            return Err(error);
        }
        let writers = state
            .columns
            .iter_mut()
            .filter_map(|c| c.writer.take())
            .collect::<Vec<_>>();
        if writers.len() != state.columns.len() {
            return Err(ParquetError::General("a column writer was lost".into()));
        }
        Ok(writers)
    }
}

/// Worker: writes a column's queued leaves in order until its queue is empty.
fn drain(shared: &Shared, index: usize) {
    let mut state = shared.lock();
    loop {
        let column = &mut state.columns[index];
        // Only this task writes the column while `running`, so the writer is always here.
        if column.queue.is_empty() || column.writer.is_none() {
            column.running = false;
            shared.changed.notify_all();
            return;
        }
        let (Some(leaves), Some(mut writer)) = (column.queue.pop_front(), column.writer.take())
        else {
            return;
        };
        // A batch was taken off the queue: a waiting submit may go on.
        shared.changed.notify_all();
        drop(state);

        let result = shared.busy.time(BusyStage::Encode, || {
            leaves.iter().try_for_each(|leaf| writer.write(leaf))
        });
        let bytes = writer.get_estimated_total_bytes();

        state = shared.lock();
        let column = &mut state.columns[index];
        column.writer = Some(writer);
        column.estimated_bytes = bytes;
        if let Err(error) = result {
            column.queue.clear();
            state.error.get_or_insert(error);
        }
    }
}
