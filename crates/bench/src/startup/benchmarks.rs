//! `bench startup BENCH...`: for each benchmark, Kindling cold, fork and warm, then the chroot
//! and runc baselines of [`crate::baseline`] in the instance layout, every output validated.

use super::args::{status_rootfs, StartupArgs};
use crate::baseline::{self, ChrootTree, RuncBundle};
use crate::driver::{deploy, measure, worker_status, Plan};
use crate::progress::Progress;
use crate::results::{Invocation, Status};
use crate::stats::Samples;
use crate::suite::{check_benchmarks, config_memory, generate_event, reply_limit, validate};
use anyhow::{bail, Context, Result};
use hyper::body::Bytes;
use kindling_api::client::Client;
use kindling_api::StartMethod;
use kindling_worker::instance::InstanceLayout;
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;

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

/// Measures every benchmark of `args`, one after the other.
pub(super) async fn run(addr: SocketAddr, args: StartupArgs) -> Result<()> {
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

    {
        // Switch: the function and a twin of it (the same code and packages, so the same
        // zygote) alternate, each forced to switch into the other's idle sandbox.
        let twin = format!("{function}-twin");
        // The twin is a function of its own, with buckets of its own: its inputs go there too.
        if let Some(d) = &run.storage_dir {
            generate_event(&args.python, &input_py, args.size, Some(&d.join(&twin)))
                .await
                .context("cannot prepare the twin's input")?;
        }
        deploy(c, &twin, &dir).await?;
        c.request(
            hyper::Method::POST,
            &format!("/run/{twin}"),
            &[],
            body.clone(),
        )
        .await?
        .ok()?;
        let progress = Progress::new(format!("{bench} kindling switch"), reps);
        let mut invocations = Vec::new();
        for i in 0..reps {
            let plan = Plan {
                addr: run.addr,
                function: if i % 2 == 0 {
                    function.clone()
                } else {
                    twin.clone()
                },
                event: body.clone(),
                start: StartMethod::Switch,
                repetitions: 1,
                clients: 1,
                limit,
            };
            invocations.extend(measure(&plan, progress.clone()).await);
        }
        progress.finish();
        let _ = c
            .request(
                hyper::Method::DELETE,
                &format!("/registry/{twin}"),
                &[],
                Vec::new(),
            )
            .await;
        validate(&args.python, &input_py, &event, &mut invocations).await?;
        methods.push(MethodResult::of(
            "kindling_switch",
            "kindling switch",
            &invocations,
        ));
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
