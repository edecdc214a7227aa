//! The arguments of `kindling bench startup`, and what both of its forms read from the worker.

use crate::results::Size;
use anyhow::{anyhow, Result};
use std::path::PathBuf;

/// The arguments of `kindling bench startup`.
#[derive(clap::Args)]
pub struct StartupArgs {
    /// Benchmarks to measure: directory names under --benchmarks-dir (none: the built-in hello
    /// function).
    #[arg(value_name = "BENCH")]
    pub benchmarks: Vec<String>,
    /// Input size passed to each benchmark's generate_input().
    #[arg(long, value_enum, default_value_t = Size::Small)]
    pub size: Size,
    /// Directory of the benchmarks (SeBS layout).
    #[arg(long, default_value = "benchmarks")]
    pub benchmarks_dir: PathBuf,
    /// Measured starts per method (and benchmark).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub repetitions: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Skip the runc baseline (if runc is not installed).
    #[arg(long)]
    pub no_runc: bool,
    /// Python that runs the benchmarks' input.py (generate_input, validate).
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Directory of the worker's storage backend (`<dir>/<function>/<bucket>/<key>`), where the
    /// input objects of storage benchmarks are written (default: the worker's, from /status).
    #[arg(long)]
    pub storage_dir: Option<PathBuf>,
    /// Also time cold starts of the hello function with `network: true`, alternating with the
    /// offline ones (the worker needs `allow_network = true`).
    #[arg(long)]
    pub network: bool,
}

/// The base's root filesystem, as the worker's `/status` reports it.
pub(super) fn status_rootfs(status: &serde_json::Value) -> Result<PathBuf> {
    Ok(PathBuf::from(status["rootfs"].as_str().ok_or_else(
        || anyhow!("worker did not report its rootfs"),
    )?))
}
