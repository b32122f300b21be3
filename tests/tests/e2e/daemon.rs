//! The daemon, driven as an operator would: real folders, real files, signals.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bamflow_tests::generator::DataKind;
use bamflow_tests::sam_text::{self, TagOrder};
use bamflow_tests::{bamflow_bin, samtools_view};
use serde_json::Value;

use crate::harness::{config, config_with, Daemon, EVENTS_RESCAN};
use crate::support::{assert_dataset_matches_samtools, http_get, manifest, sample, TestDir};

#[test]
fn converts_good_files_quarantines_bad_ones_and_stops_on_sigterm() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    // A file present before the daemon starts is taken too.
    let early = dir.generated(DataKind::Short, 2_000, 31);
    std::fs::copy(&early, inbox.join("early.bam")).unwrap();
    let config = config(&dir, &inbox, "");
    let daemon = Daemon::start(dir.root(), Some(&config));

    // A corrupt block inside an otherwise complete file, and text that merely ends like BGZF.
    let mut corrupt = std::fs::read(&early).unwrap();
    for b in &mut corrupt[3000..3010] {
        *b ^= 0x55;
    }
    std::fs::write(inbox.join("corrupt.bam"), &corrupt).unwrap();
    let mut text = b"this is not a BAM file\n".to_vec();
    text.extend_from_slice(&corrupt[corrupt.len() - 28..]);
    std::fs::write(inbox.join("text.bam"), &text).unwrap();
    std::fs::write(inbox.join(".hidden.bam"), &corrupt).unwrap();
    std::fs::write(inbox.join("copy.bam.tmp"), &corrupt).unwrap();
    // A good file dropped after the bad ones is still converted.
    let late = dir.generated(DataKind::Unaligned, 1_000, 32);
    std::fs::copy(&late, inbox.join("late.bam")).unwrap();

    let lake = dir.path("lake/test");
    daemon.wait_for("all four files to be filed away", || {
        [
            "done/early.bam",
            "done/late.bam",
            "failed/corrupt.bam.error.json",
            "failed/text.bam.error.json",
        ]
        .iter()
        .all(|p| inbox.join(p).exists())
    });

    for (name, source) in [("early", &early), ("late", &late)] {
        let dataset = sam_text::read_dataset(&lake.join(name)).unwrap();
        let theirs = samtools_view(source, &[]).unwrap();
        sam_text::compare(&dataset.to_sam(&[]).unwrap(), &theirs, TagOrder::Exact).unwrap();
    }
    assert!(
        !lake.join("corrupt").exists() && !lake.join("text").exists(),
        "no output for failures"
    );
    assert!(
        inbox.join(".hidden.bam").exists() && inbox.join("copy.bam.tmp").exists(),
        "ignored names stay"
    );

    let report: Value = serde_json::from_slice(
        &std::fs::read(inbox.join("failed/corrupt.bam.error.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["stage"], "inflate");
    assert!(report["location"]["byte"].is_u64(), "{report}");
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("BGZF block at byte"),
        "{report}"
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(inbox.join("failed/text.bam.error.json")).unwrap())
            .unwrap();
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("not a BGZF file"),
        "{report}"
    );
    assert!(
        inbox.join("failed/text.bam").exists(),
        "a failed input is moved, never deleted"
    );

    let (code, took, log) = daemon.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(
        log.contains("Converted file.")
            && log.contains("records=")
            && log.contains("outcome=\"failure\""),
        "{log}"
    );
}

