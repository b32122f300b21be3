//! The daemon: scan watched folders, take each ready file once, convert it, file it away.
//!
//! One loop, on one thread, converting one file at a time on the engine's own pool: rescans
//! every `scan_interval_seconds` find ready files, each is claimed, converted and moved to
//! `done/` (or `failed/` with an `error.json`). A shutdown request stops the loop between
//! files and cancels a running conversion cleanly: nothing half-published, the input stays
//! where it was. A reload request re-reads the configuration between files; an invalid one
//! keeps the current configuration.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use serde::Serialize;
use tracing::{info, warn};

use crate::config::{ConfigError, DaemonConfig, Disposition, WatchConfig};
use crate::dataset;
use crate::ledger::{self, Entry, FileState, Ledger};
use crate::pipeline::{self, ConvertError, Location, Observer};
use crate::service::Notifier;
use crate::watch::{Claim, Events, Fingerprint, Ready, Tracker};

/// How often files already seen are re-checked for readiness between full rescans (and how
/// long the loop waits for filesystem events).
const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

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

/// What a running conversion reports to: shutdown cancels it, progress feeds the watchdog.
struct JobObserver<'a> {
    control: &'a Control,
    notifier: &'a Notifier,
}

impl Observer for JobObserver<'_> {
    fn progress(&self, _progress: pipeline::Progress) {
        self.notifier.watchdog();
    }

    fn cancelled(&self) -> bool {
        self.control.shutdown_requested()
    }
}

/// How one file ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Success,
    Failure,
    /// Another daemon holds it, or it vanished.
    Skipped,
    /// The same content was converted before.
    Duplicate,
    /// This very file was converted before and kept in place.
    AlreadyDone,
    /// Shutdown stopped the conversion; the input stays for the next start.
    Cancelled,
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
    let mut config = load()?;
    fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create state_dir {}", config.state_dir.display()))?;
    let mut ledger = Ledger::open(&config.state_dir)?;
    let mut trackers: Vec<Tracker> = config.watches.iter().map(|_| Tracker::default()).collect();
    // Files kept in place (`on_success = "keep"`) are not converted again in this run.
    let mut kept: HashSet<(PathBuf, Fingerprint)> = HashSet::new();
    let mut events = Events::watch(config.watches.iter().map(|w| w.path.as_path()));
    info!(watches = config.watches.len(), state_dir = %config.state_dir.display(), "Daemon started.");
    notifier.ready("Watching.");

    let mut next_rescan = Instant::now();
    while !control.shutdown_requested() {
        if control.take_reload() {
            notifier.reloading();
            match load() {
                Ok(new) => {
                    trackers = new.watches.iter().map(|_| Tracker::default()).collect();
                    events = Events::watch(new.watches.iter().map(|w| w.path.as_path()));
                    config = new;
                    next_rescan = Instant::now();
                    info!(watches = config.watches.len(), "Reloaded configuration.");
                }
                Err(error) => warn!(
                    error = chain(&error),
                    "Invalid configuration; keeping the current one."
                ),
            }
            notifier.ready("Watching.");
        }
        notifier.watchdog();

        let now = Instant::now();
        let full = now >= next_rescan;
        if full {
            next_rescan = now + config.scan_interval;
        }
        for (watch, tracker) in config.watches.iter().zip(&mut trackers) {
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
                if control.shutdown_requested() {
                    break;
                }
                if kept.contains(&(file.path.clone(), file.fingerprint)) {
                    continue;
                }
                notifier.status(&format!("Converting {}.", file.path.display()));
                let observer = JobObserver { control, notifier };
                let outcome = process(watch, &file, &config.state_dir, &mut ledger, &observer);
                let done = matches!(
                    outcome,
                    Outcome::Success | Outcome::Duplicate | Outcome::AlreadyDone
                );
                if done && watch.on_success == Disposition::Keep {
                    kept.insert((file.path.clone(), file.fingerprint));
                }
                if outcome != Outcome::Cancelled {
                    tracker.forget(&file.path);
                }
            }
        }
        let pending: usize = trackers.iter().map(Tracker::pending).sum();
        notifier.status(&format!("Watching; {pending} files waiting to settle."));
        let stop = || control.shutdown_requested() || control.reload_pending();
        if events.wait(RECHECK_INTERVAL.min(config.scan_interval), stop) {
            next_rescan = Instant::now();
        }
    }
    notifier.stopping();
    info!("Daemon stopped.");
    Ok(())
}

