//! The ledger: every file the daemon has seen, and what became of it.
//!
//! An append-only JSON Lines file in `state_dir`: one entry per event (converting, success,
//! failure, duplicate), each fsynced, so a crash loses at most the line being written — and a
//! torn last line is skipped on load. The latest entry per path is its state. The same content
//! dropped again (under any name) is found by its content hash and not converted twice.
//!
//! The file is the only copy: a daemon that runs for years must not hold one entry per file it
//! has ever seen. In memory there is a fixed-size Bloom filter of the paths and content hashes
//! that have a line; a new file — the common case — misses it and costs no read, and a hit
//! (a duplicate, a retry, or a rare false positive) is confirmed by reading the file, looking
//! for the key as bytes before parsing a line.
//!
//! Several daemons may share one `state_dir` (and so one ledger). The file is the truth: each
//! process adds every line to its filter as it appears, its own included, and checks for a
//! duplicate and records its attempt under an exclusive `flock` of the file
//! ([`Ledger::exclusive`]), after reading what the others appended. A `converting` entry
//! carries its process id, so the same content is not converted by two processes at once
//! while its converter lives.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use fastbloom::BloomFilter;
use serde::{Deserialize, Serialize};

use bamflow_engine::dataset;

/// Why the ledger could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot open the ledger {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot append to the ledger {}", path.display())]
    Append {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What became of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileState {
    Converting,
    Success,
    Failure,
    Duplicate,
}

/// One ledger line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub time: String,
    pub watch: String,
    pub path: PathBuf,
    pub size: u64,
    /// The sampled hash ([`bamflow_engine::hash::content_hash`]): a candidate key only.
    pub content_hash: String,
    /// SHA-256 of the whole file, when known: what makes a duplicate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub state: FileState,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_read: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_written: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<PathBuf>,
    /// For a `converting` entry: the process converting it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// For a duplicate: the file whose conversion it repeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Entry {
    /// A new entry for `path` in `state`, stamped now.
    pub fn new(watch: &str, path: &Path, size: u64, content_hash: &str, state: FileState) -> Self {
        Self {
            time: dataset::timestamp(SystemTime::now()),
            watch: watch.to_owned(),
            path: path.to_owned(),
            size,
            content_hash: content_hash.to_owned(),
            sha256: None,
            state,
            attempts: 0,
            records_read: None,
            records_written: None,
            output: None,
            pid: (state == FileState::Converting).then(std::process::id),
            duplicate_of: None,
            error: None,
        }
    }
}

/// An exclusive `flock` on the ledger file, released when dropped.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

/// Bits of the filter of keys seen: 1 MiB, under 1% false positives up to ~400,000 files (two
/// keys each); past that a hit costs a read of the file more often, never a wrong answer.
const FILTER_BITS: usize = 8 << 20;
/// Optimal for ~800,000 keys in 8 Mibit: (bits / keys) · ln 2.
const FILTER_HASHES: u32 = 7;

/// An empty filter whose memory is all written now, so that the daemon's RSS is as large
/// after its first file as after its millionth.
fn filter() -> BloomFilter {
    // Not `vec![0; n]`: calloc's pages would be mapped one by one as keys land on them.
    let bits = (0..FILTER_BITS / 64)
        .map(|_| std::hint::black_box(0u64))
        .collect();
    BloomFilter::from_vec(bits).hashes(FILTER_HASHES)
}

/// What a ledger line is looked up by.
#[derive(Clone, Copy)]
enum Key<'a> {
    Hash(&'a str),
    Path(&'a Path),
}

impl Key<'_> {
    /// The key as it appears in a line's JSON, to find before parsing.
    fn needle(self) -> Vec<u8> {
        // Serializing a string or a path cannot fail; an empty needle only means every line
        // is parsed.
        match self {
            Self::Hash(hash) => serde_json::to_vec(hash).unwrap_or_default(),
            Self::Path(path) => serde_json::to_vec(path).unwrap_or_default(),
        }
    }

    fn matches(self, entry: &Entry) -> bool {
        match self {
            Self::Hash(hash) => entry.content_hash == hash,
            Self::Path(path) => entry.path == path,
        }
    }
}

