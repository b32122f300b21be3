//! The `bamflow` binary: argument parsing, logging, exit codes. Everything else is the library.

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bamflow::app::{self, Control};
use bamflow::config::{self, ConfigError, ConvertOverrides, DaemonConfig, RawConfig};
use bamflow::ledger;
use bamflow::service::Notifier;
use bamflow_engine::dataset::{Manifest, SourceInfo};
use bamflow_engine::input::Input;
use bamflow_engine::options::{ConvertConfig, FilterConfig};
use bamflow_engine::pipeline::split::{self, SplitPlan};
use bamflow_engine::pipeline::{self, Engine, Observer, Progress};
use bamflow_store::{Bucket, ObjectUrl, Published, RemoteTarget, S3Opener, Unobserved};
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::{
    Cli, Command, ConvertArgs, LogFormat, PlanArgs, PluginCommand, ProfileArgs, SettingsArgs,
};

/// Exit status for a failed input or output (the message names file, stage and offset).
const EXIT_FAILURE: u8 = 1;
/// Exit status for a usage or configuration error.
const EXIT_USAGE: u8 = 2;

/// See [`heap`](bamflow_engine::heap): the system allocator, with large shrinking blocks moved so
/// that parquet's page buffers do not fragment the heap.
#[global_allocator]
static ALLOCATOR: bamflow_engine::heap::ShrinkByMove = bamflow_engine::heap::ShrinkByMove;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Daemon { .. }) {
        without_thread_caches();
    }
    bamflow_engine::heap::limit_arenas();
    bamflow_engine::heap::fix_mmap_threshold();
    bamflow_engine::heap::raise_trim_threshold();
    // The daemon reports each file it takes; one-shot commands speak only when asked.
    let default_level = if matches!(cli.command, Command::Daemon { .. }) {
        "info"
    } else {
        "warn"
    };
    init_tracing(default_level, cli.log_format);
    let result = match cli.command {
        Command::Daemon { config } => daemon(config.as_deref()),
        Command::Status { config, limit } => status(config.as_deref(), limit),
        Command::Convert(args) => convert(*args),
        Command::Plan(args) => plan(*args),
        Command::Commit { output, plan } => commit(&output, &plan),
        Command::Profile(args) => profile(args),
        Command::CheckConfig { file } => check_config(&file),
        Command::Export {
            dataset,
            output,
            threads,
            allow_partial,
        } => export(&dataset, &output, threads, allow_partial),
        Command::Verify {
            dataset,
            bam,
            threads,
        } => verify(&dataset, &bam, threads),
        Command::Plugin(PluginCommand::Check {
            path,
            config,
            sha256,
        }) => plugin_check(&path, &config, sha256.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bamflow: error: {error:#}");
            let usage = error.chain().any(|cause| cause.is::<ConfigError>());
            ExitCode::from(if usage { EXIT_USAGE } else { EXIT_FAILURE })
        }
    }
}

/// The glibc tunable that sizes every thread's cache of freed blocks.
const TCACHE_TUNABLE: &str = "glibc.malloc.tcache_count";

/// Runs the daemon without glibc's per-thread caches (tcache), by executing itself once more
/// with `GLIBC_TUNABLES` naming them off, unless the operator set that tunable; returns only
/// when it does not re-execute.
///
/// Each thread keeps up to 7 freed blocks of each size up to 1 KiB, which neither `free` nor
/// `malloc_trim` return; a daemon's long-lived threads fill theirs with ever rarer sizes, file
/// after file. In the soak (`bench/soak.sh`, 900 files after the first 100) RSS rose 8.4% with
/// the caches and 3.5% without, glibc's bytes in use 32% and 15%; converting 2 M short reads
/// took as long either way (3 alternating runs, 2 cores), since per-record work does not
/// allocate. Tunables are read only at startup, hence the second `exec` (same PID, so systemd
/// and the PID file see one process; the unit sets the tunable itself and skips it).
fn without_thread_caches() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;

        // Once only, whatever glibc makes of the variable (it parses it in place).
        const MARK: &str = "BAMFLOW_TUNED";
        let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        if std::env::var_os(MARK).is_some() || current.contains(TCACHE_TUNABLE) {
            return;
        }
        let value = match current.as_str() {
            "" => format!("{TCACHE_TUNABLE}=0"),
            other => format!("{other}:{TCACHE_TUNABLE}=0"),
        };
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_default();
        // The binary's own path, not /proc/self/exe: the kernel names the process (comm)
        // after the file executed, and `bamflow status` looks for a `bamflow`.
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(error) => {
                eprintln!(
                    "bamflow: warning: cannot restart with glibc's thread caches off: {error}"
                );
                return;
            }
        };
        let error = std::process::Command::new(exe)
            .arg0(arg0)
            .args(args)
            .env("GLIBC_TUNABLES", value)
            .env(MARK, "1")
            .exec();
        // Only reached when exec failed; the daemon still works, its memory creeps up slowly.
        eprintln!("bamflow: warning: cannot restart with glibc's thread caches off: {error}");
    }
}

