//! BGZF (SAMv1 §4.1): compressed frames read sequentially, inflated in parallel.
//!
//! We read frames ourselves rather than through `noodles_bgzf::io::Reader` because the engine
//! needs three things that reader keeps private: the raw frames (so a whole chunk of them can
//! be inflated on our rayon pool), the compressed offset of every frame (for errors and for
//! the virtual positions that checkpoints resume from), and precise reasons for bad input.
//! The resume cursor itself is noodles' [`VirtualPosition`].

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Instant;

use libdeflater::{Crc, DecompressionError, Decompressor};
use noodles_bgzf::VirtualPosition;
use rayon::ThreadPool;

use super::busy::{BusyStage, BusyTimes};
use crate::input::Input;

/// The 28-byte empty block that ends every complete BGZF file (SAMv1 §4.1.2).
pub const EOF_BLOCK: [u8; 28] = [
    0x1f, 0x8b, 0x08, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0x06, 0x00, 0x42, 0x43, 0x02, 0x00,
    0x1b, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];

/// Largest inflated size of one block.
const MAX_BLOCK_SIZE: usize = 65_536;
/// gzip header through XLEN.
const FIXED_HEADER_LEN: usize = 12;
/// CRC32 and ISIZE.
const TRAILER_LEN: usize = 8;

/// Compressed bytes gathered before a chunk is inflated in parallel. Large enough that every
/// worker gets several blocks, small enough that a chunk's inflated data stays a few MiB.
const CHUNK_COMPRESSED_BYTES: usize = 2 << 20;
/// Frames one inflate job takes: a few hundred KiB of output, a millisecond or two of work.
const FRAMES_PER_JOB: usize = 4;

