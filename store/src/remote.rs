//! Converting into an object-store dataset: build locally in a spool, upload each part as soon
//! as it is committed, then publish with the manifest and a create-only `_SUCCESS`.
//!
//! S3 has no atomic folder rename, so the dataset's objects go straight to their final keys
//! and `_SUCCESS`, written last with a conditional put, is what makes the prefix a dataset:
//! readers treat a prefix without it as absent, and a second publisher's `_SUCCESS` fails
//! instead of replacing the first's. The engine's own durability does the rest: the dataset
//! is built in a local spool folder with its usual staging, checkpoint and flock, and the
//! upload journal ([`Journal`]) beside it says which parts the store already holds. A run
//! killed at any point resumes the conversion from its checkpoint, skips the parts already
//! uploaded, aborts the multipart upload it left open, and deletes objects under the prefix
//! that no part of the final manifest names before writing `_SUCCESS`.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use bamflow_engine::dataset::{self, Manifest, SourceInfo, MANIFEST, SUCCESS};
use bamflow_engine::pipeline::write::PartInfo;
use bamflow_engine::pipeline::{Commit, ConvertOptions, Engine, Observer, Progress};

use crate::bucket::Bucket;
use crate::journal::{Journal, Uploaded};
use crate::location::ObjectUrl;
use crate::StoreError;

/// A dataset published to an object store.
#[derive(Clone, Debug)]
pub struct Published {
    /// Where.
    pub url: ObjectUrl,
    /// Its `_manifest.json`.
    pub manifest: Manifest,
}

/// The object-store dataset a conversion writes, and its local spool folder.
#[derive(Debug)]
pub struct RemoteTarget {
    bucket: Arc<Bucket>,
    url: ObjectUrl,
    /// The local dataset folder the engine builds (in the spool).
    local: PathBuf,
}

impl RemoteTarget {
    /// The dataset `url` in `bucket` (its bucket must be `url`'s), built locally under
    /// `spool/BUCKET/PREFIX`.
    pub fn new(bucket: Arc<Bucket>, url: ObjectUrl, spool: &Path) -> Self {
        let local = spool.join(&url.bucket).join(&url.prefix);
        Self { bucket, url, local }
    }

    /// The dataset's address.
    pub fn url(&self) -> &ObjectUrl {
        &self.url
    }

    /// The local folder the dataset is built in before it is uploaded.
    pub fn local(&self) -> &Path {
        &self.local
    }

    fn sibling(&self, suffix: &str) -> PathBuf {
        let name = self.local.file_name().unwrap_or_default().to_string_lossy();
        self.local.with_file_name(format!(".{name}.{suffix}"))
    }

