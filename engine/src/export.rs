//! Back to BAM: a dataset's header and columns written as a BAM file whose
//! `samtools view -h --no-PG` equals the source's.
//!
//! The header is written as stored (`bamflow:sam_header`, the text `samtools view -H --no-PG`
//! prints, with an `@SQ` line for every reference), its binary reference list taken from the
//! `@SQ` lines. Each row is encoded as a BAM record from the fields samtools printed (the
//! columns hold exactly those, `tags` the optional fields in file order), as htslib encodes a
//! SAM line: integers in the smallest type, array subtypes as written, duplicate and empty
//! fields kept (noodles' SAM reader refuses empty `B` arrays and its record buffer merges
//! duplicate tags, which samtools keeps). Promoted values are put back among them where the
//! `tag_layout` column says they stood. noodles' multithreaded BGZF writer compresses. Parts
//! stream in order, a batch at a time, written under a temporary name and renamed once
//! complete.

use std::fs::File;
use std::io::{self, Write};
use std::num::NonZero;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, UInt16Type, UInt8Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;

use crate::durable;
use crate::pipeline;
use crate::pipeline::decode::smallest_subtype;
use crate::pipeline::schema::TAG_LAYOUT;
use crate::verify::{self, VerifyError};

/// Why a dataset could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The dataset cannot be read, or does not hold every record and field.
    #[error(transparent)]
    Dataset(#[from] VerifyError),
    /// Its header cannot be read.
    #[error(transparent)]
    Header(#[from] pipeline::ConvertError),
    /// A row does not make a valid record.
    #[error("{}: record {record}: {reason}", path.display())]
    Record {
        /// The dataset.
        path: PathBuf,
        /// The record, counting from 1.
        record: u64,
        /// What noodles refused.
        reason: String,
    },
    /// Writing the BAM failed.
    #[error("cannot write {}", path.display())]
    Write {
        /// The BAM being written.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// The SAM fields, in order, as the dataset names them.
const FIELDS: [&str; 11] = [
    "qname", "flag", "rname", "pos", "mapq", "cigar", "rnext", "pnext", "tlen", "seq", "qual",
];

/// Writes the dataset `dataset` as the BAM file `out`, compressing on `threads` workers;
/// returns the records written.
///
/// # Errors
///
/// An [`ExportError`]: the dataset is partial (filters, a column subset) or unreadable, a row
/// is not a valid record, or the output cannot be written. Nothing is left at `out` then.
pub fn export(dataset: &Path, out: &Path, threads: usize) -> Result<u64, ExportError> {
    export_with(
        dataset,
        out,
        &ExportOptions {
            threads,
            allow_partial: false,
        },
    )
    .map(|exported| exported.records)
}

/// How [`export_with`] writes.
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    /// BGZF compression workers.
    pub threads: usize,
    /// Export a dataset that does not hold everything (filters, a column subset, promoted
    /// tags of schema version 1) with what it has, instead of refusing it.
    pub allow_partial: bool,
}

/// What [`export_with`] wrote.
#[derive(Clone, Debug)]
pub struct Exported {
    /// Records written.
    pub records: u64,
    /// Why the BAM is not the source's, when the dataset was partial (empty otherwise).
    pub partial: Vec<String>,
}

/// [`export`] with options: with `allow_partial`, a dataset written with filters has only its
/// kept records, missing columns become SAM's "unavailable" values (`*`, 0, 255), and the
/// promoted tags of a schema version 1 dataset follow the other optional fields — each such
/// difference is listed in [`Exported::partial`].
///
/// # Errors
///
/// As [`export`]; a partial dataset only without `allow_partial`.
pub fn export_with(
    dataset: &Path,
    out: &Path,
    options: &ExportOptions,
) -> Result<Exported, ExportError> {
    let manifest = verify::read_manifest(dataset)?;
    let mut partial = verify::partial_reasons(&manifest);
    let has_layout = manifest.columns.iter().any(|c| c == TAG_LAYOUT);
    if !manifest.tags.is_empty() && !has_layout {
        // Schema version 1: a promoted tag left the `tags` text and where it stood among the
        // others was not recorded, so it cannot be put back in place.
        partial.push(format!(
            "its promoted tags ({}) left the tags text and their places in it were not recorded (schema version 1){}",
            manifest.tags.join(", "),
            if options.allow_partial {
                ": they follow the other tags"
            } else {
                "; convert without --tags to export"
            }
        ));
    }
    if !options.allow_partial {
        if let Some(reason) = partial.first() {
            return Err(VerifyError::Partial {
                path: dataset.to_owned(),
                reason: reason.clone(),
            }
            .into());
        }
    }
    let promoted: Vec<(String, String)> = manifest
        .tags
        .iter()
        .filter_map(|spec| {
            let (tag, kind) = spec.split_once(':')?;
            Some((tag.to_owned(), kind.to_owned()))
        })
        .collect();
    let threads = options.threads;
    let text = pipeline::read_header(dataset)?;
    let references = references(&text);
    let ids: std::collections::HashMap<&str, i32> = references
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (*name, i32::try_from(i).unwrap_or(i32::MAX)))
        .collect();

    let write_error = |source| ExportError::Write {
        path: out.to_owned(),
        source,
    };
    let temporary = temporary_path(out);
    let file = File::create(&temporary).map_err(write_error)?;
    let workers = NonZero::new(threads.max(1)).unwrap_or(NonZero::<usize>::MIN);
    let mut bgzf = noodles_bgzf::io::MultithreadedWriter::with_worker_count(workers, file);
    let written = (|| {
        write_raw_header(&mut bgzf, &text).map_err(write_error)?;
        let mut buf = Vec::new();
        let mut scratch = Scratch::default();
        let mut record = 0u64;
        for batch in verify::parts(dataset, &manifest) {
            let batch = batch?;
            let columns =
                Columns::of(&batch, options.allow_partial, &promoted).map_err(|reason| {
                    ExportError::Record {
                        path: dataset.to_owned(),
                        record: record + 1,
                        reason,
                    }
                })?;
            for row in 0..batch.num_rows() {
                record += 1;
                buf.clear();
                columns
                    .encode(row, &ids, &mut scratch, &mut buf)
                    .map_err(|reason| ExportError::Record {
                        path: dataset.to_owned(),
                        record,
                        reason,
                    })?;
                bgzf.write_all(&buf).map_err(write_error)?;
            }
        }
        let file = bgzf.finish().map_err(write_error)?;
        file.sync_all().map_err(write_error)?;
        Ok(record)
    })();
    match written {
        Ok(records) => {
            durable::rename(&temporary, out).map_err(|e| write_error(io::Error::other(e)))?;
            Ok(Exported { records, partial })
        }
        Err(error) => {
            let _ = std::fs::remove_file(&temporary);
            Err(error)
        }
    }
}

fn temporary_path(out: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(out.file_name().unwrap_or_default());
    name.push(".partial");
    out.with_file_name(name)
}

/// The references of the `@SQ` lines, in order: name and length.
fn references(text: &str) -> Vec<(&str, u32)> {
    text.lines()
        .filter(|line| line.starts_with("@SQ\t"))
        .map(|line| {
            let field = |tag: &str| {
                line.split('\t')
                    .find_map(|f| f.strip_prefix(tag))
                    .unwrap_or_default()
            };
            (field("SN:"), field("LN:").parse().unwrap_or(0))
        })
        .collect()
}

/// The BAM header as stored: magic, the text, the reference list of its `@SQ` lines.
fn write_raw_header(out: &mut impl Write, text: &str) -> io::Result<()> {
    let too_long = |_| io::Error::new(io::ErrorKind::InvalidInput, "header too long for BAM");
    out.write_all(b"BAM\x01")?;
    out.write_all(&u32::try_from(text.len()).map_err(too_long)?.to_le_bytes())?;
    out.write_all(text.as_bytes())?;
    let references = references(text);
    out.write_all(
        &u32::try_from(references.len())
            .map_err(too_long)?
            .to_le_bytes(),
    )?;
    for (name, length) in references {
        out.write_all(
            &u32::try_from(name.len() + 1)
                .map_err(too_long)?
                .to_le_bytes(),
        )?;
        out.write_all(name.as_bytes())?;
        out.write_all(&[0])?;
        out.write_all(&length.to_le_bytes())?;
    }
    Ok(())
}

/// Buffers [`Columns::encode`] keeps from record to record, so encoding allocates nothing
/// per record.
#[derive(Default)]
struct Scratch {
    /// The CIGAR's operations.
    cigar: Vec<u32>,
    /// A promoted tag's value as SAM text.
    field: String,
    /// The record's promoted values: column, index among the optional fields, integer array
    /// element type (0 = the smallest that holds them).
    present: Vec<(usize, u32, u8)>,
}

/// The columns of a batch a SAM line is made from; `None` for one a partial dataset lacks.
struct Columns<'a> {
    fields: Vec<Option<&'a dyn Array>>,
    tags: Option<&'a dyn Array>,
    /// Where promoted values stood ([`TAG_LAYOUT`]); `None` in schema version 1.
    layout: Option<&'a dyn Array>,
    /// Promoted tag columns: tag, SAM type (`i`, `f`, `Z`, `A`, `H`, `B:i`, `B:f`), values.
    promoted: Vec<(&'a str, &'a str, &'a dyn Array)>,
}

impl<'a> Columns<'a> {
    /// The columns of `batch`; the manifest lists them all, but a part file is checked too
    /// (one replaced by hand, say), so no column is ever read in place of another.
    /// With `allow_partial`, a column the dataset was written without is `None`.
    fn of(
        batch: &'a RecordBatch,
        allow_partial: bool,
        promoted: &'a [(String, String)],
    ) -> Result<Self, String> {
        let column = |name: &str| -> Result<Option<&'a dyn Array>, String> {
            match batch.column_by_name(name) {
                Some(column) => Ok(Some(column.as_ref())),
                None if allow_partial => Ok(None),
                None => Err(format!("the part has no column {name:?}")),
            }
        };
        Ok(Self {
            fields: FIELDS
                .iter()
                .map(|name| column(name))
                .collect::<Result<_, _>>()?,
            tags: column("tags")?,
            layout: batch.column_by_name(TAG_LAYOUT).map(|c| c.as_ref()),
            promoted: promoted
                .iter()
                .filter_map(|(tag, kind)| {
                    let values = batch.column_by_name(tag)?;
                    Some((tag.as_str(), kind.as_str(), values.as_ref()))
                })
                .collect(),
        })
    }

    /// Row `row` as a BAM record (block size first), appended to `out`.
    fn encode(
        &self,
        row: usize,
        ids: &std::collections::HashMap<&str, i32>,
        scratch: &mut Scratch,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let f = &self.fields;
        let field_text = |i: usize| f[i].and_then(|column| text(column, row));
        let field_integer = |i: usize| f[i].and_then(|column| integer(column, row));
        let id = |name: Option<&str>| -> Result<i32, String> {
            match name {
                None => Ok(-1),
                Some(name) => ids
                    .get(name)
                    .copied()
                    .ok_or_else(|| format!("reference {name:?} is not in the header")),
            }
        };
        let qname = field_text(0).unwrap_or("*");
        let flag = field_integer(1).unwrap_or(0);
        let ref_id = id(field_text(2))?;
        let pos = field_integer(3).unwrap_or(0) - 1;
        let mapq = field_integer(4).unwrap_or(255);
        parse_cigar(field_text(5).unwrap_or("*"), &mut scratch.cigar)?;
        let cigar: &[u32] = &scratch.cigar;
        let next_id = id(field_text(6))?;
        let next_pos = field_integer(7).unwrap_or(0) - 1;
        let tlen = field_integer(8).unwrap_or(0);
        let seq = field_text(9).filter(|s| *s != "*").unwrap_or("");
        let qual = field_text(10).filter(|q| *q != "*");
        if qual.is_some_and(|q| q.len() != seq.len()) {
            return Err("QUAL and SEQ differ in length".to_owned());
        }

        // Alignments of more than 65,535 operations keep their CIGAR in a CG tag, with a
        // placeholder `<read length>S<reference length>N`, as htslib writes them.
        let reference_length: i64 = cigar
            .iter()
            .filter(|&&op| matches!(op & 0xf, 0 | 2 | 3 | 7 | 8))
            .map(|op| i64::from(op >> 4))
            .sum();
        let long = cigar.len() > 0xffff;
        let placeholder;
        let stored: &[u32] = if long {
            let read_length = u32::try_from(seq.len()).map_err(|_| "SEQ too long".to_owned())?;
            let reference = u32::try_from(reference_length).map_err(|_| "CIGAR too long")?;
            placeholder = [read_length << 4 | 4, reference << 4 | 3];
            &placeholder
        } else {
            cigar
        };
        let unmapped = flag & 4 != 0;
        let end = if !unmapped && reference_length > 0 {
            pos + reference_length
        } else {
            pos + 1
        };

        let start = out.len();
        out.extend_from_slice(&[0; 4]); // block size, filled in last
        let num = |v: i64, what: &str| -> Result<i32, String> {
            i32::try_from(v).map_err(|_| format!("{what} {v} out of range"))
        };
        out.extend_from_slice(&ref_id.to_le_bytes());
        out.extend_from_slice(&num(pos, "POS")?.to_le_bytes());
        out.push(u8::try_from(qname.len() + 1).map_err(|_| "QNAME too long".to_owned())?);
        out.push(u8::try_from(mapq).map_err(|_| "MAPQ out of range".to_owned())?);
        out.extend_from_slice(&reg2bin(pos, end).to_le_bytes());
        out.extend_from_slice(&(stored.len() as u16).to_le_bytes());
        out.extend_from_slice(
            &u16::try_from(flag)
                .map_err(|_| "FLAG out of range".to_owned())?
                .to_le_bytes(),
        );
        out.extend_from_slice(&num(seq.len() as i64, "SEQ length")?.to_le_bytes());
        out.extend_from_slice(&next_id.to_le_bytes());
        out.extend_from_slice(&num(next_pos, "PNEXT")?.to_le_bytes());
        out.extend_from_slice(&num(tlen, "TLEN")?.to_le_bytes());
        out.extend_from_slice(qname.as_bytes());
        out.push(0);
        for op in stored {
            out.extend_from_slice(&op.to_le_bytes());
        }
        for pair in seq.as_bytes().chunks(2) {
            let code = |base: u8| BASE_CODES[usize::from(base)];
            out.push(code(pair[0]) << 4 | pair.get(1).map_or(0, |&b| code(b)));
        }
        match qual {
            Some(qual) => out.extend(qual.bytes().map(|q| q.wrapping_sub(33))),
            None => out.extend(std::iter::repeat_n(0xff, seq.len())),
        }
        self.encode_fields(row, &mut scratch.present, &mut scratch.field, out)?;
        if long {
            out.extend_from_slice(b"CGBI");
            out.extend_from_slice(&(cigar.len() as u32).to_le_bytes());
            for op in cigar {
                out.extend_from_slice(&op.to_le_bytes());
            }
        }
        let size = u32::try_from(out.len() - start - 4).map_err(|_| "record too large")?;
        out[start..start + 4].copy_from_slice(&size.to_le_bytes());
        Ok(())
    }
}

