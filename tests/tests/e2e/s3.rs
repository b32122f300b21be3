//! `s3://` outputs (DESIGN §13) against a real S3-compatible server (moto): what lands in the
//! bucket equals samtools, pyarrow reads it from s3://, a killed upload resumes with every
//! record once and no stray objects or open multipart uploads, a dataset is published once,
//! throttling is retried and a 403 fails the file; an `s3://` input converts with ranged
//! reads, resumes from its checkpoint, and a missing, truncated or foreign object fails naming
//! it.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use bamflow_tests::generator::DataKind;
use bamflow_tests::sam_text::read_dataset;
use bamflow_tests::{bamflow, samtools_view};

use crate::harness::Daemon;
use crate::moto::{Moto, ThrottlingProxy};
use crate::support::{assert_dataset_matches_samtools, http_get, sample, TestDir};

fn bamflow_s3(moto: &Moto, args: &[&str]) -> std::process::Output {
    bamflow(args)
        .envs(moto.env())
        .output()
        .expect("bamflow runs")
}

/// [`bamflow_s3`], which must succeed.
fn bamflow_s3_ok(moto: &Moto, args: &[&str]) -> std::process::Output {
    let output = bamflow_s3(moto, args);
    assert!(output.status.success(), "{args:?}: {}", stderr(&output));
    output
}

/// The records samtools prints (no header lines).
fn records(bam: &Path) -> Vec<String> {
    let mut lines = samtools_view(bam, &[]).unwrap();
    lines.retain(|line| !line.starts_with('@'));
    lines
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The objects a published dataset of `parts` parts consists of, and nothing else.
fn dataset_keys(prefix: &str, parts: usize) -> Vec<String> {
    let mut keys: Vec<String> = (0..parts)
        .map(|n| format!("{prefix}/part-{n:05}.parquet"))
        .chain([
            format!("{prefix}/_SUCCESS"),
            format!("{prefix}/_manifest.json"),
        ])
        .collect();
    keys.sort();
    keys
}

/// Downloads the dataset and checks every field of every record against samtools.
fn assert_bucket_matches_samtools(
    moto: &Moto,
    dir: &TestDir,
    prefix: &str,
    bam: &Path,
) -> serde_json::Value {
    let local = dir.path(&format!("downloaded-{}", prefix.replace('/', "-")));
    moto.download("lake", prefix, &local);
    let dataset = read_dataset(&local).expect("the downloaded dataset reads");
    assert_dataset_matches_samtools(&dataset, bam);
    serde_json::from_slice(&std::fs::read(local.join("_manifest.json")).unwrap()).unwrap()
}

#[test]
fn convert_to_s3_publishes_what_samtools_prints_and_pyarrow_reads_it_from_s3() {
    let moto = Moto::start();
    moto.create_bucket("lake");
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 20_000, 61);
    let spool = dir.path("spool");
    let output = bamflow_s3_ok(
        &moto,
        &[
            "convert",
            bam.to_str().unwrap(),
            "s3://lake/bam/run1/short",
            "--part-records",
            "6000",
            "--spool",
            spool.to_str().unwrap(),
        ],
    );
    assert!(stderr(&output).contains("s3://lake/bam/run1/short"));
    assert_eq!(moto.keys("lake", "bam/"), dataset_keys("bam/run1/short", 4));
    let manifest = assert_bucket_matches_samtools(&moto, &dir, "bam/run1/short", &bam);
    assert_eq!(manifest["counts"]["read"], records(&bam).len());
    // The spool keeps nothing of a published dataset.
    assert!(!spool.join("lake/bam/run1/short").exists());
    assert_eq!(moto.open_multipart_uploads("lake"), 0);

    // An independent reader, straight from s3://: per-reference counts equal samtools'.
    let mut expected = std::collections::BTreeMap::<String, u64>::new();
    for line in records(&bam) {
        *expected
            .entry(line.split('\t').nth(2).unwrap().to_owned())
            .or_default() += 1;
    }
    let script = r#"
import sys, json, pyarrow.dataset as ds, pyarrow.fs as fs
s3 = fs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                     endpoint_override=sys.argv[1], scheme="http")
t = ds.dataset("lake/bam/run1/short", filesystem=s3, format="parquet").to_table(columns=["rname"])
counts = {}
for value in t.column("rname").to_pylist():
    key = "*" if value is None else value
    counts[key] = counts.get(key, 0) + 1
