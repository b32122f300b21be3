//! What the daemon does while nothing is ready: it sleeps, and every file it does not take
//! says why (DESIGN.md §6). Long-running behaviour is checked by counting — rescans, threads,
//! open files — over a window in which nothing changes, never by timing.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bamflow_tests::generator::DataKind;
use serde_json::Value;

use crate::harness::{config, Daemon};
use crate::support::{http_get, sample, stdout_of, TestDir};

/// How long nothing may happen. The rescan loop this guards against made thousands of
/// rescans a second; with `scan_interval_seconds = 1` a few interval rescans fall inside.
const IDLE_WINDOW: Duration = Duration::from_secs(3);

const EVENT_RESCANS: &str = "bamflow_watch_rescans_total{reason=\"event\"}";
const INTERVAL_RESCANS: &str = "bamflow_watch_rescans_total{reason=\"interval\"}";

/// What an idle daemon must keep constant, and the interval rescans that must go on.
#[derive(Debug, PartialEq)]
struct Counts {
    event_rescans: f64,
    threads: usize,
    open_fds: usize,
}

fn counts(daemon: &Daemon, address: &str) -> (Counts, f64) {
    // Read before the scrape, whose connection the server may still hold open afterwards.
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    let open_fds = std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
        .unwrap()
        .count();
    let (_, text) = http_get(address, "/metrics");
    let counts = Counts {
        event_rescans: sample(&text, EVENT_RESCANS),
        threads,
        open_fds,
    };
    (counts, sample(&text, INTERVAL_RESCANS))
}

/// Over [`IDLE_WINDOW`], nothing the daemon does by itself raises an event rescan, and threads
/// and open files stay as they are, while interval rescans (which list the folder and open
/// the files in it) go on.
fn assert_idle(daemon: &Daemon, address: &str, when: &str) {
    // What the last change set off (the rescan for the input's move to done/, a closing
    // file) runs its course first.
    std::thread::sleep(Duration::from_secs(2));
    let (before, intervals_before) = counts(daemon, address);
    std::thread::sleep(IDLE_WINDOW);
    let (after, intervals_after) = counts(daemon, address);
    assert_eq!(before, after, "{when}: the idle daemon changed");
    assert!(
        intervals_after >= intervals_before + 2.0,
        "{when}: interval rescans stopped ({intervals_before} → {intervals_after})"
    );
}

#[test]
fn an_idle_daemon_does_not_rescan_because_of_its_own_reads() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let config = config(&dir, &inbox, "");
    let daemon = Daemon::start(dir.root(), Some(&config));
    let address = daemon.metrics_address();
    daemon.wait_for("the first rescan", || {
        sample(&http_get(&address, "/metrics").1, INTERVAL_RESCANS) >= 1.0
    });
    assert_idle(&daemon, &address, "empty inbox");

    // One conversion, and a file that stays without its EOF block, re-checked every second.
    let bam = dir.generated(DataKind::Short, 1_000, 81);
    std::fs::copy(&bam, inbox.join("one.bam")).unwrap();
    let bytes = std::fs::read(&bam).unwrap();
    std::fs::write(inbox.join("cut.bam"), &bytes[..bytes.len() / 2]).unwrap();
    daemon.wait_for("the conversion, and the cut file waiting", || {
        inbox.join("done/one.bam").exists()
            && sample(
                &http_get(&address, "/metrics").1,
                "bamflow_files_waiting{reason=\"no_eof_block\",watch=\"test\"}",
            ) == 1.0
    });
    assert_idle(&daemon, &address, "after one conversion");

    // A thousand old files in done/.
    for i in 0..1000 {
        std::fs::copy(&bam, inbox.join(format!("done/old-{i}.bam"))).unwrap();
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_idle(&daemon, &address, "with 1,000 files in done/");
    daemon.stop();
}

fn status(config: &Path) -> String {
    stdout_of(&mut bamflow_tests::bamflow(&[
        "status",
        "--config",
        config.to_str().unwrap(),
    ]))
}

