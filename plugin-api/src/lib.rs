//! The contract between bamflow and its filter plugins (DESIGN.md §7).
//!
//! A BAM record is already a well-defined byte layout (SAMv1 §4.2), so that layout is the
//! interchange format: the engine hands plugins raw, decompressed records in batches and
//! plugins answer with a keep mask, one byte per record. Records a filter drops are never
//! decoded, so filtering costs almost nothing next to conversion.
//!
//! - [`Filter`]: the safe trait a plugin implements; bamflow's built-in filters implement it
//!   too. [`export_plugin!`] exports it as a C ABI table ([`abi::PluginTable`]) and turns
//!   panics into error codes, so a broken plugin fails its file, never the daemon.
//! - [`Batch`] and [`RecordView`]: checked, zero-copy views over the raw records with lazy
//!   getters (flag, reference, position, MAPQ, name, CIGAR, sequence, qualities, tags by name
//!   with typed values). The engine's decoder reads every record through `RecordView`, so
//!   plugins see exactly what the engine sees.
//! - [`RecordBuilder`]: raw records for a plugin's own tests.
//! - [`conformance`]: the checks `bamflow plugin check PATH` runs on any plugin library.
//!
//! # A complete plugin
//!
//! `Cargo.toml`: `[lib] crate-type = ["cdylib", "rlib"]` and a dependency on
//! `bamflow-plugin-api`. Then:
//!
//! ```
//! use bamflow_plugin_api::{export_plugin, Batch, Filter, TagValue};
//!
//! /// Keeps records whose `RG` tag is the configured read group.
//! pub struct ReadGroup {
//!     read_group: Vec<u8>,
//! }
//!
//! impl Filter for ReadGroup {
//!     const NAME: &'static std::ffi::CStr = c"read-group";
//!     const VERSION: &'static std::ffi::CStr = c"1.0.0";
//!
//!     fn new(config_json: &str, _sam_header: &str) -> Result<Self, String> {
//!         // A real plugin would use serde_json; this one accepts {"read_group": "NAME"}.
//!         let value = config_json
//!             .split("\"read_group\"")
//!             .nth(1)
//!             .and_then(|rest| rest.split('"').nth(1))
//!             .ok_or("config needs \"read_group\"")?;
//!         Ok(Self { read_group: value.as_bytes().to_vec() })
//!     }
//!
//!     fn filter(&mut self, batch: &Batch<'_>, keep: &mut [u8]) -> Result<(), String> {
//!         for (i, record) in batch.records().enumerate() {
//!             let record = record.map_err(|e| e.to_string())?;
//!             let group = record.tags().find(*b"RG").map_err(|e| e.to_string())?;
//!             keep[i] = u8::from(matches!(group, Some(TagValue::String(g)) if g == self.read_group));
//!         }
//!         Ok(())
//!     }
//! }
//!
//! export_plugin!(ReadGroup);
//!
//! # use bamflow_plugin_api::RecordBuilder;
//! # let records = [
//! #     RecordBuilder::new(b"a").tag_string(*b"RG", "lane1").build(),
//! #     RecordBuilder::new(b"b").tag_string(*b"RG", "lane2").build(),
//! # ];
//! # let batch = bamflow_plugin_api::conformance::OwnedBatch::from_records(records.iter().map(Vec::as_slice));
//! # let mut filter = ReadGroup::new(r#"{"read_group": "lane1"}"#, "").unwrap();
//! # let mut keep = vec![1; 2];
//! # filter.filter(&Batch::new(&batch.data, &batch.offsets).unwrap(), &mut keep).unwrap();
//! # assert_eq!(keep, [1, 0]);
//! # // The exported table checks out.
//! # // SAFETY: this crate's own static table, which lives as long as the process.
//! # let table = unsafe { bamflow_plugin_api::host::Table::new(bamflow_plugin_v1()) }.unwrap();
//! # let report = bamflow_plugin_api::conformance::check(table, r#"{"read_group": "rg1"}"#);
//! # assert!(report.passed(), "{report:?}");
//! ```
//!
//! Check it with `bamflow plugin check target/release/libmy_plugin.so --config '{...}'`, and
//! load it with a `[[plugin]]` table in the daemon's config or `--plugin` on `bamflow convert`.

pub mod abi;
mod builder;
pub mod conformance;
#[doc(hidden)]
pub mod filter;
pub mod host;
mod record;
mod tags;

pub use self::builder::RecordBuilder;
pub use self::filter::{Batch, BatchError, Filter};
pub use self::record::{RecordError, RecordView};
pub use self::tags::{Tag, TagArray, TagError, TagValue, Tags};

/// Major version of the plugin ABI. A host refuses a plugin built for another major.
pub const ABI_MAJOR: u32 = 1;