print(json.dumps(counts, sort_keys=True))
"#;
    let read = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(moto.endpoint())
        .output()
        .expect("python3 runs");
    assert!(
        read.status.success(),
        "pyarrow from s3://: {}",
        stderr(&read)
    );
    let theirs: std::collections::BTreeMap<String, u64> =
        serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(theirs, expected);

    // Published once: a second conversion to the same address fails and changes nothing.
    let again = bamflow_s3(
        &moto,
        &[
            "convert",
            bam.to_str().unwrap(),
            "s3://lake/bam/run1/short",
            "--spool",
            spool.to_str().unwrap(),
        ],
    );
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("s3://lake/bam/run1/short already exists"),
        "{}",
        stderr(&again)
    );
    assert_eq!(moto.keys("lake", "bam/"), dataset_keys("bam/run1/short", 4));
}

#[test]
fn a_create_only_put_never_replaces_an_object() {
    let moto = Moto::start();
    moto.create_bucket("lake");
    let bucket = moto.bucket("lake");
    bucket.put("x/_SUCCESS", "first".into(), true).unwrap();
    let second = bucket.put("x/_SUCCESS", "second".into(), true);
    assert!(
        matches!(second, Err(bamflow_store::StoreError::AlreadyExists { .. })),
        "{second:?}"
    );
    assert_eq!(&bucket.get("x/_SUCCESS").unwrap().unwrap()[..], b"first");
}

#[test]
fn a_killed_upload_resumes_with_every_record_once_and_nothing_left_over() {
    let moto = Moto::start();
    moto.create_bucket("lake");
    let dir = TestDir::new();
    // Long reads: parts of ~10 MB, uploaded in two multipart chunks each.
    let bam = dir.generated(DataKind::Long, 1_200, 62);
    let spool = dir.path("spool");
    // Row groups of 2 MB: a part's file grows while it is written, so it can be followed.
    let config = dir.path("convert.toml");
    std::fs::write(&config, "[convert]\nrow_group_mb = 2\n").unwrap();
    let args = [
        "convert",
        bam.to_str().unwrap(),
        "s3://lake/long/reads",
        "--config",
        config.to_str().unwrap(),
        "--part-records",
        "600",
        "--spool",
        spool.to_str().unwrap(),
        "--resume",
    ];
    // Killed after the first chunk of the first part's multipart upload: an upload is open.
    let killed = bamflow(&args)
        .envs(moto.env())
        .env("BAMFLOW_FAULTS", "chunk-uploaded=kill@1")
        .output()
        .unwrap();
    assert!(!killed.status.success());
    assert_eq!(moto.open_multipart_uploads("lake"), 1);
    assert!(!moto
        .keys("lake", "long/")
        .iter()
        .any(|k| k.ends_with("_SUCCESS")));

    // Killed again after a part is uploaded whole.
    let killed = bamflow(&args)
        .envs(moto.env())
        .env("BAMFLOW_FAULTS", "part-uploaded=kill@1")
        .output()
        .unwrap();
    assert!(!killed.status.success());
    assert_eq!(
        moto.open_multipart_uploads("lake"),
        0,
        "the first run's upload was aborted"
    );
    // An object no part of the dataset names (an earlier, different attempt's) goes too.
    moto.bucket("lake")
        .put("long/reads/part-00099.parquet", "stale".into(), false)
        .unwrap();

    bamflow_s3_ok(&moto, &args);
    assert_eq!(moto.keys("lake", "long/"), dataset_keys("long/reads", 2));
    assert_eq!(moto.open_multipart_uploads("lake"), 0);
    let manifest = assert_bucket_matches_samtools(&moto, &dir, "long/reads", &bam);
    assert!(manifest["resumes"].as_u64().unwrap() >= 1, "{manifest}");
    assert_eq!(manifest["counts"]["read"], records(&bam).len());
    assert!(!spool.join("lake/long/reads").exists());
}

