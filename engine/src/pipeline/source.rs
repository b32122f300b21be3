//! Record framing by copying: inflated BGZF data → [`RawBatch`]es of whole BAM records, each
//! record copied out of its blocks into the batch buffer, however records straddle blocks
//! (long reads span many).
//!
//! The profile reads its sample this way, right after the header on the same byte stream.
//! Conversions and split plans frame records where they were inflated instead (`in_place`),
//! with the batch limits and record checks defined here.

use std::io::Read;

use noodles_bgzf::VirtualPosition;

use super::bgzf::{BgzfError, BgzfStream};
use super::RawBatch;

/// Why records could not be framed. Record numbers count from 1 in file order.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Bgzf(#[from] BgzfError),
    #[error("record {record} (BGZF block at byte {offset}) is truncated: file may be truncated")]
    TruncatedRecord { record: u64, offset: u64 },
    #[error(
        "record {record} (BGZF block at byte {offset}) claims {size} bytes, over the limit of \
         {limit} (max_record_bytes)"
    )]
    RecordTooLarge {
        record: u64,
        offset: u64,
        size: u32,
        limit: usize,
    },
    #[error("record {record} (BGZF block at byte {offset}) claims {size} bytes, under the 32 of its fixed fields")]
    RecordTooSmall { record: u64, offset: u64, size: u32 },
}

impl SourceError {
    /// The compressed byte offset the error refers to.
    pub fn offset(&self) -> Option<u64> {
        match self {
            Self::Bgzf(_) => None,
            Self::TruncatedRecord { offset, .. }
            | Self::RecordTooLarge { offset, .. }
            | Self::RecordTooSmall { offset, .. } => Some(*offset),
        }
    }
}

/// When a batch is closed.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// Most records in one batch.
    pub max_records: usize,
    /// Record bytes after which a batch is closed (a single larger record still fits alone).
    pub max_bytes: usize,
    /// Batches never straddle a multiple of this record count, so parts cover exact ranges.
    pub part_records: u64,
}

/// Checks a record's `block_size` (of 1-based `record`, in the block at compressed `offset`)
/// against the fixed fields' 32 bytes and `max_record_bytes`, before anything is sized by it.
pub(super) fn check_size(
    size: u32,
    record: u64,
    offset: u64,
    max_record_bytes: usize,
) -> Result<(), SourceError> {
    if size < 32 {
        return Err(SourceError::RecordTooSmall {
            record,
            offset,
            size,
        });
    }
    if size as usize > max_record_bytes {
        return Err(SourceError::RecordTooLarge {
            record,
            offset,
            size,
            limit: max_record_bytes,
        });
    }
    Ok(())
}

/// A record's `block_size` and where it was found, for errors.
struct Frame {
    size: u32,
    /// 1-based.
    record: u64,
    /// Compressed offset of its block.
    offset: u64,
}

/// Frames records from a BGZF stream positioned at the first record.
pub struct RecordSource<R> {
    stream: BgzfStream<R>,
    next_record: u64,
    next_seq: u64,
    max_record_bytes: usize,
    /// Records starting at or after this position are not read (an index span's end).
    end: Option<VirtualPosition>,
}

impl<R: Read> RecordSource<R> {
    /// Frames records from `stream`, numbering them from `first_record`.
    pub fn new(stream: BgzfStream<R>, first_record: u64, max_record_bytes: usize) -> Self {
        Self {
            stream,
            next_record: first_record,
            next_seq: 0,
            max_record_bytes,
            end: None,
        }
    }

    /// Stops before the first record that starts at or after `end`.
    #[must_use]
    pub fn ending_at(mut self, end: VirtualPosition) -> Self {
        self.end = Some(end);
        self
    }

    /// Index of the next record to be read (0-based), i.e. records read so far.
    pub fn next_record(&self) -> u64 {
        self.next_record
    }

    /// Reads up to a batch of records into `batch`, reusing its buffers; `Ok(false)` at the end
    /// of the records.
    ///
    /// # Errors
    ///
    /// Returns a [`SourceError`] naming the record and block when the data is bad.
    pub fn read_batch(
        &mut self,
        batch: &mut RawBatch,
        limits: BatchLimits,
    ) -> Result<bool, SourceError> {
        batch.clear();
        batch.seq = self.next_seq;
        batch.first_record = self.next_record;
        batch.start = self.stream.virtual_position()?;

        while batch.len() < limits.max_records && batch.data.len() < limits.max_bytes {
            if let Some(end) = self.end {
                if self.stream.virtual_position()? >= end {
                    break;
                }
            }
            if !self.read_record(&mut batch.data)? {
                break;
            }
            batch.offsets.push(batch.data.len() as u32);
            self.next_record += 1;
            if self.next_record.is_multiple_of(limits.part_records) {
                break;
            }
        }

        if batch.is_empty() {
            return Ok(false);
        }
        batch.end = self.stream.virtual_position()?;
        self.next_seq += 1;
        Ok(true)
    }

    /// Appends the next record (without its `block_size`) to `data`; `Ok(false)` at the end.
    fn read_record(&mut self, data: &mut Vec<u8>) -> Result<bool, SourceError> {
        self.take_record(|stream, size| stream.read_into(data, size))
    }

    /// Frames the next record and hands its bytes to `take`; `Ok(false)` at the end.
    fn take_record(
        &mut self,
        take: impl FnOnce(&mut BgzfStream<R>, usize) -> Result<Result<(), usize>, BgzfError>,
    ) -> Result<bool, SourceError> {
        let Some(Frame {
            size,
            record,
            offset,
        }) = self.next_frame()?
        else {
            return Ok(false);
        };
        take(&mut self.stream, size as usize)?
            .map_err(|_| SourceError::TruncatedRecord { record, offset })?;
        Ok(true)
    }

