//! Record framing in place: a batch's data is a run of inflated blocks ([`super::runs`]), and
//! the reader thread only walks the records' `block_size` fields through it.
//!
//! Copying each record out of its block into a batch buffer made the reader thread the serial
//! bound of a conversion (about 20 cores by the manifest's `serial_cpu_seconds`). In place,
//! the only bytes it copies are those of the one record per run that runs on into the next
//! run, appended to the first; and, when a batch must end inside a run (a fixed
//! `batch_records`, a part boundary), the smaller side of the cut.

use std::io::Read;

use noodles_bgzf::VirtualPosition;

use super::bgzf::pack;
use super::runs::{Run, RunReader};
use super::source::{check_size, BatchLimits, SourceError};
use super::RawBatch;

/// How runs are read: their size, how many inflate ahead, the largest record.
#[derive(Clone, Copy, Debug)]
pub struct RunPlan {
    /// Inflated bytes per run: a batch's worth.
    pub bytes: usize,
    /// Runs inflating behind the one being framed: one per worker keeps every core busy
    /// inflating when that is what is left to do.
    pub depth: usize,
    pub max_record_bytes: usize,
}

/// Frames the records of a BGZF stream in the buffers they were inflated into.
pub struct InPlaceSource<R> {
    runs: RunReader<R>,
    plan: RunPlan,
    /// The run being framed and where its next record starts.
    current: Option<(Run, usize)>,
    /// Buffers for runs to come: the data of batches handed back.
    spares: Vec<Vec<u8>>,
    /// Buffers for the walks of runs to come.
    chains: Vec<Vec<u32>>,
    next_record: u64,
    next_seq: u64,
    /// Records starting at or after this position are not read (an index span's end).
    end: Option<VirtualPosition>,
    /// Whether the span's end was reached.
    finished: bool,
}

/// Why framing a batch stopped.
enum Stop {
    /// The run ends after the last record framed.
    RunEnd,
    /// The next record starts in this run and ends in a later one.
    Straddles,
    /// The batch is full, or ends a part, before the run does.
    Limit,
    /// The next record starts at or past the span's end.
    SpanEnd,
}

impl<R: Read> InPlaceSource<R> {
    /// Frames records from `runs`, whose first block must hold `position`, numbering them from
    /// `first_record`; `None` when it does not (the end of the file counts as holding a
    /// position at its start).
    ///
    /// # Errors
    ///
    /// Returns a [`SourceError`] when the first run cannot be read.
    pub fn open(
        runs: RunReader<R>,
        position: VirtualPosition,
        first_record: u64,
        plan: RunPlan,
    ) -> Result<Option<Self>, SourceError> {
        let mut source = Self {
            runs,
            plan,
            current: None,
            spares: Vec::new(),
            chains: Vec::new(),
            next_record: first_record,
            next_seq: 0,
            end: None,
            finished: false,
        };
        match source.next_run()? {
            Some(run) => match run.starts_at(position) {
                Some(at) => source.current = Some((run, at)),
                None => return Ok(None),
            },
            None if position.uncompressed() != 0 => return Ok(None),
            None => {}
        }
        Ok(Some(source))
    }

    /// Stops before the first record that starts at or after `end`.
    #[must_use]
    pub fn ending_at(mut self, end: VirtualPosition) -> Self {
        self.end = Some(end);
        self
    }

    /// Moves the end: records from `end` on are not read until it moves again (`None`: to the
    /// end of the file). A split plan stops at each of its split points in turn.
    pub fn stop_at(&mut self, end: Option<VirtualPosition>) {
        self.end = end;
        self.finished = false;
    }

    /// Index of the next record to be read (0-based), i.e. records read so far.
    pub fn next_record(&self) -> u64 {
        self.next_record
    }

    /// Virtual position of the next record (the end of the file after the last).
    ///
    /// # Errors
    ///
    /// Returns a [`SourceError`] when the next run cannot be read.
    pub fn virtual_position(&mut self) -> Result<VirtualPosition, SourceError> {
        self.next_position()
    }

