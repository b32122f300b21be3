//! One BAM over many tasks (DESIGN §11): `bamflow plan`, `convert --plan --task`, `commit`.
//! The plan is checked against samtools' record count, and the committed dataset against
//! `samtools view` and a single `convert`, row for row.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Output;

use bamflow_tests::bamflow;
use bamflow_tests::generator::DataKind;
use bamflow_tests::sam_text::read_dataset;

use crate::support::{assert_dataset_matches_samtools, convert_ok, stdout_of, TestDir};

/// Runs bamflow and returns its output, whatever the exit status.
fn run(args: &[&str], paths: &[&Path]) -> Output {
    let mut command = bamflow(args);
    for path in paths {
        command.arg(path);
    }
    command.output().unwrap()
}

fn ok(output: Output) -> String {
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "bamflow failed: {text}");
    text
}

/// `bamflow plan` into `plan`, returning it parsed.
fn plan(bam: &Path, tasks: usize, plan: &Path, extra: &[&str]) -> serde_json::Value {
    let tasks = tasks.to_string();
    let mut command = bamflow(&["plan", "--tasks", &tasks]);
    command.arg("-o").arg(plan).args(extra).arg(bam);
    ok(command.output().unwrap());
    serde_json::from_slice(&std::fs::read(plan).unwrap()).unwrap()
}

/// `bamflow convert BAM OUT --plan PLAN --task K EXTRA…`.
fn task(bam: &Path, out: &Path, plan: &Path, k: usize, extra: &[&str]) -> Output {
    let k = k.to_string();
    let mut command = bamflow(&["convert"]);
    command.arg(bam).arg(out).arg("--plan").arg(plan);
    command.args(["--task", &k]).args(extra);
    command.output().unwrap()
}

fn commit(out: &Path, plan: &Path) -> Output {
    let mut command = bamflow(&["commit"]);
    command.arg(out).arg("--plan").arg(plan);
    command.output().unwrap()
}

/// `samtools view -c`: records, unplaced and unmapped ones included.
fn samtools_count(bam: &Path) -> u64 {
    let mut command = std::process::Command::new("samtools");
    command.args(["view", "-c"]).arg(bam);
    stdout_of(&mut command).trim().parse().unwrap()
}

/// The same BAM rewritten with one byte per BGZF block after the magic (htslib detects the
/// format from the first block alone): every record spans blocks.
fn one_byte_blocks(dir: &TestDir, bam: &Path, name: &str) -> PathBuf {
    let mut raw = Vec::new();
    noodles_bgzf::io::Reader::new(std::fs::File::open(bam).unwrap())
        .read_to_end(&mut raw)
        .unwrap();
    let path = dir.path(name);
    let mut writer = noodles_bgzf::io::Writer::new(std::fs::File::create(&path).unwrap());
    let (magic, rest) = raw.split_at(4);
    for bytes in std::iter::once(magic).chain(rest.chunks(1)) {
        writer.write_all(bytes).unwrap();
        writer.flush().unwrap();
    }
    writer.finish().unwrap();
    path
}

/// Plans `bam` in `tasks`, runs every task and commits into `out`; checks the plan covers
/// samtools' records once and the dataset equals samtools and `single` row for row.
fn split_and_check(dir: &TestDir, bam: &Path, tasks: usize, single: &Path, extra: &[&str]) {
    let name = format!("{}-{tasks}", bam.file_stem().unwrap().to_string_lossy());
    let plan_path = dir.path(&format!("{name}.plan.json"));
    let planned = plan(bam, tasks, &plan_path, extra);
    let splits = planned["splits"].as_array().unwrap();
    assert_eq!(splits.len(), tasks);
    let records: u64 = splits.iter().map(|s| s["records"].as_u64().unwrap()).sum();
    let expected = samtools_count(bam);
    assert_eq!(
        records, expected,
        "{name}: the splits hold every record once"
    );
    assert_eq!(planned["records"].as_u64(), Some(expected));

    let out = dir.path(&name);
    // Out of order, as an array job's tasks may finish.
    for k in (0..tasks).rev() {
        ok(task(bam, &out, &plan_path, k, extra));
    }
    ok(commit(&out, &plan_path));
    let dataset = read_dataset(&out).unwrap();
    assert_dataset_matches_samtools(&dataset, bam);
    let one = read_dataset(single).unwrap();
    assert!(
        dataset.rows == one.rows,
        "{name}: rows differ from one convert"
    );
    let manifest = crate::support::manifest(&out);
    assert_eq!(manifest["tasks"].as_u64(), Some(tasks as u64));
    assert_eq!(manifest["counts"]["read"].as_u64(), Some(expected));
    // Only the dataset is left: no task folder, no staging.
    let parent = out.parent().unwrap();
    let staging = parent.join(format!(".{name}.staging"));
    assert!(!staging.exists(), "{} left behind", staging.display());
}

