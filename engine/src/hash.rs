//! What a source file holds, as one short hash: how the daemon tells the same content dropped
//! twice, and a checkpoint tells an input that changed under it.

use std::io::{self, Read};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest, Sha256};

use crate::input::{Input, SMALL_READ_AHEAD};

/// Bytes hashed from each end of a file, and from each of the samples between.
const EDGE_BYTES: u64 = 1 << 20;
const SAMPLE_BYTES: u64 = 64 << 10;
const SAMPLES: u64 = 16;

/// SHA-256 over the size and samples of a file: both ends (1 MiB each) and 16 slices of
/// 64 KiB between. Reading whole files twice would double the I/O of a 100 GB BAM; BGZF
/// compression makes any content change ripple through the compressed bytes and the size, so
/// the samples tell different files apart.
///
/// # Errors
///
/// Returns the I/O error of reading the input.
pub fn content_hash(file: &Input) -> io::Result<String> {
    let size = file.len()?;
    let mut hasher = Sha256::new();
    hasher.update(size.to_le_bytes());
    let mut buf = Vec::new();
    // One positioned read per sample: on an object store, one ranged request each.
    let mut take = |offset: u64, len: u64| -> io::Result<()> {
        let len = len.min(size.saturating_sub(offset));
        buf.resize(usize::try_from(len).map_err(io::Error::other)?, 0);
        file.read_exact_at(&mut buf, offset)?;
        hasher.update(&buf);
        Ok(())
    };
    if size <= 2 * EDGE_BYTES + SAMPLES * SAMPLE_BYTES {
        take(0, size)?;
    } else {
        take(0, EDGE_BYTES)?;
        let stride = (size - 2 * EDGE_BYTES) / (SAMPLES + 1);
        for i in 1..=SAMPLES {
            take(EDGE_BYTES + i * stride, SAMPLE_BYTES)?;
        }
        take(size - EDGE_BYTES, EDGE_BYTES)?;
    }
    Ok(hex(&hasher.finalize()))
}

/// SHA-256 of a whole file, as `sha256sum` prints it, and the bytes read to make it.
///
/// # Errors
///
/// Returns the I/O error of reading the file.
pub fn file_sha256(path: &Path) -> io::Result<(String, u64)> {
    let mut file = Input::open(path)?.reader_from(0, SMALL_READ_AHEAD)?;
    let mut hasher = Sha256::new();
    let bytes = feed(&mut file, &mut hasher)?;
    Ok((hex(&hasher.finalize()), bytes))
}

/// Hashes everything `reader` yields; returns the bytes read.
fn feed(reader: &mut impl Read, hasher: &mut Sha256) -> io::Result<u64> {
    let mut buf = vec![0; 1 << 20];
    let mut total = 0;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                hasher.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A SHA-256 of the whole input, made from the bytes the conversion's reader reads anyway:
/// [`HashedFile`] feeds it, and [`FullHash::finish`] reads only what the reader did not (the
/// header before the first record's block, and the EOF block's tail).
#[derive(Debug)]
pub(crate) struct FullHash {
    state: Mutex<HashState>,
}

#[derive(Debug)]
struct HashState {
    hasher: Sha256,
    /// Bytes hashed so far, from the start of the file; `None` once a read skipped some.
    position: Option<u64>,
}

impl FullHash {
    /// A hash that has read the file up to `start`, where the reader begins.
    pub(crate) fn starting_at(path: &Path, start: u64) -> io::Result<Arc<Self>> {
        let mut hasher = Sha256::new();
        let head = Input::open(path)?.reader_from(0, SMALL_READ_AHEAD)?;
        let read = feed(&mut head.take(start), &mut hasher)?;
        Ok(Arc::new(Self {
            state: Mutex::new(HashState {
                hasher,
                position: (read == start).then_some(start),
            }),
        }))
    }

    fn update(&self, at: u64, bytes: &[u8]) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match state.position {
            Some(position) if position == at => {
                state.hasher.update(bytes);
                state.position = Some(at + bytes.len() as u64);
            }
            _ => state.position = None,
        }
    }

    /// The file's hash: what the reader read, then the rest of the file. `None` when the
    /// reader's reads were not one contiguous run from where it started.
    pub(crate) fn finish(&self, path: &Path) -> io::Result<Option<String>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(position) = state.position else {
            return Ok(None);
        };
        let mut rest = Input::open(path)?.reader_from(position, SMALL_READ_AHEAD)?;
        feed(&mut rest, &mut state.hasher)?;
        Ok(Some(hex(&state.hasher.clone().finalize())))
    }
}

/// The input, feeding a [`FullHash`] with every byte read through it.
pub(crate) struct HashedFile {
    file: Box<dyn Read + Send>,
    /// Offset of the next byte read.
    offset: u64,
    hash: Option<Arc<FullHash>>,
}

impl HashedFile {
    /// `file`, positioned at `offset`; `hash` (if any) has read the file up to there.
    pub(crate) fn new(
        file: Box<dyn Read + Send>,
        offset: u64,
        hash: Option<Arc<FullHash>>,
    ) -> Self {
        Self { file, offset, hash }
    }
}

impl Read for HashedFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        if let Some(hash) = &self.hash {
            hash.update(self.offset, &buf[..n]);
        }
        self.offset += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::{self, File};
    use std::io::{Seek, SeekFrom};

    use super::*;

    #[test]
    fn content_hash_follows_content_not_name() {
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(dir.path().join("a"), &big).unwrap();
        fs::write(dir.path().join("b"), &big).unwrap();
        let mut changed = big.clone();
        changed[4_999_999] ^= 1;
        fs::write(dir.path().join("c"), &changed).unwrap();
        let h = |n: &str| content_hash(&Input::open(&dir.path().join(n)).unwrap()).unwrap();
        assert_eq!(h("a"), h("b"));
        assert_ne!(h("a"), h("c"));
        fs::write(dir.path().join("small"), b"x").unwrap();
        assert_eq!(h("small").len(), 64);
    }

    #[test]
    fn the_full_hash_of_a_read_equals_sha256sum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 13 % 253) as u8).collect();
        fs::write(&path, &data).unwrap();
        let (whole, bytes) = file_sha256(&path).unwrap();
        assert_eq!(bytes, data.len() as u64);
        let sha256sum = std::process::Command::new("sha256sum")
            .arg(&path)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&sha256sum.stdout).starts_with(&whole));

        // A reader that starts at 1000 and stops short of the end: the rest is read by finish.
        let hash = FullHash::starting_at(&path, 1000).unwrap();
        let mut file = File::open(&path).unwrap();
        file.seek(SeekFrom::Start(1000)).unwrap();
        let mut reader = HashedFile::new(Box::new(file), 1000, Some(Arc::clone(&hash)));
        let mut buf = vec![0; 2_000_000];
        reader.read_exact(&mut buf).unwrap();
        assert_eq!(hash.finish(&path).unwrap().unwrap(), whole);

        // A reader that skipped bytes cannot say.
        let hash = FullHash::starting_at(&path, 1000).unwrap();
        hash.update(5000, b"x");
        assert_eq!(hash.finish(&path).unwrap(), None);
    }
}
