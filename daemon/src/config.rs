//! Configuration: TOML (`RawConfig`, exactly as written) → resolved options the engine runs on.
//!
//! Unknown keys are errors — all of them at once, each with its line and column — so a typo is
//! never a silently ignored setting. Every key has a default; `config/bamflow.toml` documents them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use bamflow_engine::options::{ConvertConfig, FilterConfig, OptionError};
use bamflow_engine::pipeline::filter::{FilterOptions, PluginSpec};
use bamflow_engine::pipeline::ConvertOptions;

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
    #[error("{}", unknown_keys(path, keys))]
    UnknownKeys {
        path: PathBuf,
        keys: Vec<UnknownKey>,
    },
    #[error("{}: {key}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{}:{line}:{column}: {key}: {message}", path.display())]
    InvalidAt {
        path: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
}

/// One line per unknown key, each `file:line:column: unknown key …`.
fn unknown_keys(path: &Path, keys: &[UnknownKey]) -> String {
    let lines: Vec<String> = keys
        .iter()
        .map(|k| {
            format!(
                "{}:{}:{}: unknown key `{}` (config/bamflow.toml documents every key)",
                path.display(),
                k.line,
                k.column,
                k.key
            )
        })
        .collect();
    lines.join("\n")
}

impl ConfigError {
    /// Adds the line and column of the offending key, found in the config text.
    fn located(self, text: &str) -> Self {
        match self {
            Self::Invalid { path, key, message } => match locate(text, &key) {
                Some((line, column)) => Self::InvalidAt {
                    path,
                    line,
                    column,
                    key,
                    message,
                },
                None => Self::Invalid { path, key, message },
            },
            other => other,
        }
    }
}

/// Finds `table.key`, `watch[i].key` or `plugin[i].key` in config text: the key's line within
/// its table (the i-th `[[watch]]` or `[[plugin]]`), or the table header when the key is not
/// written there.
fn locate(text: &str, key: &str) -> Option<(usize, usize)> {
    let array = |table: &str, name: &'static str| {
        table
            .strip_prefix(name)
            .and_then(|t| t.strip_prefix('['))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|i| i.parse::<usize>().ok())
    };
    let (table, index, field) = match key.split_once('.') {
        Some((table, field)) => match (array(table, "watch"), array(table, "plugin")) {
            (Some(i), _) => ("[[watch]]", i, field),
            (_, Some(i)) => ("[[plugin]]", i, field),
            _ => (table, 0, field),
        },
        None => (key, 0, ""),
    };
    let header = if table.starts_with('[') {
        table.to_owned()
    } else {
        format!("[{table}]")
    };
    let mut seen = 0;
    let mut in_table = None;
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            if in_table.is_some() {
                break;
            }
            if trimmed.starts_with(&header) {
                if seen == index {
                    in_table = Some(number + 1);
                }
                seen += 1;
            }
            continue;
        }
        let field_here = !field.is_empty()
            && trimmed
                .strip_prefix(field)
                .is_some_and(|rest| rest.trim_start().starts_with('='));
        if in_table.is_some() && field_here {
            return Some((number + 1, line.len() - trimmed.len() + 1));
        }
    }
    in_table.map(|line| (line, 1))
}

/// The config file as written.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawConfig {
    #[serde(default)]
    pub daemon: RawDaemon,
    #[serde(default)]
    pub watch: Vec<RawWatch>,
    #[serde(default)]
    pub convert: ConvertConfig,
    #[serde(default)]
    pub filter: FilterConfig,
    #[serde(default)]
    pub plugin: Vec<RawPlugin>,
    #[serde(default)]
    pub coordination: RawCoordination,
}

/// `[daemon]`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawDaemon {
    pub state_dir: Option<PathBuf>,
    pub threads: Option<usize>,
    pub metrics_listen: Option<String>,
    pub scan_interval_seconds: Option<u64>,
    pub max_concurrent_files: Option<usize>,
}

