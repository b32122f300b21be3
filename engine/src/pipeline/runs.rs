//! Runs of BGZF blocks inflated back to back into one buffer, so that records can be framed
//! where they were inflated ([`super::in_place`]) instead of being copied out of separate
//! block buffers.
//!
//! A run is about a batch of data. Each run is inflated by one job on the pool, block after
//! block into its slice of the buffer (ISIZE, in every frame's trailer, says where each block
//! goes before any is inflated), and several runs inflate at once, so inflating stays parallel
//! without a job ever waiting inside the pool for another.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;
use libdeflater::Decompressor;
use noodles_bgzf::VirtualPosition;
use rayon::ThreadPool;

use super::bgzf::{inflate_into, pack, BgzfError, Frame, FrameReader};
use super::busy::{BusyStage, BusyTimes};
use super::walk::Walk;

/// Where a non-empty block's data starts in its run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockStart {
    /// Offset in [`Run::data`].
    pub at: usize,
    /// Compressed offset of the block's frame.
    pub offset: u64,
    /// Offset within the block of byte `at`: 0, except for a run split off mid-block.
    pub within: usize,
}

/// Inflated blocks, back to back, and where each one came from.
#[derive(Default)]
pub struct Run {
    /// The blocks' inflated bytes in file order; may be extended past them (see
    /// [`super::in_place`]), never shortened.
    pub data: Vec<u8>,
    /// One entry per non-empty block, in order; the first starts at 0.
    pub blocks: Vec<BlockStart>,
    /// Compressed offset just past the run's last frame.
    pub end: u64,
    /// Record boundaries the inflating job walked ([`super::walk`]); empty without a walk.
    pub chain: Vec<u32>,
    /// How much of `data` the blocks inflated to.
    inflated: usize,
}

impl Run {
    /// Bytes of the blocks themselves (data appended later is not theirs).
    fn block_bytes(&self, i: usize) -> usize {
        self.blocks.get(i + 1).map_or(self.inflated, |next| next.at) - self.blocks[i].at
    }

    /// The block holding byte `at` of the blocks.
    fn block_at(&self, at: usize) -> Option<&BlockStart> {
        let i = self.blocks.partition_point(|b| b.at <= at).checked_sub(1)?;
        self.blocks.get(i)
    }

    /// Virtual position of byte `at`, which must lie in the run's blocks. A block's end is
    /// the next block's start, as BAM indexes and checkpoints address it.
    pub fn virtual_position(&self, at: usize) -> VirtualPosition {
        match self.block_at(at) {
            Some(block) => pack(block.offset, block.within + at - block.at),
            None => pack(self.end, 0),
        }
    }

    /// Compressed offset of the block holding byte `at`, for errors.
    pub fn block_offset(&self, at: usize) -> u64 {
        self.block_at(at).map_or(self.end, |block| block.offset)
    }

    /// The first offset whose virtual position is at or after `end`: records starting there
    /// or later are past an index span's end. `usize::MAX` when `end` lies beyond the run.
    pub fn offset_of(&self, end: VirtualPosition) -> usize {
        let (offset, within) = (end.compressed(), usize::from(end.uncompressed()));
        let i = self.blocks.partition_point(|b| b.offset < offset);
        match self.blocks.get(i) {
            None => usize::MAX,
            Some(block) if block.offset == offset => {
                let into = within.saturating_sub(block.within);
                block.at + into.min(self.block_bytes(i))
            }
            Some(block) => block.at,
        }
    }

    /// Whether `position` lies in the run's first block, as where reading starts must.
    pub fn starts_at(&self, position: VirtualPosition) -> Option<usize> {
        let first = self.blocks.first()?;
        let at = usize::from(position.uncompressed()).checked_sub(first.within)?;
        (first.offset == position.compressed() && at < self.block_bytes(0)).then_some(at)
    }

    /// Moves the bytes from `at` on into a run of their own in `buffer`, with the blocks that
    /// hold them, for when a batch ends early in a run and what follows is the smaller part.
    pub fn split_off(&self, at: usize, mut buffer: Vec<u8>, mut chain: Vec<u32>) -> Run {
        buffer.clear();
        buffer.extend_from_slice(&self.data[at..]);
        let first = self
            .blocks
            .partition_point(|b| b.at <= at)
            .saturating_sub(1);
        let blocks = self.blocks[first..]
            .iter()
            .map(|b| match b.at.checked_sub(at) {
                Some(rebased) => BlockStart { at: rebased, ..*b },
                None => BlockStart {
                    at: 0,
                    within: b.within + at - b.at,
                    offset: b.offset,
                },
            })
            .collect();
        chain.clear();
        let from = self.chain.partition_point(|&s| (s as usize) < at);
        chain.extend(self.chain[from..].iter().map(|&s| s - at as u32));
        Run {
            inflated: self.inflated.saturating_sub(at),
            data: buffer,
            blocks,
            end: self.end,
            chain,
        }
    }
}