    /// Frames the next batch of records. The batch's own buffer goes to the runs to come, and
    /// the batch gets the data of the run its records are in; `Ok(false)` at the end of the
    /// records. `limits.max_bytes` does not apply: a run's size ([`RunPlan::bytes`]) bounds a
    /// batch's bytes.
    ///
    /// # Errors
    ///
    /// Returns a [`SourceError`] naming the record and block when the data is bad.
    pub fn read_batch(
        &mut self,
        batch: &mut RawBatch,
        limits: BatchLimits,
    ) -> Result<bool, SourceError> {
        self.spares.push(std::mem::take(&mut batch.data));
        batch.offsets.clear();
        batch.prefixed = true;
        batch.seq = self.next_seq;
        batch.first_record = self.next_record;
        if self.finished {
            return Ok(false);
        }
        batch.start = self.next_position()?;
        let Some((mut run, first)) = self.current.take() else {
            return Ok(false);
        };
        let (stop, last) = self.frame(&run, first, limits, &mut batch.offsets)?;
        batch.end = match stop {
            Stop::RunEnd => {
                self.hand_over(run, batch);
                self.next_position()?
            }
            Stop::Straddles => {
                self.complete(&mut run, last)?;
                batch.offsets.push(run.data.len() as u32);
                self.next_record += 1;
                self.hand_over(run, batch);
                self.next_position()?
            }
            Stop::SpanEnd => {
                self.finished = true;
                if last < run.data.len() {
                    // The records after the end stay, for a later `stop_at`.
                    let end = run.virtual_position(last);
                    self.cut(run, last, batch);
                    end
                } else {
                    self.hand_over(run, batch);
                    self.next_position()?
                }
            }
            Stop::Limit => {
                let end = run.virtual_position(last);
                self.cut(run, last, batch);
                end
            }
        };
        if batch.is_empty() {
            return Ok(false);
        }
        self.next_seq += 1;
        Ok(true)
    }

    /// Walks the records of `run` from `at`, pushing where each ends onto `offsets`, until the
    /// run, the batch, the part or the span ends; returns why, and where the next record
    /// starts.
    fn frame(
        &mut self,
        run: &Run,
        mut at: usize,
        limits: BatchLimits,
        offsets: &mut Vec<u32>,
    ) -> Result<(Stop, usize), SourceError> {
        let end_at = self.end.map_or(usize::MAX, |end| run.offset_of(end));
        // Where the batch must end at the latest: its record limit, or the part's end.
        let to_part_end = limits.part_records - self.next_record % limits.part_records;
        let most = limits
            .max_records
            .min(to_part_end.try_into().unwrap_or(usize::MAX));
        let data = &run.data[..];
        offsets.push(at as u32);
        at = self.fast_forward(
            run,
            at,
            most.saturating_sub(offsets.len() - 1),
            end_at,
            offsets,
        );
        let stop = loop {
            if at >= end_at {
                break Stop::SpanEnd;
            }
            if at == data.len() {
                break Stop::RunEnd;
            }
            if offsets.len() > most {
                break Stop::Limit;
            }
            let Some(&[a, b, c, d]) = data.get(at..at + 4) else {
                break Stop::Straddles;
            };
            let size = u32::from_le_bytes([a, b, c, d]);
            if !(32..=self.plan.max_record_bytes).contains(&(size as usize)) {
                let (record, offset) = (self.next_record + 1, run.block_offset(at));
                check_size(size, record, offset, self.plan.max_record_bytes)?;
            }
            let next = at + 4 + size as usize;
            if next > data.len() {
                break Stop::Straddles;
            }
            at = next;
            offsets.push(at as u32);
            self.next_record += 1;
        };
        Ok((stop, at))
    }

    /// Takes the records from `at` on that the inflating job walked, when its walk passes
    /// through `at`: at most `room` records, none starting at or after `end_at`. Returns where
    /// the next record starts.
    fn fast_forward(
        &mut self,
        run: &Run,
        at: usize,
        room: usize,
        end_at: usize,
        offsets: &mut Vec<u32>,
    ) -> usize {
        let Ok(first) = run.chain.binary_search(&(at as u32)) else {
            return at;
        };
        let starts = &run.chain[first..run.chain.len() - 1];
        let before_end = starts.partition_point(|&start| (start as usize) < end_at);
        let n = before_end.min(room);
        offsets.extend_from_slice(&run.chain[first + 1..=first + n]);
        self.next_record += n as u64;
        run.chain[first + n] as usize
    }

