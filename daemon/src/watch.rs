//! Discovery, readiness and claims: which files in a watched folder are finished and ours.
//!
//! A full rescan is the truth (network filesystems deliver no events). A file is ready when its
//! (size, mtime, inode) have not changed for the settle window, it ends with the BGZF EOF block,
//! and its sentinel exists when one is configured. "New" is decided per file, never from an
//! mtime high-water mark, so a file copied in with an old mtime is still taken. Every file that
//! is not ready has a [`Waiting`] reason, which the daemon reports (log, metrics, status).
//!
//! Filesystem events only hasten a rescan, and only those that can make a file ready: the
//! daemon's own listings and reads open files too, and once made every rescan trigger the next.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher};

use crate::config::WatchConfig;
use bamflow_engine::input::Input;
use bamflow_engine::pipeline::bgzf;

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

/// A file that is ready to be taken, and what to do with it.
#[derive(Clone, Debug)]
pub struct Ready {
    pub path: PathBuf,
    pub fingerprint: Fingerprint,
    pub take: Take,
}

/// What taking a ready file means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// Convert it. A settled file that does not start as BGZF is taken too: the engine fails
    /// it at once with the error that says what it is.
    Convert,
    /// Fail it without converting: it has been settled without its BGZF EOF block for the
    /// watch's `incomplete_timeout_seconds`, unchanged since `since`.
    Incomplete { since: SystemTime },
}

/// Why a file seen in a watched folder is not being converted (DESIGN.md §6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// Changed less than `settle_seconds` ago; taken at `until` at the earliest.
    Settling { until: SystemTime },
    /// Settled, but without the BGZF EOF block: still being written, or cut short. Unchanged
    /// since `since`.
    NoEofBlock { since: SystemTime },
    /// The watch's sentinel file does not exist yet.
    SentinelMissing { sentinel: PathBuf },
    /// The file cannot be opened or read.
    Unreadable { error: String },
    /// Another live process holds the file's claim.
    Claimed { holder: String },
    /// The same content is being converted under another name; taken up (as a duplicate)
    /// once that is done.
    Twin { of: PathBuf },
    /// Ready, waiting for a free worker (`max_concurrent_files`).
    Queued,
    /// The ledger (or, on several hosts, the coordination database) cannot be read or
    /// reached, so nothing can say whether the file is new.
    Ledger { error: String },
}

impl Waiting {
    /// Every reason's label, as the `reason` label of the waiting-file metrics says.
    pub const REASONS: [&'static str; 8] = [
        "settling",
        "no_eof_block",
        "sentinel_missing",
        "unreadable",
        "claimed",
        "twin",
        "queued",
        "ledger",
    ];

    pub fn reason(&self) -> &'static str {
        match self {
            Self::Settling { .. } => "settling",
            Self::NoEofBlock { .. } => "no_eof_block",
            Self::SentinelMissing { .. } => "sentinel_missing",
            Self::Unreadable { .. } => "unreadable",
            Self::Claimed { .. } => "claimed",
            Self::Twin { .. } => "twin",
            Self::Queued => "queued",
            Self::Ledger { .. } => "ledger",
        }
    }
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let time = |t: &SystemTime| humantime::format_rfc3339_seconds(*t);
        match self {
            Self::Settling { until } => write!(f, "settling until {}", time(until)),
            Self::NoEofBlock { since } => write!(
                f,
                "no BGZF EOF block yet (unchanged since {}): still being written, or cut short",
                time(since)
            ),
            Self::SentinelMissing { sentinel } => {
                write!(f, "sentinel {} missing", sentinel.display())
            }
            Self::Unreadable { error } => write!(f, "cannot be read: {error}"),
            Self::Claimed { holder } => write!(f, "claimed by {holder}"),
            Self::Twin { of } => write!(
                f,
                "waiting for its twin {} (same content, being converted)",
                of.display()
            ),
            Self::Queued => f.write_str("ready, waiting for a free worker"),
            Self::Ledger { error } => write!(f, "waiting for the ledger: {error}"),
        }
    }
}

