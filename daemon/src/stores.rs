//! `s3://` outputs of the daemon: one connection per bucket and settings, made on first use
//! and kept, and the conversion of one file into an object-store dataset.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bamflow_engine::dataset::{Manifest, SourceInfo};
use bamflow_engine::pipeline::{
    ConvertError, ConvertOptions, ConvertSummary, Engine, Observer, Stage, StageError,
};
use bamflow_store::{Buckets, ObjectUrl, RemoteTarget, StoreError};

use crate::metrics::UploadMetrics;

/// Checks a dataset built in the spool before it is uploaded; the error is the difference.
pub type Verify<'a> = &'a dyn Fn(&Path) -> Result<(), String>;

/// The buckets outputs go to, and the local spool datasets are built in before upload.
#[derive(Debug)]
pub struct Stores {
    spool: PathBuf,
    buckets: Buckets,
}

impl Stores {
    /// Builds datasets under `spool` (on the state folder's disk), reporting to `metrics`.
    pub fn new(spool: PathBuf, metrics: UploadMetrics) -> Self {
        Self {
            spool,
            buckets: Buckets::new(Arc::new(metrics)),
        }
    }

    /// The object-store dataset `output` names, if it is an `s3://` address.
    ///
    /// # Errors
    ///
    /// Returns the address's or the connection settings' error.
    pub fn target(
        &self,
        output: &Path,
        options: &[(String, String)],
    ) -> Option<Result<RemoteTarget, StoreError>> {
        let text = output.to_str().filter(|o| ObjectUrl::is_remote(o))?;
        Some(ObjectUrl::parse(text).and_then(|url| {
            let bucket = self.buckets.get(&url.bucket, options)?;
            Ok(RemoteTarget::new(bucket, url, &self.spool))
        }))
    }
}

/// The manifest of the dataset published at `target` from exactly this `source`, if any.
pub fn published_from(target: &RemoteTarget, source: &SourceInfo) -> Option<Manifest> {
    match target.published() {
        Ok(Some(manifest)) if manifest.source.same_content(source) => Some(manifest),
        Ok(_) => None,
        Err(error) => {
            tracing::warn!(url = %target.url(), error = %bamflow_store::chain(&error), "Cannot tell whether the dataset is published; converting.");
            None
        }
    }
}

/// Converts `input` into `target`: built in the spool, checked by `verify` there (when
/// given), then published. Errors come back as the engine's, at stage `output` (the address,
/// the store's settings, a dataset that exists), `verify`, or `publish` (uploading), so the
/// daemon's accounting of failures stays one path.
pub fn convert(
    target: &RemoteTarget,
    engine: &Engine,
    input: &Path,
    source: SourceInfo,
    options: &ConvertOptions,
    observer: &dyn Observer,
    verify: Option<Verify<'_>>,
) -> Result<ConvertSummary, ConvertError> {
    let staged = target
        .convert(engine, input, source, options, observer)
        .map_err(|e| as_convert_error(input, e))?;
    if let Some(verify) = verify {
        verify(staged.local()).map_err(|message| {
            ConvertError::new(
                input,
                Stage::Verify,
                StageError::Io(io::Error::other(message)),
            )
        })?;
    }
    let published = staged
        .publish(observer)
        .map_err(|e| as_convert_error(input, e))?;
    Ok(ConvertSummary {
        output: PathBuf::from(published.url.to_string()),
        manifest: published.manifest,
    })
}

fn as_convert_error(input: &Path, error: StoreError) -> ConvertError {
    let stage = match error {
        StoreError::Convert(error) => return *error,
        StoreError::Cancelled => {
            return ConvertError::new(input, Stage::Publish, StageError::Cancelled)
        }
        StoreError::Fenced(reason) => {
            let refused = StageError::Fenced {
                step: bamflow_engine::pipeline::Commit::Publish,
                reason,
            };
            return ConvertError::new(input, Stage::Publish, refused);
        }
        StoreError::Url { .. }
        | StoreError::Config { .. }
        | StoreError::AlreadyExists { .. }
        | StoreError::Busy { .. } => Stage::Output,
        _ => Stage::Publish,
    };
    let message = bamflow_store::chain(&error);
    ConvertError::new(input, stage, StageError::Io(io::Error::other(message)))
}
