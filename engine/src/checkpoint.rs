//! Checkpoints: how far a conversion got, recorded only for output that is already durable.
//!
//! A conversion writes parts of `part_records` input records each into its staging folder.
//! After every part is fsynced and renamed, `_checkpoint.json` is saved beside it, the same
//! durable way (temp → fsync → rename → fsync directory). It says which input it describes,
//! with which settings, which parts are done (size and CRC32 of each), the counters so far and
//! the BGZF virtual offset where the next part's first record starts.
//!
//! The checkpoint lives in the staging folder, next to the parts it describes, rather than in
//! `state_dir`: the two must agree, and on one filesystem they are made durable in one order
//! (part, then checkpoint), so a checkpoint never lists a part the disk does not hold. It also
//! lets `bamflow convert --resume` work with no daemon state at all.
//!
//! On restart, [`plan`] decides: start fresh (no checkpoint; or the input or settings changed,
//! which it says), resume (every listed part verified), or fail closed (the checkpoint cannot be
//! parsed, a listed part is missing or differs, or parts exist that no checkpoint explains).
//! Failing closed sets the file aside instead of silently starting from zero or publishing an
//! incomplete dataset.
//!
//! Parts are checked with CRC32 (libdeflate, many GB/s) rather than a cryptographic hash:
//! the threat is a torn or truncated write, not an adversary, and a resume re-reads every part.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::{Counts, SourceInfo};
use crate::durable::{self, DurableError};
use crate::pipeline::write::{is_part_file_name, part_file_name, PartInfo, PARTIAL_SUFFIX};

/// The checkpoint's file name inside the staging folder.
pub const FILE_NAME: &str = "_checkpoint.json";

/// Why a conversion cannot resume from its checkpoint. Every variant fails closed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {} cannot be read", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "checkpoint {} is corrupt ({reason}); remove its staging folder to start over",
        path.display()
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "{} does not match checkpoint {} ({reason}); remove the staging folder to start over",
        part.display(),
        path.display()
    )]
    PartMismatch {
        path: PathBuf,
        part: PathBuf,
        reason: String,
    },
    #[error(
        "staging folder {} holds parts no checkpoint lists ({parts}); remove it to start over",
        dir.display()
    )]
    Unexplained { dir: PathBuf, parts: String },
    #[error("cannot clean up staging folder {}", dir.display())]
    Cleanup {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot serialize the checkpoint")]
    Serialize(#[source] serde_json::Error),
    #[error(transparent)]
    Durable(#[from] DurableError),
}

/// What identifies the input: a changed file starts the conversion over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputIdentity {
    pub size: u64,
    pub mtime: String,
    pub content_sha256: String,
}

impl From<&SourceInfo> for InputIdentity {
    fn from(source: &SourceInfo) -> Self {
        Self {
            size: source.size,
            mtime: source.mtime.clone(),
            content_sha256: source.content_sha256.clone(),
        }
    }
}

/// The settings that decide what rows and columns a part holds. Parts made with other
/// settings cannot be mixed into one dataset, so a change starts over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub columns: Vec<String>,
    pub tags: Vec<String>,
    pub filters: Vec<String>,
    pub part_records: u64,
}

/// Progress that is durable on disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Informational: the input's path when the checkpoint was written.
    pub source: PathBuf,
    pub input: InputIdentity,
    pub settings: Settings,
    /// Input records covered by the parts below; the next part starts with this record.
    pub next_record: u64,
    /// BGZF virtual offset of that record.
    pub next_virtual_offset: u64,
    pub parts: Vec<PartInfo>,
    pub counts: Counts,
    /// How many times this conversion was resumed so far.
    pub resumes: u64,
    pub saved: String,
}

/// The file's format, tagged so a later bamflow can read (or refuse) this one.
#[derive(Serialize, Deserialize)]
#[serde(tag = "format")]
enum Versioned {
    #[serde(rename = "bamflow-checkpoint/1")]
    V1(Checkpoint),
}