/// Whether a name is a temporary or hidden file that must never be taken: `.*` (including
/// rsync's `.name.XXXXXX`), `*.tmp`, `*.part`.
pub fn is_ignored_name(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".part")
}

/// One file of a watched folder, as last seen.
#[derive(Debug)]
struct Seen {
    fingerprint: Fingerprint,
    /// Since when the fingerprint has not changed: the monotonic clock for the settle window,
    /// and the wall clock of the same moment for what is shown.
    stable_since: Instant,
    changed_at: SystemTime,
    first_seen: SystemTime,
    /// How the file begins and ends, read once per fingerprint: an unchanged file is not
    /// opened again every second.
    ends: Option<bgzf::Ends>,
    /// A reason the daemon found when it tried to take the file (claimed, twin), which holds
    /// until the instant given.
    hold: Option<(Waiting, Instant)>,
    /// Why it is waiting, as of the last update; `None` when it is ready.
    waiting: Option<Waiting>,
}

/// A waiting file, as [`Tracker::waiting`] lists it.
#[derive(Clone, Debug)]
pub struct WaitingFile {
    pub path: PathBuf,
    pub first_seen: SystemTime,
    /// When its (size, mtime, inode) last changed, as far as the daemon saw.
    pub changed_at: SystemTime,
    pub waiting: Waiting,
}

