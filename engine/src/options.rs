//! Conversion settings: as written ([`ConvertConfig`], [`FilterConfig`]; serde, every field
//! optional) and resolved ([`ConvertOptions`], what the engine runs on). `resolve` is the one
//! place values are checked, whether they come from the daemon's TOML, the command line or
//! Python.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::pipeline::compression::ColumnLevel;
use crate::pipeline::filter::{FilterOptions, PluginSpec, Region};
use crate::pipeline::schema::{Column, OutputSchema, PromotedTag, SchemaError, StandardColumn};
use crate::pipeline::ConvertOptions;

/// Records above this are refused whatever the config says: Arrow text offsets are 32-bit, and
/// a record's text (B arrays print up to 5 bytes per byte) must fit a batch.
const MAX_RECORD_BYTES_CEILING: usize = 256 << 20;

/// A setting that cannot be used: its key, as the config file spells it, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct OptionError {
    /// The key, as the config file spells it (`convert.zstd_level`).
    pub key: String,
    /// What is wrong with its value.
    pub message: String,
}

impl OptionError {
    fn new(key: &str, message: String) -> Self {
        Self {
            key: key.to_owned(),
            message,
        }
    }
}

/// The conversion settings as written: every field optional, `None` taking the default. The
/// daemon's `[convert]` table and `[watch.convert]` overrides, the command line's flags and
/// the Python keywords all become one of these, and [`ConvertConfig::resolve`] is the one
/// place they are checked.
///
/// ```
/// use bamflow_engine::options::ConvertConfig;
///
/// let options = ConvertConfig {
///     columns: Some(vec!["qname".into(), "flag".into(), "NM".into()]),
///     tags: Some(vec!["NM:i".into()]),
///     ..ConvertConfig::default()
/// }
/// .resolve(2)?;
/// assert_eq!(options.schema.column_names(), ["qname", "flag", "NM"]);
/// # Ok::<(), bamflow_engine::options::OptionError>(())
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ConvertConfig {
    /// Columns to write, in this order; `None` or empty: all, the standard ones then the promoted tags.
    pub columns: Option<Vec<String>>,
    /// Tags promoted to typed columns, as `TAG:TYPE` (`NM:i`, `CB:Z`, `ML:B:i`).
    pub tags: Option<Vec<String>>,
    /// zstd level (1-22) of every column without its own; default 3.
    pub zstd_level: Option<i32>,
    /// Columns with their own level, or `auto`; replaces the default (every text column `auto`).
    pub column_zstd_levels: Option<BTreeMap<String, ColumnLevel>>,
    /// Input records per part: the checkpoint unit; default 4,000,000.
    pub part_records: Option<u64>,
    /// Memory for record batches in flight, MiB; default 64.
    pub batch_memory_mb: Option<usize>,
    /// Records per batch; `None` or 0: chosen by the profile from `batch_memory_mb`.
    pub batch_records: Option<usize>,
    /// Largest record accepted, bytes; default 64 MiB.
    pub max_record_bytes: Option<usize>,
    /// Largest header accepted (text and reference list), bytes; default 128 MiB.
    pub max_header_bytes: Option<usize>,
    /// Rows after which a row group closes; default 500,000.
    pub row_group_rows: Option<usize>,
    /// MiB of Arrow data (the rows' values as a reader holds them) after which a row group
    /// closes; default 128.
    pub row_group_mb: Option<usize>,
}

/// The built-in filters as written (`[filter]`, `[watch.filter]`, the filter flags).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct FilterConfig {
    /// Keep records with MAPQ at least this (`samtools view -q`).
    pub min_mapq: Option<u8>,
    /// Keep records with all these FLAG bits (`-f`).
    pub include_flags: Option<u16>,
    /// Drop records with any of these FLAG bits (`-F`).
    pub exclude_flags: Option<u16>,
    /// Keep records overlapping any of these regions (needs an index).
    pub regions: Option<Vec<String>>,
}

