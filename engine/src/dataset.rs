//! A dataset folder: built under a hidden staging name, published by one rename.
//!
//! Readers never see a partial dataset: parts, `_manifest.json` and `_SUCCESS` (last) are
//! written into `.NAME.staging` beside the target, which is renamed to the target only when
//! all of them are durable. The staging name does not depend on the process, so a restarted
//! conversion finds the parts and checkpoint of the one a crash interrupted; an exclusive
//! `flock` on the folder keeps two processes from building into it at once, and the kernel
//! drops that lock when its holder dies. A staging folder dropped unpublished is removed unless
//! [`Staging::keep`] says its progress is worth resuming.
//!
//! Hosts that share the output storage cannot trust `flock` there (NFS), so a conversion under
//! a claim epoch (several hosts, PostgreSQL) stages into `.NAME.staging-EPOCH` instead, and
//! inherits an earlier epoch's folder by renaming it to its own name. A superseded holder that
//! wakes up then finds its folder gone: whatever it still writes by path fails, and none of it
//! can land in the new holder's folder or the target.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::durable::{self, DurableError};
use crate::pipeline::profile::Profile;
use crate::pipeline::write::PartInfo;

/// Why a dataset could not be staged or published.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("output {} already exists", path.display())]
    /// The output folder exists: a dataset is never overwritten.
    AlreadyExists {
        /// The output folder.
        path: PathBuf,
    },
    #[error("staging folder {} is in use by another bamflow process", path.display())]
    /// Another process holds the staging folder's lock.
    Busy {
        /// The staging folder.
        path: PathBuf,
    },
    #[error("output path {} has no file name", path.display())]
    /// The output path ends in `..` or `/`.
    NoFileName {
        /// The output path.
        path: PathBuf,
    },
    #[error("cannot create {}", path.display())]
    /// A folder could not be created.
    Create {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    #[error("cannot serialize the manifest")]
    /// The manifest could not be serialized.
    Manifest(#[source] serde_json::Error),
    #[error(transparent)]
    /// A durable write (temp file, fsync, rename) failed.
    Durable(#[from] DurableError),
}

/// Where the input came from, to tell a re-dropped or changed file apart.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceInfo {
    /// Where it was read (canonical).
    pub path: PathBuf,
    /// Bytes.
    pub size: u64,
    /// Modification time, RFC 3339 in UTC.
    pub mtime: String,
    /// The sampled content hash of [`crate::hash::content_hash`].
    pub content_sha256: String,
    /// SHA-256 of the whole file, as `sha256sum` prints it, made while the conversion read it;
    /// absent when it read only part of the file (regions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Where the input is moved once the dataset is published (the daemon's
    /// `on_success = "move:…"`), so the manifest still leads to it; `path` is where it was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filed_as: Option<PathBuf>,
}

impl SourceInfo {
    /// Reads the size and mtime of `path` and hashes a sample of its content.
    ///
    /// # Errors
    ///
    /// Returns the I/O error of `stat` or of reading.
    pub fn of(path: &Path) -> io::Result<Self> {
        // Opened once for the size, the time and the samples (one HEAD for an object).
        let input = crate::input::Input::open(path)?;
        Ok(Self {
            content_sha256: crate::hash::content_hash(&input)?,
            ..Self::described(path, input.len()?, input.modified())
        })
    }

    /// The path, size and mtime of `path`, without reading it (no content hash).
    ///
    /// # Errors
    ///
    /// Returns the I/O error of `stat`.
    pub fn stat(path: &Path) -> io::Result<Self> {
        // An object's HEAD; `stat` for a file, which must not open it (a FIFO would block).
        Ok(if crate::input::is_url(path) {
            let input = crate::input::Input::open(path)?;
            Self::described(path, input.len()?, input.modified())
        } else {
            let metadata = fs::metadata(path)?;
            Self::described(path, metadata.len(), metadata.modified())
        })
    }

    fn described(path: &Path, size: u64, modified: io::Result<SystemTime>) -> Self {
        Self {
            path: fs::canonicalize(path).unwrap_or_else(|_| path.to_owned()),
            size,
            mtime: modified.map(timestamp).unwrap_or_default(),
            content_sha256: String::new(),
            sha256: None,
            filed_as: None,
        }
    }

    /// Whether `other` describes the same input file content (the path may differ).
    pub fn same_content(&self, other: &Self) -> bool {
        self.size == other.size
            && self.mtime == other.mtime
            && self.content_sha256 == other.content_sha256
    }
}

/// Record counts of one conversion.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Counts {
    /// Input records read.
    pub read: u64,
    /// Rows written (records that passed the filters).
    pub written: u64,
    /// Records dropped, by filter name.
    pub filtered: BTreeMap<String, u64>,
}