/// Claims, converts and files away one ready file.
fn process(
    watch: &WatchConfig,
    file: &Ready,
    state_dir: &Path,
    ledger: &mut Ledger,
    observer: &JobObserver<'_>,
) -> Outcome {
    let claim = match Claim::acquire(state_dir, &file.path) {
        Ok(Some(claim)) => claim,
        Ok(None) => return Outcome::Skipped,
        Err(error) => {
            warn!(path = %file.path.display(), %error, "Cannot claim file.");
            return Outcome::Skipped;
        }
    };
    // Another daemon may have finished and moved it between our scan and our claim.
    if !file.path.exists() {
        return Outcome::Skipped;
    }

    let hash = match ledger::content_hash(&file.path) {
        Ok(hash) => hash,
        Err(error) => {
            warn!(path = %file.path.display(), %error, "Cannot read file to hash it.");
            return Outcome::Skipped;
        }
    };
    let entry = |state| Entry::new(&watch.name, &file.path, file.fingerprint.size, &hash, state);
    let record = |ledger: &mut Ledger, entry: Entry| {
        if let Err(error) = ledger.append(entry) {
            warn!(error = chain(&error), "Cannot record in the ledger.");
        }
    };

    if let Some(previous) = ledger.converted(&hash) {
        if previous.path == file.path {
            return Outcome::AlreadyDone;
        }
        let original = previous.path.clone();
        info!(watch = %watch.name, path = %file.path.display(), duplicate_of = %original.display(), outcome = "duplicate", "Same content was converted before; not converting it again.");
        record(
            ledger,
            Entry {
                duplicate_of: Some(original),
                ..entry(FileState::Duplicate)
            },
        );
        if let Err(error) = dispose(watch, &file.path, &watch.on_success) {
            warn!(path = %file.path.display(), error = format!("{error:#}"), "Cannot file away duplicate input.");
        }
        return Outcome::Duplicate;
    }

    let attempts = ledger.attempts(&file.path) + 1;
    let output = render_output(watch, &file.path);
    record(
        ledger,
        Entry {
            attempts,
            output: Some(output.clone()),
            ..entry(FileState::Converting)
        },
    );
    info!(watch = %watch.name, path = %file.path.display(), output = %output.display(), attempts, "Converting file.");
    let outcome = match pipeline::convert(&file.path, &output, &watch.convert, observer) {
        Ok(summary) => {
            let m = &summary.manifest;
            record(
                ledger,
                Entry {
                    attempts,
                    records_read: Some(m.counts.read),
                    records_written: Some(m.counts.written),
                    output: Some(output.clone()),
                    ..entry(FileState::Success)
                },
            );
            info!(
                watch = %watch.name,
                path = %file.path.display(),
                records = m.counts.read,
                bytes_in = m.bytes_in,
                bytes_out = m.bytes_out,
                seconds = m.seconds,
                outcome = "success",
                "Converted file."
            );
            if let Err(error) = dispose(watch, &file.path, &watch.on_success) {
                warn!(path = %file.path.display(), error = format!("{error:#}"), "Cannot file away converted input.");
            }
            Outcome::Success
        }
        Err(error) if error.is_cancelled() => {
            // The Converting entry stays the latest: the attempt is counted, the file retried.
            info!(path = %file.path.display(), "Conversion stopped by shutdown; the input stays.");
            Outcome::Cancelled
        }
        Err(error) => {
            warn!(watch = %watch.name, path = %file.path.display(), error = chain(&error), outcome = "failure", "Conversion failed.");
            record(
                ledger,
                Entry {
                    attempts,
                    error: Some(chain(&error)),
                    ..entry(FileState::Failure)
                },
            );
            quarantine(watch, &file.path, &error);
            Outcome::Failure
        }
    };
    drop(claim);
    outcome
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

fn quarantine(watch: &WatchConfig, input: &Path, error: &ConvertError) {
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
        location: error.location(),
        message: chain(error),
        time: dataset::timestamp(SystemTime::now()),
        bamflow_version: env!("CARGO_PKG_VERSION"),
    };
    let mut name = moved.file_name().unwrap_or_default().to_owned();
    name.push(".error.json");
    let path = moved.with_file_name(name);
    let written = serde_json::to_vec_pretty(&report)
        .map_err(anyhow::Error::from)
        .and_then(|json| crate::durable::write_file(&path, &json).map_err(anyhow::Error::from));
    if let Err(e) = written {
        warn!(path = %path.display(), error = format!("{e:#}"), "Cannot write error report.");
    }
}

/// An error and its causes, `: `-separated, as `anyhow`'s `{:#}` prints them.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
            let name = input.file_name().context("input has no file name")?;
            let mut target = dir.join(name);
            // Never overwrite an earlier file of the same name.
            let mut n = 1;
            while target.exists() {
                let mut numbered = name.to_owned();
                numbered.push(format!(".{n}"));
                target = dir.join(numbered);
                n += 1;
            }
            crate::durable::rename(input, &target)?;
            Ok(target)
        }
    }
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