/// Why the BGZF layer could not produce data.
#[derive(Debug, thiserror::Error)]
pub enum BgzfError {
    #[error("file is empty")]
    Empty,
    #[error("not a BGZF file: wrong magic at byte {offset}{hint}")]
    NotGzip { offset: u64, hint: &'static str },
    #[error("gzip member at byte {offset} is plain gzip, not BGZF (no BC extra field)")]
    NotBgzf { offset: u64 },
    #[error("BGZF block at byte {offset} has an invalid size ({size} bytes)")]
    InvalidBlockSize { offset: u64, size: usize },
    #[error("BGZF block at byte {offset} is truncated: file may be truncated")]
    TruncatedBlock { offset: u64 },
    #[error("BGZF block at byte {offset} does not inflate: {reason}")]
    Corrupt { offset: u64, reason: &'static str },
    #[error("BGZF block at byte {offset} fails its CRC32 check")]
    ChecksumMismatch { offset: u64 },
    #[error("file does not end with the BGZF EOF block: it may be truncated")]
    MissingEof,
    #[error("I/O error at byte {offset}")]
    Io {
        offset: u64,
        #[source]
        source: io::Error,
    },
}

impl BgzfError {
    /// The compressed byte offset the error refers to, if any.
    pub fn offset(&self) -> Option<u64> {
        match self {
            Self::NotGzip { offset, .. }
            | Self::NotBgzf { offset }
            | Self::InvalidBlockSize { offset, .. }
            | Self::TruncatedBlock { offset }
            | Self::Corrupt { offset, .. }
            | Self::ChecksumMismatch { offset }
            | Self::Io { offset, .. } => Some(*offset),
            Self::Empty => Some(0),
            Self::MissingEof => None,
        }
    }

    /// Whether this error comes from inflating (rather than reading) a block.
    pub fn is_inflate(&self) -> bool {
        matches!(self, Self::Corrupt { .. } | Self::ChecksumMismatch { .. })
    }
}

/// Whether the file ends with the BGZF EOF block.
///
/// # Errors
///
/// Returns an I/O error when the file cannot be read.
pub fn has_eof_block(file: &Input) -> io::Result<bool> {
    let len = file.len()?;
    if len < EOF_BLOCK.len() as u64 {
        return Ok(false);
    }
    let mut tail = [0; 28];
    file.read_exact_at(&mut tail, len - EOF_BLOCK.len() as u64)?;
    Ok(tail == EOF_BLOCK)
}

/// How a file begins and ends, read without inflating anything: what the watcher needs to
/// tell a finished BAM from one still being written, and from a file that is no BAM at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ends {
    /// Whether the first bytes are a BGZF block's (gzip, deflate, extra field); `None` while
    /// the file is too short to tell.
    pub starts_as_bgzf: Option<bool>,
    /// Whether it ends with the 28-byte EOF block.
    pub eof_block: bool,
}

/// Reads the first four and the last 28 bytes of `file`.
///
/// # Errors
///
/// Returns an I/O error when the file cannot be read.
pub fn ends(file: &Input) -> io::Result<Ends> {
    let len = file.len()?;
    let mut head = [0; 4];
    let starts_as_bgzf = if len >= head.len() as u64 {
        file.read_exact_at(&mut head, 0)?;
        // The magic, CM = deflate and FLG = FEXTRA: plain gzip (no extra field) is not BGZF.
        Some(head == [0x1f, 0x8b, 8, 4])
    } else {
        None
    };
    Ok(Ends {
        starts_as_bgzf,
        eof_block: has_eof_block(file)?,
    })
}

/// Checks that `file` starts with a well-formed BGZF block header, without inflating it: what
/// a file without its EOF block is (text, CRAM, plain gzip, cut short within its first block)
/// before it is called truncated.
///
/// # Errors
///
/// The [`BgzfError`] the reader would meet at byte 0.
pub fn check_first_frame(file: &Input) -> Result<(), BgzfError> {
    // A frame is at most 64 KiB: one positioned read holds it (one request on a store).
    let len = file
        .len()
        .map_err(|source| BgzfError::Io { offset: 0, source })?;
    let mut head = vec![0; len.min(1 << 16) as usize];
    file.read_exact_at(&mut head, 0)
        .map_err(|source| BgzfError::Io { offset: 0, source })?;
    let mut frames = FrameReader {
        inner: head.as_slice(),
        offset: 0,
    };
    match frames.read_frame(&mut Frame::default())? {
        true => Ok(()),
        false => Err(BgzfError::Empty),
    }
}

/// One compressed frame as read from the file.
#[derive(Default)]
pub(super) struct Frame {
    pub(super) offset: u64,
    /// The whole frame, header through trailer.
    pub(super) bytes: Vec<u8>,
    /// Where the deflate data starts within `bytes`.
    data_start: usize,
}

impl Frame {
    /// The inflated size its trailer claims (ISIZE), checked against the BGZF maximum so that
    /// nothing is sized from a corrupt trailer.
    pub(super) fn inflated_size(&self) -> Result<usize, BgzfError> {
        let trailer = &self.bytes[self.bytes.len() - TRAILER_LEN..];
        let size = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]) as usize;
        if size > MAX_BLOCK_SIZE {
            return Err(BgzfError::Corrupt {
                offset: self.offset,
                reason: "ISIZE exceeds 65536",
            });
        }
        Ok(size)
    }
}

/// One inflated block and where its frame starts in the file.
pub struct Block {
    pub offset: u64,
    pub data: Vec<u8>,
}

/// Reads frames sequentially from a file.
pub(super) struct FrameReader<R> {
    inner: R,
    /// Compressed offset of the next frame.
    pub(super) offset: u64,
}

impl<R: Read> FrameReader<R> {
    /// Reads frames from `inner`, which is positioned at compressed `offset`.
    pub(super) fn new(inner: R, offset: u64) -> Self {
        Self { inner, offset }
    }

