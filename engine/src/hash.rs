//! What a source file holds, as one short hash: how the daemon tells the same content dropped
//! twice, and a checkpoint tells an input that changed under it.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::input::{Input, SMALL_READ_AHEAD};
use crate::pipeline::busy::{BusyStage, BusyTimes, SerialThread};

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

/// Bytes read from the file at a time, and shared with the hashing thread.
const BLOCK_BYTES: usize = 1 << 20;
/// Blocks queued for hashing before the reader waits: a bound on the memory they hold.
const QUEUED_BLOCKS: usize = 2;

/// The input, buffered in [`BLOCK_BYTES`] blocks, feeding a [`FullHash`] with every byte read
/// through it.
///
/// SHA-256 runs on a thread of its own, over the very blocks the reader reads from (shared,
/// not copied). On the reader thread it was about a third of that thread's CPU, the serial
/// bound of a conversion on many cores. Drop the reader before [`FullHash::finish`]: dropping
/// waits until every block read has been hashed.
pub(crate) struct HashedFile {
    file: Box<dyn Read + Send>,
    /// Offset of the first byte of `block`.
    block_offset: u64,
    block: Arc<Vec<u8>>,
    /// Bytes of `block` already read.
    used: usize,
    /// Blocks handed to the hashing thread, reused once it is done with them.
    handed: VecDeque<Arc<Vec<u8>>>,
    hasher: Option<Hasher>,
}

/// Where blocks go to be hashed: a thread, or (when no thread could start) this one.
enum Hasher {
    Thread {
        blocks: Option<crossbeam_channel::Sender<(u64, Arc<Vec<u8>>)>>,
        thread: Option<JoinHandle<()>>,
    },
    Inline(Arc<FullHash>),
}

impl Hasher {
    fn start(hash: Arc<FullHash>, busy: Option<Arc<BusyTimes>>) -> Self {
        let (blocks, queued) = crossbeam_channel::bounded::<(u64, Arc<Vec<u8>>)>(QUEUED_BLOCKS);
        let for_thread = Arc::clone(&hash);
        let spawned = thread::Builder::new()
            .name("bamflow-hash".into())
            .spawn(move || {
                let hash_all = || {
                    for (at, block) in queued {
                        let started = Instant::now();
                        for_thread.update(at, &block);
                        if let Some(busy) = &busy {
                            busy.add(BusyStage::Read, started.elapsed());
                        }
                    }
                };
                match &busy {
                    Some(busy) => busy.on_thread(SerialThread::Hash, hash_all),
                    None => hash_all(),
                }
            });
        match spawned {
            Ok(thread) => Self::Thread {
                blocks: Some(blocks),
                thread: Some(thread),
            },
            Err(error) => {
                tracing::debug!(%error, "No thread for hashing the input; hashing as it is read.");
                Self::Inline(hash)
            }
        }
    }

    fn hash(&self, at: u64, block: &Arc<Vec<u8>>) {
        match self {
            Self::Thread { blocks, .. } => {
                // The thread only stops when the sender is dropped, so sending cannot fail.
                if let Some(blocks) = blocks {
                    let _ = blocks.send((at, Arc::clone(block)));
                }
            }
            Self::Inline(hash) => hash.update(at, block),
        }
    }
}

impl Drop for Hasher {
    fn drop(&mut self) {
        if let Self::Thread { blocks, thread } = self {
            drop(blocks.take());
            if let Some(thread) = thread.take() {
                // A panic while hashing leaves the hash short of bytes, which finish reads.
                let _ = thread.join();
            }
        }
    }
}

impl HashedFile {
    /// `file`, positioned at `offset`; `hash` (if any) has read the file up to there. Hashing
    /// time is added to `busy`'s read stage.
    pub(crate) fn new(
        file: Box<dyn Read + Send>,
        offset: u64,
        hash: Option<Arc<FullHash>>,
        busy: Option<Arc<BusyTimes>>,
    ) -> Self {
        Self {
            file,
            block_offset: offset,
            block: Arc::new(Vec::new()),
            used: 0,
            handed: VecDeque::new(),
            hasher: hash.map(|hash| Hasher::start(hash, busy)),
        }
    }

    /// Reads the next block; an empty block at end of file.
    fn refill(&mut self) -> io::Result<()> {
        let mut buffer = self.spare_buffer();
        buffer.resize(BLOCK_BYTES, 0);
        let n = loop {
            match self.file.read(&mut buffer) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                result => break result?,
            }
        };
        buffer.truncate(n);
        self.block_offset += self.block.len() as u64;
        let block = std::mem::replace(&mut self.block, Arc::new(buffer));
        self.handed.push_back(block);
        self.used = 0;
        if let Some(hasher) = &self.hasher {
            hasher.hash(self.block_offset, &self.block);
        }
        Ok(())
    }

    /// The oldest retired block's buffer, once no one else holds it, or a new one.
    fn spare_buffer(&mut self) -> Vec<u8> {
        while self.handed.len() > QUEUED_BLOCKS + 1 {
            self.handed.pop_front();
        }
        match self.handed.front().map(Arc::strong_count) {
            Some(1) => self
                .handed
                .pop_front()
                .and_then(|block| Arc::try_unwrap(block).ok())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

impl Read for HashedFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.used == self.block.len() {
            self.refill()?;
        }
        let available = &self.block[self.used..];
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.used += n;
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
        let mut reader = HashedFile::new(Box::new(file), 1000, Some(Arc::clone(&hash)), None);
        let mut buf = vec![0; 2_000_000];
        reader.read_exact(&mut buf).unwrap();
        assert_eq!(&buf[..], &data[1000..2_001_000]);
        drop(reader);
        assert_eq!(hash.finish(&path).unwrap().unwrap(), whole);

        // A reader that skipped bytes cannot say.
        let hash = FullHash::starting_at(&path, 1000).unwrap();
        hash.update(5000, b"x");
        assert_eq!(hash.finish(&path).unwrap(), None);
    }
}
