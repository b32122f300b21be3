//! The daemon: scan watched folders, take each ready file once, convert it, file it away.
//!
//! One loop, on one thread, converting one file at a time on the engine's own pool: rescans
//! every `scan_interval_seconds` find ready files, each is claimed, converted and moved to
//! `done/` (or `failed/` with an `error.json`). A shutdown request stops the loop between
//! files and cancels a running conversion cleanly: nothing half-published, the input stays
//! where it was. A reload request re-reads the configuration between files; an invalid one
//! keeps the current configuration.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use serde::Serialize;
use tracing::{info, warn};

use crate::books::{Books, BooksError};
use crate::config::{ConfigError, DaemonConfig, Disposition, WatchConfig};
use crate::coordination::{Coordinator, Fence, Op};
use crate::ledger::{Entry, FileState, Ledger};
use crate::metrics::{Metrics, RescanReason};
use crate::service::Notifier;
use crate::status::{self, FileStatus};
use crate::stores::{self, Stores};
use crate::watch::{Claim, Events, Fingerprint, Ready, Take, Tracker, Waiting, Wake, Waker};
use bamflow_engine::dataset;
use bamflow_engine::pipeline::chain;
use bamflow_engine::pipeline::write::PartInfo;
use bamflow_engine::pipeline::{
    self, Commit, ConvertError, Engine, ErrorKind, Location, Observer, Stage, StageError,
};

/// How often files already seen are re-checked for readiness between full rescans (and how
/// long the loop waits for filesystem events).
const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long after a file's settle window closes the loop re-checks it.
const SETTLE_MARGIN: Duration = Duration::from_millis(5);

/// Requests from signals (or tests): stop, and reload the configuration.
#[derive(Clone, Debug, Default)]
pub struct Control {
    shutdown: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
}

impl Control {
    pub fn new() -> Self {
        Self::default()
    }

    /// SIGTERM and SIGINT request shutdown; SIGHUP requests a reload.
    ///
    /// # Errors
    ///
    /// Returns the error of registering the handlers.
    pub fn on_signals(&self) -> std::io::Result<()> {
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(signal, Arc::clone(&self.shutdown))?;
        }
        signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&self.reload))?;
        Ok(())
    }

    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
    }

    pub fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// Whether a reload was requested since the last call.
    fn take_reload(&self) -> bool {
        self.reload.swap(false, Ordering::Relaxed)
    }

    fn reload_pending(&self) -> bool {
        self.reload.load(Ordering::Relaxed)
    }
}

/// What a running conversion reports to: shutdown cancels it, progress feeds the watchdog and
/// the metrics of its watch.
struct JobObserver<'a> {
    control: &'a Control,
    notifier: &'a Notifier,
    metrics: &'a Metrics,
    watch: &'a str,
    /// The conversion's figures at the last report, to add only what changed since.
    last: Mutex<pipeline::Progress>,
    /// The claim's fence when several hosts coordinate, set once the file is claimed.
    fence: std::sync::OnceLock<Fence>,
}

impl Observer for JobObserver<'_> {
    fn progress(&self, progress: pipeline::Progress) {
        self.notifier.watchdog();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        self.metrics.progressed(self.watch, &last, &progress);
        *last = progress;
    }

    fn checkpointed(&self, part: &PartInfo, commit_seconds: f64) {
        self.metrics
            .part_committed(self.watch, part.bytes, commit_seconds);
    }

    fn resumed(&self) {
        self.metrics.resumed(self.watch);
    }

    fn filtered(&self, filter: &str, records: u64) {
        self.metrics.filtered(self.watch, filter, records);
    }

    fn plugin_loaded(&self, name: &str, version: &str) {
        self.metrics
            .plugin_loaded(name, version, &bamflow_plugin_api::ABI_MAJOR.to_string());
    }

    fn cancelled(&self) -> bool {
        self.control.shutdown_requested() || self.fence.get().is_some_and(Fence::is_lost)
    }

    fn confirm(&self, _step: Commit) -> Result<(), String> {
        self.fence.get().map_or(Ok(()), Fence::confirm)
    }
}

impl JobObserver<'_> {
    /// Whether this process may no longer act on the file: its claim (several hosts) was
    /// lost, or cannot be confirmed now.
    fn superseded(&self) -> bool {
        self.fence
            .get()
            .is_some_and(|fence| fence.is_lost() || fence.confirm().is_err())
    }
}

/// How one file ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Success,
    Failure,
    /// It was moved or deleted before it could be taken.
    Vanished,
    /// It cannot be taken yet (another process holds its claim, its twin is being converted):
    /// it stays in its folder with this reason.
    Waits(Waiting),
    /// The same content was converted before.
    Duplicate,
    /// This very file was converted before and kept in place.
    AlreadyDone,
    /// Shutdown stopped the conversion; the input stays for the next start.
    Cancelled,
    /// Another daemon took the file over (this one's lease expired); the input stays.
    Lost,
}

