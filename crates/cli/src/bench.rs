//! `kindling bench`: start-up latency measured side by side with baselines in one run.
//!
//! `startup` deploys a hello function and measures, end to end from this client: Kindling cold
//! (forced with `X-Kindling-Start: cold`), Kindling warm, `runc run` of the same handler in the
//! same root filesystem, and a bare `chroot ROOTFS python3` of the same handler.

use crate::client::Client;
use anyhow::{anyhow, bail, Context, Result};
use hyper::Method;
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Cold and warm start latency against runc and a bare chroot, same rootfs, one run.
    Startup {
        /// Measured starts per method.
        #[arg(long, default_value_t = 50)]
        repetitions: usize,
        /// Write the results as JSON here.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Skip the runc baseline (if runc is not installed).
        #[arg(long)]
        no_runc: bool,
    },
}

/// The handler every method runs.
const HANDLER: &str = "def f(event):\n    return {\"hello\": \"world\"}\n";

/// Runs the handler once outside Kindling, printing its JSON result (baselines).
const DRIVER: &str = "import json, sys\nprint(json.dumps(f(json.loads(sys.argv[1]))))\n";

pub async fn run(addr: SocketAddr, command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Startup {
            repetitions,
            output,
            no_runc,
        } => startup(addr, repetitions, output, no_runc).await,
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

async fn startup(
    addr: SocketAddr,
    reps: usize,
    output: Option<PathBuf>,
    no_runc: bool,
) -> Result<()> {
    let mut c = Client::new(addr);
    let status: serde_json::Value = serde_json::from_slice(&c.get("/status").await?.ok()?.body)?;
    let rootfs = PathBuf::from(
        status["rootfs"]
            .as_str()
            .ok_or_else(|| anyhow!("worker did not report its rootfs"))?,
    );
    let python = status["base"]["python"]
        .as_str()
        .unwrap_or("/usr/bin/python3")
        .to_string();
    let packed = crate::examples::pack(&[("f.py", HANDLER)])?;
    c.request(Method::POST, "/registry/bench-hello", &[], packed)
        .await?
        .ok()?;
    let event = "{}";

    eprintln!("kindling cold x{reps}");
    let mut cold = Samples::default();
    let mut cold_server = Samples::default();
    for _ in 0..reps {
        let t = Instant::now();
        let r = c
            .request(
                Method::POST,
                "/run/bench-hello",
                &[("x-kindling-start", "cold")],
                event,
            )
            .await?
            .ok()?;
        cold.0.push(t.elapsed().as_secs_f64() * 1000.0);
        if r.header("x-kindling-start") != Some("cold") {
            bail!(
                "forced cold start came back as {:?}",
                r.header("x-kindling-start")
            );
        }
        check(&r.body)?;
        if let Some(total) = timing_total(r.header("x-kindling-timing")) {
            cold_server.0.push(total);
        }
    }
    eprintln!("kindling warm x{reps}");
    let mut warm = Samples::default();
    c.request(Method::POST, "/run/bench-hello", &[], event)
        .await?
        .ok()?;
    for _ in 0..reps {
        let t = Instant::now();
        let r = c
            .request(Method::POST, "/run/bench-hello", &[], event)
            .await?
            .ok()?;
        warm.0.push(t.elapsed().as_secs_f64() * 1000.0);
        if r.header("x-kindling-start") != Some("warm") {
            bail!(
                "expected a warm start, got {:?}",
                r.header("x-kindling-start")
            );
        }
        check(&r.body)?;
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
        let bundle =
            std::env::temp_dir().join(format!("kindling-bench-runc-{}", std::process::id()));
        std::fs::create_dir_all(&bundle)?;
        std::fs::write(
            bundle.join("config.json"),
            oci_config(&rootfs, &[python.as_str(), "-c", &code, event]).to_string(),
        )?;
        for i in 0..reps {
            let id = format!("kindling-bench-{}-{i}", std::process::id());
            let t = Instant::now();
            let out = Command::new("runc")
                .args(["run", "--bundle"])
                .arg(&bundle)
                .arg(&id)
                .stdin(Stdio::null())
                .output()
                .context("cannot run runc (apt-get install runc, or pass --no-runc)")?;
            runc.0.push(t.elapsed().as_secs_f64() * 1000.0);
            if !out.status.success() {
                let _ = std::fs::remove_dir_all(&bundle);
                bail!(
                    "runc baseline failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            check(&out.stdout)?;
        }
        let _ = std::fs::remove_dir_all(&bundle);
    }

    let cold50 = cold.pct(50.0);
    let report = json!({
        "benchmark": "startup",
        "function": "hello (OpenLambda format)",
        "repetitions": reps,
        "rootfs": rootfs,
        "kindling_cold": cold.json(),
        "kindling_cold_inside_worker": cold_server.json(),
        "kindling_warm": warm.json(),
        "chroot_python3": chroot.json(),
        "runc_run": if no_runc { serde_json::Value::Null } else { runc.json() },
        "ratios": {
            "cold_p50_over_chroot_p50": cold50 / chroot.pct(50.0),
            "cold_p50_over_runc_p50": if no_runc { serde_json::Value::Null } else { json!(cold50 / runc.pct(50.0)) },
        },
    });
    println!(
        "{:<28} {:>9} {:>9} {:>9}",
        "method", "p50 ms", "p90 ms", "p99 ms"
    );
    for (name, s) in [
        ("kindling cold", &cold),
        ("kindling cold (in worker)", &cold_server),
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
    println!("warm p50 = {:.3} ms (target <= 1 ms)", warm.pct(50.0));
    if let Some(path) = output {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("results written to {}", path.display());
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

/// A minimal OCI runtime config running `args` in `rootfs` (read-only) with the same isolation
/// Kindling gives a function: new pid, mount, ipc, uts and net namespaces, /proc, /dev, /tmp.
fn oci_config(rootfs: &Path, args: &[&str]) -> serde_json::Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 65534, "gid": 65534},
            "args": args,
            "env": ["PATH=/usr/bin:/bin", "HOME=/tmp", "LANG=C.UTF-8"],
            "cwd": "/",
            "noNewPrivileges": true,
            "capabilities": {"bounding": [], "effective": [], "permitted": [], "ambient": []}
        },
        "root": {"path": rootfs, "readonly": true},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "size=65536k"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}],
            "resources": {"memory": {"limit": 268435456}, "pids": {"limit": 64}},
            "maskedPaths": [], "readonlyPaths": []
        }
    })
}