impl Columns<'_> {
    /// Row `row`'s optional fields: the `tags` text with the promoted values put back where
    /// the tag layout says they stood (after the others when it says nothing).
    fn encode_fields(
        &self,
        row: usize,
        present: &mut Vec<(usize, u32, u8)>,
        field: &mut String,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let tags = self
            .tags
            .and_then(|column| text(column, row))
            .filter(|t| !t.is_empty());
        present.clear();
        for (i, (_, _, values)) in self.promoted.iter().enumerate() {
            if !values.is_null(row) {
                present.push((i, AFTER_THE_OTHERS, 0));
            }
        }
        if let Some(layout) = self.layout.and_then(|column| text(column, row)) {
            place(layout, present)?;
        }

        let mut encode_promoted = |i: usize, subtype: u8, out: &mut Vec<u8>| {
            let (tag, kind, values) = self.promoted[i];
            promoted_text(tag, kind, values, row, subtype, field)
                .ok_or_else(|| format!("promoted tag {tag} cannot be written"))?;
            encode_tag(field, out)
        };
        // Fields in order: a placed promoted value where its index says, else the next of the
        // `tags` text, until both run out.
        let mut others = tags.into_iter().flat_map(|t| t.split('\t'));
        let (mut index, mut placed) = (0u32, 0);
        loop {
            if let Some(&(i, _, subtype)) = present.iter().find(|p| p.1 == index) {
                encode_promoted(i, subtype, out)?;
                placed += 1;
            } else if let Some(other) = others.next() {
                encode_tag(other, out)?;
            } else {
                break;
            }
            index += 1;
        }
        if placed != present.iter().filter(|p| p.1 != AFTER_THE_OTHERS).count() {
            return Err(format!(
                "{TAG_LAYOUT} places a promoted tag past the last field or twice at one"
            ));
        }
        // Without a layout, the promoted values follow the others in column order.
        for &(i, _, subtype) in present.iter().filter(|p| p.1 == AFTER_THE_OTHERS) {
            encode_promoted(i, subtype, out)?;
        }
        Ok(())
    }
}

