//! The engine's commit fence: a conversion whose observer refuses a commit takes no further
//! durable step, and the next claim epoch inherits its staging folder and resumes from it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use bamflow_engine::pipeline::{Commit, ConvertOptions, Engine, Observer, Stage};
use bamflow_tests::generator::DataKind;
use bamflow_tests::sam_text;

use crate::support::{assert_dataset_matches_samtools, manifest, TestDir};

/// Refuses every step from the `allowed`-th confirmation on, and remembers what it was asked.
struct Lease {
    allowed: usize,
    asked: AtomicUsize,
    steps: Mutex<Vec<Commit>>,
}

impl Lease {
    fn allowing(allowed: usize) -> Self {
        Self {
            allowed,
            asked: AtomicUsize::new(0),
            steps: Mutex::default(),
        }
    }
}

impl Observer for Lease {
    fn confirm(&self, step: Commit) -> Result<(), String> {
        self.steps.lock().unwrap().push(step);
        if self.asked.fetch_add(1, Ordering::SeqCst) >= self.allowed {
            return Err("epoch 1 was taken over by epoch 2".to_owned());
        }
        Ok(())
    }
}

#[test]
fn a_refused_commit_takes_no_step_and_the_next_epoch_resumes_from_the_last_checkpoint() {
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Short, 20_000, 71);
    let output = dir.path("lake/sample");
    let engine = Engine::new(2).unwrap();
    let options = |epoch| ConvertOptions {
        part_records: 4_000,
        epoch: Some(epoch),
        ..ConvertOptions::default()
    };

    // Epoch 1 may commit part 0 and its checkpoint, and part 1; saving part 1's checkpoint
    // is refused.
    let first = Lease::allowing(3);
    let error = engine
        .convert(&bam, &output, &options(1), &first)
        .unwrap_err();
    assert!(error.is_fenced(), "{error:?}");
    assert_eq!(error.stage, Stage::Checkpoint);
    assert_eq!(
        *first.steps.lock().unwrap(),
        [
            Commit::Part(0),
            Commit::Checkpoint,
            Commit::Part(1),
            Commit::Checkpoint
        ]
    );
    assert!(!output.exists());
    let staging = dir.path("lake/.sample.staging-1");
    let checkpoint: serde_json::Value =
        serde_json::from_slice(&std::fs::read(staging.join("_checkpoint.json")).unwrap()).unwrap();
    assert_eq!(checkpoint["parts"].as_array().map(Vec::len), Some(1));

    // Epoch 2 takes the folder over and redoes only part 1 on.
    let second = Lease::allowing(usize::MAX);
    let summary = engine.convert(&bam, &output, &options(2), &second).unwrap();
    assert!(!staging.exists());
    let steps = second.steps.lock().unwrap().clone();
    assert_eq!(steps.first(), Some(&Commit::Checkpoint), "resume is saved");
    assert_eq!(steps.get(1), Some(&Commit::Part(1)));
    assert_eq!(steps.last(), Some(&Commit::Publish));
    assert_eq!(summary.manifest.resumes, 1);
    let records = summary.manifest.counts.read;
    assert_eq!(
        manifest(&output)["parts"].as_array().map(Vec::len),
        Some(records.div_ceil(4_000) as usize)
    );
    let dataset = sam_text::read_dataset(&output).unwrap();
    assert_dataset_matches_samtools(&dataset, &bam);
}

#[test]
fn a_refused_publish_leaves_the_sealed_dataset_for_the_next_epoch() {
    let dir = TestDir::new();
    let bam = dir.generated(DataKind::Long, 300, 72);
    let output = dir.path("lake/long");
    let engine = Engine::new(2).unwrap();
    let options = |epoch| ConvertOptions {
        epoch: Some(epoch),
        ..ConvertOptions::default()
    };
    // Part 0 and its checkpoint, then the publish is refused.
    let refuse_publish = Lease::allowing(2);
    let error = engine
        .convert(&bam, &output, &options(5), &refuse_publish)
        .unwrap_err();
    assert!(error.is_fenced(), "{error:?}");
    assert_eq!(error.stage, Stage::Publish);
    assert!(!output.exists());

    let summary = engine.convert(&bam, &output, &options(6), &()).unwrap();
    assert_eq!(summary.output, output);
    assert_dataset_matches_samtools(&sam_text::read_dataset(&output).unwrap(), &bam);
}
