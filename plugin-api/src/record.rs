//! A zero-copy view over one BAM record (SAMv1 §4.2.1), without its `block_size` prefix.

use std::fmt;

use crate::tags::{TagError, TagValue, Tags};

/// Length of the fixed-size part of a record, from `refID` through `tlen`.
const FIXED_LEN: usize = 32;

/// Why a record's bytes do not form a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// The record is shorter than its 32-byte fixed part.
    TooShort { len: usize },
    /// `l_read_name` is 0, or the name runs past the record.
    InvalidReadNameLength,
    /// The read name does not end with the NUL the spec requires.
    MissingReadNameNul,
    /// The CIGAR, sequence or quality arrays run past the record.
    ArraysOutOfBounds,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len } => write!(f, "record of {len} bytes is shorter than 32"),
            Self::InvalidReadNameLength => f.write_str("invalid read name length"),
            Self::MissingReadNameNul => f.write_str("read name is not NUL-terminated"),
            Self::ArraysOutOfBounds => {
                f.write_str("CIGAR, sequence or quality length runs past the record")
            }
        }
    }
}

impl std::error::Error for RecordError {}

/// A checked view over the bytes of one BAM record.
///
/// [`RecordView::new`] validates every length in the fixed part once, so the getters below
/// are infallible slices and loads: the hot decode loop pays for bounds checks only once per
/// record. Optional fields are validated lazily by [`Tags`].
///
/// # Examples
///
/// ```
/// use bamflow_plugin_api::RecordView;
///
/// let mut raw = Vec::new();
/// raw.extend_from_slice(&0i32.to_le_bytes()); // refID
/// raw.extend_from_slice(&99i32.to_le_bytes()); // pos (0-based)
/// raw.extend_from_slice(&[3, 60]); // l_read_name, mapq
/// raw.extend_from_slice(&0u16.to_le_bytes()); // bin
/// raw.extend_from_slice(&0u16.to_le_bytes()); // n_cigar_op
/// raw.extend_from_slice(&4u16.to_le_bytes()); // flag
/// raw.extend_from_slice(&0u32.to_le_bytes()); // l_seq
/// raw.extend_from_slice(&(-1i32).to_le_bytes()); // next_refID
/// raw.extend_from_slice(&(-1i32).to_le_bytes()); // next_pos
/// raw.extend_from_slice(&0i32.to_le_bytes()); // tlen
/// raw.extend_from_slice(b"r1\0");
///
/// let record = RecordView::new(&raw)?;
/// assert_eq!(record.name(), b"r1");
/// assert_eq!(record.mapping_quality(), 60);
/// assert!(record.is_unmapped());
/// # Ok::<(), bamflow_plugin_api::RecordError>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct RecordView<'a> {
    data: &'a [u8],
    cigar_start: usize,
    sequence_start: usize,
    quality_start: usize,
    data_start: usize,
}

impl<'a> RecordView<'a> {
    /// Checks the record's lengths and returns a view over it.
    ///
    /// # Errors
    ///
    /// Returns a [`RecordError`] when a length field points outside `data` or the read name
    /// lacks its NUL terminator.
    pub fn new(data: &'a [u8]) -> Result<Self, RecordError> {
        if data.len() < FIXED_LEN {
            return Err(RecordError::TooShort { len: data.len() });
        }

        let name_len = usize::from(data[8]);
        let cigar_start = FIXED_LEN + name_len;

        if name_len == 0 || cigar_start > data.len() {
            return Err(RecordError::InvalidReadNameLength);
        }

        if data[cigar_start - 1] != 0 {
            return Err(RecordError::MissingReadNameNul);
        }

        let cigar_len = usize::from(u16_at(data, 12)) * 4;
        let sequence_len = u32_at(data, 16) as usize;
        let sequence_start = cigar_start + cigar_len;
        let quality_start = sequence_start + sequence_len.div_ceil(2);
        let data_start = quality_start
            .checked_add(sequence_len)
            .filter(|&end| end <= data.len())
            .ok_or(RecordError::ArraysOutOfBounds)?;

        Ok(Self {
            data,
            cigar_start,
            sequence_start,
            quality_start,
            data_start,
        })
    }

