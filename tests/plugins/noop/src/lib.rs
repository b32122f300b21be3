//! For tests and benchmarks: keeps every record without looking at it, so its cost is the
//! cost of calling a plugin at all.

use std::ffi::CStr;

use bamflow_plugin_api::{export_plugin, Batch, Filter};

pub struct Noop;

impl Filter for Noop {
    const NAME: &'static CStr = c"noop";
    const VERSION: &'static CStr = c"0.0.0";

    fn new(_config_json: &str, _sam_header: &str) -> Result<Self, String> {
        Ok(Self)
    }

    fn filter(&mut self, _batch: &Batch<'_>, _keep: &mut [u8]) -> Result<(), String> {
        Ok(())
    }
}

export_plugin!(Noop);
