//! Where claims and the ledger live: this host's `state_dir`, or PostgreSQL when several
//! hosts share the drop folders ([`crate::coordination`]). The daemon's file handling is the
//! same on both; this is the one place that tells them apart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bamflow_engine::pipeline::chain;
use tracing::warn;

use crate::coordination::{self, Claimed, CoordinationError, Coordinator, Fence, SharedClaim};
use crate::ledger::{Entry, FileLock, Ledger, LedgerError};
use crate::watch::Claim;

/// Why the books could not be read or written; the file then waits and is tried again.
#[derive(Debug, thiserror::Error)]
pub enum BooksError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Coordination(#[from] CoordinationError),
}

impl BooksError {
    /// Whether the coordination database cannot be reached (said once, by the coordinator).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Coordination(CoordinationError::Unavailable { .. })
        )
    }
}

/// Claims and ledger.
#[allow(clippy::large_enum_variant, reason = "one per daemon, never moved")]
pub enum Books {
    /// One host: claim files under `state_dir`, the ledger a JSONL file there.
    Local {
        state_dir: PathBuf,
        ledger: Mutex<Ledger>,
    },
    /// Several hosts: both in PostgreSQL.
    Shared(Arc<Coordinator>),
}

/// A claimed file, released when dropped.
pub enum Held {
    Local(Claim),
    Shared(SharedClaim),
}

impl Held {
    /// The claim epoch the conversion stages under (several hosts only).
    pub fn epoch(&self) -> Option<u64> {
        match self {
            Self::Local(_) => None,
            Self::Shared(claim) => Some(claim.epoch()),
        }
    }

    /// What confirms the claim before each commit (several hosts only).
    pub fn fence(&self) -> Option<Fence> {
        match self {
            Self::Local(_) => None,
            Self::Shared(claim) => Some(claim.fence()),
        }
    }
}

impl Books {
    /// Claims `path` for this process; `Err(holder)` when another process holds it.
    ///
    /// # Errors
    ///
    /// A [`BooksError`] when the claim cannot be tried.
    pub fn claim(&self, path: &Path) -> Result<Result<Held, String>, BooksError> {
        match self {
            Self::Local { state_dir, .. } => Ok(
                match Claim::acquire(state_dir, path).map_err(|source| LedgerError::Open {
                    path: state_dir.clone(),
                    source,
                })? {
                    Some(claim) => Ok(Held::Local(claim)),
                    None => Err(Claim::holder(state_dir, path)),
                },
            ),
            Self::Shared(coordinator) => Ok(match coordinator.claim(path)? {
                Claimed::Taken(claim) => Ok(Held::Shared(claim)),
                Claimed::Held { holder } => Err(holder),
            }),
        }
    }

    /// Opens the section in which a content hash's duplicate check and the attempt's record
    /// are atomic against every other daemon sharing these books.
    ///
    /// # Errors
    ///
    /// A [`BooksError`] when the books cannot be locked.
    pub fn section(&self, content_hash: &str) -> Result<Section<'_>, BooksError> {
        match self {
            Self::Local { ledger, .. } => {
                let mut book = ledger.lock().unwrap_or_else(|p| p.into_inner());
                let lock = match book.exclusive() {
                    Ok(lock) => Some(lock),
                    Err(error) => {
                        warn!(
                            error = chain(&error),
                            "Cannot lock the ledger; checking duplicates in this process only."
                        );
                        None
                    }
                };
                Ok(Section::Local { book, _lock: lock })
            }
            Self::Shared(coordinator) => Ok(Section::Shared(coordinator.section(content_hash)?)),
        }
    }

    /// Records `entry` (outside a section), warning when it cannot.
    pub fn record(&self, entry: &Entry, epoch: Option<u64>) {
        let recorded = match self {
            Self::Local { ledger, .. } => ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .append(entry.clone())
                .map_err(BooksError::from),
            Self::Shared(coordinator) => coordinator.record(entry, epoch).map_err(Into::into),
        };
        if let Err(error) = recorded {
            warn!(path = %entry.path.display(), error = chain(&error), "Cannot record in the ledger.");
        }
    }

    /// Ends the conversion of a content hash begun in a section.
    pub fn end_converting(&self, content_hash: &str) {
        // Shared: the claim's release ends it.
        if let Self::Local { ledger, .. } = self {
            ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .end_converting(content_hash);
        }
    }
}

/// Exclusive access to the books for one content hash; ends when dropped.
pub enum Section<'a> {
    Local {
        book: MutexGuard<'a, Ledger>,
        _lock: Option<FileLock>,
    },
    Shared(coordination::Section<'a>),
}

impl Section<'_> {
    /// Every successful conversion with this sampled hash, newest first.
    ///
    /// # Errors
    ///
    /// A [`BooksError`] when the books cannot be read.
    pub fn converted_candidates(&mut self, hash: &str) -> Result<Vec<Entry>, BooksError> {
        match self {
            Self::Local { book, .. } => Ok(book.converted_candidates(hash)?),
            Self::Shared(section) => Ok(section.converted_candidates(hash)?),
        }
    }

    /// Another file with this content being converted now, by any daemon.
    ///
    /// # Errors
    ///
    /// A [`BooksError`] when the books cannot be read.
    pub fn converting_twin(
        &mut self,
        hash: &str,
        path: &Path,
    ) -> Result<Option<PathBuf>, BooksError> {
        match self {
            Self::Local { book, .. } => Ok(book.converting_twin(hash)?),
            Self::Shared(section) => Ok(section.converting_twin(hash, path)?),
        }
    }

    /// Attempts recorded so far for a path.
    ///
    /// # Errors
    ///
    /// A [`BooksError`] when the books cannot be read.
    pub fn attempts(&mut self, path: &Path) -> Result<u32, BooksError> {
        match self {
            Self::Local { book, .. } => Ok(book.attempts(path)?),
            Self::Shared(section) => Ok(section.attempts(path)?),
        }
    }

    /// Marks this content as being converted from `path` (under `held`'s claim).
    ///
    /// # Errors
    ///
    /// A [`BooksError`] when the mark cannot be written: the file then waits.
    pub fn begin_converting(
        &mut self,
        hash: &str,
        path: &Path,
        held: &Held,
    ) -> Result<(), BooksError> {
        match self {
            Self::Local { book, .. } => {
                book.begin_converting(hash, path);
                Ok(())
            }
            Self::Shared(section) => match held.epoch() {
                Some(epoch) => Ok(section.begin_converting(hash, path, epoch)?),
                None => Ok(()),
            },
        }
    }

    /// Records `entry`, warning when it cannot.
    pub fn record(&mut self, entry: &Entry, epoch: Option<u64>) {
        let recorded = match self {
            Self::Local { book, .. } => book.append(entry.clone()).map_err(BooksError::from),
            Self::Shared(section) => section.record(entry, epoch).map_err(Into::into),
        };
        if let Err(error) = recorded {
            warn!(path = %entry.path.display(), error = chain(&error), "Cannot record in the ledger.");
        }
    }
}