    /// The record's bytes, as given to [`RecordView::new`].
    pub fn as_bytes(&self) -> &'a [u8] {
        self.data
    }

    /// Reference sequence ID (`refID`); -1 when unplaced.
    pub fn reference_sequence_id(&self) -> i32 {
        i32_at(self.data, 0)
    }

    /// 0-based leftmost position (`pos`); -1 when unavailable.
    pub fn position(&self) -> i32 {
        i32_at(self.data, 4)
    }

    /// Mapping quality (MAPQ); 255 when unavailable.
    pub fn mapping_quality(&self) -> u8 {
        self.data[9]
    }

    /// Bitwise flags (FLAG).
    pub fn flags(&self) -> u16 {
        u16_at(self.data, 14)
    }

    /// Whether segment unmapped (0x4) is set.
    pub fn is_unmapped(&self) -> bool {
        self.flags() & 0x4 != 0
    }

    /// Mate reference sequence ID (`next_refID`); -1 when unplaced.
    pub fn mate_reference_sequence_id(&self) -> i32 {
        i32_at(self.data, 20)
    }

    /// 0-based mate position (`next_pos`); -1 when unavailable.
    pub fn mate_position(&self) -> i32 {
        i32_at(self.data, 24)
    }

    /// Template length (TLEN).
    pub fn template_length(&self) -> i32 {
        i32_at(self.data, 28)
    }

    /// Read name without its NUL terminator (QNAME); `*` when absent.
    pub fn name(&self) -> &'a [u8] {
        &self.data[FIXED_LEN..self.cigar_start - 1]
    }

    /// Number of CIGAR operations in the record itself (not counting a `CG` tag).
    pub fn cigar_op_count(&self) -> usize {
        (self.sequence_start - self.cigar_start) / 4
    }

    /// The raw CIGAR: little-endian `u32`s, `len << 4 | op`.
    pub fn cigar_bytes(&self) -> &'a [u8] {
        &self.data[self.cigar_start..self.sequence_start]
    }

    /// The CIGAR operations as `(op code, length)` pairs.
    pub fn cigar_ops(&self) -> impl ExactSizeIterator<Item = (u8, u32)> + 'a {
        self.cigar_bytes().chunks_exact(4).map(|chunk| {
            let n = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            ((n & 0xf) as u8, n >> 4)
        })
    }

    /// Sequence length (`l_seq`).
    pub fn sequence_len(&self) -> usize {
        self.data_start - self.quality_start
    }

    /// Packed 4-bit bases, two per byte, high nibble first.
    pub fn sequence_bytes(&self) -> &'a [u8] {
        &self.data[self.sequence_start..self.quality_start]
    }

    /// Phred base qualities without the +33 offset; all 0xFF when absent.
    pub fn quality_scores(&self) -> &'a [u8] {
        &self.data[self.quality_start..self.data_start]
    }

    /// The raw optional fields.
    pub fn data_bytes(&self) -> &'a [u8] {
        &self.data[self.data_start..]
    }

    /// Iterates over the optional fields, in file order.
    pub fn tags(&self) -> Tags<'a> {
        Tags::new(self.data_bytes())
    }

    /// Reference bases the alignment covers (CIGAR `M`, `D`, `N`, `=`, `X`), from the `CG` tag
    /// when the CIGAR is the placeholder of a record with over 65,535 operations.
    ///
    /// # Errors
    ///
    /// Returns a [`TagError`] when the `CG` tag is malformed.
    pub fn reference_span(&self) -> Result<u64, TagError> {
        self.sum_cigar(|op| matches!(op, 0 | 2 | 3 | 7 | 8))
    }

    /// Query bases aligned to the reference (CIGAR `M`, `=`, `X`), from the `CG` tag when the
    /// CIGAR is a placeholder.
    ///
    /// # Errors
    ///
    /// Returns a [`TagError`] when the `CG` tag is malformed.
    pub fn aligned_length(&self) -> Result<u64, TagError> {
        self.sum_cigar(|op| matches!(op, 0 | 7 | 8))
    }

    /// Sums the lengths of the operations `counts` selects, over the real CIGAR.
    fn sum_cigar(&self, counts: impl Fn(u8) -> bool) -> Result<u64, TagError> {
        let mut ops = self.cigar_ops();
        // SAMv1 §4.2.2: `<l_seq>S<reference length>N` stands for the CIGAR in the CG tag.
        let placeholder = self.cigar_op_count() == 2
            && ops.next() == Some((4, self.sequence_len() as u32))
            && ops.next().is_some_and(|(op, _)| op == 3);
        if placeholder {
            if let Some(TagValue::Array(array)) = self.tags().find(*b"CG")? {
                return Ok(array
                    .integers()
                    .map(|n| n as u32)
                    .filter(|n| counts((n & 0xf) as u8))
                    .map(|n| u64::from(n >> 4))
                    .sum());
            }
        }
        Ok(self
            .cigar_ops()
            .filter(|&(op, _)| counts(op))
            .map(|(_, len)| u64::from(len))
            .sum())
    }
}