    /// Appends to `run` the rest of the record that starts at `at` and runs past the run's
    /// end, taken from the runs after it; the run holding the record's end becomes current.
    fn complete(&mut self, run: &mut Run, at: usize) -> Result<(), SourceError> {
        let record = self.next_record + 1;
        let offset = run.block_offset(at);
        let mut size = None;
        loop {
            let have = run.data.len() - at;
            if let (None, Some(&[a, b, c, d])) = (size, run.data.get(at..at + 4)) {
                let claimed = u32::from_le_bytes([a, b, c, d]);
                check_size(claimed, record, offset, self.plan.max_record_bytes)?;
                size = Some(4 + claimed as usize);
            }
            let need = size.unwrap_or(4) - have;
            if need == 0 {
                return Ok(());
            }
            let (next, from) = match self.current.take() {
                Some((next, from)) if from < next.data.len() => (next, from),
                Some((spent, _)) => {
                    self.recycle(spent);
                    continue;
                }
                None => match self.next_run()? {
                    Some(next) => (next, 0),
                    None => return Err(SourceError::TruncatedRecord { record, offset }),
                },
            };
            let take = need.min(next.data.len() - from);
            run.data.extend_from_slice(&next.data[from..from + take]);
            self.current = Some((next, from + take));
        }
    }

    /// Gives `batch` the data of the run its records were framed in; keeps the walk's buffer.
    fn hand_over(&mut self, run: Run, batch: &mut RawBatch) {
        self.chains.push(run.chain);
        batch.data = run.data;
    }

    /// Ends `batch` at `at`, inside `run`: copies whichever side of the cut is smaller, and
    /// keeps the records after it for the next batch (or a later span).
    fn cut(&mut self, run: Run, at: usize, batch: &mut RawBatch) {
        let first = batch.offsets.first().map_or(0, |&first| first as usize);
        let mut buffer = self.spares.pop().unwrap_or_default();
        if run.data.len() - at < at - first {
            let chain = self.chains.pop().unwrap_or_default();
            let rest = run.split_off(at, buffer, chain);
            self.chains.push(run.chain);
            batch.data = run.data;
            self.current = Some((rest, 0));
        } else {
            buffer.clear();
            buffer.extend_from_slice(&run.data[first..at]);
            for offset in &mut batch.offsets {
                *offset -= first as u32;
            }
            batch.data = buffer;
            self.current = Some((run, at));
        }
    }

    /// Virtual position of the next record: in the current run, at the start of the next one
    /// (waiting for it), or at the end of the file.
    fn next_position(&mut self) -> Result<VirtualPosition, SourceError> {
        loop {
            match self.current.take() {
                Some((run, at)) if at < run.data.len() => {
                    let position = run.virtual_position(at);
                    self.current = Some((run, at));
                    return Ok(position);
                }
                Some((spent, _)) => self.recycle(spent),
                None => match self.next_run()? {
                    Some(run) => self.current = Some((run, 0)),
                    None => return Ok(pack(self.runs.compressed_offset(), 0)),
                },
            }
        }
    }

    /// The next run with data, keeping [`RunPlan::depth`] runs inflating behind it; `None` at
    /// the end of the file.
    fn next_run(&mut self) -> Result<Option<Run>, SourceError> {
        loop {
            self.start_runs();
            let Some(run) = self.runs.next()? else {
                return Ok(None);
            };
            self.start_runs();
            if !run.data.is_empty() {
                return Ok(Some(run));
            }
            self.recycle(run);
        }
    }

    /// Keeps a spent run's buffers for the runs to come.
    fn recycle(&mut self, run: Run) {
        self.spares.push(run.data);
        self.chains.push(run.chain);
    }

