//! One BAM over many workers (DESIGN §11): a plan of split points at record boundaries,
//! tasks that each convert one split into the dataset's staging folder, and a commit that
//! publishes their parts as one dataset.
//!
//! Split points are not guessed from byte patterns, as Hadoop-BAM and ADAM did (and got wrong,
//! gatk#1005), nor taken from an index, which has no entry for unplaced unmapped reads (the
//! records polars-bio's region splits dropped, polars-bio#330): one pass inflates every block
//! on the pool and walks the records by their `block_size`, without copying them, and places a
//! split at the first record starting in or after each N-th of the compressed bytes. Every
//! record is then in exactly one split by construction, and the plan is checked before it is
//! returned (contiguous, covering, each start a record boundary).
//!
//! Task K converts the records of split K into `.NAME.staging/task-K`, an ordinary conversion
//! restricted to one span: its own staging folder (locked, so a second runner of the same task
//! is refused), checkpoint and resume. The commit checks every task's manifest and parts
//! against the plan, links the parts in task order as `part-00000.parquet`… into the staging
//! folder and publishes it like any dataset, so readers see one dataset with the rows of one
//! `convert`, in the same order.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use noodles_bgzf::VirtualPosition;
use rayon::ThreadPool;
use serde::{Deserialize, Serialize};

use super::bgzf::{BgzfError, BgzfStream, BlockReader};
use super::header;
use super::in_place::{InPlaceSource, RunPlan};
use super::read::Position;
use super::region::Span;
use super::runs::RunReader;
use super::source::BatchLimits;
use super::write::PartInfo;
use super::{ConvertError, ConvertOptions, ConvertSummary, RawBatch, Stage, StageError};
use crate::checkpoint::{self, Settings};
use crate::dataset::{self, Manifest, SourceInfo, Staging};
use crate::durable;
use crate::input::{Input, SMALL_READ_AHEAD};

/// Why a plan cannot be made, used or committed.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// The plan file cannot be read or written.
    #[error("cannot access the plan {}", path.display())]
    Io {
        /// The plan file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The plan file is not a plan this bamflow reads.
    #[error("{} is not a valid plan: {reason}", path.display())]
    Invalid {
        /// The plan file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The input is not the file the plan was made for.
    #[error("the input is not the file the plan was made for: {0}")]
    InputChanged(String),
    /// The conversion settings are not the plan's.
    #[error("the settings differ from the plan's: {0}")]
    Settings(String),
    /// No such task.
    #[error("the plan has {tasks} tasks (0 to {}); there is no task {task}", tasks.saturating_sub(1))]
    NoTask {
        /// The task asked for.
        task: usize,
        /// Tasks in the plan.
        tasks: usize,
    },
    /// `--tasks 0`.
    #[error("a plan needs at least one task")]
    NoTasks,
    /// Regions read index spans, not the whole file.
    #[error("regions cannot be split into tasks: convert them in one run")]
    Regions,
    /// A task's output is missing or does not match the plan.
    #[error("task {task}: {reason}")]
    Task {
        /// The task.
        task: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The split points do not cover the input exactly (a bug, or a file changing under the
    /// pass).
    #[error("the split points do not cover the records: {0}")]
    Coverage(String),
}

/// One split: the records task `task` converts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// The task number, from 0.
    pub task: usize,
    /// Index of its first record in the file (0-based).
    pub first_record: u64,
    /// How many records it holds (0 when the file has fewer records than tasks).
    pub records: u64,
    /// BGZF virtual offset of its first record.
    pub start: u64,
    /// Virtual offset of the next split's first record (the end of the records for the last).
    pub end: u64,
}

/// Which file a plan splits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanInput {
    /// Where it was when the plan was made (informational: the content identifies it).
    pub path: PathBuf,
    /// Bytes.
    pub size: u64,
    /// Modification time, RFC 3339 in UTC.
    pub mtime: String,
    /// The sampled content hash ([`crate::hash::content_hash`]).
    pub content_sha256: String,
}

/// A verified split of one BAM into tasks (`plan.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitPlan {
    /// The input.
    pub input: PlanInput,
    /// The settings every task must convert with: they decide what the parts hold.
    pub settings: Settings,
    /// Records in the file.
    pub records: u64,
    /// The splits, in file order.
    pub splits: Vec<Split>,
}