fn u16_at(data: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([data[i], data[i + 1]])
}

fn u32_at(data: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]])
}

fn i32_at(data: &[u8], i: usize) -> i32 {
    u32_at(data, i) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &[u8], cigar: &[u32], l_seq: u32, tail: &[u8]) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&1i32.to_le_bytes());
        raw.extend_from_slice(&10i32.to_le_bytes());
        raw.push(name.len() as u8);
        raw.push(30);
        raw.extend_from_slice(&0u16.to_le_bytes());
        raw.extend_from_slice(&(cigar.len() as u16).to_le_bytes());
        raw.extend_from_slice(&0x63u16.to_le_bytes());
        raw.extend_from_slice(&l_seq.to_le_bytes());
        raw.extend_from_slice(&2i32.to_le_bytes());
        raw.extend_from_slice(&200i32.to_le_bytes());
        raw.extend_from_slice(&(-290i32).to_le_bytes());
        raw.extend_from_slice(name);
        for op in cigar {
            raw.extend_from_slice(&op.to_le_bytes());
        }
        raw.extend_from_slice(tail);
        raw
    }

    #[test]
    fn reads_every_fixed_field() {
        let raw = record(
            b"q1\0",
            &[5 << 4], /* 5M */
            5,
            &[0x12, 0x48, 0x10, 1, 2, 3, 4, 5],
        );
        let r = RecordView::new(&raw).unwrap();
        assert_eq!(r.reference_sequence_id(), 1);
        assert_eq!(r.position(), 10);
        assert_eq!(r.mapping_quality(), 30);
        assert_eq!(r.flags(), 0x63);
        assert_eq!(r.mate_reference_sequence_id(), 2);
        assert_eq!(r.mate_position(), 200);
        assert_eq!(r.template_length(), -290);
        assert_eq!(r.name(), b"q1");
        assert_eq!(r.cigar_ops().collect::<Vec<_>>(), [(0, 5)]);
        assert_eq!(r.sequence_len(), 5);
        assert_eq!(r.sequence_bytes(), [0x12, 0x48, 0x10]);
        assert_eq!(r.quality_scores(), [1, 2, 3, 4, 5]);
        assert!(r.data_bytes().is_empty());
    }

    #[test]
    fn rejects_inconsistent_lengths() {
        let t = |raw: &[u8], expected| assert_eq!(RecordView::new(raw).unwrap_err(), expected);

        t(&[0; 31], RecordError::TooShort { len: 31 });
        t(
            &record(b"", &[], 0, &[]),
            RecordError::InvalidReadNameLength,
        );
        t(
            &record(b"q1x", &[], 0, &[]),
            RecordError::MissingReadNameNul,
        );
        t(
            &record(b"q1\0", &[], 4, &[0, 0, 1, 2, 3]),
            RecordError::ArraysOutOfBounds,
        );

        let mut cigar_past_end = record(b"q1\0", &[0], 0, &[]);
        cigar_past_end[12] = 2;
        t(&cigar_past_end, RecordError::ArraysOutOfBounds);

        let mut truncated_name = record(b"q1\0", &[], 0, &[]);
        truncated_name[8] = 9;
        t(&truncated_name, RecordError::InvalidReadNameLength);

        let mut huge_sequence = record(b"q1\0", &[], 0, &[]);
        huge_sequence[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        t(&huge_sequence, RecordError::ArraysOutOfBounds);
    }
}