/// Tracks the files of one watched folder between scans.
#[derive(Debug, Default)]
pub struct Tracker {
    seen: HashMap<PathBuf, Seen>,
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
    /// every second (one `stat` per file; an unchanged file is not opened again), so a file is
    /// taken soon after it settles, between full rescans.
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
        let wall_now = SystemTime::now();
        let mut ready = Vec::new();
        for (path, fingerprint) in present {
            let seen = self.seen.entry(path.clone()).or_insert_with(|| {
                self.discovered += 1;
                Seen {
                    fingerprint,
                    stable_since: now,
                    changed_at: wall_now,
                    first_seen: wall_now,
                    ends: None,
                    hold: None,
                    waiting: None,
                }
            });
            if seen.fingerprint != fingerprint {
                seen.fingerprint = fingerprint;
                seen.stable_since = now;
                seen.changed_at = wall_now;
                seen.ends = None;
                seen.hold = None;
            }
            let verdict = judge(watch, &path, seen, now);
            let waiting = match verdict {
                Ok(take) => {
                    ready.push((
                        seen.stable_since,
                        Ready {
                            path: path.clone(),
                            fingerprint,
                            take,
                        },
                    ));
                    None
                }
                Err(waiting) => Some(waiting),
            };
            if waiting != seen.waiting {
                log_change(watch, &path, waiting.as_ref());
                seen.waiting = waiting;
            }
        }
        ready.sort_by(|(a, x), (b, y)| (a, &x.path).cmp(&(b, &y.path)));
        ready.into_iter().map(|(_, r)| r).collect()
    }

    /// Marks a file as waiting for `waiting` until `until`: the daemon found it claimed by
    /// another process, or its twin being converted. A change of the file lifts it.
    pub fn hold(&mut self, path: &Path, waiting: Waiting, until: Instant) {
        if let Some(seen) = self.seen.get_mut(path) {
            if seen.waiting.as_ref() != Some(&waiting) {
                log_change_of(path, &waiting);
            }
            seen.waiting = Some(waiting.clone());
            seen.hold = Some((waiting, until));
        }
    }

    /// When the next file still settling will have settled, if that is after `now`: the loop
    /// wakes then rather than at its next once-a-second re-check, which left a burst of files
    /// dropped at once idle for up to a second after their settle window.
    pub fn next_settled(&self, watch: &WatchConfig, now: Instant) -> Option<Instant> {
        self.seen
            .values()
            .filter(|seen| matches!(seen.waiting, Some(Waiting::Settling { .. })))
            .map(|seen| seen.stable_since + watch.settle)
            .filter(|settled| *settled > now)
            .min()
    }

    /// Files seen but not yet filed away (waiting, settling, or being converted).
    pub fn pending(&self) -> usize {
        self.seen.len()
    }

    /// Files seen and not `busy`, each with why it waits: a ready file that was not handed
    /// to a worker waits for one.
    pub fn waiting(&self, busy: impl Fn(&Path) -> bool) -> Vec<WaitingFile> {
        let mut files: Vec<_> = self
            .seen
            .iter()
            .filter(|(path, _)| !busy(path))
            .map(|(path, seen)| WaitingFile {
                path: path.clone(),
                first_seen: seen.first_seen,
                changed_at: seen.changed_at,
                waiting: seen.waiting.clone().unwrap_or(Waiting::Queued),
            })
            .collect();
        files.sort_by(|a, b| (a.first_seen, &a.path).cmp(&(b.first_seen, &b.path)));
        files
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

/// Whether a file can be taken now, or why it waits.
fn judge(watch: &WatchConfig, path: &Path, seen: &mut Seen, now: Instant) -> Result<Take, Waiting> {
    if let Some((waiting, until)) = &seen.hold {
        if now < *until {
            return Err(waiting.clone());
        }
        seen.hold = None;
    }
    let settled_for = now.duration_since(seen.stable_since);
    if settled_for < watch.settle {
        // From the wall-clock time of the change, so the reason stays the same from one
        // re-check to the next (and is logged and written for `status` once).
        return Err(Waiting::Settling {
            until: seen.changed_at + watch.settle,
        });
    }
    let ends = match seen.ends {
        Some(ends) => ends,
        None => {
            let ends = File::open(path)
                .and_then(|file| bgzf::ends(&Input::Local(file)))
                .map_err(|e| Waiting::Unreadable {
                    error: e.to_string(),
                })?;
            // Only what was read is kept: an unreadable file is tried again next time.
            *seen.ends.insert(ends)
        }
    };
    if ends.starts_as_bgzf == Some(false) {
        // Not a BAM, whatever comes: taken so that it fails with the engine's error.
        return Ok(Take::Convert);
    }
    if !ends.eof_block {
        let since = seen.changed_at;
        return match watch.incomplete_timeout {
            Some(timeout) if settled_for >= timeout => Ok(Take::Incomplete { since }),
            _ => Err(Waiting::NoEofBlock { since }),
        };
    }
    if let Some(sentinel) = sentinel_path(watch, path) {
        if !sentinel.exists() {
            return Err(Waiting::SentinelMissing { sentinel });
        }
    }
    Ok(Take::Convert)
}

/// Says once, when it changes, why a file waits: settling and queueing are routine, the other
/// reasons are what an operator looks for in the log.
fn log_change(watch: &WatchConfig, path: &Path, waiting: Option<&Waiting>) {
    match waiting {
        None => tracing::debug!(watch = %watch.name, path = %path.display(), "File is ready."),
        Some(waiting @ (Waiting::Settling { .. } | Waiting::Queued)) => {
            tracing::debug!(watch = %watch.name, path = %path.display(), reason = waiting.reason(), "File waits: {waiting}.")
        }
        Some(waiting) => log_change_of(path, waiting),
    }
}

fn log_change_of(path: &Path, waiting: &Waiting) {
    tracing::info!(path = %path.display(), reason = waiting.reason(), "File waits: {waiting}.");
}

fn sentinel_path(watch: &WatchConfig, path: &Path) -> Option<PathBuf> {
    let template = watch.sentinel.as_ref()?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    Some(watch.path.join(template.replace("{name}", name)))
}

/// Filesystem events for the watched folders. They only make discovery faster: an event that
/// can make a file ready — or an overflow of the kernel's queue, or a watcher error — triggers
/// a full rescan, which stays the truth (network filesystems deliver no events at all).
pub struct Events {
    watchers: Vec<notify::RecommendedWatcher>,
    sender: mpsc::Sender<Signal>,
    events: mpsc::Receiver<Signal>,
}

/// What wakes the daemon's loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signal {
    /// Something changed in a watched folder.
    Changed,
    /// A worker finished a file and is free for the next.
    Finished,
}

/// What [`Events::wait`] returns on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The timeout passed, or `stop` said so.
    Quiet,
    /// Something changed in the watched folders: rescan.
    Changed,
    /// A worker is free: hand it the next ready file now.
    Finished,
}

