//! bamflow-engine: one BAM file into one Parquet dataset, in bounded memory, on every core.
//!
//! How one BAM file flows (the [`pipeline`] module holds the only code that knows the order):
//!
//! 1. **profile** reads the header and a sample of records and sizes batches so that
//!    everything in flight fits `batch_memory_mb`;
//! 2. a **reader** thread reads BGZF frames, inflates each chunk of them in parallel with
//!    libdeflate, and frames whole records into raw batches (records may span blocks);
//! 3. batches are **filtered** on their raw bytes and **decoded** in parallel, straight from
//!    the record bytes into Arrow arrays of the selected columns only;
//! 4. a **writer** thread encodes them into zstd Parquet part files, each covering a fixed range
//!    of input records, fsynced and renamed when complete, with a [`checkpoint`] after each;
//! 5. the **dataset** folder, built under a staging name, gets `_manifest.json` and `_SUCCESS`
//!    and appears at its output path with one rename.
//!
//! The engine knows nothing of folders to watch, configuration files, metrics servers or
//! signals: the `bamflow` daemon and command line are built on it, and so can any program.

pub mod checkpoint;
pub mod dataset;
pub mod durable;
pub mod faults;
pub mod hash;
pub mod heap;
pub mod pipeline;
pub mod plugin;