/// Runs the daemon until shutdown is requested. `load` reads and checks the configuration;
/// it is called again on every reload request.
///
/// # Errors
///
/// Fails when the first configuration is invalid or the state folder cannot be created; a
/// failing file, or an invalid configuration on reload, never stops the daemon.
pub fn run(
    load: &dyn Fn() -> Result<DaemonConfig, ConfigError>,
    control: &Control,
    notifier: &Notifier,
) -> anyhow::Result<()> {
    let config = load()?;
    fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create state_dir {}", config.state_dir.display()))?;
    let swept = Claim::sweep_drafts(&config.state_dir);
    if swept > 0 {
        info!(
            swept,
            "Removed claim drafts left by processes that no longer exist."
        );
    }
    let metrics = Arc::new(Metrics::new().context("cannot register metrics")?);
    for watch in &config.watches {
        metrics.init_watch(&watch.name, &watch.convert.filters.builtin_names());
    }
    metrics.beat();
    if let Some(address) = config.metrics_listen {
        // A loop that has not run for a few scan intervals is stuck.
        let stall_after = (config.scan_interval * 3).max(Duration::from_secs(60));
        let bound = crate::metrics::serve(address, Arc::clone(&metrics), stall_after)
            .with_context(|| format!("cannot serve metrics on {address}"))?;
        info!(address = %bound, "Serving metrics on /metrics and health on /healthz.");
    }
    let books = match &config.coordination {
        None => Books::Local {
            state_dir: config.state_dir.clone(),
            ledger: Mutex::new(Ledger::open(&config.state_dir)?),
        },
        Some(settings) => {
            metrics.init_coordination(&Op::ALL.map(Op::label));
            let coordinator = Coordinator::new(settings, Arc::clone(&metrics))?;
            match coordinator.check() {
                Ok(()) => {
                    info!(
                        host = coordinator.host(),
                        lease_seconds = settings.lease.as_secs(),
                        "Coordinating claims and ledger in PostgreSQL."
                    );
                }
                Err(error) => {
                    warn!(
                        error = chain(&error),
                        "Coordination database unreachable; files wait until it answers."
                    );
                }
            }
            coordinator
                .start_heartbeat()
                .context("cannot start the lease heartbeat")?;
            Books::Shared(coordinator)
        }
    };
    let engine = Engine::new(config.threads).context("cannot start the worker pool")?;
    let stores = Stores::new(config.state_dir.join("spool"), metrics.upload());
    // A rendezvous channel: a job is handed over only when a worker is idle, so files wait in
    // their folder, not in a queue, and a later rescan may still see them change.
    let (jobs, job_queue) = crossbeam_channel::bounded::<Job>(0);
    let (finished, results) = crossbeam_channel::unbounded::<Finished>();
    let events = Events::watch(config.watches.iter().map(|w| w.path.as_path()));

    std::thread::scope(|scope| {
        for i in 0..config.max_concurrent_files {
            let (job_queue, finished) = (job_queue.clone(), finished.clone());
            let worker = Worker {
                engine: &engine,
                books: &books,
                control,
                notifier,
                metrics: &metrics,
                stores: &stores,
                waker: events.waker(),
            };
            std::thread::Builder::new()
                .name(format!("bamflow-file-{i}"))
                .spawn_scoped(scope, move || worker.run(&job_queue, &finished))
                .context("cannot start a file worker")?;
        }
        drop(finished);
        let result =
            Dispatcher::new(config, events, load, control, notifier, &metrics).run(&jobs, &results);
        // Closing the queue lets idle workers exit; busy ones finish or cancel their file.
        drop(jobs);
        result
    })?;
    notifier.stopping();
    info!("Daemon stopped.");
    Ok(())
}

/// How long the loop waits for a free worker to take a file; a worker reaches its `recv`
/// microseconds after reporting, so this bounds only a worker that died.
const HANDOVER_TIMEOUT: Duration = Duration::from_millis(100);

/// One file handed to a worker, with the settings of its watch at that moment.
struct Job {
    watch: WatchConfig,
    file: Ready,
}

/// A worker's report on a job.
struct Finished {
    path: PathBuf,
    fingerprint: Fingerprint,
    outcome: Outcome,
    keep: bool,
}

/// Converts the files it is handed, one at a time, on the shared engine.
struct Worker<'a> {
    engine: &'a Engine,
    books: &'a Books,
    control: &'a Control,
    notifier: &'a Notifier,
    metrics: &'a Metrics,
    stores: &'a Stores,
    /// Tells the loop this worker is free, so the next ready file is handed over at once.
    waker: Waker,
}

impl Worker<'_> {
    fn run(
        &self,
        jobs: &crossbeam_channel::Receiver<Job>,
        finished: &crossbeam_channel::Sender<Finished>,
    ) {
        while let Some(job) = next_job(jobs) {
            let observer = JobObserver {
                control: self.control,
                notifier: self.notifier,
                metrics: self.metrics,
                watch: &job.watch.name,
                last: Mutex::default(),
                fence: std::sync::OnceLock::new(),
            };
            let started = Instant::now();
            self.metrics.file_started(&job.watch.name);
            let outcome = process(
                &job.watch,
                &job.file,
                self.books,
                self.engine,
                self.stores,
                &observer,
            );
            let label = match outcome {
                Outcome::Success | Outcome::AlreadyDone => Some("success"),
                Outcome::Failure => Some("failure"),
                Outcome::Duplicate => Some("duplicate"),
                Outcome::Vanished | Outcome::Waits(_) | Outcome::Cancelled | Outcome::Lost => None,
            };
            self.metrics
                .file_finished(&job.watch.name, label, started.elapsed().as_secs_f64());
            let report = Finished {
                path: job.file.path,
                fingerprint: job.file.fingerprint,
                outcome,
                keep: job.watch.on_success == Disposition::Keep,
            };
            if finished.send(report).is_err() {
                break;
            }
            self.waker.wake();
        }
    }
}