    /// Reads the next frame into `frame`; `Ok(false)` at a clean end of file.
    pub(super) fn read_frame(&mut self, frame: &mut Frame) -> Result<bool, BgzfError> {
        let offset = self.offset;
        frame.offset = offset;
        grow_to(&mut frame.bytes, FIXED_HEADER_LEN);

        let n = read_full(&mut self.inner, &mut frame.bytes[..FIXED_HEADER_LEN])
            .map_err(|source| BgzfError::Io { offset, source })?;
        if n == 0 {
            return Ok(false);
        }
        // Only the bytes read count: a recycled buffer still holds the previous header.
        let magic_ok = frame.bytes[..n.min(2)] == [0x1f, 0x8b][..n.min(2)];
        if !magic_ok {
            let hint = sniff(&frame.bytes[..n]);
            return Err(BgzfError::NotGzip { offset, hint });
        }
        if n < FIXED_HEADER_LEN {
            return Err(BgzfError::TruncatedBlock { offset });
        }
        let header = &frame.bytes[..FIXED_HEADER_LEN];
        if header[2] != 8 || header[3] & 0x04 == 0 {
            return Err(BgzfError::NotBgzf { offset });
        }

        let extra_len = usize::from(u16::from_le_bytes([header[10], header[11]]));
        let header_len = FIXED_HEADER_LEN + extra_len;
        grow_to(&mut frame.bytes, header_len);
        self.fill(&mut frame.bytes[FIXED_HEADER_LEN..header_len], offset)?;

        let block_size = block_size(&frame.bytes[FIXED_HEADER_LEN..header_len])
            .ok_or(BgzfError::NotBgzf { offset })?;
        let min_size = header_len + TRAILER_LEN;
        if block_size < min_size {
            return Err(BgzfError::InvalidBlockSize {
                offset,
                size: block_size,
            });
        }

        frame.data_start = header_len;
        frame.bytes.resize(block_size, 0);
        self.fill(&mut frame.bytes[header_len..], offset)?;
        self.offset += block_size as u64;
        Ok(true)
    }

    /// Reads frames, into buffers from `spare` when it has any, until `enough` says those read
    /// so far are enough or the file ends (`ended` is then set).
    pub(super) fn read_until(
        &mut self,
        spare: &mut Vec<Frame>,
        ended: &mut bool,
        mut enough: impl FnMut(&Frame) -> Result<bool, BgzfError>,
    ) -> Result<Vec<Frame>, BgzfError> {
        let mut frames = Vec::new();
        while !*ended {
            let mut frame = spare.pop().unwrap_or_default();
            if !self.read_frame(&mut frame)? {
                spare.push(frame);
                *ended = true;
                break;
            }
            let full = enough(&frame)?;
            frames.push(frame);
            if full {
                break;
            }
        }
        Ok(frames)
    }

    fn fill(&mut self, buf: &mut [u8], offset: u64) -> Result<(), BgzfError> {
        let n =
            read_full(&mut self.inner, buf).map_err(|source| BgzfError::Io { offset, source })?;
        if n < buf.len() {
            return Err(BgzfError::TruncatedBlock { offset });
        }
        Ok(())
    }
}

/// Lengthens `buf` to at least `len` bytes, keeping what is there.
///
/// A recycled buffer already holds about a block, so reading into it zero-fills little or
/// nothing; zeroing every block before overwriting it cost 2% of the instructions.
fn grow_to(buf: &mut Vec<u8>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0);
    }
}

/// Reads until `buf` is full or EOF; returns the number of bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Finds BSIZE in the `BC` subfield of the gzip extra field; returns the total block size.
fn block_size(mut extra: &[u8]) -> Option<usize> {
    while extra.len() >= 4 {
        let len = usize::from(u16::from_le_bytes([extra[2], extra[3]]));
        let field = extra.get(4..4 + len)?;
        if extra[..2] == *b"BC" && len == 2 {
            return Some(usize::from(u16::from_le_bytes([field[0], field[1]])) + 1);
        }
        extra = &extra[4 + len..];
    }
    None
}

/// Names what a non-gzip file looks like, so the error says more than "wrong magic".
fn sniff(head: &[u8]) -> &'static str {
    if head.starts_with(b"CRAM") {
        " (this is CRAM, which bamflow does not read)"
    } else if head.starts_with(b"BAM\x01") {
        " (this is uncompressed BAM, not BGZF-compressed)"
    } else if head.starts_with(b"@")
        || head
            .iter()
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        " (this looks like text, e.g. SAM, not BAM)"
    } else {
        ""
    }
}

