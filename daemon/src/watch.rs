//! Discovery, readiness and claims: which files in a watched folder are finished and ours.
//!
//! A full rescan is the truth (network filesystems deliver no events). A file is ready when its
//! (size, mtime, inode) have not changed for the settle window, it ends with the BGZF EOF block,
//! and its sentinel exists when one is configured. "New" is decided per file, never from an
//! mtime high-water mark, so a file copied in with an old mtime is still taken.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher};

use crate::config::WatchConfig;
use crate::pipeline::bgzf;

/// What identifies one version of a file: a changed one is a new file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    pub size: u64,
    pub mtime: SystemTime,
    pub inode: u64,
}

impl Fingerprint {
    fn of(metadata: &fs::Metadata) -> Self {
        Self {
            size: metadata.len(),
            mtime: metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            inode: metadata.ino(),
        }
    }
}

/// A file that is ready to convert.
#[derive(Clone, Debug)]
pub struct Ready {
    pub path: PathBuf,
    pub fingerprint: Fingerprint,
}

/// Whether a name is a temporary or hidden file that must never be taken: `.*` (including
/// rsync's `.name.XXXXXX`), `*.tmp`, `*.part`.
pub fn is_ignored_name(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".part")
}

/// Tracks the files of one watched folder between scans.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Each candidate's fingerprint, since when it has not changed, and when it was first seen.
    seen: HashMap<PathBuf, (Fingerprint, Instant, SystemTime)>,
    /// Files seen for the first time since the last [`Tracker::take_discovered`].
    discovered: u64,
}

impl Tracker {
    /// Lists the folder (a full rescan) and returns the files that are ready, oldest-stable
    /// first.
    ///
    /// # Errors
    ///
    /// Returns the I/O error of listing the folder.
    pub fn scan(&mut self, watch: &WatchConfig, now: Instant) -> io::Result<Vec<Ready>> {
        let mut candidates = Vec::new();
        for entry in fs::read_dir(&watch.path)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !is_ignored_name(name) && watch.pattern.matches(name) {
                candidates.push(entry.path());
            }
        }
        Ok(self.update(watch, candidates, now))
    }

    /// Re-checks only the files already seen, without listing the folder: cheap enough to run
    /// every second, so a file is taken soon after it settles, between full rescans.
    pub fn recheck(&mut self, watch: &WatchConfig, now: Instant) -> Vec<Ready> {
        let candidates = self.seen.keys().cloned().collect();
        self.update(watch, candidates, now)
    }

    fn update(
        &mut self,
        watch: &WatchConfig,
        candidates: Vec<PathBuf>,
        now: Instant,
    ) -> Vec<Ready> {
        let mut present = HashMap::new();
        for path in candidates {
            // Symlinks are not followed unless configured: symlink_metadata describes the link
            // itself, which is never a file.
            let metadata = if watch.follow_symlinks {
                path.metadata()
            } else {
                path.symlink_metadata()
            };
            let Ok(metadata) = metadata else {
                continue;
            };
            if metadata.file_type().is_file() {
                present.insert(path, Fingerprint::of(&metadata));
            }
        }

        self.seen.retain(|path, _| present.contains_key(path));
        let mut ready = Vec::new();
        for (path, fingerprint) in present {
            let (since, first_seen) = match self.seen.get(&path) {
                Some((previous, since, first)) if *previous == fingerprint => (*since, *first),
                Some((_, _, first)) => (now, *first),
                None => {
                    self.discovered += 1;
                    (now, SystemTime::now())
                }
            };
            self.seen
                .insert(path.clone(), (fingerprint, since, first_seen));
            if now.duration_since(since) >= watch.settle
                && is_complete(&path)
                && sentinel_present(watch, &path)
            {
                ready.push((since, Ready { path, fingerprint }));
            }
        }
        ready.sort_by_key(|(since, r)| (*since, r.path.clone()));
        ready.into_iter().map(|(_, r)| r).collect()
    }

    /// Files seen but not yet filed away (waiting, settling, or being converted).
    pub fn pending(&self) -> usize {
        self.seen.len()
    }

    /// Files seen and not in `busy`: how many, and when the oldest was first seen.
    pub fn waiting(&self, busy: &HashSet<PathBuf>) -> (usize, Option<SystemTime>) {
        self.seen
            .iter()
            .filter(|(path, _)| !busy.contains(*path))
            .fold((0, None), |(n, oldest), (_, (_, _, first))| {
                let oldest = Some(oldest.map_or(*first, |o: SystemTime| o.min(*first)));
                (n + 1, oldest)
            })
    }

    /// How many files were seen for the first time since the last call.
    pub fn take_discovered(&mut self) -> u64 {
        std::mem::take(&mut self.discovered)
    }

    /// Forgets a file, e.g. once it has been moved away.
    pub fn forget(&mut self, path: &Path) {
        self.seen.remove(path);
    }
}

