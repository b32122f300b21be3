//! One S3-compatible bucket, behind a blocking interface for the engine's threads.
//!
//! The engine and the daemon are threads, not tasks: each [`Bucket`] owns a small tokio
//! runtime for object_store's futures and blocks the calling thread on them.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpService,
    ReqwestConnector,
};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::journal::Journal;
use crate::location::S3_SCHEME;
use crate::{profile_files, StoreError};

/// Bytes per multipart chunk: above S3's 5 MiB minimum, and the unit of upload memory.
pub const CHUNK_BYTES: usize = 8 << 20;
/// Chunks uploading at once per file: the upload's memory is `CHUNK_BYTES × IN_FLIGHT`.
pub const IN_FLIGHT: usize = 4;

/// Why object_store retried a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// 429, or 503 (S3's SlowDown).
    Throttled,
    /// Another 5xx.
    Server,
    /// The connection failed or timed out.
    Network,
}

impl Retry {
    /// Every reason, for metric labels.
    pub const ALL: [Self; 3] = [Self::Throttled, Self::Server, Self::Network];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Throttled => "throttled",
            Self::Server => "server",
            Self::Network => "network",
        }
    }
}

/// What went wrong with a request that was not retried (or ran out of retries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// 401/403: credentials or permissions.
    Denied,
    /// A create-only put found the object there.
    Conflict,
    /// Anything else: 4xx, exhausted retries, a local read.
    Other,
}

impl Failure {
    /// Every kind, for metric labels.
    pub const ALL: [Self; 3] = [Self::Denied, Self::Conflict, Self::Other];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Denied => "denied",
            Self::Conflict => "conflict",
            Self::Other => "other",
        }
    }

    pub(crate) fn of(error: &object_store::Error) -> Self {
        match error {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => Self::Denied,
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => Self::Conflict,
            _ => Self::Other,
        }
    }
}

/// Told about uploads, for metrics. Called from upload and runtime threads.
pub trait StoreObserver: Send + Sync + fmt::Debug {
    /// `bytes` more reached the store (a chunk or a whole small object).
    fn uploaded(&self, _bytes: u64) {}
    /// A response or transport error object_store retries.
    fn retried(&self, _why: Retry) {}
    /// An operation failed for good.
    fn failed(&self, _why: Failure) {}
}

/// Observes nothing.
#[derive(Debug)]
pub struct Unobserved;

impl StoreObserver for Unobserved {}

/// Connections made on first use and kept: one per bucket and settings, so a process that
/// reads and writes many objects resolves credentials and starts a runtime once per bucket.
#[derive(Debug)]
pub struct Buckets {
    observer: Arc<dyn StoreObserver>,
    connected: Mutex<HashMap<BucketKey, Arc<Bucket>>>,
}

/// A bucket's name and the settings it was connected with.
type BucketKey = (String, Vec<(String, String)>);

impl Buckets {
    /// Connections whose requests report to `observer`.
    pub fn new(observer: Arc<dyn StoreObserver>) -> Self {
        Self {
            observer,
            connected: Mutex::default(),
        }
    }

    /// `name` connected with `options` ([`Bucket::connect`]), the kept connection if there is
    /// one.
    ///
    /// # Errors
    ///
    /// [`Bucket::connect`]'s.
    pub fn get(&self, name: &str, options: &[(String, String)]) -> Result<Arc<Bucket>, StoreError> {
        let mut connected = self
            .connected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (name.to_owned(), options.to_vec());
        if let Some(bucket) = connected.get(&key) {
            return Ok(Arc::clone(bucket));
        }
        let bucket = Arc::new(Bucket::connect(name, options, Arc::clone(&self.observer))?);
        connected.insert(key, Arc::clone(&bucket));
        Ok(bucket)
    }
}

/// A bucket of an S3-compatible store, with credentials and endpoint resolved.
#[derive(Debug)]
pub struct Bucket {
    name: String,
    store: Arc<AmazonS3>,
    runtime: tokio::runtime::Runtime,
    observer: Arc<dyn StoreObserver>,
}