impl Checkpoint {
    /// A checkpoint for a conversion that has no durable output yet.
    pub fn start(source: &SourceInfo, settings: Settings) -> Self {
        Self {
            source: source.path.clone(),
            input: InputIdentity::from(source),
            settings,
            next_record: 0,
            next_virtual_offset: 0,
            parts: Vec::new(),
            counts: Counts::default(),
            resumes: 0,
            saved: String::new(),
        }
    }

    /// Records a part that is durable, where the next one starts, and what each filter dropped
    /// from the part's input.
    pub fn add_part(
        &mut self,
        part: PartInfo,
        next_virtual_offset: u64,
        filtered: impl IntoIterator<Item = (String, u64)>,
    ) {
        self.next_record += part.records;
        self.counts.read += part.records;
        self.counts.written += part.rows;
        for (filter, n) in filtered {
            *self.counts.filtered.entry(filter).or_default() += n;
        }
        self.next_virtual_offset = next_virtual_offset;
        self.parts.push(part);
    }

    /// Saves the checkpoint durably into `dir`.
    ///
    /// # Errors
    ///
    /// Returns a [`CheckpointError`] when it cannot be serialized or written.
    pub fn save(&mut self, dir: &Path) -> Result<(), CheckpointError> {
        self.saved = crate::dataset::timestamp(std::time::SystemTime::now());
        let json = serde_json::to_vec_pretty(&Versioned::V1(self.clone()))
            .map_err(CheckpointError::Serialize)?;
        durable::write_file(&dir.join(FILE_NAME), &json)?;
        Ok(())
    }

    /// Reads the checkpoint in `dir`, `None` when there is none.
    ///
    /// # Errors
    ///
    /// Returns [`CheckpointError::Corrupt`] when it does not parse as a known version.
    pub fn load(dir: &Path) -> Result<Option<Self>, CheckpointError> {
        let path = dir.join(FILE_NAME);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CheckpointError::Read { path, source }),
        };
        Self::parse(&bytes, &path).map(Some)
    }

    /// Parses a checkpoint's file content (`path` names it in the error): a copy kept
    /// elsewhere, e.g. beside an object-store dataset, reads as the file does.
    ///
    /// # Errors
    ///
    /// Returns [`CheckpointError::Corrupt`] when it does not parse as a known version.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, CheckpointError> {
        match serde_json::from_slice(bytes) {
            Ok(Versioned::V1(checkpoint)) => Ok(checkpoint),
            Err(e) => Err(CheckpointError::Corrupt {
                path: path.to_owned(),
                reason: e.to_string(),
            }),
        }
    }
}

/// How a conversion starts.
#[derive(Debug)]
pub enum Start {
    /// From the first record; `reason` says why an earlier checkpoint was not used.
    Fresh { reason: Option<String> },
    /// From a verified checkpoint.
    Resume(Box<Checkpoint>),
}

