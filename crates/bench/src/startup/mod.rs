//! `kindling bench startup`: start-up latency measured side by side with baselines in one run.
//!
//! It compares start methods end to end from this client. Without benchmark names it
//! deploys a hello function (OpenLambda format) and measures Kindling cold (forced with
//! `X-Kindling-Start: cold`), fork (forced with `fork`, after one untimed fork that creates the
//! zygotes) and warm, `runc run` of the same handler in the same root filesystem, and a bare
//! `chroot ROOTFS python3` of the same handler. With benchmark names (SeBS layout, under
//! `--benchmarks-dir`) it does the same for each benchmark in one run: deploy, generate the
//! event for `--size`, measure Kindling cold, fork and warm, then the chroot and runc baselines
//! ([`crate::baseline`]) running the same handler with the same event in the instance layout the
//! worker reports, and checks every output with the benchmark's `validate()`: an output that
//! fails its check counts as incorrect, never as a start.

mod args;
mod benchmarks;
mod hello;

pub use args::StartupArgs;

use anyhow::Result;
use std::net::SocketAddr;

/// Runs `bench startup`: of the hello function without benchmark names, else of those.
pub async fn run(addr: SocketAddr, args: StartupArgs) -> Result<()> {
    if args.benchmarks.is_empty() {
        hello::run(addr, args).await
    } else {
        benchmarks::run(addr, args).await
    }
}