impl FilterConfig {
    /// Later values win: `self` is the base, `over` the override.
    pub fn merged(&self, over: &FilterConfig) -> FilterConfig {
        FilterConfig {
            min_mapq: over.min_mapq.or(self.min_mapq),
            include_flags: over.include_flags.or(self.include_flags),
            exclude_flags: over.exclude_flags.or(self.exclude_flags),
            regions: over.regions.clone().or_else(|| self.regions.clone()),
        }
    }

    /// The filters to run: these built-ins, then `plugins` in order.
    ///
    /// # Errors
    ///
    /// An [`OptionError`] for a region that does not parse.
    pub fn resolve(&self, plugins: Vec<PluginSpec>) -> Result<FilterOptions, OptionError> {
        let regions = self
            .regions
            .iter()
            .flatten()
            .map(|text| Region::parse(text))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|message| OptionError::new("filter.regions", message))?;
        Ok(FilterOptions {
            min_mapq: self.min_mapq.unwrap_or(0),
            include_flags: self.include_flags.unwrap_or(0),
            exclude_flags: self.exclude_flags.unwrap_or(0),
            regions,
            plugins,
        })
    }
}

impl ConvertConfig {
    /// Later values win: `self` is the base, `over` the override.
    pub fn merged(&self, over: &ConvertConfig) -> ConvertConfig {
        ConvertConfig {
            columns: over.columns.clone().or_else(|| self.columns.clone()),
            tags: over.tags.clone().or_else(|| self.tags.clone()),
            zstd_level: over.zstd_level.or(self.zstd_level),
            column_zstd_levels: over
                .column_zstd_levels
                .clone()
                .or_else(|| self.column_zstd_levels.clone()),
            part_records: over.part_records.or(self.part_records),
            batch_memory_mb: over.batch_memory_mb.or(self.batch_memory_mb),
            batch_records: over.batch_records.or(self.batch_records),
            max_record_bytes: over.max_record_bytes.or(self.max_record_bytes),
            max_header_bytes: over.max_header_bytes.or(self.max_header_bytes),
            row_group_rows: over.row_group_rows.or(self.row_group_rows),
            row_group_mb: over.row_group_mb.or(self.row_group_mb),
        }
    }

