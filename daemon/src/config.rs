//! Configuration: TOML (`RawConfig`, exactly as written) → resolved options the engine runs on.
//!
//! Every table denies unknown keys, so a typo is an error with its line and column rather than
//! a silently ignored setting. Every key has a default; `config/bamflow.toml` documents them.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::pipeline::schema::{OutputSchema, PromotedTag, SchemaError};
use crate::pipeline::ConvertOptions;

/// Records above this are refused whatever the config says: Arrow text offsets are 32-bit, and
/// a record's text (B arrays print up to 5 bytes per byte) must fit a batch.
const MAX_RECORD_BYTES_CEILING: usize = 256 << 20;

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}: {key}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// The config file as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub daemon: RawDaemon,
    #[serde(default)]
    pub watch: Vec<RawWatch>,
    #[serde(default)]
    pub convert: RawConvert,
    #[serde(default)]
    pub filter: RawFilter,
    #[serde(default)]
    pub plugin: Vec<RawPlugin>,
    #[serde(default)]
    pub coordination: RawCoordination,
}

/// `[daemon]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    pub state_dir: Option<PathBuf>,
    pub threads: Option<usize>,
    pub metrics_listen: Option<String>,
    pub scan_interval_seconds: Option<u64>,
    pub max_concurrent_files: Option<usize>,
}

/// `[[watch]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWatch {
    pub name: String,
    pub path: PathBuf,
    pub pattern: Option<String>,
    pub settle_seconds: Option<u64>,
    pub require_sentinel: Option<String>,
    pub output: Option<String>,
    pub on_success: Option<String>,
    pub on_failure: Option<String>,
    pub convert: Option<RawConvert>,
    pub filter: Option<RawFilter>,
}

/// `[convert]`, and the per-watch `[watch.convert]` overrides.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConvert {
    pub columns: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub zstd_level: Option<i32>,
    pub part_records: Option<u64>,
    pub batch_memory_mb: Option<usize>,
    pub batch_records: Option<usize>,
    pub max_record_bytes: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub row_group_rows: Option<usize>,
    pub row_group_mb: Option<usize>,
}

/// `[filter]`, and the per-watch `[watch.filter]` overrides.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilter {
    pub min_mapq: Option<u8>,
    pub include_flags: Option<u16>,
    pub exclude_flags: Option<u16>,
    pub regions: Option<Vec<String>>,
}

/// `[[plugin]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugin {
    pub path: PathBuf,
    pub sha256: Option<String>,
    pub config: Option<toml::Table>,
}

/// `[coordination]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCoordination {
    pub postgres_url: Option<String>,
}

impl RawConfig {
    /// Reads and parses a config file.
    ///
    /// # Errors
    ///
    /// Returns [`ConfigError::Read`] or [`ConfigError::Parse`] (with line and column).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses config text; `path` only names it in errors.
    ///
    /// # Errors
    ///
    /// Returns [`ConfigError::Parse`] with the line and column of the problem.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |span| span.start);
            let (line, column) = line_column(text, offset);
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().trim_end().to_owned(),
            }
        })
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

/// Values given on the command line, which win over the file.
#[derive(Clone, Debug, Default)]
pub struct ConvertOverrides {
    pub columns: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub zstd_level: Option<i32>,
    pub threads: Option<usize>,
    pub part_records: Option<u64>,
    pub batch_memory_mb: Option<usize>,
    pub batch_records: Option<usize>,
    pub allow_missing_eof: bool,
}

impl RawConvert {
    /// Later values win: `self` is the base, `over` the override.
    pub fn merged(&self, over: &RawConvert) -> RawConvert {
        RawConvert {
            columns: over.columns.clone().or_else(|| self.columns.clone()),
            tags: over.tags.clone().or_else(|| self.tags.clone()),
            zstd_level: over.zstd_level.or(self.zstd_level),
            part_records: over.part_records.or(self.part_records),
            batch_memory_mb: over.batch_memory_mb.or(self.batch_memory_mb),
            batch_records: over.batch_records.or(self.batch_records),
            max_record_bytes: over.max_record_bytes.or(self.max_record_bytes),
            max_header_bytes: over.max_header_bytes.or(self.max_header_bytes),
            row_group_rows: over.row_group_rows.or(self.row_group_rows),
            row_group_mb: over.row_group_mb.or(self.row_group_mb),
        }
    }

    /// Resolves defaults and checks every value.
    ///
    /// # Errors
    ///
    /// Returns [`ConfigError::Invalid`] naming the key, with `path` naming the source.
    pub fn resolve(&self, path: &Path, threads: usize) -> Result<ConvertOptions, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        };
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
            self.row_group_mb.unwrap_or(64),
            "convert.row_group_mb",
            &invalid,
        )?;

        Ok(ConvertOptions {
            schema,
            threads: resolve_threads(threads),
            zstd_level,
            part_records,
            batch_memory_mb,
            batch_records: self.batch_records.filter(|&n| n > 0),
            max_record_bytes,
            max_header_bytes,
            row_group_rows,
            row_group_bytes: row_group_mb << 20,
            allow_missing_eof: false,
        })
    }
}