/// The index of a promoted value the tag layout does not place: after the `tags` fields.
const AFTER_THE_OTHERS: u32 = u32::MAX;

/// Sets each promoted value's index and element type from a [`TAG_LAYOUT`] value
/// (`index[:subtype]` per value, in column order).
fn place(layout: &str, present: &mut [(usize, u32, u8)]) -> Result<(), String> {
    let bad = || format!("{TAG_LAYOUT} {layout:?} does not match the promoted tags");
    let mut entries = layout.split(',');
    for value in present.iter_mut() {
        let entry = entries.next().ok_or_else(bad)?;
        let (index, subtype) = match entry.split_once(':') {
            Some((index, subtype)) => match subtype.as_bytes() {
                &[s @ (b'c' | b'C' | b's' | b'S' | b'i' | b'I')] => (index, s),
                _ => return Err(bad()),
            },
            None => (entry, 0),
        };
        value.1 = index.parse().map_err(|_| bad())?;
        value.2 = subtype;
    }
    if entries.next().is_some() {
        return Err(bad());
    }
    Ok(())
}

/// The 4-bit BAM code of each SEQ byte (`=ACMGRSVTWYHKDBN`, either case; anything else N),
/// looked up once per base rather than searched.
const BASE_CODES: [u8; 256] = {
    let mut codes = [15u8; 256];
    let bases = b"=ACMGRSVTWYHKDBN";
    let mut i = 0;
    while i < bases.len() {
        codes[bases[i] as usize] = i as u8;
        codes[bases[i].to_ascii_lowercase() as usize] = i as u8;
        i += 1;
    }
    codes
};

