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
//!
//! ```
//! use bamflow_engine::pipeline::{ConvertOptions, Engine};
//! # use bamflow_tests::generator::{write_bam, DataKind, Spec};
//! # let dir = tempfile::tempdir()?;
//! # let bam = dir.path().join("in.bam");
//! # write_bam(&bam, &Spec::new(DataKind::Short, 1_000, 1))?;
//!
//! // One worker pool, shared by every conversion and scan made on it.
//! let engine = Engine::new(2)?;
//! // Every column, zstd, 4 M records per part; options::ConvertConfig changes any of it.
//! let options = ConvertOptions::default();
//!
//! // One BAM into one dataset folder: part-00000.parquet, _manifest.json, _SUCCESS.
//! // `&()` observes nothing; an Observer gets progress and can cancel.
//! let summary = engine.convert(&bam, &dir.path().join("out"), &options, &())?;
//! assert!(summary.manifest.counts.read >= 1_000);
//!
//! // The same rows as Arrow record batches, in record order and bounded memory.
//! let mut rows = 0;
//! for batch in engine.scan(&bam, &options)? {
//!     rows += batch?.num_rows();
//! }
//! assert_eq!(rows as u64, summary.manifest.counts.written);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

#[doc(hidden)]
pub mod checkpoint;
pub mod dataset;
#[doc(hidden)]
pub mod durable;
pub mod export;
#[doc(hidden)]
pub mod faults;
pub mod hash;
#[doc(hidden)]
pub mod heap;
pub mod input;
pub mod options;
pub mod pipeline;
pub mod plugin;
pub mod verify;
