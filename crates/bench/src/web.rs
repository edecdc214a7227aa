//! `kindling bench web`: a Flask hello app (WSGI, from the package index) against a plain
//! `f(event)` hello, in one run: warm latency end to end over loopback, requests per second
//! from concurrent clients on kept-alive connections, and fork starts of the Flask app.

use crate::driver::timed_start;
use crate::stats::Samples;
use crate::suite::pack_files;
use anyhow::{bail, Result};
use hyper::Method;
use kindling_api::client::Client;
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

/// The arguments of `kindling bench web`.
#[derive(clap::Args)]
pub struct WebArgs {
    /// Measured sequential warm calls, and fork starts, per function.
    #[arg(long, default_value_t = 200)]
    pub repetitions: usize,
    /// Concurrent clients of the throughput run.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Requests of the throughput run, per function.
    #[arg(long, default_value_t = 4000)]
    pub requests: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

const FLASK: &str = "bench-web-flask";
const PLAIN: &str = "bench-web-plain";

const FLASK_APP: &str = "from flask import Flask\n\napp = Flask(__name__)\n\n\
@app.route(\"/\", methods=[\"GET\", \"POST\"])\ndef hello():\n    return \"hello\"\n";
const PLAIN_FN: &str = "def f(event):\n    return \"hello\"\n";

/// Runs `bench web` against the worker at `addr`.
pub async fn run(addr: SocketAddr, args: WebArgs) -> Result<()> {
    let mut c = Client::new(addr);
    for (name, files) in [
        (
            FLASK,
            vec![("f.py", FLASK_APP), ("requirements.txt", "flask\n")],
        ),
        (PLAIN, vec![("f.py", PLAIN_FN)]),
    ] {
        eprintln!("deploying {name}");
        c.request(
            Method::POST,
            &format!("/registry/{name}"),
            &[],
            pack_files(&files)?,
        )
        .await?
        .ok()?;
    }
    let mut results = serde_json::Map::new();
    println!(
        "{:<18} {:<26} {:>10} {:>10} {:>10}",
        "function", "measure", "p50 ms", "p99 ms", "n"
    );
    for name in [FLASK, PLAIN] {
        let warm = warm_latency(&mut c, name, args.repetitions).await?;
        print_row(name, "warm, sequential", &warm);
        results.insert(format!("{name}.warm"), warm.json());
    }
    let mut rates = Vec::new();
    for name in [FLASK, PLAIN] {
        let (rate, latency) = throughput(addr, name, args.clients, args.requests).await?;
        print_row(name, &format!("warm, {} clients", args.clients), &latency);
        println!("{name:<18} {:<26} {rate:>10.0}", "requests/s");
        results.insert(
            format!("{name}.throughput"),
            json!({"clients": args.clients, "requests": args.requests,
                   "requests_per_s": rate, "latency": latency.json()}),
        );
        rates.push(rate);
    }
    let ratio = rates[1] / rates[0];
    println!("plain / Flask requests per second: {ratio:.2} (target <= 1.5)");
    results.insert("plain_over_flask_rps".into(), json!(ratio));
    // The first fork makes the zygotes; it is not a fork from a ready zygote.
    let (_, r) = timed_start(&mut c, FLASK, Some("fork")).await?;
    if r.header("x-kindling-start") != Some("fork") {
        bail!(
            "a forced fork start came back as {:?} (are zygotes enabled?)",
            r.header("x-kindling-start")
        );
    }
    let mut fork = Samples::default();
    for _ in 0..args.repetitions.min(100) {
        let (ms, r) = timed_start(&mut c, FLASK, Some("fork")).await?;
        if r.header("x-kindling-start") != Some("fork") {
            bail!(
                "expected a fork start, got {:?}",
                r.header("x-kindling-start")
            );
        }
        fork.0.push(ms);
    }
    print_row(FLASK, "fork start", &fork);
    results.insert(format!("{FLASK}.fork"), fork.json());
    if let Some(path) = args.output {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&serde_json::Value::Object(results))?,
        )?;
        eprintln!("results written to {}", path.display());
    }
    for name in [FLASK, PLAIN] {
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

fn print_row(name: &str, measure: &str, s: &Samples) {
    println!(
        "{name:<18} {measure:<26} {:>10.3} {:>10.3} {:>10}",
        s.pct(50.0),
        s.pct(99.0),
        s.0.len()
    );
}

/// One warm call: `GET /run/<name>`, which must succeed warm (after the first).
async fn call(c: &mut Client, name: &str) -> Result<f64> {
    let t = Instant::now();
    let r = c
        .request(Method::GET, &format!("/run/{name}"), &[], Vec::new())
        .await?
        .ok()?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if r.body.as_ref() != b"hello" && r.body.as_ref() != b"\"hello\"" {
        bail!("{name} answered {:?}", String::from_utf8_lossy(&r.body));
    }
    Ok(ms)
}

/// Sequential warm calls on one kept-alive connection, after a few unmeasured ones.
async fn warm_latency(c: &mut Client, name: &str, reps: usize) -> Result<Samples> {
    for _ in 0..10 {
        call(c, name).await?;
    }
    let mut s = Samples::default();
    for _ in 0..reps {
        s.0.push(call(c, name).await?);
    }
    Ok(s)
}

/// `requests` warm calls from `clients` concurrent clients, each on its own connection, after
/// each client's unmeasured warm-up; returns requests per second and the calls' latencies.
async fn throughput(
    addr: SocketAddr,
    name: &str,
    clients: usize,
    requests: usize,
) -> Result<(f64, Samples)> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..clients {
        let (barrier, name) = (barrier.clone(), name.to_string());
        let share = requests / clients + usize::from(i < requests % clients);
        tasks.spawn(async move {
            let mut c = Client::new(addr);
            for _ in 0..20 {
                call(&mut c, &name).await?;
            }
            barrier.wait().await;
            let mut ms = Vec::with_capacity(share);
            for _ in 0..share {
                ms.push(call(&mut c, &name).await?);
            }
            Ok::<_, anyhow::Error>(ms)
        });
    }
    barrier.wait().await;
    let t = Instant::now();
    let mut all = Samples::default();
    while let Some(done) = tasks.join_next().await {
        all.0.extend(done??);
    }
    let secs = t.elapsed().as_secs_f64();
    Ok((all.0.len() as f64 / secs, all))
}
