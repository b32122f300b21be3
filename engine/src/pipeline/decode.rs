//! Raw records → Arrow: one pure function per batch, run in parallel on the pool.
//!
//! Only the selected columns are computed: without `seq` no base is unpacked, without `tags`
//! and promoted tags the optional fields are not even parsed.

use std::sync::Arc;

use arrow_array::types::{Float32Type, Int32Type, Int64Type, UInt16Type, UInt8Type};
use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::ArrowError;
use bamflow_plugin_api::{RecordError, RecordView, TagArray, TagError, TagValue};

use super::columns::{ListColumn, PrimitiveColumn, ReferenceColumn, TextColumn, TextOverflow};
use super::sam_text;
use super::schema::{Column, OutputSchema, PromotedTag, PromotedType, StandardColumn};
use super::RawBatch;

/// Why a record could not be decoded. Record numbers count from 1 in file order.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("record {record}")]
    InvalidRecord {
        record: u64,
        #[source]
        source: RecordError,
    },
    #[error("record {record}: field tags")]
    InvalidTag {
        record: u64,
        #[source]
        source: TagError,
    },
    #[error("record {record}: field {field}: not valid UTF-8")]
    InvalidUtf8 { record: u64, field: String },
    #[error("record {record}: field {field}: reference id {id} is not in the header's {count} references")]
    ReferenceOutOfRange {
        record: u64,
        field: &'static str,
        id: i32,
        count: usize,
    },
    #[error("record {record}: field {field}: value {value} does not fit the column")]
    OutOfRange {
        record: u64,
        field: &'static str,
        value: i64,
    },
    #[error("record {record}: field qual: quality score {score} is above 93 and has no SAM text")]
    InvalidQuality { record: u64, score: u8 },
    #[error(transparent)]
    TextOverflow(#[from] TextOverflow),
    #[error("building Arrow arrays failed")]
    Arrow(#[source] ArrowError),
}

impl DecodeError {
    /// The record (1-based) the error is about, if any.
    pub fn record(&self) -> Option<u64> {
        match self {
            Self::InvalidRecord { record, .. }
            | Self::InvalidTag { record, .. }
            | Self::InvalidUtf8 { record, .. }
            | Self::ReferenceOutOfRange { record, .. }
            | Self::OutOfRange { record, .. }
            | Self::InvalidQuality { record, .. } => Some(*record),
            Self::TextOverflow(_) | Self::Arrow(_) => None,
        }
    }
}

/// Which parts of a record the selected columns need.
#[derive(Clone, Copy, Debug)]
struct Needs {
    /// The real CIGAR, which may live in a `CG` tag (cigar, end, and tags which must omit CG).
    cigar: bool,
    /// Iterating the optional fields at all.
    fields: bool,
    /// Where promoted values stood (`tag_layout`).
    layout: bool,
}

/// Decodes raw record batches into Arrow record batches of one [`OutputSchema`].
pub struct Decoder {
    schema: OutputSchema,
    reference_names: ArrayRef,
    reference_count: usize,
    /// For each promoted tag, whether its column is written (otherwise it stays in `tags`).
    promoted_written: Vec<bool>,
    needs: Needs,
}

impl Decoder {
    pub fn new(schema: OutputSchema, reference_names: &[String]) -> Self {
        let promoted_written = (0..schema.promoted.len())
            .map(|i| schema.columns().contains(&Column::Promoted(i)))
            .collect::<Vec<_>>();
        let any_promoted = promoted_written.iter().any(|&w| w);
        let tags = schema.has(StandardColumn::Tags);
        let needs = Needs {
            cigar: schema.has(StandardColumn::Cigar) || schema.has(StandardColumn::End) || tags,
            fields: tags || any_promoted || schema.has_tag_layout(),
            layout: schema.has_tag_layout(),
        };
        let names = StringArray::from_iter_values(reference_names.iter());
        Self {
            schema,
            reference_names: Arc::new(names),
            reference_count: reference_names.len(),
            promoted_written,
            needs,
        }
    }

    /// Decodes every record of `batch`.
    ///
    /// # Errors
    ///
    /// Returns a [`DecodeError`] naming the first bad record and field.
    pub fn decode(&self, batch: &RawBatch) -> Result<RecordBatch, DecodeError> {
        let mut builders = Builders::new(&self.schema, batch);
        let mut cigar_ops: Vec<(u8, u32)> = Vec::new();

        for (i, bytes) in batch.records().enumerate() {
            let record = batch.first_record + i as u64 + 1;
            let view = RecordView::new(bytes)
                .map_err(|source| DecodeError::InvalidRecord { record, source })?;
            self.decode_record(record, &view, &mut builders, &mut cigar_ops)?;
        }

        builders.finish(&self.schema, &self.reference_names)
    }

    fn decode_record(
        &self,
        record: u64,
        view: &RecordView<'_>,
        b: &mut Builders,
        cigar_ops: &mut Vec<(u8, u32)>,
    ) -> Result<(), DecodeError> {
        let s = &self.schema;

        if s.has(StandardColumn::Qname) {
            let name = view.name();
            if name == b"*" {
                b.qname.push_null();
            } else {
                check_utf8(name, record, "qname")?;
                b.qname.push(name)?;
            }
        }
        if s.has(StandardColumn::Flag) {
            b.flag.push(view.flags());
        }
        if s.has(StandardColumn::Rname) {
            let id = self.reference_id(view.reference_sequence_id(), record, "rname")?;
            b.rname.push(id);
        }
        if s.has(StandardColumn::Pos) {
            b.pos
                .push_option(one_based(view.position(), record, "pos")?);
        }
        if s.has(StandardColumn::Mapq) {
            let mapq = view.mapping_quality();
            b.mapq.push_option((mapq != 255).then_some(mapq));
        }

        let cg_tag = if self.needs.cigar {
            real_cigar(view, record)?
        } else {
            None
        };
        if self.needs.cigar {
            cigar_ops.clear();
            match cg_tag {
                Some(array) => {
                    cigar_ops.extend(array.integers().map(|n| ((n & 0xf) as u8, (n as u32) >> 4)))
                }
                None => cigar_ops.extend(view.cigar_ops()),
            }
        }
        if s.has(StandardColumn::Cigar) {
            if cigar_ops.is_empty() {
                b.cigar.push_null();
            } else {
                sam_text::push_cigar(b.cigar.buffer(), cigar_ops.iter().copied());
                b.cigar.close_value()?;
            }
        }

        if s.has(StandardColumn::Rnext) {
            let id = self.reference_id(view.mate_reference_sequence_id(), record, "rnext")?;
            b.rnext.push(id);
        }
        if s.has(StandardColumn::Pnext) {
            b.pnext
                .push_option(one_based(view.mate_position(), record, "pnext")?);
        }
        if s.has(StandardColumn::Tlen) {
            b.tlen.push(view.template_length());
        }
        if s.has(StandardColumn::Seq) {
            let len = view.sequence_len();
            if len == 0 {
                b.seq.push_null();
            } else {
                sam_text::push_sequence(b.seq.buffer(), view.sequence_bytes(), len);
                b.seq.close_value()?;
            }
        }
        if s.has(StandardColumn::Qual) {
            let scores = view.quality_scores();
            match scores.first() {
                None | Some(0xff) => b.qual.push_null(),
                Some(_) => {
                    sam_text::push_quality(b.qual.buffer(), scores)
                        .map_err(|score| DecodeError::InvalidQuality { record, score })?;
                    b.qual.close_value()?;
                }
            }
        }
        if s.has(StandardColumn::End) {
            b.end.push_option(alignment_end(view, cigar_ops, record)?);
        }
        if self.needs.fields {
            self.decode_fields(record, view, cg_tag.is_some(), b)?;
        }
        Ok(())
    }

    /// Splits the optional fields between promoted columns and the `tags` text.
    fn decode_fields(
        &self,
        record: u64,
        view: &RecordView<'_>,
        mut skip_cg: bool,
        b: &mut Builders,
    ) -> Result<(), DecodeError> {
        let promoted = &self.schema.promoted;
        b.promoted_set.clear();
        b.promoted_set.resize(promoted.len(), false);
        b.places.clear();
        b.places.resize(promoted.len(), Place::default());
        let write_tags = self.schema.has(StandardColumn::Tags);
        // Index of the field among the optional fields samtools prints (a CG it drops is none).
        let mut index = 0u32;

        for tag in view.tags() {
            let tag = tag.map_err(|source| DecodeError::InvalidTag { record, source })?;
            if skip_cg && tag.name == *b"CG" && matches!(tag.value, TagValue::Array(_)) {
                // htslib moves an oversized CIGAR back from `CG` and drops the tag.
                skip_cg = false;
                continue;
            }
            check_tag_utf8(&tag.value, tag.name, record)?;

            let slot = b
                .slots
                .get(index as usize, tag.name, promoted)
                .filter(|&i| {
                    self.promoted_written[i]
                        && !b.promoted_set[i]
                        && fits(promoted[i].ty, &tag.value)
                });
            if let Some(i) = slot {
                b.promoted_set[i] = true;
                b.places[i] = Place::of(index, &tag.value);
                b.promoted[i].push(&tag.value)?;
            } else if write_tags {
                if b.tags.open_value_len() > 0 {
                    b.tags.buffer().push(b'\t');
                }
                sam_text::push_tag(b.tags.buffer(), tag.name, &tag.value);
            }
            index += 1;
        }
        if self.needs.layout {
            push_layout(&mut b.tag_layout, &b.promoted_set, &b.places, index)?;
        }

        if write_tags {
            if b.tags.open_value_len() == 0 {
                b.tags.push_null();
            } else {
                b.tags.close_value()?;
            }
        }
        for (i, column) in b.promoted.iter_mut().enumerate() {
            if self.promoted_written[i] && !b.promoted_set[i] {
                column.push_null();
            }
        }
        Ok(())
    }

    fn reference_id(&self, id: i32, record: u64, field: &'static str) -> Result<i32, DecodeError> {
        if id < -1 || id >= 0 && id as usize >= self.reference_count {
            let count = self.reference_count;
            return Err(DecodeError::ReferenceOutOfRange {
                record,
                field,
                id,
                count,
            });
        }
        Ok(id)
    }
}

/// SAM's 1-based position from BAM's 0-based one; -1 (POS 0, unavailable) is null.
fn one_based(position: i32, record: u64, field: &'static str) -> Result<Option<i32>, DecodeError> {
    if position == -1 {
        return Ok(None);
    }
    position
        .checked_add(1)
        .map(Some)
        .ok_or(DecodeError::OutOfRange {
            record,
            field,
            value: i64::from(position) + 1,
        })
}

/// The 1-based inclusive end, as htslib's `bam_endpos`; null when unmapped or when no CIGAR op
/// consumes the reference. A zero-length op consumes nothing: `5H0M5H` has no end (htslib
/// would say POS, an alignment of one base; an end before the start is worse).
fn alignment_end(
    view: &RecordView<'_>,
    ops: &[(u8, u32)],
    record: u64,
) -> Result<Option<i32>, DecodeError> {
    let span: i64 = ops
        .iter()
        .filter(|&&(op, _)| sam_text::consumes_reference(op))
        .map(|&(_, len)| i64::from(len))
        .sum();
    if view.is_unmapped() || span == 0 {
        return Ok(None);
    }
    // 0-based start + span = 1-based inclusive end.
    let end = i64::from(view.position()) + span;
    i32::try_from(end)
        .map(Some)
        .map_err(|_| DecodeError::OutOfRange {
            record,
            field: "end",
            value: end,
        })
}

/// The `CG` array holding the real CIGAR, when the record's CIGAR is the `<l_seq>S<ref_len>N`
/// placeholder that SAMv1 §4.2.2 prescribes for more than 65,535 operations.
fn real_cigar<'a>(view: &RecordView<'a>, record: u64) -> Result<Option<TagArray<'a>>, DecodeError> {
    let mut ops = view.cigar_ops();
    let placeholder = ops.len() == 2
        && ops.next() == Some((4, view.sequence_len() as u32))
        && ops.next().is_some_and(|(op, _)| op == 3);
    if !placeholder {
        return Ok(None);
    }
    let value = view
        .tags()
        .find(*b"CG")
        .map_err(|source| DecodeError::InvalidTag { record, source })?;
    Ok(match value {
        Some(TagValue::Array(array)) if matches!(array.subtype(), b'I' | b'i') => Some(array),
        _ => None,
    })
}