/// `[[watch]]`.
#[derive(Clone, Debug, Deserialize)]
pub struct RawWatch {
    pub name: String,
    pub path: PathBuf,
    pub pattern: Option<String>,
    pub settle_seconds: Option<u64>,
    pub require_sentinel: Option<String>,
    pub incomplete_timeout_seconds: Option<u64>,
    pub output: Option<String>,
    /// Settings of an `s3://` output's store beyond the AWS environment and profile files.
    pub output_options: Option<std::collections::BTreeMap<String, String>>,
    pub on_success: Option<String>,
    pub on_failure: Option<String>,
    pub follow_symlinks: Option<bool>,
    pub verify: Option<bool>,
    pub convert: Option<ConvertConfig>,
    pub filter: Option<FilterConfig>,
}

/// `[[plugin]]`.
#[derive(Clone, Debug, Deserialize)]
pub struct RawPlugin {
    pub path: PathBuf,
    pub sha256: Option<String>,
    pub config: Option<toml::Table>,
}

/// `[coordination]`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawCoordination {
    pub postgres_url: Option<String>,
    pub lease_seconds: Option<u64>,
}

impl RawConfig {
    /// Reads and parses a config file.
    ///
    /// # Errors
    ///
    /// Returns [`ConfigError::Read`] or [`ConfigError::Parse`] (with line and column).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_text(path)?;
        Self::parse(path, &text)
    }

    /// Parses config text; `path` only names it in errors.
    ///
    /// # Errors
    ///
    /// Returns [`ConfigError::Parse`] with the line and column of the problem.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let parse_error = |e: toml::de::Error| {
            let offset = e.span().map_or(0, |span| span.start);
            let (line, column) = line_column(text, offset);
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().trim_end().to_owned(),
            }
        };
        let deserializer = toml::Deserializer::parse(text).map_err(parse_error)?;
        let mut unknown = Vec::new();
        let raw = serde_ignored::deserialize(deserializer, |key| unknown.push(key_path(&key)))
            .map_err(parse_error)?;
        if unknown.is_empty() {
            return Ok(raw);
        }
        let keys = unknown
            .iter()
            .map(|key| {
                let (line, column) = key_span(text, key).map_or((1, 1), |at| line_column(text, at));
                UnknownKey {
                    line,
                    column,
                    key: key.join("."),
                }
            })
            .collect::<Vec<_>>();
        Err(ConfigError::UnknownKeys {
            path: path.to_owned(),
            keys: sorted(keys),
        })
    }
}

/// One key the configuration does not know, where it is written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnknownKey {
    pub line: usize,
    pub column: usize,
    /// Dotted, with array indexes: `watch.0.settle_secs`.
    pub key: String,
}

fn sorted(mut keys: Vec<UnknownKey>) -> Vec<UnknownKey> {
    keys.sort();
    keys
}

/// The segments of a key path as serde_ignored reports it: table keys and array indexes.
fn key_path(path: &serde_ignored::Path<'_>) -> Vec<String> {
    use serde_ignored::Path;
    match path {
        Path::Root => Vec::new(),
        Path::Seq { parent, index } => {
            let mut segments = key_path(parent);
            segments.push(index.to_string());
            segments
        }
        Path::Map { parent, key } => {
            let mut segments = key_path(parent);
            segments.push(key.clone());
            segments
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_path(parent),
    }
}

/// The byte offset of the key at `path` in the config text.
fn key_span(text: &str, path: &[String]) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let document = DeTable::parse(text).ok()?;
    let mut table = document.get_ref();
    let mut offset = None;
    let mut segments = path.iter().peekable();
    while let Some(key) = segments.next() {
        let (name, value) = table.get_key_value(key.as_str())?;
        offset = Some(name.span().start);
        let mut value = value.get_ref();
        if let (DeValue::Array(items), Some(_)) = (value, segments.peek()) {
            let index: usize = segments.next()?.parse().ok()?;
            value = items.get(index)?.get_ref();
        }
        match value {
            DeValue::Table(inner) => table = inner,
            _ => break,
        }
    }
    offset
}

/// Reads a config file's text.
fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
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
    /// The `[convert]` keys given as flags.
    pub convert: ConvertConfig,
    pub threads: Option<usize>,
    pub allow_missing_eof: bool,
    pub resume: bool,
    pub filter: FilterConfig,
    /// Plugin libraries, each with an empty config.
    pub plugins: Vec<PathBuf>,
}

