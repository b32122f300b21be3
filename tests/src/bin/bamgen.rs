//! `bamgen`: writes a deterministic, realistic BAM for tests, benchmarks and README examples.

use std::path::PathBuf;

use bamflow_tests::generator::{write_bam, DataKind, Spec};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    /// Coordinate-sorted 2x150 paired reads with aligner tags.
    Short,
    /// ONT-like long reads with base-modification tags.
    Long,
    /// Unaligned single-cell reads with CB/UB tags.
    Unaligned,
}

/// Write a deterministic, realistic BAM file.
#[derive(Debug, Parser)]
struct Args {
    /// Output BAM path.
    output: PathBuf,
    #[arg(long, value_enum, default_value = "short")]
    kind: Kind,
    /// Number of records.
    #[arg(long, default_value_t = 100_000)]
    records: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Longest long read, in bases (long reads only).
    #[arg(long, default_value_t = 200_000)]
    max_read_length: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let kind = match args.kind {
        Kind::Short => DataKind::Short,
        Kind::Long => DataKind::Long,
        Kind::Unaligned => DataKind::Unaligned,
    };
    let spec = Spec {
        max_read_length: args.max_read_length,
        ..Spec::new(kind, args.records, args.seed)
    };
    write_bam(&args.output, &spec)?;
    Ok(())
}