fn positive<T: PartialEq + Default + std::fmt::Display>(
    value: T,
    key: &str,
    invalid: &impl Fn(&str, String) -> ConfigError,
) -> Result<T, ConfigError> {
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

/// Builds the options of one `convert` run: file values, then flags.
///
/// # Errors
///
/// Returns a [`ConfigError`] when the file cannot be read or a value is invalid.
pub fn convert_options(
    config_path: Option<&Path>,
    flags: &ConvertOverrides,
) -> Result<ConvertOptions, ConfigError> {
    let (raw, path) = match config_path {
        Some(path) => (RawConfig::load(path)?, path.to_owned()),
        None => (RawConfig::default(), PathBuf::from("command line")),
    };
    let over = RawConvert {
        columns: flags.columns.clone(),
        tags: flags.tags.clone(),
        zstd_level: flags.zstd_level,
        part_records: flags.part_records,
        batch_memory_mb: flags.batch_memory_mb,
        batch_records: flags.batch_records,
        ..RawConvert::default()
    };
    refuse_unsupported(&raw, &path)?;
    let threads = flags.threads.or(raw.daemon.threads).unwrap_or(0);
    let mut options = raw.convert.merged(&over).resolve(&path, threads)?;
    options.allow_missing_eof = flags.allow_missing_eof;
    Ok(options)
}

/// Refuses settings this build parses but cannot honour yet, so that a filter is never silently
/// skipped: writing records an operator asked to drop would be worse than stopping.
fn refuse_unsupported(raw: &RawConfig, path: &Path) -> Result<(), ConfigError> {
    let unsupported = |key: &str| ConfigError::Invalid {
        path: path.to_owned(),
        key: key.to_owned(),
        message: "not supported by this version of bamflow yet".to_owned(),
    };
    let filters =
        std::iter::once(&raw.filter).chain(raw.watch.iter().filter_map(|w| w.filter.as_ref()));
    for filter in filters {
        if filter.min_mapq.unwrap_or(0) != 0 {
            return Err(unsupported("filter.min_mapq"));
        }
        if filter.include_flags.unwrap_or(0) != 0 {
            return Err(unsupported("filter.include_flags"));
        }
        if filter.exclude_flags.unwrap_or(0) != 0 {
            return Err(unsupported("filter.exclude_flags"));
        }
        if filter.regions.as_ref().is_some_and(|r| !r.is_empty()) {
            return Err(unsupported("filter.regions"));
        }
    }
    if !raw.plugin.is_empty() {
        return Err(unsupported("plugin"));
    }
    Ok(())
}

/// Checks a whole config file: parse, unknown keys, and every value the engine uses.
///
/// # Errors
///
/// Returns the first [`ConfigError`] found.
pub fn check(path: &Path) -> Result<RawConfig, ConfigError> {
    let raw = RawConfig::load(path)?;
    refuse_unsupported(&raw, path)?;
    let threads = raw.daemon.threads.unwrap_or(0);
    raw.convert.resolve(path, threads)?;
    for watch in &raw.watch {
        if let Some(over) = &watch.convert {
            raw.convert.merged(over).resolve(path, threads)?;
        }
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors_with_line_and_column() {
        let text = "[convert]\nzstd_level = 3\ncolumns_typo = []\n";
        let err = RawConfig::parse(Path::new("x.toml"), text).unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("x.toml:3:1: "), "{message}");
        assert!(message.contains("columns_typo"), "{message}");
    }

    #[test]
    fn wrong_types_name_their_place() {
        let err = RawConfig::parse(Path::new("x.toml"), "[convert]\nzstd_level = \"high\"\n")
            .unwrap_err();
        assert!(err.to_string().starts_with("x.toml:2:14: "), "{err}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let raw = RawConfig::parse(
            Path::new("x.toml"),
            "[convert]\nzstd_level = 9\npart_records = 10\n",
        )
        .unwrap();
        let over = RawConvert {
            zstd_level: Some(1),
            ..RawConvert::default()
        };
        let options = raw
            .convert
            .merged(&over)
            .resolve(Path::new("x.toml"), 1)
            .unwrap();
        assert_eq!(options.zstd_level, 1);
        assert_eq!(options.part_records, 10);
    }

    #[test]
    fn impossible_values_are_refused() {
        let t = |text: &str, key: &str| {
            let raw = RawConfig::parse(Path::new("x.toml"), text).unwrap();
            let err = raw.convert.resolve(Path::new("x.toml"), 1).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        };
        t("[convert]\nzstd_level = 0\n", "convert.zstd_level");
        t("[convert]\npart_records = 0\n", "convert.part_records");
        t(
            "[convert]\nmax_record_bytes = 4294967296\n",
            "convert.max_record_bytes",
        );
        t("[convert]\ntags = [\"NM\"]\n", "convert.tags");
        t("[convert]\ncolumns = [\"nope\"]\n", "convert.columns");
    }

    #[test]
    fn filters_are_refused_until_supported_rather_than_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(&path, "[filter]\nmin_mapq = 20\n").unwrap();
        let err = convert_options(Some(&path), &ConvertOverrides::default()).unwrap_err();
        assert!(err.to_string().contains("filter.min_mapq"), "{err}");
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