/// The two keys of a line, read without building an [`Entry`].
#[derive(Deserialize)]
struct Keys<'a> {
    #[serde(borrow)]
    path: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    content_hash: std::borrow::Cow<'a, str>,
}

/// The ledger file, and a fixed-size filter of what it holds.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    file: File,
    /// `("hash", h)` and `("path", p)` of every line read.
    seen: BloomFilter,
    /// Bytes of the file read so far (whole lines only).
    read_offset: u64,
    /// Content hashes a worker of this process is converting right now, with the path it
    /// converts (not persisted; at most `max_concurrent_files`).
    converting: HashMap<String, PathBuf>,
}

impl Ledger {
    /// Opens (or creates) `state_dir/ledger.jsonl` and reads it.
    ///
    /// # Errors
    ///
    /// Returns [`LedgerError::Open`] when the file cannot be opened or read.
    pub fn open(state_dir: &Path) -> Result<Self, LedgerError> {
        let path = state_dir.join("ledger.jsonl");
        let open = |source| LedgerError::Open {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(open)?;
        let mut ledger = Self {
            path: path.clone(),
            file,
            seen: filter(),
            read_offset: 0,
            converting: HashMap::new(),
        };
        ledger.read_new().map_err(open)?;
        Ok(ledger)
    }

    /// Adds the keys of the whole lines appended since the last read, by any process.
    fn read_new(&mut self) -> io::Result<()> {
        let mut file = File::open(&self.path)?;
        file.seek(SeekFrom::Start(self.read_offset))?;
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            // A line still being written (or torn by a crash) waits for its newline.
            if n == 0 || line.last() != Some(&b'\n') {
                return Ok(());
            }
            let offset = self.read_offset;
            self.read_offset += n as u64;
            match serde_json::from_slice::<Keys>(&line) {
                Ok(keys) => {
                    self.seen.insert(&("hash", &*keys.content_hash));
                    self.seen.insert(&("path", Path::new(&*keys.path)));
                }
                Err(error) => {
                    tracing::warn!(path = %self.path.display(), offset, %error, "Skipping unreadable ledger line.")
                }
            }
        }
    }

    fn may_hold(&self, key: Key) -> bool {
        match key {
            Key::Hash(hash) => self.seen.contains(&("hash", hash)),
            Key::Path(path) => self.seen.contains(&("path", path)),
        }
    }

    /// The last entry for `key`, read from the file (the lines read so far).
    fn last(&self, key: Key) -> io::Result<Option<Entry>> {
        let mut last = None;
        self.each(key, |entry| last = Some(entry))?;
        Ok(last)
    }