#[test]
fn a_part_is_uploaded_while_it_is_written() {
    let moto = Moto::start();
    moto.create_bucket("lake");
    let dir = TestDir::new();
    // One part of ~20 MB in row groups of 2 MB: its file passes a chunk (8 MiB) long before
    // its commit, so chunks go up while the rest is encoded.
    let bam = dir.generated(DataKind::Long, 1_200, 64);
    let config = dir.path("convert.toml");
    std::fs::write(&config, "[convert]\nrow_group_mb = 2\n").unwrap();
    let output = bamflow(&[
        "convert",
        bam.to_str().unwrap(),
        "s3://lake/streamed/one",
        "--config",
        config.to_str().unwrap(),
        "--spool",
        dir.path("spool").to_str().unwrap(),
    ])
    .envs(moto.env())
    .env("BAMFLOW_LOG", "bamflow_store=debug")
    .output()
    .unwrap();
    let text = stderr(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("Part uploaded while it was written. url=s3://lake/streamed/one part=part-00000.parquet"),
        "{text}"
    );
    assert_eq!(
        moto.keys("lake", "streamed/"),
        dataset_keys("streamed/one", 1)
    );
    assert_bucket_matches_samtools(&moto, &dir, "streamed/one", &bam);
    assert_eq!(moto.open_multipart_uploads("lake"), 0);
}

#[test]
fn a_403_fails_the_conversion_at_once_naming_the_object() {
    // moto checks credentials when told to: unknown keys get 403 InvalidAccessKeyId.
    let moto = Moto::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let dir = TestDir::new();
    let bam = dir.bam_from_data("cigars.sam");
    let output = bamflow_s3(
        &moto,
        &[
            "convert",
            bam.to_str().unwrap(),
            "s3://lake/denied/x",
            "--spool",
            dir.path("spool").to_str().unwrap(),
        ],
    );
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains("s3://lake/denied/x"), "{text}");
    assert!(text.contains("403"), "{text}");
}

/// A daemon's config: one watch of `dir`'s inbox into `s3://lake/datasets/{watch}/{stem}`,
/// parts of 5,000 records, `extra_watch` (keys, then tables) added to the watch.
fn daemon_config(dir: &TestDir, extra_watch: &str) -> std::path::PathBuf {
    let config = dir.path("bamflow.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"{state}\"\nscan_interval_seconds = 1\nmetrics_listen = \"127.0.0.1:0\"\n\n[[watch]]\nname = \"runs\"\npath = \"{inbox}\"\nsettle_seconds = 1\noutput = \"s3://lake/datasets/{{watch}}/{{stem}}\"\n{extra_watch}\n[watch.convert]\npart_records = 5000\n",
            state = dir.path("state").display(),
            inbox = dir.path("inbox").display(),
        ),
    )
    .unwrap();
    config
}

#[test]
fn the_daemon_uploads_through_throttling_and_counts_it() {
    let moto = Moto::start();
    moto.create_bucket("lake");
    // The first four PUTs (parts, manifest, marker) are answered 503 SlowDown.
    let proxy = ThrottlingProxy::start(moto.address(), 4);
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let config = daemon_config(
        &dir,
        &format!(
            "verify = true\n[watch.output_options]\nendpoint = \"{}\"\n",
            proxy.endpoint()
        ),
    );
    let env: Vec<(String, String)> = moto
        .env()
        .into_iter()
        .filter(|(k, _)| k != "AWS_ENDPOINT_URL")
        .collect();
    let env: Vec<(&str, &OsStr)> = env
        .iter()
        .map(|(k, v)| (k.as_str(), OsStr::new(v)))
        .collect();
    let daemon = Daemon::start_with(dir.root(), Some(&config), &env);
    let metrics = daemon.metrics_address();
    let bam = dir.generated(DataKind::Short, 12_000, 63);
    std::fs::copy(&bam, inbox.join("sample1.bam")).unwrap();
    daemon.wait_for("the dataset's _SUCCESS", || {
        moto.keys("lake", "datasets/")
            .contains(&"datasets/runs/sample1/_SUCCESS".to_owned())
    });
    daemon.wait_for("the input filed away", || {
        inbox.join("done/sample1.bam").exists()
    });
    assert_eq!(
        moto.keys("lake", "datasets/"),
        dataset_keys("datasets/runs/sample1", 3)
    );
    assert_bucket_matches_samtools(&moto, &dir, "datasets/runs/sample1", &bam);
    assert_eq!(proxy.throttled.load(std::sync::atomic::Ordering::SeqCst), 4);
    let (_, text) = http_get(&metrics, "/metrics");
    assert!(
        sample(&text, "bamflow_upload_retries_total{reason=\"throttled\"}") >= 4.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "bamflow_upload_errors_total{kind=\"denied\"}"),
        0.0
    );
    assert!(sample(&text, "bamflow_upload_bytes_total") > 0.0);
    assert!(
        sample(
            &text,
            "bamflow_files_processed_total{outcome=\"success\",watch=\"runs\"}"
        ) == 1.0,
        "{text}"
    );
    let log = daemon.stop();
    assert!(
        log.contains("output=s3://lake/datasets/runs/sample1"),
        "{log}"
    );
    assert!(!dir.path("state/spool/lake/datasets/runs/sample1").exists());
}

