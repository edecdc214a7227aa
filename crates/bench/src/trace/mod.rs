//! `kindling bench trace`: replays a trace workload against a fresh worker per start policy and
//! compares the policies in one run.
//!
//! The workloads ([`workload`]) are TrEnv's W1 and W2, generated as its driver generates them,
//! and the Azure Functions 2019 and Huawei 2023 trace formats ([`traces`]), split per second
//! and mapped onto TrEnv's function set, which [`workload::FUNCTIONS`] maps onto `benchmarks/`.
//! Each policy gets its own worker ([`fresh`]: root, port, cgroup_parent), the same memory
//! budget and the same arrivals; [`replay`] sends them as TrEnv's driver does and samples the
//! worker every second; [`record`] writes the results, which `kindling bench report` reads.

pub mod fresh;
pub mod pyrandom;
pub mod record;
pub mod replay;
pub mod traces;
pub mod workload;

use crate::results::{now_unix, Size, Status};
use crate::stats::{fmt_ms, Samples};
use crate::suite::{check_benchmarks, generate_event, pack_benchmark_with_memory, validate};
use anyhow::{bail, Context, Result};
use hyper::body::Bytes;
use record::{FunctionInfo, TraceFile};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;
use traces::{Format, Window};
use workload::{spec_of, Workload, TRACE_NAMES, TRENV_SEED};

/// The workloads `bench trace` replays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadKind {
    /// TrEnv's W1: normally distributed bursts, each function in its own slot of a 143-s cycle.
    W1,
    /// TrEnv's W2: fixed bursts in a 160-s cycle (450 invocations per cycle).
    W2,
    /// An Azure Functions 2019 invocations file (`--trace`).
    Azure,
    /// A Huawei 2023 requests_minute file (`--trace`).
    Huawei,
}

/// The start policies compared, each on a fresh worker with the same memory budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Every start method: warm, fork, switch, cold.
    Full,
    /// Warm or cold only, fixed keep-alive, no zygotes (TrEnv's faasd baseline).
    Keepalive,
    /// Everything but fork (no zygotes).
    Nofork,
    /// Everything but switch.
    Noswitch,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Full => "full",
            Policy::Keepalive => "keepalive",
            Policy::Nofork => "nofork",
            Policy::Noswitch => "noswitch",
        }
    }

    /// The worker's `start_order` for this policy.
    pub fn start_order(self) -> &'static [&'static str] {
        match self {
            Policy::Full => &["warm", "fork", "switch", "cold"],
            Policy::Keepalive => &["warm", "cold"],
            Policy::Nofork => &["warm", "switch", "cold"],
            Policy::Noswitch => &["warm", "fork", "cold"],
        }
    }

    /// Whether the worker keeps zygotes (fork needs them).
    pub fn zygotes(self) -> bool {
        self.start_order().contains(&"fork")
    }
}