fn is_complete(path: &Path) -> bool {
    File::open(path)
        .and_then(|f| bgzf::has_eof_block(&f))
        .unwrap_or(false)
}

fn sentinel_present(watch: &WatchConfig, path: &Path) -> bool {
    let Some(template) = &watch.sentinel else {
        return true;
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    watch.path.join(template.replace("{name}", name)).exists()
}

/// Filesystem events for the watched folders. They only make discovery faster: any event —
/// including an overflow of the kernel's queue or a watcher error — just triggers a full
/// rescan, which stays the truth (network filesystems deliver no events at all).
pub struct Events {
    _watchers: Vec<notify::RecommendedWatcher>,
    events: mpsc::Receiver<()>,
}

impl Events {
    /// Watches `folders`; a folder that cannot be watched is logged and left to rescans.
    pub fn watch<'a>(folders: impl IntoIterator<Item = &'a Path>) -> Self {
        let (sender, events) = mpsc::channel();
        let mut watchers = Vec::new();
        for folder in folders {
            let sender = sender.clone();
            let watcher =
                notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
                    let _ = sender.send(());
                })
                .and_then(|mut watcher| {
                    watcher
                        .watch(folder, RecursiveMode::NonRecursive)
                        .map(|()| watcher)
                });
            match watcher {
                Ok(watcher) => watchers.push(watcher),
                Err(error) => {
                    tracing::warn!(path = %folder.display(), %error, "Cannot watch folder for events; relying on rescans.")
                }
            }
        }
        Self {
            _watchers: watchers,
            events,
        }
    }

    /// Waits up to `timeout` for an event, returning early (false) when `stop` says so;
    /// returns whether anything happened in the watched folders.
    pub fn wait(&self, timeout: Duration, stop: impl Fn() -> bool) -> bool {
        let until = Instant::now() + timeout;
        while !stop() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if self
                .events
                .recv_timeout(left.min(Duration::from_millis(100)))
                .is_ok()
            {
                // One rescan covers every event that arrived meanwhile.
                while self.events.try_recv().is_ok() {}
                return true;
            }
        }
        false
    }
}

/// An exclusive claim on one input file, held as a file under `state_dir/claims`.
///
/// The claim is linked into place, which fails when it exists, so two daemons sharing a state
/// folder never convert the same file at once. It is removed on drop.
#[derive(Debug)]
pub struct Claim {
    path: PathBuf,
}

impl Claim {
    /// Claims `input`; `Ok(None)` when another process holds it.
    ///
    /// # Errors
    ///
    /// Returns the I/O error of creating the claim file.
    pub fn acquire(state_dir: &Path, input: &Path) -> io::Result<Option<Self>> {
        let dir = state_dir.join("claims");
        fs::create_dir_all(&dir)?;
        let name = format!("{:016x}.claim", path_hash(input));
        let path = dir.join(&name);
        // The claim appears with its PID already in it: written to a private file first, then
        // linked into place, which fails like `O_EXCL` when the claim exists. Created empty and
        // written after, a kill between the two would leave a claim no one could tell is dead.
        // A draft such a kill leaves is swept at the next start ([`Claim::sweep_drafts`]).
        static DRAFTS: AtomicU64 = AtomicU64::new(0);
        let n = DRAFTS.fetch_add(1, Ordering::Relaxed);
        let draft = dir.join(draft_name(&name, std::process::id(), n));
        fs::write(
            &draft,
            format!("{}\n{}\n", std::process::id(), input.display()),
        )?;
        let claimed = Self::link(&draft, &path, input);
        let _ = fs::remove_file(&draft);
        claimed
    }

