//! Arrow batches → Parquet part files, each covering a fixed range of input records.
//!
//! A part is written as `part-NNNNN.parquet.partial`, closed, fsynced and renamed: a name
//! without `.partial` is always a complete file. Parts are the unit a checkpoint records.
//!
//! zstd dominates the CPU time of a conversion, so columns are encoded and compressed in
//! parallel on the shared pool: each column of the open row group has its own
//! `ArrowColumnWriter`, and every accepted chunk is cut into cells (`pipeline::cells`) whose
//! per-column leaves are written concurrently. Finished column chunks are appended to the file
//! in schema order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{Schema, SchemaRef};
use parquet::arrow::arrow_writer::ArrowRowGroupWriterFactory;
use parquet::arrow::{ArrowSchemaConverter, ArrowWriter};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterPropertiesBuilder};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;
use rayon::ThreadPool;
use serde::{Deserialize, Serialize};

use super::busy::{BusyStage, BusyTimes};
use super::cells::{Cutter, RowGroupLimits, CELL_ROWS};
use super::encode::ColumnEncoders;
use super::part_file::{Finished, PartFile};
use crate::durable::{self, DurableError};
use crate::faults;

/// Suffix of a part that is still being written.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// Encodings chosen per column; every other column is PLAIN, or a dictionary
/// ([`DICTIONARY_COLUMNS`]).
///
/// Sorted positions become small deltas: `pos` and `end` shrink from 8.3 to 2.0 MB, and
/// `pnext`, which follows `pos` within an insert size, from 5.0 to 2.8 MB (2 M generated short
/// reads).
///
/// Strings stay PLAIN although DELTA_LENGTH_BYTE_ARRAY, which keeps the lengths apart from the
/// bytes, gave 2.8% smaller output (shared-bench short reads: 0.829 → 0.852 × the BAM): Spark
/// 3.5's default (vectorized) Parquet reader fails on that encoding ("Failed to read 150
/// bytes") in files from parquet-rs and from Arrow C++ alike, and Velox and Iceberg's vectorized
/// readers did not read it at all until recently. A dataset every engine reads by default is
/// worth more than 2.8%. `bench/spark_check.py` repeats the check.
const COLUMN_ENCODINGS: &[(&str, Encoding)] = &[
    ("pos", Encoding::DELTA_BINARY_PACKED),
    ("end", Encoding::DELTA_BINARY_PACKED),
    ("pnext", Encoding::DELTA_BINARY_PACKED),
];

/// Columns with few distinct values, written as a dictionary and small keys. A column whose
/// dictionary outgrows its page falls back to PLAIN for the rest of the row group, so a file
/// with many distinct values pays only the failed tries.
///
/// Reference names have a few hundred values at most. FLAG, MAPQ and TLEN (insert sizes) have
/// a few dozen to a few thousand, and as keys they compress better than as PLAIN integers or
/// as deltas: shared-bench short reads 2.2 → 1.1 MB (FLAG), 0.33 → 0.23 MB (MAPQ) and 6.1 →
/// 4.9 MB (TLEN; DELTA_BINARY_PACKED gave 5.6), 313.3 → 310.9 MB in all, with no more CPU.
/// DELTA_BINARY_PACKED on FLAG was smaller there (1.6 MB) but 50% larger on generated reads;
/// the dictionary was smaller on both.
const DICTIONARY_COLUMNS: &[&str] = &["rname", "rnext", "flag", "mapq", "tlen"];

/// Columns written without statistics (min/max, null count) and so without a column index;
/// their pages still have an offset index.
///
/// No query prunes on the minimum or maximum of a read's bases, qualities or tag text, yet
/// keeping them compares every value against the page's bounds: 2.4% of a short-read
/// conversion's CPU (perf, `memcmp` under parquet's `write_gather`). Read names keep theirs, for
/// lookups by name in name-sorted files.
const NO_STATISTICS_COLUMNS: &[&str] = &["seq", "qual", "tags"];

/// Why output could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot create {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {} failed", path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: ParquetError,
    },
    #[error(transparent)]
    Durable(#[from] DurableError),
    #[error("zstd level {0} is outside 1..=22")]
    InvalidZstdLevel(i32),
    #[error("zstd hash log {0} is outside 6..=30")]
    InvalidZstdHashLog(u32),
    #[error("zstd target length {0} is over 131072")]
    InvalidZstdTargetLength(u32),
}