/// CIGAR text as BAM operations (`length << 4 | op`) into `ops` (cleared first, reused from
/// record to record); `*` is none.
fn parse_cigar(cigar: &str, ops: &mut Vec<u32>) -> Result<(), String> {
    ops.clear();
    if cigar == "*" {
        return Ok(());
    }
    let mut length: u32 = 0;
    for c in cigar.bytes() {
        if c.is_ascii_digit() {
            length = length
                .checked_mul(10)
                .and_then(|l| l.checked_add(u32::from(c - b'0')))
                .filter(|l| *l < 1 << 28)
                .ok_or_else(|| format!("CIGAR {cigar:?}: operation too long"))?;
            continue;
        }
        let op = b"MIDNSHP=X"
            .iter()
            .position(|&o| o == c)
            .ok_or_else(|| format!("CIGAR {cigar:?}: unknown operation {:?}", c as char))?;
        ops.push(length << 4 | op as u32);
        length = 0;
    }
    Ok(())
}

/// The BAI bin of `[beg, end)` (SAM spec 5.3; `beg` -1 for an unplaced record).
fn reg2bin(beg: i64, end: i64) -> u16 {
    let end = end - 1;
    let bin = if beg >> 14 == end >> 14 {
        ((1 << 15) - 1) / 7 + (beg >> 14)
    } else if beg >> 17 == end >> 17 {
        ((1 << 12) - 1) / 7 + (beg >> 17)
    } else if beg >> 20 == end >> 20 {
        ((1 << 9) - 1) / 7 + (beg >> 20)
    } else if beg >> 23 == end >> 23 {
        ((1 << 6) - 1) / 7 + (beg >> 23)
    } else if beg >> 26 == end >> 26 {
        1 + (beg >> 26)
    } else {
        0
    };
    u16::try_from(bin).unwrap_or(0)
}

