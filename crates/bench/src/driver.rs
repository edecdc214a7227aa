//! Driving a worker: the status check, deploying a benchmark, and measuring a plan (one
//! function invoked with one start method, `repetitions` times from `clients` concurrent
//! clients, each on its own keep-alive connection).

use crate::progress::Progress;
use crate::results::{forced, now_unix, Invocation, Status};
use crate::suite::pack_benchmark;
use anyhow::{anyhow, bail, Context, Result};
use hyper::body::Bytes;
use hyper::Method;
use kindling_api::client::{Client, Response};
use kindling_api::StartMethod;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The worker's `/status`, with a clear error when no worker answers.
pub async fn worker_status(c: &mut Client, addr: SocketAddr) -> Result<serde_json::Value> {
    let r = c.get("/status").await?;
    if !r.status.is_success() {
        bail!(
            "{addr} answered /status with {}; is it a Kindling worker?",
            r.status
        );
    }
    serde_json::from_slice(&r.body).context("the worker's /status is not JSON")
}

/// One start of `function` with the event `{}`, forcing `forced` (`X-Kindling-Start`) on a
/// worker settled first; returns the client's latency in milliseconds and the reply, which
/// must be a success.
pub async fn timed_start(
    c: &mut Client,
    function: &str,
    forced: Option<&str>,
) -> Result<(f64, Response)> {
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
    Ok((t.elapsed().as_secs_f64() * 1000.0, r))
}

/// One invocation on `c`'s connection. A reply that takes longer than `limit` is an error, and
/// the connection, which still carries that request, is replaced.
async fn invoke(
    c: &mut Client,
    addr: SocketAddr,
    path: &str,
    asked: StartMethod,
    event: Bytes,
    limit: Duration,
) -> (Result<Response>, Duration, f64, f64) {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(m) = forced(asked) {
        headers.push(("x-kindling-start", m));
    }
    let begin = now_unix();
    let t = Instant::now();
    let r = match tokio::time::timeout(limit, c.request(Method::POST, path, &headers, event)).await
    {
        Ok(r) => r,
        Err(_) => {
            *c = Client::new(addr);
            Err(anyhow!("no reply within {} s", limit.as_secs()))
        }
    };
    let elapsed = t.elapsed();
    (r, elapsed, begin, now_unix())
}

/// What one experiment invokes, how and how often.
pub struct Plan {
    pub addr: SocketAddr,
    pub function: String,
    pub event: Bytes,
    pub start: StartMethod,
    pub repetitions: u64,
    pub clients: u64,
    /// Longest wait for one reply.
    pub limit: Duration,
}

/// Invokes the plan's function `repetitions` times from `clients` concurrent clients; returns
/// the invocations in the order they were started.
pub async fn measure(plan: &Plan, progress: Arc<Progress>) -> Vec<Invocation> {
    let Plan {
        addr,
        ref function,
        ref event,
        start: asked,
        repetitions: reps,
        clients,
        limit,
    } = *plan;
    let path: Arc<str> = format!("/run/{function}").into();
    if asked == StartMethod::Fork {
        // The first forced fork of a function creates its zygote; it is not a fork from a
        // ready zygote, so it is not measured.
        let mut c = Client::new(addr);
        let (r, ..) = invoke(&mut c, addr, &path, asked, event.clone(), limit).await;
        if let Ok(r) = r {
            if r.header("x-kindling-start") != Some("fork") {
                eprintln!(
                    "warning: {function}: the fork warm-up came back as {:?} (are zygotes enabled?)",
                    r.header("x-kindling-start").unwrap_or("-")
                );
            }
        }
    }
    let next = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(clients as usize));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (path, event, next, barrier, progress) = (
            path.clone(),
            event.clone(),
            next.clone(),
            barrier.clone(),
            progress.clone(),
        );
        tasks.spawn(async move {
            let mut c = Client::new(addr);
            // Open the connection before measuring, so no invocation pays for it.
            let opened = match c.get("/status").await {
                Ok(_) => Ok(()),
                Err(e) => Err(format!("{e:#}")),
            };
            if asked == StartMethod::Warm && opened.is_ok() {
                // One instance per client, so the measured calls find an idle one.
                let _ = invoke(&mut c, addr, &path, asked, event.clone(), limit).await;
            }
            barrier.wait().await;
            let mut done = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= reps {
                    break;
                }
                let inv = match &opened {
                    Err(e) => Invocation::failed(e.clone(), now_unix(), now_unix(), Duration::ZERO),
                    Ok(()) => {
                        if asked != StartMethod::Warm && clients == 1 {
                            // Sequential starts: each on a worker done with the last one's
                            // background work (bursts measure starts under load instead).
                            let _ = c.settle().await;
                        }
                        let (r, elapsed, begin, end) =
                            invoke(&mut c, addr, &path, asked, event.clone(), limit).await;
                        Invocation::from_response(asked, r, elapsed, begin, end)
                    }
                };
                progress.record(inv.status == Status::Ok);
                done.push((n, inv));
            }
            done
        });
    }
    let mut all = Vec::with_capacity(reps as usize);
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(done) => all.extend(done),
            Err(e) => eprintln!("warning: a client task failed: {e}"),
        }
    }
    all.sort_by_key(|(n, _)| *n);
    all.into_iter().map(|(_, inv)| inv).collect()
}

/// Deploys the benchmark in `dir` as `function`, printing the worker's progress; returns
/// the final reply (hash, changed, ...).
pub async fn deploy(c: &mut Client, function: &str, dir: &Path) -> Result<Value> {
    deploy_packed(c, function, pack_benchmark(dir)?).await
}

/// Deploys the upload `packed` as `function`, as [`deploy`].
pub async fn deploy_packed(c: &mut Client, function: &str, packed: Vec<u8>) -> Result<Value> {
    let mut last = Value::Null;
    let status = c
        .request_lines(
            Method::POST,
            &format!("/registry/{function}?progress"),
            packed,
            |line| match serde_json::from_str::<Value>(line) {
                Ok(v) if v.get("progress").is_some() && v.get("status").is_none() => {
                    eprintln!("  {function}: {}", v["progress"].as_str().unwrap_or(""));
                }
                Ok(v) => last = v,
                Err(_) => last = Value::String(line.to_string()),
            },
        )
        .await?;
    if !status.is_success() {
        bail!(
            "deploy of {function}: {status}: {}",
            last.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| last.to_string())
        );
    }
    if let Some(err) = last.get("error") {
        bail!(
            "deploy of {function} failed: {}",
            err.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| err.to_string())
        );
    }
    Ok(last)
}