/// Where a promoted value stood among a record's optional fields, and what only its place in
/// them could tell: an integer array's element type.
#[derive(Clone, Copy, Debug, Default)]
struct Place {
    index: u32,
    /// An integer array's element type (`c`, `C`, `s`, `S`, `i`, `I`); 0 for other values.
    subtype: u8,
    /// Whether `subtype` is the one `export` assumes: [`smallest_subtype`] of the elements.
    usual_subtype: bool,
}

impl Place {
    fn of(index: u32, value: &TagValue<'_>) -> Self {
        match value {
            TagValue::Array(a) if !a.is_float() => Self {
                index,
                subtype: a.subtype(),
                usual_subtype: a.subtype() == smallest_subtype(a.integers()),
            },
            _ => Self {
                index,
                subtype: 0,
                usual_subtype: true,
            },
        }
    }
}

/// The smallest BAM integer type holding every element, unsigned when none is negative (`C`
/// when there are none): the element type [`TAG_LAYOUT`](super::schema::TAG_LAYOUT) assumes
/// when it says nothing, as htslib chooses for an integer.
pub(crate) fn smallest_subtype(elements: impl Iterator<Item = i64>) -> u8 {
    let (min, max) = elements.fold((0i64, 0i64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if min >= 0 {
        match max {
            ..=0xff => b'C',
            0x100..=0xffff => b'S',
            _ => b'I',
        }
    } else if min >= i64::from(i8::MIN) && max <= i64::from(i8::MAX) {
        b'c'
    } else if min >= i64::from(i16::MIN) && max <= i64::from(i16::MAX) {
        b's'
    } else {
        b'i'
    }
}

/// Appends the record's tag layout: null when its promoted values are the last `fields` in
/// configuration order with their usual element types, else `index[:subtype]` per value.
fn push_layout(
    column: &mut TextColumn,
    set: &[bool],
    places: &[Place],
    fields: u32,
) -> Result<(), DecodeError> {
    let held = || {
        places
            .iter()
            .zip(set)
            .filter(|(_, &s)| s)
            .map(|(place, _)| place)
    };
    let present = held().count() as u32;
    let usual = (fields - present..)
        .zip(held())
        .all(|(expected, place)| place.index == expected && place.usual_subtype);
    if usual {
        column.push_null();
        return Ok(());
    }
    for place in held() {
        if column.open_value_len() > 0 {
            column.buffer().push(b',');
        }
        push_decimal(column.buffer(), place.index);
        if place.subtype != 0 {
            column.buffer().extend_from_slice(&[b':', place.subtype]);
        }
    }
    column.close_value()?;
    Ok(())
}

/// Appends `n` in decimal, without the formatting machinery (once per promoted value).
fn push_decimal(out: &mut Vec<u8>, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Whether a value's SAM type class matches a promoted column's type.
fn fits(ty: PromotedType, value: &TagValue<'_>) -> bool {
    match (ty, value) {
        (PromotedType::Integer, TagValue::Integer { .. })
        | (PromotedType::Float, TagValue::Float(_))
        | (PromotedType::String, TagValue::String(_))
        | (PromotedType::Hex, TagValue::Hex(_))
        | (PromotedType::Character, TagValue::Character(_)) => true,
        (PromotedType::IntegerArray, TagValue::Array(a)) => !a.is_float(),
        (PromotedType::FloatArray, TagValue::Array(a)) => a.is_float(),
        _ => false,
    }
}

/// ASCII first: it is what SAM text nearly always is, and the check vectorises.
fn is_utf8(bytes: &[u8]) -> bool {
    bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()
}

fn check_utf8(bytes: &[u8], record: u64, field: &str) -> Result<(), DecodeError> {
    if is_utf8(bytes) {
        return Ok(());
    }
    Err(DecodeError::InvalidUtf8 {
        record,
        field: field.to_owned(),
    })
}

fn check_tag_utf8(value: &TagValue<'_>, name: [u8; 2], record: u64) -> Result<(), DecodeError> {
    let bytes: &[u8] = match value {
        TagValue::String(s) | TagValue::Hex(s) => s,
        TagValue::Character(c) => std::slice::from_ref(c),
        _ => return Ok(()),
    };
    if is_utf8(bytes) {
        return Ok(());
    }
    let field = format!("tag {}", String::from_utf8_lossy(&name));
    Err(DecodeError::InvalidUtf8 { record, field })
}

/// A promoted tag's column.
enum PromotedColumn {
    Integer(PrimitiveColumn<Int64Type>),
    Float(PrimitiveColumn<Float32Type>),
    Text(TextColumn),
    IntegerArray(ListColumn<Int64Type>),
    FloatArray(ListColumn<Float32Type>),
}

impl PromotedColumn {
    fn new(ty: PromotedType, rows: usize) -> Self {
        match ty {
            PromotedType::Integer => Self::Integer(PrimitiveColumn::with_capacity(rows)),
            PromotedType::Float => Self::Float(PrimitiveColumn::with_capacity(rows)),
            PromotedType::String | PromotedType::Hex | PromotedType::Character => {
                Self::Text(TextColumn::with_capacity(rows, rows * 16))
            }
            PromotedType::IntegerArray => Self::IntegerArray(ListColumn::with_capacity(rows)),
            PromotedType::FloatArray => Self::FloatArray(ListColumn::with_capacity(rows)),
        }
    }

    /// Appends a value whose type [`fits`] this column.
    fn push(&mut self, value: &TagValue<'_>) -> Result<(), DecodeError> {
        match (self, value) {
            (Self::Integer(c), TagValue::Integer { value, .. }) => c.push(*value),
            (Self::Float(c), TagValue::Float(value)) => c.push(*value),
            (Self::Text(c), TagValue::String(s) | TagValue::Hex(s)) => c.push(s)?,
            (Self::Text(c), TagValue::Character(ch)) => c.push(std::slice::from_ref(ch))?,
            (Self::IntegerArray(c), TagValue::Array(a)) => c.push(a.integers())?,
            (Self::FloatArray(c), TagValue::Array(a)) => c.push(a.floats())?,
            (column, _) => column.push_null(),
        }
        Ok(())
    }

    fn push_null(&mut self) {
        match self {
            Self::Integer(c) => c.push_null(),
            Self::Float(c) => c.push_null(),
            Self::Text(c) => c.push_null(),
            Self::IntegerArray(c) => c.push_null(),
            Self::FloatArray(c) => c.push_null(),
        }
    }

    fn finish(self) -> Result<ArrayRef, ArrowError> {
        match self {
            Self::Integer(c) => Ok(c.finish()),
            Self::Float(c) => Ok(c.finish()),
            Self::Text(c) => c.finish(),
            Self::IntegerArray(c) => c.finish(),
            Self::FloatArray(c) => c.finish(),
        }
    }
}

/// Buffers of every column for one batch. Unselected columns stay empty and allocate nothing.
struct Builders {
    qname: TextColumn,
    flag: PrimitiveColumn<UInt16Type>,
    rname: ReferenceColumn,
    pos: PrimitiveColumn<Int32Type>,
    mapq: PrimitiveColumn<UInt8Type>,
    cigar: TextColumn,
    rnext: ReferenceColumn,
    pnext: PrimitiveColumn<Int32Type>,
    tlen: PrimitiveColumn<Int32Type>,
    seq: TextColumn,
    qual: TextColumn,
    end: PrimitiveColumn<Int32Type>,
    tags: TextColumn,
    promoted: Vec<PromotedColumn>,
    /// Which promoted columns got a value for the current record.
    promoted_set: Vec<bool>,
    /// Where each promoted value of the current record stood.
    places: Vec<Place>,
    slots: SlotCache,
    tag_layout: TextColumn,
}

/// The promoted column of each optional field, remembered by the field's place in the record.
///
/// Records from one aligner carry their tags in one order, so the field at a place is nearly
/// always the one the record before had there: one comparison instead of a search through the
/// promoted tags for every field (2% of a `scan` of short reads with twelve tags promoted).
#[derive(Default)]
struct SlotCache {
    /// The tag last seen at each place, and its promoted column.
    by_place: Vec<([u8; 2], Option<usize>)>,
}

impl SlotCache {
    /// The promoted column named `name` (names are unique), for the field at `place`.
    fn get(&mut self, place: usize, name: [u8; 2], promoted: &[PromotedTag]) -> Option<usize> {
        if promoted.is_empty() {
            return None;
        }
        if let Some(&(seen, slot)) = self.by_place.get(place) {
            if seen == name {
                return slot;
            }
        }
        let slot = promoted.iter().position(|p| p.name == name);
        if place >= self.by_place.len() {
            self.by_place.resize(place + 1, ([0, 0], None));
        }
        self.by_place[place] = (name, slot);
        slot
    }
}

impl Builders {
    fn new(schema: &OutputSchema, batch: &RawBatch) -> Self {
        let rows = batch.len();
        let has = |c| schema.has(c);
        let rows_if = |c| if has(c) { rows } else { 0 };
        // Text sizes are estimates from the raw bytes; vectors grow if they are short.
        let bytes_if = |c, bytes: usize| if has(c) { bytes } else { 0 };
        let raw = batch.data.len();

        Self {
            qname: TextColumn::with_capacity(
                rows_if(StandardColumn::Qname),
                bytes_if(StandardColumn::Qname, rows * 24),
            ),
            flag: PrimitiveColumn::with_capacity(rows_if(StandardColumn::Flag)),
            rname: ReferenceColumn::with_capacity(rows_if(StandardColumn::Rname)),
            pos: PrimitiveColumn::with_capacity(rows_if(StandardColumn::Pos)),
            mapq: PrimitiveColumn::with_capacity(rows_if(StandardColumn::Mapq)),
            cigar: TextColumn::with_capacity(
                rows_if(StandardColumn::Cigar),
                bytes_if(StandardColumn::Cigar, rows * 8),
            ),
            rnext: ReferenceColumn::with_capacity(rows_if(StandardColumn::Rnext)),
            pnext: PrimitiveColumn::with_capacity(rows_if(StandardColumn::Pnext)),
            tlen: PrimitiveColumn::with_capacity(rows_if(StandardColumn::Tlen)),
            seq: TextColumn::with_capacity(
                rows_if(StandardColumn::Seq),
                bytes_if(StandardColumn::Seq, raw / 2),
            ),
            qual: TextColumn::with_capacity(
                rows_if(StandardColumn::Qual),
                bytes_if(StandardColumn::Qual, raw / 2),
            ),
            end: PrimitiveColumn::with_capacity(rows_if(StandardColumn::End)),
            tags: TextColumn::with_capacity(
                rows_if(StandardColumn::Tags),
                bytes_if(StandardColumn::Tags, raw / 4),
            ),
            promoted: schema
                .promoted
                .iter()
                .map(|p| PromotedColumn::new(p.ty, rows))
                .collect(),
            promoted_set: Vec::with_capacity(schema.promoted.len()),
            places: Vec::with_capacity(schema.promoted.len()),
            slots: SlotCache::default(),
            // Mostly null: promoted tags usually follow the others.
            tag_layout: TextColumn::with_capacity(
                if schema.has_tag_layout() { rows } else { 0 },
                0,
            ),
        }
    }

    fn finish(
        mut self,
        schema: &OutputSchema,
        reference_names: &ArrayRef,
    ) -> Result<RecordBatch, DecodeError> {
        let mut arrays = Vec::with_capacity(schema.columns().len());
        for column in schema.columns() {
            let array = match *column {
                Column::Standard(c) => self.finish_standard(c, reference_names),
                Column::Promoted(i) => {
                    let ty = schema.promoted[i].ty;
                    std::mem::replace(&mut self.promoted[i], PromotedColumn::new(ty, 0)).finish()
                }
                Column::TagLayout => std::mem::take(&mut self.tag_layout).finish(),
            };
            arrays.push(array.map_err(DecodeError::Arrow)?);
        }
        RecordBatch::try_new(Arc::clone(schema.arrow()), arrays).map_err(DecodeError::Arrow)
    }

    /// Moves one standard column's buffers out into an array (each column is written once).
    fn finish_standard(
        &mut self,
        column: StandardColumn,
        names: &ArrayRef,
    ) -> Result<ArrayRef, ArrowError> {
        use std::mem::take;
        match column {
            StandardColumn::Qname => take(&mut self.qname).finish(),
            StandardColumn::Flag => Ok(take(&mut self.flag).finish()),
            StandardColumn::Rname => take(&mut self.rname).finish(names),
            StandardColumn::Pos => Ok(take(&mut self.pos).finish()),
            StandardColumn::Mapq => Ok(take(&mut self.mapq).finish()),
            StandardColumn::Cigar => take(&mut self.cigar).finish(),
            StandardColumn::Rnext => take(&mut self.rnext).finish(names),
            StandardColumn::Pnext => Ok(take(&mut self.pnext).finish()),
            StandardColumn::Tlen => Ok(take(&mut self.tlen).finish()),
            StandardColumn::Seq => take(&mut self.seq).finish(),
            StandardColumn::Qual => take(&mut self.qual).finish(),
            StandardColumn::End => Ok(take(&mut self.end).finish()),
            StandardColumn::Tags => take(&mut self.tags).finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int32Type, Int64Type, UInt16Type, UInt8Type};
    use arrow_array::Array;
    use arrow_schema::DataType;
    use bamflow_plugin_api::RecordBuilder;

    use super::*;
    use crate::pipeline::schema::PromotedTag;
    use crate::pipeline::tests::raw_batch;

    fn decoder(columns: &[&str], tags: &[&str]) -> Decoder {
        let columns: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
        let tags: Vec<PromotedTag> = tags.iter().map(|t| t.parse().unwrap()).collect();
        let schema = OutputSchema::new(&columns, &tags).unwrap();
        Decoder::new(schema, &["chr1".to_owned(), "chr2".to_owned()])
    }

    /// Row `row` of column `name`, as text the way samtools prints the field; `None` for null.
    fn cell(batch: &RecordBatch, name: &str, row: usize) -> Option<String> {
        let column = batch.column_by_name(name).unwrap();
        if column.is_null(row) {
            return None;
        }
        let text = match column.data_type() {
            DataType::Utf8 => column.as_string::<i32>().value(row).to_owned(),
            DataType::UInt16 => column.as_primitive::<UInt16Type>().value(row).to_string(),
            DataType::UInt8 => column.as_primitive::<UInt8Type>().value(row).to_string(),
            DataType::Int32 => column.as_primitive::<Int32Type>().value(row).to_string(),
            DataType::Int64 => column.as_primitive::<Int64Type>().value(row).to_string(),
            DataType::Dictionary(_, _) => {
                let dictionary = column.as_dictionary::<Int32Type>();
                let key = dictionary.keys().value(row) as usize;
                dictionary.values().as_string::<i32>().value(key).to_owned()
            }
            other => panic!("no text for {other}"),
        };
        Some(text)
    }

    #[test]
    fn a_mapped_record_decodes_as_samtools_prints_its_fields() {
        let record = RecordBuilder::new(b"pair/1")
            .reference(0, 99)
            .flags(0x63)
            .mapq(60)
            .cigar(&[(b'S', 5), (b'M', 10), (b'D', 2), (b'M', 3), (b'I', 1)])
            .mate(0, 199, 150)
            .sequence(b"ACGTACGTACGTACGTACG", &[30; 19])
            .tag_int(*b"NM", 3)
            .tag_string(*b"RG", "grp1")
            .build();
        let batch = decoder(&[], &[]).decode(&raw_batch(&[record])).unwrap();
        let row = |name| cell(&batch, name, 0);
        assert_eq!(row("qname").as_deref(), Some("pair/1"));
        assert_eq!(row("flag").as_deref(), Some("99"));
        assert_eq!(row("rname").as_deref(), Some("chr1"));
        assert_eq!(row("pos").as_deref(), Some("100"));
        assert_eq!(row("mapq").as_deref(), Some("60"));
        assert_eq!(row("cigar").as_deref(), Some("5S10M2D3M1I"));
        // The mate on the same reference: its real name, never `=`.
        assert_eq!(row("rnext").as_deref(), Some("chr1"));
        assert_eq!(row("pnext").as_deref(), Some("200"));
        assert_eq!(row("tlen").as_deref(), Some("150"));
        assert_eq!(row("seq").as_deref(), Some("ACGTACGTACGTACGTACG"));
        assert_eq!(row("qual").as_deref(), Some("?".repeat(19).as_str()));
        // 100 + 10 + 2 + 3 - 1.
        assert_eq!(row("end").as_deref(), Some("114"));
        assert_eq!(row("tags").as_deref(), Some("NM:i:3\tRG:Z:grp1"));
    }

    #[test]
    fn an_unplaced_record_has_nulls_where_samtools_prints_stars_and_zeros() {
        let record = RecordBuilder::new(b"lost").build();
        let batch = decoder(&[], &[]).decode(&raw_batch(&[record])).unwrap();
        for name in [
            "rname", "pos", "mapq", "cigar", "rnext", "pnext", "seq", "qual", "end", "tags",
        ] {
            assert_eq!(cell(&batch, name, 0), None, "{name}");
        }
        assert_eq!(cell(&batch, "flag", 0).as_deref(), Some("4"));
        assert_eq!(cell(&batch, "tlen", 0).as_deref(), Some("0"));
    }

    #[test]
    fn a_promoted_tag_leaves_tags_only_when_its_column_is_written() {
        let record = RecordBuilder::new(b"r")
            .reference(1, 0)
            .cigar(&[(b'M', 4)])
            .tag_int(*b"NM", 2)
            .tag_int_array(*b"XB", &[1, -2])
            .build();
        let batch = decoder(&["qname", "tags", "NM"], &["NM:i"])
            .decode(&raw_batch(std::slice::from_ref(&record)))
            .unwrap();
        assert_eq!(cell(&batch, "NM", 0).as_deref(), Some("2"));
        assert_eq!(cell(&batch, "tags", 0).as_deref(), Some("XB:B:i,1,-2"));
        // Promoted but not selected: it stays in tags.
        let batch = decoder(&["tags"], &["NM:i"])
            .decode(&raw_batch(&[record]))
            .unwrap();
        assert_eq!(
            cell(&batch, "tags", 0).as_deref(),
            Some("NM:i:2\tXB:B:i,1,-2")
        );
    }

    #[test]
    fn the_tag_layout_says_where_promoted_values_stood_unless_they_follow_the_rest() {
        let out_of_place = RecordBuilder::new(b"a")
            .tag_int(*b"NM", 2)
            .tag_int_array(*b"XB", &[1, -2])
            .tag_string(*b"MD", "4")
            .build();
        let at_the_end = RecordBuilder::new(b"b")
            .tag_string(*b"XA", "x")
            .tag_string(*b"MD", "4")
            .build();
        // `i` elements that would fit in `C`: only the layout can say so.
        let wide = RecordBuilder::new(b"c")
            .tag_int_array(*b"XB", &[1, 2])
            .build();
        let none = RecordBuilder::new(b"d").tag_string(*b"XA", "y").build();
        let batch = decoder(&[], &["MD:Z", "NM:i", "XB:B:i"])
            .decode(&raw_batch(&[out_of_place, at_the_end, wide, none]))
            .unwrap();
        let layout: Vec<_> = (0..4).map(|row| cell(&batch, "tag_layout", row)).collect();
        assert_eq!(
            layout,
            [
                Some("2,0,1:i".to_owned()),
                None,
                Some("0:i".to_owned()),
                None
            ]
        );
        assert_eq!(cell(&batch, "tags", 1).as_deref(), Some("XA:Z:x"));
        assert_eq!(
            batch.schema().fields().last().map(|f| f.name().as_str()),
            Some("tag_layout")
        );
    }

    #[test]
    fn promoted_tags_are_found_whatever_order_records_carry_them_in() {
        let record = |name: &[u8], tags: &[([u8; 2], i32)]| {
            tags.iter()
                .fold(RecordBuilder::new(name), |r, &(tag, v)| r.tag_int(tag, v))
                .build()
        };
        let records = [
            record(b"a", &[(*b"NM", 1), (*b"AS", 10), (*b"XX", 7)]),
            record(b"b", &[(*b"AS", 20), (*b"NM", 2)]),
            record(b"c", &[(*b"XX", 8), (*b"NM", 3), (*b"AS", 30)]),
            record(b"d", &[(*b"XX", 9), (*b"NM", 4)]),
        ];
        let batch = decoder(&[], &["AS:i", "NM:i"])
            .decode(&raw_batch(&records))
            .unwrap();
        let column = |name| {
            (0..4)
                .map(|row| cell(&batch, name, row))
                .collect::<Vec<_>>()
        };
        let some = |v: &[&str]| v.iter().map(|s| Some((*s).to_owned())).collect::<Vec<_>>();
        assert_eq!(column("NM"), some(&["1", "2", "3", "4"]));
        assert_eq!(
            column("AS"),
            [
                Some("10".to_owned()),
                Some("20".to_owned()),
                Some("30".to_owned()),
                None
            ]
        );
        assert_eq!(
            column("tags"),
            [
                Some("XX:i:7".to_owned()),
                None,
                Some("XX:i:8".to_owned()),
                Some("XX:i:9".to_owned())
            ]
        );
    }

    #[test]
    fn smallest_subtypes_are_htslibs_integer_types() {
        let t = |v: &[i64]| smallest_subtype(v.iter().copied()) as char;
        assert_eq!(
            [t(&[]), t(&[255]), t(&[256]), t(&[65536]), t(&[-1, 127])],
            ['C', 'C', 'S', 'I', 'c']
        );
        assert_eq!([t(&[-1, 128]), t(&[-32769])], ['s', 'i']);
    }

    #[test]
    fn a_bad_record_is_named_by_number_and_field() {
        let good = RecordBuilder::new(b"ok").build();
        let bad = RecordBuilder::new(b"far").reference(7, 0).build();
        let mut batch = raw_batch(&[good, bad]);
        batch.first_record = 10;
        let error = decoder(&[], &[]).decode(&batch).unwrap_err();
        assert_eq!(error.record(), Some(12));
        let message = error.to_string();
        assert!(
            message.contains("record 12") && message.contains("reference id 7"),
            "{message}"
        );
    }
}
