//! Prometheus metrics (DESIGN.md §8) and the HTTP endpoint that serves them.
//!
//! Every series exists from the start at zero, so a dashboard shows a flat line rather than
//! "no data" and `rate()` sees the first increment. Labels come only from closed sets: watch
//! names from the configuration, and the fixed lists of outcomes, stages, error kinds and
//! rescan reasons below. No file or sample name ever becomes a label, so the number of series
//! depends on the configuration, never on how many files went through.
//!
//! Counters are updated once per window of batches or per part, never per record.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::watch::{Waiting, WaitingFile};
use bamflow_engine::pipeline::busy::BusyStage;
use bamflow_engine::pipeline::{ErrorKind, Progress, Stage};

/// How a file ended, as the `outcome` label says.
pub const OUTCOMES: [&str; 3] = ["success", "failure", "duplicate"];

/// What the full SHA-256 said of a sampled-hash match, as the `result` label says.
pub const DUPLICATE_CHECK_RESULTS: [&str; 2] = ["confirmed", "refuted"];

/// Why a full rescan ran, as the `reason` label says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RescanReason {
    /// `scan_interval_seconds` elapsed (or the daemon started).
    Interval,
    /// A filesystem event (or an overflow of the event queue).
    Event,
    /// The configuration was reloaded.
    Reload,
}

impl RescanReason {
    const ALL: [Self; 3] = [Self::Interval, Self::Event, Self::Reload];

    fn name(self) -> &'static str {
        match self {
            Self::Interval => "interval",
            Self::Event => "event",
            Self::Reload => "reload",
        }
    }
}

/// Every metric family of the daemon, registered in one registry.
pub struct Metrics {
    registry: Registry,
    files_discovered: IntCounterVec,
    files_processed: IntCounterVec,
    files_in_progress: IntGaugeVec,
    files_pending: IntGaugeVec,
    oldest_pending: GaugeVec,
    files_waiting: IntGaugeVec,
    oldest_waiting: GaugeVec,
    records_read: IntCounterVec,
    records_written: IntCounterVec,
    records_filtered: IntCounterVec,
    input_bytes: IntCounterVec,
    output_bytes: IntCounterVec,
    file_duration: HistogramVec,
    part_commit_duration: Histogram,
    stage_busy: prometheus::CounterVec,
    checkpoints: IntCounterVec,
    resumes: IntCounterVec,
    errors: IntCounterVec,
    rescans: IntCounterVec,
    duplicate_checks: IntCounterVec,
    duplicate_check_bytes: IntCounterVec,
    last_success: GaugeVec,
    config_reload_ok: IntGauge,
    plugin_info: IntGaugeVec,
    heartbeat: Gauge,
    claims: IntCounterVec,
    lease_confirmations_failed: IntCounter,
    coordination_errors: IntCounterVec,
    coordination_up: IntGauge,
    coordination_configured: std::sync::atomic::AtomicBool,
    upload: UploadMetrics,
}

/// The object-store families, handed to each [`bamflow_store::Bucket`] (its threads report
/// into them directly).
#[derive(Clone, Debug)]
pub struct UploadMetrics {
    bytes: IntCounter,
    retries: IntCounterVec,
    errors: IntCounterVec,
}

impl bamflow_store::StoreObserver for UploadMetrics {
    fn uploaded(&self, bytes: u64) {
        self.bytes.inc_by(bytes);
    }

    fn retried(&self, why: bamflow_store::Retry) {
        self.retries.with_label_values(&[why.as_str()]).inc();
    }

    fn failed(&self, why: bamflow_store::Failure) {
        self.errors.with_label_values(&[why.as_str()]).inc();
    }
}