#[test]
fn a_file_is_taken_only_once_complete_and_settled() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let config = config(&dir, &inbox, "require_sentinel = \"{name}.done\"");
    let daemon = Daemon::start(dir.root(), Some(&config));

    // Written in pieces: first without the EOF block, then complete but without its sentinel.
    let bam = dir.generated(DataKind::Short, 2_000, 33);
    let bytes = std::fs::read(&bam).unwrap();
    let target = inbox.join("slow.bam");
    std::fs::write(&target, &bytes[..bytes.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        target.exists() && !dir.path("lake/test/slow").exists(),
        "taken before complete"
    );

    std::fs::write(&target, &bytes).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        target.exists() && !dir.path("lake/test/slow").exists(),
        "taken before its sentinel"
    );

    std::fs::write(inbox.join("slow.bam.done"), b"").unwrap();
    // The dataset is published first, then the input moved: wait for both.
    daemon.wait_for("the completed file, and its input in done/", || {
        dir.path("lake/test/slow/_SUCCESS").exists() && inbox.join("done/slow.bam").exists()
    });

    // Renamed into place with an old mtime: still new, still taken. (Other content: the same
    // bytes again would rightly be recorded as a duplicate.)
    let other = std::fs::read(dir.generated(DataKind::Short, 2_000, 38)).unwrap();
    let staged = inbox.join(".renamed.bam.partial-copy");
    std::fs::write(&staged, &other).unwrap();
    let old = std::fs::File::options().write(true).open(&staged).unwrap();
    old.set_modified(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
        .unwrap();
    drop(old);
    std::fs::write(inbox.join("renamed.bam.done"), b"").unwrap();
    std::fs::rename(&staged, inbox.join("renamed.bam")).unwrap();
    daemon.wait_for("the renamed file", || {
        dir.path("lake/test/renamed/_SUCCESS").exists()
    });

    daemon.stop();
}

#[test]
fn embedded_default_watches_inbox_and_writes_outbox() {
    let dir = TestDir::new();
    let daemon = Daemon::start(dir.root(), None);
    daemon.wait_for("./inbox to be created", || dir.path("inbox").is_dir());
    let bam = dir.generated(DataKind::Short, 1_000, 34);
    std::fs::copy(&bam, dir.path("inbox/sample.bam")).unwrap();
    // Default settle is 5 s and rescans every 10 s.
    daemon.wait_for("./outbox/sample, and the input in done/", || {
        dir.path("outbox/sample/_SUCCESS").exists() && dir.path("inbox/done/sample.bam").exists()
    });
    assert!(dir.path(".bamflow/claims").is_dir());
    // The manifest says where the input was read and where it was filed away.
    let source = &manifest(&dir.path("outbox/sample"))["source"];
    let inbox = std::fs::canonicalize(dir.path("inbox")).unwrap();
    assert_eq!(
        source["path"],
        inbox.join("sample.bam").to_str().unwrap(),
        "{source}"
    );
    assert_eq!(
        source["filed_as"],
        inbox.join("done/sample.bam").to_str().unwrap(),
        "{source}"
    );
    daemon.stop();
}

