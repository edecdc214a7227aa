//! `kindling bench packages`: a deploy with an empty package store, a second deploy with the
//! same requirements, and `pip install --target` of the same closure, in one run.

use crate::suite::pack_files;
use anyhow::{anyhow, bail, Context, Result};
use hyper::Method;
use kindling_api::client::Client;
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The arguments of `kindling bench packages`.
#[derive(clap::Args)]
pub struct PackagesArgs {
    /// Requirements of the benchmark function.
    #[arg(long, num_args = 1.., default_values_t = ["numpy".to_string(), "pandas".to_string()])]
    pub requirements: Vec<String>,
    /// Python for the pip baseline (same major.minor as the base's).
    #[arg(long, default_value = "python3")]
    pub pip_python: String,
    /// Write the results as JSON here.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// Runs `bench packages` against the worker at `addr`.
pub async fn run(addr: SocketAddr, args: PackagesArgs) -> Result<()> {
    packages(addr, &args.requirements, &args.pip_python, args.output).await
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
    let packed = pack_files(&[
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
