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

use std::io::Read;

use bamflow_engine::checkpoint::{self, Checkpoint};
use bamflow_engine::dataset::{self, Manifest, SourceInfo, MANIFEST, SUCCESS};
use bamflow_engine::input::RemoteObject;
use bamflow_engine::pipeline::write::{part_file_name, PartInfo, PARTIAL_SUFFIX};
use bamflow_engine::pipeline::{Commit, ConvertOptions, Engine, Observer, Progress};

use crate::bucket::{Bucket, Multipart, CHUNK_BYTES};
use crate::input::S3Object;
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
        if options.resume && !staging.exists() {
            self.restore_checkpoint(&staging, &journal)?;
        }
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
        let summary = match converted {
            Ok(summary) => summary,
            Err(error) => {
                if !staging.exists() {
                    // The engine discarded its staging (bad input, not an interruption):
                    // nothing will resume, so neither does the upload.
                    self.abandon(&journal);
                }
                return Err(StoreError::Convert(Box::new(error)));
            }
        };
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

    /// Removes what an upload that will not resume left in the store: the parts it uploaded,
    /// the checkpoint copy and its open multipart uploads, then the journal. Only what this
    /// dataset's journal names: never a listing of the prefix, which another attempt may own.
    /// Failures are logged; the next conversion into the same address deletes leftovers
    /// before publishing.
    fn abandon(&self, journal: &Journal) {
        let delete = |key: String| {
            if let Err(error) = self.bucket.delete(&key) {
                tracing::warn!(url = %self.url, object = %key, error = %crate::chain(&error), "Cannot delete an abandoned upload's object.");
            }
        };
        if let Err(error) = self.bucket.abort_pending(journal) {
            tracing::warn!(url = %self.url, error = %crate::chain(&error), "Cannot abort an abandoned multipart upload.");
        }
        let parts = journal.uploaded_parts();
        for part in &parts {
            delete(self.url.key(part));
        }
        delete(self.url.key(checkpoint::FILE_NAME));
        let _ = journal.remove();
        tracing::info!(url = %self.url, parts = parts.len(), "Conversion failed for good; its uploaded parts are deleted.");
    }

    /// Copies the engine's checkpoint beside the dataset's objects (`PREFIX/_checkpoint.json`)
    /// once the store holds every part it lists: a restart on another host, or after the
    /// spool is lost, resumes from it ([`Self::restore_checkpoint`]). A checkpoint naming a
    /// part still uploading is skipped; the next part's upload copies a later one.
    fn share_checkpoint(&self, staging: &Path, journal: &Journal) -> Result<(), StoreError> {
        let path = staging.join(checkpoint::FILE_NAME);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        let checkpoint = Checkpoint::parse(&bytes, &path)?;
        let uploaded = |part: &PartInfo| journal.uploaded(&part.file) == Some(Uploaded::of(part));
        if !checkpoint.parts.iter().all(uploaded) {
            return Ok(());
        }
        self.bucket
            .put(&self.url.key(checkpoint::FILE_NAME), bytes.into(), false)?;
        tracing::debug!(url = %self.url, parts = checkpoint.parts.len(), "Checkpoint copied to the store.");
        let _ = bamflow_engine::faults::point("checkpoint-shared");
        Ok(())
    }

    /// Rebuilds the staging folder from the checkpoint in the store, when there is one and
    /// none here: its parts are downloaded (they are in the store already, so the journal
    /// says so) and the engine then resumes as from a local checkpoint, verifying each part's
    /// size and CRC32 and the input's identity first.
    fn restore_checkpoint(&self, staging: &Path, journal: &Journal) -> Result<(), StoreError> {
        let key = self.url.key(checkpoint::FILE_NAME);
        let Some(bytes) = self.bucket.get(&key)? else {
            return Ok(());
        };
        let remote = PathBuf::from(self.bucket.url_of(&key));
        let checkpoint = match Checkpoint::parse(&bytes, &remote) {
            Ok(checkpoint) => checkpoint,
            Err(error) => {
                tracing::warn!(url = %self.url, error = %crate::chain(&error), "Ignoring the checkpoint in the store.");
                return Ok(());
            }
        };
        let spool_error = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Spool { path, source }
        };
        fs::create_dir_all(staging).map_err(spool_error(staging))?;
        for part in &checkpoint.parts {
            let into = staging.join(&part.file);
            self.download(&self.url.key(&part.file), &into)?;
            journal.record_upload(&part.file, Uploaded::of(part))?;
        }
        let into = staging.join(checkpoint::FILE_NAME);
        fs::write(&into, &bytes).map_err(spool_error(&into))?;
        tracing::info!(url = %self.url, parts = checkpoint.parts.len(), record = checkpoint.next_record, "Resuming from the checkpoint in the store.");
        Ok(())
    }

    /// Copies object `key` into the file `into`, streaming (never a whole part in memory).
    fn download(&self, key: &str, into: &Path) -> Result<(), StoreError> {
        let url = PathBuf::from(self.bucket.url_of(key));
        let read = |source| StoreError::Read {
            path: url.clone(),
            source,
        };
        let object = S3Object::open(Arc::clone(&self.bucket), key).map_err(read)?;
        let mut reader = object.reader_from(0, 2 * CHUNK_BYTES).map_err(read)?;
        let spool = |source| StoreError::Spool {
            path: into.to_owned(),
            source,
        };
        let mut file = File::create(into).map_err(spool)?;
        std::io::copy(&mut reader, &mut file).map_err(read)?;
        file.sync_all().map_err(spool)
    }

    /// The uploader thread. It follows the part being written (`part-N.parquet.partial`,
    /// append-only until its footer) and uploads each full chunk as soon as the file holds
    /// it, so a part's upload ends shortly after its commit rather than starting there; the
    /// committed part's size and CRC32 decide whether the streamed bytes are the part (else
    /// it is uploaded again from the committed file). A failure here is only logged:
    /// [`Staged::publish`] uploads whatever is missing, and fails the file if it still cannot.
    fn upload_queued(&self, queue: mpsc::Receiver<Queued>, staging: &Path, journal: &Journal) {
        let mut tail: Option<Tail<'_>> = None;
        // The next part to follow, once a commit tells; before that, the lowest partial file.
        let mut next: Option<usize> = None;
        loop {
            match queue.recv_timeout(TAIL_POLL) {
                Ok(Queued::Part(part)) => {
                    let streamed = match tail.take() {
                        Some(t) if t.name == part.file => Some(t),
                        other => {
                            if let Some(stale) = other {
                                stale.abort(journal);
                            }
                            None
                        }
                    };
                    match self.finish_part(staging, &part, streamed, journal) {
                        Ok(()) => {
                            if let Err(error) = self.share_checkpoint(staging, journal) {
                                tracing::warn!(url = %self.url, error = %crate::chain(&error), "Cannot copy the checkpoint to the store; a restart elsewhere starts over.");
                            }
                        }
                        Err(error) => {
                            tracing::warn!(url = %self.url, part = %part.file, error = %crate::chain(&error), "Cannot upload part yet; trying again before publishing.");
                        }
                    }
                    next = part_index(&part.file).map(|index| index + 1);
                }
                Ok(Queued::Flush(done)) => {
                    let _ = done.send(());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if tail.is_none() {
                tail = Tail::open(staging, next);
            }
            if let Some(following) = tail.as_mut() {
                if let Err(error) = following.advance(self, journal) {
                    tracing::debug!(part = %following.name, error = %crate::chain(&error), "Stopped following a part; it is uploaded once committed.");
                    if let Some(t) = tail.take() {
                        // Not followed again: the commit uploads it whole.
                        next = part_index(&t.name).map(|index| index + 1);
                        t.abort(journal);
                    }
                }
            }
        }
        if let Some(t) = tail {
            t.abort(journal);
        }
    }

    /// Finishes the upload of a committed part: the rest of a followed part, or all of it.
    fn finish_part(
        &self,
        staging: &Path,
        part: &PartInfo,
        streamed: Option<Tail<'_>>,
        journal: &Journal,
    ) -> Result<(), StoreError> {
        let file = staging.join(&part.file);
        let Some(tail) = streamed else {
            return self.upload_part(&file, part, journal);
        };
        if tail.upload.is_none() {
            // Smaller than a chunk so far: one plain put of the committed file.
            return self.upload_part(&file, part, journal);
        }
        match tail.complete(part, journal) {
            Ok(true) => {
                journal.record_upload(&part.file, Uploaded::of(part))?;
                tracing::debug!(url = %self.url, part = %part.file, "Part uploaded while it was written.");
                let _ = bamflow_engine::faults::point("part-uploaded");
                Ok(())
            }
            Ok(false) => {
                tracing::warn!(part = %part.file, "Streamed bytes differ from the committed part; uploading it again.");
                self.upload_part(&file, part, journal)
            }
            Err(error) => Err(error),
        }
    }

    /// Uploads one part unless the journal says the store has these bytes under its name.
    fn upload_part(
        &self,
        file: &Path,
        part: &PartInfo,
        journal: &Journal,
    ) -> Result<(), StoreError> {
        let wanted = Uploaded::of(part);
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
    /// spool copy. `observer` may cancel between parts and is asked to confirm
    /// ([`Commit::Publish`]) right before `_SUCCESS`, as for a local dataset's rename.
    ///
    /// # Errors
    ///
    /// [`StoreError::AlreadyExists`] when another publisher wrote `_SUCCESS` first,
    /// [`StoreError::Cancelled`] or [`StoreError::Fenced`] from the observer; the store's or
    /// the spool's error otherwise (the spool copy then stays, for a retry).
    pub fn publish(self, observer: &dyn Observer) -> Result<Published, StoreError> {
        let target = self.target;
        let (bucket, url) = (&target.bucket, &target.url);
        for part in &self.manifest.parts {
            if observer.cancelled() {
                return Err(StoreError::Cancelled);
            }
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
        observer
            .confirm(Commit::Publish)
            .map_err(StoreError::Fenced)?;
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

/// How often the uploader looks at the part being written when nothing else happens.
const TAIL_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// The index of `part-NNNNN.parquet`.
fn part_index(name: &str) -> Option<usize> {
    name.strip_prefix("part-")?
        .strip_suffix(".parquet")?
        .parse()
        .ok()
}

/// A part being written, followed by the uploader.
struct Tail<'a> {
    /// Its final name.
    name: String,
    file: File,
    /// Bytes read (and uploaded or uploading).
    read: u64,
    crc: libdeflater::Crc,
    /// Started with the first full chunk: small parts need none.
    upload: Option<Multipart<'a>>,
}

impl<'a> Tail<'a> {
    /// Opens the partial file of part `next`, or with `None` the lowest-numbered one there.
    fn open(staging: &Path, next: Option<usize>) -> Option<Self> {
        let index = match next {
            Some(index) => index,
            None => fs::read_dir(staging)
                .ok()?
                .flatten()
                .filter_map(|entry| {
                    let name = entry.file_name();
                    let name = name.to_str()?.strip_suffix(PARTIAL_SUFFIX)?.to_owned();
                    part_index(&name)
                })
                .min()?,
        };
        let name = part_file_name(index);
        let file = File::open(staging.join(format!("{name}{PARTIAL_SUFFIX}"))).ok()?;
        Some(Self {
            name,
            file,
            read: 0,
            crc: libdeflater::Crc::new(),
            upload: None,
        })
    }

    /// Uploads every full chunk the file holds now.
    fn advance(&mut self, target: &'a RemoteTarget, journal: &Journal) -> Result<(), StoreError> {
        let written = self
            .file
            .metadata()
            .map_err(|source| StoreError::Read {
                path: PathBuf::from(&self.name),
                source,
            })?
            .len();
        // A file truncated under us (a restarted part) reads short: the CRC check catches it.
        while written.saturating_sub(self.read) >= CHUNK_BYTES as u64 {
            let chunk = self.read_chunk()?;
            if self.upload.is_none() {
                let key = target.url.key(&self.name);
                self.upload = Some(target.bucket.start_multipart(&key, journal)?);
            }
            if let Some(upload) = self.upload.as_mut() {
                upload.put(chunk)?;
            }
        }
        Ok(())
    }

    fn read_chunk(&mut self) -> Result<Vec<u8>, StoreError> {
        let mut chunk = Vec::with_capacity(CHUNK_BYTES);
        (&mut self.file)
            .take(CHUNK_BYTES as u64)
            .read_to_end(&mut chunk)
            .map_err(|source| StoreError::Read {
                path: PathBuf::from(&self.name),
                source,
            })?;
        self.crc.update(&chunk);
        self.read += chunk.len() as u64;
        Ok(chunk)
    }

    /// Uploads the rest of the committed part and completes the upload, when the bytes are
    /// the part's (`Ok(false)`, upload aborted, when they are not).
    fn complete(mut self, part: &PartInfo, journal: &Journal) -> Result<bool, StoreError> {
        loop {
            let chunk = self.read_chunk()?;
            if chunk.is_empty() {
                break;
            }
            if let Some(upload) = self.upload.as_mut() {
                upload.put(chunk)?;
            }
        }
        let Some(upload) = self.upload.take() else {
            return Ok(false);
        };
        if self.read != part.bytes || self.crc.sum() != part.crc32 {
            upload.abort(journal);
            return Ok(false);
        }
        upload.finish(journal)?;
        Ok(true)
    }

    fn abort(mut self, journal: &Journal) {
        if let Some(upload) = self.upload.take() {
            upload.abort(journal);
        }
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
