//! Whether a dataset holds exactly what its BAM holds: the header, and every field of every
//! record, compared as values.
//!
//! The BAM side is decoded by the engine's own reader with the dataset's columns and promoted
//! tags (the decoder that tests hold to `samtools view`); the dataset side is read back from
//! its Parquet parts in the manifest's order. Both stream batch by batch, whatever their
//! boundaries, so memory stays bounded. What this catches is the dataset changing after it
//! was written (a damaged or replaced part, a bad copy), and an input that is not the one
//! converted; the operator runs it before deleting the BAM.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int32Type, Int64Type, UInt16Type, UInt8Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::dataset::Manifest;
use crate::options::ConvertConfig;
use crate::pipeline::{self, ConvertError, Engine};

/// Differences listed in a report; the rest are only counted.
const LISTED: usize = 10;

/// Why a verification could not run (a difference is not an error: see [`Report`]).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The dataset folder has no readable manifest.
    #[error("{}: not a complete bamflow dataset: {reason}", path.display())]
    NotADataset {
        /// The folder.
        path: PathBuf,
        /// What is missing or unreadable.
        reason: String,
    },
    /// The dataset leaves out records or fields on purpose, so it cannot equal the BAM.
    #[error("{}: cannot be verified against a BAM: {reason}", path.display())]
    Partial {
        /// The folder.
        path: PathBuf,
        /// What it leaves out.
        reason: String,
    },
    /// A part could not be read.
    #[error("{}: cannot read part: {reason}", path.display())]
    Part {
        /// The part file.
        path: PathBuf,
        /// The Parquet reader's error.
        reason: String,
    },
    /// The BAM could not be read.
    #[error(transparent)]
    Bam(#[from] ConvertError),
}

/// One field that differs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Difference {
    /// The record, counting from 1 (0 for the header or the record count).
    pub record: u64,
    /// The column, `header` or `records`.
    pub field: String,
    /// The value in the dataset.
    pub dataset: String,
    /// The value in the BAM.
    pub bam: String,
}

/// What a verification found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    /// Records compared (the shorter side, when their counts differ).
    pub records: u64,
    /// Records with at least one differing field, plus the header and a count mismatch.
    pub differing: u64,
    /// The first differences, in record order.
    pub differences: Vec<Difference>,
}

impl Report {
    /// Header and every record identical.
    pub fn identical(&self) -> bool {
        self.differing == 0
    }

    fn note(&mut self, difference: Difference) {
        self.differing += 1;
        if self.differences.len() < LISTED {
            self.differences.push(difference);
        }
    }
}

/// Compares the dataset folder `dataset` with the BAM `bam`: header, record count, and every
/// field of every record, in order.
///
/// # Errors
///
/// A [`VerifyError`] when either side cannot be read, or when the dataset was written with
/// filters (it then cannot hold every record).
pub fn verify(engine: &Engine, dataset: &Path, bam: &Path) -> Result<Report, VerifyError> {
    let manifest = read_complete_manifest(dataset)?;
    let options = ConvertConfig {
        columns: Some(manifest.columns.clone()),
        tags: Some(manifest.tags.clone()),
        ..ConvertConfig::default()
    }
    .resolve(0)
    .map_err(|e| VerifyError::Partial {
        path: dataset.to_owned(),
        reason: format!("its columns cannot be read back: {e}"),
    })?;

    let mut report = Report::default();
    let (ours, theirs) = (pipeline::read_header(dataset)?, pipeline::read_header(bam)?);
    if ours != theirs {
        let line = |text: &str, i: usize| text.lines().nth(i).unwrap_or("(none)").to_owned();
        let i = ours
            .lines()
            .zip(theirs.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| ours.lines().count().min(theirs.lines().count()));
        report.note(Difference {
            record: 0,
            field: format!("header line {}", i + 1),
            dataset: line(&ours, i),
            bam: line(&theirs, i),
        });
    }

    let scanned = engine.scan(bam, &options)?;
    let mut bam_side = Cursor::new(scanned.map(|batch| batch.map_err(VerifyError::Bam)));
    let mut dataset_side = Cursor::new(parts(dataset, &manifest));
    loop {
        let (Some(a), Some(b)) = (dataset_side.peek()?, bam_side.peek()?) else {
            break;
        };
        let n = a.num_rows().min(b.num_rows());
        compare(&a.slice(0, n), &b.slice(0, n), report.records, &mut report);
        report.records += n as u64;
        dataset_side.advance(n);
        bam_side.advance(n);
    }
    let (left, right) = (dataset_side.count_rest()?, bam_side.count_rest()?);
    if left != right {
        report.note(Difference {
            record: 0,
            field: "records".to_owned(),
            dataset: (report.records + left).to_string(),
            bam: (report.records + right).to_string(),
        });
    }
    Ok(report)
}