/// How long a worker waits for its next file before it returns what its conversions freed to
/// the system.
const RETURN_MEMORY_AFTER_IDLE: Duration = Duration::from_millis(500);

/// A worker's next job. An idle daemon holds what it uses, not what its last conversion
/// freed: a worker that waits longer than [`RETURN_MEMORY_AFTER_IDLE`] returns glibc's free
/// pages first. Through a backlog the freed memory is reused instead of being returned after
/// every file and faulted in again for the next (small files paid that on every file).
fn next_job(jobs: &crossbeam_channel::Receiver<Job>) -> Option<Job> {
    match jobs.recv_timeout(RETURN_MEMORY_AFTER_IDLE) {
        Ok(job) => Some(job),
        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
            bamflow_engine::heap::return_free_memory();
            jobs.recv().ok()
        }
        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => None,
    }
}

/// The loop thread: scans, hands ready files to idle workers, and keeps all bookkeeping
/// (trackers, files in flight, files kept in place) to itself.
struct Dispatcher<'a> {
    config: DaemonConfig,
    load: &'a dyn Fn() -> Result<DaemonConfig, ConfigError>,
    control: &'a Control,
    notifier: &'a Notifier,
    metrics: &'a Metrics,
    trackers: Vec<Tracker>,
    events: Events,
    /// File workers started (`max_concurrent_files` at start; a reload does not change it).
    workers: usize,
    /// Files handed to a worker, with their watch and when they were handed over.
    in_flight: HashMap<PathBuf, (String, SystemTime)>,
    /// What was last written for `bamflow status`.
    reported: Vec<FileStatus>,
    /// Files kept in place (`on_success = "keep"`) are not converted again in this run.
    kept: HashSet<(PathBuf, Fingerprint)>,
}

impl<'a> Dispatcher<'a> {
    fn new(
        config: DaemonConfig,
        events: Events,
        load: &'a dyn Fn() -> Result<DaemonConfig, ConfigError>,
        control: &'a Control,
        notifier: &'a Notifier,
        metrics: &'a Metrics,
    ) -> Self {
        let trackers = config.watches.iter().map(|_| Tracker::default()).collect();
        Self {
            workers: config.max_concurrent_files,
            config,
            load,
            control,
            notifier,
            metrics,
            trackers,
            events,
            in_flight: HashMap::new(),
            reported: Vec::new(),
            kept: HashSet::new(),
        }
    }

    fn run(
        &mut self,
        jobs: &crossbeam_channel::Sender<Job>,
        results: &crossbeam_channel::Receiver<Finished>,
    ) -> anyhow::Result<()> {
        info!(
            watches = self.config.watches.len(),
            state_dir = %self.config.state_dir.display(),
            max_concurrent_files = self.config.max_concurrent_files,
            "Daemon started."
        );
        self.log_watches();
        self.notifier.ready("Watching.");
        let mut next_rescan = Instant::now();
        let mut reason = RescanReason::Interval;
        while !self.control.shutdown_requested() {
            if self.control.take_reload() {
                self.reload();
                next_rescan = Instant::now();
                reason = RescanReason::Reload;
            }
            self.notifier.watchdog();
            self.metrics.beat();
            for report in results.try_iter() {
                self.finish(report);
            }

            let now = Instant::now();
            let full = now >= next_rescan;
            if full {
                self.metrics.rescanned(reason);
                reason = RescanReason::Interval;
                next_rescan = now + self.config.scan_interval;
            }
            self.dispatch(jobs, now, full);
            self.report_pending();

            let pending: usize = self.trackers.iter().map(Tracker::pending).sum();
            self.notifier.status(&format!(
                "Converting {} files; {} waiting.",
                self.in_flight.len(),
                pending.saturating_sub(self.in_flight.len())
            ));
            let stop = || self.control.shutdown_requested() || self.control.reload_pending();
            let wake = self.events.wait(self.recheck_in(), stop);
            if wake == Wake::Changed {
                next_rescan = Instant::now();
                reason = RescanReason::Event;
            }
        }
        status::remove(&self.config.state_dir);
        Ok(())
    }

    /// How long the loop may wait for an event before it re-checks the files it has seen: at
    /// most [`RECHECK_INTERVAL`] (and the scan interval), less when a file settles sooner.
    fn recheck_in(&self) -> Duration {
        let now = Instant::now();
        let next_settled = self
            .config
            .watches
            .iter()
            .zip(&self.trackers)
            .filter_map(|(watch, tracker)| tracker.next_settled(watch, now))
            .min();
        let interval = RECHECK_INTERVAL.min(self.config.scan_interval);
        next_settled.map_or(interval, |settled| {
            // A moment past the deadline, so the re-check finds the window closed.
            interval.min(settled.duration_since(now) + SETTLE_MARGIN)
        })
    }