    /// The manifest of the published dataset, if `_SUCCESS` is there.
    ///
    /// # Errors
    ///
    /// Returns the store's error, or [`StoreError::Manifest`] when the manifest is missing or
    /// not one.
    pub fn published(&self) -> Result<Option<Manifest>, StoreError> {
        if self.bucket.size_of(&self.url.key(SUCCESS))?.is_none() {
            return Ok(None);
        }
        let bytes =
            self.bucket
                .get(&self.url.key(MANIFEST))?
                .ok_or_else(|| StoreError::Manifest {
                    url: self.url.to_string(),
                    reason: "_SUCCESS is there but _manifest.json is not".to_owned(),
                })?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Manifest {
                url: self.url.to_string(),
                reason: e.to_string(),
            })
    }

    /// Converts `input` into the local spool, uploading each part as it is committed. The
    /// dataset is complete locally (and can be verified there) but not yet published:
    /// [`Staged::publish`] does that.
    ///
    /// # Errors
    ///
    /// [`StoreError::AlreadyExists`] when the dataset is published already, [`StoreError::Busy`]
    /// when another process is building it here, the conversion's error, or the spool's.
    pub fn convert(
        &self,
        engine: &Engine,
        input: &Path,
        source: SourceInfo,
        options: &ConvertOptions,
        observer: &dyn Observer,
    ) -> Result<Staged<'_>, StoreError> {
        if self.bucket.size_of(&self.url.key(SUCCESS))?.is_some() {
            return Err(StoreError::AlreadyExists {
                url: self.url.to_string(),
            });
        }
        let lock = self.lock()?;
        let journal = Journal::open(&self.sibling("upload.json"));
        self.bucket.abort_pending(&journal)?;

        if let Some(manifest) = dataset::read_published(&self.local) {
            // Built before a crash that struck while uploading.
            if manifest.source.same_content(&source) {
                tracing::info!(url = %self.url, local = %self.local.display(), "Dataset was built before an interruption; uploading it.");
                return Ok(Staged {
                    target: self,
                    manifest,
                    journal,
                    _lock: lock,
                });
            }
        }
        if self.local.exists() {
            fs::remove_dir_all(&self.local).map_err(|source| StoreError::Spool {
                path: self.local.clone(),
                source,
            })?;
        }

        let staging = dataset::staging_path_for(&self.local, options.epoch).map_err(|e| {
            StoreError::Spool {
                path: self.local.clone(),
                source: std::io::Error::other(e.to_string()),
            }
        })?;
        let (queue, parts) = mpsc::channel();
        let uploading = Uploading {
            inner: observer,
            queue: queue.clone(),
        };
        let converted = std::thread::scope(|scope| {
            let (staging, journal) = (&staging, &journal);
            let uploader = scope.spawn(move || self.upload_queued(parts, staging, journal));
            let converted =
                engine.convert_identified(input, source, &self.local, options, &uploading);
            drop(uploading);
            drop(queue);
            let _ = uploader.join();
            converted
        });
        let summary = converted.map_err(|e| StoreError::Convert(Box::new(e)))?;
        Ok(Staged {
            target: self,
            manifest: summary.manifest,
            journal,
            _lock: lock,
        })
    }

    /// Holds `.NAME.upload.lock` in the spool, so two processes never upload one dataset.
    fn lock(&self) -> Result<File, StoreError> {
        let path = self.sibling("upload.lock");
        let spool_error = |source| StoreError::Spool {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(spool_error)?;
        }
        let file = File::create(&path).map_err(spool_error)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(file),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(StoreError::Busy {
                url: self.url.to_string(),
                path,
            }),
            Err(e) => Err(spool_error(e.into())),
        }
    }

    /// The uploader thread: uploads each committed part from the staging folder while the
    /// conversion goes on. A failure here is only logged: [`Staged::publish`] uploads
    /// whatever is missing, and fails the file if it still cannot.
    fn upload_queued(&self, queue: mpsc::Receiver<Queued>, staging: &Path, journal: &Journal) {
        for queued in queue {
            match queued {
                Queued::Part(part) => {
                    if let Err(error) = self.upload_part(&staging.join(&part.file), &part, journal)
                    {
                        tracing::warn!(url = %self.url, part = %part.file, error = %crate::chain(&error), "Cannot upload part yet; trying again before publishing.");
                    }
                }
                Queued::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    }

    /// Uploads one part unless the journal says the store has these bytes under its name.
    fn upload_part(
        &self,
        file: &Path,
        part: &PartInfo,
        journal: &Journal,
    ) -> Result<(), StoreError> {
        let wanted = Uploaded {
            bytes: part.bytes,
            crc32: part.crc32,
        };
        let key = self.url.key(&part.file);
        if journal.uploaded(&part.file) == Some(wanted)
            && self.bucket.size_of(&key)? == Some(part.bytes)
        {
            return Ok(());
        }
        self.bucket.upload_file(file, &key, journal)?;
        journal.record_upload(&part.file, wanted)?;
        let _ = bamflow_engine::faults::point("part-uploaded");
        Ok(())
    }
}

/// A dataset complete in the spool, its parts (mostly) uploaded; dropped unpublished, it
/// stays in the spool for the next attempt.
#[derive(Debug)]
pub struct Staged<'a> {
    target: &'a RemoteTarget,
    manifest: Manifest,
    journal: Journal,
    _lock: File,
}