/// Decides how the conversion of `source` into staging folder `dir` starts, and leaves `dir`
/// holding only what that start builds on: temporary files, and parts written after the last
/// checkpoint, are removed.
///
/// # Errors
///
/// Fails closed with a [`CheckpointError`] when the checkpoint is corrupt, a listed part is
/// missing or differs, or parts exist that no checkpoint explains.
pub fn plan(
    dir: &Path,
    source: &SourceInfo,
    settings: &Settings,
) -> Result<Start, CheckpointError> {
    let checkpoint = Checkpoint::load(dir)?;
    let fresh = |reason: &str, dir: &Path| -> Result<Start, CheckpointError> {
        clear(dir)?;
        Ok(Start::Fresh {
            reason: Some(reason.to_owned()),
        })
    };
    let Some(checkpoint) = checkpoint else {
        // Only the first part can be durable before the first checkpoint is.
        let parts = part_files(dir)?;
        if parts.iter().any(|name| name != &part_file_name(0)) {
            return Err(CheckpointError::Unexplained {
                dir: dir.to_owned(),
                parts: parts.join(", "),
            });
        }
        remove_unlisted(dir, 0)?;
        return Ok(Start::Fresh { reason: None });
    };
    if checkpoint.input != InputIdentity::from(source) {
        return fresh("the input changed since the checkpoint", dir);
    }
    if &checkpoint.settings != settings {
        return fresh("the settings changed since the checkpoint", dir);
    }
    for part in &checkpoint.parts {
        verify_part(dir, part)?;
    }
    // A part written after the checkpoint is redone; anything further cannot be explained.
    let listed = checkpoint.parts.len();
    let extra: Vec<String> = part_files(dir)?
        .into_iter()
        .filter(|name| !checkpoint.parts.iter().any(|p| &p.file == name))
        .collect();
    if extra.iter().any(|name| name != &part_file_name(listed)) {
        return Err(CheckpointError::Unexplained {
            dir: dir.to_owned(),
            parts: extra.join(", "),
        });
    }
    remove_unlisted(dir, listed)?;
    Ok(Start::Resume(Box::new(checkpoint)))
}

/// Empties the staging folder for a conversion that is not to resume, saying so when it held
/// an interrupted conversion's work.
///
/// # Errors
///
/// Returns [`CheckpointError::Cleanup`] when the folder cannot be emptied.
pub fn discard(dir: &Path) -> Result<Start, CheckpointError> {
    if !entries(dir)?.is_empty() {
        tracing::warn!(staging = %dir.display(), "Discarding the work of an interrupted conversion (resuming would continue it).");
        clear(dir)?;
    }
    Ok(Start::Fresh { reason: None })
}

/// Removes the checkpoint from a staging folder whose dataset is complete (sealed): it is not
/// part of the dataset, and it goes before the folder is published, durably, so a published
/// dataset never holds it.
///
/// # Errors
///
/// Returns [`CheckpointError::Cleanup`] when it cannot be removed or the folder synced.
pub fn remove_from(dir: &Path) -> Result<(), CheckpointError> {
    let cleanup = |source| CheckpointError::Cleanup {
        dir: dir.to_owned(),
        source,
    };
    match fs::remove_file(dir.join(FILE_NAME)) {
        Ok(()) => durable::sync_dir(dir).map_err(|e| cleanup(io::Error::other(e))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(cleanup(e)),
    }
}

/// Checks that every part a sealed dataset's manifest lists has its size and CRC32.
///
/// # Errors
///
/// [`CheckpointError::PartMismatch`] for the first part that is missing or differs.
pub fn verify_parts(dir: &Path, parts: &[PartInfo]) -> Result<(), CheckpointError> {
    parts.iter().try_for_each(|part| verify_part(dir, part))
}

/// Checks that a listed part exists with its recorded size and CRC32.
fn verify_part(dir: &Path, part: &PartInfo) -> Result<(), CheckpointError> {
    let path = dir.join(&part.file);
    let mismatch = |reason: String| CheckpointError::PartMismatch {
        path: dir.join(FILE_NAME),
        part: path.clone(),
        reason,
    };
    let (bytes, crc) = crc32_of(&path).map_err(|e| mismatch(e.to_string()))?;
    if bytes != part.bytes {
        return Err(mismatch(format!("{bytes} bytes, expected {}", part.bytes)));
    }
    if crc != part.crc32 {
        return Err(mismatch(format!(
            "CRC32 {crc:08x}, expected {:08x}",
            part.crc32
        )));
    }
    Ok(())
}

/// Size and CRC32 of a file, read in 1 MiB pieces.
pub fn crc32_of(path: &Path) -> io::Result<(u64, u32)> {
    let mut file = File::open(path)?;
    let mut crc = libdeflater::Crc::new();
    let mut buf = vec![0; 1 << 20];
    let mut bytes = 0;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((bytes, crc.sum()));
        }
        crc.update(&buf[..n]);
        bytes += n as u64;
    }
}