/// The arguments of `kindling bench trace`.
#[derive(clap::Args)]
pub struct TraceArgs {
    /// The workload.
    #[arg(long, value_enum)]
    pub workload: WorkloadKind,
    /// The trace of `azure` or `huawei`: a file, or the directory holding
    /// `invocations_per_function_md.anon.dXX.csv` or `requests_minute/day_XX.csv`.
    #[arg(long, value_name = "FILE/DIR")]
    pub trace: Option<PathBuf>,
    /// Day of the trace (default: 3 for Azure as TrEnv, 0 for Huawei).
    #[arg(long)]
    pub day: Option<u32>,
    /// Hour of the day where the trace window starts.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..24))]
    pub hour: u64,
    /// Minutes after the hour where the window starts.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..1440))]
    pub minute: u64,
    /// Minutes of trace replayed (the first --warmup-minutes warm up; TrEnv: 60 and 5).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=1440))]
    pub minutes: u64,
    #[arg(long, default_value_t = 5)]
    pub warmup_minutes: u64,
    /// Trace functions taken, the busiest of the window; more than the 26 names of TrEnv's set
    /// are mapped round-robin.
    #[arg(long, default_value_t = 26, value_parser = clap::value_parser!(u64).range(1..))]
    pub functions: u64,
    /// Multiplies every second's arrivals (so that bursts fit this machine).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Measured cycles of W1/W2 (TrEnv: 10).
    #[arg(long, default_value_t = workload::TRENV_CYCLES as u64)]
    pub cycles: u64,
    /// Warm-up cycles of W1/W2 before the measured ones (TrEnv: 2).
    #[arg(long, default_value_t = workload::TRENV_WARMUP_CYCLES as u64)]
    pub warmup_cycles: u64,
    /// Seed of W1's bursts, of the trace splits and of the arrival jitter.
    #[arg(long, default_value_t = TRENV_SEED)]
    pub seed: u64,
    /// Policies to compare, each against a fresh worker (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "full,keepalive"
    )]
    pub policy: Vec<Policy>,
    /// Worker-wide memory budget of every policy (default: a third of the functions at their
    /// mean limit, at least the largest limit).
    #[arg(long)]
    pub memory_budget_mb: Option<u64>,
    /// Keep-alive of idle instances (default: TrEnv's baselines, W1 120 s, W2 180 s, traces
    /// 600 s).
    #[arg(long)]
    pub keep_alive_secs: Option<u64>,
    /// Input size of every benchmark.
    #[arg(long, value_enum, default_value_t = Size::Test)]
    pub size: Size,
    /// Concurrent clients at most (each a keep-alive connection).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub clients: u64,
    /// Timeout of one attempt (TrEnv: 60 s).
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
    /// Retries of a failed request, 0.5·2^k s apart (TrEnv: 3).
    #[arg(long, default_value_t = 3)]
    pub max_retry: u32,
    /// Directory of the benchmarks (SeBS layout).
    #[arg(long, default_value = "benchmarks")]
    pub benchmarks_dir: PathBuf,
    /// Where results go: trace-<policy>.json, trace.csv, memory.csv.
    #[arg(long, default_value = "bench-results/trace")]
    pub output_dir: PathBuf,
    /// Where the workers' roots go (<dir>/<policy>).
    #[arg(long, default_value = "/var/lib/kindling/trace-workers")]
    pub work_dir: PathBuf,
    /// The base root filesystems the workers use.
    #[arg(long, default_value = "/var/lib/kindling/base")]
    pub base_dir: PathBuf,
    /// TOML added to every worker's config (package index, limits; not the keys the command
    /// sets per policy).
    #[arg(long)]
    pub worker_config: Option<PathBuf>,
    /// Python that runs the benchmarks' input.py.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Print the workload and exit.
    #[arg(long)]
    pub dry_run: bool,
}

/// The workload of `args`, scaled.
pub fn build_workload(args: &TraceArgs) -> Result<Workload> {
    let cycles = args.cycles as usize;
    let warmup = args.warmup_cycles as usize;
    let mut w = match args.workload {
        WorkloadKind::W1 => workload::w1(cycles, warmup, args.seed),
        WorkloadKind::W2 => workload::w2(cycles, warmup),
        WorkloadKind::Azure | WorkloadKind::Huawei => {
            let format = if args.workload == WorkloadKind::Azure {
                Format::Azure
            } else {
                Format::Huawei
            };
            let Some(trace) = &args.trace else {
                bail!(
                    "--workload {} needs --trace FILE/DIR ({})",
                    if format == Format::Azure {
                        "azure"
                    } else {
                        "huawei"
                    },
                    if format == Format::Azure {
                        "invocations_per_function_md.anon.dXX.csv of Azure Functions 2019"
                    } else {
                        "requests_minute/day_XX.csv of Huawei 2023"
                    }
                );
            };
            let day = args
                .day
                .unwrap_or(if format == Format::Azure { 3 } else { 0 });
            let window = Window {
                day,
                start_minute: (args.hour * 60 + args.minute) as usize,
                minutes: args.minutes as usize,
                warmup_minutes: args.warmup_minutes as usize,
                functions: args.functions as usize,
            };
            let path = traces::trace_file(format, trace, day);
            let functions = match format {
                Format::Azure => traces::read_azure(&path, &window)?,
                Format::Huawei => traces::read_huawei(&path, &window)?,
            };
            traces::workload(format, &path, functions, &TRACE_NAMES, &window, args.seed)?
        }
    };
    if !(args.scale > 0.0 && args.scale.is_finite()) {
        bail!("--scale must be a positive number, not {}", args.scale);
    }
    w.scale(args.scale);
    Ok(w)
}