    /// Says where each watch looks and where its output goes, with absolute paths: the
    /// embedded default's `./inbox` means little in a journal.
    fn log_watches(&self) {
        for watch in &self.config.watches {
            let absolute =
                |path: &Path| std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
            info!(
                watch = %watch.name,
                path = %absolute(&watch.path).display(),
                pattern = %watch.pattern,
                output = %if bamflow_store::ObjectUrl::is_remote(&watch.output) {
                    watch.output.clone()
                } else {
                    absolute(Path::new(&watch.output)).display().to_string()
                },
                settle_seconds = watch.settle.as_secs(),
                on_success = %watch.on_success,
                on_failure = %watch.on_failure,
                "Watching folder."
            );
        }
    }

    /// Hands every ready file not yet in flight to an idle worker, while there is one.
    fn dispatch(&mut self, jobs: &crossbeam_channel::Sender<Job>, now: Instant, full: bool) {
        for (watch, tracker) in self.config.watches.iter().zip(&mut self.trackers) {
            let ready = if full {
                match tracker.scan(watch, now) {
                    Ok(ready) => ready,
                    Err(error) => {
                        warn!(watch = %watch.name, path = %watch.path.display(), %error, "Cannot scan watched folder.");
                        continue;
                    }
                }
            } else {
                tracker.recheck(watch, now)
            };
            for file in ready {
                if self.in_flight.contains_key(&file.path)
                    || self.kept.contains(&(file.path.clone(), file.fingerprint))
                {
                    continue;
                }
                // Every worker is busy: the file waits for the next round.
                if self.in_flight.len() >= self.workers {
                    return;
                }
                let path = file.path.clone();
                let job = Job {
                    watch: watch.clone(),
                    file,
                };
                // A worker without a job has reported its last one and is on its way to take
                // the next: wait for it rather than `try_send`, which fails while it is still
                // between its report and its `recv` — and then left it idle until the next
                // rescan or event (one worker of two busy for most of a burst of small files).
                match jobs.send_timeout(job, HANDOVER_TIMEOUT) {
                    Ok(()) => {
                        self.in_flight
                            .insert(path, (watch.name.clone(), SystemTime::now()));
                    }
                    Err(_) => return,
                }
            }
        }
    }

    /// Files discovered since the last round, and what is waiting and why, per watch: to the
    /// metrics, and to `state_dir/waiting.json` for `bamflow status` when anything changed.
    fn report_pending(&mut self) {
        let mut files = Vec::new();
        for (watch, tracker) in self.config.watches.iter().zip(&mut self.trackers) {
            self.metrics
                .discovered(&watch.name, tracker.take_discovered());
            let waiting = tracker.waiting(|path| self.in_flight.contains_key(path));
            let oldest = waiting.iter().map(|f| f.first_seen).min();
            self.metrics.pending(&watch.name, waiting.len(), oldest);
            self.metrics.waiting(&watch.name, &waiting);
            files.extend(waiting.iter().map(|f| {
                let reason = f.waiting.reason();
                FileStatus::new(
                    &watch.name,
                    &f.path,
                    reason,
                    f.waiting.to_string(),
                    f.first_seen,
                )
            }));
        }
        for (path, (watch, since)) in &self.in_flight {
            files.push(FileStatus::new(
                watch,
                path,
                "converting",
                "being converted by this daemon".to_owned(),
                *since,
            ));
        }
        if files != self.reported {
            if let Err(error) = status::write(&self.config.state_dir, &files) {
                warn!(state_dir = %self.config.state_dir.display(), %error, "Cannot write what is waiting for `bamflow status`.");
            }
            self.reported = files;
        }
    }

    fn finish(&mut self, report: Finished) {
        self.in_flight.remove(&report.path);
        if let Outcome::Waits(waiting) = report.outcome {
            // Tried again at the next full rescan, not every second: a claim or a twin's
            // conversion is usually held for the whole of a conversion.
            let until = Instant::now() + self.config.scan_interval;
            for tracker in &mut self.trackers {
                tracker.hold(&report.path, waiting.clone(), until);
            }
            return;
        }
        let done = matches!(
            report.outcome,
            Outcome::Success | Outcome::Duplicate | Outcome::AlreadyDone
        );
        if done && report.keep {
            self.kept.insert((report.path.clone(), report.fingerprint));
        }
        if !matches!(report.outcome, Outcome::Cancelled | Outcome::Lost) {
            for tracker in &mut self.trackers {
                tracker.forget(&report.path);
            }
        }
    }

    /// Re-reads the configuration; an invalid one keeps the current one. Pool size and worker
    /// count stay as started.
    fn reload(&mut self) {
        self.notifier.reloading();
        match (self.load)() {
            Ok(new) => {
                self.metrics.reloaded(true);
                for watch in &new.watches {
                    self.metrics
                        .init_watch(&watch.name, &watch.convert.filters.builtin_names());
                }
                // A watch that keeps its name and folder keeps what it has seen: settle clocks run
                // on, and files already discovered are not discovered again.
                let mut old: Vec<_> = self
                    .config
                    .watches
                    .iter()
                    .map(|w| (w.name.clone(), w.path.clone()))
                    .zip(std::mem::take(&mut self.trackers))
                    .collect();
                self.trackers = new
                    .watches
                    .iter()
                    .map(|w| {
                        old.iter()
                            .position(|((name, path), _)| *name == w.name && *path == w.path)
                            .map(|i| old.swap_remove(i).1)
                            .unwrap_or_default()
                    })
                    .collect();
                self.events
                    .rewatch(new.watches.iter().map(|w| w.path.as_path()));
                if new.coordination != self.config.coordination {
                    warn!("[coordination] changed; it takes effect when the daemon restarts.");
                }
                self.config = DaemonConfig {
                    coordination: self.config.coordination.take(),
                    ..new
                };
                self.log_watches();
                info!(
                    watches = self.config.watches.len(),
                    "Reloaded configuration."
                );
            }
            Err(error) => {
                self.metrics.reloaded(false);
                warn!(
                    error = chain(&error),
                    "Invalid configuration; keeping the current one."
                );
            }
        }
        self.notifier.ready("Watching.");
    }
}