/// The manifest of a complete dataset that holds every record and every field: not written
/// with filters, nor with a column subset.
pub(crate) fn read_complete_manifest(dataset: &Path) -> Result<Manifest, VerifyError> {
    let manifest = read_manifest(dataset)?;
    match partial_reasons(&manifest).into_iter().next() {
        Some(reason) => Err(VerifyError::Partial {
            path: dataset.to_owned(),
            reason,
        }),
        None => Ok(manifest),
    }
}

/// Why a dataset does not hold every record and every field of its input: written with
/// filters, or without some columns. Empty for a complete one.
pub(crate) fn partial_reasons(manifest: &Manifest) -> Vec<String> {
    let mut reasons = Vec::new();
    if !manifest.filters.is_empty() {
        reasons.push(format!(
            "it was written with filters ({})",
            manifest.filters.join(", ")
        ));
    }
    // Every field of the record: the default columns (the lossless `tags` text among them).
    let every = ConvertConfig::default()
        .resolve(1)
        .map(|options| options.schema.column_names())
        .unwrap_or_default();
    let missing: Vec<String> = every
        .into_iter()
        .filter(|name| !manifest.columns.iter().any(|c| c == name))
        .collect();
    if !missing.is_empty() {
        reasons.push(format!(
            "it was written without the columns {}",
            missing.join(", ")
        ));
    }
    reasons
}