/// The memory limit of each deployed function (TrEnv's stack.yml).
fn limits(w: &Workload) -> Vec<u64> {
    w.loads
        .iter()
        .map(|l| spec_of(&l.function).map_or(256, |s| s.memory_mb))
        .collect()
}

/// The default budget: a third of the workload's functions at their mean limit, and at least
/// the largest limit (a smaller budget could never start that function).
pub fn default_budget(limits: &[u64]) -> u64 {
    let n = limits.len() as u64;
    if n == 0 {
        return 0;
    }
    let mean = limits.iter().sum::<u64>() / n;
    let third = (n / 3).max(1) * mean;
    third.max(limits.iter().copied().max().unwrap_or(0))
}

fn default_keep_alive(kind: WorkloadKind) -> u64 {
    match kind {
        WorkloadKind::W1 => 120,
        WorkloadKind::W2 => 180,
        WorkloadKind::Azure | WorkloadKind::Huawei => 600,
    }
}

/// Runs `bench trace`.
pub async fn run(args: TraceArgs) -> Result<()> {
    let mut w = build_workload(&args)?;
    let limits = limits(&w);
    let budget = args
        .memory_budget_mb
        .unwrap_or_else(|| default_budget(&limits));
    let largest = limits.iter().copied().max().unwrap_or(0);
    if budget < largest {
        bail!("--memory-budget-mb {budget} is smaller than the largest function's limit ({largest} MB): that function could never start");
    }
    let keep_alive_secs = args
        .keep_alive_secs
        .unwrap_or(default_keep_alive(args.workload));
    let (warm_s, test_s) = w.seconds();
    let (warm_n, test_n) = w.totals();
    w.notes.push(format!(
        "memory budget {budget} MB for {} functions (limits {} MB in all, largest {largest} MB)",
        limits.len(),
        limits.iter().sum::<u64>()
    ));
    if w.functions().contains(&"js-json-serde") {
        w.notes.push(
            "js-json-serde is TrEnv's Node.js function; Kindling runs no Node.js yet, so it runs json_serdes".into(),
        );
    }
    println!(
        "workload {}: warm-up {warm_n} invocations over {warm_s} s, measured {test_n} over {test_s} s, peak {}/s, {} functions",
        w.name,
        w.peak_per_second(),
        w.loads.len()
    );
    for n in &w.notes {
        println!("  {n}");
    }
    if args.dry_run {
        for l in &w.loads {
            let sum = |v: &[u32]| v.iter().map(|&n| u64::from(n)).sum::<u64>();
            println!(
                "  {:<22} warm-up {:>6} measured {:>6}",
                l.function,
                sum(&l.warmup),
                sum(&l.test)
            );
        }
        return Ok(());
    }
    let mut benches: Vec<String> = w
        .loads
        .iter()
        .filter_map(|l| spec_of(&l.function).map(|s| s.benchmark.to_string()))
        .collect();
    benches.sort();
    benches.dedup();
    check_benchmarks(&args.benchmarks_dir, &benches)?;
    let shared = fresh::Shared {
        dir: args.work_dir.clone(),
        base_dir: args.base_dir.clone(),
        memory_budget_mb: budget,
        keep_alive_secs,
        extra_toml: fresh::extra_toml(args.worker_config.as_deref())?,
    };
    let mut policies = args.policy.clone();
    policies.dedup();
    let mut summary = Vec::new();
    for policy in policies {
        println!("policy {}: starting a fresh worker", policy.as_str());
        let file = run_policy(&args, &w, policy, &shared).await?;
        let path = record::write(&args.output_dir, &file)?;
        let line = summarize(&file);
        println!(
            "policy {}: {line}; results in {}",
            policy.as_str(),
            path.display()
        );
        summary.push(format!("{:<10} {line}", policy.as_str()));
    }
    println!("\n{}", summary.join("\n"));
    println!(
        "report: kindling bench report {}",
        args.output_dir.display()
    );
    Ok(())
}

