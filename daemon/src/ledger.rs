//! The ledger: every file the daemon has seen, and what became of it.
//!
//! An append-only JSON Lines file in `state_dir`: one entry per event (converting, success,
//! failure, duplicate), each fsynced, so a crash loses at most the line being written — and a
//! torn last line is skipped on load. The latest entry per path is its state. The same content
//! dropped again (under any name) is found by its content hash and not converted twice.
//!
//! Several daemons may share one `state_dir` (and so one ledger). The file is the truth: each
//! process indexes every line as it appears, its own included, and checks for a duplicate and
//! records its attempt under an exclusive `flock` of the file ([`Ledger::exclusive`]), after
//! reading what the others appended. A `converting` entry carries its process id, so the same
//! content is not converted by two processes at once while its converter lives.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

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
    pub content_hash: String,
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

/// The ledger file and its entries.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    file: File,
    entries: Vec<Entry>,
    /// Content hash → index of the successful entry that converted it.
    converted: HashMap<String, usize>,
    /// Path → index of its latest entry.
    latest: HashMap<PathBuf, usize>,
    /// Content hash → index of its latest entry.
    latest_by_hash: HashMap<String, usize>,
    /// Bytes of the file indexed so far (whole lines only).
    read_offset: u64,
    /// Content hashes a worker of this process is converting right now, with the path it
    /// converts (not persisted).
    converting: HashMap<String, PathBuf>,
}

impl Ledger {
    /// Opens (or creates) `state_dir/ledger.jsonl` and loads it.
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
            entries: Vec::new(),
            converted: HashMap::new(),
            latest: HashMap::new(),
            latest_by_hash: HashMap::new(),
            read_offset: 0,
            converting: HashMap::new(),
        };
        ledger.read_new().map_err(open)?;
        Ok(ledger)
    }

    /// Indexes the whole lines appended since the last read, by any process.
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
            self.read_offset += n as u64;
            match serde_json::from_slice::<Entry>(&line) {
                Ok(entry) => self.index(entry),
                Err(error) => {
                    tracing::warn!(path = %self.path.display(), offset = self.read_offset - n as u64, %error, "Skipping unreadable ledger line.")
                }
            }
        }
    }

    fn index(&mut self, entry: Entry) {
        let i = self.entries.len();
        if entry.state == FileState::Success {
            self.converted.insert(entry.content_hash.clone(), i);
        }
        self.latest.insert(entry.path.clone(), i);
        self.latest_by_hash.insert(entry.content_hash.clone(), i);
        self.entries.push(entry);
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
    pub fn converting_twin(&self, content_hash: &str) -> Option<&Path> {
        if let Some(path) = self.converting.get(content_hash) {
            return Some(path);
        }
        let &i = self.latest_by_hash.get(content_hash)?;
        let entry = &self.entries[i];
        match (entry.state, entry.pid) {
            (FileState::Converting, Some(pid)) if pid != std::process::id() => {
                let alive = rustix::process::Pid::from_raw(pid as i32)
                    .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok());
                alive.then_some(entry.path.as_path())
            }
            _ => None,
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
        // Indexed as read back, in file order, with whatever others appended before it.
        self.read_new().map_err(append)
    }

    /// The successful conversion of the same content, if any.
    pub fn converted(&self, content_hash: &str) -> Option<&Entry> {
        self.converted.get(content_hash).map(|&i| &self.entries[i])
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
    pub fn attempts(&self, path: &Path) -> u32 {
        self.latest
            .get(path)
            .map_or(0, |&i| self.entries[i].attempts)
    }

    /// The latest entries, newest last.
    pub fn recent(&self, n: usize) -> &[Entry] {
        &self.entries[self.entries.len().saturating_sub(n)..]
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
    Ok(Ledger::open(state_dir)?.recent(n).to_vec())
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
        assert_eq!(ledger.recent(10), [done]);
        assert_eq!(ledger.converted("h1").unwrap().path, Path::new("/in/a.bam"));
        assert!(ledger.converted("h2").is_none());
        assert_eq!(ledger.attempts(Path::new("/in/a.bam")), 1);
    }
}
