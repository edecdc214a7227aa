//! `kindling bench`: start-up latency measured side by side with baselines in one run.
//!
//! `startup` compares start methods end to end from this client. Without benchmark names it
//! deploys a hello function (OpenLambda format) and measures Kindling cold (forced with
//! `X-Kindling-Start: cold`), fork (forced with `fork`, after one untimed fork that creates the
//! zygotes) and warm, `runc run` of the same handler in the same root filesystem, and a bare
//! `chroot ROOTFS python3` of the same handler. With benchmark names (SeBS layout, under
//! `--benchmarks-dir`) it does the same for each benchmark in one run: deploy, generate the
//! event for `--size`, measure Kindling cold, fork and warm, then the chroot and runc baselines
//! (`crate::baseline`) running the same handler with the same event in the instance layout the
//! worker reports, and checks every output with the benchmark's `validate()`: an output that
//! fails its check counts as incorrect, never as a start.

use crate::baseline::{self, ChrootTree, RuncBundle};
use crate::sebs::{Invocation, Size, StartMethod, Status};
use anyhow::{anyhow, bail, Context, Result};
use hyper::body::Bytes;
use hyper::Method;
use kindling_api::client::Client;
use kindling_sandbox::cgroup::Limits;
use kindling_sandbox::spec::MountSpec;
use kindling_worker::instance::InstanceLayout;
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Cold, fork and warm start latency against runc and a bare chroot, same rootfs, one run:
    /// of a hello function, or of benchmarks of benchmarks/ with their outputs checked.
    Startup(StartupArgs),
    /// Cold, fork and warm starts of hello, numpy and pandas functions, and the memory of
    /// forked against cold-started instances.
    Fork {
        /// Measured starts per function and method.
        #[arg(long, default_value_t = 50)]
        repetitions: usize,
        /// Instances whose memory is compared (fork against cold).
        #[arg(long, default_value_t = 20)]
        memory_instances: usize,
        /// Write the results as JSON here.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Deploy with an empty store, deploy again with the same requirements, and `pip install
    /// --target` of the same closure, in one run.
    Packages {
        /// Requirements of the benchmark function.
        #[arg(long, num_args = 1.., default_values_t = ["numpy".to_string(), "pandas".to_string()])]
        requirements: Vec<String>,
        /// Python for the pip baseline (same major.minor as the base's).
        #[arg(long, default_value = "python3")]
        pip_python: String,
        /// Write the results as JSON here.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// SeBS's perf-cost experiment: deploy benchmarks of benchmarks/, invoke each N times from
    /// C clients with a start method, validate the outputs, write JSON and CSV results.
    Run(crate::sebs::RunArgs),
    /// Markdown report with tables and SVG/PNG plots of the results of `bench run`.
    Report(crate::report::ReportArgs),
}

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

/// The handler every method runs.
const HANDLER: &str = "def f(event):\n    return {\"hello\": \"world\"}\n";

/// Runs the handler once outside Kindling, printing its JSON result (baselines).
const DRIVER: &str = "import json, sys\nprint(json.dumps(f(json.loads(sys.argv[1]))))\n";

pub async fn run(addr: SocketAddr, command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Startup(args) if args.benchmarks.is_empty() => startup(addr, args).await,
        BenchCommand::Startup(args) => startup_benchmarks(addr, args).await,
        BenchCommand::Fork {
            repetitions,
            memory_instances,
            output,
        } => fork(addr, repetitions, memory_instances, output).await,
        BenchCommand::Packages {
            requirements,
            pip_python,
            output,
        } => packages(addr, &requirements, &pip_python, output).await,
        BenchCommand::Run(args) => crate::sebs::run(addr, args).await,
        BenchCommand::Report(args) => crate::report::run(args),
    }
}

/// Latency samples of one method, in milliseconds.
#[derive(Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn pct(&self, p: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v[idx.min(v.len() - 1)]
    }

    fn json(&self) -> serde_json::Value {
        json!({"n": self.0.len(), "p50_ms": self.pct(50.0), "p90_ms": self.pct(90.0), "p99_ms": self.pct(99.0),
               "min_ms": self.pct(0.0), "max_ms": self.pct(100.0)})
    }
}

/// The worker's `/status`, with a clear error when no worker answers.
async fn worker_status(c: &mut Client, addr: SocketAddr) -> Result<serde_json::Value> {
    let r = c.get("/status").await?;
    if !r.status.is_success() {
        bail!(
            "{addr} answered /status with {}; is it a Kindling worker?",
            r.status
        );
    }
    serde_json::from_slice(&r.body).context("the worker's /status is not JSON")
}

fn status_rootfs(status: &serde_json::Value) -> Result<PathBuf> {
    Ok(PathBuf::from(status["rootfs"].as_str().ok_or_else(
        || anyhow!("worker did not report its rootfs"),
    )?))
}