    /// Calls `found` with every entry for `key`, oldest first. Unreadable lines were reported
    /// when first read and are passed over.
    fn each(&self, key: Key, mut found: impl FnMut(Entry)) -> io::Result<()> {
        if !self.may_hold(key) {
            return Ok(());
        }
        let needle = key.needle();
        let finder = memchr::memmem::Finder::new(&needle);
        let mut reader = BufReader::new(File::open(&self.path)?.take(self.read_offset));
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                return Ok(());
            }
            if finder.find(&line).is_none() {
                continue;
            }
            if let Ok(entry) = serde_json::from_slice::<Entry>(&line) {
                if key.matches(&entry) {
                    found(entry);
                }
            }
        }
    }

    /// Takes the file's exclusive lock and reads what other processes appended, so a check and
    /// the entry recording its outcome happen as one step across processes.
    ///
    /// # Errors
    ///
    /// Returns [`LedgerError::Open`] when the file cannot be locked or read.
    pub fn exclusive(&mut self) -> Result<FileLock, LedgerError> {
        let path = self.path.clone();
        let open = |source| LedgerError::Open { path, source };
        let file = match File::open(&self.path).and_then(|file| {
            rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
            self.read_new()?;
            Ok(file)
        }) {
            Ok(file) => file,
            Err(e) => return Err(open(e)),
        };
        Ok(FileLock { _file: file })
    }

    /// Where this content is being converted now, by a worker of this process or by another
    /// live process: the path of its twin.
    ///
    /// # Errors
    ///
    /// Returns [`LedgerError::Open`] when the ledger cannot be read.
    pub fn converting_twin(&self, content_hash: &str) -> Result<Option<PathBuf>, LedgerError> {
        if let Some(path) = self.converting.get(content_hash) {
            return Ok(Some(path.clone()));
        }
        let latest = self
            .last(Key::Hash(content_hash))
            .map_err(|source| self.read_error(source))?;
        Ok(latest.and_then(|entry| match (entry.state, entry.pid) {
            (FileState::Converting, Some(pid)) if pid != std::process::id() => {
                process_alive(pid).then_some(entry.path)
            }
            _ => None,
        }))
    }

    fn read_error(&self, source: io::Error) -> LedgerError {
        LedgerError::Open {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends an entry durably (write, fsync).
    ///
    /// # Errors
    ///
    /// Returns [`LedgerError::Append`] when it cannot be written.
    pub fn append(&mut self, entry: Entry) -> Result<(), LedgerError> {
        let path = self.path.clone();
        let append = |source| LedgerError::Append {
            path: path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(&entry).map_err(|e| append(e.into()))?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(append)?;
        self.file.sync_data().map_err(append)?;
        // Read back in file order, with whatever others appended before it.
        self.read_new().map_err(append)
    }

    /// Every successful conversion with this sampled hash, newest first: the candidates a
    /// full hash confirms or refutes (files that agree on the sample but differ between its
    /// slices each have one).
    ///
    /// # Errors
    ///
    /// Returns [`LedgerError::Open`] when the ledger cannot be read.
    pub fn converted_candidates(&self, content_hash: &str) -> Result<Vec<Entry>, LedgerError> {
        let mut found = Vec::new();
        self.each(Key::Hash(content_hash), |entry| {
            if entry.state == FileState::Success {
                found.push(entry);
            }
        })
        .map_err(|source| self.read_error(source))?;
        found.reverse();
        Ok(found)
    }

    /// Marks content as being converted from `path`; check [`Ledger::converting_twin`]
    /// first, under the same lock, so the same content dropped twice at once is converted
    /// once and the other copy waits.
    pub fn begin_converting(&mut self, content_hash: &str, path: &Path) {
        self.converting
            .insert(content_hash.to_owned(), path.to_owned());
    }

    pub fn end_converting(&mut self, content_hash: &str) {
        self.converting.remove(content_hash);
    }

    /// Attempts recorded so far for a path.
    ///
    /// # Errors
    ///
    /// Returns [`LedgerError::Open`] when the ledger cannot be read.
    pub fn attempts(&self, path: &Path) -> Result<u32, LedgerError> {
        let latest = self
            .last(Key::Path(path))
            .map_err(|source| self.read_error(source))?;
        Ok(latest.map_or(0, |entry| entry.attempts))
    }

    /// The latest `n` entries, newest last.
    ///
    /// # Errors
    ///
    /// Returns [`LedgerError::Open`] when the ledger cannot be read.
    pub fn recent(&self, n: usize) -> Result<Vec<Entry>, LedgerError> {
        let read = || -> io::Result<Vec<Entry>> {
            let reader = BufReader::new(File::open(&self.path)?.take(self.read_offset));
            let mut latest = VecDeque::with_capacity(n.min(1024));
            for line in reader.split(b'\n') {
                let Ok(entry) = serde_json::from_slice::<Entry>(&line?) else {
                    continue;
                };
                if latest.len() == n {
                    latest.pop_front();
                }
                if n > 0 {
                    latest.push_back(entry);
                }
            }
            Ok(latest.into())
        };
        read().map_err(|source| self.read_error(source))
    }
}

/// Whether a process lives: one of another user (`EPERM`) does.
fn process_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(errno) => errno == rustix::io::Errno::PERM,
    }
}

