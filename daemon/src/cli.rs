//! The command line (DESIGN.md §4).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use bamflow_engine::pipeline::compression::ColumnLevel;

/// BAM-to-Parquet ingest.
#[derive(Debug, Parser)]
#[command(name = "bamflow", version, about)]
pub struct Cli {
    /// Log format on stderr: text, or json (one object per line, for log shippers).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch folders and convert every finished BAM (no --config: ./inbox → ./outbox).
    Daemon {
        /// The TOML config file; without it, the embedded default.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the ledger's most recent files and the files waiting in watched folders.
    Status {
        /// The TOML config file; without it, the embedded default.
        #[arg(long)]
        config: Option<PathBuf>,
        /// How many recent files to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Convert one BAM file into a Parquet dataset folder.
    Convert(Box<ConvertArgs>),
    /// Split a BAM into tasks at record boundaries, for `convert --plan --task` on many
    /// workers (Slurm, Spark, Kubernetes) and `commit`.
    Plan(Box<PlanArgs>),
    /// Publish the dataset of a split plan once every task has converted its split.
    Commit {
        /// The dataset folder, as the tasks were given it.
        output: PathBuf,
        /// The plan the tasks ran.
        #[arg(long)]
        plan: PathBuf,
    },
    /// Print the profile of a BAM file as JSON: sizes, tags, sort order, index, batch plan.
    Profile(ProfileArgs),
    /// Write a dataset back as a BAM whose `samtools view -h --no-PG` equals the source's.
    Export {
        /// The dataset folder.
        dataset: PathBuf,
        /// The BAM file to write (replaced only once complete).
        output: PathBuf,
        /// BGZF compression threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Export a dataset that does not hold everything (filters, a column subset, promoted
        /// tags of schema version 1) with what it has, saying what differs from the source.
        #[arg(long)]
        allow_partial: bool,
    },
    /// Compare a dataset with a BAM: header, record count, every field of every record.
    /// Exit 0 iff identical; else 1, with the first differences.
    Verify {
        /// The dataset folder.
        dataset: PathBuf,
        /// The BAM file it should hold.
        bam: PathBuf,
        /// Worker threads decoding the BAM (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Validate a config file; errors name the file, line and column.
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
    },
    /// Filter plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Load a plugin library as the daemon would and run the conformance checks on it: empty
    /// and one-record batches, the largest records, determinism, nanoseconds per record.
    Check {
        /// The plugin's shared library (.so).
        path: PathBuf,
        /// The plugin's config, as JSON (the `config` table of its [[plugin]] entry).
        #[arg(long, default_value = "{}")]
        config: String,
        /// Pinned SHA-256 of the library, checked as the daemon does.
        #[arg(long)]
        sha256: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The BAM file to convert: a path, or s3://BUCKET/KEY (read with ranged requests).
    pub input: PathBuf,
    /// The dataset folder to create; it must not exist yet.
    pub output: PathBuf,
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// Continue an interrupted conversion into OUT_DIR from its checkpoint; without it, the
    /// interrupted run's parts are discarded and the conversion starts over.
    #[arg(long)]
    pub resume: bool,
    /// Convert one task of this split plan (`bamflow plan`) into OUT_DIR's staging folder;
    /// `bamflow commit` publishes the dataset once every task is done. Settings must be the
    /// plan's. A task resumes its own checkpoint and a finished task is not redone.
    #[arg(long, requires = "task")]
    pub plan: Option<PathBuf>,
    /// The task of --plan to convert, from 0.
    #[arg(long, requires = "plan")]
    pub task: Option<usize>,
    /// A setting of an s3:// output's store as KEY=VALUE (object_store's S3 keys, e.g.
    /// endpoint=http://minio:9000), over the AWS environment and profile files (repeatable).
    #[arg(long = "output-option", value_parser = parse_key_value)]
    pub output_options: Vec<(String, String)>,
    /// A setting of an s3:// input's store as KEY=VALUE, as --output-option (repeatable).
    #[arg(long = "input-option", value_parser = parse_key_value)]
    pub input_options: Vec<(String, String)>,
    /// Local folder an s3:// dataset is built in (and resumed from) before it is uploaded
    /// (default: $XDG_CACHE_HOME/bamflow/spool, else ~/.cache/bamflow/spool).
    #[arg(long)]
    pub spool: Option<PathBuf>,
}

/// `KEY=VALUE`.
fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(key, _)| !key.trim().is_empty())
        .map(|(key, value)| (key.trim().to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The BAM file to split: a path, or s3://BUCKET/KEY.
    pub input: PathBuf,
    /// How many tasks.
    #[arg(long)]
    pub tasks: usize,
    /// Write the plan here (durably); without it, print it.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// The settings of a conversion, shared by `convert` and `plan` (a plan records them, and its
/// tasks must convert with the same).
#[derive(Debug, Args)]
pub struct SettingsArgs {
    /// Read defaults from this config file ([convert] table); flags win over it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Write only these columns, in this order (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub columns: Option<Vec<String>>,
    /// Promote tags to typed columns, e.g. NM:i,CB:Z,ML:B:i (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub tags: Option<Vec<String>>,
    /// Zstandard level, 1-22 (default 3), of every column without its own level.
    #[arg(long)]
    pub zstd_level: Option<i32>,
    /// Columns with their own zstd level, as COLUMN=LEVEL or COLUMN=auto (comma-separated).
    /// auto, the default on every text column, takes level 1 when a trial on the file's first
    /// records finds it no more than 10% larger. Replaces the config's list.
    #[arg(long, value_delimiter = ',', value_parser = parse_column_level)]
    pub column_zstd_level: Option<Vec<(String, ColumnLevel)>>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Input records per part file (default 4000000).
    #[arg(long)]
    pub part_records: Option<u64>,
    /// Memory for batches in flight, in MiB (default 64).
    #[arg(long)]
    pub batch_memory_mb: Option<usize>,
    /// Records per batch; 0 (default) sizes batches from the profile and batch_memory_mb.
    #[arg(long)]
    pub batch_records: Option<usize>,
    /// Keep only records with MAPQ at least this (samtools view -q).
    #[arg(long)]
    pub min_mapq: Option<u8>,
    /// Keep only records with all these flag bits set (samtools view -f); decimal or 0x hex.
    #[arg(long, value_parser = parse_flags)]
    pub include_flags: Option<u16>,
    /// Drop records with any of these flag bits set (samtools view -F); decimal or 0x hex.
    #[arg(long, value_parser = parse_flags)]
    pub exclude_flags: Option<u16>,
    /// Keep only records overlapping this region: chr, chr:beg or chr:beg-end, 1-based and
    /// inclusive (repeatable; needs a .bai or .csi index beside the BAM).
    #[arg(long = "region")]
    pub regions: Vec<String>,
    /// Run this filter plugin library with an empty config (repeatable; after the built-in
    /// filters; use --config with [[plugin]] tables to configure plugins).
    #[arg(long = "plugin")]
    pub plugins: Vec<PathBuf>,
    /// Convert a file that lacks the BGZF EOF block (it may be truncated).
    #[arg(long)]
    pub allow_missing_eof: bool,
}

/// `COLUMN=LEVEL` or `COLUMN=auto`; the level's range is checked with the config's.
fn parse_column_level(text: &str) -> Result<(String, ColumnLevel), String> {
    let (column, level) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not COLUMN=LEVEL"))?;
    let level = level
        .parse()
        .map_err(|e| format!("{text:?}: {level:?} is not a level: {e}"))?;
    Ok((column.to_owned(), level))
}

/// Flag bits as samtools takes them: decimal, or hex with `0x`.
fn parse_flags(text: &str) -> Result<u16, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("{text:?} is not a flag value (0-65535, or 0x hex): {e}"))
}

#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// The BAM file to profile: a path, or s3://BUCKET/KEY.
    pub input: PathBuf,
    /// Read batch settings from this config file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Worker threads the batch plan is made for (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}