/// Claims, converts and files away one ready file.
fn process(
    watch: &WatchConfig,
    file: &Ready,
    books: &Books,
    engine: &Engine,
    stores: &Stores,
    observer: &JobObserver<'_>,
) -> Outcome {
    let held = match books.claim(&file.path) {
        Ok(Ok(held)) => held,
        Ok(Err(holder)) => return Outcome::Waits(Waiting::Claimed { holder }),
        Err(error) => return books_unavailable(&file.path, &error, "Cannot claim file."),
    };
    let epoch = held.epoch();
    if let Some(fence) = held.fence() {
        let _ = observer.fence.set(fence);
    }
    // Another daemon may have finished and moved it between our scan and our claim.
    if !file.path.exists() {
        return Outcome::Vanished;
    }

    // Identified once: the ledger keys on its hash, and the engine takes it as it is.
    let source = match dataset::SourceInfo::of(&file.path) {
        Ok(source) => source,
        Err(error) => {
            warn!(path = %file.path.display(), %error, "Cannot read file to hash it.");
            return Outcome::Waits(Waiting::Unreadable {
                error: error.to_string(),
            });
        }
    };
    let hash = source.content_sha256.clone();
    let entry = |state| Entry::new(&watch.name, &file.path, file.fingerprint.size, &hash, state);

    // A ledger that cannot be read cannot say whether this is a duplicate: try again later.
    let unreadable = |error: BooksError| {
        books_unavailable(
            &file.path,
            &error,
            "Cannot read the ledger; the file waits.",
        )
    };
    // Check for a duplicate and record the attempt in one section, so two workers of this
    // daemon, or two daemons sharing the books, never both see the content as new.
    let mut section = match books.section(&hash) {
        Ok(section) => section,
        Err(error) => return unreadable(error),
    };
    let candidates = match section.converted_candidates(&hash) {
        Ok(candidates) => candidates,
        Err(error) => return unreadable(error),
    };
    if candidates.iter().any(|c| c.path == file.path) {
        return Outcome::AlreadyDone;
    }
    let mut full_sha256 = None;
    if !candidates.is_empty() {
        // The sample matched: only the whole content may call it a duplicate. Read outside
        // the section, which other files' checks need meanwhile.
        drop(section);
        let confirmation = match confirm(&file.path, &candidates) {
            Ok(confirmation) => confirmation,
            Err(error) => {
                warn!(path = %file.path.display(), %error, "Cannot read file to confirm a duplicate.");
                return Outcome::Waits(Waiting::Unreadable {
                    error: error.to_string(),
                });
            }
        };
        let result = if confirmation.duplicate_of.is_some() {
            "confirmed"
        } else {
            "refuted"
        };
        observer
            .metrics
            .duplicate_checked(&watch.name, result, confirmation.bytes_read);
        section = match books.section(&hash) {
            Ok(section) => section,
            Err(error) => return unreadable(error),
        };
        if let Some(original) = confirmation.duplicate_of {
            info!(watch = %watch.name, path = %file.path.display(), duplicate_of = %original.display(), sha256 = %confirmation.sha256, outcome = "duplicate", "Same content was converted before; not converting it again.");
            section.record(
                &Entry {
                    duplicate_of: Some(original),
                    sha256: Some(confirmation.sha256),
                    ..entry(FileState::Duplicate)
                },
                epoch,
            );
            drop(section);
            if let Err(error) = dispose(watch, &file.path, &watch.on_success) {
                warn!(path = %file.path.display(), error = format!("{error:#}"), "Cannot file away duplicate input.");
            }
            return Outcome::Duplicate;
        }
        warn!(watch = %watch.name, path = %file.path.display(), sampled_like = %candidates[0].path.display(), sha256 = %confirmation.sha256, "Sampled hash matched a converted file but the whole content differs; converting it as a new file.");
        full_sha256 = Some(confirmation.sha256);
    }

    match section.converting_twin(&hash, &file.path) {
        // Taken up again after the other copy is done, when it is a plain duplicate.
        Ok(Some(twin)) => return Outcome::Waits(Waiting::Twin { of: twin }),
        Ok(None) => {}
        Err(error) => return unreadable(error),
    }
    let attempts = match section.attempts(&file.path) {
        Ok(attempts) => attempts + 1,
        Err(error) => return unreadable(error),
    };
    if let Take::Incomplete { since } = file.take {
        let error = incomplete_error(watch, file, since);
        warn!(watch = %watch.name, path = %file.path.display(), error = %error.message, outcome = "failure", "File never got its BGZF EOF block; setting it aside.");
        observer.metrics.error(error.stage, ErrorKind::InvalidInput);
        section.record(
            &Entry {
                attempts,
                error: Some(error.message.clone()),
                ..entry(FileState::Failure)
            },
            epoch,
        );
        drop(section);
        quarantine(watch, &file.path, &error);
        return Outcome::Failure;
    }
    if let Err(error) = section.begin_converting(&hash, &file.path, &held) {
        return unreadable(error);
    }
    let output = render_output(watch, &file.path);
    section.record(
        &Entry {
            attempts,
            output: Some(output.clone()),
            ..entry(FileState::Converting)
        },
        epoch,
    );
    drop(section);
    let _converting = ConvertingGuard {
        books,
        hash: hash.clone(),
    };
    // Records the success in the ledger and files the input away.
    let succeeded = |counts: &dataset::Counts, sha256: Option<String>| {
        books.record(
            &Entry {
                attempts,
                records_read: Some(counts.read),
                records_written: Some(counts.written),
                output: Some(output.clone()),
                sha256: sha256.or_else(|| full_sha256.clone()),
                ..entry(FileState::Success)
            },
            epoch,
        );
        if let Err(error) = dispose(watch, &file.path, &watch.on_success) {
            warn!(path = %file.path.display(), error = format!("{error:#}"), "Cannot file away converted input.");
        }
    };
    // Records a failure in the ledger and sets the input aside.
    let failed = |error: &ConvertError, what: &str| {
        warn!(watch = %watch.name, path = %file.path.display(), error = chain(error), outcome = "failure", "{what}");
        observer.metrics.error(error.stage, error.kind());
        books.record(
            &Entry {
                attempts,
                error: Some(chain(error)),
                ..entry(FileState::Failure)
            },
            epoch,
        );
        quarantine(watch, &file.path, &Failed::from(error));
        Outcome::Failure
    };
    let remote = match stores.target(&output, &watch.output_options).transpose() {
        Ok(remote) => remote,
        Err(error) => {
            let error = ConvertError::new(
                &file.path,
                Stage::Output,
                StageError::Io(std::io::Error::other(bamflow_store::chain(&error))),
            );
            return failed(&error, "Output cannot be written.");
        }
    };
    let published = match &remote {
        None => published_from(&output, &source).map(|p| (p.counts, p.source.sha256)),
        Some(target) => {
            stores::published_from(target, &source).map(|m| (m.counts, m.source.sha256))
        }
    };
    if let Some((counts, sha256)) = published {
        // A crash struck after the dataset was published but before the input was filed away.
        info!(watch = %watch.name, path = %file.path.display(), output = %output.display(), outcome = "success", "Dataset was already published from this input; filing the input away.");
        succeeded(&counts, sha256);
        return Outcome::Success;
    }
    info!(watch = %watch.name, path = %file.path.display(), output = %output.display(), attempts, epoch, "Converting file.");
    let source = dataset::SourceInfo {
        filed_as: planned_filing(watch, &file.path),
        ..source
    };
    let options;
    let convert = match epoch {
        None => &watch.convert,
        Some(epoch) => {
            options = pipeline::ConvertOptions {
                epoch: Some(epoch),
                ..watch.convert.clone()
            };
            &options
        }
    };
    let verify_remote = |dataset: &Path| {
        verify_published(engine, dataset, &file.path).map_err(|failed| failed.message)
    };
    let converted = match &remote {
        None => engine.convert_identified(&file.path, source, &output, convert, observer),
        Some(target) => stores::convert(
            target,
            engine,
            &file.path,
            source,
            convert,
            observer,
            watch.verify.then_some(&verify_remote as stores::Verify<'_>),
        ),
    };
    let outcome = match converted {
        Ok(summary) => {
            // Published, but not yet in the ledger nor filed away: a restart must cope.
            let _ = bamflow_engine::faults::point("dataset-published");
            let m = &summary.manifest;
            let s = &m.stage_seconds;
            info!(
                watch = %watch.name,
                path = %file.path.display(),
                records = m.counts.read,
                rows = m.counts.written,
                bytes_in = m.bytes_in,
                bytes_out = m.bytes_out,
                compression_ratio = format!("{:.3}", m.compression_ratio),
                seconds = format!("{:.3}", m.seconds),
                records_per_second = m.records_per_second.round(),
                peak_rss_bytes = m.peak_rss_bytes,
                busy_read = format!("{:.3}", s.read),
                busy_inflate = format!("{:.3}", s.inflate),
                busy_filter = format!("{:.3}", s.filter),
                busy_decode = format!("{:.3}", s.decode),
                busy_encode = format!("{:.3}", s.encode),
                busy_write = format!("{:.3}", s.write),
                resumes = m.resumes,
                outcome = "success",
                "Converted file."
            );
            // An object-store dataset was verified in the spool, before it was uploaded.
            if watch.verify && remote.is_none() {
                if let Err(failed) = verify_published(engine, &summary.output, &file.path) {
                    warn!(watch = %watch.name, path = %file.path.display(), output = %summary.output.display(), error = %failed.message, outcome = "failure", "Dataset does not equal its input; keeping the input.");
                    observer
                        .metrics
                        .error(Stage::Verify, ErrorKind::InvalidInput);
                    books.record(
                        &Entry {
                            attempts,
                            output: Some(output.clone()),
                            error: Some(failed.message.clone()),
                            ..entry(FileState::Failure)
                        },
                        epoch,
                    );
                    quarantine(watch, &file.path, &failed);
                    return Outcome::Failure;
                }
                info!(watch = %watch.name, path = %file.path.display(), records = m.counts.read, "Dataset verified against its input.");
            }
            succeeded(&m.counts, m.source.sha256.clone());
            Outcome::Success
        }
        // A holder whose claim is gone neither fails the file nor files it away: its errors
        // may be those of writing into a staging folder the new holder took (renamed) away.
        Err(error) if error.is_fenced() || observer.superseded() => {
            warn!(watch = %watch.name, path = %file.path.display(), epoch, error = chain(&error), "Another daemon holds the file now; abandoning this conversion and leaving the input.");
            Outcome::Lost
        }
        Err(error) if error.is_cancelled() => {
            // The Converting entry stays the latest: the attempt is counted, the file retried.
            info!(path = %file.path.display(), "Conversion stopped by shutdown; the input stays.");
            Outcome::Cancelled
        }
        Err(error) => failed(&error, "Conversion failed."),
    };
    drop(held);
    outcome
}

/// A file waits for its books. A database that is down is logged once, when it goes down,
/// not once per file and round.
fn books_unavailable(path: &Path, error: &BooksError, message: &str) -> Outcome {
    if error.is_unavailable() {
        tracing::debug!(path = %path.display(), error = chain(error), "{message}");
    } else {
        warn!(path = %path.display(), error = chain(error), "{message}");
    }
    Outcome::Waits(Waiting::Ledger {
        error: chain(error),
    })
}

/// Ends a content hash's conversion in the books when dropped.
struct ConvertingGuard<'a> {
    books: &'a Books,
    hash: String,
}

