//! `kindling bench`: Kindling's benchmarks, as a library the `kindling` binary calls.
//!
//! The commands, one module each: [`startup`] (start methods against the chroot and runc
//! baselines of [`baseline`]), [`fork`], [`packages`], [`run`] (SeBS's perf-cost experiment),
//! [`web`] (a Flask app against a plain function), [`trace`] (trace workloads against a fresh
//! worker per start policy) and [`report`]. They share one results model ([`results`]), one
//! statistics module ([`stats`]: one percentile definition for every command), the benchmark suite
//! ([`suite`]: discovery, packing, `input.py`) and the driver of a worker ([`driver`]).

pub mod baseline;
pub mod driver;
pub mod fork;
pub mod packages;
pub mod progress;
pub mod report;
pub mod results;
pub mod run;
pub mod startup;
pub mod stats;
pub mod suite;
pub mod trace;
pub mod web;

use anyhow::Result;
use std::net::SocketAddr;

/// The subcommands of `kindling bench`.
#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Cold, fork and warm start latency against runc and a bare chroot, same rootfs, one run:
    /// of a hello function, or of benchmarks of benchmarks/ with their outputs checked.
    Startup(startup::StartupArgs),
    /// Cold, fork and warm starts of hello, numpy and pandas functions, and the memory of
    /// forked against cold-started instances.
    Fork(fork::ForkArgs),
    /// Deploy with an empty store, deploy again with the same requirements, and `pip install
    /// --target` of the same closure, in one run.
    Packages(packages::PackagesArgs),
    /// SeBS's perf-cost experiment: deploy benchmarks of benchmarks/, invoke each N times from
    /// C clients with a start method, validate the outputs, write JSON and CSV results.
    Run(run::RunArgs),
    /// Markdown report with tables and SVG/PNG plots of the results of `bench run` (and of
    /// `bench trace`).
    Report(report::ReportArgs),
    /// A Flask app (WSGI) against a plain `f(event)` function in one run: warm latency,
    /// requests per second from concurrent clients, and fork starts of the app.
    Web(web::WebArgs),
    /// Replay TrEnv's W1/W2 or an Azure/Huawei trace against a fresh worker per start policy
    /// (full, keepalive, nofork, noswitch) and compare latency and memory in one run.
    Trace(Box<trace::TraceArgs>),
}

/// Runs one `kindling bench` command against the worker at `addr` (`report` reads files only).
pub async fn run(addr: SocketAddr, command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Startup(args) => startup::run(addr, args).await,
        BenchCommand::Fork(args) => fork::run(addr, args).await,
        BenchCommand::Packages(args) => packages::run(addr, args).await,
        BenchCommand::Run(args) => run::run(addr, args).await,
        BenchCommand::Report(args) => report::run(args),
        BenchCommand::Web(args) => web::run(addr, args).await,
        // Every policy gets a worker of its own; the worker at `addr` is not used.
        BenchCommand::Trace(args) => trace::run(*args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};
    use kindling_api::StartMethod;

    #[derive(Parser)]
    struct Bench {
        #[command(subcommand)]
        command: BenchCommand,
    }

    #[test]
    fn the_command_line_parses_as_before() {
        Bench::command().debug_assert();
        let Bench {
            command: BenchCommand::Run(args),
        } = Bench::try_parse_from(["bench", "run", "gzip", "--start", "cold,warm"]).expect("run")
        else {
            panic!("not `bench run`");
        };
        assert_eq!(args.start, [StartMethod::Cold, StartMethod::Warm]);
        assert_eq!(args.repetitions, 10);
        let Bench {
            command: BenchCommand::Run(args),
        } = Bench::try_parse_from(["bench", "run", "gzip"]).expect("run")
        else {
            panic!("not `bench run`");
        };
        assert_eq!(args.start, [StartMethod::Warm], "warm by default");
        let err = Bench::try_parse_from(["bench", "run", "gzip", "--start", "Cold"])
            .err()
            .expect("names are exact")
            .to_string();
        assert!(
            err.contains("[possible values: cold, fork, switch, warm]"),
            "{err}"
        );
        assert!(Bench::try_parse_from(["bench", "fork", "--memory-instances", "3"]).is_ok());
        assert!(Bench::try_parse_from(["bench", "packages", "--requirements", "numpy"]).is_ok());
        assert!(Bench::try_parse_from(["bench", "startup", "gzip", "--size", "test"]).is_ok());
        assert!(Bench::try_parse_from(["bench", "report", "dir"]).is_ok());
        assert!(Bench::try_parse_from(["bench", "web", "--clients", "8"]).is_ok());
        assert!(Bench::try_parse_from(["bench", "trace", "--workload", "w2"]).is_ok());
    }
}