/// Committed part files in `dir` (`part-NNNNN.parquet`), sorted.
fn part_files(dir: &Path) -> Result<Vec<String>, CheckpointError> {
    let mut parts: Vec<String> = entries(dir)?
        .into_iter()
        .filter(|name| is_part_file_name(name))
        .collect();
    parts.sort();
    Ok(parts)
}

/// Removes temporary files and every part numbered `first` or later.
fn remove_unlisted(dir: &Path, first: usize) -> Result<(), CheckpointError> {
    let keep: Vec<String> = (0..first).map(part_file_name).collect();
    for name in entries(dir)? {
        let temporary = name.ends_with(PARTIAL_SUFFIX) || name.ends_with(".tmp");
        let unlisted = is_part_file_name(&name) && !keep.contains(&name);
        if temporary || unlisted {
            remove(dir, &name)?;
        }
    }
    Ok(())
}

/// Empties `dir` for a fresh start.
fn clear(dir: &Path) -> Result<(), CheckpointError> {
    for name in entries(dir)? {
        remove(dir, &name)?;
    }
    Ok(())
}

fn remove(dir: &Path, name: &str) -> Result<(), CheckpointError> {
    tracing::debug!(dir = %dir.display(), file = name, "Removing leftover from an interrupted run.");
    fs::remove_file(dir.join(name)).map_err(|source| CheckpointError::Cleanup {
        dir: dir.to_owned(),
        source,
    })
}