/// Resolves the `[convert]` settings of `path`; `threads` 0 means every core.
///
/// # Errors
///
/// [`ConfigError::Invalid`] naming the key.
pub fn resolve_convert(
    convert: &ConvertConfig,
    path: &Path,
    threads: usize,
) -> Result<ConvertOptions, ConfigError> {
    convert.resolve(threads).map_err(|e| invalid(path, e))
}

/// The filters to run: the built-ins of `filter`, then `plugins` in order.
///
/// # Errors
///
/// [`ConfigError::Invalid`] for a region that does not parse.
pub fn resolve_filter(
    filter: &FilterConfig,
    plugins: &[RawPlugin],
    path: &Path,
) -> Result<FilterOptions, ConfigError> {
    let plugins = plugins
        .iter()
        .map(|plugin| PluginSpec {
            path: plugin.path.clone(),
            sha256: plugin.sha256.clone().filter(|s| !s.is_empty()),
            config_json: plugin
                .config
                .as_ref()
                .and_then(|c| serde_json::to_string(c).ok())
                .unwrap_or_else(|| "{}".to_owned()),
        })
        .collect();
    filter.resolve(plugins).map_err(|e| invalid(path, e))
}

fn invalid(path: &Path, error: OptionError) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_owned(),
        key: error.key,
        message: error.message,
    }
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
    let threads = flags.threads.or(raw.daemon.threads).unwrap_or(0);
    let mut options = resolve_convert(&raw.convert.merged(&flags.convert), &path, threads)?;
    options.allow_missing_eof = flags.allow_missing_eof;
    options.resume = flags.resume;
    let mut plugins = raw.plugin.clone();
    plugins.extend(flags.plugins.iter().map(|path| RawPlugin {
        path: path.clone(),
        sha256: None,
        config: None,
    }));
    options.filters = resolve_filter(&raw.filter.merged(&flags.filter), &plugins, &path)?;
    Ok(options)
}

/// The configuration `bamflow daemon` runs without `--config`: drop BAMs into `./inbox`, find
/// datasets in `./outbox`, state in `./.bamflow` (DESIGN.md §5).
pub const EMBEDDED_DEFAULT: &str = r#"
[daemon]
state_dir = "./.bamflow"
metrics_listen = "127.0.0.1:9860"

[[watch]]
name = "inbox"
path = "./inbox"
settle_seconds = 5
output = "./outbox/{stem}"
"#;

/// What happens to an input file after its conversion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Move into this folder (relative paths are relative to the watched folder).
    Move(PathBuf),
    Delete,
    Keep,
}

impl std::fmt::Display for Disposition {
    /// As written in the config: `move:<dir>`, `delete` or `keep`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Move(dir) => write!(f, "move:{}", dir.display()),
            Self::Delete => f.write_str("delete"),
            Self::Keep => f.write_str("keep"),
        }
    }
}

/// One watched folder, resolved.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    pub name: String,
    pub path: PathBuf,
    pub pattern: glob::Pattern,
    pub settle: Duration,
    /// Sentinel file name, `{name}` standing for the BAM's file name.
    pub sentinel: Option<String>,
    /// How long a settled file may go without its BGZF EOF block before it is failed as
    /// incomplete; `None` waits forever.
    pub incomplete_timeout: Option<Duration>,
    /// Output template with `{watch}`, `{stem}` and `{sample}`: a folder, or `s3://…`.
    pub output: String,
    /// Settings of an `s3://` output's store (object_store keys), over the AWS environment.
    pub output_options: Vec<(String, String)>,
    pub on_success: Disposition,
    pub on_failure: Disposition,
    /// Take symlinks to files (DESIGN.md §9: not followed unless configured).
    pub follow_symlinks: bool,
    /// Compare each dataset with its input (`bamflow verify`) before `on_success` files the
    /// input away; a difference fails the file.
    pub verify: bool,
    pub convert: ConvertOptions,
}