/// The plan file's format, tagged so a later bamflow can read (or refuse) this one.
#[derive(Serialize, Deserialize)]
#[serde(tag = "format")]
enum Versioned {
    #[serde(rename = "bamflow-plan/1")]
    V1(SplitPlan),
}

impl SplitPlan {
    /// The plan as the JSON of a plan file (`"format": "bamflow-plan/1"` first).
    pub fn to_json(&self) -> String {
        // A plan holds only strings and numbers: serializing it cannot fail.
        serde_json::to_string_pretty(&Versioned::V1(self.clone())).unwrap_or_default()
    }

    /// Parses and checks the JSON of a plan file; `origin` names it in errors.
    ///
    /// # Errors
    ///
    /// Returns [`SplitError::Invalid`] when it is not a plan, or its splits do not tile.
    pub fn from_json(json: &str, origin: &Path) -> Result<Self, SplitError> {
        let invalid = |reason: String| SplitError::Invalid {
            path: origin.to_owned(),
            reason,
        };
        let Versioned::V1(plan) = serde_json::from_str(json).map_err(|e| invalid(e.to_string()))?;
        plan.check().map_err(|e| invalid(e.to_string()))?;
        Ok(plan)
    }

    /// Writes the plan to `path` (durably: a task started right after must find it).
    ///
    /// # Errors
    ///
    /// Returns [`SplitError::Io`] when the file cannot be written.
    pub fn save(&self, path: &Path) -> Result<(), SplitError> {
        durable::write_file(path, self.to_json().as_bytes()).map_err(|e| SplitError::Io {
            path: path.to_owned(),
            source: io::Error::other(e),
        })
    }

    /// Reads the plan at `path`.
    ///
    /// # Errors
    ///
    /// Returns [`SplitError::Io`] or [`SplitError::Invalid`].
    pub fn load(path: &Path) -> Result<Self, SplitError> {
        let json = fs::read_to_string(path).map_err(|source| SplitError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&json, path)
    }

    /// Split `task`.
    ///
    /// # Errors
    ///
    /// Returns [`SplitError::NoTask`] when the plan has no such task.
    pub fn split(&self, task: usize) -> Result<&Split, SplitError> {
        self.splits.get(task).ok_or(SplitError::NoTask {
            task,
            tasks: self.splits.len(),
        })
    }

    /// Checks the splits tile the records: numbered in order, each ending where the next
    /// starts, their records adding up from 0 to the total.
    fn check(&self) -> Result<(), SplitError> {
        let coverage = |reason: String| Err(SplitError::Coverage(reason));
        if self.splits.is_empty() {
            return coverage("no splits".to_owned());
        }
        let mut next_record = 0;
        for (i, split) in self.splits.iter().enumerate() {
            if split.task != i {
                return coverage(format!("split {i} is numbered {}", split.task));
            }
            if split.first_record != next_record {
                return coverage(format!(
                    "split {i} starts at record {} where the previous ends at {next_record}",
                    split.first_record
                ));
            }
            if let Some(next) = self.splits.get(i + 1) {
                if split.end != next.start {
                    return coverage(format!(
                        "split {i} ends at virtual offset {} and split {} starts at {}",
                        split.end,
                        i + 1,
                        next.start
                    ));
                }
            }
            if split.start > split.end || (split.records == 0) != (split.start == split.end) {
                return coverage(format!(
                    "split {i} has {} records from {} to {}",
                    split.records, split.start, split.end
                ));
            }
            next_record += split.records;
        }
        if next_record != self.records {
            return coverage(format!(
                "the splits hold {next_record} records of {}",
                self.records
            ));
        }
        Ok(())
    }