/// A column's zstd settings: its level, and the parameters the level trial set beyond it.
#[derive(Clone, Copy, Debug)]
struct ColumnZstd {
    level: i32,
    hash_log: Option<u32>,
    target_length: Option<u32>,
}

impl ColumnZstd {
    /// The level alone, with zstd's own parameters for it.
    fn level(level: i32) -> Self {
        Self {
            level,
            hash_log: None,
            target_length: None,
        }
    }

    fn codec(self) -> Result<Compression, WriteError> {
        let level = self.level;
        let mut zstd =
            ZstdLevel::try_new(level).map_err(|_| WriteError::InvalidZstdLevel(level))?;
        if let Some(hash_log) = self.hash_log {
            zstd = zstd
                .with_hash_log(hash_log)
                .map_err(|_| WriteError::InvalidZstdHashLog(hash_log))?;
        }
        if let Some(target_length) = self.target_length {
            zstd = zstd
                .with_target_length(target_length)
                .map_err(|_| WriteError::InvalidZstdTargetLength(target_length))?;
        }
        Ok(Compression::ZSTD(zstd))
    }
}

/// Sets each column's own level, match table and target length, where it has them, on every
/// Parquet leaf under the column's name (a promoted list column's values are a leaf below it).
/// `dir` names the output in an error.
fn column_levels(
    mut builder: WriterPropertiesBuilder,
    schema: &Schema,
    options: &WriteOptions,
    dir: &Path,
) -> Result<WriterPropertiesBuilder, WriteError> {
    let levels = &options.column_zstd_levels;
    let hash_logs = &options.column_zstd_hash_logs;
    let target_lengths = &options.column_zstd_target_lengths;
    if levels.is_empty() && hash_logs.is_empty() && target_lengths.is_empty() {
        return Ok(builder);
    }
    let descriptor = ArrowSchemaConverter::new()
        .convert(schema)
        .map_err(|source| WriteError::Parquet {
            path: dir.to_owned(),
            source,
        })?;
    for leaf in descriptor.columns() {
        let Some(column) = leaf.path().parts().first() else {
            continue;
        };
        let own_level = levels.get(column).copied();
        let zstd = ColumnZstd {
            hash_log: hash_logs.get(column).copied(),
            target_length: target_lengths.get(column).copied(),
            ..ColumnZstd::level(own_level.unwrap_or(options.zstd_level))
        };
        if own_level.is_some() || zstd.hash_log.is_some() || zstd.target_length.is_some() {
            builder = builder.set_column_compression(leaf.path().clone(), zstd.codec()?);
        }
    }
    Ok(builder)
}

/// How parts are encoded.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    pub zstd_level: i32,
    /// Levels of single columns, by output column name; they win over `zstd_level`.
    pub column_zstd_levels: BTreeMap<String, i32>,
    /// zstd match-table sizes (log2 of the entries) of single columns, where the level trial
    /// found a small table pays (`compression::small_table`); the others keep their level's.
    pub column_zstd_hash_logs: BTreeMap<String, u32>,
    /// zstd target lengths of single columns, where the level trial found literals only pay
    /// (`compression::literals_only`); the others keep their level's.
    pub column_zstd_target_lengths: BTreeMap<String, u32>,
    /// Input records per part (the checkpoint unit).
    pub part_records: u64,
    /// Row groups close at whichever limit comes first: rows, or Arrow bytes of the rows'
    /// values (`pipeline::cells`).
    pub row_group_rows: usize,
    pub row_group_bytes: usize,
    /// Full row groups whose columns may still be encoding while the next one starts: more
    /// than one lets the heaviest column (QUAL) compress on several cores at once.
    pub row_groups_in_flight: usize,
}

/// One finished part, as the manifest and the checkpoint list it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    /// Input records the part covers (rows plus records dropped by filters).
    pub records: u64,
    /// CRC32 of the file's bytes, checked before a resume builds on the part.
    pub crc32: u32,
}

/// Decoded rows on their way to a part, with the input they cover.
#[derive(Clone, Debug)]
pub struct Chunk {
    pub rows: RecordBatch,
    /// Input records the rows come from (more than the rows when filters dropped some).
    pub records: u64,
    /// BGZF virtual offset just after the last of those records.
    pub end: u64,
    /// Records each filter dropped, in filter order.
    pub filtered: Vec<u64>,
}

