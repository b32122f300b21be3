//! bamflow: BAM files in, Parquet datasets out.
//!
//! How one BAM file flows (the [`pipeline`] module holds the only code that knows the order):
//!
//! 1. **profile** reads the header and a sample of records and sizes batches so that
//!    everything in flight fits `batch_memory_mb`;
//! 2. a **reader** thread reads BGZF frames, inflates each chunk of them in parallel with
//!    libdeflate, and frames whole records into raw batches (records may span blocks);
//! 3. windows of batches are **decoded** in parallel, straight from the record bytes into Arrow
//!    arrays of the selected columns only;
//! 4. a **writer** thread encodes them into zstd Parquet part files, each covering a fixed range
//!    of input records, fsynced and renamed when complete;
//! 5. the **dataset** folder, built under a staging name, gets `_manifest.json` and `_SUCCESS`
//!    and appears at its output path with one rename.
//!
//! The same engine serves `bamflow convert` and the daemon ([`app`]), which finds finished
//! files in watched folders ([`watch`]), claims, converts and files them away.

pub mod app;
pub mod checkpoint;
pub mod config;
pub mod dataset;
pub mod durable;
pub mod faults;
pub mod heap;
pub mod ledger;
pub mod metrics;
pub mod pipeline;
pub mod plugin;
pub mod service;
pub mod status;
pub mod watch;
