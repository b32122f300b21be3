//! Several daemons, one drop folder, one output root, one PostgreSQL: every file converted
//! exactly once, a killed daemon's file taken over and resumed, a frozen daemon's late commit
//! refused, a database restart survived. Each daemon is its own process with its own
//! `state_dir`, as on separate hosts; the database is a private cluster the test starts.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bamflow_tests::generator::{DataKind, Spec};
use bamflow_tests::sam_text;

use crate::harness::{Daemon, LIMIT};
use crate::postgres::Postgres;
use crate::support::{assert_dataset_matches_samtools, http_get, manifest, sample, TestDir};

/// Seconds of lease in these tests: the shortest allowed, so takeovers come quickly.
const LEASE_SECONDS: u64 = 3;

/// The config of daemon `name`: its own state folder, the shared inbox, lake and database.
fn daemon_config(dir: &TestDir, name: &str, pg: &Postgres, extra_convert: &str) -> PathBuf {
    let text = format!(
        "[daemon]\nstate_dir = \"{state}\"\nscan_interval_seconds = 1\nthreads = 1\n\
         metrics_listen = \"127.0.0.1:0\"\n\n\
         [[watch]]\nname = \"test\"\npath = \"{inbox}\"\nsettle_seconds = 1\n\
         output = \"{lake}/{{stem}}\"\n\n\
         [convert]\n{extra_convert}\n\n\
         [coordination]\npostgres_url = \"{url}\"\nlease_seconds = {LEASE_SECONDS}\n",
        state = dir.path(&format!("state-{name}")).display(),
        inbox = dir.path("inbox").display(),
        lake = dir.path("lake").display(),
        url = pg.url(),
    );
    let path = dir.path(&format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Daemons `names`, each with its own config and state folder, all on `pg`.
fn start_daemons(
    dir: &TestDir,
    pg: &Postgres,
    names: &[&str],
    extra_convert: &str,
    env: &[(&str, &OsStr)],
) -> Vec<Daemon> {
    names
        .iter()
        .map(|name| {
            let config = daemon_config(dir, name, pg, extra_convert);
            Daemon::start_with(dir.root(), Some(&config), env)
        })
        .collect()
}

/// Everything in the lake folder, hidden staging folders included.
fn lake_entries(lake: &Path) -> Vec<String> {
    std::fs::read_dir(lake)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Puts `bam` into the inbox as `name` in one rename, as a careful copier does.
fn drop_file(inbox: &Path, bam: &Path, name: &str) {
    let hidden = inbox.join(format!(".{name}.tmp"));
    std::fs::copy(bam, &hidden).unwrap();
    std::fs::rename(&hidden, inbox.join(name)).unwrap();
}

fn bams_left(inbox: &Path) -> usize {
    std::fs::read_dir(inbox)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".bam"))
        .count()
}

/// Hidden staging folders left in the lake.
fn staging_left(lake: &Path) -> Vec<String> {
    let mut entries = lake_entries(lake);
    entries.retain(|name| name.starts_with('.'));
    entries
}

fn wait_until(what: &str, daemons: &[&Daemon], mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > LIMIT {
            let logs: Vec<String> = daemons.iter().map(|d| d.log()).collect();
            panic!(
                "timed out waiting for {what}; logs:\n{}",
                logs.join("\n-----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn scrape(daemon: &Daemon) -> String {
    http_get(&daemon.metrics_address(), "/metrics").1
}

/// Counts by a text key.
type Counts = Vec<(String, i64)>;

/// Successful ledger rows per path, and how many rows of each state.
fn ledger_counts(pg: &Postgres) -> (Counts, Counts) {
    let mut client = pg.client();
    let per_path = client
        .query(
            "SELECT path, count(*) FROM bamflow_ledger WHERE state = 'success' GROUP BY path ORDER BY path",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let per_state = client
        .query(
            "SELECT state, count(*) FROM bamflow_ledger GROUP BY state ORDER BY state",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    (per_path, per_state)
}

fn state_count(per_state: &[(String, i64)], state: &str) -> i64 {
    per_state
        .iter()
        .find(|(s, _)| s == state)
        .map_or(0, |(_, n)| *n)
}

#[test]
fn three_daemons_convert_every_file_exactly_once_and_one_content_under_two_names_once() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let lake = dir.path("lake");
    let pg = Postgres::start();
    let daemons = start_daemons(&dir, &pg, &["a", "b", "c"], "", &[]);

    // Mixed sizes and kinds, generated once each.
    const FILES: usize = 100;
    let mut sources = Vec::new();
    for i in 0..FILES {
        let (kind, records) = match i % 10 {
            0 => (DataKind::Long, 40),
            1 => (DataKind::Unaligned, 3_000),
            2 => (DataKind::Short, 20_000),
            _ => (DataKind::Short, 300 + 97 * i),
        };
        let bam = dir.generated_spec(&Spec::new(kind, records, 1_000 + i as u64));
        sources.push((format!("f{i:03}.bam"), bam));
    }
    // Dropped while the daemons run, in waves; one content also arrives under a second name
    // at the same moment as the first.
    for (i, (name, bam)) in sources.iter().enumerate() {
        drop_file(&inbox, bam, name);
        if i == 50 {
            drop_file(&inbox, bam, "f050-copy.bam");
        }
        if i % 20 == 19 {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let all: Vec<&Daemon> = daemons.iter().collect();
    let done = inbox.join("done");
    wait_until("every file filed away", &all, || {
        bams_left(&inbox) == 0 && std::fs::read_dir(&done).map_or(0, Iterator::count) == FILES + 1
    });

    // Whichever of the two names was taken first was converted; the other is its duplicate.
    let converted_copy = lake.join("f050-copy").exists();
    assert_ne!(
        converted_copy,
        lake.join("f050").exists(),
        "one of the two names converted"
    );
    for (name, bam) in &sources {
        let mut stem = name.trim_end_matches(".bam").to_owned();
        if stem == "f050" && converted_copy {
            stem.push_str("-copy");
        }
        let dataset = sam_text::read_dataset(&lake.join(&stem)).expect("dataset reads back");
        assert_dataset_matches_samtools(&dataset, bam);
    }
    assert!(staging_left(&lake).is_empty(), "{:?}", staging_left(&lake));

    let (per_path, per_state) = ledger_counts(&pg);
    assert_eq!(per_path.len(), FILES, "{per_path:?}");
    assert!(per_path.iter().all(|(_, n)| *n == 1), "{per_path:?}");
    assert_eq!(state_count(&per_state, "duplicate"), 1, "{per_state:?}");
    assert_eq!(state_count(&per_state, "failure"), 0, "{per_state:?}");
    let mut client = pg.client();
    let claims: i64 = client
        .query_one("SELECT count(*) FROM bamflow_claims", &[])
        .unwrap()
        .get(0);
    assert_eq!(claims, 0, "every claim released");
    let converters: i64 = client
        .query_one(
            "SELECT count(DISTINCT pid) FROM bamflow_ledger WHERE state = 'success'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(converters, 3, "all three daemons took files");
    let taken: f64 = daemons
        .iter()
        .map(|d| sample(&scrape(d), "bamflow_claims_total{event=\"taken\"}"))
        .sum();
    assert!(taken >= (FILES + 1) as f64, "{taken}");

    // `bamflow status` reads the shared ledger.
    let status = bamflow_tests::bamflow(&[
        "status",
        "--limit",
        "500",
        "--config",
        daemon_config(&dir, "a", &pg, "").to_str().unwrap(),
    ])
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(text.contains("coordination database, all hosts"), "{text}");
    assert!(text.contains("f050-copy.bam"), "{text}");
    for daemon in daemons {
        daemon.stop();
    }
}

/// A BAM with many parts at `part_records = 2000`, so a conversion is caught mid-file.
fn many_parts(dir: &TestDir, seed: u64) -> PathBuf {
    dir.generated_spec(&Spec::new(DataKind::Short, 30_000, seed))
}

const SMALL_PARTS: &str = "part_records = 2000";

#[test]
fn a_killed_daemon_s_file_is_taken_over_after_its_lease_and_resumed_from_its_checkpoint() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let lake = dir.path("lake");
    let pg = Postgres::start();
    let bam = many_parts(&dir, 81);
    // Dies right after renaming its fourth part, before the checkpoint lists it.
    let mut first = Daemon::start_with(
        dir.root(),
        Some(&daemon_config(&dir, "a", &pg, SMALL_PARTS)),
        &[("BAMFLOW_FAULTS", OsStr::new("part-renamed=kill@4"))],
    );
    drop_file(&inbox, &bam, "big.bam");
    let started = Instant::now();
    while !first.has_exited() {
        assert!(
            started.elapsed() < LIMIT,
            "the fault never fired:\n{}",
            first.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let second = Daemon::start(
        dir.root(),
        Some(&daemon_config(&dir, "b", &pg, SMALL_PARTS)),
    );
    wait_until("the takeover to finish", &[&second], || {
        lake.join("big").join("_SUCCESS").exists()
    });

    let log = second.log();
    assert!(log.contains("Took over a file whose holder"), "{log}");
    assert!(log.contains("Inherited the staging folder"), "{log}");
    // Parts 0-2 were checkpointed; part 3 (renamed, not checkpointed) is redone.
    assert!(
        log.contains("Resuming conversion from its checkpoint.") && log.contains("part=3"),
        "{log}"
    );
    let m = manifest(&lake.join("big"));
    assert_eq!(m["resumes"], 1);
    assert_dataset_matches_samtools(&sam_text::read_dataset(&lake.join("big")).unwrap(), &bam);
    assert!(staging_left(&lake).is_empty(), "{:?}", staging_left(&lake));
    let metrics = scrape(&second);
    assert_eq!(
        sample(&metrics, "bamflow_claims_total{event=\"taken_over\"}"),
        1.0
    );
    let (per_path, _) = ledger_counts(&pg);
    assert_eq!(per_path.len(), 1);
    assert_eq!(per_path[0].1, 1);
    drop(first);
    second.stop();
}

#[test]
fn a_frozen_daemon_cannot_commit_after_another_took_its_file_over() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let lake = dir.path("lake");
    let pg = Postgres::start();
    let bam = many_parts(&dir, 82);
    // Stalls 5 s after syncing its second part, before renaming it: the test freezes it there.
    let frozen = Daemon::start_with(
        dir.root(),
        Some(&daemon_config(&dir, "a", &pg, SMALL_PARTS)),
        &[("BAMFLOW_FAULTS", OsStr::new("part-synced=stall@2"))],
    );
    let frozen_metrics = frozen.metrics_address();
    drop_file(&inbox, &bam, "big.bam");
    let staging = lake.join(".big.staging-1");
    wait_until("the first part to be checkpointed", &[&frozen], || {
        std::fs::read(staging.join("_checkpoint.json")).is_ok()
    });
    let pid = rustix::process::Pid::from_raw(frozen.pid().parse().unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();

    let other = Daemon::start(
        dir.root(),
        Some(&daemon_config(&dir, "b", &pg, SMALL_PARTS)),
    );
    wait_until("the other daemon to publish", &[&other], || {
        lake.join("big").join("_SUCCESS").exists() && inbox.join("done/big.bam").exists()
    });
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    wait_until("the frozen daemon to give the file up", &[&frozen], || {
        frozen
            .log()
            .contains("Another daemon holds the file now; abandoning this conversion")
    });
    let metrics = http_get(&frozen_metrics, "/metrics").1;
    assert!(
        sample(&metrics, "bamflow_claims_total{event=\"lost\"}") >= 1.0,
        "{metrics}"
    );
    assert!(
        sample(&metrics, "bamflow_lease_confirmations_failed_total") >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "bamflow_files_processed_total{outcome=\"failure\",watch=\"test\"}"
        ),
        0.0
    );

    // Exactly one dataset, equal to the input; nothing of the frozen holder's left behind.
    assert_dataset_matches_samtools(&sam_text::read_dataset(&lake.join("big")).unwrap(), &bam);
    let entries = lake_entries(&lake);
    assert_eq!(entries, ["big"], "{entries:?}");
    assert!(!inbox.join("failed").exists());
    let (per_path, per_state) = ledger_counts(&pg);
    assert_eq!(per_path, [(inbox.join("big.bam").display().to_string(), 1)]);
    assert_eq!(state_count(&per_state, "failure"), 0);
    frozen.stop();
    other.stop();
}

#[test]
fn a_database_restart_mid_run_loses_no_file_and_converts_none_twice() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let lake = dir.path("lake");
    let pg = Postgres::start();
    let daemons = start_daemons(&dir, &pg, &["a", "b"], SMALL_PARTS, &[]);
    let all: Vec<&Daemon> = daemons.iter().collect();
    let mut sources = Vec::new();
    for i in 0..12 {
        let bam = dir.generated_spec(&Spec::new(
            DataKind::Short,
            8_000 + 500 * i,
            2_000 + i as u64,
        ));
        drop_file(&inbox, &bam, &format!("r{i:02}.bam"));
        sources.push(bam);
    }
    wait_until("a conversion to be under way", &all, || {
        staging_left(&lake)
            .iter()
            .any(|name| name.contains(".staging-"))
    });
    pg.stop();
    let address = daemons[0].metrics_address();
    wait_until("health to report the database down", &all, || {
        let (status, body) = http_get(&address, "/healthz");
        status == 503 && body.contains("coordination database")
    });
    std::thread::sleep(Duration::from_secs(2));
    pg.start_again();
    wait_until("every file filed away", &all, || {
        bams_left(&inbox) == 0
            && std::fs::read_dir(inbox.join("done")).map_or(0, Iterator::count) == 12
    });
    for (i, bam) in sources.iter().enumerate() {
        let dataset = sam_text::read_dataset(&lake.join(format!("r{i:02}"))).unwrap();
        assert_dataset_matches_samtools(&dataset, bam);
    }
    assert!(staging_left(&lake).is_empty(), "{:?}", staging_left(&lake));
    let (per_path, per_state) = ledger_counts(&pg);
    assert_eq!(per_path.len(), 12, "{per_path:?}");
    assert!(per_path.iter().all(|(_, n)| *n == 1), "{per_path:?}");
    assert_eq!(state_count(&per_state, "failure"), 0, "{per_state:?}");
    // Whether or not it converted a file since the restart, the daemon sees the database back
    // (its heartbeat looks while it holds no lease).
    wait_until("health to report the database back", &all, || {
        http_get(&address, "/healthz").0 == 200
    });
    let metrics = scrape(&daemons[0]);
    assert_eq!(sample(&metrics, "bamflow_coordination_up"), 1.0);
    for daemon in daemons {
        daemon.stop();
    }
}

#[test]
fn one_content_under_two_names_on_two_daemons_at_once_is_converted_once() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let lake = dir.path("lake");
    let pg = Postgres::start();
    // The conversion stalls 5 s at its second part, so the other daemon surely meets the twin.
    let stall = [("BAMFLOW_FAULTS", OsStr::new("part-synced=stall@2"))];
    let daemons = start_daemons(&dir, &pg, &["a", "b"], SMALL_PARTS, &stall);
    let all: Vec<&Daemon> = daemons.iter().collect();
    let bam = many_parts(&dir, 83);
    drop_file(&inbox, &bam, "run1.bam");
    drop_file(&inbox, &bam, "run1-again.bam");
    wait_until("both names filed away", &all, || {
        std::fs::read_dir(inbox.join("done")).map_or(0, Iterator::count) == 2
    });

    let (per_path, per_state) = ledger_counts(&pg);
    assert_eq!(per_path.len(), 1, "{per_path:?}");
    assert_eq!(state_count(&per_state, "duplicate"), 1, "{per_state:?}");
    let converted = PathBuf::from(&per_path[0].0);
    let stem = converted.file_stem().unwrap().to_str().unwrap();
    assert_dataset_matches_samtools(&sam_text::read_dataset(&lake.join(stem)).unwrap(), &bam);
    let datasets = lake_entries(&lake);
    assert_eq!(datasets, [stem], "{datasets:?}");
    // While one daemon converted one name, the other met the second name and waited for its
    // twin (whichever daemon then took it was told it is a duplicate).
    let logs: Vec<String> = daemons.iter().map(Daemon::log).collect();
    let converter = logs
        .iter()
        .position(|log| log.contains("Converted file."))
        .expect("one daemon converted");
    let waited = logs
        .iter()
        .position(|log| log.contains("waiting for its twin"))
        .unwrap_or_else(|| panic!("nobody waited for the twin:\n{}", logs.join("\n")));
    assert_ne!(converter, waited, "{}", logs.join("\n"));
    for daemon in daemons {
        daemon.stop();
    }
}

#[test]
fn a_database_a_newer_bamflow_migrated_is_refused_and_the_daemon_says_so() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let pg = Postgres::start();
    pg.client()
        .batch_execute(
            "CREATE TABLE bamflow_schema (version integer PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now());
             INSERT INTO bamflow_schema (version) VALUES (99);",
        )
        .unwrap();
    let daemon = Daemon::start(dir.root(), Some(&daemon_config(&dir, "a", &pg, "")));
    let bam = dir.generated(DataKind::Short, 500, 84);
    drop_file(&inbox, &bam, "waits.bam");
    let address = daemon.metrics_address();
    daemon.wait_for("the refusal", || {
        daemon
            .log()
            .contains("schema version 99, newer than this bamflow knows")
    });
    let (status, body) = http_get(&address, "/healthz");
    assert_eq!(status, 503, "{body}");
    daemon.wait_for("the file to wait for the ledger", || {
        bamflow_tests::bamflow(&["status", "--config", dir.path("a.toml").to_str().unwrap()])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("waiting for the ledger"))
    });
    assert!(inbox.join("waits.bam").exists());
    assert!(!dir.path("lake").exists());
    daemon.stop();
}

#[test]
fn sslmode_require_encrypts_and_verifies_the_database_s_certificate() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let pg = Postgres::start_tls();
    let tls_url = format!(
        "{}?sslmode=require&sslrootcert={}",
        pg.url(),
        pg.ca().display()
    );
    let config = daemon_config(&dir, "a", &pg, "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(&pg.url(), &tls_url)).unwrap();
    let daemon = Daemon::start(dir.root(), Some(&config));
    let bam = dir.generated(DataKind::Short, 1_000, 85);
    drop_file(&inbox, &bam, "secure.bam");
    daemon.wait_for("the file to be converted", || {
        inbox.join("done/secure.bam").exists()
    });
    assert_dataset_matches_samtools(
        &sam_text::read_dataset(&dir.path("lake/secure")).unwrap(),
        &bam,
    );
    let encrypted: i64 = pg
        .client()
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE application_name = 'bamflow' AND ssl",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(encrypted >= 1, "the daemon's connections are encrypted");
    daemon.stop();

    // A certificate the given root did not sign is refused: nothing is claimed.
    let other = TestDir::new();
    let other_ca = other.path("other-ca.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=someone else", "-keyout"])
        .arg(other.path("other-ca.key"))
        .arg("-out")
        .arg(&other_ca)
        .output()
        .unwrap();
    assert!(made.status.success());
    let untrusted = format!(
        "{}?sslmode=require&sslrootcert={}",
        pg.url(),
        other_ca.display()
    );
    std::fs::write(&config, text.replace(&pg.url(), &untrusted)).unwrap();
    let daemon = Daemon::start(dir.root(), Some(&config));
    drop_file(&inbox, &bam, "refused.bam");
    daemon.wait_for("the certificate to be refused", || {
        let log = daemon.log();
        log.contains("Coordination database unreachable") && log.contains("certificate")
    });
    let (status, _) = http_get(&daemon.metrics_address(), "/healthz");
    assert_eq!(status, 503);
    assert!(inbox.join("refused.bam").exists());
    daemon.stop();
}