/// A part that has just become durable, and where the input of the next one starts.
#[derive(Clone, Debug)]
pub struct Committed {
    pub part: PartInfo,
    pub next_virtual_offset: u64,
    /// How long closing, syncing and renaming the part took.
    pub seconds: f64,
    /// Records each filter dropped from the part's input, in filter order.
    pub filtered: Vec<u64>,
}

struct OpenPart {
    busy: Arc<BusyTimes>,
    path: PathBuf,
    file: SerializedFileWriter<PartFile>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    pool: Arc<ThreadPool>,
    cutter: Cutter,
    /// Full row groups that may still be encoding while the next one fills.
    in_flight: usize,
    /// Encoders of the open row group, one per leaf column, in schema order.
    row_group: Option<ColumnEncoders>,
    /// Full row groups still encoding, oldest first; appended to the file in this order.
    closing: std::collections::VecDeque<ColumnEncoders>,
    /// Row groups started in this part (the index of the next one).
    row_groups_started: usize,
    rows: u64,
    records: u64,
    filtered: Vec<u64>,
}

/// Writes part files into a directory, in order.
pub struct ParquetSink {
    dir: PathBuf,
    schema: SchemaRef,
    properties: WriterProperties,
    part_records: u64,
    row_group_rows: usize,
    row_group_bytes: usize,
    row_groups_in_flight: usize,
    pool: Arc<ThreadPool>,
    busy: Arc<BusyTimes>,
    current: Option<OpenPart>,
    /// Parts committed so far, including those of an earlier run this one resumes.
    parts: usize,
    /// Virtual offset after the last record accepted.
    last_end: u64,
}

impl ParquetSink {
    /// Prepares to write parts into `dir`, with `metadata` in every part's footer, encoding
    /// columns on `pool`.
    ///
    /// # Errors
    ///
    /// Returns [`WriteError::InvalidZstdLevel`] for a level zstd does not have.
    pub fn new(
        dir: &Path,
        schema: SchemaRef,
        options: &WriteOptions,
        metadata: Vec<KeyValue>,
        pool: Arc<ThreadPool>,
        busy: Arc<BusyTimes>,
    ) -> Result<Self, WriteError> {
        let mut builder = WriterProperties::builder()
            .set_compression(ColumnZstd::level(options.zstd_level).codec()?)
            // Dictionary encoding pays off only on [`DICTIONARY_COLUMNS`]; on read names, bases
            // and qualities it costs time, then falls back anyway.
            .set_dictionary_enabled(false)
            // Page statistics feed both the column index (page index) and row-group pruning.
            .set_statistics_enabled(EnabledStatistics::Page)
            // One write per cell, each a single mini-batch: pages end where the rows say.
            .set_write_batch_size(CELL_ROWS)
            .set_key_value_metadata(Some(metadata))
            .set_created_by(format!("bamflow {}", env!("CARGO_PKG_VERSION")));
        for (column, encoding) in COLUMN_ENCODINGS {
            builder = builder.set_column_encoding(ColumnPath::from(*column), *encoding);
        }
        for column in DICTIONARY_COLUMNS {
            builder = builder.set_column_dictionary_enabled(ColumnPath::from(*column), true);
        }
        for column in NO_STATISTICS_COLUMNS {
            let column = ColumnPath::from(*column);
            builder = builder.set_column_statistics_enabled(column, EnabledStatistics::None);
        }
        let properties = column_levels(builder, &schema, options, dir)?.build();
        Ok(Self {
            dir: dir.to_owned(),
            schema,
            properties,
            part_records: options.part_records,
            row_group_rows: options.row_group_rows,
            row_group_bytes: options.row_group_bytes,
            row_groups_in_flight: options.row_groups_in_flight.max(1),
            pool,
            busy,
            current: None,
            parts: 0,
            last_end: 0,
        })
    }

    /// Continues the numbering after `parts` parts an earlier run committed.
    #[must_use]
    pub fn resume_after(mut self, parts: usize) -> Self {
        self.parts = parts;
        self
    }

    /// The index of the part being written (or to be written next).
    pub fn part_index(&self) -> usize {
        self.parts
    }