    /// Resolves defaults and checks every value; `threads` 0 means every core. The filters
    /// are none: set [`ConvertOptions::filters`] from a [`FilterConfig`].
    ///
    /// # Errors
    ///
    /// Returns an [`OptionError`] naming the key (as the config file spells it) and the
    /// problem.
    pub fn resolve(&self, threads: usize) -> Result<ConvertOptions, OptionError> {
        let invalid = |key: &str, message: String| OptionError::new(key, message);
        let schema_error = |key: &str, e: SchemaError| invalid(key, e.to_string());

        let tags = self
            .tags
            .iter()
            .flatten()
            .map(|s| s.parse::<PromotedTag>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| schema_error("convert.tags", e))?;
        let columns = self.columns.clone().unwrap_or_default();
        let schema = OutputSchema::new(&columns, &tags).map_err(|e| {
            let key = if matches!(e, SchemaError::DuplicateTag(_)) {
                "convert.tags"
            } else {
                "convert.columns"
            };
            schema_error(key, e)
        })?;

        let zstd_level = self.zstd_level.unwrap_or(3);
        if !(1..=22).contains(&zstd_level) {
            return Err(invalid(
                "convert.zstd_level",
                format!("{zstd_level} is outside 1..=22"),
            ));
        }
        let column_zstd_levels = self
            .column_zstd_levels
            .clone()
            .unwrap_or_else(default_column_zstd_levels);
        for (column, level) in &column_zstd_levels {
            let key = "convert.column_zstd_levels";
            let Some(named) = OutputSchema::column_named(column, &schema.promoted) else {
                return Err(invalid(key, format!("{column:?} is not a column")));
            };
            match level {
                ColumnLevel::Level(level) if !(1..=22).contains(level) => {
                    let message = format!("{column}: {level} is outside 1..=22");
                    return Err(invalid(key, message));
                }
                ColumnLevel::Auto(_) if !OutputSchema::is_text(named, &schema.promoted) => {
                    let message = format!("{column}: \"auto\" is only for text columns");
                    return Err(invalid(key, message));
                }
                _ => {}
            }
        }
        let part_records = positive(
            self.part_records.unwrap_or(4_000_000),
            "convert.part_records",
            &invalid,
        )?;
        let batch_memory_mb = positive(
            self.batch_memory_mb.unwrap_or(64),
            "convert.batch_memory_mb",
            &invalid,
        )?;
        let max_record_bytes = self.max_record_bytes.unwrap_or(64 << 20);
        if !(32..=MAX_RECORD_BYTES_CEILING).contains(&max_record_bytes) {
            let message = format!("{max_record_bytes} is outside 32..={MAX_RECORD_BYTES_CEILING}");
            return Err(invalid("convert.max_record_bytes", message));
        }
        let max_header_bytes = positive(
            self.max_header_bytes.unwrap_or(128 << 20),
            "convert.max_header_bytes",
            &invalid,
        )?;
        let row_group_rows = positive(
            self.row_group_rows.unwrap_or(500_000),
            "convert.row_group_rows",
            &invalid,
        )?;
        let row_group_mb = positive(
            self.row_group_mb.unwrap_or(128),
            "convert.row_group_mb",
            &invalid,
        )?;

        Ok(ConvertOptions {
            schema,
            threads: resolve_threads(threads),
            zstd_level,
            column_zstd_levels,
            part_records,
            batch_memory_mb,
            batch_records: self.batch_records.filter(|&n| n > 0),
            max_record_bytes,
            max_header_bytes,
            row_group_rows,
            row_group_bytes: row_group_mb << 20,
            allow_missing_eof: false,
            // The daemon always continues an interrupted conversion; `convert` asks.
            resume: true,
            epoch: None,
            filters: FilterOptions::default(),
        })
    }
}

/// Every standard text column's level is tried on each file's own sample;
/// [`crate::pipeline::compression`] says why.
pub fn default_column_zstd_levels() -> BTreeMap<String, ColumnLevel> {
    StandardColumn::ALL
        .iter()
        .filter(|&&c| OutputSchema::is_text(Column::Standard(c), &[]))
        .map(|c| (c.name().to_owned(), ColumnLevel::AUTO))
        .collect()
}

fn positive<T: PartialEq + Default + std::fmt::Display>(
    value: T,
    key: &str,
    invalid: &impl Fn(&str, String) -> OptionError,
) -> Result<T, OptionError> {
    if value == T::default() {
        return Err(invalid(key, "must be at least 1".to_owned()));
    }
    Ok(value)
}

/// `0` means every core.
pub fn resolve_threads(threads: usize) -> usize {
    if threads > 0 {
        return threads;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Default for ConvertOptions {
    /// Every default of [`ConvertConfig`], on every core, without filters.
    fn default() -> Self {
        ConvertConfig::default()
            .resolve(0)
            .expect("the default settings are valid (tested)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_resolve() {
        let options = ConvertOptions::default();
        assert_eq!(options.schema.column_names().len(), 13);
        assert_eq!((options.zstd_level, options.part_records), (3, 4_000_000));
        assert!(options.threads >= 1);
    }

    #[test]
    fn values_are_checked_and_named_by_their_key() {
        let bad = ConvertConfig {
            zstd_level: Some(30),
            ..ConvertConfig::default()
        };
        let error = bad.resolve(1).unwrap_err();
        assert_eq!(error.key, "convert.zstd_level");
        assert_eq!(
            error.to_string(),
            "convert.zstd_level: 30 is outside 1..=22"
        );
        let region = FilterConfig {
            regions: Some(vec!["chr1:9-5".into()]),
            ..FilterConfig::default()
        };
        assert_eq!(
            region.resolve(Vec::new()).unwrap_err().key,
            "filter.regions"
        );
    }
}
