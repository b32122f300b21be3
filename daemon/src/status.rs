//! What the running daemon is doing with each file in its watched folders, for
//! `bamflow status`: which files it converts, and why each other file waits.
//!
//! Only the daemon knows a file's settle clock, whose claim holds it or which twin it waits
//! for, so it writes `state_dir/waiting.json` whenever that picture changes (a rename into
//! place, never a half-written file), and `status` reads it. The file names the daemon's PID:
//! a picture left by a daemon that no longer runs is recognised as such.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use bamflow_engine::dataset;

/// The file's name in `state_dir`.
pub const FILE_NAME: &str = "waiting.json";

/// The daemon's picture of its watched folders.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The daemon that wrote it.
    pub pid: u32,
    pub written: String,
    pub files: Vec<FileStatus>,
}

/// One file the daemon has seen and not filed away.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStatus {
    pub watch: String,
    pub path: PathBuf,
    /// `converting`, or a reason of [`crate::watch::Waiting::REASONS`].
    pub reason: String,
    /// The reason in words, with its times and names.
    pub detail: String,
    pub first_seen: String,
}

impl FileStatus {
    pub fn new(
        watch: &str,
        path: &Path,
        reason: &str,
        detail: String,
        first_seen: SystemTime,
    ) -> Self {
        Self {
            watch: watch.to_owned(),
            path: path.to_owned(),
            reason: reason.to_owned(),
            detail,
            first_seen: dataset::timestamp(first_seen),
        }
    }
}

/// Writes the picture of this process: a temporary file renamed into place, not fsynced (a
/// picture lost in a power cut is redrawn at the next start).
///
/// # Errors
///
/// Returns the I/O error of writing or renaming.
pub fn write(state_dir: &Path, files: &[FileStatus]) -> io::Result<()> {
    let snapshot = Snapshot {
        pid: std::process::id(),
        written: dataset::timestamp(SystemTime::now()),
        files: files.to_vec(),
    };
    let json = serde_json::to_vec_pretty(&snapshot).map_err(io::Error::other)?;
    let path = state_dir.join(FILE_NAME);
    let temp = state_dir.join(format!(".{FILE_NAME}.{}", std::process::id()));
    fs::write(&temp, json)?;
    fs::rename(&temp, &path)
}

/// Removes the picture at shutdown, when it is this process's.
pub fn remove(state_dir: &Path) {
    let path = state_dir.join(FILE_NAME);
    if read(state_dir).is_some_and(|s| s.pid == std::process::id()) {
        let _ = fs::remove_file(path);
    }
}

/// The last picture written in `state_dir`, if any.
pub fn read(state_dir: &Path) -> Option<Snapshot> {
    let bytes = fs::read(state_dir.join(FILE_NAME)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

impl Snapshot {
    /// Whether the daemon that wrote it still runs: its PID is alive and is a `bamflow`.
    pub fn writer_is_running(&self) -> bool {
        fs::read_to_string(format!("/proc/{}/comm", self.pid))
            .is_ok_and(|comm| comm.trim_end() == "bamflow")
    }
}