    /// Refuses an input that is not the plan's file.
    fn check_input(&self, source: &SourceInfo) -> Result<(), SplitError> {
        let planned = &self.input;
        let now = (&source.size, &source.mtime, &source.content_sha256);
        if now != (&planned.size, &planned.mtime, &planned.content_sha256) {
            return Err(SplitError::InputChanged(format!(
                "{} bytes, mtime {} now; the plan was made for {} bytes, mtime {} ({})",
                source.size,
                source.mtime,
                planned.size,
                planned.mtime,
                planned.path.display()
            )));
        }
        Ok(())
    }

    /// Refuses settings other than the plan's.
    fn check_settings(&self, settings: &Settings) -> Result<(), SplitError> {
        let planned = &self.settings;
        let differ = |what: &str, plan: &[String], now: &[String]| {
            let list = |items: &[String]| match items {
                [] => "none".to_owned(),
                items => items.join(","),
            };
            let (plan, now) = (list(plan), list(now));
            Err(SplitError::Settings(format!(
                "{what}: plan {plan}, now {now}"
            )))
        };
        // Tags first: they decide columns too.
        if settings.tags != planned.tags {
            return differ("tags", &planned.tags, &settings.tags);
        }
        if settings.filters != planned.filters {
            return differ("filters", &planned.filters, &settings.filters);
        }
        if settings.columns != planned.columns {
            return differ("columns", &planned.columns, &settings.columns);
        }
        if settings.part_records != planned.part_records {
            let (plan, now) = (planned.part_records, settings.part_records);
            return differ("part_records", &[plan.to_string()], &[now.to_string()]);
        }
        Ok(())
    }
}

/// Splits `input` into `tasks` splits of about equal compressed bytes, for conversions with
/// `options`: one pass that inflates on `pool` and frames records without copying them.
///
/// # Errors
///
/// Returns a [`ConvertError`] naming the file, the stage and the offset or record when the
/// input cannot be read or framed, or the options have regions.
pub(super) fn plan(
    pool: &Arc<ThreadPool>,
    input: &Path,
    tasks: usize,
    options: &ConvertOptions,
) -> Result<SplitPlan, ConvertError> {
    let fail = |stage, source: StageError| ConvertError::new(input, stage, source);
    if tasks == 0 {
        return Err(fail(Stage::Open, SplitError::NoTasks.into()));
    }
    if !options.filters.regions.is_empty() {
        return Err(fail(Stage::Filter, SplitError::Regions.into()));
    }
    super::check_complete(input, options.allow_missing_eof)?;
    let source = SourceInfo::of(input).map_err(|e| fail(Stage::Open, e.into()))?;
    let file = Input::open(input)
        .and_then(|file| file.reader_from(0, SMALL_READ_AHEAD))
        .map_err(|e| fail(Stage::Open, e.into()))?;
    let reader = BlockReader::new(
        io::BufReader::with_capacity(1 << 20, file),
        0,
        Arc::clone(pool),
    );
    let header = header::read_header(&mut BgzfStream::new(reader), options.header_limits())
        .map_err(|e| ConvertError::from_header(input, e))?;
    let mut records = in_place_source(pool, input, header.records_start, options)?;

    // Split k starts at the first record starting in or after the block at
    // `first + k * (size - first) / tasks`: the source stops before it, and is moved on.
    let first = header.records_start.compressed();
    let share = |k: usize| first + (source.size.saturating_sub(first)) * k as u64 / tasks as u64;
    let frame = |e| ConvertError::new(input, Stage::Frame, StageError::Source(e));
    let limits = BatchLimits {
        max_records: usize::MAX,
        // Runs of PLAN_RUN_BYTES bound the batches.
        max_bytes: usize::MAX,
        part_records: u64::MAX,
    };
    let mut batch = RawBatch::default();
    let mut pass_to = |records: &mut InPlaceSource<_>, end: Option<u64>| {
        records.stop_at(end.map(|offset| VirtualPosition::from(offset << 16)));
        while records.read_batch(&mut batch, limits).map_err(frame)? {}
        Ok::<_, ConvertError>((
            records.next_record(),
            records.virtual_position().map_err(frame)?,
        ))
    };
    let mut starts: Vec<(u64, VirtualPosition)> = vec![(0, header.records_start)];
    for k in 1..tasks {
        starts.push(pass_to(&mut records, Some(share(k)))?);
    }
    let (total, end) = pass_to(&mut records, None)?;

    let splits = (0..tasks)
        .map(|k| {
            let (first_record, start) = starts[k];
            let (next_record, next) = starts.get(k + 1).copied().unwrap_or((total, end));
            Split {
                task: k,
                first_record,
                records: next_record - first_record,
                start: u64::from(start),
                end: u64::from(next),
            }
        })
        .collect();
    let plan = SplitPlan {
        input: PlanInput {
            path: source.path.clone(),
            size: source.size,
            mtime: source.mtime.clone(),
            content_sha256: source.content_sha256.clone(),
        },
        settings: options.checkpoint_settings(),
        records: total,
        splits,
    };
    plan.check().map_err(|e| fail(Stage::Frame, e.into()))?;
    Ok(plan)
}