impl Drop for ConvertingGuard<'_> {
    fn drop(&mut self) {
        self.books.end_converting(&self.hash);
    }
}

/// The complete dataset at `output`, when it was made from exactly this `source`.
/// `bamflow verify` of a just-published dataset against its input (`verify = true`): a
/// difference, or a side that cannot be read, fails the file at stage `verify`.
fn verify_published(engine: &Engine, dataset: &Path, input: &Path) -> Result<(), Failed> {
    // Stops here under BAMFLOW_FAULTS, so a test can damage the dataset first.
    let _ = bamflow_engine::faults::point("before-verify");
    let failed = |message: String, location| Failed {
        stage: Stage::Verify,
        location,
        message,
    };
    match bamflow_engine::verify::verify(engine, dataset, input) {
        Ok(report) if report.identical() => Ok(()),
        Ok(report) => {
            let record = report
                .differences
                .first()
                .map(|d| d.record)
                .filter(|&r| r > 0);
            Err(failed(
                bamflow_engine::verify::describe(&report, dataset, input),
                record.map(Location::Record),
            ))
        }
        Err(error) => Err(failed(chain(&error), None)),
    }
}

/// What the whole content said of a file whose sampled hash matched converted files.
struct Confirmation {
    /// The converted file it equals byte for byte, if any.
    duplicate_of: Option<PathBuf>,
    /// Its SHA-256.
    sha256: String,
    /// Bytes read to tell.
    bytes_read: u64,
}

