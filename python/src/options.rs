//! Python keywords → the engine's options, checked where the command line's flags are
//! ([`ConvertConfig::resolve`], [`FilterConfig::resolve`]), so both refuse the same values.

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::PyErr;

use bamflow_engine::options::{ConvertConfig, FilterConfig, OptionError};
use bamflow_engine::pipeline::filter::PluginSpec;
use bamflow_engine::pipeline::ConvertOptions;

/// A filter plugin as the Python wrapper hands it over: library, pinned SHA-256, config JSON.
pub type Plugin = (PathBuf, Option<String>, String);

/// The keywords of `convert` and `scan`; `None` takes the engine's default.
#[derive(Default)]
pub struct Options {
    pub columns: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub min_mapq: Option<u8>,
    pub include_flags: Option<u16>,
    pub exclude_flags: Option<u16>,
    pub regions: Option<Vec<String>>,
    pub plugins: Vec<Plugin>,
    pub threads: Option<usize>,
    pub zstd_level: Option<i32>,
    pub part_records: Option<u64>,
    pub batch_records: Option<usize>,
    pub resume: bool,
}

impl Options {
    /// The options the engine runs on.
    ///
    /// # Errors
    ///
    /// `ValueError` naming the keyword whose value cannot be used.
    pub fn resolve(self) -> Result<ConvertOptions, PyErr> {
        let convert = ConvertConfig {
            columns: self.columns,
            tags: self.tags,
            zstd_level: self.zstd_level,
            part_records: self.part_records,
            batch_records: self.batch_records,
            ..ConvertConfig::default()
        };
        let mut options = convert
            .resolve(self.threads.unwrap_or(0))
            .map_err(value_error)?;
        let filter = FilterConfig {
            min_mapq: self.min_mapq,
            include_flags: self.include_flags,
            exclude_flags: self.exclude_flags,
            regions: self.regions,
        };
        let plugins = self
            .plugins
            .into_iter()
            .map(|(path, sha256, config_json)| PluginSpec {
                path,
                sha256,
                config_json,
            })
            .collect();
        options.filters = filter.resolve(plugins).map_err(value_error)?;
        options.resume = self.resume;
        Ok(options)
    }
}

/// `zstd_level: must be 1-22`: the key as the Python keyword, without the config table.
fn value_error(error: OptionError) -> PyErr {
    let key = error.key.rsplit('.').next().unwrap_or(&error.key);
    PyValueError::new_err(format!("{key}: {}", error.message))
}
