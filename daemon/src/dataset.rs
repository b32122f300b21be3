//! A dataset folder: built under a hidden staging name, published by one rename.
//!
//! Readers never see a partial dataset: parts, `_manifest.json` and `_SUCCESS` (last) are
//! written into `.NAME.staging-PID` beside the target, which is renamed to the target only when
//! all of them are durable. A staging folder that is dropped unpublished is removed.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use crate::durable::{self, DurableError};
use crate::pipeline::profile::Profile;
use crate::pipeline::write::PartInfo;

/// Why a dataset could not be staged or published.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("output {} already exists", path.display())]
    AlreadyExists { path: PathBuf },
    #[error("output path {} has no file name", path.display())]
    NoFileName { path: PathBuf },
    #[error("cannot create {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot serialize the manifest")]
    Manifest(#[source] serde_json::Error),
    #[error(transparent)]
    Durable(#[from] DurableError),
}

/// Where the input came from, to tell a re-dropped or changed file apart.
#[derive(Clone, Debug, Serialize)]
pub struct SourceInfo {
    pub path: PathBuf,
    pub size: u64,
    /// Modification time, RFC 3339 in UTC.
    pub mtime: String,
}

impl SourceInfo {
    /// Reads the size and mtime of `path`.
    ///
    /// # Errors
    ///
    /// Returns the I/O error of `stat`.
    pub fn of(path: &Path) -> io::Result<Self> {
        let metadata = fs::metadata(path)?;
        let mtime = metadata.modified().map(timestamp).unwrap_or_default();
        let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        Ok(Self {
            path,
            size: metadata.len(),
            mtime,
        })
    }
}

/// Record counts of one conversion.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    pub read: u64,
    pub written: u64,
    /// Records dropped, by filter name.
    pub filtered: BTreeMap<String, u64>,
}

/// `_manifest.json`: what the dataset holds and how it was made.
#[derive(Clone, Debug, Serialize)]
pub struct Manifest {
    pub bamflow_version: &'static str,
    pub schema_version: u32,
    pub source: SourceInfo,
    pub counts: Counts,
    pub parts: Vec<PartInfo>,
    pub columns: Vec<String>,
    /// Promoted tags, as configured (e.g. `NM:i`).
    pub tags: Vec<String>,
    pub filters: Vec<String>,
    pub profile: Profile,
    pub started: String,
    pub finished: String,
    pub seconds: f64,
    pub records_per_second: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// A dataset being built. Dropping it unpublished removes the staging folder.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    target: PathBuf,
    published: bool,
}

impl Staging {
    /// Creates the staging folder beside `target`, creating `target`'s parents as needed.
    ///
    /// # Errors
    ///
    /// Returns [`DatasetError::AlreadyExists`] when `target` exists, or the failing creation.
    pub fn create(target: &Path) -> Result<Self, DatasetError> {
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

        let mut staging_name = std::ffi::OsString::from(".");
        staging_name.push(name);
        staging_name.push(format!(".staging-{}", std::process::id()));
        let dir = parent.join(staging_name);
        // A leftover from an earlier run of the same process id can only be stale.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).map_err(|source| DatasetError::Create {
            path: dir.clone(),
            source,
        })?;
        Ok(Self {
            dir,
            target: target.to_owned(),
            published: false,
        })
    }

    /// The staging folder parts are written into.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes the manifest and `_SUCCESS`, then renames the folder to its target.
    ///
    /// # Errors
    ///
    /// Returns a [`DatasetError`] when a write or the rename fails; the target then does not
    /// exist and the staging folder is removed on drop.
    pub fn publish(mut self, manifest: &Manifest) -> Result<PathBuf, DatasetError> {
        let json = serde_json::to_vec_pretty(manifest).map_err(DatasetError::Manifest)?;
        durable::write_file(&self.dir.join("_manifest.json"), &json)?;
        durable::write_file(&self.dir.join("_SUCCESS"), b"")?;
        durable::sync_dir(&self.dir)?;
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

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
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
        let staging = Staging::create(&target).unwrap();
        fs::write(staging.path().join("part-00000.parquet"), b"x").unwrap();
        let dir = staging.path().to_owned();
        drop(staging);
        assert!(!dir.exists());
        assert!(!target.exists());
    }

    #[test]
    fn refuses_an_existing_target() {
        let root = tempfile::tempdir().unwrap();
        let err = Staging::create(root.path()).unwrap_err();
        assert!(matches!(err, DatasetError::AlreadyExists { .. }));
    }
}
