//! Crashes: `kill -9` at any moment loses nothing and duplicates nothing (DESIGN.md §6).
//!
//! Random kills land wherever they land; named fault points (`BAMFLOW_FAULTS`) make sure some
//! land inside a part's commit and inside a checkpoint's durable write, which a random moment
//! rarely hits.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bamflow_tests::bamflow_bin;
use bamflow_tests::generator::{DataKind, Rng};
use bamflow_tests::sam_text::{self, Dataset};
use serde_json::Value;

use crate::harness::{config, Daemon, LIMIT};
use crate::support::{assert_dataset_matches_samtools, convert_ok, manifest, TestDir};

/// Records in the crash test's input: 51 parts, so 24 kills spread over it, one to three parts
/// apart, before it can finish.
const RECORDS: usize = 200_000;
const PART_RECORDS: u64 = 4_000;
const KILLS: usize = 24;

/// Every step of a part commit and of a durable write, each killed on its first pass.
const FAULT_POINTS: &[&str] = &[
    "part-written=kill@1",
    // A resume saves its checkpoint once before converting: the second durable write of a run
    // is the checkpoint of a part.
    "durable-written=kill@2",
    "part-synced=kill@1",
    "durable-synced=kill@2",
    "part-renamed=kill@1",
    "durable-renamed=kill@2",
    "durable-dir-synced=kill@2",
    "dataset-published=kill@1",
];