/// Inflates one frame into `out`, checking ISIZE and CRC32.
fn inflate(
    frame: &Frame,
    decompressor: &mut Decompressor,
    out: &mut Vec<u8>,
) -> Result<(), BgzfError> {
    // Not cleared first: a recycled buffer keeps its length, so this zero-fills only growth.
    out.resize(frame.inflated_size()?, 0);
    inflate_into(frame, decompressor, out)
}

/// Inflates one frame into `out`, which is exactly its ISIZE long, checking the CRC32.
pub(super) fn inflate_into(
    frame: &Frame,
    decompressor: &mut Decompressor,
    out: &mut [u8],
) -> Result<(), BgzfError> {
    let offset = frame.offset;
    let bytes = &frame.bytes;
    let trailer = &bytes[bytes.len() - TRAILER_LEN..];
    let crc = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let compressed = &bytes[frame.data_start..bytes.len() - TRAILER_LEN];
    let n = decompressor
        .deflate_decompress(compressed, out)
        .map_err(|e| BgzfError::Corrupt {
            offset,
            reason: match e {
                DecompressionError::BadData => "invalid deflate data",
                DecompressionError::InsufficientSpace => "inflates to more than ISIZE",
            },
        })?;
    if n != out.len() {
        return Err(BgzfError::Corrupt {
            offset,
            reason: "inflates to less than ISIZE",
        });
    }

    let mut actual = Crc::new();
    actual.update(out);
    if actual.sum() != crc {
        return Err(BgzfError::ChecksumMismatch { offset });
    }
    Ok(())
}

/// Frames of a chunk that one job inflated, their blocks, and whether they all inflated.
struct Inflated {
    /// Position of this group in its chunk.
    group: usize,
    frames: Vec<Frame>,
    blocks: Vec<Block>,
    result: Result<(), BgzfError>,
}

/// The next chunk, inflating on the pool in `groups` jobs (or already failed to read).
struct Pending {
    /// Compressed offset of the chunk's first frame.
    offset: u64,
    groups: usize,
    inflated: crossbeam_channel::Receiver<Inflated>,
}

/// Inflates `frames` into `blocks` in order, stopping at the first error.
fn inflate_group(
    frames: &[Frame],
    blocks: &mut [Block],
    busy: Option<&BusyTimes>,
) -> Result<(), BgzfError> {
    let mut decompressor = Decompressor::new();
    frames.iter().zip(blocks).try_for_each(|(frame, block)| {
        let started = Instant::now();
        let result = inflate(frame, &mut decompressor, &mut block.data);
        if let Some(busy) = busy {
            busy.add(BusyStage::Inflate, started.elapsed());
        }
        result
    })
}

/// Reads a BGZF file as chunks of inflated blocks, inflating each chunk on a rayon pool.
///
/// The next chunk inflates while the caller frames records from the current one. Waiting for
/// each chunk instead left the workers idle whenever the reader thread was reading frames or
/// framing records and the encoders had run dry: the thread that decodes waited 2.1 s of a
/// 3.7 s long-read conversion for batches, and perf sched counted about 0.4 s of idle CPU
/// spread over the run. Inflating ahead made conversions 7% faster on 2 M generated short
/// reads, 8% on the corpus's long reads and 2% on its unaligned reads (3-4 alternating runs, 2
/// cores), for 12-25 MB more peak RSS: a second chunk of inflated blocks, and fuller queues
/// downstream. 1 MiB chunks kept the RSS but lost half the gain.
pub struct BlockReader<R> {
    frames: FrameReader<R>,
    pool: Arc<ThreadPool>,
    pending: Option<Pending>,
    /// Frame buffers reused from chunk to chunk, so steady state allocates nothing.
    frame_pool: Vec<Frame>,
    block_pool: Vec<Vec<u8>>,
    done: bool,
    busy: Option<Arc<BusyTimes>>,
}