/// The `event` label of `bamflow_claims_total`.
pub const CLAIM_EVENTS: [&str; 3] = ["taken", "taken_over", "lost"];

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl Metrics {
    /// Registers every family, the process collector and `bamflow_build_info`.
    ///
    /// # Errors
    ///
    /// Returns the registry's error (a duplicate or malformed family: a bug).
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let family = IntCounterVec::new(opts(name, help), labels)?;
            registry.register(Box::new(family.clone()))?;
            Ok::<_, prometheus::Error>(family)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let family = IntGaugeVec::new(opts(name, help), labels)?;
            registry.register(Box::new(family.clone()))?;
            Ok::<_, prometheus::Error>(family)
        };
        let float_gauge = |name: &str, help: &str, labels: &[&str]| {
            let family = GaugeVec::new(opts(name, help), labels)?;
            registry.register(Box::new(family.clone()))?;
            Ok::<_, prometheus::Error>(family)
        };
        let watch = &["watch"];

        let build_info = gauge(
            "bamflow_build_info",
            "Always 1; the version label says which bamflow is running.",
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        let file_duration = HistogramVec::new(
            HistogramOpts::new(
                "bamflow_file_duration_seconds",
                "Seconds from claiming a file to filing it away, per converted file.",
            )
            .buckets(vec![
                1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
                14400.0, 28800.0, 86400.0,
            ]),
            watch,
        )?;
        registry.register(Box::new(file_duration.clone()))?;
        let part_commit_duration = Histogram::with_opts(
            HistogramOpts::new(
                "bamflow_part_commit_duration_seconds",
                "Seconds to close, fsync and rename one part file.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
        )?;
        registry.register(Box::new(part_commit_duration.clone()))?;
        let stage_busy = prometheus::CounterVec::new(
            opts(
                "bamflow_stage_busy_seconds_total",
                "Seconds spent working in each pipeline stage, summed over threads.",
            ),
            &["stage"],
        )?;
        registry.register(Box::new(stage_busy.clone()))?;
        let heartbeat = Gauge::with_opts(opts(
            "bamflow_loop_heartbeat_timestamp_seconds",
            "When the daemon's scan loop last ran (Unix time); /healthz fails when it stalls.",
        ))?;
        registry.register(Box::new(heartbeat.clone()))?;
        let config_reload_ok = IntGauge::with_opts(opts(
            "bamflow_config_last_reload_successful",
            "1 when the last configuration (re)load succeeded, 0 when it was refused.",
        ))?;
        registry.register(Box::new(config_reload_ok.clone()))?;
        config_reload_ok.set(1);
        let lease_confirmations_failed = IntCounter::with_opts(opts(
            "bamflow_lease_confirmations_failed_total",
            "Commits refused, or not confirmable, because this daemon's claim could not be confirmed in the coordination database.",
        ))?;
        let coordination_up = IntGauge::with_opts(opts(
            "bamflow_coordination_up",
            "1 while the coordination database answers, 0 while it cannot be reached.",
        ))?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        let metrics = Self {
            files_discovered: counter(
                "bamflow_files_discovered_total",
                "Files matching a watch's pattern seen for the first time.",
                watch,
            )?,
            files_processed: counter(
                "bamflow_files_processed_total",
                "Files finished, by outcome.",
                &["watch", "outcome"],
            )?,
            files_in_progress: gauge(
                "bamflow_files_in_progress",
                "Files being converted now.",
                watch,
            )?,
            files_pending: gauge(
                "bamflow_files_pending",
                "Files seen in a watched folder and not yet being converted.",
                watch,
            )?,
            oldest_pending: float_gauge(
                "bamflow_oldest_pending_file_timestamp_seconds",
                "When the oldest pending file was first seen (Unix time); 0 when none is pending.",
                watch,
            )?,
            files_waiting: gauge(
                "bamflow_files_waiting",
                "Files seen and not being converted, by why they wait (bamflow status lists them).",
                &["watch", "reason"],
            )?,
            oldest_waiting: float_gauge(
                "bamflow_oldest_waiting_file_timestamp_seconds",
                "When the longest-waiting file of each reason last changed (Unix time); 0 when none.",
                &["watch", "reason"],
            )?,
            records_read: counter(
                "bamflow_records_read_total",
                "BAM records read from inputs.",
                watch,
            )?,
            records_written: counter(
                "bamflow_records_written_total",
                "Rows written to Parquet parts.",
                watch,
            )?,
            records_filtered: counter(
                "bamflow_records_filtered_total",
                "Records dropped, by filter.",
                &["watch", "filter"],
            )?,
            input_bytes: counter(
                "bamflow_input_bytes_total",
                "Compressed BAM bytes read.",
                watch,
            )?,
            output_bytes: counter(
                "bamflow_output_bytes_total",
                "Parquet bytes written in committed parts.",
                watch,
            )?,
            file_duration,
            part_commit_duration,
            stage_busy,
            checkpoints: counter(
                "bamflow_checkpoints_total",
                "Checkpoints saved (one per committed part).",
                watch,
            )?,
            resumes: counter(
                "bamflow_resumes_total",
                "Conversions continued from a checkpoint after an interruption.",
                watch,
            )?,
            errors: counter(
                "bamflow_errors_total",
                "Failed conversions, by the stage that failed and the kind of error.",
                &["stage", "kind"],
            )?,
            rescans: counter(
                "bamflow_watch_rescans_total",
                "Full rescans of the watched folders, by what triggered them.",
                &["reason"],
            )?,
            duplicate_checks: counter(
                "bamflow_duplicate_checks_total",
                "Files whose sampled hash matched a converted file, by what the full SHA-256 said: confirmed (a duplicate) or refuted (converted as new).",
                &["watch", "result"],
            )?,
            duplicate_check_bytes: counter(
                "bamflow_duplicate_check_bytes_total",
                "Bytes read to confirm or refute a sampled-hash match.",
                watch,
            )?,
            last_success: float_gauge(
                "bamflow_last_success_timestamp_seconds",
                "When a file last converted successfully (Unix time); 0 before the first.",
                watch,
            )?,
            config_reload_ok,
            plugin_info: gauge(
                "bamflow_plugin_info",
                "Always 1 per loaded filter plugin; labels name it.",
                &["plugin", "version", "abi"],
            )?,
            heartbeat,
            claims: counter(
                "bamflow_claims_total",
                "Claims of files in the coordination database (several hosts): taken by this daemon, taken over from a holder whose lease expired, or lost by this daemon (its lease expired or was taken over).",
                &["event"],
            )?,
            lease_confirmations_failed,
            coordination_errors: counter(
                "bamflow_coordination_errors_total",
                "Errors talking to the coordination database, by what was being done.",
                &["operation"],
            )?,
            coordination_up,
            coordination_configured: std::sync::atomic::AtomicBool::new(false),
            upload: UploadMetrics {
                bytes: {
                    let bytes = IntCounter::new(
                        "bamflow_upload_bytes_total",
                        "Bytes of parts, manifests and markers that reached an object store (s3:// outputs).",
                    )?;
                    registry.register(Box::new(bytes.clone()))?;
                    bytes
                },
                retries: counter(
                    "bamflow_upload_retries_total",
                    "Object-store requests retried with backoff: throttled (429, 503 SlowDown), another 5xx (server), or a failed connection (network).",
                    &["reason"],
                )?,
                errors: counter(
                    "bamflow_upload_errors_total",
                    "Object-store operations that failed for good: denied (401/403), conflict (a create-only put found the object), other (other 4xx, retries exhausted).",
                    &["kind"],
                )?,
            },
            registry,
        };
        for why in bamflow_store::Retry::ALL {
            metrics.upload.retries.with_label_values(&[why.as_str()]);
        }
        for why in bamflow_store::Failure::ALL {
            metrics.upload.errors.with_label_values(&[why.as_str()]);
        }
        for stage in BusyStage::ALL {
            metrics.stage_busy.with_label_values(&[stage.name()]);
        }
        for stage in Stage::ALL {
            for kind in ErrorKind::ALL {
                metrics
                    .errors
                    .with_label_values(&[&stage.to_string(), kind.name()]);
            }
        }
        for reason in RescanReason::ALL {
            metrics.rescans.with_label_values(&[reason.name()]);
        }
        Ok(metrics)
    }

    /// Creates the coordination series at zero, when several hosts coordinate.
    pub fn init_coordination(&self, operations: &[&str]) {
        for event in CLAIM_EVENTS {
            self.claims.with_label_values(&[event]);
        }
        for operation in operations {
            self.coordination_errors.with_label_values(&[operation]);
        }
        // Registered only now: on one host the families would say nothing true.
        let register = |collector: Box<dyn prometheus::core::Collector>| {
            if let Err(error) = self.registry.register(collector) {
                tracing::warn!(%error, "Cannot register a coordination metric.");
            }
        };
        if !self
            .coordination_configured
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            register(Box::new(self.lease_confirmations_failed.clone()));
            register(Box::new(self.coordination_up.clone()));
        }
    }

    /// One of [`CLAIM_EVENTS`].
    pub fn claim_event(&self, event: &str) {
        self.claims.with_label_values(&[event]).inc();
    }

    pub fn lease_confirmation_failed(&self) {
        self.lease_confirmations_failed.inc();
    }

    pub fn coordination_error(&self, operation: &str) {
        self.coordination_errors
            .with_label_values(&[operation])
            .inc();
    }

    pub fn coordination(&self, up: bool) {
        self.coordination_up.set(i64::from(up));
    }

    /// Whether the coordination database is known unreachable (never, on one host).
    pub fn coordination_down(&self) -> bool {
        self.coordination_up.get() == 0
            && self
                .coordination_configured
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Creates every series of a watch at zero (at start, and for watches a reload adds),
    /// including one per built-in filter it runs; a plugin's appears when it is first loaded.
    pub fn init_watch(&self, watch: &str, filters: &[&str]) {
        let labels = &[watch];
        for filter in filters {
            self.records_filtered.with_label_values(&[watch, filter]);
        }
        self.files_discovered.with_label_values(labels);
        for outcome in OUTCOMES {
            self.files_processed.with_label_values(&[watch, outcome]);
        }
        self.files_in_progress.with_label_values(labels);
        self.files_pending.with_label_values(labels);
        self.oldest_pending.with_label_values(labels);
        for reason in Waiting::REASONS {
            self.files_waiting.with_label_values(&[watch, reason]);
            self.oldest_waiting.with_label_values(&[watch, reason]);
        }
        self.records_read.with_label_values(labels);
        self.records_written.with_label_values(labels);
        for result in DUPLICATE_CHECK_RESULTS {
            self.duplicate_checks.with_label_values(&[watch, result]);
        }
        self.duplicate_check_bytes.with_label_values(labels);
        self.input_bytes.with_label_values(labels);
        self.output_bytes.with_label_values(labels);
        self.file_duration.with_label_values(labels);
        self.checkpoints.with_label_values(labels);
        self.resumes.with_label_values(labels);
        self.last_success.with_label_values(labels);
    }

    /// The Prometheus text format of every series.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let families = self.registry.gather();
        if let Err(error) = TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(%error, "Cannot encode metrics.");
        }
        out
    }

    pub fn discovered(&self, watch: &str, files: u64) {
        self.files_discovered
            .with_label_values(&[watch])
            .inc_by(files);
    }

    pub fn pending(&self, watch: &str, files: usize, oldest: Option<SystemTime>) {
        self.files_pending
            .with_label_values(&[watch])
            .set(i64::try_from(files).unwrap_or(i64::MAX));
        self.oldest_pending
            .with_label_values(&[watch])
            .set(oldest.map_or(0.0, unix_seconds));
    }

    /// The files of a watch that wait, each with its reason (every reason is set, to 0 when
    /// no file waits for it).
    pub fn waiting(&self, watch: &str, files: &[WaitingFile]) {
        for reason in Waiting::REASONS {
            let of_reason = files.iter().filter(|f| f.waiting.reason() == reason);
            let (count, oldest) = of_reason.fold((0_i64, None), |(n, oldest), f| {
                let oldest = Some(oldest.map_or(f.changed_at, |o: SystemTime| o.min(f.changed_at)));
                (n + 1, oldest)
            });
            self.files_waiting
                .with_label_values(&[watch, reason])
                .set(count);
            self.oldest_waiting
                .with_label_values(&[watch, reason])
                .set(oldest.map_or(0.0, unix_seconds));
        }
    }

    pub fn rescanned(&self, reason: RescanReason) {
        self.rescans.with_label_values(&[reason.name()]).inc();
    }

    pub fn reloaded(&self, ok: bool) {
        self.config_reload_ok.set(i64::from(ok));
    }

    /// The scan loop is alive.
    pub fn beat(&self) {
        self.heartbeat.set(unix_seconds(SystemTime::now()));
    }

    fn heartbeat_age(&self) -> Duration {
        let now = unix_seconds(SystemTime::now());
        Duration::from_secs_f64((now - self.heartbeat.get()).max(0.0))
    }

    pub fn file_started(&self, watch: &str) {
        self.files_in_progress.with_label_values(&[watch]).inc();
    }

    /// A file ended with `outcome` (one of [`OUTCOMES`]) after `seconds`; `None` when it did
    /// not finish (shutdown, skipped).
    pub fn file_finished(&self, watch: &str, outcome: Option<&str>, seconds: f64) {
        self.files_in_progress.with_label_values(&[watch]).dec();
        let Some(outcome) = outcome else { return };
        self.files_processed
            .with_label_values(&[watch, outcome])
            .inc();
        if outcome == "success" {
            self.file_duration
                .with_label_values(&[watch])
                .observe(seconds);
            self.last_success
                .with_label_values(&[watch])
                .set(unix_seconds(SystemTime::now()));
        }
    }

    /// A sampled-hash match was checked against the full hash: `confirmed` or `refuted`
    /// (one of [`DUPLICATE_CHECK_RESULTS`]), reading `bytes`.
    pub fn duplicate_checked(&self, watch: &str, result: &str, bytes: u64) {
        self.duplicate_checks
            .with_label_values(&[watch, result])
            .inc();
        self.duplicate_check_bytes
            .with_label_values(&[watch])
            .inc_by(bytes);
    }

    /// The object-store families, for the buckets outputs are uploaded to.
    pub fn upload(&self) -> UploadMetrics {
        self.upload.clone()
    }

    pub fn error(&self, stage: Stage, kind: ErrorKind) {
        self.errors
            .with_label_values(&[&stage.to_string(), kind.name()])
            .inc();
    }

    /// Adds a conversion's progress since `last` (both cumulative for that conversion).
    pub fn progressed(&self, watch: &str, last: &Progress, now: &Progress) {
        let labels = &[watch];
        self.records_read
            .with_label_values(labels)
            .inc_by(since(last.records_read, now.records_read));
        self.records_written
            .with_label_values(labels)
            .inc_by(since(last.rows_written, now.rows_written));
        self.input_bytes
            .with_label_values(labels)
            .inc_by(since(last.bytes_read, now.bytes_read));
        for stage in BusyStage::ALL {
            let (before, after) = (last.busy.get(stage), now.busy.get(stage));
            let delta = if after >= before {
                after - before
            } else {
                after
            };
            self.stage_busy
                .with_label_values(&[stage.name()])
                .inc_by(delta);
        }
    }

    pub fn part_committed(&self, watch: &str, bytes: u64, commit_seconds: f64) {
        self.checkpoints.with_label_values(&[watch]).inc();
        self.output_bytes.with_label_values(&[watch]).inc_by(bytes);
        self.part_commit_duration.observe(commit_seconds);
    }

    /// Records dropped by a filter (built-in or plugin), once per batch.
    pub fn filtered(&self, watch: &str, filter: &str, records: u64) {
        self.records_filtered
            .with_label_values(&[watch, filter])
            .inc_by(records);
    }

    /// A filter plugin was loaded.
    pub fn plugin_loaded(&self, plugin: &str, version: &str, abi: &str) {
        self.plugin_info
            .with_label_values(&[plugin, version, abi])
            .set(1);
    }

    pub fn resumed(&self, watch: &str) {
        self.resumes.with_label_values(&[watch]).inc();
    }
}