#[test]
fn every_split_of_every_kind_commits_to_what_one_convert_writes() {
    let dir = TestDir::new();
    let mut bams: Vec<PathBuf> = ["cigars", "mates_and_positions", "star_fields", "tag_types"]
        .iter()
        .map(|name| dir.bam_from_data(&format!("{name}.sam")))
        .collect();
    bams.push(dir.bam_from_data("header_only.sam"));
    // Sorted with unplaced unmapped reads at the end (indexed: the plan never reads the
    // index, which lists no unplaced reads), unsorted long reads, unaligned.
    let sorted = dir.generated(DataKind::Short, 3_000, 81);
    let indexed = std::process::Command::new("samtools")
        .arg("index")
        .arg(&sorted)
        .status()
        .unwrap();
    assert!(indexed.success());
    bams.push(sorted);
    bams.push(dir.generated(DataKind::Long, 40, 82));
    bams.push(dir.generated(DataKind::Unaligned, 2_000, 83));
    let tiny = one_byte_blocks(&dir, &bams[0], "tiny_blocks.bam");
    bams.push(tiny);
    let extra = ["--part-records", "700"];
    for bam in &bams {
        let single = dir.path(&format!(
            "{}-single",
            bam.file_stem().unwrap().to_string_lossy()
        ));
        convert_ok(bam, &single, &extra);
        for tasks in [1, 2, 3, 7, 64] {
            split_and_check(&dir, bam, tasks, &single, &extra);
        }
    }
}

#[test]
fn a_large_bam_splits_evenly_and_records_spanning_blocks_stay_whole() {
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 60_000, 84);
    let long = dir.generated(DataKind::Long, 200, 85);
    for (bam, tasks) in [(&bam, 7), (&long, 64)] {
        let single = dir.path(&format!(
            "{}-single",
            bam.file_stem().unwrap().to_string_lossy()
        ));
        convert_ok(bam, &single, &[]);
        split_and_check(&dir, bam, tasks, &single, &[]);
    }
    // Split by compressed bytes: no task of the short reads holds twice its share.
    let planned = plan(&bam, 7, &dir.path("even.json"), &[]);
    let share = planned["records"].as_u64().unwrap() / 7;
    for split in planned["splits"].as_array().unwrap() {
        let records = split["records"].as_u64().unwrap();
        assert!(records > share / 2 && records < share * 2, "{split}");
    }
}

#[test]
fn a_killed_task_reruns_into_the_same_dataset() {
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 8_000, 86);
    let extra = ["--part-records", "1000"];
    let single = dir.path("single");
    convert_ok(&bam, &single, &extra);
    let plan_path = dir.path("plan.json");
    plan(&bam, 2, &plan_path, &extra);
    let out = dir.path("out");
    // Nothing run yet: the commit says so and leaves nothing behind.
    let early = commit(&out, &plan_path);
    assert_eq!(early.status.code(), Some(1));
    assert!(!dir.path(".out.staging").exists());

    // Killed (SIGKILL) right after its second part is renamed into place.
    let mut command = bamflow(&["convert"]);
    command.arg(&bam).arg(&out).arg("--plan").arg(&plan_path);
    command.args(["--task", "1"]).args(extra);
    command.env("BAMFLOW_FAULTS", "part-renamed=kill@2");
    let killed = command.output().unwrap();
    assert!(!killed.status.success(), "the fault point kills the task");

    // Not committed with a task missing: it says which, and keeps the work.
    let refused = commit(&out, &plan_path);
    let text = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{text}");
    assert!(text.contains("task 0: not converted yet"), "{text}");

    ok(task(&bam, &out, &plan_path, 0, &extra));
    let resumed = task(&bam, &out, &plan_path, 1, &extra);
    ok(resumed);
    // A rerun of a finished task (a requeued array job) does nothing and succeeds.
    ok(task(&bam, &out, &plan_path, 1, &extra));
    ok(commit(&out, &plan_path));
    let manifest = crate::support::manifest(&out);
    assert_eq!(manifest["resumes"].as_u64(), Some(1), "task 1 resumed");
    assert!(read_dataset(&out).unwrap().rows == read_dataset(&single).unwrap().rows);
    // Committing again answers with the dataset.
    ok(commit(&out, &plan_path));
}

#[test]
fn a_task_refuses_a_changed_input_other_settings_and_a_second_runner() {
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 2_000, 87);
    let plan_path = dir.path("plan.json");
    plan(&bam, 3, &plan_path, &["--tags", "NM:i"]);
    let out = dir.path("out");

    let refused = |output: Output, expected: &str| {
        let text = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{text}");
        assert!(text.contains(expected), "{text}");
    };
    refused(
        task(&bam, &out, &plan_path, 0, &[]),
        "the settings differ from the plan's: tags: plan NM:i, now none",
    );
    refused(
        task(&bam, &out, &plan_path, 3, &["--tags", "NM:i"]),
        "the plan has 3 tasks (0 to 2); there is no task 3",
    );

    // Another runner holds task 0's staging folder.
    ok(task(&bam, &out, &plan_path, 1, &["--tags", "NM:i"]));
    let staging = dir.path(".out.staging/.task-00000.staging");
    std::fs::create_dir_all(&staging).unwrap();
    let held = std::fs::File::open(&staging).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).unwrap();
    refused(
        task(&bam, &out, &plan_path, 0, &["--tags", "NM:i"]),
        "in use",
    );
    drop(held);

    // The same name, other content: refused, however the plan names it.
    let other = dir.generated(DataKind::Short, 2_000, 88);
    std::fs::copy(&other, &bam).unwrap();
    refused(
        task(&bam, &out, &plan_path, 0, &["--tags", "NM:i"]),
        "the input is not the file the plan was made for",
    );
    let no_plan = run(&["convert", "--task", "0"], &[&bam, &out]);
    assert_eq!(no_plan.status.code(), Some(2), "--task needs --plan");
}