/// One start of the hello function, timed from this client; fails unless it came back with
/// `expect` as its start method and the right output.
async fn hello_once(c: &mut Client, forced: Option<&str>, expect: &str) -> Result<(f64, String)> {
    hello_start(c, "bench-hello", forced, expect).await
}

/// One start of `function` (a hello function), as [`hello_once`].
async fn hello_start(
    c: &mut Client,
    function: &str,
    forced: Option<&str>,
    expect: &str,
) -> Result<(f64, String)> {
    let headers: Vec<(&str, &str)> = forced
        .map(|m| vec![("x-kindling-start", m)])
        .unwrap_or_default();
    if forced.is_some() {
        c.settle().await?;
    }
    let t = Instant::now();
    let r = c
        .request(Method::POST, &format!("/run/{function}"), &headers, "{}")
        .await?
        .ok()?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let how = r.header("x-kindling-start").unwrap_or("");
    if how != expect {
        bail!(
            "expected a {expect} start, got `{how}`{}",
            if expect == "fork" {
                " (are zygotes enabled?)"
            } else {
                ""
            }
        );
    }
    check(&r.body)?;
    Ok((ms, r.header("x-kindling-timing").unwrap_or("").to_string()))
}

/// The runc baseline of the hello function: the same isolation as a function sandbox (new
/// namespaces, no network, a read-only root, /proc, /dev and a /tmp tmpfs).
fn hello_layout() -> InstanceLayout {
    InstanceLayout {
        interpreter: Vec::new(),
        mounts: vec![
            MountSpec::Proc {
                target: "/proc".into(),
            },
            MountSpec::Dev {
                target: "/dev".into(),
            },
            MountSpec::Tmpfs {
                target: "/tmp".into(),
                size_bytes: 64 << 20,
            },
        ],
        env: [
            ("PATH", "/usr/bin:/bin"),
            ("HOME", "/tmp"),
            ("LANG", "C.UTF-8"),
        ]
        .map(|(k, v)| (k.to_string(), Some(v.to_string())))
        .to_vec(),
        cwd: "/".into(),
        uid: 65534,
        gid: 65534,
        limits: Limits {
            memory_bytes: Some(256 << 20),
            cpu_cores: None,
            pids: Some(64),
        },
        network: false,
    }
}