#[test]
fn a_claim_draft_left_by_a_killed_daemon_is_removed_at_the_next_start() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let config = config(&dir, &inbox, "");
    // What a daemon killed between writing a claim's draft and linking it leaves behind.
    let claims = dir.path("state/claims");
    std::fs::create_dir_all(&claims).unwrap();
    let dead = u32::MAX - 1;
    let draft = claims.join(format!(".00000000000000ab.claim.{dead}.0"));
    std::fs::write(&draft, format!("{dead}\n/elsewhere.bam\n")).unwrap();
    let bam = dir.generated(DataKind::Short, 1_000, 52);
    std::fs::copy(&bam, inbox.join("sample.bam")).unwrap();

    let daemon = Daemon::start(dir.root(), Some(&config));
    daemon.wait_for("the file", || {
        dir.path("lake/test/sample/_SUCCESS").exists()
    });
    let log = daemon.stop();
    assert!(!draft.exists(), "{log}");
    assert!(log.contains("Removed claim drafts"), "{log}");
    let left: Vec<_> = std::fs::read_dir(&claims).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn sigterm_mid_file_publishes_nothing_keeps_the_input_and_resumes_on_restart() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    // Tiny batches and parts make the conversion slow enough to interrupt.
    let config = config(
        &dir,
        &inbox,
        "[watch.convert]\nbatch_records = 1\npart_records = 2000\n",
    );
    let daemon = Daemon::start(dir.root(), Some(&config));
    let bam = dir.generated(DataKind::Short, 20_000, 35);
    std::fs::copy(&bam, inbox.join("big.bam")).unwrap();
    daemon.wait_for("the conversion to start", || {
        std::fs::read_dir(dir.path("lake/test"))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    });

    let (code, took, log) = daemon.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(log.contains("Conversion stopped by shutdown"), "{log}");
    assert!(
        inbox.join("big.bam").exists(),
        "the input stays where it was"
    );
    let leftovers: Vec<String> = std::fs::read_dir(dir.path("lake/test"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        leftovers,
        [".big.staging"],
        "nothing half-published; the hidden staging folder keeps the durable parts"
    );

    // The next start continues from the checkpoint and publishes the whole file.
    let daemon = Daemon::start(dir.root(), Some(&config));
    let output = dir.path("lake/test/big");
    daemon.wait_for("the resumed conversion", || {
        output.join("_SUCCESS").exists()
    });
    let dataset = sam_text::read_dataset(&output).unwrap();
    assert_dataset_matches_samtools(&dataset, &bam);
    assert!(!dir.path("lake/test/.big.staging").exists());
    // The full hash covers the whole input, whichever run read which part.
    let manifest = manifest(&output);
    assert_eq!(manifest["source"]["sha256"], sha256sum(&bam), "{manifest}");
    daemon.stop();
}