/// Puts a BAM's bytes into the bucket as `key`.
fn put_bam(moto: &Moto, key: &str, bytes: Vec<u8>) {
    moto.bucket("lake").put(key, bytes.into(), false).unwrap();
}

#[test]
fn an_s3_input_converts_without_a_local_copy_equal_to_samtools() {
    let moto = Moto::start();
    moto.create_bucket("lake");
    let dir = TestDir::new();
    // Long reads: a BAM of several read-ahead chunks (8 MiB each).
    let bam = dir.generated(DataKind::Long, 2_000, 65);
    let size = std::fs::metadata(&bam).unwrap().len();
    assert!(
        size > 3 * (8 << 20),
        "{size} bytes: want several ranged reads"
    );
    put_bam(&moto, "incoming/long.bam", std::fs::read(&bam).unwrap());

    // Into a local folder: every field of every record as samtools prints the local copy.
    let local = dir.path("local");
    bamflow_s3_ok(
        &moto,
        &[
            "convert",
            "s3://lake/incoming/long.bam",
            local.to_str().unwrap(),
            "--part-records",
            "700",
            "--batch-memory-mb",
            "16",
        ],
    );
    let dataset = read_dataset(&local).expect("the dataset reads");
    assert_dataset_matches_samtools(&dataset, &bam);
    let manifest = crate::support::manifest(&local);
    assert_eq!(manifest["source"]["path"], "s3://lake/incoming/long.bam");
    assert_eq!(manifest["source"]["size"], size);
    // The same sampled content hash as the local file's: the same input, wherever it lies.
    let local_source = bamflow_engine::dataset::SourceInfo::of(&bam).unwrap();
    assert_eq!(
        manifest["source"]["content_sha256"],
        local_source.content_sha256
    );

    // From the lake into the lake.
    bamflow_s3_ok(
        &moto,
        &[
            "convert",
            "s3://lake/incoming/long.bam",
            "s3://lake/tables/long",
            "--part-records",
            "700",
            "--spool",
            dir.path("spool").to_str().unwrap(),
        ],
    );
    assert_eq!(moto.keys("lake", "tables/"), dataset_keys("tables/long", 3));
    assert_bucket_matches_samtools(&moto, &dir, "tables/long", &bam);
}

#[test]
fn an_interrupted_conversion_of_an_s3_input_resumes_from_its_checkpoint() {
    let moto = Moto::start();
    moto.create_bucket("lake");
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 30_000, 66);
    put_bam(&moto, "in/short.bam", std::fs::read(&bam).unwrap());
    let out = dir.path("out");
    let args = [
        "convert",
        "s3://lake/in/short.bam",
        out.to_str().unwrap(),
        "--part-records",
        "8000",
        "--resume",
    ];
    let killed = bamflow(&args)
        .envs(moto.env())
        .env("BAMFLOW_FAULTS", "part-renamed=kill@2")
        .output()
        .unwrap();
    assert!(!killed.status.success());
    bamflow_s3_ok(&moto, &args);
    let manifest = crate::support::manifest(&out);
    assert_eq!(manifest["resumes"], 1, "{manifest}");
    assert_eq!(manifest["counts"]["read"], records(&bam).len());
    assert_dataset_matches_samtools(&read_dataset(&out).unwrap(), &bam);
}

#[test]
fn a_missing_truncated_or_foreign_s3_input_fails_naming_the_object_and_stage() {
    let moto = Moto::start();
    moto.create_bucket("lake");
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 5_000, 67);
    let bytes = std::fs::read(&bam).unwrap();
    put_bam(&moto, "in/cut.bam", bytes[..bytes.len() / 2].to_vec());
    put_bam(
        &moto,
        "in/notes.bam",
        b"@HD\tVN:1.6\nnot a BAM at all\n".to_vec(),
    );

    let fails = |key: &str, expected: &[&str]| {
        let url = format!("s3://lake/{key}");
        let out = dir.path(&key.replace('/', "-"));
        let output = bamflow_s3(&moto, &["convert", &url, out.to_str().unwrap()]);
        assert!(!output.status.success(), "{url} converted");
        let text = stderr(&output);
        assert!(text.contains(&url), "{text}");
        for part in expected {
            assert!(text.contains(part), "{url}: want {part:?} in {text}");
        }
        assert!(!out.exists(), "{url} left {}", out.display());
    };
    fails("in/missing.bam", &["open failed", "not found"]);
    fails(
        "in/cut.bam",
        &["read", "does not end with the BGZF EOF block"],
    );
    fails("in/notes.bam", &["read", "not a BGZF file"]);
}