    /// Whether accepting `chunk` fills the open part, so that [`ParquetSink::accept`] commits
    /// it.
    pub fn fills_part(&self, chunk: &Chunk) -> bool {
        let written = self.current.as_ref().map_or(0, |part| part.records);
        written + chunk.records >= self.part_records
    }

    /// Writes the next chunk; commits the part when it fills and hands it to `on_commit` before
    /// writing on, so a checkpoint never lags more than one part behind.
    ///
    /// The caller never lets a chunk straddle a part boundary.
    ///
    /// # Errors
    ///
    /// Returns a [`WriteError`] when a part cannot be written or committed, or the error of
    /// `on_commit`. The part being written is then abandoned: its file is never synced again,
    /// and the part is redone.
    pub fn accept<E: From<WriteError>>(
        &mut self,
        chunk: &Chunk,
        on_commit: &mut impl FnMut(Committed) -> Result<(), E>,
    ) -> Result<(), E> {
        self.last_end = chunk.end;
        let part = self.open_part()?;
        part.write_rows(&chunk.rows)?;
        part.records += chunk.records;
        add_counts(&mut part.filtered, &chunk.filtered);
        if part.records >= self.part_records {
            if let Some(committed) = self.commit()? {
                on_commit(committed)?;
            }
        }
        Ok(())
    }

    /// Commits the last part (or an empty one, when the input had no records at all) and
    /// returns it.
    ///
    /// # Errors
    ///
    /// Returns a [`WriteError`] when the part cannot be committed.
    pub fn finish(mut self) -> Result<Option<Committed>, WriteError> {
        if self.current.is_some() || self.parts == 0 {
            self.open_part()?;
            return self.commit();
        }
        Ok(None)
    }

    fn open_part(&mut self) -> Result<&mut OpenPart, WriteError> {
        let limits = RowGroupLimits {
            rows: self.row_group_rows,
            bytes: self.row_group_bytes,
        };
        let part = match self.current.take() {
            Some(part) => part,
            None => {
                let path = self
                    .dir
                    .join(format!("{}{PARTIAL_SUFFIX}", part_file_name(self.parts)));
                let create = |source| WriteError::Create {
                    path: path.clone(),
                    source,
                };
                let file = PartFile::create(&path).map_err(create)?;
                // ArrowWriter stores the Arrow schema (ARROW:schema) in the footer metadata;
                // it is then taken apart so columns can be encoded in parallel.
                let parquet = |source| WriteError::Parquet {
                    path: path.clone(),
                    source,
                };
                let (file, factory) =
                    ArrowWriter::try_new(file, self.schema.clone(), Some(self.properties.clone()))
                        .and_then(ArrowWriter::into_serialized_writer)
                        .map_err(parquet)?;
                OpenPart {
                    busy: Arc::clone(&self.busy),
                    path,
                    file,
                    factory,
                    schema: Arc::clone(&self.schema),
                    pool: Arc::clone(&self.pool),
                    cutter: Cutter::new(limits),
                    in_flight: self.row_groups_in_flight,
                    row_group: None,
                    closing: std::collections::VecDeque::new(),
                    row_groups_started: 0,
                    rows: 0,
                    records: 0,
                    filtered: Vec::new(),
                }
            }
        };
        Ok(self.current.insert(part))
    }

    /// Closes the open part, fsyncs it and renames it to its final name.
    fn commit(&mut self) -> Result<Option<Committed>, WriteError> {
        let Some(mut part) = self.current.take() else {
            return Ok(None);
        };
        let started = Instant::now();
        // Times its own encoding and writing.
        part.end_row_group()?;
        part.flush_closing(0)?;
        let busy = Arc::clone(&self.busy);
        let closing = Instant::now();
        let result = self.close_part(part, started);
        busy.add(BusyStage::Write, closing.elapsed());
        result
    }

