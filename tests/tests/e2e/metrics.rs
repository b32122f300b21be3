//! Metrics (DESIGN.md §8) as an operator's Prometheus sees them: promtool on the scraped text,
//! a real Prometheus scraping the daemon and evaluating the dashboard's queries and the alert
//! rules, and a series count that does not grow with the number of files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bamflow_tests::generator::DataKind;
use serde_json::Value;

use crate::harness::{config, config_with, Daemon, LIMIT};
use crate::support::{http_get, sample, url_encode, TestDir};

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Every family DESIGN.md §8 names, but `bamflow_plugin_info`, whose labels come from loaded
/// plugins: with none configured it has no series.
const FAMILIES: &[&str] = &[
    "bamflow_build_info",
    "bamflow_files_discovered_total",
    "bamflow_files_processed_total",
    "bamflow_files_in_progress",
    "bamflow_files_pending",
    "bamflow_oldest_pending_file_timestamp_seconds",
    "bamflow_files_waiting",
    "bamflow_oldest_waiting_file_timestamp_seconds",
    "bamflow_records_read_total",
    "bamflow_records_written_total",
    "bamflow_records_filtered_total",
    "bamflow_input_bytes_total",
    "bamflow_output_bytes_total",
    "bamflow_file_duration_seconds",
    "bamflow_part_commit_duration_seconds",
    "bamflow_stage_busy_seconds_total",
    "bamflow_checkpoints_total",
    "bamflow_resumes_total",
    "bamflow_errors_total",
    "bamflow_watch_rescans_total",
    "bamflow_last_success_timestamp_seconds",
    "bamflow_config_last_reload_successful",
    "bamflow_claims_total",
    "bamflow_lease_confirmations_failed_total",
    "bamflow_coordination_errors_total",
    "bamflow_coordination_up",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_start_time_seconds",
];

/// Series (sample lines) in a scrape.
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.rsplit_once(' ').map(|(name, _)| name.to_owned()))
        .collect()
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (apt-get install prometheus)");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A real Prometheus on loopback, killed on drop.
struct Prometheus {
    child: Child,
    address: String,
    log: PathBuf,
}

impl Prometheus {
    fn start(dir: &TestDir, target: &str) -> Self {
        let rules = repo_file("config/prometheus/bamflow-alerts.yml");
        let config = dir.path("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: bamflow\n    static_configs:\n      - targets: ['{target}']\n",
                rules.display()
            ),
        )
        .unwrap();
        // Prometheus does not report a port it picked, so take a free one.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let log = dir.path("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path("tsdb").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prometheus runs (apt-get install prometheus)");
        Self {
            child,
            address,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn api(&self, path: &str) -> Value {
        let (status, body) = http_get(&self.address, path);
        assert_eq!(status, 200, "{path}: {body}");
        let value: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["status"], "success", "{path}: {body}");
        value["data"].clone()
    }