/// The daemon's configuration, resolved.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    pub scan_interval: Duration,
    /// Worker threads of the one pool all conversions share.
    pub threads: usize,
    /// Files converted at once.
    pub max_concurrent_files: usize,
    /// Where `/metrics` and `/healthz` are served; `None` when `metrics_listen = ""`.
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub watches: Vec<WatchConfig>,
    /// `[coordination]`: claims and ledger in PostgreSQL, when several hosts share the drop
    /// folders; `None` on one host.
    pub coordination: Option<crate::coordination::Settings>,
}

impl RawConfig {
    /// Resolves and checks everything the daemon uses. Folders are not checked for existence
    /// here (the daemon does that when it starts), so a config can be validated elsewhere.
    ///
    /// # Errors
    ///
    /// Returns the first [`ConfigError::Invalid`], naming the key.
    pub fn resolve_daemon(&self, path: &Path) -> Result<DaemonConfig, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        };
        let threads = self.daemon.threads.unwrap_or(0);
        if self.watch.is_empty() {
            return Err(invalid(
                "watch",
                "at least one [[watch]] is needed".to_owned(),
            ));
        }
        let mut watches = Vec::with_capacity(self.watch.len());
        for (i, raw) in self.watch.iter().enumerate() {
            let key = |k: &str| format!("watch[{i}].{k}");
            if raw.name.is_empty()
                || !raw
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(invalid(
                    &key("name"),
                    format!(
                        "{:?} must be non-empty letters, digits, '-', '_' or '.'",
                        raw.name
                    ),
                ));
            }
            if watches.iter().any(|w: &WatchConfig| w.name == raw.name) {
                return Err(invalid(
                    &key("name"),
                    format!("{:?} is used twice", raw.name),
                ));
            }
            let pattern_text = raw.pattern.as_deref().unwrap_or("*.bam");
            let pattern = glob::Pattern::new(pattern_text)
                .map_err(|e| invalid(&key("pattern"), e.to_string()))?;
            let output = raw
                .output
                .clone()
                .unwrap_or_else(|| "./outbox/{watch}/{stem}".to_owned());
            check_template(&output).map_err(|m| invalid(&key("output"), m))?;
            let output_options: Vec<(String, String)> = raw
                .output_options
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect();
            for (option, _) in &output_options {
                bamflow_store::bucket::check_option(option)
                    .map_err(|m| invalid(&key(&format!("output_options.{option}")), m))?;
            }
            let on_success = disposition(raw.on_success.as_deref().unwrap_or("move:done"))
                .map_err(|m| invalid(&key("on_success"), m))?;
            let on_failure = disposition(raw.on_failure.as_deref().unwrap_or("move:failed"))
                .map_err(|m| invalid(&key("on_failure"), m))?;
            if on_failure == Disposition::Delete {
                return Err(invalid(
                    &key("on_failure"),
                    "an input is never deleted on failure; use move:<dir> or keep".to_owned(),
                ));
            }
            let convert = match &raw.convert {
                Some(over) => self.convert.merged(over),
                None => self.convert.clone(),
            };
            let filter = match &raw.filter {
                Some(over) => self.filter.merged(over),
                None => self.filter.clone(),
            };
            let mut convert = resolve_convert(&convert, path, threads)?;
            convert.filters = resolve_filter(&filter, &self.plugin, path)?;
            let verify = raw.verify.unwrap_or(false);
            if verify {
                let every = ConvertConfig::default()
                    .resolve(1)
                    .map(|o| o.schema.column_names())
                    .unwrap_or_default();
                let columns = convert.schema.column_names();
                let subset = every.iter().any(|c| !columns.contains(c));
                if !convert.filters.describe().is_empty() || subset {
                    return Err(invalid(
                        &key("verify"),
                        "a dataset can equal its input only when written without filters and with every column".to_owned(),
                    ));
                }
            }
            watches.push(WatchConfig {
                name: raw.name.clone(),
                path: raw.path.clone(),
                pattern,
                settle: Duration::from_secs(raw.settle_seconds.unwrap_or(30)),
                sentinel: raw.require_sentinel.clone().filter(|s| !s.is_empty()),
                incomplete_timeout: raw
                    .incomplete_timeout_seconds
                    .filter(|&s| s > 0)
                    .map(Duration::from_secs),
                output,
                output_options,
                on_success,
                on_failure,
                follow_symlinks: raw.follow_symlinks.unwrap_or(false),
                verify,
                convert,
            });
        }
        let scan_interval = self.daemon.scan_interval_seconds.unwrap_or(10);
        if scan_interval == 0 {
            return Err(invalid(
                "daemon.scan_interval_seconds",
                "must be at least 1".to_owned(),
            ));
        }
        let max_concurrent_files = self.daemon.max_concurrent_files.unwrap_or(1);
        if max_concurrent_files == 0 {
            return Err(invalid(
                "daemon.max_concurrent_files",
                "must be at least 1".to_owned(),
            ));
        }
        let metrics_listen = match self.daemon.metrics_listen.as_deref() {
            Some("") => None,
            listen => Some(listen.unwrap_or("127.0.0.1:9860").parse().map_err(|e| {
                invalid(
                    "daemon.metrics_listen",
                    format!("{e}: expected an address like 127.0.0.1:9860, or \"\" for none"),
                )
            })?),
        };
        let lease_seconds = self.coordination.lease_seconds.unwrap_or(60);
        if lease_seconds < 3 {
            return Err(invalid(
                "coordination.lease_seconds",
                "must be at least 3 (the lease is renewed every third of it)".to_owned(),
            ));
        }
        let coordination = match self.coordination.postgres_url.as_deref() {
            None | Some("") => None,
            Some(url) => {
                crate::coordination::tls::parse(url).map_err(|e| {
                    invalid(
                        "coordination.postgres_url",
                        format!("{e}: expected e.g. postgresql://bamflow@db/bamflow"),
                    )
                })?;
                Some(crate::coordination::Settings {
                    url: url.to_owned(),
                    lease: Duration::from_secs(lease_seconds),
                })
            }
        };
        Ok(DaemonConfig {
            coordination,
            metrics_listen,
            state_dir: self
                .daemon
                .state_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("/var/lib/bamflow")),
            scan_interval: Duration::from_secs(scan_interval),
            threads: bamflow_engine::options::resolve_threads(threads),
            max_concurrent_files,
            watches,
        })
    }
}