impl Bucket {
    /// Connects to `bucket` with settings from, weakest first: the AWS profile files, the
    /// `AWS_*` environment, then `options` (object_store's S3 keys, e.g. `endpoint`,
    /// `region`, `allow_http`, `conditional_put`). An `http://` endpoint allows plain HTTP.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Config`] for an unknown option or settings object_store refuses,
    /// and [`StoreError::Runtime`] when the runtime's threads cannot start.
    pub fn connect(
        bucket: &str,
        options: &[(String, String)],
        observer: Arc<dyn StoreObserver>,
    ) -> Result<Self, StoreError> {
        // reqwest is built without a default TLS provider: ring, as for PostgreSQL.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut settings = profile_files::profile_settings();
        for (key, value) in std::env::vars() {
            if key.starts_with("AWS_") && !value.is_empty() {
                settings.insert(key.to_ascii_lowercase(), value);
            }
        }
        for (key, value) in options {
            settings.insert(key.to_ascii_lowercase(), value.clone());
        }
        let mut builder = AmazonS3Builder::new().with_bucket_name(bucket);
        let mut endpoint_is_http = false;
        for (key, value) in &settings {
            let parsed: Result<AmazonS3ConfigKey, _> = key.parse();
            match parsed {
                Ok(config_key) => {
                    if matches!(config_key, AmazonS3ConfigKey::Endpoint) {
                        endpoint_is_http = value.starts_with("http://");
                    }
                    builder = builder.with_config(config_key, value);
                }
                // The environment and profile carry keys object_store has no use for.
                Err(_) if key.starts_with("aws_") && !options.iter().any(|(k, _)| k == key) => {}
                Err(_) => {
                    return Err(StoreError::Config {
                        bucket: bucket.to_owned(),
                        reason: format!("unknown object store option {key:?}"),
                    })
                }
            }
        }
        if endpoint_is_http {
            builder = builder.with_allow_http(true);
        }
        let store = builder
            .with_http_connector(Counting {
                observer: Arc::clone(&observer),
            })
            .build()
            .map_err(|source| StoreError::Config {
                bucket: bucket.to_owned(),
                reason: source.to_string(),
            })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bamflow-s3")
            .enable_all()
            .build()
            .map_err(StoreError::Runtime)?;
        Ok(Self {
            name: bucket.to_owned(),
            store: Arc::new(store),
            runtime,
            observer,
        })
    }

    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `s3://` address of object `key`, as errors and logs name it.
    pub fn url_of(&self, key: &str) -> String {
        format!("{S3_SCHEME}{}/{key}", self.name)
    }