    fn link(draft: &Path, path: &Path, input: &Path) -> io::Result<Option<Self>> {
        for _ in 0..2 {
            // Not fsynced on purpose: a claim guards against daemons that are alive, and one
            // that vanishes in a crash is what a dead holder's claim should do. An fsync here
            // also waits behind every dirty page of the filesystem's journal.
            match fs::hard_link(draft, path) {
                Ok(()) => {
                    return Ok(Some(Self {
                        path: path.to_owned(),
                    }))
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if !holder_is_dead(path) {
                        return Ok(None);
                    }
                    // The holder was killed (kill -9, OOM) before it could release the claim:
                    // take it over, once. state_dir is local, so the PID is of this host.
                    tracing::warn!(claim = %path.display(), input = %input.display(), "Taking over the claim of a process that no longer exists.");
                    fs::remove_file(path).or_else(|e| {
                        if e.kind() == io::ErrorKind::NotFound {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Removes the drafts of processes that no longer run: a kill between writing a draft and
    /// linking it leaves one behind. Returns how many were removed.
    pub fn sweep_drafts(state_dir: &Path) -> usize {
        let Ok(entries) = fs::read_dir(state_dir.join("claims")) else {
            return 0;
        };
        entries
            .filter_map(Result::ok)
            .filter(|entry| {
                let name = entry.file_name();
                let Some(pid) = name.to_str().and_then(draft_pid) else {
                    return false;
                };
                is_gone(pid) && fs::remove_file(entry.path()).is_ok()
            })
            .count()
    }
}

/// The name of a claim's draft: `.<claim>.<pid>.<n>`, `n` counting this process's drafts.
fn draft_name(claim: &str, pid: u32, n: u64) -> String {
    format!(".{claim}.{pid}.{n}")
}

/// The PID in a draft's name (see [`draft_name`]).
fn draft_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (_, tail) = rest.split_once(".claim.")?;
    let (pid, n) = tail.split_once('.')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "Could not release claim.");
        }
    }
}

/// Whether a claim file names a process that no longer runs. A claim without a PID (not one
/// of ours) or unreadable counts as alive.
fn holder_is_dead(claim: &Path) -> bool {
    let Ok(text) = fs::read_to_string(claim) else {
        return false;
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<u32>().ok())
    else {
        return false;
    };
    is_gone(pid)
}

/// Whether `pid` is another process that no longer runs on this host.
fn is_gone(pid: u32) -> bool {
    pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
}

/// FNV-1a of the path bytes: a stable claim name for any path.
fn path_hash(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_and_hidden_names_are_ignored() {
        for name in [
            ".x.bam",
            ".x.bam.AbC123",
            "x.bam.tmp",
            "x.bam.part",
            ".hidden",
        ] {
            assert!(is_ignored_name(name), "{name}");
        }
        assert!(!is_ignored_name("sample.bam"));
    }

    #[test]
    fn a_dead_holders_claim_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let input = Path::new("/drop/b.bam");
        let claim = Claim::acquire(dir.path(), input).unwrap().unwrap();
        // Rewrite it as if held by a process that has exited (PIDs do not reach u32::MAX - 1).
        fs::write(&claim.path, format!("{}\n/drop/b.bam\n", u32::MAX - 1)).unwrap();
        std::mem::forget(claim);
        assert!(Claim::acquire(dir.path(), input).unwrap().is_some());
    }

    #[test]
    fn a_claim_names_its_holder_and_leaves_no_draft_behind() {
        let dir = tempfile::tempdir().unwrap();
        let input = Path::new("/drop/c.bam");
        // A draft left by a process killed before it could link its claim does not block.
        let claims = dir.path().join("claims");
        fs::create_dir_all(&claims).unwrap();
        let name = format!("{:016x}.claim", path_hash(input));
        let dead = draft_name(&name, u32::MAX - 1, 0);
        fs::write(claims.join(&dead), "").unwrap();
        let claim = Claim::acquire(dir.path(), input).unwrap().unwrap();
        let text = fs::read_to_string(&claim.path).unwrap();
        assert_eq!(text, format!("{}\n/drop/c.bam\n", std::process::id()));
        // Only the claim and the dead process's draft: this process's draft is gone.
        let mut names: Vec<_> = fs::read_dir(&claims)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [dead, name]);
    }

    #[test]
    fn drafts_of_dead_processes_are_swept_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let claims = dir.path().join("claims");
        fs::create_dir_all(&claims).unwrap();
        let dead = draft_name("00000000000000ab.claim", u32::MAX - 1, 3);
        let mine = draft_name("00000000000000ab.claim", std::process::id(), 0);
        for name in [&dead, &mine, &"00000000000000ab.claim".to_owned()] {
            fs::write(claims.join(name), "").unwrap();
        }
        assert_eq!(Claim::sweep_drafts(dir.path()), 1);
        let mut left: Vec<_> = fs::read_dir(&claims)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [mine, "00000000000000ab.claim".to_owned()]);
        assert_eq!(Claim::sweep_drafts(&dir.path().join("missing")), 0);
    }

    #[test]
    fn a_claim_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let input = Path::new("/drop/a.bam");
        let first = Claim::acquire(dir.path(), input).unwrap();
        assert!(first.is_some());
        assert!(Claim::acquire(dir.path(), input).unwrap().is_none());
        drop(first);
        assert!(Claim::acquire(dir.path(), input).unwrap().is_some());
    }
}