/// Parts recorded in a staging folder's checkpoint (0 when there is none yet).
fn checkpointed_parts(staging: &Path) -> usize {
    std::fs::read(staging.join("_checkpoint.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .and_then(|c| c["parts"].as_array().map(Vec::len))
        .unwrap_or(0)
}

fn count(logs: &[String], needle: &str) -> usize {
    logs.iter().map(|log| log.matches(needle).count()).sum()
}

#[test]
fn kill_dash_nine_at_any_moment_loses_and_duplicates_nothing() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let bam = dir.generated(DataKind::Short, RECORDS, 41);
    std::fs::copy(&bam, inbox.join("sample.bam")).unwrap();
    let config = config(
        &dir,
        &inbox,
        &format!("[watch.convert]\npart_records = {PART_RECORDS}\n"),
    );
    let output = dir.path("lake/test/sample");
    let staging = dir.path("lake/test/.sample.staging");

    let mut rng = Rng::new(7);
    let mut logs = Vec::new();
    let mut kills = 0;
    let mut faults_fired = 0;
    let mut checkpoint_history = Vec::new();
    // How long a part takes, as last seen: the random moment within a part is drawn from it, so
    // the kills spread over the file in a release build as they do in a debug one.
    let mut part_time = Duration::from_millis(50);
    for round in 0.. {
        if kills == KILLS || output.join("_SUCCESS").exists() {
            break;
        }
        // Every third round arms a fault point; the others kill at a random moment.
        let fault = (round % 3 == 2).then(|| FAULT_POINTS[(round / 3) % FAULT_POINTS.len()]);
        let env: Vec<(&str, &OsStr)> = [("BAMFLOW_LOG", OsStr::new("info,bamflow=debug"))]
            .into_iter()
            .chain(fault.map(|f| ("BAMFLOW_FAULTS", OsStr::new(f))))
            .collect();
        let mut daemon = Daemon::start_with(dir.root(), Some(&config), &env);
        if fault.is_some() {
            let started = Instant::now();
            while !(output.join("_SUCCESS").exists() || daemon.has_exited()) {
                assert!(started.elapsed() < LIMIT, "{}", daemon.log());
                std::thread::sleep(Duration::from_millis(50));
            }
            if !daemon.has_exited() {
                logs.push(daemon.terminate().2);
                break;
            }
            faults_fired += 1;
            kills += 1;
            logs.push(daemon.log());
        } else {
            // Mostly in the middle of the conversion, one to three parts on from the last
            // kill, at a random moment within a part; sometimes while it is still starting.
            if round % 6 != 0 {
                let mut parts = checkpointed_parts(&staging);
                let target = parts + 1 + rng.below(3);
                let started = Instant::now();
                let mut last_part = None;
                while parts < target && !output.join("_SUCCESS").exists() {
                    assert!(started.elapsed() < LIMIT, "{}", daemon.log());
                    std::thread::sleep(Duration::from_millis(1));
                    let now = checkpointed_parts(&staging);
                    if now > parts {
                        let at = Instant::now();
                        if let Some(previous) = last_part {
                            part_time = (at - previous) / (now - parts) as u32;
                        }
                        last_part = Some(at);
                        parts = now;
                    }
                }
            }
            let moment = part_time.as_micros() as usize;
            std::thread::sleep(Duration::from_micros(rng.below(moment.max(1)) as u64));
            logs.push(daemon.kill_9());
            kills += 1;
        }
        if staging.exists() {
            checkpoint_history.push(checkpointed_parts(&staging));
        }
    }

    // A last, undisturbed start finishes the file.
    let daemon = Daemon::start_with(
        dir.root(),
        Some(&config),
        &[("BAMFLOW_LOG", OsStr::new("info,bamflow=debug"))],
    );
    daemon.wait_for("the dataset", || output.join("_SUCCESS").exists());
    daemon.wait_for("the input to be filed away", || {
        dir.path("inbox/done/sample.bam").exists()
    });
    logs.push(daemon.stop());

    assert!(
        kills >= 20,
        "the conversion must be killed at least 20 times, was {kills}: make the input larger"
    );
    assert!(faults_fired >= 6, "fault points fired {faults_fired} times");
    assert!(!staging.exists(), "the staging folder was published");

    // Every record exactly once, in order, exactly as samtools prints it.
    let dataset = sam_text::read_dataset(&output).unwrap();
    assert_dataset_matches_samtools(&dataset, &bam);

    // The same dataset as an uninterrupted conversion, part for part.
    let reference = dir.path("uninterrupted");
    let uninterrupted = convert_ok(
        &bam,
        &reference,
        &["--part-records", &PART_RECORDS.to_string()],
    );
    assert_same_rows(&dataset, &uninterrupted);
    let (ours, theirs) = (manifest(&output), manifest(&reference));
    assert_eq!(ours["counts"], theirs["counts"]);
    let shape = |m: &Value| -> Vec<(Value, Value, Value)> {
        m["parts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["file"].clone(), p["rows"].clone(), p["records"].clone()))
            .collect()
    };
    assert_eq!(shape(&ours), shape(&theirs));

    // Resumed, never restarted; and each kill cost at most the part it interrupted plus the one
    // whose checkpoint it beat.
    let parts = shape(&ours).len();
    // The count is saved before the line is logged; a kill may fall in between.
    let logged = count(&logs, "Resuming conversion from its checkpoint.") as u64;
    let resumes = ours["resumes"].as_u64().unwrap();
    assert!(
        (logged..=logged + 2).contains(&resumes),
        "{resumes} resumes in the manifest, {logged} in the logs"
    );
    assert!(resumes >= 10, "only {resumes} resumes in {kills} kills");
    assert_eq!(count(&logs, "Starting over"), 0);
    let commits = count(&logs, "Part committed.");
    assert!(
        commits <= parts + kills,
        "{commits} part commits for {parts} parts and {kills} kills"
    );
    eprintln!(
        "{kills} kills ({faults_fired} at fault points), {resumes} resumes, {commits} part \
         commits for {parts} parts; checkpointed parts after each kill: {checkpoint_history:?}"
    );
    assert!(
        checkpoint_history.windows(2).all(|w| w[0] <= w[1]),
        "checkpoints only move forward: {checkpoint_history:?}"
    );
}

fn assert_same_rows(ours: &Dataset, theirs: &Dataset) {
    let (a, b) = (ours.to_sam(&[]).unwrap(), theirs.to_sam(&[]).unwrap());
    assert_eq!(a.len(), b.len(), "row counts");
    if let Some(i) = (0..a.len()).find(|&i| a[i] != b[i]) {
        panic!("row {i} differs:\n{}\n{}", a[i], b[i]);
    }
    assert_eq!(ours.parts, theirs.parts);
}

/// `bamflow convert --part-records 1000 [flags] IN OUT` with info logs and the fault points
/// `faults` (none when empty); returns the exit code (`None` when killed) and stderr.
fn convert_parts(
    input: &Path,
    output: &Path,
    flags: &[&str],
    faults: &str,
) -> (Option<i32>, String) {
    let mut command = Command::new(bamflow_bin());
    command
        .args(["convert", "--part-records", "1000"])
        .args(flags)
        .arg(input)
        .arg(output)
        .env("BAMFLOW_LOG", "info");
    if !faults.is_empty() {
        command.env("BAMFLOW_FAULTS", faults);
    }
    let result = command.output().unwrap();
    (
        result.status.code(),
        String::from_utf8_lossy(&result.stderr).into_owned(),
    )
}

/// `bamflow convert` killed by the fault point `fault`.
fn convert_killed_at(input: &Path, output: &Path, fault: &str) {
    let (code, log) = convert_parts(input, output, &[], fault);
    assert_eq!(code, None, "the fault point {fault} was not reached: {log}");
}

/// `bamflow convert --resume`: whether it succeeded, and its log.
fn convert_resume(input: &Path, output: &Path) -> (bool, String) {
    let (code, log) = convert_parts(input, output, &["--resume"], "");
    (code == Some(0), log)
}

fn staging_of(output: &Path) -> PathBuf {
    let name = output.file_name().unwrap().to_string_lossy();
    output.with_file_name(format!(".{name}.staging"))
}

#[test]
fn convert_resume_continues_and_a_changed_input_starts_over() {
    let dir = TestDir::new();
    let bam = dir.path("in.bam");
    std::fs::copy(dir.generated(DataKind::Short, 6_000, 51), &bam).unwrap();

    // Killed after its third part: --resume continues at the fourth.
    let out = dir.path("out");
    convert_killed_at(&bam, &out, "part-renamed=kill@3");
    assert!(!out.exists(), "nothing published");
    assert_eq!(
        checkpointed_parts(&staging_of(&out)),
        2,
        "the third part beat its checkpoint"
    );
    let (ok, log) = convert_resume(&bam, &out);
    assert!(ok, "{log}");
    assert!(
        log.contains("Resuming conversion from its checkpoint."),
        "{log}"
    );
    assert!(log.contains("part=2"), "resumes at part 2: {log}");
    let dataset = sam_text::read_dataset(&out).unwrap();
    assert_dataset_matches_samtools(&dataset, &bam);
    assert_eq!(manifest(&out)["resumes"], 1);
    assert_eq!(
        manifest(&out)["counts"]["read"].as_u64(),
        Some(dataset.rows.len() as u64)
    );

    // Killed, then the input is replaced: the old parts are not mixed in.
    let out = dir.path("changed");
    convert_killed_at(&bam, &out, "part-renamed=kill@3");
    std::fs::copy(dir.generated(DataKind::Short, 5_000, 52), &bam).unwrap();
    let (ok, log) = convert_resume(&bam, &out);
    assert!(ok, "{log}");
    assert!(
        log.contains("Starting over: the input changed since the checkpoint."),
        "{log}"
    );
    let dataset = sam_text::read_dataset(&out).unwrap();
    assert_dataset_matches_samtools(&dataset, &bam);
    assert_eq!(manifest(&out)["resumes"], 0);

    // Without --resume, leftovers are discarded, and say so.
    let out = dir.path("fresh");
    convert_killed_at(&bam, &out, "durable-renamed=kill@2");
    let (code, log) = convert_parts(&bam, &out, &[], "");
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("Discarding the work of an interrupted conversion"),
        "{log}"
    );
    assert_eq!(manifest(&out)["resumes"], 0);
}

#[test]
fn a_dataset_sealed_but_not_renamed_is_published_by_the_next_run_without_its_checkpoint() {
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 3_000, 54);
    let out = dir.path("out");
    // Killed after the manifest and _SUCCESS are written and the checkpoint removed, before
    // the rename: the dataset is complete in its staging folder.
    convert_killed_at(&bam, &out, "dataset-sealed=kill@1");
    assert!(!out.exists(), "nothing published");
    let staging = staging_of(&out);
    assert!(staging.join("_SUCCESS").exists() && !staging.join("_checkpoint.json").exists());

    let (ok, log) = convert_resume(&bam, &out);
    assert!(ok, "{log}");
    assert!(
        log.contains("Publishing the dataset an interrupted run had completed."),
        "{log}"
    );
    let files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let part = |f: &str| f.starts_with("part-") && f.ends_with(".parquet");
    assert!(
        files.contains(&"_SUCCESS".to_owned())
            && files
                .iter()
                .all(|f| part(f) || f == "_SUCCESS" || f == "_manifest.json"),
        "only parts, the manifest and _SUCCESS (DESIGN §3): {files:?}"
    );
    assert_dataset_matches_samtools(&sam_text::read_dataset(&out).unwrap(), &bam);

    // The same sealed folder for another input is not published for this one.
    let other = dir.path("other");
    convert_killed_at(&bam, &other, "dataset-sealed=kill@1");
    let changed = dir.path("changed.bam");
    std::fs::copy(dir.generated(DataKind::Short, 2_000, 55), &changed).unwrap();
    std::fs::rename(&changed, &bam).unwrap();
    let (ok, log) = convert_resume(&bam, &other);
    assert!(ok, "{log}");
    assert!(!log.contains("an interrupted run had completed"), "{log}");
    assert_dataset_matches_samtools(&sam_text::read_dataset(&other).unwrap(), &bam);
}