fn entries(dir: &Path) -> Result<Vec<String>, CheckpointError> {
    let cleanup = |source| CheckpointError::Cleanup {
        dir: dir.to_owned(),
        source,
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(cleanup)? {
        let entry = entry.map_err(cleanup)?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(size: u64) -> SourceInfo {
        SourceInfo {
            path: PathBuf::from("/in/a.bam"),
            size,
            mtime: "2026-11-25T00:00:00Z".to_owned(),
            content_sha256: "ab".repeat(32),
            sha256: None,
            filed_as: None,
        }
    }

    fn settings() -> Settings {
        Settings {
            columns: vec!["qname".to_owned()],
            tags: Vec::new(),
            filters: Vec::new(),
            part_records: 10,
        }
    }

    /// A staging folder with `parts` committed parts and a checkpoint listing them.
    fn staged(parts: usize) -> (tempfile::TempDir, Checkpoint) {
        let dir = tempfile::tempdir().unwrap();
        let mut checkpoint = Checkpoint::start(&source(100), settings());
        for i in 0..parts {
            let name = part_file_name(i);
            let bytes = format!("part {i} bytes").into_bytes();
            fs::write(dir.path().join(&name), &bytes).unwrap();
            let (size, crc32) = crc32_of(&dir.path().join(&name)).unwrap();
            let part = PartInfo {
                file: name,
                rows: 10,
                bytes: size,
                records: 10,
                crc32,
            };
            checkpoint.add_part(part, 1000 * (i as u64 + 1), []);
            checkpoint.save(dir.path()).unwrap();
        }
        (dir, checkpoint)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names = entries(dir).unwrap();
        names.sort();
        names
    }

    #[test]
    fn resumes_after_the_listed_parts_and_removes_what_came_after() {
        let (dir, _) = staged(2);
        // Written after the last checkpoint: the next part, a partial one, a checkpoint temp.
        fs::write(dir.path().join(part_file_name(2)), b"unrecorded").unwrap();
        fs::write(dir.path().join("part-00003.parquet.partial"), b"torn").unwrap();
        fs::write(dir.path().join("_checkpoint.json.tmp"), b"{").unwrap();

        let Start::Resume(checkpoint) = plan(dir.path(), &source(100), &settings()).unwrap() else {
            panic!("expected a resume");
        };
        assert_eq!(checkpoint.parts.len(), 2);
        assert_eq!(checkpoint.next_record, 20);
        assert_eq!(checkpoint.next_virtual_offset, 2000);
        assert_eq!(
            (checkpoint.counts.read, checkpoint.counts.written),
            (20, 20)
        );
        assert_eq!(
            names(dir.path()),
            [
                "_checkpoint.json",
                "part-00000.parquet",
                "part-00001.parquet"
            ]
        );
    }

    #[test]
    fn a_changed_input_or_changed_settings_start_over_and_say_why() {
        let (dir, _) = staged(2);
        let start = plan(dir.path(), &source(101), &settings()).unwrap();
        assert!(
            matches!(&start, Start::Fresh { reason: Some(r) } if r.contains("input changed")),
            "{start:?}"
        );
        assert!(
            names(dir.path()).is_empty(),
            "nothing of the old input is kept"
        );

        let (dir, _) = staged(1);
        let other = Settings {
            part_records: 20,
            ..settings()
        };
        let start = plan(dir.path(), &source(100), &other).unwrap();
        assert!(
            matches!(&start, Start::Fresh { reason: Some(r) } if r.contains("settings changed")),
            "{start:?}"
        );
    }

    #[test]
    fn a_checkpoint_that_does_not_parse_fails_closed() {
        for bad in [
            &b"{\"format\": \"bamflow-checkpoint/1\", \"parts\": ["[..],
            b"",
            b"{\"format\": \"bamflow-checkpoint/99\"}",
        ] {
            let (dir, _) = staged(2);
            fs::write(dir.path().join(FILE_NAME), bad).unwrap();
            let error = plan(dir.path(), &source(100), &settings()).unwrap_err();
            assert!(matches!(error, CheckpointError::Corrupt { .. }), "{error}");
            assert!(error.to_string().contains("corrupt"), "{error}");
            assert_eq!(names(dir.path()).len(), 3, "the evidence stays");
        }
    }

    #[test]
    fn a_missing_or_changed_part_fails_closed() {
        let (dir, _) = staged(3);
        fs::remove_file(dir.path().join(part_file_name(1))).unwrap();
        let error = plan(dir.path(), &source(100), &settings()).unwrap_err();
        assert!(
            matches!(error, CheckpointError::PartMismatch { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("part-00001.parquet"), "{error}");

        let (dir, _) = staged(3);
        let path = dir.path().join(part_file_name(2));
        let mut bytes = fs::read(&path).unwrap();
        bytes[0] ^= 1;
        fs::write(&path, bytes).unwrap();
        let error = plan(dir.path(), &source(100), &settings()).unwrap_err();
        assert!(error.to_string().contains("CRC32"), "{error}");
    }

    #[test]
    fn parts_without_a_checkpoint_fail_closed_unless_only_the_first() {
        let (dir, _) = staged(0);
        fs::write(dir.path().join(part_file_name(0)), b"first").unwrap();
        let start = plan(dir.path(), &source(100), &settings()).unwrap();
        assert!(matches!(start, Start::Fresh { reason: None }), "{start:?}");
        assert!(names(dir.path()).is_empty());

        let (dir, _) = staged(2);
        fs::remove_file(dir.path().join(FILE_NAME)).unwrap();
        let error = plan(dir.path(), &source(100), &settings()).unwrap_err();
        assert!(
            matches!(error, CheckpointError::Unexplained { .. }),
            "{error}"
        );
    }

    #[test]
    fn a_part_beyond_the_next_one_fails_closed() {
        let (dir, _) = staged(1);
        fs::write(dir.path().join(part_file_name(5)), b"from nowhere").unwrap();
        let error = plan(dir.path(), &source(100), &settings()).unwrap_err();
        assert!(error.to_string().contains("part-00005.parquet"), "{error}");
    }
}