    /// Writes the footer, fsyncs and renames a part whose row groups are all flushed.
    fn close_part(
        &mut self,
        part: OpenPart,
        started: Instant,
    ) -> Result<Option<Committed>, WriteError> {
        let OpenPart {
            path,
            file,
            rows,
            records,
            filtered,
            ..
        } = part;
        let parquet = |source| WriteError::Parquet {
            path: path.clone(),
            source,
        };
        let finished = file
            .into_inner()
            .map_err(parquet)?
            .finish()
            .map_err(|source| DurableError::Write {
                path: path.clone(),
                source,
            })?;
        let Finished { file, crc32, bytes } = finished;
        let sync = |source| DurableError::Sync {
            path: path.clone(),
            source,
        };
        faults::point("part-written").map_err(sync)?;
        // On failure the file is dropped unsynced: after a failed fsync the kernel may have
        // discarded the dirty pages, so a second fsync could falsely succeed.
        faults::point("part-fsync")
            .and_then(|()| file.sync_all())
            .map_err(sync)?;
        drop(file);
        faults::point("part-synced").map_err(sync)?;

        let name = part_file_name(self.parts);
        durable::rename(&path, &self.dir.join(&name))?;
        faults::point("part-renamed").map_err(sync)?;
        self.parts += 1;
        tracing::debug!(part = %name, rows, records, "Part committed.");
        Ok(Some(Committed {
            part: PartInfo {
                file: name,
                rows,
                bytes,
                records,
                crc32,
            },
            next_virtual_offset: self.last_end,
            seconds: started.elapsed().as_secs_f64(),
            filtered,
        }))
    }
}

impl OpenPart {
    /// Encodes rows into the open row group, column by column in parallel, ending row groups
    /// at their limits (so a batch may end one row group and start the next).
    fn write_rows(&mut self, rows: &RecordBatch) -> Result<(), WriteError> {
        let cells = self
            .busy
            .time(BusyStage::Encode, || self.cutter.cut(rows))
            .map_err(|source| self.parquet_error(source.into()))?;
        let mut group = Vec::with_capacity(cells.len());
        for cell in cells {
            group.push(cell.rows);
            if cell.ends_row_group {
                self.submit(&group)?;
                group.clear();
                self.close_row_group();
                // Waits for the oldest only when too many are in flight; appends any done.
                self.flush_closing(self.in_flight - 1)?;
            }
        }
        self.submit(&group)
    }

    /// Queues cells of the open row group (starting it if need be) for encoding.
    fn submit(&mut self, cells: &[RecordBatch]) -> Result<(), WriteError> {
        if cells.is_empty() {
            return Ok(());
        }
        let arrays = arrays_by_column(cells);
        if self.row_group.is_none() {
            let index = self.row_groups_started;
            self.row_groups_started += 1;
            let writers = self
                .factory
                .create_column_writers(index)
                .map_err(|source| self.parquet_error(source))?;
            let encoders = ColumnEncoders::new(
                self.schema.fields(),
                writers,
                Arc::clone(&self.pool),
                Arc::clone(&self.busy),
            )
            .map_err(|source| self.parquet_error(source))?;
            self.row_group = Some(encoders);
        }
        if let Some(encoders) = &self.row_group {
            encoders
                .submit(arrays)
                .map_err(|source| self.parquet_error(source))?;
        }
        self.rows += cells.iter().map(|cell| cell.num_rows() as u64).sum::<u64>();
        Ok(())
    }

    /// Ends the open row group where it stands, with the rows carried for its next cell.
    fn end_row_group(&mut self) -> Result<(), WriteError> {
        if let Some(rest) = self.cutter.finish_row_group() {
            self.submit(&[rest])?;
        }
        self.close_row_group();
        Ok(())
    }

    fn parquet_error(&self, source: ParquetError) -> WriteError {
        WriteError::Parquet {
            path: self.path.clone(),
            source,
        }
    }

    /// Ends the open row group's encoders: they go on encoding and closing in the background
    /// until flushed.
    fn close_row_group(&mut self) {
        if let Some(encoders) = self.row_group.take() {
            encoders.seal();
            self.closing.push_back(encoders);
        }
    }

    /// Appends closing row groups, oldest first, until at most `keep` remain: waits for those
    /// over the limit, and takes any others whose columns are already done.
    fn flush_closing(&mut self, keep: usize) -> Result<(), WriteError> {
        while let Some(front) = self.closing.front() {
            if self.closing.len() <= keep && !front.is_done() {
                break;
            }
            if let Some(encoders) = self.closing.pop_front() {
                self.append_row_group(encoders)?;
            }
        }
        Ok(())
    }

