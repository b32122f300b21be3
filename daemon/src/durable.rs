//! Durable file operations: what is renamed into place has reached the disk first.
//!
//! Every durable write is temp file → fsync → rename → fsync(directory), so after a crash a
//! name holds either its old content or its complete new content, never a mix.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A durable operation failed; the path says on what.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot sync {}", path.display())]
    Sync {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot rename {} to {}", from.display(), to.display())]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Writes `contents` to `path` durably, through `path.tmp`.
///
/// # Errors
///
/// Returns a [`DurableError`] naming the step and path that failed.
pub fn write_file(path: &Path, contents: &[u8]) -> Result<(), DurableError> {
    let tmp = tmp_path(path);
    let write = |source| DurableError::Write {
        path: tmp.clone(),
        source,
    };
    let mut file = File::create(&tmp).map_err(write)?;
    file.write_all(contents).map_err(write)?;
    file.sync_all().map_err(|source| DurableError::Sync {
        path: tmp.clone(),
        source,
    })?;
    drop(file);
    rename(&tmp, path)
}

/// Renames `from` to `to` and fsyncs the directory of `to`, so the rename itself survives.
///
/// # Errors
///
/// Returns a [`DurableError`] when the rename or the directory sync fails.
pub fn rename(from: &Path, to: &Path) -> Result<(), DurableError> {
    fs::rename(from, to).map_err(|source| DurableError::Rename {
        from: from.to_owned(),
        to: to.to_owned(),
        source,
    })?;
    sync_parent(to)
}

/// Fsyncs the directory holding `path`.
///
/// # Errors
///
/// Returns [`DurableError::Sync`] when the directory cannot be opened or synced.
pub fn sync_parent(path: &Path) -> Result<(), DurableError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    sync_dir(dir)
}

/// Fsyncs a directory, making the names in it durable.
///
/// # Errors
///
/// Returns [`DurableError::Sync`] when the directory cannot be opened or synced.
pub fn sync_dir(dir: &Path) -> Result<(), DurableError> {
    let sync = |source| DurableError::Sync {
        path: dir.to_owned(),
        source,
    };
    File::open(dir).map_err(sync)?.sync_all().map_err(sync)
}

/// `name` → `name.tmp` in the same directory.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_file_replaces_content_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_file(&path, b"old").unwrap();
        write_file(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert!(!tmp_path(&path).exists());
    }

    #[test]
    fn write_file_names_the_failing_path() {
        let err = write_file(Path::new("/nonexistent-dir/x"), b"").unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir/x.tmp"), "{err}");
    }
}
