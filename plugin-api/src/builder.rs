//! Builds raw BAM records (SAMv1 §4.2, without `block_size`), for plugin tests and the
//! conformance harness.

/// A record under construction; [`RecordBuilder::build`] gives its bytes.
///
/// ```
/// use bamflow_plugin_api::{RecordBuilder, RecordView};
///
/// let raw = RecordBuilder::new(b"read1")
///     .reference(0, 99)
///     .mapq(30)
///     .cigar(&[(b'M', 4)])
///     .sequence(b"ACGT", &[30, 30, 30, 30])
///     .tag_string(*b"CB", "AAACCCAAGAAACACT")
///     .build();
/// let record = RecordView::new(&raw)?;
/// assert_eq!(record.position(), 99);
/// assert_eq!(record.mapping_quality(), 30);
/// # Ok::<(), bamflow_plugin_api::RecordError>(())
/// ```
#[derive(Clone, Debug)]
pub struct RecordBuilder {
    name: Vec<u8>,
    reference_id: i32,
    position: i32,
    mapq: u8,
    flags: u16,
    mate_reference_id: i32,
    mate_position: i32,
    template_length: i32,
    cigar: Vec<(u8, u32)>,
    bases: Vec<u8>,
    qualities: Vec<u8>,
    tags: Vec<u8>,
}

impl RecordBuilder {
    /// An unmapped, unplaced record named `name` with no sequence.
    pub fn new(name: &[u8]) -> Self {
        Self {
            name: name.to_vec(),
            reference_id: -1,
            position: -1,
            mapq: 255,
            flags: 4,
            mate_reference_id: -1,
            mate_position: -1,
            template_length: 0,
            cigar: Vec::new(),
            bases: Vec::new(),
            qualities: Vec::new(),
            tags: Vec::new(),
        }
    }

    /// Places the record at 0-based `position` on reference `id`, and marks it mapped.
    #[must_use]
    pub fn reference(mut self, id: i32, position: i32) -> Self {
        self.reference_id = id;
        self.position = position;
        self.flags &= !4;
        self
    }

    #[must_use]
    pub fn flags(mut self, flags: u16) -> Self {
        self.flags = flags;
        self
    }

    #[must_use]
    pub fn mapq(mut self, mapq: u8) -> Self {
        self.mapq = mapq;
        self
    }

    #[must_use]
    pub fn mate(mut self, id: i32, position: i32, template_length: i32) -> Self {
        self.mate_reference_id = id;
        self.mate_position = position;
        self.template_length = template_length;
        self
    }

    /// CIGAR operations as (SAM letter, length), e.g. `(b'M', 100)`.
    #[must_use]
    pub fn cigar(mut self, ops: &[(u8, u32)]) -> Self {
        self.cigar = ops.to_vec();
        self
    }

    /// Bases as letters and Phred qualities (not +33); `qualities` may be empty (`*`).
    #[must_use]
    pub fn sequence(mut self, bases: &[u8], qualities: &[u8]) -> Self {
        self.bases = bases.to_vec();
        self.qualities = qualities.to_vec();
        self
    }

    #[must_use]
    pub fn tag_string(mut self, tag: [u8; 2], value: &str) -> Self {
        self.tags.extend_from_slice(&tag);
        self.tags.push(b'Z');
        self.tags.extend_from_slice(value.as_bytes());
        self.tags.push(0);
        self
    }

    #[must_use]
    pub fn tag_int(mut self, tag: [u8; 2], value: i32) -> Self {
        self.tags.extend_from_slice(&tag);
        self.tags.push(b'i');
        self.tags.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// A `B:i` array tag.
    #[must_use]
    pub fn tag_int_array(mut self, tag: [u8; 2], values: &[i32]) -> Self {
        self.tags.extend_from_slice(&tag);
        self.tags.extend_from_slice(b"Bi");
        self.tags
            .extend_from_slice(&(values.len() as u32).to_le_bytes());
        for v in values {
            self.tags.extend_from_slice(&v.to_le_bytes());
        }
        self
    }

    /// The record's bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.bases.len() * 2 + self.tags.len());
        let end = self.position + reference_span(&self.cigar).max(1) as i32;
        out.extend_from_slice(&self.reference_id.to_le_bytes());
        out.extend_from_slice(&self.position.to_le_bytes());
        out.push((self.name.len() + 1) as u8);
        out.push(self.mapq);
        out.extend_from_slice(&reg2bin(self.position, end).to_le_bytes());
        out.extend_from_slice(&(self.cigar.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&(self.bases.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.mate_reference_id.to_le_bytes());
        out.extend_from_slice(&self.mate_position.to_le_bytes());
        out.extend_from_slice(&self.template_length.to_le_bytes());
        out.extend_from_slice(&self.name);
        out.push(0);
        for &(op, len) in &self.cigar {
            let code = b"MIDNSHP=X".iter().position(|&c| c == op).unwrap_or(0) as u32;
            out.extend_from_slice(&(len << 4 | code).to_le_bytes());
        }
        for pair in self.bases.chunks(2) {
            let code = |b: u8| {
                b"=ACMGRSVTWYHKDBN"
                    .iter()
                    .position(|&c| c == b.to_ascii_uppercase())
                    .unwrap_or(15) as u8
            };
            let high = code(pair[0]) << 4;
            out.push(high | pair.get(1).map_or(0, |&b| code(b)));
        }
        if self.qualities.len() == self.bases.len() {
            out.extend_from_slice(&self.qualities);
        } else {
            out.extend(std::iter::repeat_n(0xff, self.bases.len()));
        }
        out.extend_from_slice(&self.tags);
        out
    }
}

/// Reference bases a CIGAR covers (M, D, N, =, X).
fn reference_span(cigar: &[(u8, u32)]) -> u32 {
    cigar
        .iter()
        .filter(|(op, _)| b"MDN=X".contains(op))
        .map(|(_, len)| len)
        .sum()
}

/// The BAI bin of a 0-based, half-open interval (SAMv1 §5.3).
fn reg2bin(beg: i32, end: i32) -> u16 {
    if beg < 0 {
        return 4680;
    }
    let end = end - 1;
    let bin = if beg >> 14 == end >> 14 {
        4681 + (beg >> 14)
    } else if beg >> 17 == end >> 17 {
        585 + (beg >> 17)
    } else if beg >> 20 == end >> 20 {
        73 + (beg >> 20)
    } else if beg >> 23 == end >> 23 {
        9 + (beg >> 23)
    } else if beg >> 26 == end >> 26 {
        1 + (beg >> 26)
    } else {
        0
    };
    bin as u16
}