#[test]
fn another_host_resumes_an_s3_output_from_the_checkpoint_in_the_store() {
    let moto = Moto::start();
    moto.create_bucket("lake");
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 30_000, 68);
    let (first_spool, second_spool) = (dir.path("host-a-spool"), dir.path("host-b-spool"));
    let args = |spool: &Path| {
        [
            "convert",
            bam.to_str().unwrap(),
            "s3://lake/handover/x",
            "--part-records",
            "8000",
            "--resume",
            "--spool",
            spool.to_str().unwrap(),
        ]
        .map(str::to_owned)
    };

    // Host A: killed once the store holds a checkpoint and the parts it lists.
    let killed = bamflow(&[])
        .args(args(&first_spool))
        .envs(moto.env())
        .env("BAMFLOW_FAULTS", "checkpoint-shared=kill@2")
        .output()
        .unwrap();
    assert!(!killed.status.success());
    let keys = moto.keys("lake", "handover/");
    assert!(
        keys.contains(&"handover/x/_checkpoint.json".to_owned()),
        "{keys:?}"
    );

    // Host B: its own, empty spool; it resumes from the store's checkpoint.
    let finished = bamflow(&[])
        .args(args(&second_spool))
        .envs(moto.env())
        .env("BAMFLOW_LOG", "bamflow_store=info")
        .output()
        .unwrap();
    let text = stderr(&finished);
    assert!(finished.status.success(), "{text}");
    assert!(
        text.contains("Resuming from the checkpoint in the store."),
        "{text}"
    );
    // The checkpoint does not outlive the publish; every record is there once.
    assert_eq!(
        moto.keys("lake", "handover/"),
        dataset_keys("handover/x", 4)
    );
    let manifest = assert_bucket_matches_samtools(&moto, &dir, "handover/x", &bam);
    assert_eq!(manifest["resumes"], 1, "{manifest}");
    assert_eq!(manifest["counts"]["read"], records(&bam).len());
    assert!(!second_spool.join("lake/handover/x").exists());
}

#[test]
fn an_s3_input_splits_into_tasks_whose_dataset_equals_samtools() {
    let moto = Moto::start();
    moto.create_bucket("lake");
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 40_000, 69);
    put_bam(&moto, "in/split.bam", std::fs::read(&bam).unwrap());
    let (plan, out) = (dir.path("plan.json"), dir.path("out"));
    let run = |args: &[&str]| String::from_utf8(bamflow_s3_ok(&moto, args).stdout).unwrap();
    // The profile the plan starts from is the local file's, but for the path.
    let profile = |input: &str| {
        let mut profile: serde_json::Value =
            serde_json::from_str(&run(&["profile", input])).unwrap();
        profile.as_object_mut().unwrap().remove("path");
        profile
    };
    assert_eq!(
        profile("s3://lake/in/split.bam"),
        profile(bam.to_str().unwrap())
    );
    run(&[
        "plan",
        "--tasks",
        "3",
        "-o",
        plan.to_str().unwrap(),
        "s3://lake/in/split.bam",
    ]);
    for task in ["0", "1", "2"] {
        run(&[
            "convert",
            "s3://lake/in/split.bam",
            out.to_str().unwrap(),
            "--plan",
            plan.to_str().unwrap(),
            "--task",
            task,
        ]);
    }
    let commit = bamflow(&[
        "commit",
        out.to_str().unwrap(),
        "--plan",
        plan.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(commit.status.success(), "{}", stderr(&commit));
    assert_dataset_matches_samtools(&read_dataset(&out).unwrap(), &bam);
}

#[test]
fn a_conversion_that_fails_for_good_leaves_nothing_in_the_bucket() {
    let moto = Moto::start();
    moto.create_bucket("lake");
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 30_000, 70);
    // Cut at two thirds: several parts are committed (and uploaded) before the cut is met.
    let bytes = std::fs::read(&bam).unwrap();
    let cut = dir.path("cut.bam");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let spool = dir.path("spool");
    let output = bamflow(&[
        "convert",
        cut.to_str().unwrap(),
        "s3://lake/failed/x",
        "--allow-missing-eof",
        "--part-records",
        "3000",
        "--resume",
        "--spool",
        spool.to_str().unwrap(),
    ])
    .envs(moto.env())
    .env("BAMFLOW_LOG", "bamflow_store=info")
    .output()
    .unwrap();
    let text = stderr(&output);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("truncated"), "{text}");
    // Parts went up before the cut was met; the failure took them (and the checkpoint) away.
    assert!(
        text.contains("Conversion failed for good; its uploaded parts are deleted."),
        "{text}"
    );
    assert!(!text.contains("parts=0"), "{text}");
    assert_eq!(moto.keys("lake", "failed/"), Vec::<String>::new());
    assert_eq!(moto.open_multipart_uploads("lake"), 0);
    assert!(!spool.join("lake/failed/.x.upload.json").exists());
}