/// Reads the whole of `path` once and compares its SHA-256 with each candidate's: the one its
/// conversion recorded, or for a conversion that read only part of its input (regions) or
/// was recorded before full hashes were, the hash of that input where its manifest says it
/// was filed, if it is still there. A candidate whose content cannot be known is not a match.
fn confirm(path: &Path, candidates: &[Entry]) -> std::io::Result<Confirmation> {
    let (sha256, mut bytes_read) = bamflow_engine::hash::file_sha256(path)?;
    for candidate in candidates {
        let known = match &candidate.sha256 {
            Some(known) => Some(known.clone()),
            None => {
                let filed = candidate
                    .output
                    .as_deref()
                    .and_then(dataset::Published::read)
                    .and_then(|published| published.source.filed_as);
                match filed.map(|filed| bamflow_engine::hash::file_sha256(&filed)) {
                    Some(Ok((known, read))) => {
                        bytes_read += read;
                        Some(known)
                    }
                    _ => None,
                }
            }
        };
        if known.as_deref() == Some(sha256.as_str()) {
            return Ok(Confirmation {
                duplicate_of: Some(candidate.path.clone()),
                sha256,
                bytes_read,
            });
        }
    }
    Ok(Confirmation {
        duplicate_of: None,
        sha256,
        bytes_read,
    })
}

fn published_from(output: &Path, source: &dataset::SourceInfo) -> Option<dataset::Published> {
    let published = dataset::Published::read(output)?;
    published.source.same_content(source).then_some(published)
}

/// `<name>.error.json`: what failed, where, and when.
#[derive(Serialize)]
struct ErrorReport<'a> {
    file: &'a Path,
    stage: String,
    location: Option<Location>,
    message: String,
    time: String,
    bamflow_version: &'static str,
}

/// Why a file is set aside: what `<name>.error.json` says.
struct Failed {
    stage: Stage,
    location: Option<Location>,
    message: String,
}

impl From<&ConvertError> for Failed {
    fn from(error: &ConvertError) -> Self {
        Self {
            stage: error.stage,
            location: error.location(),
            message: chain(error),
        }
    }
}

