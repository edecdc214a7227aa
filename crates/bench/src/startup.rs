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

use crate::baseline::{self, ChrootTree, RuncBundle};
use crate::driver::{deploy, measure, timed_start, worker_status, Plan};
use crate::progress::Progress;
use crate::results::{parse_timing, Invocation, Size, Status};
use crate::stats::Samples;
use crate::suite::{
    check_benchmarks, config_memory, generate_event, pack_files, reply_limit, validate,
};
use anyhow::{anyhow, bail, Context, Result};
use hyper::body::Bytes;
use hyper::Method;
use kindling_api::client::Client;
use kindling_api::StartMethod;
use kindling_sandbox::cgroup::Limits;
use kindling_sandbox::spec::MountSpec;
use kindling_worker::instance::InstanceLayout;
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

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

/// The handler every method runs.
const HANDLER: &str = "def f(event):\n    return {\"hello\": \"world\"}\n";

/// Runs the handler once outside Kindling, printing its JSON result (baselines).
const DRIVER: &str = "import json, sys\nprint(json.dumps(f(json.loads(sys.argv[1]))))\n";

/// Runs `bench startup`: of the hello function without benchmark names, else of those.
pub async fn run(addr: SocketAddr, args: StartupArgs) -> Result<()> {
    if args.benchmarks.is_empty() {
        startup(addr, args).await
    } else {
        startup_benchmarks(addr, args).await
    }
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
    let (ms, r) = timed_start(c, function, forced).await?;
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
    let packed = pack_files(&[("f.py", HANDLER)])?;
    c.request(Method::POST, "/registry/bench-hello", &[], packed)
        .await?
        .ok()?;
    let event = "{}";

    if network {
        let packed = pack_files(&[("f.py", HANDLER), ("ol.yaml", "network: true\n")])?;
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
        if let Some(total) = timing_total(&timing) {
            cold_server.0.push(total);
        }
        if network {
            let (ms, timing) = hello_start(&mut c, "bench-hello-net", Some("cold"), "cold").await?;
            networked.0.push(ms);
            if let Some(total) = timing_total(&timing) {
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

/// The worker's `total` in an `X-Kindling-Timing` header.
fn timing_total(header: &str) -> Option<f64> {
    parse_timing(header).get("total").copied()
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
    check_benchmarks(&args.benchmarks_dir, &args.benchmarks)?;
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
    let event = generate_event(
        &args.python,
        &input_py,
        args.size,
        function_storage.as_deref(),
    )
    .await
    .context("cannot prepare the input")?;
    eprintln!("{bench}: deploying {function}");
    deploy(c, &function, &dir).await?;
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
    let limit = reply_limit(&dir);
    let mut methods = Vec::new();

    for (start, key, label) in [
        (StartMethod::Cold, "kindling_cold", "kindling cold"),
        (StartMethod::Fork, "kindling_fork", "kindling fork"),
        (StartMethod::Warm, "kindling_warm", "kindling warm"),
    ] {
        let progress = Progress::new(format!("{bench} {label}"), reps);
        let plan = Plan {
            addr: run.addr,
            function: function.clone(),
            event: body.clone(),
            start,
            repetitions: reps,
            clients: 1,
            limit,
        };
        let mut invocations = measure(&plan, progress.clone()).await;
        progress.finish();
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
        validate(&args.python, &input_py, &event, &mut invocations).await?;
        methods.push(MethodResult::of(key, label, &invocations));
    }

    let argv = baseline::driver_argv(&layout);
    let input = serde_json::to_vec(&event)?;
    {
        // Prepared once, not timed; unmounted when dropped, on every path out of this block.
        let tree = ChrootTree::prepare(&run.rootfs, &layout, bench)?;
        let progress = Progress::new(format!("{bench} chroot python3"), reps);
        let mut invocations = Vec::new();
        for _ in 0..reps {
            let inv = tree
                .start_once(&run.chroot, &layout, &argv, &input, limit)
                .await;
            progress.record(inv.status == Status::Ok);
            invocations.push(inv);
        }
        progress.finish();
        drop(tree);
        validate(&args.python, &input_py, &event, &mut invocations).await?;
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
        let progress = Progress::new(format!("{bench} runc run"), reps);
        let mut invocations = Vec::new();
        for _ in 0..reps {
            let inv = bundle.start_once(&input, limit).await;
            progress.record(inv.status == Status::Ok);
            invocations.push(inv);
        }
        progress.finish();
        drop(bundle);
        validate(&args.python, &input_py, &event, &mut invocations).await?;
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
        "memory_mb": config_memory(&dir),
        "runc_run": serde_json::Value::Null,
        "ratios": ratios,
    });
    for m in &methods {
        result[m.key] = m.json();
    }
    Ok((result, problems))
}