/// Receives sd_notify datagrams until one contains `wanted`; returns everything received.
fn receive_until(socket: &std::os::unix::net::UnixDatagram, wanted: &str, log: &mut Vec<String>) {
    let mut buf = vec![0; 4096];
    let started = Instant::now();
    while !log.iter().any(|m| m.contains(wanted)) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no {wanted} in {log:?}"
        );
        if let Ok(n) = socket.recv(&mut buf) {
            log.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

#[test]
fn notifies_systemd_and_keeps_the_old_config_on_a_bad_reload() {
    use std::os::unix::net::UnixDatagram;

    let dir = TestDir::new();
    let inbox = dir.inbox();
    let config = config(&dir, &inbox, "");
    let socket_path = dir.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();

    let daemon = Daemon::start_with(
        dir.root(),
        Some(&config),
        &[("NOTIFY_SOCKET", socket_path.as_os_str())],
    );
    let pid = daemon.pid();
    let mut log = Vec::new();
    receive_until(&socket, "READY=1", &mut log);
    assert!(log.iter().any(|m| m.contains("STATUS=")), "{log:?}");

    // Break the config, then reload: the daemon says so and goes on with the old one.
    std::fs::write(&config, "[daemon]\nstate_dir = [\n").unwrap();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    receive_until(&socket, "RELOADING=1", &mut log);
    let reloading = log.iter().find(|m| m.contains("RELOADING=1")).unwrap();
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(usec > 0);
    let mut after_reload =
        log.split_off(log.iter().position(|m| m.contains("RELOADING=1")).unwrap() + 1);
    receive_until(&socket, "READY=1", &mut after_reload);
    log.extend(after_reload);

    let bam = dir.generated(DataKind::Short, 1_000, 36);
    std::fs::copy(&bam, inbox.join("after.bam")).unwrap();
    daemon.wait_for("conversion with the old config", || {
        dir.path("lake/test/after/_SUCCESS").exists()
    });

    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    receive_until(&socket, "STOPPING=1", &mut log);
    let order: Vec<usize> = ["READY=1", "RELOADING=1", "STOPPING=1"]
        .iter()
        .map(|w| log.iter().position(|m| m.contains(w)).unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{log:?}");
    let (code, _, stderr) = daemon.terminate_after_signal();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("Invalid configuration; keeping the current one."),
        "{stderr}"
    );
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/bamflow.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "Type=notify",
        "ExecStartPre=/usr/bin/bamflow check-config",
        "StateDirectory=bamflow",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "ReadWritePaths=",
    ] {
        assert!(text.contains(line), "unit lacks {line:?}");
    }
    // verify needs the binaries to exist: point the copy at the one just built.
    let dir = TestDir::new();
    let copy = dir.path("bamflow.service");
    std::fs::write(
        &copy,
        text.replace("/usr/bin/bamflow", bamflow_bin().to_str().unwrap()),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=25", "--no-pager"])
        .arg(&copy)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    assert!(security.status.success(), "exposure above 2.5:\n{report}");
    assert!(report.contains("Overall exposure level"), "{report}");
}

#[test]
fn the_same_content_dropped_twice_at_once_is_converted_once() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let config = config_with(&dir, &inbox, "max_concurrent_files = 2\n", "");
    // Both copies settle in the same round, so two idle workers take them together.
    let bam = dir.generated(DataKind::Short, 20_000, 38);
    std::fs::copy(&bam, inbox.join("copy1.bam")).unwrap();
    std::fs::copy(&bam, inbox.join("copy2.bam")).unwrap();
    let daemon = Daemon::start(dir.root(), Some(&config));
    daemon.wait_for("both copies filed away", || {
        inbox.join("done/copy1.bam").exists() && inbox.join("done/copy2.bam").exists()
    });
    let datasets: Vec<_> = std::fs::read_dir(dir.path("lake/test"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(datasets.len(), 1, "one dataset: {datasets:?}");
    let log = daemon.stop();
    assert_eq!(log.matches("outcome=\"duplicate\"").count(), 1, "{log}");
}

#[test]
fn the_same_content_twice_gives_one_dataset_and_status_shows_it() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let config = config(&dir, &inbox, "");
    let daemon = Daemon::start(dir.root(), Some(&config));

    let bam = dir.generated(DataKind::Short, 1_000, 37);
    std::fs::copy(&bam, inbox.join("first.bam")).unwrap();
    daemon.wait_for("the first copy", || inbox.join("done/first.bam").exists());
    std::fs::copy(&bam, inbox.join("again.bam")).unwrap();
    daemon.wait_for("the second copy", || inbox.join("done/again.bam").exists());
    assert!(dir.path("lake/test/first/_SUCCESS").exists());
    assert!(
        !dir.path("lake/test/again").exists(),
        "the same content is not converted twice"
    );

    let log = daemon.stop();
    assert!(log.contains("outcome=\"duplicate\""), "{log}");

    let ledger = std::fs::read_to_string(dir.path("state/ledger.jsonl")).unwrap();
    let states: Vec<String> = ledger
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["state"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(states, ["converting", "success", "duplicate"]);

    let output = bamflow_tests::bamflow(&["status", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("success") && text.contains("duplicate") && text.contains("same content as"),
        "{text}"
    );
}

#[test]
fn filesystem_events_find_a_new_file_long_before_the_next_rescan() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let config = config(&dir, &inbox, "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "scan_interval_seconds = 1",
        &format!("scan_interval_seconds = {}", EVENTS_RESCAN.as_secs()),
    );
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(dir.root(), Some(&config));
    std::thread::sleep(Duration::from_secs(2)); // past the first rescan

    let bam = dir.generated(DataKind::Short, 1_000, 39);
    std::fs::copy(&bam, inbox.join("evented.bam")).unwrap();
    daemon.wait_for("the file, well before the next rescan", || {
        dir.path("lake/test/evented/_SUCCESS").exists()
    });
    daemon.stop();
}

#[test]
fn two_daemons_sharing_a_state_folder_convert_each_file_once() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let config = config(&dir, &inbox, "");
    let first = Daemon::start(dir.root(), Some(&config));
    let second = Daemon::start(dir.root(), Some(&config));

    let names: Vec<String> = (0..6).map(|i| format!("f{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let bam = dir.generated(DataKind::Unaligned, 500, 40 + i as u64);
        std::fs::copy(&bam, inbox.join(format!("{name}.bam"))).unwrap();
    }
    first.wait_for("every file in done/", || {
        names
            .iter()
            .all(|n| inbox.join(format!("done/{n}.bam")).exists())
    });
    let (c1, _, log1) = first.terminate();
    let (c2, _, log2) = second.terminate();
    assert_eq!((c1, c2), (Some(0), Some(0)), "{log1}\n{log2}");

    let converted = |log: &str| log.matches("Converted file.").count();
    assert_eq!(
        converted(&log1) + converted(&log2),
        names.len(),
        "each file converted exactly once:\n{log1}\n{log2}"
    );
    assert!(
        !log1.contains("outcome=\"failure\"") && !log2.contains("outcome=\"failure\""),
        "{log1}\n{log2}"
    );
    for name in &names {
        assert!(dir.path(&format!("lake/test/{name}/_SUCCESS")).exists());
    }
    assert!(
        std::fs::read_dir(inbox.join("done")).unwrap().count() == names.len(),
        "no numbered copies in done/"
    );
}

#[test]
fn max_concurrent_files_converts_files_side_by_side() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    // Single-record batches make each conversion last long enough to overlap.
    let config = config_with(
        &dir,
        &inbox,
        "max_concurrent_files = 2\nthreads = 2\n",
        "[watch.convert]\nbatch_records = 1\n",
    );

    // Both files are in place before the daemon starts, so both are ready at once.
    for (name, seed) in [("one", 50), ("two", 51)] {
        let bam = dir.generated(DataKind::Short, 8_000, seed);
        std::fs::copy(&bam, inbox.join(format!("{name}.bam"))).unwrap();
    }
    let daemon = Daemon::start(dir.root(), Some(&config));
    daemon.wait_for("both files", || {
        inbox.join("done/one.bam").exists() && inbox.join("done/two.bam").exists()
    });
    let log = daemon.stop();

    let lines: Vec<&str> = log.lines().collect();
    let second_start = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("Converting file."))
        .nth(1)
        .map(|(i, _)| i)
        .unwrap();
    let first_end = lines
        .iter()
        .position(|l| l.contains("Converted file."))
        .unwrap();
    assert!(
        second_start < first_end,
        "the second file started only after the first finished:\n{log}"
    );
}