/// `_manifest.json`: what the dataset holds and how it was made.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// The bamflow version that wrote the dataset.
    pub bamflow_version: String,
    /// The column layout's version (`bamflow:schema_version`).
    pub schema_version: u32,
    /// The input.
    pub source: SourceInfo,
    /// Records read and written, and dropped per filter.
    pub counts: Counts,
    /// The part files, in record order.
    pub parts: Vec<PartInfo>,
    /// The columns written, in order.
    pub columns: Vec<String>,
    /// Promoted tags, as configured (e.g. `NM:i`).
    pub tags: Vec<String>,
    /// The filters run, in order, as `name=setting`.
    pub filters: Vec<String>,
    /// The zstd level of every column without its own.
    pub zstd_level: i32,
    /// Columns compressed at their own level.
    pub column_zstd_levels: std::collections::BTreeMap<String, i32>,
    /// Columns whose level-1 zstd used a small match table (log2 of its entries), as the level
    /// trial chose; absent when none did.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub column_zstd_hash_logs: std::collections::BTreeMap<String, u32>,
    /// Columns whose level-1 zstd coded literals only (its target length), as the level trial
    /// chose; absent when none did.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub column_zstd_target_lengths: std::collections::BTreeMap<String, u32>,
    /// What the profile found, and the batch plan.
    pub profile: Profile,
    /// Times the conversion continued from a checkpoint after an interruption.
    pub resumes: u64,
    /// When the conversion started (RFC 3339, UTC).
    pub started: String,
    /// When it finished.
    pub finished: String,
    /// Wall seconds.
    pub seconds: f64,
    /// Records read per wall second.
    pub records_per_second: f64,
    /// Busy seconds per stage, summed over threads: where the time went.
    pub stage_seconds: crate::pipeline::busy::StageSeconds,
    /// CPU seconds of the reader, dispatch and writer threads. The conversion cannot finish
    /// sooner than the largest, so total CPU over it bounds the cores it can use.
    pub serial_cpu_seconds: crate::pipeline::busy::SerialSeconds,
    /// Peak resident memory of the process when the conversion finished.
    pub peak_rss_bytes: u64,
    /// Bytes of the input.
    pub bytes_in: u64,
    /// Bytes of the parts.
    pub bytes_out: u64,
    /// `bytes_out / bytes_in`.
    pub compression_ratio: f64,
    /// How many tasks of a split plan built the dataset (`bamflow commit`); absent for one
    /// conversion. Counts, seconds and stage seconds are then summed over the tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<usize>,
}

/// The part of a published `_manifest.json` that tells which input it was made from.
#[derive(Debug, Deserialize)]
pub struct Published {
    /// The input it was made from.
    pub source: SourceInfo,
    /// Its counts.
    pub counts: Counts,
}