/// The failure of a file that stayed without its BGZF EOF block for the watch's
/// `incomplete_timeout_seconds`: a read failure at its last byte.
fn incomplete_error(watch: &WatchConfig, file: &Ready, since: SystemTime) -> Failed {
    let waited = SystemTime::now()
        .duration_since(since)
        .unwrap_or_default()
        .as_secs();
    let timeout = watch.incomplete_timeout.unwrap_or_default().as_secs();
    let cause = std::io::Error::other(format!(
        "no BGZF EOF block after {waited} s unchanged (since {}; incomplete_timeout_seconds = \
         {timeout}): the file is incomplete, e.g. a copy cut short",
        humantime::format_rfc3339_seconds(since),
    ));
    // Named as every conversion failure is; the offset is the end the file stopped at.
    let error = ConvertError::new(&file.path, Stage::Read, cause.into());
    Failed {
        location: Some(Location::Byte(file.fingerprint.size)),
        ..Failed::from(&error)
    }
}

fn quarantine(watch: &WatchConfig, input: &Path, error: &Failed) {
    let moved = match dispose(watch, input, &watch.on_failure) {
        Ok(moved) => moved,
        Err(e) => {
            warn!(path = %input.display(), error = format!("{e:#}"), "Cannot set failed input aside.");
            input.to_owned()
        }
    };
    let report = ErrorReport {
        file: input,
        stage: error.stage.to_string(),
        location: error.location,
        message: error.message.clone(),
        time: dataset::timestamp(SystemTime::now()),
        bamflow_version: env!("CARGO_PKG_VERSION"),
    };
    let mut name = moved.file_name().unwrap_or_default().to_owned();
    name.push(".error.json");
    let path = moved.with_file_name(name);
    let written = serde_json::to_vec_pretty(&report)
        .map_err(anyhow::Error::from)
        .and_then(|json| {
            bamflow_engine::durable::write_file(&path, &json).map_err(anyhow::Error::from)
        });
    if let Err(e) = written {
        warn!(path = %path.display(), error = format!("{e:#}"), "Cannot write error report.");
    }
}

/// Applies a disposition; returns where the input is now.
fn dispose(
    watch: &WatchConfig,
    input: &Path,
    disposition: &Disposition,
) -> anyhow::Result<PathBuf> {
    match disposition {
        Disposition::Keep => Ok(input.to_owned()),
        Disposition::Delete => {
            fs::remove_file(input).with_context(|| format!("cannot delete {}", input.display()))?;
            Ok(input.to_owned())
        }
        Disposition::Move(dir) => {
            let dir = watch.path.join(dir);
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let target = move_target(&dir, input)?;
            bamflow_engine::durable::rename(input, &target)?;
            Ok(target)
        }
    }
}

/// Where a `move:<dir>` disposition puts `input`: `dir/<name>`, or `<name>.1`, `<name>.2`, …
/// when that is taken, so an earlier file of the same name is never overwritten.
fn move_target(dir: &Path, input: &Path) -> anyhow::Result<PathBuf> {
    let name = input.file_name().context("input has no file name")?;
    let mut target = dir.join(name);
    let mut n = 1;
    while target.symlink_metadata().is_ok() {
        let mut numbered = name.to_owned();
        numbered.push(format!(".{n}"));
        target = dir.join(numbered);
        n += 1;
    }
    Ok(target)
}

/// Where `on_success` will move the input, as an absolute path for the manifest; `None` when
/// it stays or is deleted.
fn planned_filing(watch: &WatchConfig, input: &Path) -> Option<PathBuf> {
    let Disposition::Move(dir) = &watch.on_success else {
        return None;
    };
    let folder = fs::canonicalize(&watch.path).ok()?;
    move_target(&folder.join(dir), input).ok()
}

/// Fills `{watch}`, `{stem}` and `{sample}`; values are sanitised so no header value or file
/// name can leave the output root.
fn render_output(watch: &WatchConfig, input: &Path) -> PathBuf {
    let name = input
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("input");
    let stem = name.strip_suffix(".bam").unwrap_or(name);
    let mut output = watch
        .output
        .replace("{watch}", &sanitize(&watch.name))
        .replace("{stem}", &sanitize(stem));
    if output.contains("{sample}") {
        let sample =
            first_sample(input, &watch.convert).unwrap_or_else(|| "unknown-sample".to_owned());
        output = output.replace("{sample}", &sanitize(&sample));
    }
    PathBuf::from(output)
}

fn first_sample(input: &Path, options: &pipeline::ConvertOptions) -> Option<String> {
    let text = pipeline::read_header_text(input, options).ok()?;
    text.lines()
        .filter(|line| line.starts_with("@RG\t"))
        .find_map(|line| line.split('\t').find_map(|field| field.strip_prefix("SM:")))
        .map(str::to_owned)
}

/// Keeps letters, digits, `-`, `_` and `.`; anything else becomes `_`; never `.` or `..`.
fn sanitize(value: &str) -> String {
    let clean: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    match clean.as_str() {
        "" | "." | ".." => "_".to_owned(),
        _ => clean,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_keeps_values_inside_the_output_root() {
        let t = |value: &str, expected: &str| assert_eq!(sanitize(value), expected);
        t("NA12878", "NA12878");
        t("../../etc", ".._.._etc");
        t("..", "_");
        t("a/b c", "a_b_c");
        t("", "_");
    }
}