/// Growth from `before` to `after`; a counter that went back (a retried attempt counting from
/// zero again) counts from zero.
fn since(before: u64, after: u64) -> u64 {
    after.checked_sub(before).unwrap_or(after)
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Serves `GET /metrics` and `GET /healthz` on `address` from a thread of its own, so a slow
/// scraper never touches the pipeline. Returns the address actually bound (port 0 picks one).
///
/// `/healthz` answers 200 while the scan loop has run within `stall_after`, 503 otherwise.
///
/// # Errors
///
/// Returns the error of binding the address.
pub fn serve(
    address: SocketAddr,
    metrics: Arc<Metrics>,
    stall_after: Duration,
) -> io::Result<SocketAddr> {
    let server = tiny_http::Server::http(address).map_err(io::Error::other)?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| io::Error::other("metrics listener has no IP address"))?;
    std::thread::Builder::new()
        .name("bamflow-metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                respond(request, &metrics, stall_after);
            }
        })?;
    Ok(bound)
}

fn respond(request: tiny_http::Request, metrics: &Metrics, stall_after: Duration) {
    use tiny_http::{Header, Method, Response};
    let text = |body: Vec<u8>, status: u16, content_type: &str| {
        let mut response = Response::from_data(body).with_status_code(status);
        if let Ok(header) = Header::from_bytes("Content-Type", content_type) {
            response.add_header(header);
        }
        response
    };
    let path = request
        .url()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_owned();
    let response = match (request.method(), path.as_str()) {
        (Method::Get, "/metrics") => text(
            metrics.render(),
            200,
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        (Method::Get, "/healthz") => {
            let age = metrics.heartbeat_age();
            if metrics.coordination_down() {
                let body = "degraded: the coordination database cannot be reached; no file is claimed until it can\n";
                text(body.as_bytes().to_vec(), 503, "text/plain")
            } else if age <= stall_after {
                text(b"ok\n".to_vec(), 200, "text/plain")
            } else {
                let body = format!("stalled: the scan loop last ran {}s ago\n", age.as_secs());
                text(body.into_bytes(), 503, "text/plain")
            }
        }
        _ => text(b"not found\n".to_vec(), 404, "text/plain"),
    };
    if let Err(error) = request.respond(response) {
        tracing::debug!(%error, "Metrics client went away.");
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn get(address: SocketAddr, path: &str) -> String {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    #[test]
    fn healthz_fails_while_the_scan_loop_is_stalled() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let address = serve(
            "127.0.0.1:0".parse().unwrap(),
            Arc::clone(&metrics),
            Duration::from_secs(60),
        )
        .unwrap();
        // Never beaten: as if the loop had stalled since 1970.
        let stalled = get(address, "/healthz");
        assert!(stalled.starts_with("HTTP/1.0 503"), "{stalled}");
        assert!(stalled.contains("stalled"), "{stalled}");
        metrics.beat();
        let healthy = get(address, "/healthz");
        assert!(healthy.starts_with("HTTP/1.0 200"), "{healthy}");
        assert!(get(address, "/nope").starts_with("HTTP/1.0 404"));
    }
}