/// Inflated bytes per run while planning: the conversion's batch size at its defaults.
const PLAN_RUN_BYTES: usize = 4 << 20;

/// The records of `input` from `start` on, framed in place: jobs on `pool` inflate and walk
/// them, this thread only counts them.
fn in_place_source(
    pool: &Arc<ThreadPool>,
    input: &Path,
    start: VirtualPosition,
    options: &ConvertOptions,
) -> Result<InPlaceSource<Box<dyn io::Read + Send>>, ConvertError> {
    let offset = start.compressed();
    let file = Input::open(input)
        .and_then(|file| file.reader_from(offset, (options.batch_memory_mb << 20) / 4))
        .map_err(|e| ConvertError::new(input, Stage::Open, e.into()))?;
    let runs = RunReader::new(file, offset, Arc::clone(pool)).walking(options.max_record_bytes);
    let plan = RunPlan {
        bytes: PLAN_RUN_BYTES,
        depth: pool.current_num_threads(),
        max_record_bytes: options.max_record_bytes,
    };
    InPlaceSource::open(runs, start, 0, plan)
        .map_err(|e| ConvertError::from_source(input, e))?
        .ok_or_else(|| {
            let error = BgzfError::Corrupt {
                offset,
                reason: "the first record is not where the header ends",
            };
            ConvertError::new(input, Stage::Frame, StageError::Source(error.into()))
        })
}

/// Where task `task` of the dataset `output` is converted: `.NAME.staging/task-KKKKK`.
///
/// # Errors
///
/// Returns a [`ConvertError`] when `output` has no file name.
pub fn task_output(output: &Path, task: usize) -> Result<PathBuf, ConvertError> {
    let staging = dataset::staging_path(output)
        .map_err(|e| ConvertError::new(output, Stage::Output, e.into()))?;
    Ok(staging.join(format!("task-{task:05}")))
}

/// The task's published output, when it is complete and made from the plan's input.
pub(super) fn finished_task(target: &Path, plan: &SplitPlan) -> Option<Manifest> {
    let manifest = dataset::read_published(target)?;
    let same = plan.check_input(&manifest.source).is_ok();
    same.then_some(manifest)
}

/// What a reader of `split` reads: its span, and its first record to start from.
pub(super) fn reading(split: &Split) -> (Vec<Span>, Position) {
    let span = Span {
        start: VirtualPosition::from(split.start),
        end: VirtualPosition::from(split.end),
    };
    let from = Position {
        record: split.first_record,
        virtual_offset: split.start,
    };
    (vec![span], from)
}