fn init_tracing(default_level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BAMFLOW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        // Colour only on a terminal: journald and log files get plain text.
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

fn daemon(config_path: Option<&Path>) -> anyhow::Result<()> {
    let control = Control::new();
    control
        .on_signals()
        .context("cannot install signal handlers")?;
    let notifier = Notifier::from_env();
    let load = || load_daemon_config(config_path);
    app::run(&load, &control, &notifier)
}

/// Reads, resolves and checks the daemon's configuration, including that watched folders
/// exist (the embedded default creates its own).
fn load_daemon_config(config_path: Option<&Path>) -> Result<DaemonConfig, ConfigError> {
    if let Some(path) = config_path {
        return config::load_daemon(path);
    }
    let name = Path::new("embedded default");
    let config = RawConfig::parse(name, config::EMBEDDED_DEFAULT)?.resolve_daemon(name)?;
    for watch in &config.watches {
        std::fs::create_dir_all(&watch.path).map_err(|e| ConfigError::Invalid {
            path: name.to_owned(),
            key: format!("watch {}", watch.name),
            message: format!("cannot create {}: {e}", watch.path.display()),
        })?;
    }
    Ok(config)
}

fn status(config_path: Option<&Path>, limit: usize) -> anyhow::Result<()> {
    let name = config_path.unwrap_or(Path::new("embedded default"));
    let raw = match config_path {
        Some(path) => RawConfig::load(path)?,
        None => RawConfig::parse(name, config::EMBEDDED_DEFAULT)?,
    };
    let config = raw.resolve_daemon(name)?;
    match &config.coordination {
        None => print_local_ledger(&config, limit)?,
        // What waits here is still worth printing when the database cannot be read.
        Some(settings) => {
            if let Err(error) = print_shared_books(settings, limit) {
                println!("coordination database: {error:#}");
            }
        }
    }

    let snapshot = bamflow::status::read(&config.state_dir).filter(|s| s.writer_is_running());
    let Some(snapshot) = snapshot else {
        return waiting_without_daemon(&config);
    };
    println!(
        "in watched folders (daemon PID {}, as of {}):",
        snapshot.pid, snapshot.written
    );
    if snapshot.files.is_empty() {
        println!("  nothing waiting");
    }
    for file in &snapshot.files {
        println!(
            "  [{}] {}  {}: {}",
            file.watch,
            file.path.display(),
            file.reason,
            file.detail
        );
    }
    Ok(())
}

/// The latest ledger entries of this host's `state_dir`.
fn print_local_ledger(config: &DaemonConfig, limit: usize) -> anyhow::Result<()> {
    let absolute = |path: &Path| std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let ledger_path = absolute(&config.state_dir.join("ledger.jsonl"));
    println!("recent files ({}):", ledger_path.display());
    let entries = ledger::recent_entries(&config.state_dir, limit)?;
    if entries.is_empty() {
        println!("  none yet");
    }
    for entry in entries {
        print_entry(&entry, None);
    }
    Ok(())
}

/// Claims held now and the latest ledger entries, from the coordination database: every
/// host's, with the host that wrote each.
fn print_shared_books(
    settings: &bamflow::coordination::Settings,
    limit: usize,
) -> anyhow::Result<()> {
    let coordinator = bamflow::coordination::Coordinator::reader(settings)?;
    let overview = coordinator
        .overview(limit)
        .context("cannot read the coordination database")?;
    println!("claimed now (coordination database):");
    if overview.claims.is_empty() {
        println!("  nothing");
    }
    for claim in &overview.claims {
        let state = if claim.live {
            "lease until"
        } else {
            "lease expired"
        };
        println!(
            "  {}  held by {}/{} (epoch {}, {state} {})",
            claim.path, claim.host, claim.pid, claim.epoch, claim.lease_until
        );
    }
    println!("recent files (coordination database, all hosts):");
    if overview.entries.is_empty() {
        println!("  none yet");
    }
    for (host, entry) in &overview.entries {
        print_entry(entry, Some(host));
    }
    Ok(())
}

fn print_entry(entry: &ledger::Entry, host: Option<&str>) {
    let records = entry
        .records_written
        .map(|n| format!("{n} rows"))
        .unwrap_or_default();
    let detail = match (&entry.error, &entry.duplicate_of, &entry.output) {
        (Some(error), _, _) => format!("  {error}"),
        (_, Some(original), _) => format!("  same content as {}", original.display()),
        (_, _, Some(output)) => format!("  → {}", output.display()),
        _ => String::new(),
    };
    let state = format!("{:?}", entry.state).to_lowercase();
    let host = host.map(|h| format!("  {h}")).unwrap_or_default();
    println!(
        "  {}{host}  {state:<10}  attempt {}  {records:>12}  {}{detail}",
        entry.time,
        entry.attempts,
        entry.path.display()
    );
}

/// Lists the files of the watched folders when no daemon runs on this state folder: none of
/// them is being taken, and that is their reason.
fn waiting_without_daemon(config: &DaemonConfig) -> anyhow::Result<()> {
    println!(
        "in watched folders (no daemon is running with state_dir {}):",
        std::path::absolute(&config.state_dir)
            .unwrap_or_else(|_| config.state_dir.clone())
            .display()
    );
    let mut unreadable = Vec::new();
    let mut listed = 0;
    for watch in &config.watches {
        let folder = std::path::absolute(&watch.path).unwrap_or_else(|_| watch.path.clone());
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(error) => {
                println!(
                    "  [{}] cannot read {}: {error}",
                    watch.name,
                    folder.display()
                );
                unreadable.push(folder);
                continue;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !bamflow::watch::is_ignored_name(&name)
                && watch.pattern.matches(&name)
                && entry.path().is_file()
            {
                println!(
                    "  [{}] {}  no daemon running",
                    watch.name,
                    entry.path().display()
                );
                listed += 1;
            }
        }
    }
    if listed == 0 && unreadable.is_empty() {
        println!("  nothing waiting");
    }
    anyhow::ensure!(
        unreadable.is_empty(),
        "cannot read the watched folder(s) {}: run status from the folder the daemon runs in, \
         or pass the daemon's --config",
        unreadable
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// The conversion options of `convert` and `plan`: the config file's, with the flags winning.
fn settings(args: SettingsArgs, resume: bool) -> anyhow::Result<pipeline::ConvertOptions> {
    let flags = ConvertOverrides {
        convert: ConvertConfig {
            columns: args.columns,
            tags: args.tags,
            zstd_level: args.zstd_level,
            column_zstd_levels: args
                .column_zstd_level
                .map(|levels| levels.into_iter().collect()),
            part_records: args.part_records,
            batch_memory_mb: args.batch_memory_mb,
            batch_records: args.batch_records,
            ..ConvertConfig::default()
        },
        threads: args.threads,
        allow_missing_eof: args.allow_missing_eof,
        resume,
        filter: FilterConfig {
            min_mapq: args.min_mapq,
            include_flags: args.include_flags,
            exclude_flags: args.exclude_flags,
            regions: (!args.regions.is_empty()).then_some(args.regions),
        },
        plugins: args.plugins,
    };
    Ok(config::convert_options(args.config.as_deref(), &flags)?)
}

fn convert(args: ConvertArgs) -> anyhow::Result<()> {
    let options = settings(args.settings, args.resume)?;
    S3Opener::register(args.input_options.clone(), Arc::new(Unobserved));
    let size = Input::open(&args.input)
        .and_then(|input| input.len())
        .unwrap_or(0);
    let bar = ProgressBarObserver::new(size);
    if let Some(url) = args.output.to_str().filter(|o| ObjectUrl::is_remote(o)) {
        anyhow::ensure!(
            args.plan.is_none(),
            "split tasks write a shared folder; an s3:// output takes one conversion"
        );
        let url = ObjectUrl::parse(url)?;
        let published = convert_to_store(
            &args.input,
            url,
            &args.output_options,
            args.spool.clone(),
            &options,
            &bar,
        );
        bar.bar.finish_and_clear();
        let published = published?;
        print_summary(&published.manifest, &published.url);
        return Ok(());
    }
    let summary = match (&args.plan, args.task) {
        (Some(plan), Some(task)) => {
            let plan = SplitPlan::load(plan)?;
            let engine = Engine::new(options.threads).context("cannot start the worker pool")?;
            engine.convert_task(&args.input, &args.output, &plan, task, &options, &bar)
        }
        _ => pipeline::convert(&args.input, &args.output, &options, &bar),
    };
    bar.bar.finish_and_clear();
    let summary = summary?;
    print_summary(&summary.manifest, &summary.output.display());
    Ok(())
}

/// Converts into an object-store dataset: built in the spool, uploaded, published.
fn convert_to_store(
    input: &Path,
    url: ObjectUrl,
    output_options: &[(String, String)],
    spool: Option<PathBuf>,
    options: &pipeline::ConvertOptions,
    observer: &dyn Observer,
) -> anyhow::Result<Published> {
    let bucket = Bucket::connect(&url.bucket, output_options, Arc::new(Unobserved))?;
    let spool = spool.unwrap_or_else(default_spool);
    let target = RemoteTarget::new(Arc::new(bucket), url, &spool);
    let engine = Engine::new(options.threads).context("cannot start the worker pool")?;
    let source =
        SourceInfo::of(input).with_context(|| format!("cannot read {}", input.display()))?;
    let staged = target.convert(&engine, input, source, options, observer)?;
    Ok(staged.publish(observer)?)
}

/// `$XDG_CACHE_HOME/bamflow/spool`, else `~/.cache/bamflow/spool`: on disk, where a dataset
/// may grow (not /tmp, often RAM).
fn default_spool() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("bamflow").join("spool")
}

/// Splits a BAM into tasks and writes (or prints) the plan.
fn plan(args: PlanArgs) -> anyhow::Result<()> {
    let options = settings(args.settings, false)?;
    S3Opener::register(Vec::new(), Arc::new(Unobserved));
    let engine = Engine::new(options.threads).context("cannot start the worker pool")?;
    let started = std::time::Instant::now();
    let plan = engine.plan(&args.input, args.tasks, &options)?;
    match &args.output {
        Some(path) => plan.save(path)?,
        None => println!("{}", plan.to_json()),
    }
    eprintln!(
        "bamflow: {}: {} records in {} tasks ({} empty), {:.2} s",
        args.input.display(),
        plan.records,
        plan.splits.len(),
        plan.splits.iter().filter(|s| s.records == 0).count(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Publishes the dataset of a split plan's finished tasks.
fn commit(output: &Path, plan: &Path) -> anyhow::Result<()> {
    let plan = SplitPlan::load(plan)?;
    let summary = split::commit(output, &plan)?;
    print_summary(&summary.manifest, &summary.output.display());
    Ok(())
}

fn print_summary(m: &Manifest, output: &dyn std::fmt::Display) {
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    eprintln!(
        "bamflow: {} → {}: {} records, {} rows, {:.1} MiB in, {:.1} MiB out ({:.2}× the BAM), {:.2} s, {:.0} records/s",
        m.source.path.display(),
        output,
        m.counts.read,
        m.counts.written,
        mib(m.bytes_in),
        mib(m.bytes_out),
        m.bytes_out as f64 / m.bytes_in.max(1) as f64,
        m.seconds,
        m.records_per_second,
    );
}

fn profile(args: ProfileArgs) -> anyhow::Result<()> {
    let flags = ConvertOverrides {
        threads: args.threads,
        ..ConvertOverrides::default()
    };
    let options = config::convert_options(args.config.as_deref(), &flags)?;
    S3Opener::register(Vec::new(), Arc::new(Unobserved));
    let engine = Engine::new(options.threads).context("cannot start the worker pool")?;
    let profile = engine.profile(&args.input, &options)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&profile).context("cannot print the profile")?
    );
    Ok(())
}

/// Writes a dataset back as BAM.
fn export(
    dataset: &Path,
    output: &Path,
    threads: Option<usize>,
    allow_partial: bool,
) -> anyhow::Result<()> {
    let options = bamflow_engine::export::ExportOptions {
        threads: bamflow_engine::options::resolve_threads(threads.unwrap_or(0)),
        allow_partial,
    };
    let started = std::time::Instant::now();
    let exported = bamflow_engine::export::export_with(dataset, output, &options)?;
    for reason in &exported.partial {
        eprintln!(
            "bamflow: warning: {} is not the source's BAM: {reason}",
            output.display()
        );
    }
    eprintln!(
        "bamflow: {} → {}: {} records, {:.2} s",
        dataset.display(),
        output.display(),
        exported.records,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Compares a dataset with its BAM; a difference is an error (exit 1) after the report.
fn verify(dataset: &Path, bam: &Path, threads: Option<usize>) -> anyhow::Result<()> {
    let threads = bamflow_engine::options::resolve_threads(threads.unwrap_or(0));
    let engine = Engine::new(threads).context("cannot start the worker pool")?;
    let report = bamflow_engine::verify::verify(&engine, dataset, bam)?;
    let text = bamflow_engine::verify::describe(&report, dataset, bam);
    if report.identical() {
        println!("{text}");
        return Ok(());
    }
    anyhow::bail!("{text}")
}

/// Loads a plugin as the daemon would and runs the conformance harness on it.
fn plugin_check(path: &std::path::Path, config: &str, sha256: Option<&str>) -> anyhow::Result<()> {
    serde_json::from_str::<serde_json::Value>(config).context("--config must be JSON")?;
    let plugin = bamflow_engine::plugin::Plugin::load(path, sha256)?;
    println!(
        "{} {} ({}), ABI {}{}",
        plugin.name(),
        plugin.version(),
        path.display(),
        bamflow_plugin_api::ABI_MAJOR,
        if plugin.thread_safe() {
            ", thread-safe"
        } else {
            ""
        }
    );
    let report = plugin.conformance(config);
    for check in &report.checks {
        let mark = if check.passed { "ok  " } else { "FAIL" };
        println!("  {mark} {:<18} {}", check.name, check.detail);
    }
    if let Some(kept) = report.kept_fraction {
        println!("  kept {:.1}% of the timing run's records", kept * 100.0);
    }
    anyhow::ensure!(
        report.passed(),
        "{} failed its conformance checks",
        path.display()
    );
    Ok(())
}

fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    config::check(file)?;
    eprintln!("bamflow: {} is valid", file.display());
    Ok(())
}

/// Draws a progress bar on stderr when it is a terminal; silent otherwise.
struct ProgressBarObserver {
    bar: ProgressBar,
}

impl ProgressBarObserver {
    fn new(total_bytes: u64) -> Self {
        let bar = if std::io::stderr().is_terminal() {
            let bar =
                ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
            let style =
                ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg} ({eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        } else {
            ProgressBar::hidden()
        };
        Self { bar }
    }
}

impl Observer for ProgressBarObserver {
    fn progress(&self, progress: Progress) {
        self.bar.set_position(progress.bytes_read);
        self.bar
            .set_message(format!("{} records", progress.records_read));
    }
}