#[test]
fn symlinks_are_taken_only_when_the_watch_follows_them() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let outside = dir.generated(DataKind::Short, 500, 39);
    std::os::unix::fs::symlink(&outside, inbox.join("link.bam")).unwrap();

    // Not followed: a regular file dropped after it is converted, the link never.
    let config_path = config(&dir, &inbox, "");
    let daemon = Daemon::start(dir.root(), Some(&config_path));
    std::fs::copy(
        dir.generated(DataKind::Short, 500, 40),
        inbox.join("regular.bam"),
    )
    .unwrap();
    daemon.wait_for("the regular file", || {
        inbox.join("done/regular.bam").exists()
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(inbox.join("link.bam").symlink_metadata().is_ok());
    assert!(!dir.path("lake/test/link").exists(), "the link was taken");
    daemon.stop();

    // Followed when configured: the link's target is converted and the link filed away.
    let config_path = config(&dir, &inbox, "follow_symlinks = true\n");
    let daemon = Daemon::start(dir.root(), Some(&config_path));
    daemon.wait_for("the link", || {
        inbox.join("done/link.bam").symlink_metadata().is_ok()
    });
    let dataset = sam_text::read_dataset(&dir.path("lake/test/link")).unwrap();
    assert_dataset_matches_samtools(&dataset, &outside);
    assert!(outside.exists(), "the target stays where it is");
    daemon.stop();
}

#[test]
fn two_daemons_convert_the_same_content_under_two_names_once() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let config = config(&dir, &inbox, "");
    let bam = dir.generated(DataKind::Short, 20_000, 41);
    std::fs::copy(&bam, inbox.join("copy1.bam")).unwrap();
    std::fs::copy(&bam, inbox.join("copy2.bam")).unwrap();
    let first = Daemon::start(dir.root(), Some(&config));
    let second = Daemon::start(dir.root(), Some(&config));
    first.wait_for("both copies filed away", || {
        inbox.join("done/copy1.bam").exists() && inbox.join("done/copy2.bam").exists()
    });
    let (c1, _, log1) = first.terminate();
    let (c2, _, log2) = second.terminate();
    assert_eq!((c1, c2), (Some(0), Some(0)), "{log1}\n{log2}");
    let datasets: Vec<_> = std::fs::read_dir(dir.path("lake/test"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        datasets.len(),
        1,
        "one dataset: {datasets:?}\n{log1}\n{log2}"
    );
    let logs = format!("{log1}{log2}");
    assert_eq!(logs.matches("Converted file.").count(), 1, "{logs}");
    assert_eq!(logs.matches("outcome=\"duplicate\"").count(), 1, "{logs}");
}

/// The daemon's environment block, as the kernel holds it (glibc may have cut
/// `GLIBC_TUNABLES` at its colons while parsing it: search the bytes).
fn environ(pid: &str) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap()).into_owned()
}