/// Wakes the loop waiting in [`Events::wait`] when a worker finishes a file, so a backlog of
/// small files is taken one after another, not one per event or recheck interval.
#[derive(Clone, Debug)]
pub struct Waker(mpsc::Sender<Signal>);

impl Waker {
    pub fn wake(&self) {
        let _ = self.0.send(Signal::Finished);
    }
}

/// How long a burst of events is gathered into one rescan: until the folder has been quiet
/// this long ...
const QUIET: Duration = Duration::from_millis(200);
/// ... or this long after the first event, whichever comes first.
const MAX_GATHER: Duration = Duration::from_secs(1);

impl Events {
    /// Watches `folders`; a folder that cannot be watched is logged and left to rescans.
    pub fn watch<'a>(folders: impl IntoIterator<Item = &'a Path>) -> Self {
        let (sender, events) = mpsc::channel();
        let mut this = Self {
            watchers: Vec::new(),
            sender,
            events,
        };
        this.rewatch(folders);
        this
    }

    /// What workers wake the loop with; it stays valid across [`Events::rewatch`].
    pub fn waker(&self) -> Waker {
        Waker(self.sender.clone())
    }

    /// Watches `folders` instead of the folders watched so far (after a reload).
    pub fn rewatch<'a>(&mut self, folders: impl IntoIterator<Item = &'a Path>) {
        let mut watchers = Vec::new();
        for folder in folders {
            let sender = self.sender.clone();
            let watcher =
                notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                    if can_make_ready(&event) {
                        let _ = sender.send(Signal::Changed);
                    }
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
        self.watchers = watchers;
    }

    /// Waits up to `timeout` for an event or a finished worker, returning early when `stop`
    /// says so. A burst of events (a copy of many files) is gathered into one return, unless
    /// a worker becomes free meanwhile: it is not kept waiting for the folder to go quiet.
    pub fn wait(&self, timeout: Duration, stop: impl Fn() -> bool) -> Wake {
        let until = Instant::now() + timeout;
        while !stop() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Wake::Quiet;
            }
            match self
                .events
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(Signal::Changed) => {
                    self.gather();
                    return Wake::Changed;
                }
                Ok(Signal::Finished) => {
                    // Events that came with it (the input filed away) still ask for a rescan.
                    let changed = self.events.try_iter().any(|s| s == Signal::Changed);
                    return if changed {
                        Wake::Changed
                    } else {
                        Wake::Finished
                    };
                }
                Err(_) => {}
            }
        }
        Wake::Quiet
    }

    /// Takes the events that follow the first one, until the folder is quiet for [`QUIET`],
    /// [`MAX_GATHER`] has passed, or a worker finishes.
    fn gather(&self) {
        let deadline = Instant::now() + MAX_GATHER;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.events.recv_timeout(left.min(QUIET)) {
                Ok(Signal::Changed) => {}
                Ok(Signal::Finished) | Err(_) => return,
            }
        }
    }
}