pub(crate) fn read_manifest(dataset: &Path) -> Result<Manifest, VerifyError> {
    let not_a_dataset = |reason: String| VerifyError::NotADataset {
        path: dataset.to_owned(),
        reason,
    };
    if !dataset.join("_SUCCESS").is_file() {
        return Err(not_a_dataset("no _SUCCESS".to_owned()));
    }
    let bytes = std::fs::read(dataset.join("_manifest.json"))
        .map_err(|e| not_a_dataset(format!("_manifest.json: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| not_a_dataset(format!("_manifest.json: {e}")))
}

/// The record batches of the dataset's parts, in the manifest's order.
pub(crate) fn parts<'a>(
    dataset: &'a Path,
    manifest: &'a Manifest,
) -> impl Iterator<Item = Result<RecordBatch, VerifyError>> + 'a {
    manifest.parts.iter().flat_map(move |part| {
        let path = dataset.join(&part.file);
        let fail = |reason: String| VerifyError::Part {
            path: path.clone(),
            reason,
        };
        let reader = File::open(&path)
            .map_err(|e| fail(e.to_string()))
            .and_then(|file| {
                ParquetRecordBatchReaderBuilder::try_new(file)
                    .and_then(|builder| builder.build())
                    .map_err(|e| fail(e.to_string()))
            });
        let batches: Box<dyn Iterator<Item = Result<RecordBatch, VerifyError>>> = match reader {
            Ok(reader) => Box::new(reader.map(move |batch| {
                batch.map_err(|e| VerifyError::Part {
                    path: dataset.join(&part.file),
                    reason: e.to_string(),
                })
            })),
            Err(error) => Box::new(std::iter::once(Err(error))),
        };
        batches
    })
}

/// A stream of batches read a slice at a time.
struct Cursor<I> {
    batches: I,
    current: Option<RecordBatch>,
}

impl<I: Iterator<Item = Result<RecordBatch, VerifyError>>> Cursor<I> {
    fn new(batches: I) -> Self {
        Self {
            batches,
            current: None,
        }
    }

    /// The rows not yet compared of the current batch (the next non-empty one when it is
    /// used up); `None` at the end.
    fn peek(&mut self) -> Result<Option<&RecordBatch>, VerifyError> {
        while self.current.as_ref().is_none_or(|b| b.num_rows() == 0) {
            match self.batches.next() {
                Some(batch) => self.current = Some(batch?),
                None => return Ok(None),
            }
        }
        Ok(self.current.as_ref())
    }

    fn advance(&mut self, rows: usize) {
        if let Some(batch) = &mut self.current {
            *batch = batch.slice(rows, batch.num_rows() - rows);
        }
    }

    /// Rows left, reading the rest.
    fn count_rest(&mut self) -> Result<u64, VerifyError> {
        let mut rows = self.current.take().map_or(0, |b| b.num_rows() as u64);
        for batch in self.batches.by_ref() {
            rows += batch?.num_rows() as u64;
        }
        Ok(rows)
    }
}

/// Compares two equally long slices column by column; rows `first + 1 ..` are their record
/// numbers.
fn compare(dataset: &RecordBatch, bam: &RecordBatch, first: u64, report: &mut Report) {
    let schema = dataset.schema();
    let mut differing_rows = std::collections::BTreeMap::new();
    for (i, field) in schema.fields().iter().enumerate() {
        let (a, b) = (plain(dataset.column(i)), plain(bam.column(i)));
        if a.to_data() == b.to_data() {
            continue;
        }
        for row in 0..a.len() {
            let (x, y) = (value(&a, row), value(&b, row));
            if x != y {
                differing_rows.entry(row).or_insert_with(Vec::new).push((
                    field.name().clone(),
                    x,
                    y,
                ));
            }
        }
    }
    for (row, fields) in differing_rows {
        report.differing += 1;
        for (field, dataset, bam) in fields {
            if report.differences.len() < LISTED {
                report.differences.push(Difference {
                    record: first + row as u64 + 1,
                    field,
                    dataset,
                    bam,
                });
            }
        }
    }
}

/// Dictionary columns as their values, so that two encodings of the same strings compare
/// equal.
fn plain(array: &ArrayRef) -> ArrayRef {
    if let DataType::Dictionary(_, _) = array.data_type() {
        let dict = array.as_dictionary::<Int32Type>();
        if let Ok(values) = arrow_select::take::take(dict.values(), dict.keys(), None) {
            return values;
        }
    }
    array.clone()
}

/// One value as text, for a report.
fn value(array: &ArrayRef, row: usize) -> String {
    if array.is_null(row) {
        return "null".to_owned();
    }
    match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().value(row).to_owned(),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(row).to_string(),
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(row).to_string(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row).to_string(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).to_string(),
        DataType::Float32 => array.as_primitive::<Float32Type>().value(row).to_string(),
        DataType::List(_) => {
            let list = array.as_list::<i32>().value(row);
            let items: Vec<String> = (0..list.len()).map(|i| value(&list, i)).collect();
            format!("[{}]", items.join(","))
        }
        other => format!("({other} value)"),
    }
}

/// The report as an operator reads it: a verdict, then the first differences.
pub fn describe(report: &Report, dataset: &Path, bam: &Path) -> String {
    if report.identical() {
        return format!(
            "identical: {} and {}: header and {} records",
            dataset.display(),
            bam.display(),
            report.records
        );
    }
    let mut text = format!(
        "different: {} and {}: {} of {} records (or header/count) differ",
        dataset.display(),
        bam.display(),
        report.differing,
        report.records
    );
    for d in &report.differences {
        let at = if d.record == 0 {
            String::new()
        } else {
            format!("record {} ", d.record)
        };
        text.push_str(&format!(
            "\n  {at}{}: dataset {:?}, BAM {:?}",
            d.field, d.dataset, d.bam
        ));
    }
    text
}