/// Checks that a scan of a split reads the plan's file, without regions. Its columns and
/// filters are its own: a split is a range of records whatever is made of them.
pub(super) fn check_scan(
    plan: &SplitPlan,
    source: &SourceInfo,
    options: &ConvertOptions,
) -> Result<(), SplitError> {
    if !options.filters.regions.is_empty() {
        return Err(SplitError::Regions);
    }
    plan.check_input(source)
}

/// Checks that `source` and `options` are the plan's, so a task never converts another file
/// or with other settings than its siblings.
pub(super) fn check_task(
    plan: &SplitPlan,
    source: &SourceInfo,
    options: &ConvertOptions,
) -> Result<(), SplitError> {
    check_scan(plan, source, options)?;
    plan.check_settings(&options.checkpoint_settings())
}

/// Publishes the dataset `output` from the tasks of `plan`, all complete: each task's
/// manifest must match the plan (input, settings, records) and each part its size and CRC32.
/// The parts are linked in task order into the staging folder as `part-00000.parquet`…, with
/// one manifest over them ([`Manifest::tasks`] = the number of tasks); then the folder is
/// published. A dataset already committed from this plan's input is returned as it is.
///
/// # Errors
///
/// Returns a [`ConvertError`] naming `output`: a task missing or not matching the plan
/// ([`SplitError::Task`]) leaves everything in place for the task to be rerun.
pub fn commit(output: &Path, plan: &SplitPlan) -> Result<ConvertSummary, ConvertError> {
    let fail = |stage, source: StageError| ConvertError::new(output, stage, source);
    if let Some(manifest) = dataset::read_published(output) {
        if plan.check_input(&manifest.source).is_ok() && manifest.tasks.is_some() {
            return Ok(ConvertSummary {
                output: output.to_owned(),
                manifest,
            });
        }
    }
    // A commit of tasks never run (a wrong path, say) leaves no staging folder behind.
    let staged = dataset::staging_path(output).is_ok_and(|path| path.exists());
    let mut staging = Staging::open(output).map_err(|e| fail(Stage::Output, e.into()))?;
    if staged {
        // Whatever happens, the tasks' work stays for a rerun.
        staging.keep();
    }

    let mut tasks = Vec::with_capacity(plan.splits.len());
    for split in &plan.splits {
        let dir = staging.path().join(format!("task-{:05}", split.task));
        let manifest =
            task_manifest(&dir, split, plan).map_err(|e| fail(Stage::Publish, e.into()))?;
        tasks.push((dir, manifest));
    }

    // A task without rows still has its empty part: the dataset keeps one only when it has no
    // rows at all, for the schema.
    let any_rows = tasks.iter().any(|(_, m)| m.counts.written > 0);
    let mut parts: Vec<PartInfo> = Vec::new();
    for (dir, manifest) in &tasks {
        for part in &manifest.parts {
            if part.rows == 0 && (any_rows || !parts.is_empty()) {
                continue;
            }
            let file = format!("part-{:05}.parquet", parts.len());
            let to = staging.path().join(&file);
            let _ = fs::remove_file(&to);
            fs::hard_link(dir.join(&part.file), &to).map_err(|e| fail(Stage::Publish, e.into()))?;
            parts.push(PartInfo {
                file,
                ..part.clone()
            });
        }
    }
    let manifest = merged_manifest(plan, &tasks, parts);
    for (dir, _) in &tasks {
        fs::remove_dir_all(dir).map_err(|e| fail(Stage::Publish, e.into()))?;
    }
    remove_task_leftovers(staging.path()).map_err(|e| fail(Stage::Publish, e.into()))?;
    checkpoint::remove_from(staging.path()).map_err(|e| fail(Stage::Publish, e.into()))?;
    staging
        .seal(&manifest)
        .map_err(|e| fail(Stage::Publish, e.into()))?;
    let output = staging
        .publish()
        .map_err(|e| fail(Stage::Publish, e.into()))?;
    Ok(ConvertSummary { output, manifest })
}