/// Whether an event can make a file ready, or take one away: a file created, written and
/// closed, renamed in or out, or deleted; and an overflow or error, after which nothing is
/// known. Opens, reads and closes without writing — the daemon's own listings and reads
/// among them — and in-place writes (a file still being written is not ready) are not.
fn can_make_ready(event: &notify::Result<notify::Event>) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    let Ok(event) = event else { return true };
    if event.need_rescan() {
        return true;
    }
    matches!(
        event.kind,
        EventKind::Create(_)
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    )
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
        let name = claim_name(input);
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

    /// Who holds `input`'s claim, as `bamflow status` shows it: the PID written in the claim.
    pub fn holder(state_dir: &Path, input: &Path) -> String {
        let claim = state_dir.join("claims").join(claim_name(input));
        fs::read_to_string(&claim)
            .ok()
            .and_then(|text| text.lines().next().map(str::trim).map(str::to_owned))
            .filter(|pid| pid.parse::<u32>().is_ok())
            .map_or_else(
                || format!("another process (claim {})", claim.display()),
                |pid| format!("PID {pid} on this host"),
            )
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

/// The file name of `input`'s claim.
fn claim_name(input: &Path) -> String {
    format!("{:016x}.claim", path_hash(input))
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
    use crate::config::Disposition;

    fn watch(dir: &Path, settle: Duration) -> WatchConfig {
        WatchConfig {
            name: "w".into(),
            path: dir.to_owned(),
            pattern: glob::Pattern::new("*.bam").unwrap(),
            settle,
            sentinel: None,
            incomplete_timeout: None,
            output: "/out/{stem}".into(),
            output_options: Vec::new(),
            on_success: Disposition::Keep,
            on_failure: Disposition::Keep,
            follow_symlinks: false,
            verify: false,
            convert: bamflow_engine::pipeline::ConvertOptions::default(),
        }
    }

    /// Each file's reason after a rescan, by name; `None` for a ready file.
    fn reasons(tracker: &Tracker) -> Vec<(String, String)> {
        let mut reasons: Vec<_> = tracker
            .waiting(|_| false)
            .into_iter()
            .map(|f| {
                let name = f.path.file_name().unwrap().to_string_lossy().into_owned();
                (name, f.waiting.reason().to_owned())
            })
            .collect();
        reasons.sort();
        reasons
    }

    #[test]
    fn the_loop_is_told_when_the_first_settling_file_settles() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.bam"), bgzf::EOF_BLOCK).unwrap();
        let settle = Duration::from_secs(3600);
        let slow = watch(dir.path(), settle);
        let mut tracker = Tracker::default();
        let now = Instant::now();
        assert_eq!(tracker.next_settled(&slow, now), None);

        tracker.scan(&slow, now).unwrap();
        // A file seen a second later settles a second later; the first one is named.
        fs::write(dir.path().join("b.bam"), bgzf::EOF_BLOCK).unwrap();
        tracker.scan(&slow, now + Duration::from_secs(1)).unwrap();
        assert_eq!(tracker.next_settled(&slow, now), Some(now + settle));
        // Past the first deadline, the second one; past both, none (they are ready, not
        // settling, once re-checked).
        let later = now + settle + Duration::from_millis(500);
        assert_eq!(
            tracker.next_settled(&slow, later),
            Some(now + settle + Duration::from_secs(1))
        );
        assert_eq!(tracker.recheck(&slow, later + settle).len(), 2);
        assert_eq!(tracker.next_settled(&slow, now), None);
    }

    #[test]
    fn every_file_that_is_not_taken_has_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let eof = bgzf::EOF_BLOCK;
        // A complete BGZF file (the EOF block alone), one cut short, text, and a sentinel-less
        // one.
        fs::write(dir.path().join("whole.bam"), eof).unwrap();
        fs::write(dir.path().join("cut.bam"), &eof[..20]).unwrap();
        fs::write(dir.path().join("notes.bam"), "sample\tlane\n").unwrap();
        let mut tracker = Tracker::default();
        let now = Instant::now();

        // Settling: with the same `until` at every re-check, so it is reported once.
        let slow = watch(dir.path(), Duration::from_secs(3600));
        assert!(tracker.scan(&slow, now).unwrap().is_empty());
        let first = tracker.waiting(|_| false);
        tracker.recheck(&slow, now + Duration::from_secs(1));
        assert_eq!(
            first.iter().map(|f| &f.waiting).collect::<Vec<_>>(),
            tracker
                .waiting(|_| false)
                .iter()
                .map(|f| &f.waiting)
                .collect::<Vec<_>>()
        );
        assert!(reasons(&tracker).iter().all(|(_, r)| r == "settling"));

        // Settled: the complete one and the text one are taken (the text fails in the engine);
        // the cut one waits for its EOF block.
        let quick = watch(dir.path(), Duration::ZERO);
        let ready = tracker.recheck(&quick, now);
        let mut taken: Vec<_> = ready
            .iter()
            .map(|r| {
                (
                    r.path.file_name().unwrap().to_string_lossy().into_owned(),
                    r.take,
                )
            })
            .collect();
        taken.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            taken,
            [
                ("notes.bam".into(), Take::Convert),
                ("whole.bam".into(), Take::Convert)
            ]
        );
        let waiting: Vec<_> = reasons(&tracker)
            .into_iter()
            .filter(|(name, _)| name == "cut.bam")
            .collect();
        assert_eq!(waiting, [("cut.bam".to_owned(), "no_eof_block".to_owned())]);

        // With a sentinel required, the complete file waits for it.
        let sentinel = WatchConfig {
            sentinel: Some("{name}.done".into()),
            ..quick.clone()
        };
        let ready = tracker.recheck(&sentinel, now);
        assert!(ready.iter().all(|r| !r.path.ends_with("whole.bam")));
        assert!(reasons(&tracker).contains(&("whole.bam".into(), "sentinel_missing".into())));

        // With a timeout, the cut file is taken to be failed as incomplete.
        let timeout = WatchConfig {
            incomplete_timeout: Some(Duration::from_millis(1)),
            ..quick
        };
        let ready = tracker.recheck(&timeout, now + Duration::from_secs(1));
        let cut = ready.iter().find(|r| r.path.ends_with("cut.bam")).unwrap();
        assert!(matches!(cut.take, Take::Incomplete { .. }));
    }

    #[test]
    fn a_burst_of_events_wakes_the_loop_once() {
        let dir = tempfile::tempdir().unwrap();
        let events = Events::watch([dir.path()]);
        // A copy of many files: each created, written and closed.
        for i in 0..50 {
            fs::write(dir.path().join(format!("{i}.bam")), b"x").unwrap();
        }
        assert_eq!(
            events.wait(Duration::from_secs(10), || false),
            Wake::Changed
        );
        // Gathered into that one wake-up: nothing is left to wake the loop again.
        assert_eq!(
            events.wait(Duration::from_millis(500), || false),
            Wake::Quiet
        );
        // The daemon's own reads of the folder and its files do not wake it.
        for entry in fs::read_dir(dir.path()).unwrap() {
            let _ = fs::read(entry.unwrap().path()).unwrap();
        }
        assert_eq!(
            events.wait(Duration::from_millis(500), || false),
            Wake::Quiet
        );
    }

    #[test]
    fn a_free_worker_wakes_the_loop_at_once_even_amid_a_burst() {
        let dir = tempfile::tempdir().unwrap();
        let mut events = Events::watch([dir.path()]);
        let waker = events.waker();
        waker.wake();
        assert_eq!(
            events.wait(Duration::from_secs(10), || false),
            Wake::Finished
        );
        // A worker that filed its input away: the change is reported, without waiting for
        // the folder to go quiet.
        fs::write(dir.path().join("moved.bam"), b"x").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        waker.wake();
        let waiting = Instant::now();
        assert_eq!(
            events.wait(Duration::from_secs(10), || false),
            Wake::Changed
        );
        // Not held for QUIET: gathering stops at the free worker.
        assert!(waiting.elapsed() < super::QUIET, "{:?}", waiting.elapsed());
        // The waker outlives a reload's new watches.
        events.rewatch([dir.path()]);
        waker.wake();
        assert_eq!(
            events.wait(Duration::from_secs(10), || false),
            Wake::Finished
        );
    }

    #[test]
    fn only_events_that_can_make_a_file_ready_count() {
        use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};
        use notify::event::{DataChange, RenameMode};
        let event = |kind| Ok(notify::Event::new(kind));
        assert!(can_make_ready(&event(EventKind::Create(CreateKind::File))));
        assert!(can_make_ready(&event(EventKind::Access(
            AccessKind::Close(AccessMode::Write)
        ))));
        assert!(can_make_ready(&event(EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        )))));
        // The daemon's own listings and reads, and writes still in progress.
        assert!(!can_make_ready(&event(EventKind::Access(
            AccessKind::Open(AccessMode::Any)
        ))));
        assert!(!can_make_ready(&event(EventKind::Access(
            AccessKind::Close(AccessMode::Read)
        ))));
        assert!(!can_make_ready(&event(EventKind::Modify(
            ModifyKind::Data(DataChange::Any)
        ))));
        // An overflow of the kernel's queue, or an error: nothing is known, rescan.
        assert!(can_make_ready(&Ok(
            notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan)
        )));
        assert!(can_make_ready(&Err(notify::Error::generic("watch lost"))));
    }

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
        let name = claim_name(input);
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
