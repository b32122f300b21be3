//! bamflow datasets in S3-compatible object storage (DESIGN §13).
//!
//! An output `s3://bucket/prefix/NAME` is built by the engine in a local spool folder with its
//! usual checkpoints, each part uploaded as soon as it is committed, and published by writing
//! `_manifest.json` and then `_SUCCESS` with a create-only put ([`remote`]). Credentials,
//! region and endpoint come from the AWS profile files and environment ([`Bucket::connect`]).
//!
//! A crate of its own: it brings an async runtime and an HTTP client that the engine's other
//! users (the Python wheel, Spark and Slurm tasks writing shared folders) need not compile.

pub mod bucket;
pub mod input;
pub mod journal;
pub mod location;
mod profile_files;
pub mod remote;

use std::path::PathBuf;

pub use bucket::{Bucket, Buckets, Failure, Retry, StoreObserver, Unobserved};
pub use input::S3Opener;
pub use location::ObjectUrl;
pub use remote::{Published, RemoteTarget, Staged};

use bamflow_engine::pipeline::ConvertError;

/// Why an object-store dataset could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Not a dataset address.
    #[error("{url} is not an s3://BUCKET/PREFIX dataset address: {reason}")]
    Url {
        /// What was given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store's settings (options, environment, profile) are unusable.
    #[error("cannot configure the object store for bucket {bucket}: {reason}")]
    Config {
        /// The bucket.
        bucket: String,
        /// Why.
        reason: String,
    },
    /// The async runtime's threads could not start.
    #[error("cannot start the object store's threads")]
    Runtime(#[source] std::io::Error),
    /// A request failed (after object_store's retries, for those it retries). The store's
    /// error is in the message, not a source: its text already carries its own causes.
    #[error("cannot {op} {url}: {error}")]
    Remote {
        /// The operation.
        op: &'static str,
        /// The object.
        url: String,
        /// The store's error.
        error: object_store::Error,
    },
    /// The dataset is published already: datasets are never overwritten.
    #[error("{url} already exists")]
    AlreadyExists {
        /// The object that is there.
        url: String,
    },
    /// Another process is building the same dataset in this spool.
    #[error("{url} is being built by another bamflow process (spool lock {})", path.display())]
    Busy {
        /// The dataset.
        url: String,
        /// The lock file.
        path: PathBuf,
    },
    /// A published dataset's manifest is missing or unreadable.
    #[error("the manifest of {url} is unusable: {reason}")]
    Manifest {
        /// The dataset.
        url: String,
        /// Why.
        reason: String,
    },
    /// A local file to upload could not be read.
    #[error("cannot read {} to upload it", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The spool folder could not be prepared.
    #[error("cannot prepare the spool at {}", path.display())]
    Spool {
        /// The folder or file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The upload journal could not be written.
    #[error("cannot write the upload journal {}: {reason}", path.display())]
    Journal {
        /// The journal.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The engine's checkpoint, here or in the store, is unusable.
    #[error(transparent)]
    Checkpoint(#[from] bamflow_engine::checkpoint::CheckpointError),
    /// The observer cancelled the upload (a shutdown); the spool keeps the dataset.
    #[error("cancelled")]
    Cancelled,
    /// The observer refused the publish: this process no longer holds the file.
    #[error("not publishing: {0}")]
    Fenced(String),
    /// An upload task panicked or was cancelled.
    #[error("an upload task failed: {0}")]
    Task(String),
    /// The conversion itself failed.
    #[error(transparent)]
    Convert(Box<ConvertError>),
}

/// `error` and its sources, joined by `: ` (the engine's, so both crates word errors alike).
pub use bamflow_engine::pipeline::chain;