impl<R: Read> BlockReader<R> {
    /// Starts reading at compressed `offset` (the reader must already be positioned there).
    ///
    /// Only inflating runs on `pool`; reading stays on the calling thread, which therefore never
    /// occupies a pool worker while it waits for I/O.
    pub fn new(inner: R, offset: u64, pool: Arc<ThreadPool>) -> Self {
        Self {
            frames: FrameReader::new(inner, offset),
            pool,
            pending: None,
            frame_pool: Vec::new(),
            block_pool: Vec::new(),
            done: false,
            busy: None,
        }
    }

    /// Adds the time spent reading and inflating to `busy`.
    #[must_use]
    pub fn with_busy(mut self, busy: Arc<BusyTimes>) -> Self {
        self.busy = Some(busy);
        self
    }

    /// Returns a block's buffer for reuse by a later chunk.
    pub fn recycle(&mut self, block: Block) {
        self.block_pool.push(block.data);
    }

    /// Reads and inflates the next chunk of blocks into `chunk`; leaves it empty at end of file.
    /// Before returning, starts inflating the chunk after it.
    ///
    /// Empty blocks (such as the EOF block) are skipped.
    ///
    /// # Errors
    ///
    /// Returns the first error of the chunk in file order.
    pub fn read_chunk(&mut self, chunk: &mut Vec<Block>) -> Result<(), BgzfError> {
        let pending = match self.pending.take() {
            Some(pending) => pending,
            None => self.start_chunk(),
        };
        let mut groups: Vec<Option<Inflated>> = (0..pending.groups).map(|_| None).collect();
        for _ in 0..pending.groups {
            let inflated = pending.inflated.recv().map_err(|_| {
                // Every job ends by sending; only a panic on the pool gets here.
                BgzfError::Corrupt {
                    offset: pending.offset,
                    reason: "inflating stopped unexpectedly",
                }
            })?;
            let slot = inflated.group;
            if let Some(slot) = groups.get_mut(slot) {
                *slot = Some(inflated);
            }
        }
        let had = chunk.len();
        let mut result = Ok(());
        for inflated in groups.into_iter().flatten() {
            self.frame_pool.extend(inflated.frames);
            if result.is_ok() {
                result = inflated.result;
                chunk.extend(inflated.blocks.into_iter().filter(|b| !b.data.is_empty()));
            }
        }
        if let Err(e) = result {
            chunk.truncate(had);
            return Err(e);
        }
        if !self.done {
            self.pending = Some(self.start_chunk());
        }
        Ok(())
    }

    /// Reads the next chunk's frames here and inflates them on the pool.
    ///
    /// Each group of [`FRAMES_PER_JOB`] frames is its own job, and nothing waits inside a job.
    /// One `par_iter` job per chunk made the chunk wait for whatever a joining worker stole in
    /// the meantime, often a column encoder that drains its queue for tens of milliseconds:
    /// perf found 40% of the samples under `inflate_all` running an encoder, while the reader
    /// waited for the chunk and the other core had nothing to do.
    fn start_chunk(&mut self) -> Pending {
        let offset = self.frames.offset;
        let started = Instant::now();
        let frames = match self.read_frames() {
            Ok(frames) => frames,
            Err(e) => {
                // Reported when the chunk is asked for, after the chunks before it.
                let (sender, inflated) = crossbeam_channel::bounded(1);
                let _ = sender.send(Inflated {
                    group: 0,
                    frames: Vec::new(),
                    blocks: Vec::new(),
                    result: Err(e),
                });
                return Pending {
                    offset,
                    groups: 1,
                    inflated,
                };
            }
        };
        if let Some(busy) = &self.busy {
            busy.add(BusyStage::Read, started.elapsed());
        }

        let groups = frames.len().div_ceil(FRAMES_PER_JOB).max(1);
        let (sender, inflated) = crossbeam_channel::bounded(groups);
        // A worker of this pool waiting for its own jobs could wait forever; it inflates here.
        let inline = self.pool.current_thread_index().is_some();
        let mut frames = frames.into_iter();
        for group in 0..groups {
            let frames: Vec<Frame> = frames.by_ref().take(FRAMES_PER_JOB).collect();
            let blocks: Vec<Block> = frames
                .iter()
                .map(|f| Block {
                    offset: f.offset,
                    data: self.block_pool.pop().unwrap_or_default(),
                })
                .collect();
            let busy = self.busy.clone();
            let sender = sender.clone();
            let job = move || {
                let mut inflated = Inflated {
                    group,
                    frames,
                    blocks,
                    result: Ok(()),
                };
                inflated.result =
                    inflate_group(&inflated.frames, &mut inflated.blocks, busy.as_deref());
                let _ = sender.send(inflated);
            };
            if inline {
                job();
            } else {
                self.pool.spawn(job);
            }
        }
        Pending {
            offset,
            groups,
            inflated,
        }
    }