#[test]
fn a_daemon_killed_during_an_upload_completes_the_dataset_when_restarted() {
    let moto = Moto::start();
    moto.create_bucket("lake");
    let dir = TestDir::new();
    let inbox = dir.inbox();
    let config = daemon_config(&dir, "");
    let env: Vec<(String, String)> = moto.env();
    let with_faults: Vec<(&str, &OsStr)> = env
        .iter()
        .map(|(k, v)| (k.as_str(), OsStr::new(v)))
        .chain([("BAMFLOW_FAULTS", OsStr::new("part-renamed=stall@2"))])
        .collect();
    // The conversion stalls (5 s) once its second part is committed; the first is uploaded by
    // then: killed there, mid-conversion and mid-upload.
    let daemon = Daemon::start_with(dir.root(), Some(&config), &with_faults);
    let bam = dir.generated(DataKind::Short, 14_000, 71);
    std::fs::copy(&bam, inbox.join("sample2.bam")).unwrap();
    daemon.wait_for("the first part in the store", || {
        moto.keys("lake", "datasets/")
            .contains(&"datasets/runs/sample2/part-00000.parquet".to_owned())
    });
    daemon.kill_9();
    assert!(!moto
        .keys("lake", "datasets/")
        .contains(&"datasets/runs/sample2/_SUCCESS".to_owned()));

    let env: Vec<(&str, &OsStr)> = with_faults[..with_faults.len() - 1].to_vec();
    let daemon = Daemon::start_with(dir.root(), Some(&config), &env);
    daemon.wait_for("the input filed away", || {
        inbox.join("done/sample2.bam").exists()
    });
    assert_eq!(
        moto.keys("lake", "datasets/"),
        dataset_keys("datasets/runs/sample2", 3)
    );
    assert_eq!(moto.open_multipart_uploads("lake"), 0);
    let manifest = assert_bucket_matches_samtools(&moto, &dir, "datasets/runs/sample2", &bam);
    assert_eq!(manifest["counts"]["read"], records(&bam).len());
    assert!(manifest["resumes"].as_u64().unwrap() >= 1, "{manifest}");
    daemon.stop();
}

#[test]
fn an_s3_input_replaced_while_it_is_read_fails_instead_of_mixing_two_files() {
    use bamflow_engine::input::RemoteObject;
    use std::io::Read;

    let moto = Moto::start();
    moto.create_bucket("lake");
    let bucket = std::sync::Arc::new(moto.bucket("lake"));
    bucket
        .put("in/x.bam", vec![1u8; 1000].into(), false)
        .unwrap();
    let object = bamflow_store::input::S3Object::open(bucket.clone(), "in/x.bam").unwrap();
    assert_eq!(object.size(), 1000);
    let mut head = [0; 10];
    object.read_exact_at(&mut head, 990).unwrap();
    assert_eq!(head, [1; 10]);

    // Another writer replaces it: every later read of the version opened fails.
    bucket
        .put("in/x.bam", vec![2u8; 1000].into(), false)
        .unwrap();
    let error = object.read_exact_at(&mut head, 0).unwrap_err();
    let text = error.to_string();
    assert!(text.contains("s3://lake/in/x.bam"), "{text}");
    assert!(text.to_lowercase().contains("precondition"), "{text}");
    let mut rest = Vec::new();
    let streamed = object
        .reader_from(0, 0)
        .unwrap()
        .read_to_end(&mut rest)
        .unwrap_err();
    assert!(
        streamed.to_string().to_lowercase().contains("precondition"),
        "{streamed}"
    );
}
