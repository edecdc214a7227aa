//! `kindling bench fork`: cold, fork, warm and switch starts of hello, numpy and pandas
//! functions, bursts of concurrent fork starts of pandas, and the memory of forked against
//! cold-started instances (the sandboxes' cgroup usage).

use crate::driver::timed_start;
use crate::stats::Samples;
use crate::suite::pack_files;
use anyhow::{bail, Result};
use hyper::Method;
use kindling_api::client::Client;
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// The arguments of `kindling bench fork`.
#[derive(clap::Args)]
pub struct ForkArgs {
    /// Measured starts per function and method.
    #[arg(long, default_value_t = 50)]
    pub repetitions: usize,
    /// Instances whose memory is compared (fork against cold).
    #[arg(long, default_value_t = 20)]
    pub memory_instances: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Concurrent forced fork starts of the pandas function per burst (0: no bursts). A
    /// worker serves them at once only with `max_instances_per_function` at least this.
    #[arg(long, default_value_t = 20)]
    pub burst: usize,
    /// Bursts, each on a worker done with the last one's refills (the first teaches the
    /// zygote the burst's size).
    #[arg(long, default_value_t = 2)]
    pub bursts: usize,
}

/// Runs `bench fork` against the worker at `addr`.
pub async fn run(addr: SocketAddr, args: ForkArgs) -> Result<()> {
    let ForkArgs {
        repetitions,
        memory_instances,
        output,
        burst,
        bursts,
    } = args;
    fork(addr, repetitions, memory_instances, output, (burst, bursts)).await
}

/// `n` concurrent forced fork starts of `name`, each from a client whose connection is open
/// before they all start; their client latencies.
async fn burst(addr: SocketAddr, name: &str, n: usize) -> Result<Samples> {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (barrier, name) = (barrier.clone(), name.to_string());
        tasks.spawn(async move {
            let mut c = Client::new(addr);
            let opened = c.get("/status").await.map(|_| ());
            barrier.wait().await;
            opened?;
            let t = Instant::now();
            let r = c
                .request(
                    Method::POST,
                    &format!("/run/{name}"),
                    &[("x-kindling-start", "fork")],
                    "{}",
                )
                .await?
                .ok()?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            match r.header("x-kindling-start") {
                Some("fork") => Ok(ms),
                other => bail!("{name}: a burst's fork start came back as {other:?}"),
            }
        });
    }
    let mut samples = Samples::default();
    while let Some(done) = tasks.join_next().await {
        samples.0.push(done??);
    }
    Ok(samples)
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
    let (ms, r) = timed_start(c, name, method).await?;
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
    (burst_size, bursts): (usize, usize),
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
            pack_files(&files)?,
        )
        .await?
        .ok()?;
        // The first fork creates the zygotes; it is not a fork start of a ready zygote.
        let (_, how, _) = start_once(&mut c, name, Some("fork")).await?;
        if how != "fork" {
            bail!("{name}: a forced fork start came back as `{how}` (are zygotes enabled?)");
        }
        // Switch starts alternate between the function and a twin (the same code and
        // packages), each taking the other's idle sandbox.
        let twin = format!("{name}-twin");
        c.request(
            Method::POST,
            &format!("/registry/{twin}"),
            &[],
            pack_files(&files)?,
        )
        .await?
        .ok()?;
        let mut entry = serde_json::Map::new();
        for method in ["cold", "fork", "warm", "switch"] {
            eprintln!("{name}: {method} x{reps}");
            if method == "switch" {
                start_once(&mut c, &twin, None).await?;
            }
            let mut samples = Samples::default();
            for i in 0..reps {
                let forced = (method != "warm").then_some(method);
                let target = if method == "switch" && i % 2 == 1 {
                    twin.as_str()
                } else {
                    name
                };
                let (ms, how, _) = start_once(&mut c, target, forced).await?;
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
        let _ = c
            .request(
                Method::DELETE,
                &format!("/registry/{twin}"),
                &[],
                Vec::new(),
            )
            .await;
        let cold = entry["cold"]["p50_ms"].as_f64().unwrap_or(f64::NAN);
        let fork = entry["fork"]["p50_ms"].as_f64().unwrap_or(f64::NAN);
        entry.insert("cold_over_fork_p50".into(), json!(cold / fork));
        results.insert(name.to_string(), serde_json::Value::Object(entry));
    }
    let name = "bench-fork-pandas";
    let mut burst_results = Vec::new();
    let bursts = if burst_size == 0 { 0 } else { bursts };
    for b in 0..bursts {
        c.settle().await?;
        eprintln!(
            "{name}: burst {} of {burst_size} concurrent fork starts",
            b + 1
        );
        let samples = burst(addr, name, burst_size).await?;
        println!(
            "{:<20} {:>6} {:>10.3} {:>10.3} {:>10}",
            name,
            format!("burst{}", b + 1),
            samples.pct(50.0),
            samples.pct(99.0),
            samples.0.len()
        );
        burst_results.push(samples.json());
    }
    results.insert(
        "bursts".into(),
        json!({"function": name, "concurrent_fork_starts": burst_size, "bursts": burst_results}),
    );
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
