//! `kindling bench run`: SeBS's perf-cost experiment against a running worker.
//!
//! For each benchmark of `benchmarks/` (SeBS layout), it deploys `python/` plus `config.json`,
//! builds the event with the benchmark's `input.py`, invokes the function `--repetitions`
//! times from `--concurrency` clients, each on its own keep-alive connection, with the
//! requested start method (`cold` and `fork` are forced on every invocation with
//! `X-Kindling-Start`; `warm` runs one untimed warm-up call per client first), and checks every
//! distinct output with `input.py`'s `validate(event, output)`.
//!
//! It writes one file per benchmark and start method, `<output-dir>/<bench>/<start>.json`, with
//! SeBS's `ExecutionResult` fields for each invocation plus Kindling's start method and timing
//! breakdown, and `<output-dir>/result.csv` over every result file in the directory, with the
//! columns of SeBS's `perf-cost/result.csv` first.

use crate::driver::{deploy, measure, worker_status, Plan};
use crate::progress::Progress;
use crate::results::{now_unix, start_order, statistics, write_result_csv, RunFile, Size, Status};
use crate::stats::{fmt_ms, Summary};
use crate::suite::{check_benchmarks, config_memory, generate_event, reply_limit, validate};
use anyhow::{bail, Context, Result};
use hyper::body::Bytes;
use kindling_api::client::Client;
use kindling_api::StartMethod;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The arguments of `kindling bench run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Benchmarks to run: directory names under --benchmarks-dir.
    #[arg(required = true, value_name = "BENCH")]
    pub benchmarks: Vec<String>,
    /// Input size passed to each benchmark's generate_input().
    #[arg(long, value_enum, default_value_t = Size::Test)]
    pub size: Size,
    /// Start method; several may be given, comma-separated (cold and fork are forced on every
    /// invocation, warm runs one untimed warm-up call per client first).
    #[arg(long, value_parser = start_method_parser(), value_delimiter = ',', default_value = "warm")]
    pub start: Vec<StartMethod>,
    /// Measured invocations per benchmark and start method.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub repetitions: u64,
    /// Clients invoking at once, each with its own connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: u64,
    /// Directory of the benchmarks (SeBS layout).
    #[arg(long, default_value = "benchmarks")]
    pub benchmarks_dir: PathBuf,
    /// Where results go: <DIR>/<bench>/<start>.json and <DIR>/result.csv.
    #[arg(long, default_value = "bench-results")]
    pub output_dir: PathBuf,
    /// Prefix of the deployed function names (run_local.py's default too).
    #[arg(long, default_value = "bench-")]
    pub prefix: String,
    /// Python that runs the benchmarks' input.py (generate_input, validate).
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Directory of the worker's storage backend (`<dir>/<function>/<bucket>/<key>`), where the
    /// input objects of storage benchmarks are written (default: the worker's, from /status).
    #[arg(long)]
    pub storage_dir: Option<PathBuf>,
}

/// Parses a start method name, listing the names (sorted) in `--help` as clap lists an enum's.
pub(crate) fn start_method_parser() -> impl clap::builder::TypedValueParser<Value = StartMethod> {
    let mut names = StartMethod::ALL.map(StartMethod::as_str);
    names.sort();
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(names).try_map(|s| s.parse::<StartMethod>())
}

/// Runs the experiment of `args` against the worker at `addr`.
pub async fn run(addr: SocketAddr, args: RunArgs) -> Result<()> {
    check_benchmarks(&args.benchmarks_dir, &args.benchmarks)?;
    let mut c = Client::new(addr);
    let status = worker_status(&mut c, addr).await?;
    // Storage benchmarks write their inputs into the worker's own storage directory unless
    // told otherwise (the directory backend: each function's buckets as directories).
    let storage_dir = args.storage_dir.clone().or_else(|| {
        status["storage_dir"]
            .as_str()
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
    });
    std::fs::create_dir_all(&args.output_dir)
        .with_context(|| format!("cannot create {}", args.output_dir.display()))?;
    let mut starts = args.start.clone();
    starts.sort_by(start_order);
    starts.dedup();
    let clients = args.concurrency.min(args.repetitions);
    let mut problems = Vec::new();
    let mut written = Vec::new();
    for bench in &args.benchmarks {
        let dir = args.benchmarks_dir.join(bench);
        let function = format!("{}{bench}", args.prefix);
        let input_py = std::path::absolute(dir.join("input.py"))?;
        // The function's own buckets: <storage dir>/<function>/<bucket>/<key>.
        let function_storage = storage_dir.as_ref().map(|d| d.join(&function));
        let event = match generate_event(
            &args.python,
            &input_py,
            args.size,
            function_storage.as_deref(),
        )
        .await
        {
            Ok(e) => e,
            Err(e) => {
                eprintln!("{bench}: cannot prepare the input: {e:#}");
                problems.push(format!("{bench}: input not prepared"));
                continue;
            }
        };
        eprintln!("{bench}: deploying {function}");
        match deploy(&mut c, &function, &dir).await {
            Ok(d) => {
                let hash = d["hash"].as_str().unwrap_or("");
                eprintln!(
                    "{bench}: {} (version {})",
                    if d["changed"].as_bool() == Some(false) {
                        "unchanged"
                    } else {
                        "deployed"
                    },
                    &hash[..hash.len().min(12)]
                );
            }
            Err(e) => {
                eprintln!("{bench}: {e:#}");
                problems.push(format!("{bench}: not deployed"));
                continue;
            }
        }
        let body = Bytes::from(serde_json::to_vec(&event)?);
        for &start in &starts {
            // A worker that went away ends the run with the client's one message, instead
            // of a result file of connection errors per remaining experiment.
            if let Err(e) = c.get("/status").await {
                if !written.is_empty() {
                    write_result_csv(&args.output_dir)?;
                }
                return Err(e);
            }
            let progress = Progress::new(format!("{bench} {}", start.as_str()), args.repetitions);
            let begin = now_unix();
            let plan = Plan {
                addr,
                function: function.clone(),
                event: body.clone(),
                start,
                repetitions: args.repetitions,
                clients,
                limit: reply_limit(&dir),
            };
            let mut invocations = measure(&plan, progress.clone()).await;
            let end = now_unix();
            progress.finish();
            validate(&args.python, &input_py, &event, &mut invocations).await?;
            let statistics = statistics(&invocations, start);
            let run = RunFile {
                benchmark: bench.clone(),
                function: function.clone(),
                size: args.size,
                start,
                repetitions: args.repetitions,
                concurrency: clients,
                memory_mb: config_memory(&dir),
                worker: addr.to_string(),
                kindling_version: env!("CARGO_PKG_VERSION").to_string(),
                begin,
                end,
                statistics,
                invocations,
            };
            let out_dir = args.output_dir.join(bench);
            std::fs::create_dir_all(&out_dir)?;
            let path = out_dir.join(format!("{}.json", start.as_str()));
            std::fs::write(&path, serde_json::to_vec_pretty(&run)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
            let s = &run.statistics;
            let mut latencies: Vec<f64> = run
                .measured()
                .map(|i| i.times.client as f64 / 1000.0)
                .collect();
            let summary = Summary::of(&mut latencies);
            eprintln!(
                "{bench} {}: {} ok, {} incorrect, {} failed{}; client p50 {} ms, p99 {} ms -> {}",
                start.as_str(),
                s.ok,
                s.incorrect,
                s.failures,
                if s.start_mismatch > 0 {
                    format!(", {} with another start method", s.start_mismatch)
                } else {
                    String::new()
                },
                summary.as_ref().map_or("-".into(), |x| fmt_ms(x.p50)),
                summary.as_ref().map_or("-".into(), |x| fmt_ms(x.p99)),
                path.display()
            );
            if let Some(first) = run.invocations.iter().find(|i| i.status != Status::Ok) {
                eprintln!(
                    "  first {}: {}",
                    first.status.as_str(),
                    first.error.as_deref().unwrap_or("-")
                );
            }
            if s.incorrect > 0 || s.failures > 0 {
                problems.push(format!(
                    "{bench} {}: {} incorrect, {} failed",
                    start.as_str(),
                    s.incorrect,
                    s.failures
                ));
            }
            written.push(path);
        }
    }
    if !written.is_empty() {
        let csv = write_result_csv(&args.output_dir)?;
        println!(
            "wrote {} result files to {}; CSV of all results there: {}; report: kindling bench report {}",
            written.len(),
            args.output_dir.display(),
            csv.display(),
            args.output_dir.display()
        );
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}
