//! `bamflow._bamflow`: the engine's entry points for Python. The Python package `bamflow`
//! wraps them (keyword defaults, JSON into dicts, the plugin list) and is what users import.
//!
//! Every call releases the GIL while the engine works; errors cross as `ConvertError` (from
//! `bamflow._errors`, a plain Python class, so it pickles and subclasses like any other) or,
//! for options, `ValueError` naming the keyword.

mod convert;
mod errors;
mod options;
mod split;

use std::path::PathBuf;

use arrow_array::{RecordBatch, RecordBatchReader};
use arrow_pyarrow::IntoPyArrow;
use arrow_schema::{ArrowError, SchemaRef};
use pyo3::prelude::*;

use bamflow_engine::pipeline::scan::RecordBatches;
use bamflow_engine::pipeline::{self, chain, Engine};

use crate::errors::{convert_error, pool_error};
use crate::options::Options;

/// The SAM header text of a BAM file or a dataset folder, as `samtools view -H --no-PG`.
#[pyfunction]
fn read_header(py: Python<'_>, path: PathBuf) -> PyResult<String> {
    py.detach(|| pipeline::read_header(&path))
        .map_err(|error| convert_error(py, &error))
}

/// The profile `bamflow profile` prints, as JSON.
#[pyfunction]
#[pyo3(signature = (path, threads=None))]
fn profile(py: Python<'_>, path: PathBuf, threads: Option<usize>) -> PyResult<String> {
    let options = Options {
        threads,
        ..Options::default()
    }
    .resolve()?;
    let engine = Engine::new(options.threads).map_err(pool_error)?;
    let profile = py
        .detach(|| engine.profile(&path, &options))
        .map_err(|error| convert_error(py, &error))?;
    serde_json::to_string(&profile)
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))
}

/// A `pyarrow.RecordBatchReader` over the records of `path`, decoded on `threads` workers in
/// the engine's bounded memory.
#[pyfunction]
#[pyo3(signature = (path, *, columns=None, tags=None, min_mapq=None, include_flags=None, exclude_flags=None, regions=None, threads=None, batch_records=None, plan=None, task=None))]
#[allow(clippy::too_many_arguments)] // Python keywords, one per option.
fn scan<'py>(
    py: Python<'py>,
    path: PathBuf,
    columns: Option<Vec<String>>,
    tags: Option<Vec<String>>,
    min_mapq: Option<u8>,
    include_flags: Option<u16>,
    exclude_flags: Option<u16>,
    regions: Option<Vec<String>>,
    threads: Option<usize>,
    batch_records: Option<usize>,
    plan: Option<String>,
    task: Option<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    let options = Options {
        columns,
        tags,
        min_mapq,
        include_flags,
        exclude_flags,
        regions,
        threads,
        batch_records,
        ..Options::default()
    }
    .resolve()?;
    let engine = Engine::new(options.threads).map_err(pool_error)?;
    let split = split::task_of(plan.as_deref(), task)?;
    let batches = py
        .detach(|| match &split {
            Some((plan, task)) => engine.scan_task(&path, plan, *task, &options),
            None => engine.scan(&path, &options),
        })
        .map_err(|error| convert_error(py, &error))?;
    let reader: Box<dyn RecordBatchReader + Send> = Box::new(Stream(batches));
    reader.into_pyarrow(py)
}

/// The engine's batches with Arrow's error type; an error carries its whole chain (file,
/// stage, record or offset, cause) as text, which is all that crosses the C stream interface.
struct Stream(RecordBatches);

impl Iterator for Stream {
    type Item = Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = self.0.next()?;
        Some(
            next.map_err(|e| ArrowError::ExternalError(Box::new(std::io::Error::other(chain(&e))))),
        )
    }
}

impl RecordBatchReader for Stream {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }
}

/// Compares the dataset `dataset` with the BAM `bam`; the report as JSON.
#[pyfunction]
#[pyo3(signature = (dataset, bam, threads=None))]
fn verify(
    py: Python<'_>,
    dataset: PathBuf,
    bam: PathBuf,
    threads: Option<usize>,
) -> PyResult<String> {
    let threads = bamflow_engine::options::resolve_threads(threads.unwrap_or(0));
    let engine = Engine::new(threads).map_err(pool_error)?;
    let report = py
        .detach(|| bamflow_engine::verify::verify(&engine, &dataset, &bam))
        .map_err(|error| match error {
            bamflow_engine::verify::VerifyError::Bam(error) => convert_error(py, &error),
            other => pyo3::exceptions::PyValueError::new_err(chain(&other)),
        })?;
    serde_json::to_string(&report)
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))
}

/// Writes the dataset `dataset` back as the BAM file `output`; returns the records written.
/// With `allow_partial`, a dataset that does not hold everything is written with what it has,
/// and a `UserWarning` says what differs from the source.
#[pyfunction]
#[pyo3(signature = (dataset, output, threads=None, allow_partial=false))]
fn export(
    py: Python<'_>,
    dataset: PathBuf,
    output: PathBuf,
    threads: Option<usize>,
    allow_partial: bool,
) -> PyResult<u64> {
    let options = bamflow_engine::export::ExportOptions {
        threads: bamflow_engine::options::resolve_threads(threads.unwrap_or(0)),
        allow_partial,
    };
    let exported = py
        .detach(|| bamflow_engine::export::export_with(&dataset, &output, &options))
        .map_err(|error| match error {
            bamflow_engine::export::ExportError::Header(error) => convert_error(py, &error),
            bamflow_engine::export::ExportError::Write { .. } => {
                pyo3::exceptions::PyOSError::new_err(chain(&error))
            }
            other => pyo3::exceptions::PyValueError::new_err(chain(&other)),
        })?;
    for reason in &exported.partial {
        let message = format!("{} is not the source's BAM: {reason}", output.display());
        let text = std::ffi::CString::new(message).unwrap_or_default();
        PyErr::warn(
            py,
            &py.get_type::<pyo3::exceptions::PyUserWarning>(),
            &text,
            1,
        )?;
    }
    Ok(exported.records)
}

#[pymodule]
fn _bamflow(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(convert::convert, module)?)?;
    module.add_function(wrap_pyfunction!(scan, module)?)?;
    module.add_function(wrap_pyfunction!(split::plan, module)?)?;
    module.add_function(wrap_pyfunction!(split::commit, module)?)?;
    module.add_function(wrap_pyfunction!(read_header, module)?)?;
    module.add_function(wrap_pyfunction!(profile, module)?)?;
    module.add_function(wrap_pyfunction!(verify, module)?)?;
    module.add_function(wrap_pyfunction!(export, module)?)?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
