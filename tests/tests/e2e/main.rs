//! End-to-end tests: the built `bamflow` binary against real BAM files, checked with samtools.
//!
//! Build the workspace first (`cargo test --workspace` does), so `target/<profile>/bamflow`
//! exists.

mod bad_input;
mod coordination;
mod crash;
mod daemon;
mod fencing;
mod fidelity;
mod filters;
mod harness;
mod metrics;
mod moto;
mod options;
mod postgres;
mod s3;
mod split;
mod support;
mod verify;
mod waiting;
