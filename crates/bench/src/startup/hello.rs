//! `bench startup` of the built-in hello function (OpenLambda format): Kindling cold, fork,
//! warm and switch, a bare `chroot ROOTFS python3` and `runc run` of the same handler.

use super::args::{status_rootfs, StartupArgs};
use crate::baseline::{self, RuncBundle};
use crate::driver::{timed_start, worker_status};
use crate::results::parse_timing;
use crate::stats::Samples;
use crate::suite::pack_files;
use anyhow::{bail, Context, Result};
use hyper::Method;
use kindling_api::client::Client;
use kindling_sandbox::cgroup::Limits;
use kindling_sandbox::spec::MountSpec;
use kindling_worker::instance::InstanceLayout;
use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// The handler every method runs.
const HANDLER: &str = "def f(event):\n    return {\"hello\": \"world\"}\n";

/// Runs the handler once outside Kindling, printing its JSON result (baselines).
const DRIVER: &str = "import json, sys\nprint(json.dumps(f(json.loads(sys.argv[1]))))\n";

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

/// Measures the hello function's starts and baselines, `args.repetitions` of each.
pub(super) async fn run(addr: SocketAddr, args: StartupArgs) -> Result<()> {
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
    eprintln!("kindling switch x{reps} (alternating with a twin, each taking the other's sandbox)");
    let packed = pack_files(&[("f.py", HANDLER)])?;
    c.request(Method::POST, "/registry/bench-hello-twin", &[], packed)
        .await?
        .ok()?;
    c.request(Method::POST, "/run/bench-hello-twin", &[], event)
        .await?
        .ok()?;
    let mut switch = Samples::default();
    for i in 0..reps {
        let name = ["bench-hello", "bench-hello-twin"][i % 2];
        switch
            .0
            .push(hello_start(&mut c, name, Some("switch"), "switch").await?.0);
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
        "kindling_switch": switch.json(),
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
        ("kindling switch", &switch),
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
    for name in ["bench-hello", "bench-hello-twin"] {
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