/// `move:<dir>`, `delete` or `keep`.
fn disposition(text: &str) -> Result<Disposition, String> {
    match text {
        "delete" => Ok(Disposition::Delete),
        "keep" => Ok(Disposition::Keep),
        _ => match text.strip_prefix("move:") {
            Some(dir) if !dir.is_empty() => Ok(Disposition::Move(PathBuf::from(dir))),
            _ => Err(format!("{text:?} is not move:<dir>, delete or keep")),
        },
    }
}

/// Output templates may use `{watch}`, `{stem}` and `{sample}`, and must name each file apart.
fn check_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| format!("unclosed {{ in {template:?}"))?
            + start;
        let name = &rest[start + 1..end];
        if !matches!(name, "watch" | "stem" | "sample") {
            return Err(format!(
                "unknown placeholder {{{name}}}: use {{watch}}, {{stem}} or {{sample}}"
            ));
        }
        rest = &rest[end + 1..];
    }
    if !template.contains("{stem}") {
        return Err(
            "must contain {stem}, or every file of a watch would get the same output".to_owned(),
        );
    }
    if bamflow_store::ObjectUrl::is_remote(template) {
        let filled = template
            .replace("{watch}", "w")
            .replace("{stem}", "s")
            .replace("{sample}", "x");
        bamflow_store::ObjectUrl::parse(&filled).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Checks a whole config file: parse, unknown keys, every value the engine uses, and the
/// filesystem (watched folders exist; settle windows fit network filesystems). Errors name
/// the file, line and column.
///
/// # Errors
///
/// Returns the first [`ConfigError`] found.
pub fn check(path: &Path) -> Result<RawConfig, ConfigError> {
    let text = read_text(path)?;
    let raw = RawConfig::parse(path, &text)?;
    let checked = (|| {
        resolve_convert(&raw.convert, path, raw.daemon.threads.unwrap_or(0))?;
        if !raw.watch.is_empty() {
            check_filesystem(&raw.resolve_daemon(path)?, path)?;
        }
        check_plugins(&raw, path)
    })();
    checked.map_err(|e: ConfigError| e.located(&text))?;
    Ok(raw)
}

/// Loads every `[[plugin]]` as a conversion would (permissions, pin, symbol, ABI), so an
/// operator learns of a bad plugin before the first file fails on it.
fn check_plugins(raw: &RawConfig, path: &Path) -> Result<(), ConfigError> {
    for (i, plugin) in raw.plugin.iter().enumerate() {
        let sha256 = plugin.sha256.as_deref().filter(|s| !s.is_empty());
        bamflow_engine::plugin::Plugin::load(&plugin.path, sha256).map_err(|e| {
            ConfigError::Invalid {
                path: path.to_owned(),
                key: format!("plugin[{i}].path"),
                message: e.to_string(),
            }
        })?;
    }
    Ok(())
}

/// Loads the daemon's configuration from a file and checks it as `check-config` does.
///
/// # Errors
///
/// Returns the first [`ConfigError`], with line and column where it can be found.
pub fn load_daemon(path: &Path) -> Result<DaemonConfig, ConfigError> {
    let text = read_text(path)?;
    let raw = RawConfig::parse(path, &text)?;
    let config = raw.resolve_daemon(path).map_err(|e| e.located(&text))?;
    check_filesystem(&config, path).map_err(|e| e.located(&text))?;
    Ok(config)
}

/// Filesystem types whose attributes are cached or events missing: NFS, SMB/CIFS, and FUSE
/// (sshfs and friends). `statfs` f_type magic numbers from linux/magic.h.
const NETWORK_FILESYSTEMS: [u32; 5] = [0x6969, 0xff53_4d42, 0xfe53_4d42, 0x6573_5546, 0x517b];

/// Whether `path` lives on a network filesystem.
pub fn is_network_filesystem(path: &Path) -> bool {
    // f_type is a signed or unsigned word depending on the platform; the magic numbers are
    // its low 32 bits either way.
    rustix::fs::statfs(path).is_ok_and(|stat| NETWORK_FILESYSTEMS.contains(&(stat.f_type as u32)))
}

/// Watched folders must exist, and on a network filesystem a settle window shorter than 65 s
/// would let attribute caching show a file as unchanged while it is still being written.
fn check_filesystem(config: &DaemonConfig, path: &Path) -> Result<(), ConfigError> {
    for (i, watch) in config.watches.iter().enumerate() {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: format!("watch[{i}].{field}"),
            message,
        };
        if !watch.path.is_dir() {
            return Err(invalid(
                "path",
                format!("folder {} does not exist", watch.path.display()),
            ));
        }
        if is_network_filesystem(&watch.path) && watch.settle < Duration::from_secs(65) {
            let message = format!(
                "{} s is too short on a network filesystem; use at least 65",
                watch.settle.as_secs()
            );
            return Err(invalid("settle_seconds", message));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bamflow_engine::pipeline::compression::ColumnLevel;

    use super::*;

    /// The `[convert]` options of a config text, resolved for one thread.
    fn resolved(text: &str) -> Result<ConvertOptions, ConfigError> {
        let path = Path::new("x.toml");
        resolve_convert(&RawConfig::parse(path, text).unwrap().convert, path, 1)
    }

    #[test]
    fn unknown_keys_are_errors_with_line_and_column() {
        let text = "[convert]\nzstd_level = 3\ncolumns_typo = []\n";
        let err = RawConfig::parse(Path::new("x.toml"), text).unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("x.toml:3:1: "), "{message}");
        assert!(message.contains("columns_typo"), "{message}");
    }

    #[test]
    fn every_unknown_key_is_reported_in_file_order() {
        let text = "[[watch]]\nname = \"a\"\npath = \"/in\"\nsetle_seconds = 3\n\
                    [watch.convert]\ncolums = [\"qname\"]\n\
                    [daemon]\nstat_dir = \"/s\"\n  treads = 2\n\
                    [[plugin]]\npath = \"/p.so\"\nconfig = { anything = 1 }\n";
        let err = RawConfig::parse(Path::new("x.toml"), text).unwrap_err();
        assert_eq!(
            err.to_string().lines().collect::<Vec<_>>(),
            [
                "x.toml:4:1: unknown key `watch.0.setle_seconds` (config/bamflow.toml documents every key)",
                "x.toml:6:1: unknown key `watch.0.convert.colums` (config/bamflow.toml documents every key)",
                "x.toml:8:1: unknown key `daemon.stat_dir` (config/bamflow.toml documents every key)",
                "x.toml:9:3: unknown key `daemon.treads` (config/bamflow.toml documents every key)",
            ]
        );
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
        let over = ConvertConfig {
            zstd_level: Some(1),
            ..ConvertConfig::default()
        };
        let options = raw.convert.merged(&over).resolve(1).unwrap();
        assert_eq!(options.zstd_level, 1);
        assert_eq!(options.part_records, 10);
        assert_eq!(
            options.column_zstd_levels,
            bamflow_engine::options::default_column_zstd_levels()
        );
    }

    #[test]
    fn every_standard_text_column_is_auto_by_default() {
        let levels = bamflow_engine::options::default_column_zstd_levels();
        let columns: Vec<&str> = levels.keys().map(String::as_str).collect();
        assert_eq!(columns, ["cigar", "qname", "qual", "seq", "tags"]);
        assert!(levels.values().all(|&level| level == ColumnLevel::AUTO));
    }

    #[test]
    fn column_levels_replace_the_default_list_and_name_real_columns() {
        let text = "[convert]\ntags = [\"NM:i\"]\ncolumn_zstd_levels = { seq = 5, NM = 2 }\n";
        let options = resolved(text).unwrap();
        let expected = BTreeMap::from([
            ("NM".to_owned(), ColumnLevel::Level(2)),
            ("seq".to_owned(), ColumnLevel::Level(5)),
        ]);
        assert_eq!(options.column_zstd_levels, expected);

        let options = resolved("[convert]\ncolumn_zstd_levels = {}\n").unwrap();
        assert!(options.column_zstd_levels.is_empty());
    }

    #[test]
    fn impossible_values_are_refused() {
        let t = |text: &str, key: &str| {
            let err = resolved(text).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        };
        t("[convert]\nzstd_level = 0\n", "convert.zstd_level");
        t(
            "[convert]\ncolumn_zstd_levels = { qual = 23 }\n",
            "convert.column_zstd_levels: qual: 23 is outside",
        );
        t(
            "[convert]\ncolumn_zstd_levels = { NM = 1 }\n",
            "\"NM\" is not a column",
        );
        t(
            "[convert]\ncolumn_zstd_levels = { pos = \"auto\" }\n",
            "pos: \"auto\" is only for text columns",
        );
        t(
            "[convert]\ntags = [\"NM:i\"]\ncolumn_zstd_levels = { NM = \"auto\" }\n",
            "NM: \"auto\" is only for text columns",
        );
        t("[convert]\npart_records = 0\n", "convert.part_records");
        t(
            "[convert]\nmax_record_bytes = 4294967296\n",
            "convert.max_record_bytes",
        );
        t("[convert]\ntags = [\"NM\"]\n", "convert.tags");
        t("[convert]\ncolumns = [\"nope\"]\n", "convert.columns");
    }

    #[test]
    fn filters_merge_per_watch_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(
            &path,
            "[filter]\nmin_mapq = 20\nexclude_flags = 1024\nregions = [\"chr1:1,000-2,000\"]\n\n\
             [[plugin]]\npath = \"/opt/p.so\"\nconfig = { tag = \"CB\" }\n",
        )
        .unwrap();
        let flags = ConvertOverrides {
            filter: FilterConfig {
                min_mapq: Some(30),
                ..FilterConfig::default()
            },
            ..ConvertOverrides::default()
        };
        let filters = convert_options(Some(&path), &flags).unwrap().filters;
        assert_eq!(filters.min_mapq, 30);
        assert_eq!(filters.exclude_flags, 1024);
        assert_eq!(filters.regions[0].to_string(), "chr1:1000-2000");
        assert_eq!(filters.plugins[0].config_json, r#"{"tag":"CB"}"#);

        std::fs::write(&path, "[filter]\nregions = [\"chr1:5-1\"]\n").unwrap();
        let err = convert_options(Some(&path), &ConvertOverrides::default()).unwrap_err();
        assert!(err.to_string().contains("filter.regions"), "{err}");
    }

    #[test]
    fn check_config_loads_plugins_and_points_at_the_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "[filter]\nmin_mapq = 1\n\n[[plugin]]\npath = \"/nonexistent/libx.so\"\n",
        )
        .unwrap();
        let err = check(&path).unwrap_err().to_string();
        assert!(err.contains("p.toml:5:1: plugin[0].path"), "{err}");
        assert!(err.contains("cannot read it"), "{err}");
    }

    #[test]
    fn embedded_default_resolves() {
        let raw = RawConfig::parse(Path::new("embedded"), EMBEDDED_DEFAULT).unwrap();
        let config = raw.resolve_daemon(Path::new("embedded")).unwrap();
        assert_eq!(config.state_dir, PathBuf::from("./.bamflow"));
        assert_eq!(config.watches[0].path, PathBuf::from("./inbox"));
        assert_eq!(config.watches[0].settle, Duration::from_secs(5));
        assert_eq!(
            config.watches[0].on_success,
            Disposition::Move("done".into())
        );
    }

    #[test]
    fn watch_values_are_checked() {
        let t = |watch: &str, key: &str| {
            let text = format!("[[watch]]\nname = \"w\"\npath = \"/x\"\n{watch}\n");
            let raw = RawConfig::parse(Path::new("x.toml"), &text).unwrap();
            let err = raw.resolve_daemon(Path::new("x.toml")).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        };
        t("on_failure = \"delete\"", "watch[0].on_failure");
        t("on_success = \"toss\"", "watch[0].on_success");
        t("output = \"/lake/{nope}\"", "watch[0].output");
        t("output = \"/lake/all\"", "watch[0].output");
        t("pattern = \"[\"", "watch[0].pattern");
        t("output = \"s3://{stem}\"", "watch[0].output");
        t("output = \"s3://lake/a//{stem}\"", "watch[0].output");
        t(
            "output = \"s3://lake/{stem}\"\noutput_options = { endpont = \"http://x\" }",
            "watch[0].output_options.endpont",
        );
    }

    #[test]
    fn s3_outputs_take_store_options() {
        let text = "[[watch]]\nname = \"w\"\npath = \"/x\"\noutput = \"s3://lake/bam/{watch}/{stem}\"\n[watch.output_options]\nendpoint = \"http://minio:9000\"\nregion = \"eu-1\"\n";
        let raw = RawConfig::parse(Path::new("x.toml"), text).unwrap();
        let config = raw.resolve_daemon(Path::new("x.toml")).unwrap();
        assert_eq!(config.watches[0].output, "s3://lake/bam/{watch}/{stem}");
        assert_eq!(
            config.watches[0].output_options,
            vec![
                ("endpoint".to_owned(), "http://minio:9000".to_owned()),
                ("region".to_owned(), "eu-1".to_owned())
            ]
        );
    }

    #[test]
    fn semantic_errors_point_at_their_line() {
        let text = "[convert]\nzstd_level = 40\n\n[[watch]]\nname = \"a\"\npath = \"/\"\n\n[[watch]]\nname = \"b\"\npath = \"/\"\n  on_failure = \"delete\"\n";
        assert_eq!(locate(text, "convert.zstd_level"), Some((2, 1)));
        assert_eq!(locate(text, "watch[1].on_failure"), Some((11, 3)));
        assert_eq!(
            locate(text, "watch[0].on_failure"),
            Some((4, 1)),
            "absent key: its table"
        );
        assert_eq!(locate(text, "daemon.threads"), None);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let err = check(&path).unwrap_err().to_string();
        assert!(err.contains("c.toml:2:1: convert.zstd_level"), "{err}");
    }

    #[test]
    fn check_reports_missing_watch_folders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[[watch]]\nname = \"a\"\npath = \"/nonexistent/drop\"\n",
        )
        .unwrap();
        let err = check(&path).unwrap_err().to_string();
        assert!(
            err.contains("c.toml:3:1: watch[0].path: folder /nonexistent/drop does not exist"),
            "{err}"
        );
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