#[test]
fn an_fsync_error_abandons_the_part_and_redoes_it_on_a_fresh_file() {
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 5_000, 53);
    let out = dir.path("out");
    let (code, log) = convert_parts(&bam, &out, &[], "part-fsync=eio@3");
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("redoing the part from the last checkpoint"),
        "{log}"
    );
    assert!(
        log.contains("part-00002.parquet.partial"),
        "names the abandoned file: {log}"
    );
    let dataset = sam_text::read_dataset(&out).unwrap();
    assert_dataset_matches_samtools(&dataset, &bam);
    let parts = dataset.rows.len().div_ceil(1000);
    assert_eq!(manifest(&out)["parts"].as_array().unwrap().len(), parts);

    // A disk that keeps failing fails the file after three attempts, and says where.
    let out = dir.path("failing");
    let faults = "part-fsync=eio@1,part-fsync=eio@2,part-fsync=eio@3";
    let (code, log) = convert_parts(&bam, &out, &[], faults);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("write failed") && log.contains("cannot sync"),
        "{log}"
    );
    assert!(!out.exists());
}

#[test]
fn a_corrupt_checkpoint_or_a_missing_part_sets_the_file_aside() {
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let config = config(&dir, &inbox, "[watch.convert]\npart_records = 1000\n");

    // Two interrupted conversions into the daemon's output folder, each then damaged.
    let lake = dir.path("lake/test");
    for (name, seed) in [("corrupt", 61), ("missing", 62)] {
        let bam = inbox.join(format!("{name}.bam"));
        let parked = dir.path(&format!("{name}.bam"));
        std::fs::copy(dir.generated(DataKind::Short, 5_000, seed), &parked).unwrap();
        convert_killed_at(&parked, &lake.join(name), "part-renamed=kill@4");
        let staging = staging_of(&lake.join(name));
        assert_eq!(checkpointed_parts(&staging), 3);
        if name == "corrupt" {
            std::fs::write(
                staging.join("_checkpoint.json"),
                b"{\"format\": \"bamflow-ch",
            )
            .unwrap();
        } else {
            std::fs::remove_file(staging.join("part-00001.parquet")).unwrap();
        }
        // Moved, not copied: the same file (size, mtime, content) the checkpoint describes.
        std::fs::rename(&parked, &bam).unwrap();
    }

    let daemon = Daemon::start(dir.root(), Some(&config));
    let failed = inbox.join("failed");
    daemon.wait_for("both files to be set aside", || {
        failed.join("corrupt.bam.error.json").exists()
            && failed.join("missing.bam.error.json").exists()
    });
    let report = |name: &str| -> Value {
        let path = failed.join(format!("{name}.bam.error.json"));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let corrupt = report("corrupt");
    assert_eq!(corrupt["stage"], "checkpoint");
    let message = corrupt["message"].as_str().unwrap();
    assert!(
        message.contains("corrupt") && message.contains(".corrupt.staging"),
        "{message}"
    );
    let missing = report("missing");
    assert_eq!(missing["stage"], "checkpoint");
    let message = missing["message"].as_str().unwrap();
    assert!(message.contains("part-00001.parquet"), "{message}");

    // Nothing was published or restarted from zero; the evidence stays for the operator.
    assert!(!lake.join("corrupt").exists() && !lake.join("missing").exists());
    assert!(staging_of(&lake.join("missing"))
        .join("part-00002.parquet")
        .exists());
    let log = daemon.stop();
    assert!(!log.contains("Starting over"), "{log}");
}