/// One optional field `TG:T:value` in BAM's binary form, as htslib encodes SAM text:
/// integers in the smallest type that holds them, arrays in the subtype written.
fn encode_tag(field: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let bad = || format!("optional field {field:?} is not valid");
    let bytes = field.as_bytes();
    if bytes.len() < 5 || bytes[2] != b':' || bytes[4] != b':' {
        return Err(bad());
    }
    let (tag, kind, value) = (&bytes[..2], bytes[3], &field[5..]);
    out.extend_from_slice(tag);
    match kind {
        b'A' => {
            out.push(b'A');
            out.push(*value.as_bytes().first().ok_or_else(bad)?);
        }
        b'i' => {
            let v: i64 = value.parse().map_err(|_| bad())?;
            encode_integer(v, out).ok_or_else(bad)?;
        }
        b'f' => {
            out.push(b'f');
            let v: f32 = value.parse().map_err(|_| bad())?;
            out.extend_from_slice(&v.to_le_bytes());
        }
        b'Z' | b'H' => {
            out.push(kind);
            out.extend_from_slice(value.as_bytes());
            out.push(0);
        }
        b'B' => {
            let mut items = value.split(',');
            let subtype = items
                .next()
                .and_then(|s| s.bytes().next())
                .ok_or_else(bad)?;
            out.push(b'B');
            out.push(subtype);
            let count_at = out.len();
            out.extend_from_slice(&[0; 4]);
            let mut count = 0u32;
            for item in items {
                count += 1;
                match subtype {
                    b'f' => {
                        let v: f32 = item.parse().map_err(|_| bad())?;
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                    _ => {
                        let v: i64 = item.parse().map_err(|_| bad())?;
                        let fits =
                            |lo: i64, hi: i64| (lo..=hi).contains(&v).then_some(()).ok_or_else(bad);
                        match subtype {
                            b'c' => {
                                fits(-128, 127)?;
                                out.push(v as i8 as u8);
                            }
                            b'C' => {
                                fits(0, 255)?;
                                out.push(v as u8);
                            }
                            b's' => {
                                fits(-32768, 32767)?;
                                out.extend_from_slice(&(v as i16).to_le_bytes());
                            }
                            b'S' => {
                                fits(0, 65535)?;
                                out.extend_from_slice(&(v as u16).to_le_bytes());
                            }
                            b'i' => {
                                fits(i32::MIN.into(), i32::MAX.into())?;
                                out.extend_from_slice(&(v as i32).to_le_bytes());
                            }
                            b'I' => {
                                fits(0, u32::MAX.into())?;
                                out.extend_from_slice(&(v as u32).to_le_bytes());
                            }
                            _ => return Err(bad()),
                        }
                    }
                }
            }
            out[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
        }
        _ => return Err(bad()),
    }
    Ok(())
}

/// An `i` value in htslib's choice of type: unsigned when not negative, the smallest that fits.
fn encode_integer(v: i64, out: &mut Vec<u8>) -> Option<()> {
    if v >= 0 {
        if v <= 0xff {
            out.extend_from_slice(&[b'C', v as u8]);
        } else if v <= 0xffff {
            out.push(b'S');
            out.extend_from_slice(&(v as u16).to_le_bytes());
        } else {
            out.push(b'I');
            out.extend_from_slice(&u32::try_from(v).ok()?.to_le_bytes());
        }
    } else if v >= -0x80 {
        out.extend_from_slice(&[b'c', v as i8 as u8]);
    } else if v >= -0x8000 {
        out.push(b's');
        out.extend_from_slice(&(v as i16).to_le_bytes());
    } else {
        out.push(b'i');
        out.extend_from_slice(&i32::try_from(v).ok()?.to_le_bytes());
    }
    Some(())
}

/// A promoted tag's value as the SAM text `TAG:TYPE:VALUE`, for [`encode_tag`]; `None` when
/// the record has none.
/// Written into `field` (cleared first, reused from record to record).
fn promoted_text(
    tag: &str,
    kind: &str,
    values: &dyn Array,
    row: usize,
    subtype: u8,
    field: &mut String,
) -> Option<()> {
    use std::fmt::Write as _;
    if values.is_null(row) {
        return None;
    }
    field.clear();
    field.push_str(tag);
    field.push(':');
    match (kind, values.data_type()) {
        ("i", _) => write!(field, "i:{}", integer(values, row)?).ok()?,
        ("f", DataType::Float32) => write!(
            field,
            "f:{}",
            values
                .as_primitive::<arrow_array::types::Float32Type>()
                .value(row)
        )
        .ok()?,
        ("Z" | "A" | "H", _) => write!(field, "{kind}:{}", text(values, row)?).ok()?,
        ("B:i" | "B:f", DataType::List(_)) => {
            let list = values.as_list::<i32>().value(row);
            if kind == "B:i" {
                let subtype = match subtype {
                    0 => {
                        let elements = list.as_primitive_opt::<arrow_array::types::Int64Type>()?;
                        smallest_subtype(elements.values().iter().copied())
                    }
                    s => s,
                };
                field.push_str("B:");
                field.push(char::from(subtype));
            } else {
                field.push_str(kind);
            }
            for i in 0..list.len() {
                match list.data_type() {
                    DataType::Int64 => write!(
                        field,
                        ",{}",
                        list.as_primitive::<arrow_array::types::Int64Type>()
                            .value(i)
                    ),
                    DataType::Float32 => write!(
                        field,
                        ",{}",
                        list.as_primitive::<arrow_array::types::Float32Type>()
                            .value(i)
                    ),
                    _ => return None,
                }
                .ok()?;
            }
        }
        _ => return None,
    }
    Some(())
}

fn text(array: &dyn Array, row: usize) -> Option<&str> {
    if array.is_null(row) {
        return None;
    }
    match array.data_type() {
        DataType::Utf8 => Some(array.as_string::<i32>().value(row)),
        DataType::Dictionary(_, _) => {
            let dict = array.as_dictionary::<Int32Type>();
            let key = usize::try_from(dict.keys().value(row)).ok()?;
            let values = dict.values().as_string_opt::<i32>()?;
            (key < values.len()).then(|| values.value(key))
        }
        _ => None,
    }
}

fn integer(array: &dyn Array, row: usize) -> Option<i64> {
    if array.is_null(row) {
        return None;
    }
    Some(match array.data_type() {
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(row).into(),
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(row).into(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row).into(),
        DataType::Int64 => array
            .as_primitive::<arrow_array::types::Int64Type>()
            .value(row),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_and_integer_types_are_htslibs() {
        // Unplaced, first base, a 100 bp read at 1 Mbp, one spanning two 16 kbp windows.
        assert_eq!(reg2bin(-1, 0), 4680);
        assert_eq!(reg2bin(0, 1), 4681);
        assert_eq!(reg2bin(1_000_000, 1_000_100), 4681 + 61); // 1,000,000 >> 14
        assert_eq!(reg2bin(16_000, 17_000), 585);
        let typed = |v| {
            let mut out = Vec::new();
            encode_integer(v, &mut out).unwrap();
            out[0]
        };
        assert_eq!(
            [
                typed(0),
                typed(255),
                typed(256),
                typed(70_000),
                typed(-1),
                typed(-200),
                typed(-40_000)
            ],
            [b'C', b'C', b'S', b'I', b'c', b's', b'i']
        );
    }

    #[test]
    fn cigar_text_becomes_operations() {
        let mut ops = vec![99];
        parse_cigar("5H10M2I3=1X", &mut ops).unwrap();
        assert_eq!(
            ops,
            [5 << 4 | 5, 10 << 4, 2 << 4 | 1, 3 << 4 | 7, 1 << 4 | 8]
        );
        parse_cigar("*", &mut ops).unwrap();
        assert!(ops.is_empty(), "the buffer is reused, not appended to");
        assert!(parse_cigar("10Q", &mut ops).is_err());
    }
}