/// The manifest of a finished task that matches its split, with its parts checked.
fn task_manifest(dir: &Path, split: &Split, plan: &SplitPlan) -> Result<Manifest, SplitError> {
    let task = split.task;
    let problem = |reason: String| SplitError::Task { task, reason };
    let manifest = dataset::read_published(dir).ok_or_else(|| {
        problem(format!(
            "not converted yet (no {})",
            dir.join("_SUCCESS").display()
        ))
    })?;
    plan.check_input(&manifest.source)
        .map_err(|e| problem(e.to_string()))?;
    let settings = Settings {
        columns: manifest.columns.clone(),
        tags: manifest.tags.clone(),
        filters: manifest.filters.clone(),
        part_records: plan.settings.part_records,
    };
    plan.check_settings(&settings)
        .map_err(|e| problem(e.to_string()))?;
    if manifest.counts.read != split.records {
        return Err(problem(format!(
            "read {} records; its split holds {}",
            manifest.counts.read, split.records
        )));
    }
    checkpoint::verify_parts(dir, &manifest.parts).map_err(|e| problem(e.to_string()))?;
    Ok(manifest)
}

/// Staging folders of task runs that never finished (a task rerun elsewhere won).
fn remove_task_leftovers(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".task-") || name.starts_with("task-") {
            fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(())
}

/// One manifest over the tasks' parts: counts and work summed, the first start, the last
/// finish.
fn merged_manifest(
    plan: &SplitPlan,
    tasks: &[(PathBuf, Manifest)],
    parts: Vec<PartInfo>,
) -> Manifest {
    let first = &tasks[0].1;
    let mut manifest = first.clone();
    manifest.source.sha256 = None;
    manifest.source.filed_as = None;
    manifest.counts = Default::default();
    manifest.resumes = 0;
    manifest.seconds = 0.0;
    manifest.stage_seconds = Default::default();
    manifest.serial_cpu_seconds = Default::default();
    manifest.peak_rss_bytes = 0;
    for (_, task) in tasks {
        let counts = &mut manifest.counts;
        counts.read += task.counts.read;
        counts.written += task.counts.written;
        for (filter, dropped) in &task.counts.filtered {
            *counts.filtered.entry(filter.clone()).or_default() += dropped;
        }
        manifest.resumes += task.resumes;
        manifest.seconds += task.seconds;
        let (s, t) = (&mut manifest.stage_seconds, &task.stage_seconds);
        (s.read, s.inflate, s.filter) =
            (s.read + t.read, s.inflate + t.inflate, s.filter + t.filter);
        (s.decode, s.encode, s.write) =
            (s.decode + t.decode, s.encode + t.encode, s.write + t.write);
        let (s, t) = (&mut manifest.serial_cpu_seconds, &task.serial_cpu_seconds);
        (s.reader, s.dispatch, s.writer, s.hash) = (
            s.reader + t.reader,
            s.dispatch + t.dispatch,
            s.writer + t.writer,
            s.hash + t.hash,
        );
        manifest.peak_rss_bytes = manifest.peak_rss_bytes.max(task.peak_rss_bytes);
        if task.started < manifest.started {
            manifest.started.clone_from(&task.started);
        }
    }
    manifest.finished = dataset::timestamp(std::time::SystemTime::now());
    manifest.records_per_second = manifest.counts.read as f64 / manifest.seconds.max(1e-9);
    manifest.bytes_out = parts.iter().map(|p| p.bytes).sum();
    manifest.compression_ratio = manifest.bytes_out as f64 / manifest.bytes_in.max(1) as f64;
    manifest.parts = parts;
    manifest.tasks = Some(plan.splits.len());
    manifest
}
