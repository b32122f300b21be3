//! For tests only: a plugin that panics when it meets a record whose name starts with "panic",
//! and fails (without panicking) on one that starts with "fail", so the tests can show that a
//! broken plugin fails its file and nothing else.

use std::ffi::CStr;

use bamflow_plugin_api::{export_plugin, Batch, Filter};

pub struct Misbehaving;

impl Filter for Misbehaving {
    const NAME: &'static CStr = c"misbehaving";
    const VERSION: &'static CStr = c"0.0.0";

    fn new(config_json: &str, _sam_header: &str) -> Result<Self, String> {
        if config_json.contains("reject") {
            return Err("this config is rejected on purpose".to_owned());
        }
        Ok(Self)
    }

    fn filter(&mut self, batch: &Batch<'_>, _keep: &mut [u8]) -> Result<(), String> {
        for record in batch.records() {
            let record = record.map_err(|e| e.to_string())?;
            if record.name().starts_with(b"panic") {
                panic!("met record {}", String::from_utf8_lossy(record.name()));
            }
            if record.name().starts_with(b"fail") {
                return Err("refusing a record named fail*".to_owned());
            }
        }
        Ok(())
    }
}

export_plugin!(Misbehaving);
