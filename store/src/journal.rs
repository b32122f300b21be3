//! What an upload has done, kept durably in the spool beside the local dataset: the parts the
//! store holds (by CRC32, so a part rewritten with other bytes is uploaded again) and the
//! multipart uploads in flight (so a crash's leftovers are aborted, not billed forever).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bamflow_engine::pipeline::write::PartInfo;
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// A part the store holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uploaded {
    /// Its size.
    pub bytes: u64,
    /// The CRC32 of the local file that was uploaded.
    pub crc32: u32,
}

impl Uploaded {
    /// What the store holds once `part` is uploaded.
    pub fn of(part: &PartInfo) -> Self {
        Self {
            bytes: part.bytes,
            crc32: part.crc32,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// Part file name → what was uploaded under it.
    uploaded: BTreeMap<String, Uploaded>,
    /// Object key → multipart upload id.
    multipart: BTreeMap<String, String>,
}

/// The upload journal of one dataset.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    state: Mutex<State>,
}

impl Journal {
    /// Opens the journal at `path`, empty when there is none (or it is unreadable: the
    /// upload then redoes parts, it loses nothing).
    pub fn open(path: &Path) -> Self {
        let state = std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Self {
            path: path.to_owned(),
            state: Mutex::new(state),
        }
    }

    /// What was uploaded as `name`, if anything.
    pub fn uploaded(&self, name: &str) -> Option<Uploaded> {
        self.lock().uploaded.get(name).copied()
    }

    /// The names of every part the store holds.
    pub fn uploaded_parts(&self) -> Vec<String> {
        self.lock().uploaded.keys().cloned().collect()
    }

    /// Records that `name` is in the store.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Journal`] when the journal cannot be written.
    pub fn record_upload(&self, name: &str, uploaded: Uploaded) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.uploaded.insert(name.to_owned(), uploaded);
        self.save(&state)
    }

    pub(crate) fn begin_multipart(&self, key: &str, id: &str) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.multipart.insert(key.to_owned(), id.to_owned());
        self.save(&state)
    }

    pub(crate) fn end_multipart(&self, key: &str) -> Result<(), StoreError> {
        let mut state = self.lock();
        if state.multipart.remove(key).is_some() {
            self.save(&state)?;
        }
        Ok(())
    }

    pub(crate) fn pending_multiparts(&self) -> Vec<(String, String)> {
        self.lock()
            .multipart
            .iter()
            .map(|(key, id)| (key.clone(), id.clone()))
            .collect()
    }

    /// Removes the journal's file (the dataset is published).
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Journal`] when it exists and cannot be removed.
    pub fn remove(&self) -> Result<(), StoreError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::Journal {
                path: self.path.clone(),
                reason: e.to_string(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn save(&self, state: &State) -> Result<(), StoreError> {
        let error = |reason: String| StoreError::Journal {
            path: self.path.clone(),
            reason,
        };
        let json = serde_json::to_vec_pretty(state).map_err(|e| error(e.to_string()))?;
        bamflow_engine::durable::write_file(&self.path, &json).map_err(|e| error(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".x.upload.json");
        let journal = Journal::open(&path);
        let part = Uploaded {
            bytes: 10,
            crc32: 7,
        };
        journal.record_upload("part-00000.parquet", part).unwrap();
        journal
            .begin_multipart("p/x/part-00001.parquet", "id-1")
            .unwrap();
        let reopened = Journal::open(&path);
        assert_eq!(reopened.uploaded("part-00000.parquet"), Some(part));
        assert_eq!(
            reopened.pending_multiparts(),
            vec![("p/x/part-00001.parquet".to_owned(), "id-1".to_owned())]
        );
        reopened.end_multipart("p/x/part-00001.parquet").unwrap();
        assert!(Journal::open(&path).pending_multiparts().is_empty());
        reopened.remove().unwrap();
        assert!(!path.exists());
    }
}