/// A run's frames as the job got them back, its data, and whether they all inflated.
struct Inflated {
    run: Run,
    frames: Vec<Frame>,
    result: Result<(), BgzfError>,
}

/// Reads a BGZF file as runs of about a given number of inflated bytes, several inflating at
/// once on a rayon pool, handed out in file order.
pub struct RunReader<R> {
    frames: FrameReader<R>,
    pool: Arc<ThreadPool>,
    pending: VecDeque<Receiver<Inflated>>,
    /// Frame buffers reused from run to run, so steady state allocates nothing.
    frame_pool: Vec<Frame>,
    done: bool,
    busy: Option<Arc<BusyTimes>>,
    /// Whether jobs walk their run's records, and the largest record they accept.
    walk: Option<usize>,
}

impl<R: Read> RunReader<R> {
    /// Starts reading at compressed `offset` (the reader must already be positioned there).
    ///
    /// Only inflating runs on `pool`; reading stays on the calling thread, which therefore never
    /// occupies a pool worker while it waits for I/O.
    pub fn new(inner: R, offset: u64, pool: Arc<ThreadPool>) -> Self {
        Self {
            frames: FrameReader::new(inner, offset),
            pool,
            pending: VecDeque::new(),
            frame_pool: Vec::new(),
            done: false,
            busy: None,
            walk: None,
        }
    }

    /// Has each job walk its run's records as it inflates them ([`super::walk`]), taking
    /// records up to `max_record_bytes`.
    #[must_use]
    pub fn walking(mut self, max_record_bytes: usize) -> Self {
        self.walk = Some(max_record_bytes);
        self
    }

    /// Adds the time spent reading and inflating to `busy`.
    #[must_use]
    pub fn with_busy(mut self, busy: Arc<BusyTimes>) -> Self {
        self.busy = Some(busy);
        self
    }

    /// Runs started and not yet handed out.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Whether the file has been read to its end (runs may still be in flight).
    pub fn read_all(&self) -> bool {
        self.done
    }

    /// Compressed offset of the next frame to read: the file's end once it is all read.
    pub fn compressed_offset(&self) -> u64 {
        self.frames.offset
    }

    /// Reads the frames of the next run, about `bytes` of inflated data, and starts inflating
    /// them into `buffer` (and walking them into `chain`) on the pool. Hands the buffers back
    /// when the file has no more frames. A frame that cannot be read fails the run, reported
    /// when the run is asked for.
    pub fn start(
        &mut self,
        buffer: Vec<u8>,
        chain: Vec<u32>,
        bytes: usize,
    ) -> Option<(Vec<u8>, Vec<u32>)> {
        if self.done {
            return Some((buffer, chain));
        }
        let (sender, inflated) = crossbeam_channel::bounded(1);
        let started = Instant::now();
        let frames = self.read_frames(bytes);
        if let Some(busy) = &self.busy {
            busy.add(BusyStage::Read, started.elapsed());
        }
        let frames = match frames {
            Ok(frames) if frames.is_empty() => return Some((buffer, chain)),
            Ok(frames) => frames,
            Err(error) => {
                self.done = true;
                let run = Run {
                    data: buffer,
                    chain,
                    ..Run::default()
                };
                let _ = sender.send(Inflated {
                    run,
                    frames: Vec::new(),
                    result: Err(error),
                });
                self.pending.push_back(inflated);
                return None;
            }
        };
        let end = self.frames.offset;
        let busy = self.busy.clone();
        let walk = self
            .walk
            .map(|max_record_bytes| Walk::new(chain, max_record_bytes));
        let job = move || {
            let mut run = Run {
                data: buffer,
                end,
                ..Run::default()
            };
            let result = inflate_run(&frames, &mut run, busy.as_deref(), walk);
            let _ = sender.send(Inflated {
                run,
                frames,
                result,
            });
        };
        // A worker of this pool waiting for its own jobs could wait forever; it inflates here.
        if self.pool.current_thread_index().is_some() {
            job();
        } else {
            self.pool.spawn(job);
        }
        self.pending.push_back(inflated);
        None
    }