impl Published {
    /// Reads the manifest of the complete dataset at `target` (`_SUCCESS` present), if any.
    pub fn read(target: &Path) -> Option<Self> {
        if !target.join("_SUCCESS").is_file() {
            return None;
        }
        let bytes = fs::read(target.join("_manifest.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// The whole manifest of the complete dataset at `target` (`_SUCCESS` present), if any.
pub fn read_published(target: &Path) -> Option<Manifest> {
    if !target.join(SUCCESS).is_file() {
        return None;
    }
    let bytes = fs::read(target.join(MANIFEST)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The staging folder a dataset at `target` is built in (`.NAME.staging` beside it).
///
/// # Errors
///
/// Returns [`DatasetError::NoFileName`] when `target` has no file name.
pub fn staging_path(target: &Path) -> Result<PathBuf, DatasetError> {
    let name = target.file_name().ok_or_else(|| DatasetError::NoFileName {
        path: target.to_owned(),
    })?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok(parent.join(staging_name(name, None)))
}

/// The staging folder a conversion of `target` under claim `epoch` builds in ([`Staging::open_for`]).
///
/// # Errors
///
/// Returns [`DatasetError::NoFileName`] when `target` has no file name.
pub fn staging_path_for(target: &Path, epoch: Option<u64>) -> Result<PathBuf, DatasetError> {
    let staging = staging_path(target)?;
    match epoch {
        None => Ok(staging),
        Some(_) => {
            Ok(staging.with_file_name(staging_name(target.file_name().unwrap_or_default(), epoch)))
        }
    }
}

/// The manifest's name in a dataset folder.
pub const MANIFEST: &str = "_manifest.json";
/// The marker of a complete dataset, written last.
pub const SUCCESS: &str = "_SUCCESS";

/// A dataset being built. Dropping it unpublished removes the staging folder, unless kept.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    target: PathBuf,
    /// Holds the folder's exclusive `flock` for as long as this exists.
    _lock: fs::File,
    published: bool,
    keep: bool,
}

impl Staging {
    /// Creates the staging folder beside `target`, or opens the one an interrupted conversion
    /// left there, creating `target`'s parents as needed; locks it for this process.
    ///
    /// # Errors
    ///
    /// Returns [`DatasetError::AlreadyExists`] when `target` exists, [`DatasetError::Busy`]
    /// when another process holds the staging folder, or the failing creation.
    pub fn open(target: &Path) -> Result<Self, DatasetError> {
        Self::open_for(target, None)
    }

    /// [`Staging::open`] for the holder of claim `epoch`: its folder is `.NAME.staging-EPOCH`,
    /// made from the newest earlier epoch's folder (renamed, so its parts and checkpoint are
    /// resumed) when there is one; older folders are removed.
    ///
    /// # Errors
    ///
    /// As [`Staging::open`].
    pub fn open_for(target: &Path, epoch: Option<u64>) -> Result<Self, DatasetError> {
        if target.symlink_metadata().is_ok() {
            return Err(DatasetError::AlreadyExists {
                path: target.to_owned(),
            });
        }
        let name = target.file_name().ok_or_else(|| DatasetError::NoFileName {
            path: target.to_owned(),
        })?;
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(|source| DatasetError::Create {
            path: parent.clone(),
            source,
        })?;

        let dir = parent.join(staging_name(name, epoch));
        let create = |source| DatasetError::Create {
            path: dir.clone(),
            source,
        };
        if let Some(epoch) = epoch {
            inherit(&parent, name, epoch, &dir)?;
        }
        match fs::create_dir(&dir) {
            Ok(()) => durable::sync_dir(&parent)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(create(e)),
        }
        let lock = fs::File::open(&dir).map_err(create)?;
        // Under a claim epoch the database decides who writes here, and the lock a superseded
        // holder (frozen, or cut off) still has on the folder it moved with the rename.
        if epoch.is_none() {
            match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(DatasetError::Busy { path: dir });
                }
                Err(e) => return Err(create(e.into())),
            }
        }
        Ok(Self {
            dir,
            target: target.to_owned(),
            _lock: lock,
            published: false,
            keep: false,
        })
    }

    /// Leaves the staging folder on disk when dropped, so a later run can resume from it.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// The staging folder parts are written into.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes the manifest and `_SUCCESS` into the staging folder: the dataset is complete,
    /// and [`Staging::sealed`] finds it so should the process die before it is published.
    ///
    /// # Errors
    ///
    /// Returns a [`DatasetError`] when a write fails.
    pub fn seal(&mut self, manifest: &Manifest) -> Result<(), DatasetError> {
        let json = serde_json::to_vec_pretty(manifest).map_err(DatasetError::Manifest)?;
        durable::write_file(&self.dir.join(MANIFEST), &json)?;
        // The manifest is durable before `_SUCCESS` names it complete.
        durable::create_empty(&self.dir.join(SUCCESS)).map_err(DatasetError::from)
    }

    /// The manifest of a sealed staging folder (`_SUCCESS` written), if this one is.
    pub fn sealed(&self) -> Option<Manifest> {
        if !self.dir.join(SUCCESS).is_file() {
            return None;
        }
        let bytes = fs::read(self.dir.join(MANIFEST)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Renames the sealed folder to its target; the caller has removed everything that is
    /// not part of the dataset (the checkpoint) first.
    ///
    /// # Errors
    ///
    /// Returns a [`DatasetError`] when the target exists or the rename fails; the target then
    /// does not exist and the staging folder is removed on drop.
    pub fn publish(mut self) -> Result<PathBuf, DatasetError> {
        if self.target.symlink_metadata().is_ok() {
            return Err(DatasetError::AlreadyExists {
                path: self.target.clone(),
            });
        }
        durable::rename(&self.dir, &self.target)?;
        self.published = true;
        Ok(self.target.clone())
    }
}

/// `.NAME.staging`, or `.NAME.staging-EPOCH` for a claim epoch.
fn staging_name(name: &OsStr, epoch: Option<u64>) -> OsString {
    let mut staging = OsString::from(".");
    staging.push(name);
    staging.push(".staging");
    if let Some(epoch) = epoch {
        staging.push(format!("-{epoch}"));
    }
    staging
}

/// The epoch of a staging folder of `name` (`None` for the unepoched one), if `entry` is one.
fn staging_epoch(name: &OsStr, entry: &OsStr) -> Option<Option<u64>> {
    let entry = entry.to_str()?;
    let rest = entry
        .strip_prefix('.')?
        .strip_prefix(name.to_str()?)?
        .strip_prefix(".staging")?;
    if rest.is_empty() {
        return Some(None);
    }
    rest.strip_prefix('-')?.parse().ok().map(Some)
}

/// Moves the newest staging folder of an epoch before `epoch` to `dir` (unless `dir` exists)
/// and removes the older ones: their holders were superseded, and the newest holds all the
/// progress that was ever checkpointed.
fn inherit(parent: &Path, name: &OsStr, epoch: u64, dir: &Path) -> Result<(), DatasetError> {
    let create = |path: &Path, source| DatasetError::Create {
        path: path.to_owned(),
        source,
    };
    let entries = fs::read_dir(parent).map_err(|e| create(parent, e))?;
    let mut earlier: Vec<(Option<u64>, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| create(parent, e))?;
        match staging_epoch(name, &entry.file_name()) {
            Some(found) if found.is_none_or(|e| e < epoch) => earlier.push((found, entry.path())),
            _ => {}
        }
    }
    earlier.sort();
    let newest = if dir.exists() { None } else { earlier.pop() };
    if let Some((from, path)) = newest {
        durable::rename(&path, dir)?;
        tracing::info!(staging = %dir.display(), from = %path.display(), epoch = ?from, "Inherited the staging folder of an earlier claim.");
    }
    for (_, path) in earlier {
        if let Err(error) = fs::remove_dir_all(&path) {
            tracing::warn!(path = %path.display(), %error, "Could not remove a superseded staging folder.");
        }
    }
    Ok(())
}

/// Removes the staging folder an interrupted conversion into `target` left for a later
/// resume, when the caller does not mean to resume it.
///
/// # Errors
///
/// Returns [`DatasetError::Busy`] when a conversion is writing it now, or the failing
/// removal; [`DatasetError::AlreadyExists`] when `target` exists (then nothing is staged).
pub fn discard_staging(target: &Path) -> Result<(), DatasetError> {
    // Opened (and so locked) then dropped unkept: removed.
    drop(Staging::open(target)?);
    Ok(())
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published && !self.keep {
            if let Err(error) = fs::remove_dir_all(&self.dir) {
                tracing::warn!(path = %self.dir.display(), %error, "Could not remove staging folder.");
            }
        }
    }
}

/// RFC 3339 UTC timestamp with microseconds.
pub fn timestamp(time: SystemTime) -> String {
    humantime::format_rfc3339_micros(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpublished_staging_is_removed_and_target_never_appears() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("out");
        let staging = Staging::open(&target).unwrap();
        fs::write(staging.path().join("part-00000.parquet"), b"x").unwrap();
        let dir = staging.path().to_owned();
        drop(staging);
        assert!(!dir.exists());
        assert!(!target.exists());
    }

    #[test]
    fn one_process_at_a_time_and_kept_progress_survives() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("out");
        let mut staging = Staging::open(&target).unwrap();
        let err = Staging::open(&target).unwrap_err();
        assert!(matches!(err, DatasetError::Busy { .. }), "{err}");

        fs::write(staging.path().join("part-00000.parquet"), b"x").unwrap();
        staging.keep();
        drop(staging);
        let again = Staging::open(&target).unwrap();
        assert!(again.path().join("part-00000.parquet").exists());
    }

    #[test]
    fn an_epoch_inherits_the_newest_earlier_folder_and_drops_the_rest() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("out");
        let mut first = Staging::open_for(&target, Some(1)).unwrap();
        fs::write(first.path().join("part-00000.parquet"), b"one").unwrap();
        first.keep();
        let first_dir = first.path().to_owned();
        drop(first);
        let mut third = Staging::open_for(&target, Some(3)).unwrap();
        fs::write(third.path().join("part-00001.parquet"), b"three").unwrap();
        third.keep();
        drop(third);
        assert!(!first_dir.exists(), "epoch 3 inherited epoch 1's folder");
        // A holder of epoch 2 that died before opening its folder, then wrote one late.
        fs::create_dir(root.path().join(".out.staging-2")).unwrap();
        // A folder of a later epoch than the opener's belongs to someone else.
        fs::create_dir(root.path().join(".out.staging-9")).unwrap();
        // Not a staging folder of this target.
        fs::create_dir(root.path().join(".out2.staging-1")).unwrap();

        let fourth = Staging::open_for(&target, Some(4)).unwrap();
        assert_eq!(fourth.path(), root.path().join(".out.staging-4"));
        assert!(fourth.path().join("part-00000.parquet").exists());
        assert!(fourth.path().join("part-00001.parquet").exists());
        assert!(!root.path().join(".out.staging-2").exists());
        assert!(root.path().join(".out.staging-9").exists());
        assert!(root.path().join(".out2.staging-1").exists());
        // A superseded holder's writes by path fail: its folder is gone.
        assert!(fs::write(root.path().join(".out.staging-3/late"), b"x").is_err());
    }

    #[test]
    fn a_superseded_holder_still_running_does_not_stop_the_next_epoch() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("out");
        let stale = Staging::open_for(&target, Some(1)).unwrap();
        fs::write(stale.path().join("part-00000.parquet"), b"x").unwrap();
        let next = Staging::open_for(&target, Some(2)).unwrap();
        assert!(next.path().join("part-00000.parquet").exists());
        // Dropping the stale holder removes nothing of the new one's.
        drop(stale);
        assert!(next.path().join("part-00000.parquet").exists());
    }

    #[test]
    fn an_epoch_takes_over_the_unepoched_folder() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("out");
        let mut plain = Staging::open(&target).unwrap();
        fs::write(plain.path().join("part-00000.parquet"), b"x").unwrap();
        plain.keep();
        drop(plain);
        let epoch = Staging::open_for(&target, Some(1)).unwrap();
        assert!(epoch.path().join("part-00000.parquet").exists());
        assert!(!root.path().join(".out.staging").exists());
    }

    #[test]
    fn refuses_an_existing_target() {
        let root = tempfile::tempdir().unwrap();
        let err = Staging::open(root.path()).unwrap_err();
        assert!(matches!(err, DatasetError::AlreadyExists { .. }));
    }
}