    /// Evaluates a PromQL expression now; returns its result vector.
    fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.api(&format!("/api/v1/query?query={}", url_encode(expr)));
        match &data["result"] {
            Value::Array(result) => result.clone(),
            // A scalar, e.g. time().
            other => vec![other.clone()],
        }
    }

    /// Waits until `expr` returns data.
    fn wait_for(&self, expr: &str) {
        let started = Instant::now();
        loop {
            let ready = std::net::TcpStream::connect(&self.address).is_ok()
                && http_get(&self.address, "/-/ready").0 == 200;
            if ready && !self.query(expr).is_empty() {
                return;
            }
            assert!(
                started.elapsed() < LIMIT,
                "no data for {expr}; prometheus log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every PromQL expression of the Grafana dashboard, with its variables filled in as Grafana
/// would for "All" over the last few minutes.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Value =
        serde_json::from_slice(&std::fs::read(repo_file("config/grafana/bamflow.json")).unwrap())
            .unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m")
                .replace("$watch", ".*")
                .replace("$job", ".*");
            queries.push((panel["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    queries
}

/// The alert rules' expressions and the metric names each refers to.
fn rule_metric_names() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo_file("config/prometheus/bamflow-alerts.yml")).unwrap();
    let mut names = BTreeSet::new();
    let mut in_expr = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("expr:") {
            in_expr = true;
            collect_names(rest, &mut names);
        } else if in_expr && line.starts_with("          ") && !trimmed.contains(':') {
            collect_names(trimmed, &mut names);
        } else {
            in_expr = false;
        }
    }
    names
}

fn collect_names(expr: &str, names: &mut BTreeSet<String>) {
    for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("bamflow_") || word == "up" {
            names.insert(word.to_owned());
        }
    }
}

/// The daemon here coordinates through a private PostgreSQL, so that every family (those of
/// several hosts included) is scraped and every dashboard panel and alert has data.
#[test]
fn metrics_pass_promtool_and_prometheus_evaluates_the_dashboard_and_alerts() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let pg = crate::postgres::Postgres::start();
    let config = config(
        &dir,
        &inbox,
        &format!(
            "[watch.convert]\npart_records = 1000\n[watch.filter]\nexclude_flags = 1024\n\
             [coordination]\npostgres_url = \"{}\"\n",
            pg.url()
        ),
    );
    let daemon = Daemon::start(dir.root(), Some(&config));
    let address = daemon.metrics_address();
    let filtered = "bamflow_records_filtered_total{filter=\"exclude_flags\",watch=\"test\"}";

    // Every series exists from the start, at zero.
    let (status, text) = http_get(&address, "/metrics");
    assert_eq!(status, 200);
    for family in FAMILIES {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "no {family}:\n{text}"
        );
    }
    let processed = |outcome: &str| {
        format!("bamflow_files_processed_total{{outcome=\"{outcome}\",watch=\"test\"}}")
    };
    assert_eq!(sample(&text, &processed("success")), 0.0);
    assert_eq!(
        sample(&text, "bamflow_stage_busy_seconds_total{stage=\"encode\"}"),
        0.0
    );
    assert_eq!(sample(&text, filtered), 0.0);
    assert_eq!(http_get(&address, "/healthz"), (200, "ok\n".to_owned()));

    let prometheus = Prometheus::start(&dir, &address);
    prometheus.wait_for("up{job=\"bamflow\"} == 1");

    // Two good files and one bad one.
    let good: Vec<_> = [(71, 3_000), (72, 2_500)]
        .into_iter()
        .map(|(seed, records)| dir.generated(DataKind::Short, records, seed))
        .collect();
    for (i, bam) in good.iter().enumerate() {
        std::fs::copy(bam, inbox.join(format!("good{i}.bam"))).unwrap();
    }
    let mut corrupt = std::fs::read(&good[0]).unwrap();
    for b in &mut corrupt[5000..5010] {
        *b ^= 0x55;
    }
    std::fs::write(inbox.join("bad.bam"), corrupt).unwrap();
    daemon.wait_for("all three files", || {
        inbox.join("done/good0.bam").exists()
            && inbox.join("done/good1.bam").exists()
            && inbox.join("failed/bad.bam.error.json").exists()
    });
    // A scrape after the last file, and a few more for rates.
    std::thread::sleep(Duration::from_secs(4));

    let (_, text) = http_get(&address, "/metrics");
    let (ok, lint) = promtool(&["check", "metrics"], Some(&text));
    assert!(
        ok && lint.trim().is_empty(),
        "promtool check metrics:\n{lint}"
    );
    assert_eq!(sample(&text, &processed("success")), 2.0);
    assert_eq!(sample(&text, &processed("failure")), 1.0);
    assert_eq!(
        sample(&text, "bamflow_files_discovered_total{watch=\"test\"}"),
        3.0
    );
    let written = sample(&text, "bamflow_records_written_total{watch=\"test\"}");
    let manifests: f64 = ["good0", "good1"]
        .iter()
        .map(|name| {
            let path = dir.path(&format!("lake/test/{name}/_manifest.json"));
            let manifest: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            manifest["counts"]["written"].as_f64().unwrap()
        })
        .sum();
    assert_eq!(
        written, manifests,
        "rows of both datasets, nothing of the failed file"
    );
    let errors: f64 = text
        .lines()
        .filter(|l| l.starts_with("bamflow_errors_total{") && !l.ends_with(" 0"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(errors, 1.0, "{text}");
    assert!(sample(&text, "bamflow_stage_busy_seconds_total{stage=\"encode\"}") > 0.0);
    let read = sample(&text, "bamflow_records_read_total{watch=\"test\"}");
    let dropped = sample(&text, filtered);
    assert!(dropped > 0.0, "duplicates flagged 1024 were dropped");
    // The failed file's records were read too, up to its corrupt block.
    assert!(
        read >= written + dropped,
        "{read} read, {written} written, {dropped} dropped"
    );
    assert!(sample(&text, "bamflow_checkpoints_total{watch=\"test\"}") >= 6.0);
    assert!(sample(&text, "bamflow_part_commit_duration_seconds_count") >= 6.0);
    assert!(
        sample(
            &text,
            "bamflow_last_success_timestamp_seconds{watch=\"test\"}"
        ) > 1.7e9
    );

    // The alert rules are valid, load into Prometheus and evaluate cleanly.
    let rules = repo_file("config/prometheus/bamflow-alerts.yml");
    let (ok, out) = promtool(&["check", "rules", rules.to_str().unwrap()], None);
    assert!(ok, "promtool check rules:\n{out}");
    let started = Instant::now();
    loop {
        let groups = prometheus.api("/api/v1/rules");
        let rules: Vec<Value> = groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .collect();
        assert!(rules.len() >= 5, "{groups}");
        let evaluated = rules.iter().all(|r| {
            r["lastEvaluation"]
                .as_str()
                .is_some_and(|t| !t.starts_with("0001"))
        });
        if evaluated {
            for rule in &rules {
                assert_eq!(rule["health"], "ok", "{rule}");
            }
            break;
        }
        assert!(started.elapsed() < LIMIT, "rules never evaluated: {groups}");
        std::thread::sleep(Duration::from_millis(500));
    }
    for name in rule_metric_names() {
        assert!(
            !prometheus.query(&name).is_empty(),
            "alert rules use {name}, which Prometheus has no data for"
        );
    }

    // Every query of the dashboard returns data.
    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "{queries:?}");
    for (panel, expr) in &queries {
        assert!(
            !prometheus.query(expr).is_empty(),
            "dashboard panel {panel:?}: no data for {expr}"
        );
    }

    daemon.stop();
}

