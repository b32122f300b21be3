//! Where a conversion reads its BAM: a local file, or an object in a store that another crate
//! opens (`bamflow-store` opens `s3://`).
//!
//! The engine speaks no network protocol: a program that links a store registers an
//! [`Opener`] for its URL scheme, and every place the engine reads an input — the EOF check,
//! the sampled content hash, the profile, the reader, the split planner — goes through
//! [`Input`], so a BAM already in a data lake converts without a local copy.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

/// An object a store opened: its size and version are fixed when opened, and every read is of
/// that version (a store that can, fails reads once the object is replaced).
pub trait RemoteObject: Send + Sync + fmt::Debug {
    /// Size in bytes.
    fn size(&self) -> u64;

    /// When the object was last written, as the store says.
    fn modified(&self) -> SystemTime;

    /// Fills `buf` from `offset` (one ranged read): the ends and the content-hash samples.
    ///
    /// # Errors
    ///
    /// The store's error, or [`io::ErrorKind::UnexpectedEof`] past the end.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// The bytes from `start` to the end, read ahead of the consumer by about `read_ahead`
    /// bytes (the reader thread must never wait on one request at a time).
    ///
    /// # Errors
    ///
    /// The store's error.
    fn reader_from(&self, start: u64, read_ahead: usize) -> io::Result<Box<dyn Read + Send>>;
}

/// Opens the objects of one URL scheme.
pub trait Opener: Send + Sync {
    /// The scheme with its separator, e.g. `s3://`.
    fn scheme(&self) -> &str;

    /// Opens `url` (which starts with [`Opener::scheme`]).
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] when there is no such object, else the store's error.
    fn open(&self, url: &str) -> io::Result<Arc<dyn RemoteObject>>;
}

static OPENERS: RwLock<Vec<Arc<dyn Opener>>> = RwLock::new(Vec::new());

/// Makes inputs of `opener`'s scheme readable by every conversion, scan and plan of this
/// process, replacing an opener registered before for the same scheme.
pub fn register(opener: Arc<dyn Opener>) {
    let mut openers = OPENERS.write().unwrap_or_else(PoisonError::into_inner);
    openers.retain(|known| known.scheme() != opener.scheme());
    openers.push(opener);
}

/// Whether `path` is a URL (`scheme://…`) rather than a local path.
pub fn is_url(path: &Path) -> bool {
    url_scheme(path).is_some()
}

fn url_scheme(path: &Path) -> Option<&str> {
    let text = path.to_str()?;
    let (scheme, _) = text.split_once("://")?;
    (!scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+'))
    .then_some(scheme)
}

/// An opened input.
#[derive(Debug)]
pub enum Input {
    /// A local file.
    Local(File),
    /// An object of a registered store.
    Remote(Arc<dyn RemoteObject>),
}

impl Input {
    /// Opens `path`: a URL through the opener registered for its scheme, anything else as a
    /// local file.
    ///
    /// # Errors
    ///
    /// The opener's or the file system's error; [`io::ErrorKind::Unsupported`] for a URL whose
    /// scheme nothing registered.
    pub fn open(path: &Path) -> io::Result<Self> {
        let Some(scheme) = url_scheme(path) else {
            return File::open(path).map(Self::Local);
        };
        let text = path.to_str().unwrap_or_default();
        let opener = OPENERS
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|opener| text.starts_with(opener.scheme()))
            .cloned();
        match opener {
            Some(opener) => opener.open(text).map(Self::Remote),
            None => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("this program cannot read {scheme}:// inputs"),
            )),
        }
    }

    /// Size in bytes.
    ///
    /// # Errors
    ///
    /// The error of `fstat`.
    pub fn len(&self) -> io::Result<u64> {
        match self {
            Self::Local(file) => Ok(file.metadata()?.len()),
            Self::Remote(object) => Ok(object.size()),
        }
    }

    /// Whether the input holds no byte.
    ///
    /// # Errors
    ///
    /// The error of `fstat`.
    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// When the input was last written.
    ///
    /// # Errors
    ///
    /// The error of `fstat`.
    pub fn modified(&self) -> io::Result<SystemTime> {
        match self {
            Self::Local(file) => file.metadata()?.modified(),
            Self::Remote(object) => Ok(object.modified()),
        }
    }

    /// Fills `buf` from `offset`.
    ///
    /// # Errors
    ///
    /// The read's error; [`io::ErrorKind::UnexpectedEof`] past the end.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self {
            Self::Local(file) => std::os::unix::fs::FileExt::read_exact_at(file, buf, offset),
            Self::Remote(object) => object.read_exact_at(buf, offset),
        }
    }

    /// Reads from `start` on; a remote input reads about `read_ahead` bytes ahead.
    ///
    /// # Errors
    ///
    /// The seek's or the store's error.
    pub fn reader_from(self, start: u64, read_ahead: usize) -> io::Result<Box<dyn Read + Send>> {
        match self {
            Self::Local(mut file) => {
                file.seek(SeekFrom::Start(start))?;
                Ok(Box::new(file))
            }
            Self::Remote(object) => object.reader_from(start, read_ahead),
        }
    }
}

/// Read-ahead for headers and samples: a few requests' worth, not the batch memory.
pub(crate) const SMALL_READ_AHEAD: usize = 8 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Memory(Vec<u8>);

    impl RemoteObject for Memory {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn modified(&self) -> SystemTime {
            SystemTime::UNIX_EPOCH
        }
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let start = usize::try_from(offset).map_err(io::Error::other)?;
            let bytes = self
                .0
                .get(start..start + buf.len())
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(bytes);
            Ok(())
        }
        fn reader_from(&self, start: u64, _: usize) -> io::Result<Box<dyn Read + Send>> {
            let start = usize::try_from(start).map_err(io::Error::other)?;
            Ok(Box::new(io::Cursor::new(self.0[start..].to_vec())))
        }
    }

    struct MemoryOpener;

    impl Opener for MemoryOpener {
        fn scheme(&self) -> &str {
            "mem://"
        }
        fn open(&self, url: &str) -> io::Result<Arc<dyn RemoteObject>> {
            match url {
                "mem://x" => Ok(Arc::new(Memory(b"0123456789".to_vec()))),
                _ => Err(io::ErrorKind::NotFound.into()),
            }
        }
    }

    #[test]
    fn urls_go_to_their_scheme_s_opener_and_paths_to_files() {
        assert!(is_url(Path::new("s3://bucket/key.bam")));
        assert!(!is_url(Path::new("/data/in.bam")));
        assert!(!is_url(Path::new("odd:name.bam")));

        let error = Input::open(Path::new("nowhere://x")).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::Unsupported);
        assert!(error.to_string().contains("nowhere://"), "{error}");

        register(Arc::new(MemoryOpener));
        let input = Input::open(Path::new("mem://x")).unwrap();
        assert_eq!(input.len().unwrap(), 10);
        let mut tail = [0; 3];
        input.read_exact_at(&mut tail, 7).unwrap();
        assert_eq!(&tail, b"789");
        let mut rest = String::new();
        input
            .reader_from(4, 0)
            .unwrap()
            .read_to_string(&mut rest)
            .unwrap();
        assert_eq!(rest, "456789");
        let missing = Input::open(Path::new("mem://y")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }
}