    /// Reads frames until the chunk's compressed budget is reached or the file ends.
    fn read_frames(&mut self) -> Result<Vec<Frame>, BgzfError> {
        let mut compressed = 0;
        self.frames
            .read_until(&mut self.frame_pool, &mut self.done, |frame| {
                compressed += frame.bytes.len();
                Ok(compressed >= CHUNK_COMPRESSED_BYTES)
            })
    }

    /// Compressed offset of the next frame not yet handed out.
    pub fn compressed_offset(&self) -> u64 {
        self.pending
            .as_ref()
            .map_or(self.frames.offset, |pending| pending.offset)
    }
}

/// A sequential byte stream over inflated blocks, as the BAM layer sees it.
///
/// It knows the virtual position of its next byte, which is what BAM indexes and checkpoints
/// use to address a record.
pub struct BgzfStream<R> {
    reader: BlockReader<R>,
    chunk: std::collections::VecDeque<Block>,
    refill: Vec<Block>,
    /// Read position within the front block.
    cursor: usize,
}

impl<R: Read> BgzfStream<R> {
    pub fn new(reader: BlockReader<R>) -> Self {
        Self {
            reader,
            chunk: Default::default(),
            refill: Vec::new(),
            cursor: 0,
        }
    }

    /// Virtual position of the next byte: the frame's compressed offset and the offset within
    /// its inflated data. At a block boundary this is the start of the next block.
    pub fn virtual_position(&mut self) -> Result<VirtualPosition, BgzfError> {
        self.ensure_data()?;
        Ok(match self.chunk.front() {
            Some(block) => pack(block.offset, self.cursor),
            None => pack(self.reader.compressed_offset(), 0),
        })
    }

    /// Compressed offset of the frame holding the next byte, for error messages.
    pub fn compressed_offset(&self) -> u64 {
        self.chunk
            .front()
            .map_or(self.reader.compressed_offset(), |b| b.offset)
    }

    /// Whether the stream has no more bytes.
    #[cfg(test)]
    pub fn at_end(&mut self) -> Result<bool, BgzfError> {
        self.ensure_data()?;
        Ok(self.chunk.is_empty())
    }

    /// Appends exactly `n` bytes to `out`; returns how many were available if fewer.
    pub fn read_into(
        &mut self,
        out: &mut Vec<u8>,
        n: usize,
    ) -> Result<Result<(), usize>, BgzfError> {
        self.consume(n, |bytes| out.extend_from_slice(bytes))
    }