    /// Waits for a row group's columns to close and appends them to the file in schema order.
    fn append_row_group(&mut self, encoders: ColumnEncoders) -> Result<(), WriteError> {
        let parquet = |source| WriteError::Parquet {
            path: self.path.clone(),
            source,
        };
        let chunks = encoders.finish().map_err(parquet)?;
        self.busy
            .time(BusyStage::Write, || {
                let mut row_group = self.file.next_row_group()?;
                for chunk in chunks {
                    chunk.append_to_row_group(&mut row_group)?;
                }
                row_group.close()?;
                // Buffered bytes of the row group stay behind; the next one carries them.
                durable::start_writeback(self.file.inner().file());
                crate::heap::row_group_written();
                Ok(())
            })
            .map_err(parquet)
    }
}

/// Splits cells into columns: for each column, in schema order, its array of each cell in order.
fn arrays_by_column(cells: &[RecordBatch]) -> Vec<Vec<ArrayRef>> {
    let columns = cells.first().map_or(0, RecordBatch::num_columns);
    (0..columns)
        .map(|i| {
            cells
                .iter()
                .map(|cell| Arc::clone(cell.column(i)))
                .collect()
        })
        .collect()
}

/// Adds per-filter counts element by element.
fn add_counts(total: &mut Vec<u64>, more: &[u64]) {
    if total.len() < more.len() {
        total.resize(more.len(), 0);
    }
    for (t, m) in total.iter_mut().zip(more) {
        *t += m;
    }
}

/// `part-00000.parquet`, `part-00001.parquet`, …
pub fn part_file_name(index: usize) -> String {
    format!("part-{index:05}.parquet")
}