/// The latest entries of the ledger in `state_dir` (none when there is no ledger yet), for
/// `bamflow status`.
///
/// # Errors
///
/// Returns [`LedgerError::Open`] when the ledger cannot be read.
pub fn recent_entries(state_dir: &Path, n: usize) -> Result<Vec<Entry>, LedgerError> {
    if !state_dir.join("ledger.jsonl").exists() {
        return Ok(Vec::new());
    }
    Ledger::open(state_dir)?.recent(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_reopening_and_a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        let mut done = Entry::new("w", Path::new("/in/a.bam"), 10, "h1", FileState::Success);
        done.attempts = 1;
        ledger.append(done.clone()).unwrap();
        drop(ledger);
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join("ledger.jsonl"))
            .unwrap();
        file.write_all(b"{\"time\":\"2026").unwrap();

        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.recent(10).unwrap(), [done]);
        let converted = ledger.converted_candidates("h1").unwrap().remove(0);
        assert_eq!(converted.path, Path::new("/in/a.bam"));
        assert!(ledger.converted_candidates("h2").unwrap().is_empty());
        assert_eq!(ledger.attempts(Path::new("/in/a.bam")).unwrap(), 1);
    }

    #[test]
    fn lookups_find_the_latest_entry_among_many_and_only_their_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        for i in 0..500 {
            let path = PathBuf::from(format!("/in/f{i}.bam"));
            let mut entry = Entry::new("w", &path, 10, &format!("h{i}"), FileState::Success);
            entry.attempts = 1;
            ledger.append(entry).unwrap();
        }
        // A path that holds another entry's hash as text, and quotes that JSON escapes.
        let odd = Path::new("/in/h7 \"copy\".bam");
        let mut failed = Entry::new("w", odd, 10, "h7", FileState::Failure);
        failed.attempts = 3;
        ledger.append(failed).unwrap();

        assert_eq!(
            ledger.converted_candidates("h7").unwrap()[0].path,
            Path::new("/in/f7.bam")
        );
        assert_eq!(ledger.attempts(odd).unwrap(), 3);
        assert_eq!(ledger.attempts(Path::new("/in/f7.bam")).unwrap(), 1);
        assert_eq!(ledger.attempts(Path::new("/in/f7")).unwrap(), 0);
        assert!(ledger.converted_candidates("h").unwrap().is_empty());
        assert!(ledger.converted_candidates("h5000").unwrap().is_empty());
        let recent = ledger.recent(2).unwrap();
        assert_eq!(recent[0].path, Path::new("/in/f499.bam"));
        assert_eq!(recent[1].path, odd);
        assert!(ledger.recent(0).unwrap().is_empty());
    }

    #[test]
    fn what_another_process_appended_is_seen_after_taking_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let mut mine = Ledger::open(dir.path()).unwrap();
        let mut theirs = Ledger::open(dir.path()).unwrap();
        theirs
            .append(Entry::new(
                "w",
                Path::new("/in/a.bam"),
                1,
                "h1",
                FileState::Success,
            ))
            .unwrap();
        let _lock = mine.exclusive().unwrap();
        assert_eq!(
            mine.converted_candidates("h1").unwrap()[0].path,
            Path::new("/in/a.bam")
        );
    }

    #[test]
    fn a_live_converter_in_another_process_makes_a_twin() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        let mut converting =
            Entry::new("w", Path::new("/in/a.bam"), 1, "h1", FileState::Converting);
        // Our parent lives while we run; a pid past the kernel's limit is nobody's twin.
        converting.pid = rustix::process::getppid().map(|pid| pid.as_raw_nonzero().get() as u32);
        ledger.append(converting.clone()).unwrap();
        assert_eq!(
            ledger.converting_twin("h1").unwrap().unwrap(),
            Path::new("/in/a.bam")
        );
        converting.pid = Some(i32::MAX as u32);
        ledger.append(converting).unwrap();
        assert!(ledger.converting_twin("h1").unwrap().is_none());
        ledger.begin_converting("h2", Path::new("/in/b.bam"));
        assert_eq!(
            ledger.converting_twin("h2").unwrap().unwrap(),
            Path::new("/in/b.bam")
        );
        ledger.end_converting("h2");
        assert!(ledger.converting_twin("h2").unwrap().is_none());
    }
}
