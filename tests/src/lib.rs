//! Test support for bamflow: the deterministic BAM generator, samtools helpers, and the SAM
//! text comparison that checks datasets against `samtools view`.
//!
//! The end-to-end tests in `tests/e2e` drive the built `bamflow` binary as a user would.

pub mod generator;
pub mod sam_text;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use anyhow::{ensure, Context};

/// The `bamflow` binary of this workspace's target directory (or `$BAMFLOW_BIN`).
///
/// A test binary does not make cargo build another package's binary, and a stale one would
/// test old code; so the first call builds it with the cargo that runs the tests (a no-op when
/// it is up to date).
pub fn bamflow_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("BAMFLOW_BIN") {
            return PathBuf::from(path);
        }
        // The test executable lives in target/<profile>/deps/.
        let exe = std::env::current_exe().unwrap_or_default();
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("target/debug"))
            .to_owned();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        // `--workspace` resolves features as `cargo test --workspace` does; `-p bamflow` alone
        // would resolve them differently and rebuild parquet and the binary. `--lib` builds the
        // plugin libraries the filter tests load.
        build.args(["build", "--quiet", "--workspace", "--bins", "--lib"]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building the bamflow binary failed");
        profile_dir.join("bamflow")
    })
    .clone()
}

/// A plugin library built with the workspace (`libNAME.so` beside the binary).
pub fn plugin_library(name: &str) -> PathBuf {
    bamflow_bin().with_file_name(format!("lib{name}.so"))
}

/// A `bamflow` command with the given arguments.
pub fn bamflow(args: &[&str]) -> Command {
    let mut command = Command::new(bamflow_bin());
    command.args(args).env("BAMFLOW_LOG", "warn");
    command
}

/// Runs `bamflow convert IN OUT [extra…]`.
pub fn convert(input: &Path, output: &Path, extra: &[&str]) -> Output {
    let mut command = bamflow(&["convert"]);
    command.arg(input).arg(output).args(extra);
    command
        .output()
        .expect("bamflow binary runs (build it with cargo build --workspace)")
}

/// Writes SAM text and converts it to BAM with `samtools view -b`.
///
/// # Errors
///
/// Fails when samtools is missing or rejects the SAM text.
pub fn sam_to_bam(sam: &str, bam: &Path) -> anyhow::Result<()> {
    let mut child = Command::new("samtools")
        .args(["view", "--no-PG", "-b", "-o"])
        .arg(bam)
        .arg("-")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running samtools (apt-get install samtools)")?;
    child
        .stdin
        .take()
        .context("samtools stdin")?
        .write_all(sam.as_bytes())?;
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "samtools view -b failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// `samtools view -h --no-PG` of a BAM, as lines. Trailing NULs that htslib 1.16 still prints
/// from a padded header are removed (bamflow stores the header without them, by design).
///
/// # Errors
///
/// Fails when samtools fails.
pub fn samtools_view(bam: &Path, extra: &[&str]) -> anyhow::Result<Vec<String>> {
    samtools_view_regions(bam, extra, &[])
}

/// [`samtools_view`] of only the records overlapping `regions` (which need an index).
///
/// # Errors
///
/// Fails when samtools fails.
pub fn samtools_view_regions(
    bam: &Path,
    extra: &[&str],
    regions: &[&str],
) -> anyhow::Result<Vec<String>> {
    let output = Command::new("samtools")
        .args(["view", "-h", "--no-PG"])
        .args(extra)
        .arg(bam)
        .args(regions)
        .output()?;
    ensure!(
        output.status.success(),
        "samtools view failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).context("samtools printed invalid UTF-8")?;
    Ok(text
        .lines()
        .map(|l| l.trim_start_matches('\0').to_owned())
        .filter(|l| !l.is_empty())
        .collect())
}