    /// Reads and checks the next record's `block_size`; `None` at the end of the file.
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        // Errors count records from 1, as people do.
        let record = self.next_record + 1;
        let offset = self.stream.compressed_offset();
        let mut size = [0; 4];
        match self.stream.read_exact(&mut size)? {
            Ok(()) => {}
            Err(0) => return Ok(None),
            Err(_) => return Err(SourceError::TruncatedRecord { record, offset }),
        }

        let size = u32::from_le_bytes(size);
        check_size(size, record, offset, self.max_record_bytes)?;
        Ok(Some(Frame {
            size,
            record,
            offset,
        }))
    }

    /// Virtual position of the next record.
    ///
    /// # Errors
    ///
    /// Returns a [`BgzfError`] when the next block cannot be read.
    pub fn virtual_position(&mut self) -> Result<VirtualPosition, BgzfError> {
        self.stream.virtual_position()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use bamflow_plugin_api::RecordBuilder;

    use super::*;
    use crate::pipeline::bgzf::BlockReader;

    /// Records as BAM stores them: each behind its `block_size`.
    fn stream_of(records: &[Vec<u8>]) -> Vec<u8> {
        let mut raw = Vec::new();
        for record in records {
            raw.extend_from_slice(&(record.len() as u32).to_le_bytes());
            raw.extend_from_slice(record);
        }
        raw
    }

    /// A record source over `raw`, BGZF-compressed by noodles (64 KiB blocks).
    fn source(raw: &[u8], max_record_bytes: usize) -> RecordSource<std::io::Cursor<Vec<u8>>> {
        let mut writer = noodles_bgzf::io::Writer::new(Vec::new());
        writer.write_all(raw).unwrap();
        let compressed = writer.finish().unwrap();
        let pool = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap(),
        );
        let blocks = BlockReader::new(std::io::Cursor::new(compressed), 0, pool);
        RecordSource::new(BgzfStream::new(blocks), 0, max_record_bytes)
    }

    fn records() -> Vec<Vec<u8>> {
        (0..5)
            .map(|i| {
                // Two of them (150 KB) span several 64 KiB blocks.
                let bases = if i % 2 == 1 { 100_000 } else { 100 };
                RecordBuilder::new(format!("r{i}").as_bytes())
                    .sequence(&b"ACGT".repeat(bases / 4), &vec![30; bases])
                    .build()
            })
            .collect()
    }

    fn limits(max_records: usize, part_records: u64) -> BatchLimits {
        BatchLimits {
            max_records,
            max_bytes: usize::MAX,
            part_records,
        }
    }

    fn batches(source: &mut RecordSource<impl Read>, limits: BatchLimits) -> Vec<RawBatch> {
        let mut out = Vec::new();
        let mut batch = RawBatch::default();
        while source.read_batch(&mut batch, limits).unwrap() {
            out.push(batch.clone());
        }
        out
    }

    #[test]
    fn records_spanning_blocks_are_framed_whole_in_batches_that_respect_parts() {
        let records = records();
        let mut source = source(&stream_of(&records), 1 << 20);
        let framed = batches(&mut source, limits(2, 1_000));
        assert_eq!(
            framed.iter().map(RawBatch::len).collect::<Vec<_>>(),
            [2, 2, 1]
        );
        assert_eq!(
            framed.iter().map(|b| b.first_record).collect::<Vec<_>>(),
            [0, 2, 4]
        );
        let all: Vec<&[u8]> = framed.iter().flat_map(RawBatch::records).collect();
        assert_eq!(all, records.iter().map(Vec::as_slice).collect::<Vec<_>>());
        assert!(framed.windows(2).all(|w| w[0].end == w[1].start));

        // A batch never straddles a part boundary (every 3 records).
        let mut source = self::source(&stream_of(&records), 1 << 20);
        let framed = batches(&mut source, limits(10, 3));
        assert_eq!(framed.iter().map(RawBatch::len).collect::<Vec<_>>(), [3, 2]);
        assert_eq!(source.next_record(), 5);
    }

    #[test]
    fn a_record_cut_short_is_named() {
        let raw = stream_of(&records());
        let mut source = source(&raw[..raw.len() - 10], 1 << 20);
        let limits = limits(100, 1_000);
        let error = source
            .read_batch(&mut RawBatch::default(), limits)
            .unwrap_err();
        assert!(
            matches!(error, SourceError::TruncatedRecord { record: 5, .. }),
            "{error}"
        );
    }

    #[test]
    fn absurd_record_sizes_are_refused_before_anything_is_allocated() {
        let limits = limits(100, 1_000);
        let mut raw = stream_of(&records()[..1]);
        raw.extend_from_slice(&u32::MAX.to_le_bytes());
        let error = source(&raw, 1 << 20)
            .read_batch(&mut RawBatch::default(), limits)
            .unwrap_err();
        assert!(
            matches!(
                error,
                SourceError::RecordTooLarge {
                    record: 2,
                    size: u32::MAX,
                    ..
                }
            ),
            "{error}"
        );
        let mut raw = stream_of(&records()[..1]);
        raw.extend_from_slice(&8u32.to_le_bytes());
        raw.extend_from_slice(&[0; 8]);
        let error = source(&raw, 1 << 20)
            .read_batch(&mut RawBatch::default(), limits)
            .unwrap_err();
        assert!(
            matches!(
                error,
                SourceError::RecordTooSmall {
                    record: 2,
                    size: 8,
                    ..
                }
            ),
            "{error}"
        );
    }
}
