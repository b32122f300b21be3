//! Split plans from Python: `plan` and `commit`, and the `plan`/`task` keywords of `convert`
//! and `scan`. A plan crosses as the JSON of its file, so a driver can hand it to workers
//! that do not share its disk (Spark executors).

use std::path::{Path, PathBuf};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use bamflow_engine::pipeline::split::{self, SplitPlan};
use bamflow_engine::pipeline::{chain, Engine};

use crate::errors::{convert_error, pool_error};
use crate::options::Options;

/// The plan and task of the `plan=`/`task=` keywords: both or neither.
///
/// # Errors
///
/// `ValueError` when only one is given or the plan is not one.
pub fn task_of(plan: Option<&str>, task: Option<usize>) -> PyResult<Option<(SplitPlan, usize)>> {
    match (plan, task) {
        (None, None) => Ok(None),
        (Some(json), Some(task)) => {
            let plan = SplitPlan::from_json(json, Path::new("plan="))
                .map_err(|e| PyValueError::new_err(chain(&e)))?;
            Ok(Some((plan, task)))
        }
        _ => Err(PyValueError::new_err("plan and task go together")),
    }
}

/// Splits `path` into `tasks` tasks for conversions with these options; the plan as JSON.
#[pyfunction]
#[pyo3(signature = (path, tasks, *, columns=None, tags=None, min_mapq=None, include_flags=None, exclude_flags=None, part_records=None, threads=None))]
#[allow(clippy::too_many_arguments)] // Python keywords, one per option.
pub fn plan(
    py: Python<'_>,
    path: PathBuf,
    tasks: usize,
    columns: Option<Vec<String>>,
    tags: Option<Vec<String>>,
    min_mapq: Option<u8>,
    include_flags: Option<u16>,
    exclude_flags: Option<u16>,
    part_records: Option<u64>,
    threads: Option<usize>,
) -> PyResult<String> {
    let options = Options {
        columns,
        tags,
        min_mapq,
        include_flags,
        exclude_flags,
        part_records,
        threads,
        ..Options::default()
    }
    .resolve()?;
    let engine = Engine::new(options.threads).map_err(pool_error)?;
    let plan = py
        .detach(|| engine.plan(&path, tasks, &options))
        .map_err(|error| convert_error(py, &error))?;
    Ok(plan.to_json())
}

/// Publishes the dataset `output` of the plan's finished tasks; its manifest as JSON.
#[pyfunction]
pub fn commit(py: Python<'_>, output: PathBuf, plan: String) -> PyResult<String> {
    let plan = SplitPlan::from_json(&plan, Path::new("plan="))
        .map_err(|e| PyValueError::new_err(chain(&e)))?;
    let summary = py
        .detach(|| split::commit(&output, &plan))
        .map_err(|error| convert_error(py, &error))?;
    serde_json::to_string(&summary.manifest)
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))
}