    pub(crate) fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }

    pub(crate) fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.store) as Arc<dyn ObjectStore>
    }

    /// A failed request as an I/O error for the engine: "not found" keeps its kind, so the
    /// engine says the input does not exist.
    pub(crate) fn io_error(
        &self,
        op: &'static str,
        key: &str,
        source: object_store::Error,
    ) -> std::io::Error {
        let kind = match source {
            object_store::Error::NotFound { .. } => std::io::ErrorKind::NotFound,
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, self.remote_error(op, key, source))
    }

    fn remote_error(&self, op: &'static str, key: &str, source: object_store::Error) -> StoreError {
        self.observer.failed(Failure::of(&source));
        StoreError::Remote {
            op,
            url: self.url_of(key),
            error: source,
        }
    }

    /// The size of object `key`, or `None` when there is none.
    ///
    /// # Errors
    ///
    /// Returns the store's error other than "not found".
    pub fn size_of(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let path = ObjectPath::from(key);
        match self.runtime.block_on(self.store.head(&path)) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(self.remote_error("head", key, source)),
        }
    }

    /// The content of object `key`, or `None` when there is none.
    ///
    /// # Errors
    ///
    /// Returns the store's error other than "not found".
    pub fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let path = ObjectPath::from(key);
        let read = async {
            let result = self.store.get(&path).await?;
            result.bytes().await
        };
        match self.runtime.block_on(read) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(self.remote_error("get", key, source)),
        }
    }

    /// Writes `bytes` to `key`; with `create_only`, fails with
    /// [`StoreError::AlreadyExists`] instead of replacing an object that is there.
    ///
    /// # Errors
    ///
    /// Returns the store's error.
    pub fn put(&self, key: &str, bytes: Bytes, create_only: bool) -> Result<(), StoreError> {
        let path = ObjectPath::from(key);
        let len = bytes.len() as u64;
        let opts = PutOptions {
            mode: if create_only {
                PutMode::Create
            } else {
                PutMode::Overwrite
            },
            ..PutOptions::default()
        };
        match self
            .runtime
            .block_on(self.store.put_opts(&path, PutPayload::from(bytes), opts))
        {
            Ok(_) => {
                self.observer.uploaded(len);
                Ok(())
            }
            Err(object_store::Error::AlreadyExists { .. }) if create_only => {
                self.observer.failed(Failure::Conflict);
                Err(StoreError::AlreadyExists {
                    url: self.url_of(key),
                })
            }
            Err(source) => Err(self.remote_error("put", key, source)),
        }
    }

    /// The names (last key segment) of the objects directly under `prefix/`.
    ///
    /// # Errors
    ///
    /// Returns the store's error.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let path = ObjectPath::from(prefix);
        let listed = self
            .runtime
            .block_on(self.store.list_with_delimiter(Some(&path)))
            .map_err(|source| self.remote_error("list", prefix, source))?;
        Ok(listed
            .objects
            .into_iter()
            .filter_map(|meta| meta.location.filename().map(str::to_owned))
            .collect())
    }

    /// Deletes object `key` (nothing there is not an error).
    ///
    /// # Errors
    ///
    /// Returns the store's error.
    pub fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = ObjectPath::from(key);
        match self.runtime.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(self.remote_error("delete", key, source)),
        }
    }

    /// Uploads the file `local` to `key`, reading it `CHUNK_BYTES` at a time with at most
    /// `IN_FLIGHT` chunks in memory. A multipart upload's id is in `journal` while it runs, so
    /// a crash's leftover can be aborted by the next run ([`Bucket::abort_pending`]).
    ///
    /// # Errors
    ///
    /// Returns a local read error or the store's error; a failed multipart upload is aborted.
    pub fn upload_file(
        &self,
        local: &Path,
        key: &str,
        journal: &Journal,
    ) -> Result<u64, StoreError> {
        let read_error = |source| StoreError::Read {
            path: local.to_owned(),
            source,
        };
        let mut file = File::open(local).map_err(read_error)?;
        let size = file.metadata().map_err(read_error)?.len();
        if size <= CHUNK_BYTES as u64 {
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes).map_err(read_error)?;
            self.put(key, Bytes::from(bytes), false)?;
            return Ok(size);
        }
        let mut upload = self.start_multipart(key, journal)?;
        loop {
            let chunk = match read_chunk(&mut file) {
                Ok(chunk) => chunk,
                Err(error) => {
                    upload.abort(journal);
                    return Err(read_error(error));
                }
            };
            if chunk.is_empty() {
                break;
            }
            if let Err(error) = upload.put(chunk) {
                upload.abort(journal);
                return Err(error);
            }
        }
        upload.finish(journal)?;
        Ok(size)
    }

    /// Starts a multipart upload to `key`, recorded in `journal` until it is finished or
    /// aborted. Chunks are then given in order with [`Multipart::put`].
    ///
    /// # Errors
    ///
    /// Returns the store's or the journal's error.
    pub fn start_multipart(
        &self,
        key: &str,
        journal: &Journal,
    ) -> Result<Multipart<'_>, StoreError> {
        let path = ObjectPath::from(key);
        let id = self
            .runtime
            .block_on(self.store.create_multipart(&path))
            .map_err(|source| self.remote_error("create multipart upload", key, source))?;
        let upload = Multipart {
            bucket: self,
            path,
            key: key.to_owned(),
            id,
            running: VecDeque::new(),
            parts: Vec::new(),
            next: 0,
        };
        if let Err(error) = journal.begin_multipart(key, &upload.id) {
            upload.abort(journal);
            return Err(error);
        }
        Ok(upload)
    }

    /// Aborts the multipart uploads `journal` says were running when a process died.
    ///
    /// # Errors
    ///
    /// Returns the journal's write error; the store's errors are logged (the upload may be
    /// gone already).
    pub fn abort_pending(&self, journal: &Journal) -> Result<(), StoreError> {
        for (key, id) in journal.pending_multiparts() {
            let path = ObjectPath::from(key.as_str());
            match self
                .runtime
                .block_on(self.store.abort_multipart(&path, &id))
            {
                Ok(()) => tracing::info!(key = %key, "Aborted an interrupted multipart upload."),
                Err(error) => {
                    tracing::warn!(key = %key, %error, "Cannot abort an interrupted multipart upload.");
                }
            }
            journal.end_multipart(&key)?;
        }
        Ok(())
    }
}

/// A multipart upload in progress: chunks upload on the runtime, at most `IN_FLIGHT` at once.
#[derive(Debug)]
pub struct Multipart<'a> {
    bucket: &'a Bucket,
    path: ObjectPath,
    key: String,
    id: String,
    running: VecDeque<tokio::task::JoinHandle<(object_store::Result<PartId>, u64)>>,
    parts: Vec<PartId>,
    next: usize,
}