    /// Hands the next `n` bytes to `sink`, a block's worth at a time; returns how many were
    /// available if fewer.
    fn consume(
        &mut self,
        n: usize,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<Result<(), usize>, BgzfError> {
        let mut remaining = n;
        while remaining > 0 {
            self.ensure_data()?;
            let Some(block) = self.chunk.front() else {
                return Ok(Err(n - remaining));
            };
            let take = remaining.min(block.data.len() - self.cursor);
            sink(&block.data[self.cursor..self.cursor + take]);
            self.cursor += take;
            remaining -= take;
        }
        Ok(Ok(()))
    }

    /// Fills `buf` exactly; returns how many bytes were available if fewer.
    pub fn read_exact(&mut self, buf: &mut [u8]) -> Result<Result<(), usize>, BgzfError> {
        let mut filled = 0;
        while filled < buf.len() {
            self.ensure_data()?;
            let Some(block) = self.chunk.front() else {
                return Ok(Err(filled));
            };
            let take = (buf.len() - filled).min(block.data.len() - self.cursor);
            buf[filled..filled + take]
                .copy_from_slice(&block.data[self.cursor..self.cursor + take]);
            self.cursor += take;
            filled += take;
        }
        Ok(Ok(()))
    }

    /// Moves to `position` within the first block of a stream that was opened at the
    /// position's compressed offset; `Ok(false)` when that block does not hold it.
    ///
    /// # Errors
    ///
    /// Returns a [`BgzfError`] when the block cannot be read.
    pub fn seek_in_first_block(&mut self, position: VirtualPosition) -> Result<bool, BgzfError> {
        let (offset, within) = (position.compressed(), usize::from(position.uncompressed()));
        self.ensure_data()?;
        Ok(match self.chunk.front() {
            Some(block) if block.offset == offset && within < block.data.len() => {
                self.cursor = within;
                true
            }
            // At the end of the records: nothing left to read, as the position says.
            None => within == 0 && self.reader.compressed_offset() >= offset,
            Some(_) => false,
        })
    }

    /// Drops exhausted blocks and refills from the file when the chunk runs dry.
    fn ensure_data(&mut self) -> Result<(), BgzfError> {
        loop {
            match self.chunk.front() {
                Some(block) if self.cursor < block.data.len() => return Ok(()),
                Some(_) => {
                    if let Some(block) = self.chunk.pop_front() {
                        self.reader.recycle(block);
                    }
                    self.cursor = 0;
                }
                None => {
                    self.reader.read_chunk(&mut self.refill)?;
                    if self.refill.is_empty() {
                        return Ok(());
                    }
                    self.chunk.extend(self.refill.drain(..));
                }
            }
        }
    }
}

pub(super) fn pack(compressed_offset: u64, uncompressed_offset: usize) -> VirtualPosition {
    // Offsets within a block are below 65536 by construction, and BGZF files are far below
    // 2^48 bytes, so this never truncates.
    VirtualPosition::from((compressed_offset << 16) | uncompressed_offset as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::tests::{incompressible_blocks, pool, xorshift};

    #[test]
    fn eof_block_inflates_to_nothing() {
        let mut reader = BlockReader::new(&EOF_BLOCK[..], 0, pool(1));
        let mut chunk = Vec::new();
        reader.read_chunk(&mut chunk).unwrap();
        assert!(chunk.is_empty());
        assert_eq!(reader.compressed_offset(), 28);
    }

    /// Blocks of every size, shrinking and growing, over several chunks: recycled frame and
    /// block buffers keep their old lengths, so any stale byte would show in the output.
    #[test]
    fn recycled_buffers_reproduce_blocks_of_varying_size() {
        use std::io::Write;

        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        let mut expected = Vec::new();
        let mut writer = noodles_bgzf::io::Writer::new(Vec::new());
        for _ in 0..300 {
            let len = (next() % 65_000) as usize;
            // Half random bytes (incompressible), half runs, so compressed sizes vary too.
            let block: Vec<u8> = (0..len)
                .map(|i| if i % 2 == 0 { next() as u8 } else { b'A' })
                .collect();
            writer.write_all(&block).unwrap();
            writer.flush().unwrap();
            expected.extend_from_slice(&block);
        }
        let mut file = writer.finish().unwrap();
        assert!(
            file.len() > 2 * CHUNK_COMPRESSED_BYTES,
            "too few chunks to recycle"
        );

        let mut stream = BgzfStream::new(BlockReader::new(&file[..], 0, pool(1)));
        let mut actual = Vec::new();
        assert_eq!(
            stream.read_into(&mut actual, expected.len()).unwrap(),
            Ok(())
        );
        assert!(actual == expected, "inflated bytes differ");
        assert!(stream.at_end().unwrap());

        // One stray byte after the EOF block: a truncated frame, not a stale header.
        file.push(0x1f);
        let mut stream = BgzfStream::new(BlockReader::new(&file[..], 0, pool(1)));
        let mut sink = Vec::new();
        let err = stream.read_into(&mut sink, expected.len() + 1).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    /// The next chunk inflates ahead, but a bad block in it is reported only when the stream
    /// gets there, after every byte before it, and names that block.
    #[test]
    fn a_bad_block_ahead_is_reported_in_file_order() {
        // Three chunks need about 100 blocks.
        let (starts, blocks, mut file) =
            incompressible_blocks(3 * CHUNK_COMPRESSED_BYTES / 60_000, 60_000);

        // A block in the third chunk gets a wrong CRC32.
        let bad = starts
            .iter()
            .position(|&start| start > 2 * CHUNK_COMPRESSED_BYTES as u64)
            .unwrap();
        let start = starts[bad] as usize;
        let size = usize::from(u16::from_le_bytes([file[start + 16], file[start + 17]])) + 1;
        file[start + size - TRAILER_LEN] ^= 0xff;

        let mut stream = BgzfStream::new(BlockReader::new(&file[..], 0, pool(2)));
        let before: Vec<u8> = blocks[..bad].concat();
        let mut actual = Vec::new();
        assert_eq!(stream.read_into(&mut actual, before.len()).unwrap(), Ok(()));
        assert!(actual == before, "bytes before the bad block differ");
        let err = stream.read_into(&mut actual, 1).unwrap_err();
        assert!(
            matches!(err, BgzfError::ChecksumMismatch { offset } if offset == starts[bad]),
            "{err}"
        );
    }

    #[test]
    fn classifies_bad_starts() {
        let t = |input: &[u8], expected: &str| {
            let mut reader = BlockReader::new(input, 0, pool(1));
            let err = reader.read_chunk(&mut Vec::new()).unwrap_err();
            assert!(
                err.to_string().contains(expected),
                "{err} does not contain {expected}"
            );
        };
        t(b"@HD\tVN:1.6\n", "looks like text");
        t(b"CRAM\x03\x00", "CRAM");
        t(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0, 0], "plain gzip");
        t(&EOF_BLOCK[..20], "truncated");

        let mut too_long = EOF_BLOCK;
        too_long[17] = 0x01; // BSIZE now runs past the end of the input
        t(&too_long, "truncated");

        let mut too_short = EOF_BLOCK;
        too_short[16] = 0x12; // BSIZE smaller than header plus trailer
        t(&too_short, "invalid size (19 bytes)");

        let mut bad_crc = EOF_BLOCK;
        bad_crc[20] = 0x01;
        t(&bad_crc, "CRC32");
    }

    #[test]
    fn the_first_frame_is_classified_without_inflating_it() {
        let dir = tempfile::tempdir().unwrap();
        let check = |input: &[u8]| {
            let path = dir.path().join("input");
            std::fs::write(&path, input).unwrap();
            check_first_frame(&Input::open(&path).unwrap()).map_err(|e| e.to_string())
        };
        let fails = |input: &[u8], expected: &str| {
            let err = check(input).unwrap_err();
            assert!(err.contains(expected), "{err} does not contain {expected}");
        };
        fails(b"@HD\tVN:1.6\n", "looks like text");
        fails(b"CRAM\x03\x00", "CRAM");
        fails(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0, 0], "plain gzip");
        fails(&EOF_BLOCK[..20], "truncated");
        fails(b"", "empty");
        // A well-formed header is all it looks at: a bad CRC is found when inflating.
        let mut bad_crc = EOF_BLOCK;
        bad_crc[20] = 0x01;
        assert_eq!(check(&bad_crc), Ok(()));
    }
}
