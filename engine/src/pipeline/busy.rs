//! Where a conversion's time goes: busy seconds per stage, summed over every thread that
//! worked on it.
//!
//! Each stage adds the time it spent working (never waiting on a channel) once per block,
//! batch or column chunk, with one relaxed atomic add. An operator compares the stages'
//! totals to find the bottleneck; `bamflow_stage_busy_seconds_total{stage}` and the manifest's
//! `stage_seconds` show them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

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

/// A pipeline thread that does its work alone, outside the pool.
///
/// However many workers the pool has, a conversion cannot finish sooner than its busiest
/// serial thread's CPU time, so total CPU over that time bounds the cores it can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SerialThread {
    /// Reads frames, frames records into batches.
    Reader,
    /// Hands batches to decoding jobs and their results on in order.
    Dispatch,
    /// Cuts batches into cells and appends row groups.
    Writer,
    /// Hashes the input's bytes as the reader reads them (SHA-256 is sequential).
    Hash,
}

/// Busy time per stage of one conversion, and the CPU time of its serial threads.
#[derive(Debug, Default)]
pub struct BusyTimes {
    nanos: [AtomicU64; 6],
    serial_nanos: [AtomicU64; 4],
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

    /// Runs `f` on this thread, adding the CPU time it took to `thread`.
    pub fn on_thread<T>(&self, thread: SerialThread, f: impl FnOnce() -> T) -> T {
        let started = thread_cpu_time();
        let result = f();
        let nanos = thread_cpu_time().saturating_sub(started).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
        self.serial_nanos[thread as usize].fetch_add(nanos, Ordering::Relaxed);
        result
    }

    pub fn serial_snapshot(&self) -> SerialSeconds {
        let seconds = |thread: SerialThread| {
            self.serial_nanos[thread as usize].load(Ordering::Relaxed) as f64 / 1e9
        };
        SerialSeconds {
            reader: seconds(SerialThread::Reader),
            dispatch: seconds(SerialThread::Dispatch),
            writer: seconds(SerialThread::Writer),
            hash: seconds(SerialThread::Hash),
        }
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

/// The CPU time this thread has used; zero if the clock is unavailable.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the duration of the call.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if status != 0 {
        return Duration::ZERO;
    }
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(now.tv_nsec).unwrap_or(0);
    Duration::new(secs, nanos)
}

/// CPU seconds of each serial thread, as the manifest records them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SerialSeconds {
    pub reader: f64,
    pub dispatch: f64,
    pub writer: f64,
    /// Zero when no full hash was made (and in manifests from before it had a thread).
    #[serde(default)]
    pub hash: f64,
}

/// Busy seconds per stage, as the manifest records them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Only CPU counts: a thread that works is charged, one that sleeps as long is not.
    #[test]
    fn serial_threads_are_charged_their_cpu_time_not_their_wall_time() {
        let busy = BusyTimes::default();
        busy.on_thread(SerialThread::Writer, || {
            // Until this thread has used 30 ms of CPU, however busy the machine is.
            let started = thread_cpu_time();
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut x = 1u64;
            while thread_cpu_time() - started < Duration::from_millis(30)
                && Instant::now() < deadline
            {
                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
        });
        busy.on_thread(SerialThread::Reader, || {
            std::thread::sleep(Duration::from_millis(50));
        });
        let seconds = busy.serial_snapshot();
        assert!(seconds.writer >= 0.03, "{seconds:?}");
        assert!(seconds.reader < 0.01, "{seconds:?}");
        assert_eq!(seconds.dispatch, 0.0);
    }
}
