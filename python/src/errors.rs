//! The engine's errors as Python exceptions.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use bamflow_engine::pipeline::{chain, ConvertError, Location};

/// `bamflow.ConvertError(message, path=, stage=, kind=, offset=, record=)`, or its subclass
/// `bamflow.Cancelled` for a conversion its caller stopped.
pub fn convert_error(py: Python<'_>, error: &ConvertError) -> PyErr {
    let class = if error.is_cancelled() {
        "Cancelled"
    } else {
        "ConvertError"
    };
    let (offset, record) = match error.location() {
        Some(Location::Byte(offset)) => (Some(offset), None),
        Some(Location::Record(record)) => (None, Some(record)),
        None => (None, None),
    };
    let raised = || -> PyResult<PyErr> {
        let class = py.import("bamflow._errors")?.getattr(class)?;
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("path", error.path.as_os_str())?;
        kwargs.set_item("stage", error.stage.to_string())?;
        kwargs.set_item("kind", error.kind().name())?;
        kwargs.set_item("offset", offset)?;
        kwargs.set_item("record", record)?;
        let value = class.call((chain(error),), Some(&kwargs))?;
        Ok(PyErr::from_value(value))
    };
    // Only a broken installation (no `bamflow._errors`) gets here.
    raised().unwrap_or_else(|import_error| import_error)
}

/// The worker pool could not start.
pub fn pool_error(error: impl std::fmt::Display) -> PyErr {
    PyRuntimeError::new_err(format!("cannot start the worker pool: {error}"))
}