async fn startup(addr: SocketAddr, args: StartupArgs) -> Result<()> {
    let StartupArgs {
        repetitions,
        output,
        no_runc,
        network,
        ..
    } = args;
    let reps = repetitions as usize;
    let mut c = Client::new(addr);
    let status = worker_status(&mut c, addr).await?;
    let rootfs = status_rootfs(&status)?;
    let python = status["base"]["python"]
        .as_str()
        .unwrap_or("/usr/bin/python3")
        .to_string();
    let packed = crate::examples::pack(&[("f.py", HANDLER)])?;
    c.request(Method::POST, "/registry/bench-hello", &[], packed)
        .await?
        .ok()?;
    let event = "{}";

    if network {
        let packed = crate::examples::pack(&[("f.py", HANDLER), ("ol.yaml", "network: true\n")])?;
        c.request(Method::POST, "/registry/bench-hello-net", &[], packed)
            .await?
            .ok()?;
    }
    eprintln!(
        "kindling cold x{reps}{}",
        if network {
            ", alternating with networked"
        } else {
            ""
        }
    );
    let mut cold = Samples::default();
    let mut cold_server = Samples::default();
    let mut networked = Samples::default();
    let mut networked_server = Samples::default();
    for _ in 0..reps {
        let (ms, timing) = hello_once(&mut c, Some("cold"), "cold").await?;
        cold.0.push(ms);
        if let Some(total) = timing_total(Some(&timing)) {
            cold_server.0.push(total);
        }
        if network {
            let (ms, timing) = hello_start(&mut c, "bench-hello-net", Some("cold"), "cold").await?;
            networked.0.push(ms);
            if let Some(total) = timing_total(Some(&timing)) {
                networked_server.0.push(total);
            }
        }
    }
    eprintln!("kindling fork x{reps} (after one untimed fork that creates the zygotes)");
    hello_once(&mut c, Some("fork"), "fork").await?;
    let mut fork = Samples::default();
    for _ in 0..reps {
        fork.0
            .push(hello_once(&mut c, Some("fork"), "fork").await?.0);
    }
    eprintln!("kindling warm x{reps}");
    let mut warm = Samples::default();
    c.request(Method::POST, "/run/bench-hello", &[], event)
        .await?
        .ok()?;
    for _ in 0..reps {
        warm.0.push(hello_once(&mut c, None, "warm").await?.0);
    }
    let code = format!("{HANDLER}{DRIVER}");
    eprintln!("chroot python3 x{reps}");
    let mut chroot = Samples::default();
    for _ in 0..reps {
        let t = Instant::now();
        let out = Command::new("chroot")
            .arg(&rootfs)
            .args([python.as_str(), "-c", &code, event])
            .stdin(Stdio::null())
            .output()
            .context("cannot run chroot")?;
        chroot.0.push(t.elapsed().as_secs_f64() * 1000.0);
        if !out.status.success() {
            bail!(
                "chroot baseline failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        check(&out.stdout)?;
    }
    let mut runc = Samples::default();
    if !no_runc {
        eprintln!("runc run x{reps}");
        let config = baseline::oci_config(
            &rootfs,
            &hello_layout(),
            &[python.clone(), "-c".into(), code.clone(), event.into()],
        );
        let bundle = RuncBundle::create(Path::new("runc"), "hello", &config)?;
        for i in 0..reps {
            let id = format!("kindling-bench-{}-{i}", std::process::id());
            let t = Instant::now();
            let out = Command::new("runc")
                .args(["run", "--bundle"])
                .arg(bundle.path())
                .arg(&id)
                .stdin(Stdio::null())
                .output()
                .context("cannot run runc (apt-get install runc, or pass --no-runc)")?;
            runc.0.push(t.elapsed().as_secs_f64() * 1000.0);
            if !out.status.success() {
                bail!(
                    "runc baseline failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            check(&out.stdout)?;
        }
    }

    let cold50 = cold.pct(50.0);
    let report = json!({
        "benchmark": "startup",
        "function": "hello (OpenLambda format)",
        "repetitions": reps,
        "rootfs": rootfs,
        "kindling_cold": cold.json(),
        "kindling_cold_inside_worker": cold_server.json(),
        "kindling_cold_networked": if network { networked.json() } else { serde_json::Value::Null },
        "kindling_cold_networked_inside_worker": if network { networked_server.json() } else { serde_json::Value::Null },
        "kindling_fork": fork.json(),
        "kindling_warm": warm.json(),
        "chroot_python3": chroot.json(),
        "runc_run": if no_runc { serde_json::Value::Null } else { runc.json() },
        "ratios": {
            "cold_p50_over_chroot_p50": cold50 / chroot.pct(50.0),
            "cold_p50_over_runc_p50": if no_runc { serde_json::Value::Null } else { json!(cold50 / runc.pct(50.0)) },
            "cold_p50_over_fork_p50": cold50 / fork.pct(50.0),
        },
    });
    println!(
        "{:<28} {:>9} {:>9} {:>9}",
        "method", "p50 ms", "p90 ms", "p99 ms"
    );
    for (name, s) in [
        ("kindling cold", &cold),
        ("kindling cold (in worker)", &cold_server),
        ("kindling cold, networked", &networked),
        ("  (in worker)", &networked_server),
        ("kindling fork", &fork),
        ("kindling warm", &warm),
        ("chroot python3", &chroot),
        ("runc run", &runc),
    ] {
        if !s.0.is_empty() {
            println!(
                "{:<28} {:>9.3} {:>9.3} {:>9.3}",
                name,
                s.pct(50.0),
                s.pct(90.0),
                s.pct(99.0)
            );
        }
    }
    println!(
        "cold p50 / chroot p50 = {:.2} (target <= 1.3)",
        cold50 / chroot.pct(50.0)
    );
    if !no_runc {
        println!(
            "cold p50 / runc p50   = {:.2} (target <= 0.5)",
            cold50 / runc.pct(50.0)
        );
    }
    println!("cold p50 / fork p50   = {:.2}", cold50 / fork.pct(50.0));
    println!("warm p50 = {:.3} ms (target <= 1 ms)", warm.pct(50.0));
    if let Some(path) = output {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("results written to {}", path.display());
    }
    if network {
        let _ = c
            .request(Method::DELETE, "/registry/bench-hello-net", &[], Vec::new())
            .await;
    }
    let _ = c
        .request(Method::DELETE, "/registry/bench-hello", &[], Vec::new())
        .await;
    Ok(())
}

fn check(body: &[u8]) -> Result<()> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .with_context(|| format!("bad output: {}", String::from_utf8_lossy(body)))?;
    if v != json!({"hello": "world"}) {
        bail!("wrong output: {v}");
    }
    Ok(())
}

fn timing_total(header: Option<&str>) -> Option<f64> {
    header?
        .split(';')
        .find_map(|kv| kv.strip_prefix("total=")?.parse().ok())
}

/// The starts of one method on one benchmark: latencies of the correct ones, and counts.
struct MethodResult {
    /// Key in the JSON results.
    key: &'static str,
    label: &'static str,
    /// Client latency of every `ok` start (output checked).
    samples: Samples,
    ok: usize,
    incorrect: usize,
    failed: usize,
    first_problem: Option<String>,
}

impl MethodResult {
    fn of(key: &'static str, label: &'static str, invocations: &[Invocation]) -> Self {
        let count = |s: Status| invocations.iter().filter(|i| i.status == s).count();
        MethodResult {
            key,
            label,
            samples: Samples(
                invocations
                    .iter()
                    .filter(|i| i.status == Status::Ok)
                    .map(|i| i.times.client as f64 / 1000.0)
                    .collect(),
            ),
            ok: count(Status::Ok),
            incorrect: count(Status::Incorrect),
            failed: count(Status::Error),
            first_problem: invocations
                .iter()
                .find(|i| i.status != Status::Ok)
                .map(|i| {
                    format!(
                        "{}: {}",
                        i.status.as_str(),
                        i.error.as_deref().unwrap_or("-")
                    )
                }),
        }
    }

    fn json(&self) -> serde_json::Value {
        let mut v = self.samples.json();
        v["n_ok"] = json!(self.ok);
        v["n_incorrect"] = json!(self.incorrect);
        v["n_failed"] = json!(self.failed);
        v["first_problem"] = json!(self.first_problem);
        v
    }
}

/// What every benchmark of one `bench startup` run shares.
struct StartupRun {
    addr: SocketAddr,
    args: StartupArgs,
    rootfs: PathBuf,
    storage_dir: Option<PathBuf>,
    chroot: PathBuf,
    runc: Option<PathBuf>,
}

/// Resolves after SIGINT or SIGTERM: the run is dropped, so that the baselines' guards
/// unmount the chroot tree and remove the bundle.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                r = tokio::signal::ctrl_c() => if r.is_err() { term.recv().await; },
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Whether this process runs as root (the chroot baseline mounts and chroots).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

async fn startup_benchmarks(addr: SocketAddr, args: StartupArgs) -> Result<()> {
    crate::sebs::check_benchmarks(&args.benchmarks_dir, &args.benchmarks)?;
    let mut c = Client::new(addr);
    let status = worker_status(&mut c, addr).await?;
    if !is_root() {
        bail!("`bench startup BENCH...` runs its baselines with mount, chroot and runc: run it as root");
    }
    let chroot = baseline::host_program("chroot")?;
    let runc = if args.no_runc {
        None
    } else {
        Some(baseline::host_program("runc").context("apt-get install runc, or pass --no-runc")?)
    };
    let storage_dir = args.storage_dir.clone().or_else(|| {
        status["storage_dir"]
            .as_str()
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
    });
    let run = StartupRun {
        addr,
        rootfs: status_rootfs(&status)?,
        storage_dir,
        chroot,
        runc,
        args,
    };
    let mut results = Vec::new();
    let mut problems = Vec::new();
    let mut stopped = None;
    let measured = async {
        for bench in &run.args.benchmarks {
            // A worker that went away ends the run with the client's one message.
            if let Err(e) = c.get("/status").await {
                stopped = Some(e);
                break;
            }
            match startup_benchmark(&mut c, &run, bench).await {
                Ok((result, mut p)) => {
                    results.push(result);
                    problems.append(&mut p);
                }
                Err(e) => {
                    eprintln!("{bench}: {e:#}");
                    problems.push(format!("{bench}: {e}"));
                }
            }
        }
    };
    tokio::select! {
        () = measured => {}
        () = stop_signal() => bail!("interrupted (the baselines' mounts and bundles are removed)"),
    }
    if let Some(path) = &run.args.output {
        let report = json!({
            "benchmark": "startup",
            "size": run.args.size,
            "repetitions": run.args.repetitions,
            "rootfs": run.rootfs,
            "worker": addr.to_string(),
            "kindling_version": env!("CARGO_PKG_VERSION"),
            "results": results,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    if let Some(e) = stopped {
        return Err(e);
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

/// Measures one benchmark: Kindling cold, fork and warm, then the chroot and runc baselines.
/// Returns its JSON result and its problems (incorrect or failed starts).
async fn startup_benchmark(
    c: &mut Client,
    run: &StartupRun,
    bench: &str,
) -> Result<(serde_json::Value, Vec<String>)> {
    let args = &run.args;
    let reps = args.repetitions;
    let dir = args.benchmarks_dir.join(bench);
    let function = format!("bench-{bench}");
    let input_py = std::path::absolute(dir.join("input.py"))?;
    let function_storage = run.storage_dir.as_ref().map(|d| d.join(&function));
    let event = crate::sebs::generate_event(
        &args.python,
        &input_py,
        args.size,
        function_storage.as_deref(),
    )
    .await
    .context("cannot prepare the input")?;
    eprintln!("{bench}: deploying {function}");
    crate::sebs::deploy(c, &function, &dir).await?;
    let info: serde_json::Value =
        serde_json::from_slice(&c.get(&format!("/registry/{function}")).await?.ok()?.body)?;
    let mut layout: InstanceLayout = serde_json::from_value(info["instance"].clone()).context(
        "the worker does not report how instances are laid out (`instance` in GET /registry/<name>); is it older than this kindling?",
    )?;
    // The worker's storage serves only its sandboxes: the baselines get the function's buckets
    // from a service of their own, stopped when this returns.
    let _baseline_storage = match &run.storage_dir {
        Some(d) => baseline::BaselineStorage::serve(&mut layout, d, &function, bench)?,
        None => None,
    };
    let body = Bytes::from(serde_json::to_vec(&event)?);
    let limit = crate::sebs::reply_limit(&dir);
    let mut methods = Vec::new();

    for (start, key, label) in [
        (StartMethod::Cold, "kindling_cold", "kindling cold"),
        (StartMethod::Fork, "kindling_fork", "kindling fork"),
        (StartMethod::Warm, "kindling_warm", "kindling warm"),
    ] {
        let progress = crate::sebs::Progress::new(format!("{bench} {label}"), reps);
        let ticker = progress.spawn_ticker();
        let plan = crate::sebs::Plan {
            addr: run.addr,
            function: function.clone(),
            event: body.clone(),
            start,
            repetitions: reps,
            clients: 1,
            limit,
        };
        let mut invocations = crate::sebs::measure(&plan, progress.clone()).await;
        progress.finish(ticker);
        if start == StartMethod::Warm {
            // Cold and fork are forced (a reply with another method is already a failure);
            // warm is the default policy after the warm-up, so check that it was one.
            for inv in &mut invocations {
                if inv.status == Status::Ok && inv.start.as_deref() != Some("warm") {
                    let why = format!(
                        "expected a warm start, the worker used {}",
                        inv.start.as_deref().unwrap_or("an unreported method")
                    );
                    *inv = inv.clone().fail(why);
                }
            }
        }
        crate::sebs::validate(&args.python, &input_py, &event, &mut invocations).await?;
        methods.push(MethodResult::of(key, label, &invocations));
    }

    let argv = baseline::driver_argv(&layout);
    let input = serde_json::to_vec(&event)?;
    {
        // Prepared once, not timed; unmounted when dropped, on every path out of this block.
        let tree = ChrootTree::prepare(&run.rootfs, &layout, bench)?;
        let progress = crate::sebs::Progress::new(format!("{bench} chroot python3"), reps);
        let ticker = progress.spawn_ticker();
        let mut invocations = Vec::new();
        for _ in 0..reps {
            let inv = tree
                .start_once(&run.chroot, &layout, &argv, &input, limit)
                .await;
            progress.record(inv.status == Status::Ok);
            invocations.push(inv);
        }
        progress.finish(ticker);
        drop(tree);
        crate::sebs::validate(&args.python, &input_py, &event, &mut invocations).await?;
        methods.push(MethodResult::of(
            "chroot_python3",
            "chroot python3",
            &invocations,
        ));
    }
    if let Some(runc) = &run.runc {
        baseline::check_mount_points(&run.rootfs, &layout)?;
        let config = baseline::oci_config(&run.rootfs, &layout, &argv);
        let mut bundle = RuncBundle::create(runc, bench, &config)?;
        let progress = crate::sebs::Progress::new(format!("{bench} runc run"), reps);
        let ticker = progress.spawn_ticker();
        let mut invocations = Vec::new();
        for _ in 0..reps {
            let inv = bundle.start_once(&input, limit).await;
            progress.record(inv.status == Status::Ok);
            invocations.push(inv);
        }
        progress.finish(ticker);
        drop(bundle);
        crate::sebs::validate(&args.python, &input_py, &event, &mut invocations).await?;
        methods.push(MethodResult::of("runc_run", "runc run", &invocations));
    }

    let p50 = |key: &str| {
        methods
            .iter()
            .find(|m| m.key == key)
            .map_or(f64::NAN, |m| m.samples.pct(50.0))
    };
    let cold50 = p50("kindling_cold");
    let ratio = |key: &str| {
        let r = cold50 / p50(key);
        if r.is_finite() {
            json!(r)
        } else {
            serde_json::Value::Null
        }
    };
    println!(
        "\n{bench} (size {}, {reps} starts per method)",
        args.size.as_str()
    );
    println!(
        "{:<16} {:>5} {:>9} {:>6} {:>9} {:>9} {:>9}",
        "method", "ok", "incorrect", "failed", "p50 ms", "p90 ms", "p99 ms"
    );
    let mut problems = Vec::new();
    for m in &methods {
        let ms = |p: f64| {
            let v = m.samples.pct(p);
            if v.is_finite() {
                format!("{v:.3}")
            } else {
                "-".into()
            }
        };
        println!(
            "{:<16} {:>5} {:>9} {:>6} {:>9} {:>9} {:>9}",
            m.label,
            m.ok,
            m.incorrect,
            m.failed,
            ms(50.0),
            ms(90.0),
            ms(99.0)
        );
        if m.incorrect > 0 || m.failed > 0 {
            eprintln!(
                "  {bench} {}: first {}",
                m.label,
                m.first_problem.as_deref().unwrap_or("-")
            );
            problems.push(format!(
                "{bench} {}: {} incorrect, {} failed",
                m.label, m.incorrect, m.failed
            ));
        }
    }
    let fmt = |v: &serde_json::Value| v.as_f64().map_or("-".into(), |r| format!("{r:.2}"));
    let ratios = json!({
        "cold_p50_over_fork_p50": ratio("kindling_fork"),
        "cold_p50_over_chroot_p50": ratio("chroot_python3"),
        "cold_p50_over_runc_p50": ratio("runc_run"),
    });
    println!(
        "cold/fork p50 = {}, cold/chroot p50 = {}, cold/runc p50 = {}",
        fmt(&ratios["cold_p50_over_fork_p50"]),
        fmt(&ratios["cold_p50_over_chroot_p50"]),
        fmt(&ratios["cold_p50_over_runc_p50"])
    );
    let mut result = json!({
        "benchmark": bench,
        "function": function,
        "size": args.size,
        "memory_mb": crate::sebs::config_memory(&dir),
        "runc_run": serde_json::Value::Null,
        "ratios": ratios,
    });
    for m in &methods {
        result[m.key] = m.json();
    }
    Ok((result, problems))
}

/// Deploys a function with `requirements`, returning the final deploy JSON and the wall time.
async fn deploy_timed(
    c: &mut Client,
    name: &str,
    requirements: &[String],
) -> Result<(serde_json::Value, f64)> {
    let code = format!(
        "import importlib\n\ndef f(event):\n    return {{m: importlib.import_module(m).__version__ for m in {:?}}}\n",
        requirements.iter().map(|r| module_name(r)).collect::<Vec<_>>()
    );
    let packed = crate::examples::pack(&[
        ("f.py", &code),
        ("requirements.txt", &(requirements.join("\n") + "\n")),
    ])?;
    let t = Instant::now();
    let r = c
        .request(Method::POST, &format!("/registry/{name}"), &[], packed)
        .await?
        .ok()?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    Ok((serde_json::from_slice(&r.body)?, ms))
}

/// The import name of a simple requirement (`numpy>=2` → `numpy`).
fn module_name(req: &str) -> String {
    req.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'))
        .next()
        .unwrap_or(req)
        .replace('-', "_")
        .to_lowercase()
}

async fn store_bytes(c: &mut Client) -> Result<u64> {
    let list: Vec<serde_json::Value> =
        serde_json::from_slice(&c.get("/packages").await?.ok()?.body)?;
    Ok(list.iter().filter_map(|p| p["size_bytes"].as_u64()).sum())
}

async fn stat(c: &mut Client, key: &str) -> Result<u64> {
    let s: serde_json::Value = serde_json::from_slice(&c.get("/stats").await?.ok()?.body)?;
    Ok(s[key].as_u64().unwrap_or(0))
}

async fn packages(
    addr: SocketAddr,
    requirements: &[String],
    pip_python: &str,
    output: Option<PathBuf>,
) -> Result<()> {
    let mut c = Client::new(addr);
    // Learn the closure, then empty the store of it so the first timed deploy starts from zero.
    eprintln!("preparing: resolving {requirements:?} and emptying the store of its closure");
    let (first, _) = deploy_timed(&mut c, "bench-pkg-a", requirements).await?;
    let closure: Vec<String> = first["packages"]
        .as_array()
        .ok_or_else(|| anyhow!("no package list in {first}"))?
        .iter()
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect();
    for f in ["bench-pkg-a", "bench-pkg-b"] {
        let _ = c
            .request(Method::DELETE, &format!("/registry/{f}"), &[], Vec::new())
            .await?;
    }
    for p in &closure {
        let _ = c
            .request(Method::DELETE, &format!("/packages/{p}"), &[], Vec::new())
            .await?;
    }
    let left: Vec<serde_json::Value> =
        serde_json::from_slice(&c.get("/packages").await?.ok()?.body)?;
    let in_use: Vec<String> = left
        .iter()
        .filter(|p| {
            let key = format!(
                "{}=={}",
                p["name"].as_str().unwrap_or(""),
                p["version"].as_str().unwrap_or("")
            );
            closure.contains(&key)
        })
        .map(|p| {
            format!(
                "{}=={} (used by {})",
                p["name"].as_str().unwrap_or(""),
                p["version"].as_str().unwrap_or(""),
                p["users"]
            )
        })
        .collect();
    if !in_use.is_empty() {
        bail!(
            "cannot empty the store of the closure, other functions use: {}; remove them or run against a worker with its own --root",
            in_use.join(", ")
        );
    }
    let bytes_empty = store_bytes(&mut c).await?;

    eprintln!("deploy with an empty store");
    let pulls0 = stat(&mut c, "pull-package.cnt").await?;
    let (a, a_ms) = deploy_timed(&mut c, "bench-pkg-a", requirements).await?;
    let pulls1 = stat(&mut c, "pull-package.cnt").await?;
    let bytes_a = store_bytes(&mut c).await?;

    eprintln!("deploy of a second function with the same requirements");
    let (b, b_ms) = deploy_timed(&mut c, "bench-pkg-b", requirements).await?;
    let pulls2 = stat(&mut c, "pull-package.cnt").await?;
    let bytes_b = store_bytes(&mut c).await?;
    let r = c
        .request(Method::POST, "/run/bench-pkg-b", &[], "{}")
        .await?
        .ok()?;
    let versions: serde_json::Value = serde_json::from_slice(&r.body)?;

    eprintln!("pip install --target of the same closure (one untimed warm-up for pip's cache)");
    let dir = std::env::temp_dir().join(format!("kindling-bench-pip-{}", std::process::id()));
    let pip = |target: &Path| -> Result<f64> {
        let _ = std::fs::remove_dir_all(target);
        let t = Instant::now();
        let out = Command::new(pip_python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(target)
            .args(&closure)
            .stdin(Stdio::null())
            .output()
            .context("cannot run pip")?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if !out.status.success() {
            bail!("pip failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(ms)
    };
    pip(&dir)?;
    let pip_ms = pip(&dir)?;
    let _ = std::fs::remove_dir_all(&dir);

    let report = json!({
        "benchmark": "packages",
        "requirements": requirements,
        "closure": closure,
        "imported_versions": versions,
        "empty_store_deploy": {"wall_ms": a_ms, "package_ms": a["package_ms"], "installs": pulls1 - pulls0, "bytes_added": bytes_a - bytes_empty},
        "second_deploy_same_requirements": {"wall_ms": b_ms, "package_ms": b["package_ms"], "installs": pulls2 - pulls1, "bytes_added": bytes_b as i64 - bytes_a as i64},
        "pip_install_target_ms": pip_ms,
        "speedup_empty_store_vs_pip": pip_ms / a_ms,
    });
    println!("closure: {}", closure.join(" "));
    println!(
        "{:<44} {:>10} {:>10} {:>9} {:>12}",
        "step", "wall ms", "pkg ms", "installs", "bytes added"
    );
    println!(
        "{:<44} {:>10.1} {:>10.1} {:>9} {:>12}",
        "deploy, empty store",
        a_ms,
        a["package_ms"].as_f64().unwrap_or(f64::NAN),
        pulls1 - pulls0,
        bytes_a - bytes_empty
    );
    println!(
        "{:<44} {:>10.1} {:>10.1} {:>9} {:>12}",
        "deploy, second function, same requirements",
        b_ms,
        b["package_ms"].as_f64().unwrap_or(f64::NAN),
        pulls2 - pulls1,
        bytes_b as i64 - bytes_a as i64
    );
    println!(
        "{:<44} {:>10.1}",
        "pip install --target (warm pip cache)", pip_ms
    );
    println!(
        "empty-store deploy is {:.1}x faster than pip (target >= 3)",
        pip_ms / a_ms
    );
    if let Some(path) = output {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("results written to {}", path.display());
    }
    for f in ["bench-pkg-a", "bench-pkg-b"] {
        let _ = c
            .request(Method::DELETE, &format!("/registry/{f}"), &[], Vec::new())
            .await;
    }
    Ok(())
}

/// The functions of `bench fork`: name, code, requirements.
const FORK_FUNCTIONS: &[(&str, &str, &str)] = &[
    ("bench-fork-hello", "def f(event):\n    return {\"hello\": \"world\"}\n", ""),
    (
        "bench-fork-numpy",
        "import numpy as np\n\ndef f(event):\n    a = np.arange(16.0).reshape(4, 4)\n    return {\"trace\": float(np.trace(a @ a))}\n",
        "numpy\n",
    ),
    (
        "bench-fork-pandas",
        "import pandas as pd\n\ndef f(event):\n    df = pd.DataFrame({\"a\": range(10), \"b\": range(10)})\n    return {\"sum\": int((df.a * df.b).sum())}\n",
        "pandas\n",
    ),
];

/// One start of `name` with a forced method; returns (client ms, start method, memory bytes).
async fn start_once(
    c: &mut Client,
    name: &str,
    method: Option<&str>,
) -> Result<(f64, String, Option<u64>)> {
    let headers: Vec<(&str, &str)> = method
        .map(|m| vec![("x-kindling-start", m)])
        .unwrap_or_default();
    if method.is_some() {
        c.settle().await?;
    }
    let t = Instant::now();
    let r = c
        .request(Method::POST, &format!("/run/{name}"), &headers, "{}")
        .await?
        .ok()?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    Ok((
        ms,
        r.header("x-kindling-start").unwrap_or("").to_string(),
        r.header("x-kindling-memory").and_then(|m| m.parse().ok()),
    ))
}

async fn fork(
    addr: SocketAddr,
    reps: usize,
    memory_instances: usize,
    output: Option<PathBuf>,
) -> Result<()> {
    let mut c = Client::new(addr);
    let mut results = serde_json::Map::new();
    println!(
        "{:<20} {:>6} {:>10} {:>10} {:>10}",
        "function", "start", "p50 ms", "p99 ms", "n"
    );
    for (name, code, reqs) in FORK_FUNCTIONS {
        let mut files = vec![("f.py", *code)];
        if !reqs.is_empty() {
            files.push(("requirements.txt", *reqs));
        }
        eprintln!("deploying {name}");
        c.request(
            Method::POST,
            &format!("/registry/{name}"),
            &[],
            crate::examples::pack(&files)?,
        )
        .await?
        .ok()?;
        // The first fork creates the zygotes; it is not a fork start of a ready zygote.
        let (_, how, _) = start_once(&mut c, name, Some("fork")).await?;
        if how != "fork" {
            bail!("{name}: a forced fork start came back as `{how}` (are zygotes enabled?)");
        }
        let mut entry = serde_json::Map::new();
        for method in ["cold", "fork", "warm"] {
            eprintln!("{name}: {method} x{reps}");
            let mut samples = Samples::default();
            for _ in 0..reps {
                let forced = (method != "warm").then_some(method);
                let (ms, how, _) = start_once(&mut c, name, forced).await?;
                if how != method {
                    bail!("{name}: expected a {method} start, got `{how}`");
                }
                samples.0.push(ms);
            }
            println!(
                "{:<20} {:>6} {:>10.3} {:>10.3} {:>10}",
                name,
                method,
                samples.pct(50.0),
                samples.pct(99.0),
                samples.0.len()
            );
            entry.insert(method.to_string(), samples.json());
        }
        let cold = entry["cold"]["p50_ms"].as_f64().unwrap_or(f64::NAN);
        let fork = entry["fork"]["p50_ms"].as_f64().unwrap_or(f64::NAN);
        entry.insert("cold_over_fork_p50".into(), json!(cold / fork));
        results.insert(name.to_string(), serde_json::Value::Object(entry));
    }
    // Memory: instances started by fork against instances started cold, measured by the cgroup
    // of each sandbox right after its first invocation (memory.usage_in_bytes / memory.current).
    let name = "bench-fork-pandas";
    eprintln!("memory: {memory_instances} fork and {memory_instances} cold instances of {name}");
    let mut fork_mem = Vec::new();
    let mut cold_mem = Vec::new();
    for _ in 0..memory_instances {
        fork_mem.push(start_once(&mut c, name, Some("fork")).await?.2.unwrap_or(0));
        cold_mem.push(start_once(&mut c, name, Some("cold")).await?.2.unwrap_or(0));
    }
    let status: serde_json::Value = serde_json::from_slice(&c.get("/status").await?.ok()?.body)?;
    // Conservatively, every zygote alive counts (the pandas zygote and all its ancestors).
    let zygote_mem: u64 = status["zygotes"]
        .as_array()
        .map(|zs| zs.iter().filter_map(|z| z["memory_bytes"].as_u64()).sum())
        .unwrap_or(0);
    let fork_total: u64 = fork_mem.iter().sum();
    let cold_total: u64 = cold_mem.iter().sum();
    let ratio = (fork_total + zygote_mem) as f64 / cold_total as f64;
    println!(
        "memory of {memory_instances} instances (cgroup usage): fork {:.1} MB (+ all zygotes {:.1} MB) vs cold {:.1} MB: {:.1}% (target <= 35%)",
        fork_total as f64 / 1e6,
        zygote_mem as f64 / 1e6,
        cold_total as f64 / 1e6,
        ratio * 100.0
    );
    results.insert(
        "memory".into(),
        json!({
            "function": name, "instances": memory_instances, "measure": "cgroup memory usage after the first invocation",
            "fork_total_bytes": fork_total, "zygote_bytes": zygote_mem, "cold_total_bytes": cold_total,
            "fork_plus_zygote_over_cold": ratio,
        }),
    );
    if let Some(path) = output {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&serde_json::Value::Object(results))?,
        )?;
        eprintln!("results written to {}", path.display());
    }
    for (name, _, _) in FORK_FUNCTIONS {
        let _ = c
            .request(
                Method::DELETE,
                &format!("/registry/{name}"),
                &[],
                Vec::new(),
            )
            .await;
    }
    Ok(())
}