impl Staged<'_> {
    /// The complete local dataset.
    pub fn local(&self) -> &Path {
        &self.target.local
    }

    /// Its manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Uploads the parts the store lacks, deletes objects under the prefix that are not this
    /// dataset's, writes `_manifest.json` and then `_SUCCESS` (create-only), and removes the
    /// spool copy.
    ///
    /// # Errors
    ///
    /// [`StoreError::AlreadyExists`] when another publisher wrote `_SUCCESS` first; the
    /// store's or the spool's error otherwise (the spool copy then stays, for a retry).
    pub fn publish(self) -> Result<Published, StoreError> {
        let target = self.target;
        let (bucket, url) = (&target.bucket, &target.url);
        for part in &self.manifest.parts {
            target.upload_part(&target.local.join(&part.file), part, &self.journal)?;
        }
        let mut keep: Vec<&str> = self
            .manifest
            .parts
            .iter()
            .map(|p| p.file.as_str())
            .collect();
        keep.push(MANIFEST);
        for name in bucket.list(&url.prefix)? {
            if name == SUCCESS {
                return Err(StoreError::AlreadyExists {
                    url: url.to_string(),
                });
            }
            if !keep.contains(&name.as_str()) {
                tracing::info!(url = %url, object = %name, "Deleting an object no part of the dataset names.");
                bucket.delete(&url.key(&name))?;
            }
        }
        let read = |name: &str| {
            let path = target.local.join(name);
            fs::read(&path).map_err(|source| StoreError::Read { path, source })
        };
        bucket.put(&url.key(MANIFEST), read(MANIFEST)?.into(), false)?;
        let _ = bamflow_engine::faults::point("manifest-uploaded");
        bucket.put(&url.key(SUCCESS), read(SUCCESS)?.into(), true)?;
        tracing::debug!(url = %url, "Published; removing the spool copy.");
        if let Err(error) = fs::remove_dir_all(&target.local) {
            tracing::warn!(path = %target.local.display(), %error, "Cannot remove the spool copy of a published dataset.");
        }
        let _ = self.journal.remove();
        let _ = fs::remove_file(target.sibling("upload.lock"));
        Ok(Published {
            url: url.clone(),
            manifest: self.manifest,
        })
    }
}

enum Queued {
    Part(PartInfo),
    /// Answered once every part queued before it is handled.
    Flush(mpsc::Sender<()>),
}

/// The caller's observer, also queueing each committed part for upload.
struct Uploading<'a> {
    inner: &'a dyn Observer,
    queue: mpsc::Sender<Queued>,
}

impl Observer for Uploading<'_> {
    fn progress(&self, progress: Progress) {
        self.inner.progress(progress);
    }

    fn checkpointed(&self, part: &PartInfo, commit_seconds: f64) {
        let _ = self.queue.send(Queued::Part(part.clone()));
        self.inner.checkpointed(part, commit_seconds);
    }

    fn resumed(&self) {
        self.inner.resumed();
    }

    fn filtered(&self, filter: &str, records: u64) {
        self.inner.filtered(filter, records);
    }

    fn plugin_loaded(&self, name: &str, version: &str) {
        self.inner.plugin_loaded(name, version);
    }

    fn cancelled(&self) -> bool {
        self.inner.cancelled()
    }

    fn confirm(&self, step: Commit) -> Result<(), String> {
        if step == Commit::Publish {
            // The staging folder is renamed next: uploads reading from it finish first.
            let (done, flushed) = mpsc::channel();
            if self.queue.send(Queued::Flush(done)).is_ok() {
                let _ = flushed.recv();
            }
        }
        self.inner.confirm(step)
    }
}
