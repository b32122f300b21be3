//! Arrow batches → Parquet part files, each covering a fixed range of input records.
//!
//! A part is written as `part-NNNNN.parquet.partial`, closed, fsynced and renamed: a name
//! without `.partial` is always a complete file. Parts are the unit a checkpoint records.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use serde::Serialize;

use crate::durable::{self, DurableError};

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
}

/// How parts are encoded.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    pub zstd_level: i32,
    /// Input records per part (the checkpoint unit).
    pub part_records: u64,
    /// Row groups close at whichever limit comes first.
    pub row_group_rows: usize,
    pub row_group_bytes: usize,
}

/// One finished part, as the manifest lists it.
#[derive(Clone, Debug, Serialize)]
pub struct PartInfo {
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    /// Input records the part covers (rows plus records dropped by filters).
    pub records: u64,
}

struct OpenPart {
    path: PathBuf,
    writer: ArrowWriter<File>,
    rows: u64,
    records: u64,
}

/// Writes part files into a directory, in order.
pub struct ParquetSink {
    dir: PathBuf,
    schema: SchemaRef,
    properties: WriterProperties,
    part_records: u64,
    current: Option<OpenPart>,
    parts: Vec<PartInfo>,
}

impl ParquetSink {
    /// Prepares to write parts into `dir`, with `metadata` in every part's footer.
    ///
    /// # Errors
    ///
    /// Returns [`WriteError::InvalidZstdLevel`] for a level zstd does not have.
    pub fn new(
        dir: &Path,
        schema: SchemaRef,
        options: &WriteOptions,
        metadata: Vec<KeyValue>,
    ) -> Result<Self, WriteError> {
        let level = ZstdLevel::try_new(options.zstd_level)
            .map_err(|_| WriteError::InvalidZstdLevel(options.zstd_level))?;
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            // Dictionary encoding pays off only for reference names; on read names, bases and
            // qualities it costs time, then falls back anyway.
            .set_dictionary_enabled(false)
            .set_column_dictionary_enabled("rname".into(), true)
            .set_column_dictionary_enabled("rnext".into(), true)
            // Page statistics feed both the column index (page index) and row-group pruning.
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_max_row_group_row_count(Some(options.row_group_rows))
            .set_max_row_group_bytes(Some(options.row_group_bytes))
            .set_key_value_metadata(Some(metadata))
            .set_created_by(format!("bamflow {}", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Self {
            dir: dir.to_owned(),
            schema,
            properties,
            part_records: options.part_records,
            current: None,
            parts: Vec::new(),
        })
    }

    /// Writes a batch that covers `records` input records; commits the part when it is full.
    ///
    /// The caller never lets a batch cross a part boundary.
    ///
    /// # Errors
    ///
    /// Returns a [`WriteError`] when the part cannot be written or committed.
    pub fn accept(&mut self, batch: &RecordBatch, records: u64) -> Result<(), WriteError> {
        let part = self.open_part()?;
        part.writer
            .write(batch)
            .map_err(|source| WriteError::Parquet {
                path: part.path.clone(),
                source,
            })?;
        part.rows += batch.num_rows() as u64;
        part.records += records;
        if part.records >= self.part_records {
            self.commit()?;
        }
        Ok(())
    }

    /// Commits the last part (or an empty one, when the input had no records) and returns the
    /// list of parts.
    ///
    /// # Errors
    ///
    /// Returns a [`WriteError`] when the part cannot be committed.
    pub fn finish(mut self) -> Result<Vec<PartInfo>, WriteError> {
        if self.current.is_some() || self.parts.is_empty() {
            self.open_part()?;
            self.commit()?;
        }
        Ok(self.parts)
    }

    fn open_part(&mut self) -> Result<&mut OpenPart, WriteError> {
        let part = match self.current.take() {
            Some(part) => part,
            None => {
                let path = self
                    .dir
                    .join(format!("{}.partial", part_file_name(self.parts.len())));
                let file = File::create(&path).map_err(|source| WriteError::Create {
                    path: path.clone(),
                    source,
                })?;
                let writer =
                    ArrowWriter::try_new(file, self.schema.clone(), Some(self.properties.clone()))
                        .map_err(|source| WriteError::Parquet {
                            path: path.clone(),
                            source,
                        })?;
                OpenPart {
                    path,
                    writer,
                    rows: 0,
                    records: 0,
                }
            }
        };
        Ok(self.current.insert(part))
    }

    /// Closes the open part, fsyncs it and renames it to its final name.
    fn commit(&mut self) -> Result<(), WriteError> {
        let Some(part) = self.current.take() else {
            return Ok(());
        };
        let OpenPart {
            path,
            writer,
            rows,
            records,
        } = part;
        let parquet = |source| WriteError::Parquet {
            path: path.clone(),
            source,
        };
        let file = writer.into_inner().map_err(parquet)?;
        file.sync_all().map_err(|source| DurableError::Sync {
            path: path.clone(),
            source,
        })?;
        let bytes = file
            .metadata()
            .map_err(|source| DurableError::Sync {
                path: path.clone(),
                source,
            })?
            .len();
        drop(file);

        let name = part_file_name(self.parts.len());
        durable::rename(&path, &self.dir.join(&name))?;
        self.parts.push(PartInfo {
            file: name,
            rows,
            bytes,
            records,
        });
        Ok(())
    }
}

/// `part-00000.parquet`, `part-00001.parquet`, …
pub fn part_file_name(index: usize) -> String {
    format!("part-{index:05}.parquet")
}