    /// Starts runs until `depth` are in flight or the file is all read.
    fn start_runs(&mut self) {
        while self.runs.in_flight() < self.plan.depth.max(1) && !self.runs.read_all() {
            let buffer = self.spares.pop().unwrap_or_default();
            let chain = self.chains.pop().unwrap_or_default();
            if let Some((buffer, chain)) = self.runs.start(buffer, chain, self.plan.bytes) {
                self.spares.push(buffer);
                self.chains.push(chain);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write};

    use bamflow_plugin_api::RecordBuilder;

    use super::*;
    use crate::pipeline::bgzf::{BgzfStream, BlockReader};
    use crate::pipeline::source::RecordSource;
    use crate::pipeline::tests::{pool, xorshift};

    /// Records of 10 to 3,000 bases and a few of 100,000 (longer than a small run), BGZF
    /// compressed in blocks that end at arbitrary bytes; the records and the file.
    fn input(records: usize) -> (Vec<Vec<u8>>, Vec<u8>) {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        let records: Vec<Vec<u8>> = (0..records)
            .map(|i| {
                let bases = if i % 97 == 13 {
                    100_000
                } else {
                    10 + (next() % 3_000) as usize
                };
                RecordBuilder::new(format!("read{i}").as_bytes())
                    .sequence(&b"ACGT".repeat(bases / 4), &vec![30; bases / 4 * 4])
                    .build()
            })
            .collect();
        let mut raw = Vec::new();
        for record in &records {
            raw.extend_from_slice(&(record.len() as u32).to_le_bytes());
            raw.extend_from_slice(record);
        }
        (records, compress(&raw, next() | 1))
    }

    /// BGZF with blocks of varying size (a flush ends a block).
    fn compress(raw: &[u8], seed: u64) -> Vec<u8> {
        let mut next = xorshift(seed);
        let mut writer = noodles_bgzf::io::Writer::new(Vec::new());
        let mut at = 0;
        while at < raw.len() {
            let len = (1 + next() % 70_000) as usize;
            let end = (at + len).min(raw.len());
            writer.write_all(&raw[at..end]).unwrap();
            writer.flush().unwrap();
            at = end;
        }
        writer.finish().unwrap()
    }

    /// Every record's virtual position and the end's, as the copying source finds them.
    fn positions(file: &[u8]) -> Vec<VirtualPosition> {
        let blocks = BlockReader::new(Cursor::new(file.to_vec()), 0, pool(2));
        let mut source = RecordSource::new(BgzfStream::new(blocks), 0, 1 << 20);
        let mut batch = RawBatch::default();
        let mut positions = Vec::new();
        while source.read_batch(&mut batch, limits(1, u64::MAX)).unwrap() {
            positions.push(batch.start);
        }
        positions.push(batch.end);
        positions
    }

    fn limits(max_records: usize, part_records: u64) -> BatchLimits {
        BatchLimits {
            max_records,
            max_bytes: usize::MAX,
            part_records,
        }
    }

    fn open(
        file: &[u8],
        position: VirtualPosition,
        first_record: u64,
        run_bytes: usize,
        walking: bool,
    ) -> Option<InPlaceSource<Cursor<Vec<u8>>>> {
        let start = position.compressed();
        let mut runs = RunReader::new(Cursor::new(file[start as usize..].to_vec()), start, pool(2));
        if walking {
            runs = runs.walking(1 << 20);
        }
        let plan = RunPlan {
            bytes: run_bytes,
            depth: 2,
            max_record_bytes: 1 << 20,
        };
        InPlaceSource::open(runs, position, first_record, plan).unwrap()
    }

    fn batches(
        source: &mut InPlaceSource<impl Read>,
        limits: BatchLimits,
    ) -> Result<Vec<RawBatch>, SourceError> {
        let mut out = Vec::new();
        let mut batch = RawBatch::default();
        while source.read_batch(&mut batch, limits)? {
            out.push(batch.clone());
        }
        Ok(out)
    }

    #[test]
    fn batches_hold_every_record_where_the_copying_source_puts_it() {
        let (records, file) = input(400);
        let positions = positions(&file);
        for run_bytes in [1_000, 50_000, 1 << 20] {
            for walking in [false, true] {
                for (max_records, part_records) in [(usize::MAX, u64::MAX), (3, 7), (100, 64)] {
                    let case = format!("runs of {run_bytes}, walking {walking}, limits {max_records}/{part_records}");
                    let mut source = open(&file, positions[0], 0, run_bytes, walking).unwrap();
                    let framed = batches(&mut source, limits(max_records, part_records)).unwrap();
                    let all: Vec<&[u8]> = framed.iter().flat_map(RawBatch::records).collect();
                    assert!(
                        all == records.iter().map(Vec::as_slice).collect::<Vec<_>>(),
                        "{case}"
                    );
                    let mut next = 0;
                    for (seq, batch) in framed.iter().enumerate() {
                        let (first, len) = (batch.first_record, batch.len() as u64);
                        assert_eq!((batch.seq, first), (seq as u64, next), "{case}");
                        assert!(batch.len() <= max_records, "{case}");
                        assert_eq!(
                            first / part_records,
                            (first + len - 1) / part_records,
                            "{case}"
                        );
                        assert_eq!(batch.start, positions[first as usize], "{case}");
                        assert_eq!(batch.end, positions[(first + len) as usize], "{case}");
                        next += len;
                    }
                    assert_eq!(source.next_record(), records.len() as u64, "{case}");
                }
            }
        }
    }

    #[test]
    fn a_span_starts_at_its_record_and_stops_before_the_first_record_at_its_end() {
        let (records, file) = input(300);
        let positions = positions(&file);
        for run_bytes in [1_000, 1 << 20] {
            let source = open(&file, positions[5], 5, run_bytes, true).unwrap();
            let mut source = source.ending_at(positions[200]);
            let framed = batches(&mut source, limits(usize::MAX, u64::MAX)).unwrap();
            let all: Vec<&[u8]> = framed.iter().flat_map(RawBatch::records).collect();
            assert!(
                all == records[5..200]
                    .iter()
                    .map(Vec::as_slice)
                    .collect::<Vec<_>>()
            );
            assert_eq!(source.next_record(), 200);
        }
        // A position past its block's data is not in the file.
        let (offset, _) = (positions[0].compressed(), 0);
        let beyond = VirtualPosition::from((offset << 16) | 65_535);
        assert!(open(&file, beyond, 0, 1 << 20, true).is_none());
    }

    #[test]
    fn a_moved_end_resumes_where_the_last_one_stopped() {
        let (records, file) = input(300);
        let positions = positions(&file);
        for run_bytes in [1_000, 1 << 20] {
            let mut source = open(&file, positions[0], 0, run_bytes, true).unwrap();
            let mut all = Vec::new();
            for stop in [Some(50), Some(50), Some(51), Some(120), None] {
                source.stop_at(stop.map(|i| positions[i]));
                let framed = batches(&mut source, limits(usize::MAX, u64::MAX)).unwrap();
                all.extend(framed.iter().flat_map(|b| b.records().map(<[u8]>::to_vec)));
                let next = stop.unwrap_or(records.len());
                assert_eq!(source.next_record(), next as u64);
                assert_eq!(source.virtual_position().unwrap(), positions[next]);
            }
            assert!(all == records);
        }
    }

    #[test]
    fn a_record_cut_short_and_absurd_sizes_are_named() {
        let (records, _) = input(50);
        let mut raw = Vec::new();
        for record in &records {
            raw.extend_from_slice(&(record.len() as u32).to_le_bytes());
            raw.extend_from_slice(record);
        }
        let fails = |raw: &[u8], run_bytes| {
            let file = compress(raw, 7);
            let mut source = open(&file, VirtualPosition::from(0), 0, run_bytes, true).unwrap();
            batches(&mut source, limits(usize::MAX, u64::MAX)).unwrap_err()
        };
        for run_bytes in [1_000, 1 << 20] {
            let error = fails(&raw[..raw.len() - 10], run_bytes);
            assert!(
                matches!(error, SourceError::TruncatedRecord { record: 50, .. }),
                "{error}"
            );
            // The last record's block_size cut in two.
            let last = raw.len() - records[49].len() - 4;
            let error = fails(&raw[..last + 2], run_bytes);
            assert!(
                matches!(error, SourceError::TruncatedRecord { record: 50, .. }),
                "{error}"
            );

            let mut absurd = raw[..last].to_vec();
            absurd.extend_from_slice(&u32::MAX.to_le_bytes());
            absurd.extend_from_slice(&[0; 64]);
            let error = fails(&absurd, run_bytes);
            assert!(
                matches!(
                    error,
                    SourceError::RecordTooLarge {
                        record: 50,
                        size: u32::MAX,
                        ..
                    }
                ),
                "{error}"
            );
            let mut small = raw[..last].to_vec();
            small.extend_from_slice(&8u32.to_le_bytes());
            small.extend_from_slice(&[0; 8]);
            let error = fails(&small, run_bytes);
            assert!(
                matches!(
                    error,
                    SourceError::RecordTooSmall {
                        record: 50,
                        size: 8,
                        ..
                    }
                ),
                "{error}"
            );
        }
    }
}