/// Whether `name` is a committed part's name.
pub fn is_part_file_name(name: &str) -> bool {
    name.strip_prefix("part-")
        .and_then(|rest| rest.strip_suffix(".parquet"))
        .is_some_and(|n| n.len() >= 5 && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use arrow_array::{Int32Array, RecordBatch};
    use arrow_schema::{DataType, Field, Schema};
    use parquet::file::reader::{FileReader, SerializedFileReader};

    use super::*;

    #[test]
    fn columns_get_their_own_level_and_match_search() {
        let text = |name| Field::new(name, DataType::Utf8, true);
        let schema = Schema::new(vec![text("seq"), text("qual"), text("qname")]);
        let options = WriteOptions {
            zstd_level: 1,
            column_zstd_levels: BTreeMap::from([("qual".to_owned(), 1), ("qname".to_owned(), 3)]),
            column_zstd_hash_logs: BTreeMap::from([("seq".to_owned(), 6), ("qual".to_owned(), 8)]),
            column_zstd_target_lengths: BTreeMap::from([("qname".to_owned(), 1 << 17)]),
            part_records: 1,
            row_group_rows: 1,
            row_group_bytes: 1,
            row_groups_in_flight: 1,
        };
        let builder = WriterProperties::builder().set_compression(Compression::UNCOMPRESSED);
        let properties = column_levels(builder, &schema, &options, Path::new("out"))
            .unwrap()
            .build();
        let codec = |c| properties.compression(&ColumnPath::from(c));
        let level = |level| ZstdLevel::try_new(level).unwrap();
        // SEQ at the default level with its table, QUAL at its own level with its table.
        let seq = Compression::ZSTD(level(1).with_hash_log(6).unwrap());
        assert_eq!(codec("seq"), seq);
        let qual = Compression::ZSTD(level(1).with_hash_log(8).unwrap());
        assert_eq!(codec("qual"), qual);
        let qname = Compression::ZSTD(level(3).with_target_length(1 << 17).unwrap());
        assert_eq!(codec("qname"), qname);
    }

    fn sink(dir: &Path, part_records: u64, row_group_rows: usize) -> ParquetSink {
        sink_in_flight(dir, part_records, row_group_rows, 1)
    }

    fn sink_in_flight(
        dir: &Path,
        part_records: u64,
        row_group_rows: usize,
        row_groups_in_flight: usize,
    ) -> ParquetSink {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int32, false)]));
        let options = WriteOptions {
            zstd_level: 3,
            column_zstd_levels: BTreeMap::new(),
            column_zstd_hash_logs: BTreeMap::new(),
            column_zstd_target_lengths: BTreeMap::new(),
            part_records,
            row_group_rows,
            row_group_bytes: 1 << 30,
            row_groups_in_flight,
        };
        let pool = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap(),
        );
        ParquetSink::new(dir, schema, &options, Vec::new(), pool, Arc::default()).unwrap()
    }

    fn batch(start: i32, rows: i32) -> Chunk {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int32, false)]));
        let column = Arc::new(Int32Array::from_iter_values(start..start + rows));
        Chunk {
            rows: RecordBatch::try_new(schema, vec![column]).unwrap(),
            records: rows as u64,
            end: (start + rows) as u64,
            filtered: Vec::new(),
        }
    }

    /// Accepts every chunk, then finishes; returns every part committed.
    fn write_all(mut sink: ParquetSink, chunks: &[Chunk]) -> Vec<Committed> {
        let mut committed = Vec::new();
        for chunk in chunks {
            let mut keep = |c| -> Result<(), WriteError> {
                committed.push(c);
                Ok(())
            };
            sink.accept(chunk, &mut keep).unwrap();
        }
        committed.extend(sink.finish().unwrap());
        committed
    }

    fn read_values(path: &Path) -> Vec<i32> {
        use arrow_array::cast::AsArray;
        use arrow_array::types::Int32Type;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            File::open(path).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        reader
            .flat_map(|b| {
                b.unwrap()
                    .column(0)
                    .as_primitive::<Int32Type>()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    fn row_groups(path: &Path) -> Vec<i64> {
        let reader = SerializedFileReader::new(File::open(path).unwrap()).unwrap();
        reader
            .metadata()
            .row_groups()
            .iter()
            .map(|rg| rg.num_rows())
            .collect()
    }

    #[test]
    fn parts_cover_part_records_and_row_groups_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let chunks: Vec<_> = (0..7).map(|i| batch(i * 100, 100)).collect();
        let committed = write_all(sink(dir.path(), 500, 120), &chunks);

        let summary: Vec<_> = committed
            .iter()
            .map(|c| {
                let p = &c.part;
                (p.file.as_str(), p.rows, p.records, c.next_virtual_offset)
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("part-00000.parquet", 500, 500, 500),
                ("part-00001.parquet", 200, 200, 700)
            ]
        );
        for c in &committed {
            let path = dir.path().join(&c.part.file);
            let (bytes, crc) = crate::checkpoint::crc32_of(&path).unwrap();
            assert_eq!(
                (bytes, crc),
                (c.part.bytes, c.part.crc32),
                "{}",
                c.part.file
            );
        }
        let parts: Vec<_> = committed.into_iter().map(|c| c.part).collect();
        assert_eq!(
            row_groups(&dir.path().join("part-00000.parquet")),
            [120, 120, 120, 120, 20]
        );
        assert_eq!(
            row_groups(&dir.path().join("part-00001.parquet")),
            [120, 80]
        );
        assert!(!dir.path().join("part-00000.parquet.partial").exists());

        let values: Vec<i32> = parts
            .iter()
            .flat_map(|p| read_values(&dir.path().join(&p.file)))
            .collect();
        assert_eq!(
            values,
            (0..700).collect::<Vec<_>>(),
            "rows in order, each once"
        );
    }

    #[test]
    fn row_groups_in_flight_are_appended_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let chunks: Vec<_> = (0..40).map(|i| batch(i * 250, 250)).collect();
        let committed = write_all(sink_in_flight(dir.path(), 6_000, 700, 3), &chunks);
        let mut values = Vec::new();
        for c in &committed {
            let path = dir.path().join(&c.part.file);
            let groups = row_groups(&path);
            assert!(
                groups[..groups.len() - 1].iter().all(|&n| n == 700),
                "{groups:?}"
            );
            values.extend(read_values(&path));
        }
        assert_eq!(committed.len(), 2);
        assert_eq!(values, (0..10_000).collect::<Vec<_>>());
    }

    #[test]
    fn many_small_chunks_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let chunks: Vec<_> = (0..300).map(|i| batch(i * 37, 37)).collect();
        let committed = write_all(sink(dir.path(), 1_000_000, 1_000), &chunks);
        let values = read_values(&dir.path().join(&committed[0].part.file));
        assert_eq!(values, (0..300 * 37).collect::<Vec<_>>());
    }

    #[test]
    fn no_records_still_give_one_empty_part() {
        let dir = tempfile::tempdir().unwrap();
        let committed = write_all(sink(dir.path(), 10, 10), &[]);
        assert_eq!(committed.len(), 1);
        assert_eq!(committed[0].part.rows, 0);
        assert!(row_groups(&dir.path().join("part-00000.parquet")).is_empty());
    }
}