#[test]
fn the_daemon_runs_without_glibcs_thread_caches_unless_the_operator_sets_them() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let config = config(&dir, &inbox, "");

    let daemon = Daemon::start(dir.root(), Some(&config));
    daemon.metrics_address();
    // Re-executed in place: the same process, now with the tunable, serving.
    let env = environ(&daemon.pid());
    assert!(
        env.contains("GLIBC_TUNABLES=glibc.malloc.tcache_count=0\0"),
        "{env:?}"
    );
    // Still named `bamflow`, as `bamflow status` and operators' `pgrep` look for it.
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", daemon.pid())).unwrap();
    assert_eq!(comm.trim_end(), "bamflow");
    daemon.stop();

    let mine = std::ffi::OsStr::new("glibc.malloc.arena_max=1:glibc.malloc.tcache_count=3");
    let daemon = Daemon::start_with(dir.root(), Some(&config), &[("GLIBC_TUNABLES", mine)]);
    daemon.metrics_address();
    let env = environ(&daemon.pid());
    assert!(
        env.contains("tcache_count=3") && !env.contains("tcache_count=0"),
        "{env:?}"
    );
    daemon.stop();
}

/// The byte ranges the daemon's sampled hash reads of a file of `size` bytes: both 1 MiB
/// ends and 16 slices of 64 KiB evenly between (`bamflow_engine::hash::content_hash`).
fn sampled_ranges(size: u64) -> Vec<(u64, u64)> {
    const EDGE: u64 = 1 << 20;
    const SLICE: u64 = 64 << 10;
    let stride = (size - 2 * EDGE) / 17;
    let mut ranges = vec![(0, EDGE)];
    ranges.extend((1..=16).map(|i| (EDGE + i * stride, EDGE + i * stride + SLICE)));
    ranges.push((size - EDGE, size));
    ranges
}

