//! `convert`: the engine works on a thread of its own while the calling thread, without the
//! GIL, wakes a few times a second to report progress and to let Python see Ctrl-C.
//!
//! Python runs signal handlers only on the main thread, between bytecodes: a call that held
//! the GIL until the engine finished would turn Ctrl-C into a wait of minutes. Here the
//! calling thread polls `check_signals` (KeyboardInterrupt) and the progress callback
//! (`False` cancels); either sets the flag the engine checks once per batch.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyBool;

use bamflow_engine::dataset;
use bamflow_engine::pipeline::{ConvertError, ConvertSummary, Engine, Observer, Progress};

use crate::errors::{convert_error, pool_error};
use crate::options::{Options, Plugin};

/// How often the callback runs and Ctrl-C is looked for.
const TICK: Duration = Duration::from_millis(200);

/// What the engine reports, read by the calling thread at each tick.
#[derive(Default)]
struct Shared {
    records: AtomicU64,
    bytes: AtomicU64,
    cancel: AtomicBool,
}

impl Observer for Shared {
    fn progress(&self, progress: Progress) {
        self.records.store(progress.records_read, Ordering::Relaxed);
        self.bytes.store(progress.bytes_read, Ordering::Relaxed);
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// Converts `input` into the dataset folder `output`; returns the manifest as JSON.
#[pyfunction]
#[pyo3(signature = (input, output, *, columns=None, tags=None, min_mapq=None, include_flags=None, exclude_flags=None, regions=None, plugins=Vec::new(), threads=None, zstd_level=None, part_records=None, resume=false, progress=None, plan=None, task=None))]
#[allow(clippy::too_many_arguments)] // Python keywords, one per option.
pub fn convert(
    py: Python<'_>,
    input: PathBuf,
    output: PathBuf,
    columns: Option<Vec<String>>,
    tags: Option<Vec<String>>,
    min_mapq: Option<u8>,
    include_flags: Option<u16>,
    exclude_flags: Option<u16>,
    regions: Option<Vec<String>>,
    plugins: Vec<Plugin>,
    threads: Option<usize>,
    zstd_level: Option<i32>,
    part_records: Option<u64>,
    resume: bool,
    progress: Option<Py<PyAny>>,
    plan: Option<String>,
    task: Option<usize>,
) -> PyResult<String> {
    let options = Options {
        columns,
        tags,
        min_mapq,
        include_flags,
        exclude_flags,
        regions,
        plugins,
        threads,
        zstd_level,
        part_records,
        resume,
        ..Options::default()
    }
    .resolve()?;
    let engine = Engine::new(options.threads).map_err(pool_error)?;
    let split = crate::split::task_of(plan.as_deref(), task)?;
    let total = std::fs::metadata(&input).map_or(0, |m| m.len());
    let shared = Shared::default();

    let (result, interrupted) = py.detach(|| {
        std::thread::scope(|scope| {
            let (done_tx, done) = mpsc::channel();
            let (engine, input, output, options, shared, split) =
                (&engine, &input, &output, &options, &shared, &split);
            let worker = scope.spawn(move || {
                let result = match split {
                    Some((plan, task)) => {
                        engine.convert_task(input, output, plan, *task, options, shared)
                    }
                    None => engine.convert(input, output, options, shared),
                };
                // The receiver lives until the worker is joined.
                let _ = done_tx.send(());
                result
            });
            let interrupted = watch(shared, &done, progress.as_ref(), total);
            let result = worker.join().unwrap_or_else(|_| Err(panicked(input)));
            (result, interrupted)
        })
    });

    match result {
        Ok(summary) => {
            if let Some(callback) = &progress {
                // The last call carries the totals.
                let records = summary.manifest.counts.read;
                callback.call1(py, (records, total, total))?;
            }
            manifest_json(&summary)
        }
        Err(error) => {
            if error.is_cancelled() && !resume && split.is_none() {
                // Nothing asked to resume it: leave no trace of the stopped conversion. (A
                // task always resumes, and its dataset's staging holds its siblings' work.)
                let _ = dataset::discard_staging(&output);
            }
            Err(interrupted.unwrap_or_else(|| convert_error(py, &error)))
        }
    }
}

/// Reports progress and looks for Ctrl-C until the worker is done. Returns the Python error
/// that stopped the conversion (KeyboardInterrupt, or one the callback raised), if any.
fn watch(
    shared: &Shared,
    done: &mpsc::Receiver<()>,
    progress: Option<&Py<PyAny>>,
    total: u64,
) -> Option<PyErr> {
    let mut interrupted = None;
    let mut last = None;
    while let Err(mpsc::RecvTimeoutError::Timeout) = done.recv_timeout(TICK) {
        if shared.cancel.load(Ordering::Relaxed) {
            continue;
        }
        let now = (
            shared.records.load(Ordering::Relaxed),
            shared.bytes.load(Ordering::Relaxed),
        );
        let tick = Python::attach(|py| -> PyResult<bool> {
            py.check_signals()?;
            let Some(callback) = progress else {
                return Ok(true);
            };
            if last == Some(now) {
                return Ok(true);
            }
            last = Some(now);
            let answer = callback.call1(py, (now.0, now.1, total))?;
            // Only `False` cancels: a callback that returns nothing goes on.
            let answer = answer.bind(py);
            let cancels = answer.is_instance_of::<PyBool>() && !answer.is_truthy()?;
            Ok(!cancels)
        });
        match tick {
            Ok(true) => {}
            Ok(false) => shared.cancel.store(true, Ordering::Relaxed),
            Err(error) => {
                interrupted = Some(error);
                shared.cancel.store(true, Ordering::Relaxed);
            }
        }
    }
    interrupted
}

fn panicked(input: &Path) -> ConvertError {
    ConvertError::new(
        input,
        bamflow_engine::pipeline::Stage::Open,
        bamflow_engine::pipeline::StageError::Panicked,
    )
}

fn manifest_json(summary: &ConvertSummary) -> PyResult<String> {
    serde_json::to_string(&summary.manifest)
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))
}