impl Multipart<'_> {
    /// Uploads the next chunk (at least 5 MiB, but for the last); returns once fewer than
    /// `IN_FLIGHT` chunks are uploading.
    ///
    /// # Errors
    ///
    /// Returns the store's error for an earlier chunk.
    pub fn put(&mut self, chunk: Vec<u8>) -> Result<(), StoreError> {
        let len = chunk.len() as u64;
        let store = Arc::clone(&self.bucket.store);
        let (path, id, index) = (self.path.clone(), self.id.clone(), self.next);
        self.next += 1;
        self.running
            .push_back(self.bucket.runtime.spawn(async move {
                let part = store
                    .put_part(&path, &id, index, PutPayload::from(Bytes::from(chunk)))
                    .await;
                (part, len)
            }));
        while self.running.len() >= IN_FLIGHT {
            self.await_oldest()?;
        }
        Ok(())
    }

    fn await_oldest(&mut self) -> Result<(), StoreError> {
        let Some(handle) = self.running.pop_front() else {
            return Ok(());
        };
        let (part, len) = self
            .bucket
            .runtime
            .block_on(handle)
            .map_err(|e| StoreError::Task(e.to_string()))?;
        let part =
            part.map_err(|source| self.bucket.remote_error("upload part", &self.key, source))?;
        self.parts.push(part);
        self.bucket.observer.uploaded(len);
        let _ = bamflow_engine::faults::point("chunk-uploaded");
        Ok(())
    }

    /// Waits for the chunks and completes the upload: the object appears whole.
    ///
    /// # Errors
    ///
    /// Returns the store's error; the upload is then aborted.
    pub fn finish(mut self, journal: &Journal) -> Result<(), StoreError> {
        while !self.running.is_empty() {
            if let Err(error) = self.await_oldest() {
                self.abort(journal);
                return Err(error);
            }
        }
        let parts = std::mem::take(&mut self.parts);
        let completed = self.bucket.runtime.block_on(
            self.bucket
                .store
                .complete_multipart(&self.path, &self.id, parts),
        );
        match completed {
            Ok(_) => journal.end_multipart(&self.key),
            Err(source) => {
                let error =
                    self.bucket
                        .remote_error("complete multipart upload", &self.key, source);
                self.abort(journal);
                Err(error)
            }
        }
    }

    /// Abandons the upload: the store drops its chunks. Best effort; the journal keeps the id
    /// for a later run when the store cannot be told.
    pub fn abort(self, journal: &Journal) {
        for handle in &self.running {
            handle.abort();
        }
        let aborted = self
            .bucket
            .runtime
            .block_on(self.bucket.store.abort_multipart(&self.path, &self.id));
        match aborted {
            Ok(()) => {
                let _ = journal.end_multipart(&self.key);
            }
            Err(error) => {
                tracing::warn!(key = %self.key, %error, "Cannot abort a multipart upload; the next run will.");
            }
        }
    }
}

/// Checks that `key` is an S3 setting object_store knows (`endpoint`, `region`, …).
///
/// # Errors
///
/// Says the key is unknown.
pub fn check_option(key: &str) -> Result<(), String> {
    key.to_ascii_lowercase()
        .parse::<AmazonS3ConfigKey>()
        .map(|_| ())
        .map_err(|_| format!("{key:?} is not an S3 setting (e.g. endpoint, region, allow_http)"))
}

/// Reads up to `CHUNK_BYTES`, fewer only at the end of the file.
fn read_chunk(file: &mut File) -> std::io::Result<Vec<u8>> {
    let mut chunk = Vec::with_capacity(CHUNK_BYTES);
    file.by_ref()
        .take(CHUNK_BYTES as u64)
        .read_to_end(&mut chunk)?;
    Ok(chunk)
}

/// object_store's reqwest client, counting the responses and errors it will retry.
#[derive(Debug)]
struct Counting {
    observer: Arc<dyn StoreObserver>,
}

impl HttpConnector for Counting {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(CountingService {
            inner,
            observer: Arc::clone(&self.observer),
        }))
    }
}

#[derive(Debug)]
struct CountingService {
    inner: HttpClient,
    observer: Arc<dyn StoreObserver>,
}

#[async_trait::async_trait]
impl HttpService for CountingService {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let response = self.inner.execute(request).await;
        match &response {
            Ok(response) => {
                let status = response.status();
                if status.as_u16() == 429 || status.as_u16() == 503 {
                    self.observer.retried(Retry::Throttled);
                } else if status.is_server_error() {
                    self.observer.retried(Retry::Server);
                }
            }
            Err(error) if !matches!(error.kind(), HttpErrorKind::Unknown) => {
                self.observer.retried(Retry::Network);
            }
            Err(_) => {}
        }
        response
    }
}