    /// The oldest run started, once inflated; `None` when no run is in flight.
    ///
    /// # Errors
    ///
    /// The run's first error in file order: runs after it were read ahead but are not
    /// handed out before it.
    pub fn next(&mut self) -> Result<Option<Run>, BgzfError> {
        let Some(pending) = self.pending.pop_front() else {
            return Ok(None);
        };
        let inflated = pending.recv().map_err(|_| BgzfError::Corrupt {
            // Every job ends by sending; only a panic on the pool gets here.
            offset: self.frames.offset,
            reason: "inflating stopped unexpectedly",
        })?;
        self.frame_pool.extend(inflated.frames);
        inflated.result?;
        Ok(Some(inflated.run))
    }

    /// Reads frames until they inflate to `bytes`, their compressed size reaches it (a file of
    /// empty blocks stays bounded too), or the file ends.
    fn read_frames(&mut self, bytes: usize) -> Result<Vec<Frame>, BgzfError> {
        let (mut inflated, mut compressed) = (0, 0);
        self.frames
            .read_until(&mut self.frame_pool, &mut self.done, |frame| {
                inflated += frame.inflated_size()?;
                compressed += frame.bytes.len();
                Ok(inflated >= bytes || compressed >= bytes)
            })
    }
}

/// Inflates `frames` back to back into `run.data`, noting where each non-empty block starts
/// and walking the records as they come; stops at the first error.
fn inflate_run(
    frames: &[Frame],
    run: &mut Run,
    busy: Option<&BusyTimes>,
    mut walk: Option<Walk>,
) -> Result<(), BgzfError> {
    let sizes = frames
        .iter()
        .map(Frame::inflated_size)
        .collect::<Result<Vec<_>, _>>()?;
    let total = sizes.iter().sum();
    // A recycled buffer keeps its length, so this zero-fills only growth.
    if run.data.len() < total {
        run.data.resize(total, 0);
    } else {
        run.data.truncate(total);
    }
    run.inflated = total;
    let mut decompressor = Decompressor::new();
    let mut at = 0;
    for (frame, size) in frames.iter().zip(sizes) {
        let started = Instant::now();
        let result = inflate_into(frame, &mut decompressor, &mut run.data[at..at + size]);
        if let Some(busy) = busy {
            busy.add(BusyStage::Inflate, started.elapsed());
        }
        result?;
        if size > 0 {
            run.blocks.push(BlockStart {
                at,
                offset: frame.offset,
                within: 0,
            });
        }
        at += size;
        if let Some(walk) = &mut walk {
            walk.feed(&run.data[..at], at == total);
        }
    }
    if let Some(walk) = walk {
        run.chain = walk.into_chain();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::bgzf::EOF_BLOCK;
    use crate::pipeline::tests::{incompressible_blocks, pool};

    /// Runs of about `bytes`, up to three in flight, until the first error.
    fn read_runs(file: &[u8], bytes: usize) -> (Vec<Run>, Option<BgzfError>) {
        let mut reader = RunReader::new(file, 0, pool(2));
        let mut runs = Vec::new();
        loop {
            while reader.in_flight() < 3 && !reader.read_all() {
                reader.start(Vec::new(), Vec::new(), bytes);
            }
            match reader.next() {
                Ok(Some(run)) => runs.push(run),
                Ok(None) => return (runs, None),
                Err(error) => return (runs, Some(error)),
            }
        }
    }

    #[test]
    fn a_bad_block_ahead_is_reported_after_every_run_before_it() {
        let (starts, blocks, mut file) = incompressible_blocks(40, 60_000);

        let (runs, error) = read_runs(&file, 200_000);
        assert!(error.is_none());
        // Four blocks a run, and the EOF block in a run of its own.
        assert_eq!(runs.len(), 11);
        assert!(runs[10].data.is_empty() && runs[10].blocks.is_empty());
        assert_eq!(runs[9].end, file.len() as u64 - 28);
        let all: Vec<u8> = runs.iter().flat_map(|run| run.data.clone()).collect();
        assert!(all == blocks.concat());
        assert_eq!(
            runs[1].blocks[0],
            BlockStart {
                at: 0,
                offset: starts[4],
                within: 0
            }
        );

        // Block 30 (in run 7) gets a wrong CRC32.
        let start = starts[30] as usize;
        let size = usize::from(u16::from_le_bytes([file[start + 16], file[start + 17]])) + 1;
        file[start + size - 8] ^= 0xff;
        let (runs, error) = read_runs(&file, 200_000);
        assert_eq!(runs.len(), 7);
        let all: Vec<u8> = runs.iter().flat_map(|run| run.data.clone()).collect();
        assert!(all == blocks[..28].concat());
        assert!(
            matches!(error, Some(BgzfError::ChecksumMismatch { offset }) if offset == starts[30]),
            "{error:?}"
        );
    }

    #[test]
    fn a_walking_reader_hands_out_each_runs_record_boundaries() {
        use std::io::Write;

        let mut raw = Vec::new();
        let mut starts = vec![0];
        for i in 0..3_000 {
            let bases = 100 + i % 400;
            let record = bamflow_plugin_api::RecordBuilder::new(format!("read{i}").as_bytes())
                .sequence(&b"ACGT".repeat(bases / 4), &vec![30; bases / 4 * 4])
                .build();
            raw.extend_from_slice(&(record.len() as u32).to_le_bytes());
            raw.extend_from_slice(&record);
            starts.push(raw.len());
        }
        let mut writer = noodles_bgzf::io::Writer::new(Vec::new());
        writer.write_all(&raw).unwrap();
        let file = writer.finish().unwrap();

        let mut reader = RunReader::new(&file[..], 0, pool(2)).walking(1 << 20);
        let (mut begin, mut walked) = (0, 0);
        while !reader.read_all() || reader.in_flight() > 0 {
            if !reader.read_all() {
                reader.start(Vec::new(), Vec::new(), 100_000);
            }
            let Some(run) = reader.next().unwrap() else {
                break;
            };
            // Every boundary of the walk is a record boundary of the stream.
            for &at in &run.chain {
                assert!(starts.binary_search(&(begin + at as usize)).is_ok());
            }
            walked += run.chain.len().saturating_sub(1);
            begin += run.data.len();
        }
        assert_eq!(begin, raw.len());
        // Only records that run on into the next run are not walked (one per run).
        assert!(
            walked > 3_000 - begin / 100_000 - 2,
            "{walked} records walked"
        );
    }

    #[test]
    fn an_isize_over_the_bgzf_maximum_is_refused_before_anything_is_sized() {
        let mut block = EOF_BLOCK;
        block[24..].copy_from_slice(&u32::MAX.to_le_bytes());
        let (runs, error) = read_runs(&block, 1 << 20);
        assert!(runs.is_empty());
        let error = error.unwrap();
        assert!(error.to_string().contains("ISIZE exceeds 65536"), "{error}");
    }

    #[test]
    fn positions_follow_the_blocks_also_in_a_run_split_mid_block() {
        let at = |at, offset| BlockStart {
            at,
            offset,
            within: 0,
        };
        let run = Run {
            data: vec![0; 300],
            blocks: vec![at(0, 1000), at(100, 2000), at(250, 3000)],
            end: 4000,
            chain: vec![10, 90, 120, 200, 290],
            inflated: 300,
        };
        let position = |offset: u64, within: u64| VirtualPosition::from((offset << 16) | within);
        assert_eq!(run.virtual_position(99), position(1000, 99));
        assert_eq!(
            run.virtual_position(100),
            position(2000, 0),
            "a block's end is the next's start"
        );
        assert_eq!(run.block_offset(260), 3000);
        assert_eq!(run.offset_of(position(2000, 50)), 150);
        assert_eq!(
            run.offset_of(position(2000, 500)),
            250,
            "past its block: the block's end"
        );
        assert_eq!(
            run.offset_of(position(1500, 0)),
            100,
            "between blocks: the next block"
        );
        assert_eq!(run.offset_of(position(4000, 0)), usize::MAX);
        assert_eq!(run.starts_at(position(1000, 99)), Some(99));
        assert_eq!(run.starts_at(position(1000, 100)), None);
        assert_eq!(run.starts_at(position(2000, 0)), None);

        let rest = run.split_off(120, Vec::new(), Vec::new());
        assert_eq!(rest.data.len(), 180);
        assert_eq!(rest.virtual_position(0), position(2000, 20));
        assert_eq!(rest.virtual_position(130), position(3000, 0));
        assert_eq!(rest.offset_of(position(2000, 50)), 30);
        assert_eq!(rest.starts_at(position(2000, 20)), Some(0));
        assert_eq!(rest.chain, [0, 80, 170]);
    }
}