/// A BAM with stored (level 0) BGZF blocks, so that record bytes appear in the file as they
/// are and equal-length edits keep every block's size.
fn stored_bam(sam: &[String], bam: &Path) {
    let sam_path = bam.with_extension("sam");
    std::fs::write(&sam_path, sam.join("\n") + "\n").unwrap();
    let status = Command::new("samtools")
        .args(["view", "-u", "--no-PG", "-o"])
        .arg(bam)
        .arg(&sam_path)
        .status()
        .unwrap();
    assert!(status.success());
}

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn files_that_agree_on_every_sampled_byte_are_both_converted_and_a_true_copy_is_not() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let config = config(&dir, &inbox, "");

    // Two BAMs of one size that differ in one quality value, in a block between the samples.
    let generated = dir.generated(DataKind::Short, 70_000, 91);
    let mut sam = samtools_view(&generated, &[]).unwrap();
    let (a, b) = (dir.path("a.bam"), dir.path("b.bam"));
    stored_bam(&sam, &a);
    let bytes = std::fs::read(&a).unwrap();
    let size = bytes.len() as u64;
    let ranges = sampled_ranges(size);
    let clear = |at: u64| {
        // The record, and the CRC at the end of its block (< 64 KiB on), are read by no sample.
        ranges
            .iter()
            .all(|&(start, end)| at + (128 << 10) < start || at > end + (128 << 10))
    };
    let edited = (sam.len() / 3..sam.len())
        .find_map(|i| {
            let line = &sam[i];
            let qual = line.split('\t').nth(10)?;
            let raw: Vec<u8> = qual.bytes().map(|c| c - 33).collect();
            let at = memchr_find(&bytes, &raw)? as u64;
            clear(at).then_some(i)
        })
        .expect("a record between the samples");
    let mut fields: Vec<String> = sam[edited].split('\t').map(str::to_owned).collect();
    let first = fields[10].as_bytes()[0];
    fields[10].replace_range(0..1, if first == b'I' { "H" } else { "I" });
    sam[edited] = fields.join("\t");
    stored_bam(&sam, &b);
    assert_eq!(std::fs::metadata(&b).unwrap().len(), size);
    assert_ne!(sha256sum(&a), sha256sum(&b));

    let daemon = Daemon::start(dir.root(), Some(&config));
    let address = daemon.metrics_address();
    std::fs::copy(&a, inbox.join("a.bam")).unwrap();
    daemon.wait_for("a converted", || inbox.join("done/a.bam").exists());
    std::fs::copy(&b, inbox.join("b.bam")).unwrap();
    daemon.wait_for("b converted", || inbox.join("done/b.bam").exists());
    std::fs::copy(&a, inbox.join("copy-of-a.bam")).unwrap();
    daemon.wait_for("the copy filed", || {
        inbox.join("done/copy-of-a.bam").exists()
    });

    let metrics = http_get(&address, "/metrics").1;
    let checks = |result: &str| {
        sample(
            &metrics,
            &format!("bamflow_duplicate_checks_total{{result=\"{result}\",watch=\"test\"}}"),
        )
    };
    assert_eq!(
        (checks("refuted"), checks("confirmed")),
        (1.0, 1.0),
        "{metrics}"
    );
    // Each check read the new file once; the converted ones' hashes came from the ledger.
    let read = sample(
        &metrics,
        "bamflow_duplicate_check_bytes_total{watch=\"test\"}",
    );
    assert_eq!(read, 2.0 * size as f64);
    daemon.stop();

    // Both converted, each as samtools reads it; the copy was not.
    for (name, bam) in [("a", &a), ("b", &b)] {
        let output = dir.path(&format!("lake/test/{name}"));
        let dataset = sam_text::read_dataset(&output).unwrap();
        assert_dataset_matches_samtools(&dataset, bam);
        assert_eq!(manifest(&output)["source"]["sha256"], sha256sum(bam));
    }
    assert!(!dir.path("lake/test/copy-of-a").exists());
    // The ledger shows why: one sampled hash for all three, two full ones.
    let ledger = std::fs::read_to_string(dir.path("state/ledger.jsonl")).unwrap();
    let entries: Vec<Value> = ledger
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &Value| e["state"] != "converting")
        .collect();
    let field = |i: usize, key: &str| entries[i][key].as_str().unwrap_or_default().to_owned();
    assert_eq!(entries.len(), 3, "{ledger}");
    assert_eq!(field(0, "content_hash"), field(1, "content_hash"));
    assert_eq!(field(1, "content_hash"), field(2, "content_hash"));
    assert_eq!(
        [field(0, "state"), field(1, "state"), field(2, "state")],
        ["success", "success", "duplicate"]
    );
    assert_eq!(field(0, "sha256"), sha256sum(&a));
    assert_eq!(field(1, "sha256"), sha256sum(&b));
    assert_eq!(field(2, "sha256"), sha256sum(&a));
}

fn memchr_find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