#[test]
fn the_number_of_series_does_not_grow_with_the_number_of_files() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let config = config_with(&dir, &inbox, "max_concurrent_files = 2\n", "");
    let daemon = Daemon::start(dir.root(), Some(&config));
    let address = daemon.metrics_address();

    let drop_files = |from: u64, to: u64| {
        for seed in from..to {
            let bam = dir.generated(DataKind::Unaligned, 20, 1000 + seed);
            // Renamed into place, as a careful copier does.
            std::fs::rename(&bam, inbox.join(format!("f{seed:04}.bam"))).unwrap();
        }
        daemon.wait_for("the files to be converted", || {
            std::fs::read_dir(inbox.join("done")).map_or(0, Iterator::count) == to as usize
        });
    };
    let at_start = series(&http_get(&address, "/metrics").1);
    drop_files(0, 10);
    let after_10 = series(&http_get(&address, "/metrics").1);
    drop_files(10, 210);
    let (_, text) = http_get(&address, "/metrics");
    let after_210 = series(&text);

    assert_eq!(
        sample(
            &text,
            "bamflow_files_processed_total{outcome=\"success\",watch=\"test\"}"
        ),
        210.0
    );
    assert_eq!(at_start, after_10, "series appeared after 10 files");

    // A reload keeps what the watch has seen: a file still being written is not discovered twice.
    std::fs::write(inbox.join("unfinished.bam"), b"still being written").unwrap();
    let discovered = "bamflow_files_discovered_total{watch=\"test\"}";
    daemon.wait_for("the unfinished file to be seen", || {
        sample(&http_get(&address, "/metrics").1, discovered) == 211.0
    });
    let status = Command::new("kill")
        .args(["-HUP", &daemon.pid()])
        .status()
        .unwrap();
    assert!(status.success());
    daemon.wait_for("the reload", || {
        sample(
            &http_get(&address, "/metrics").1,
            "bamflow_watch_rescans_total{reason=\"reload\"}",
        ) >= 1.0
    });
    std::thread::sleep(Duration::from_secs(2));
    let (_, reloaded) = http_get(&address, "/metrics");
    assert_eq!(sample(&reloaded, discovered), 211.0);
    assert_eq!(
        sample(&reloaded, "bamflow_config_last_reload_successful"),
        1.0
    );
    assert_eq!(
        after_210,
        series(&reloaded),
        "series appeared after a reload"
    );
    assert_eq!(after_10, after_210, "series appeared after 210 files");
    assert!(!text.contains("f0001"), "no file name ever becomes a label");
    daemon.stop();
}