/// One line about a policy's measured phase.
fn summarize(f: &TraceFile) -> String {
    let ok: Vec<f64> = f
        .measured()
        .filter(|r| r.invocation.status == Status::Ok)
        .map(|r| r.latency_ms)
        .collect();
    let failed = f.measured().count() - ok.len();
    let mut methods: BTreeMap<&str, u64> = BTreeMap::new();
    for r in f.measured() {
        *methods
            .entry(r.invocation.start.as_deref().unwrap_or("-"))
            .or_default() += 1;
    }
    let (peak, anon) = f.peak_mb();
    let s = Samples(ok);
    format!(
        "p50 {} ms, p90 {} ms, p99 {} ms, {failed} failed, starts {methods:?}, peak memory {:.0} MB ({:.0} MB anonymous)",
        fmt_ms(s.pct(50.0)),
        fmt_ms(s.pct(90.0)),
        fmt_ms(s.pct(99.0)),
        peak.unwrap_or(f64::NAN),
        anon.unwrap_or(f64::NAN)
    )
}

async fn run_policy(
    args: &TraceArgs,
    w: &Workload,
    policy: Policy,
    shared: &fresh::Shared,
) -> Result<TraceFile> {
    let mut worker = fresh::FreshWorker::start(policy, shared).await?;
    let mut c = worker.client();
    let status = crate::driver::worker_status(&mut c, worker.addr).await?;
    let storage = status["storage_dir"].as_str().map(PathBuf::from);
    let mut targets = HashMap::new();
    let mut events = HashMap::new();
    let mut functions = Vec::new();
    for l in &w.loads {
        let spec = spec_of(&l.function)
            .with_context(|| format!("{} is not a function of TrEnv's set", l.function))?;
        let dir = args.benchmarks_dir.join(spec.benchmark);
        let packed = pack_benchmark_with_memory(&dir, Some(spec.memory_mb))?;
        crate::driver::deploy_packed(&mut c, &l.function, packed).await?;
        let input_py = std::path::absolute(dir.join("input.py"))?;
        let own_storage = storage.as_ref().map(|d| d.join(&l.function));
        let event = generate_event(&args.python, &input_py, args.size, own_storage.as_deref())
            .await
            .with_context(|| format!("{}: cannot prepare the input", l.function))?;
        targets.insert(
            l.function.clone(),
            replay::Target {
                benchmark: spec.benchmark.to_string(),
                event: Bytes::from(serde_json::to_vec(&event)?),
            },
        );
        events.insert(l.function.clone(), (input_py, event));
        functions.push(FunctionInfo {
            name: l.function.clone(),
            benchmark: spec.benchmark.to_string(),
            memory_mb: spec.memory_mb,
        });
    }
    let opts = replay::Options {
        clients: args.clients as usize,
        timeout: Duration::from_secs(args.timeout_secs),
        max_retry: args.max_retry,
        seed: args.seed,
        token: worker.token.clone(),
    };
    let begin = now_unix();
    let (mut requests, samples) =
        replay::replay(worker.addr, &worker.cgroup_parent, w, &targets, &opts).await;
    let end = now_unix();
    worker.stop();
    // Each function's outputs checked by its benchmark's validate(), each distinct one once.
    for (function, (input_py, event)) in &events {
        let idx: Vec<usize> = (0..requests.len())
            .filter(|&i| &requests[i].function == function)
            .collect();
        let mut invs: Vec<_> = idx
            .iter()
            .map(|&i| requests[i].invocation.clone())
            .collect();
        validate(&args.python, input_py, event, &mut invs).await?;
        for (i, inv) in idx.into_iter().zip(invs) {
            requests[i].invocation = inv;
        }
    }
    // Outputs are kept only where they explain a failure: results stay small.
    for r in &mut requests {
        if r.invocation.status == Status::Ok {
            r.invocation.output = serde_json::Value::Null;
        }
    }
    let _ = std::fs::remove_dir_all(&worker.root);
    Ok(TraceFile {
        workload: w.name.clone(),
        policy: policy.as_str().into(),
        scale: args.scale,
        seed: args.seed,
        size: args.size.as_str().into(),
        memory_budget_mb: shared.memory_budget_mb,
        keep_alive_secs: shared.keep_alive_secs,
        zygotes: policy.zygotes(),
        start_order: policy.start_order().iter().map(|s| s.to_string()).collect(),
        policy_applied: worker.policy_keys,
        notes: w.notes.clone(),
        functions,
        kindling_version: env!("CARGO_PKG_VERSION").into(),
        begin,
        end,
        requests,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: TraceArgs,
    }

    fn parse(args: &[&str]) -> Result<TraceArgs, clap::Error> {
        Cmd::try_parse_from(std::iter::once("trace").chain(args.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn unknown_workloads_and_policies_list_the_valid_ones() {
        let err = parse(&["--workload", "w3"]).err().expect("w3").to_string();
        assert!(
            err.contains("[possible values: w1, w2, azure, huawei]"),
            "{err}"
        );
        let err = parse(&["--workload", "w1", "--policy", "full,fast"])
            .err()
            .expect("fast")
            .to_string();
        assert!(
            err.contains("[possible values: full, keepalive, nofork, noswitch]"),
            "{err}"
        );
        let a = parse(&[
            "--workload",
            "w2",
            "--policy",
            "full,nofork,noswitch,keepalive",
        ])
        .expect("ok");
        assert_eq!(
            a.policy,
            [
                Policy::Full,
                Policy::Nofork,
                Policy::Noswitch,
                Policy::Keepalive
            ]
        );
        assert_eq!(
            parse(&["--workload", "w2"]).expect("ok").policy,
            [Policy::Full, Policy::Keepalive]
        );
    }

    #[test]
    fn workloads_are_built_from_the_arguments() {
        let a = parse(&[
            "--workload",
            "w2",
            "--scale",
            "0.1",
            "--cycles",
            "1",
            "--warmup-cycles",
            "0",
        ])
        .expect("ok");
        let w = build_workload(&a).expect("w2");
        assert_eq!(w.totals(), (0, 48));
        let a = parse(&["--workload", "azure"]).expect("ok");
        let err = build_workload(&a).expect_err("no trace").to_string();
        assert!(err.contains("needs --trace"), "{err}");
        let a = parse(&["--workload", "huawei", "--trace", "/nonexistent/day_00.csv"]).expect("ok");
        let err = build_workload(&a).expect_err("missing").to_string();
        assert!(err.contains("/nonexistent/day_00.csv"), "{err}");
        let a = parse(&["--workload", "w1", "--scale", "0"]).expect("ok");
        assert!(build_workload(&a).is_err());
    }

    #[tokio::test]
    async fn a_budget_below_the_largest_limit_is_refused_before_any_worker_starts() {
        let a = parse(&["--workload", "w1", "--memory-budget-mb", "700", "--dry-run"]).expect("ok");
        let err = run(a).await.expect_err("too small").to_string();
        assert!(
            err.contains("smaller than the largest function's limit (768 MB)"),
            "{err}"
        );
        let a = parse(&["--workload", "w1", "--memory-budget-mb", "768", "--dry-run"]).expect("ok");
        run(a).await.expect("a dry run");
    }

    #[test]
    fn policies_map_onto_start_orders() {
        assert_eq!(Policy::Keepalive.start_order(), ["warm", "cold"]);
        assert!(!Policy::Keepalive.zygotes() && !Policy::Nofork.zygotes());
        assert!(Policy::Full.zygotes() && Policy::Noswitch.zygotes());
        assert!(!Policy::Noswitch.start_order().contains(&"switch"));
    }

    #[test]
    fn the_default_budget_holds_a_third_of_the_functions() {
        let w = workload::w1(1, 0, TRENV_SEED);
        let l = limits(&w);
        // 11 functions, 2768 MB of limits: 3 × 251 MB, raised to the largest (768 MB).
        assert_eq!(l.iter().sum::<u64>(), 2768);
        assert_eq!(default_budget(&l), 768);
        assert_eq!(default_budget(&[100; 9]), 300);
        assert_eq!(default_budget(&[]), 0);
    }
}
