//! `s3://bucket/key.bam` inputs: the engine reads an object with ranged GETs, so a BAM already
//! in the lake converts without a local copy.
//!
//! The object's size, ETag and time are taken once, by its HEAD; every later read asks for
//! that ETag (`If-Match`), so an object replaced during a conversion fails the conversion
//! instead of mixing two files. The sequential reader keeps requests in flight ahead of the
//! engine's reader thread, as many as its read-ahead (sized by the batch memory) allows.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bamflow_engine::input::{Opener, RemoteObject};
use bytes::{Buf, Bytes};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use tokio::sync::mpsc;

use crate::bucket::{Bucket, Buckets, StoreObserver, CHUNK_BYTES};
use crate::location::S3_SCHEME;

/// Opens `s3://` inputs, one connection per bucket, with the same settings as outputs.
pub struct S3Opener {
    options: Vec<(String, String)>,
    buckets: Buckets,
}

impl S3Opener {
    /// An opener whose buckets take `options` over the AWS environment and profile files
    /// (see [`Bucket::connect`]).
    pub fn new(options: Vec<(String, String)>, observer: Arc<dyn StoreObserver>) -> Self {
        Self {
            options,
            buckets: Buckets::new(observer),
        }
    }

    /// Registers an opener for `s3://` with the engine: every conversion, scan and plan of this
    /// process can then read `s3://` inputs.
    pub fn register(options: Vec<(String, String)>, observer: Arc<dyn StoreObserver>) {
        bamflow_engine::input::register(Arc::new(Self::new(options, observer)));
    }
}

impl Opener for S3Opener {
    fn scheme(&self) -> &str {
        S3_SCHEME
    }

    fn open(&self, url: &str) -> io::Result<Arc<dyn RemoteObject>> {
        let (bucket, key) = url
            .strip_prefix(S3_SCHEME)
            .and_then(|rest| rest.split_once('/'))
            .filter(|(bucket, key)| !bucket.is_empty() && !key.is_empty())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{url} is not an s3://BUCKET/KEY object address"),
                )
            })?;
        let bucket = self
            .buckets
            .get(bucket, &self.options)
            .map_err(io::Error::other)?;
        Ok(Arc::new(S3Object::open(bucket, key)?))
    }
}

/// One version of one object.
#[derive(Debug)]
pub struct S3Object {
    bucket: Arc<Bucket>,
    key: String,
    size: u64,
    modified: SystemTime,
    e_tag: Option<String>,
}

impl S3Object {
    /// Takes the object's size, time and ETag from a HEAD request.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] when there is no such object, else the store's error.
    pub fn open(bucket: Arc<Bucket>, key: &str) -> io::Result<Self> {
        let path = ObjectPath::from(key);
        let meta = bucket
            .runtime()
            .block_on(bucket.store().head(&path))
            .map_err(|error| bucket.io_error("head", key, error))?;
        let seconds = u64::try_from(meta.last_modified.timestamp()).unwrap_or(0);
        Ok(Self {
            key: key.to_owned(),
            size: meta.size,
            modified: SystemTime::UNIX_EPOCH + Duration::from_secs(seconds),
            e_tag: meta.e_tag,
            bucket,
        })
    }

    fn options(&self, range: Range<u64>) -> GetOptions {
        get_options(self.e_tag.clone(), range)
    }
}

/// A ranged GET of the version whose ETag is `e_tag`.
fn get_options(e_tag: Option<String>, range: Range<u64>) -> GetOptions {
    GetOptions {
        if_match: e_tag,
        range: Some(GetRange::Bounded(range)),
        ..GetOptions::default()
    }
}

impl RemoteObject for S3Object {
    fn size(&self) -> u64 {
        self.size
    }

    fn modified(&self) -> SystemTime {
        self.modified
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        if end > self.size {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if buf.is_empty() {
            return Ok(());
        }
        let bytes = self
            .bucket
            .runtime()
            .block_on(fetch(
                self.bucket.store(),
                ObjectPath::from(self.key.as_str()),
                self.options(offset..end),
            ))
            .map_err(|error| self.bucket.io_error("read", &self.key, error))?;
        if bytes.len() != buf.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.copy_from_slice(&bytes);
        Ok(())
    }

    fn reader_from(&self, start: u64, read_ahead: usize) -> io::Result<Box<dyn Read + Send>> {
        // Requests of one upload chunk each; at least two in flight, so one is always coming.
        let in_flight = (read_ahead / CHUNK_BYTES).max(2);
        // One finished chunk waits in the channel; `in_flight` more are being fetched.
        let (sender, receiver) = mpsc::channel(1);
        let store = self.bucket.store();
        let path = ObjectPath::from(self.key.as_str());
        let (bucket, key, size) = (Arc::clone(&self.bucket), self.key.clone(), self.size);
        let e_tag = self.e_tag.clone();
        // The next chunk's request, from `from` on, and where the one after starts.
        let options = move |from: u64| {
            let range = from..(from + CHUNK_BYTES as u64).min(size);
            (range.end, get_options(e_tag.clone(), range))
        };
        let task = self.bucket.runtime().spawn(async move {
            let mut next = start;
            let mut pending: VecDeque<AbortOnDrop<object_store::Result<Bytes>>> = VecDeque::new();
            loop {
                while pending.len() < in_flight && next < size {
                    let (end, get) = options(next);
                    next = end;
                    let fetching = fetch(Arc::clone(&store), path.clone(), get);
                    pending.push_back(AbortOnDrop(tokio::spawn(fetching)));
                }
                let Some(mut oldest) = pending.pop_front() else {
                    return;
                };
                let result = match (&mut oldest.0).await {
                    Ok(result) => result.map_err(|error| bucket.io_error("read", &key, error)),
                    Err(join) => Err(io::Error::other(join)),
                };
                let failed = result.is_err();
                if sender.send(result).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Box::new(Prefetched {
            receiver,
            current: Bytes::new(),
            _task: AbortOnDrop(task),
        }))
    }
}

async fn fetch(
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    options: GetOptions,
) -> object_store::Result<Bytes> {
    store.get_opts(&path, options).await?.bytes().await
}

/// A task that stops when its handle is dropped (a reader closed early stops fetching).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The sequential reader: chunks in order, as the fetching task sends them.
struct Prefetched {
    receiver: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    _task: AbortOnDrop<()>,
}

impl Read for Prefetched {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}
