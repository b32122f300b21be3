//! Where a conversion's time goes: busy seconds per stage, summed over every thread that
//! worked on it.
//!
//! Each stage adds the time it spent working (never waiting on a channel) once per block,
//! batch or column chunk, with one relaxed atomic add. An operator compares the stages'
//! totals to find the bottleneck; `bamflow_stage_busy_seconds_total{stage}` and the manifest's
//! `stage_seconds` show them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// A stage of the pipeline, as the `stage` label of the busy-time metric names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusyStage {
    /// Reading compressed blocks from the file.
    Read,
    /// Inflating BGZF blocks (parallel).
    Inflate,
    /// Filters on raw records.
    Filter,
    /// Raw records to Arrow arrays (parallel).
    Decode,
    /// Parquet encoding and zstd, per column (parallel).
    Encode,
    /// Appending column chunks, fsync and rename of parts.
    Write,
}

impl BusyStage {
    pub const ALL: [Self; 6] = [
        Self::Read,
        Self::Inflate,
        Self::Filter,
        Self::Decode,
        Self::Encode,
        Self::Write,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Inflate => "inflate",
            Self::Filter => "filter",
            Self::Decode => "decode",
            Self::Encode => "encode",
            Self::Write => "write",
        }
    }
}

/// Busy time per stage of one conversion.
#[derive(Debug, Default)]
pub struct BusyTimes {
    nanos: [AtomicU64; 6],
}

impl BusyTimes {
    pub fn add(&self, stage: BusyStage, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.nanos[stage as usize].fetch_add(nanos, Ordering::Relaxed);
    }

    /// Runs `f`, adding its duration to `stage`.
    pub fn time<T>(&self, stage: BusyStage, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let result = f();
        self.add(stage, started.elapsed());
        result
    }

    pub fn snapshot(&self) -> StageSeconds {
        let seconds =
            |stage: BusyStage| self.nanos[stage as usize].load(Ordering::Relaxed) as f64 / 1e9;
        StageSeconds {
            read: seconds(BusyStage::Read),
            inflate: seconds(BusyStage::Inflate),
            filter: seconds(BusyStage::Filter),
            decode: seconds(BusyStage::Decode),
            encode: seconds(BusyStage::Encode),
            write: seconds(BusyStage::Write),
        }
    }
}

/// Busy seconds per stage, as the manifest records them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct StageSeconds {
    pub read: f64,
    pub inflate: f64,
    pub filter: f64,
    pub decode: f64,
    pub encode: f64,
    pub write: f64,
}

impl StageSeconds {
    pub fn get(&self, stage: BusyStage) -> f64 {
        match stage {
            BusyStage::Read => self.read,
            BusyStage::Inflate => self.inflate,
            BusyStage::Filter => self.filter,
            BusyStage::Decode => self.decode,
            BusyStage::Encode => self.encode,
            BusyStage::Write => self.write,
        }
    }
}