fn error_report(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn a_file_that_will_never_be_taken_says_why_or_is_failed() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let config = config(&dir, &inbox, "require_sentinel = \"{name}.done\"");
    let daemon = Daemon::start(dir.root(), Some(&config));
    let address = daemon.metrics_address();

    // Text under a BAM name, without anything like an EOF block: failed at once, sentinel
    // or not.
    std::fs::write(inbox.join("notes.bam"), "sample\tlane\nNA12878\t1\n").unwrap();
    // A BAM that lost its second half in a copy, and a complete one without its sentinel.
    let bam = dir.generated(DataKind::Short, 1_000, 82);
    let bytes = std::fs::read(&bam).unwrap();
    std::fs::write(inbox.join("cut.bam"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::copy(&bam, inbox.join("whole.bam")).unwrap();

    daemon.wait_for(
        "the text file failed, the others waiting with reasons",
        || {
            let (_, text) = http_get(&address, "/metrics");
            let waiting = |reason: &str| {
                sample(
                    &text,
                    &format!("bamflow_files_waiting{{reason=\"{reason}\",watch=\"test\"}}"),
                )
            };
            inbox.join("failed/notes.bam.error.json").exists()
                && waiting("no_eof_block") == 1.0
                && waiting("sentinel_missing") == 1.0
        },
    );
    let report = error_report(&inbox.join("failed/notes.bam.error.json"));
    assert_eq!(report["stage"], "read", "{report}");
    assert_eq!(report["location"]["byte"], 0, "{report}");
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("not a BGZF file: wrong magic at byte 0 (this looks like text"),
        "{report}"
    );

    let text = status(&config);
    let line = |name: &str| {
        text.lines()
            .find(|l| l.contains(name) && l.contains("[test]"))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
            .to_owned()
    };
    assert!(
        line("cut.bam").contains("no_eof_block: no BGZF EOF block yet (unchanged since"),
        "{text}"
    );
    assert!(
        line("whole.bam").contains("sentinel_missing: sentinel")
            && line("whole.bam").contains("whole.bam.done missing"),
        "{text}"
    );
    let log = daemon.log();
    assert!(
        log.contains("File waits: no BGZF EOF block yet")
            && log.contains("reason=\"no_eof_block\""),
        "{log}"
    );

    // With a timeout, the cut file is set aside with that reason; the sentinel's file waits on.
    let with_timeout = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[[watch]]\n", "[[watch]]\nincomplete_timeout_seconds = 2\n");
    std::fs::write(&config, with_timeout).unwrap();
    assert!(Command::new("kill")
        .args(["-HUP", &daemon.pid()])
        .status()
        .unwrap()
        .success());
    daemon.wait_for("the cut file in failed/", || {
        inbox.join("failed/cut.bam.error.json").exists()
    });
    let report = error_report(&inbox.join("failed/cut.bam.error.json"));
    let message = report["message"].as_str().unwrap();
    assert!(
        message.contains("no BGZF EOF block after")
            && message.contains("incomplete_timeout_seconds = 2"),
        "{report}"
    );
    assert_eq!(report["stage"], "read", "{report}");
    assert_eq!(report["location"]["byte"], bytes.len() / 2, "{report}");
    assert!(inbox.join("failed/cut.bam").exists());
    assert!(
        inbox.join("whole.bam").exists(),
        "still waits for its sentinel"
    );

    std::fs::write(inbox.join("whole.bam.done"), "").unwrap();
    daemon.wait_for("the file whose sentinel came", || {
        inbox.join("done/whole.bam").exists()
    });
    let (_, metrics) = http_get(&address, "/metrics");
    assert_eq!(
        sample(
            &metrics,
            "bamflow_files_processed_total{outcome=\"failure\",watch=\"test\"}"
        ),
        2.0
    );
    daemon.wait_for("status to show nothing waiting", || {
        status(&config).contains("nothing waiting")
    });
    daemon.stop();
    assert!(
        status(&config).contains("no daemon is running"),
        "a stopped daemon's picture is not shown as current"
    );
}

#[test]
fn status_away_from_the_daemons_folder_says_what_it_cannot_read() {
    let dir = TestDir::new();
    let output = bamflow_tests::bamflow(&["status"])
        .current_dir(dir.root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let inbox = dir.root().join("inbox");
    assert!(
        stderr.contains(&format!(
            "cannot read the watched folder(s) {}",
            inbox.display()
        )) && stderr.contains("--config"),
        "{stderr}"
    );
}
