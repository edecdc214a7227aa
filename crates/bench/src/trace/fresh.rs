//! A fresh worker per policy: its own root, port and cgroup_parent, configured for the policy
//! and started as `kindling up` (this binary) in the background, stopped with SIGTERM.

use super::Policy;
use anyhow::{bail, Context, Result};
use kindling_api::client::Client;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// The worker-wide settings every policy's worker shares.
pub struct Shared {
    /// Where each worker's root goes (`<dir>/<policy>`).
    pub dir: PathBuf,
    pub base_dir: PathBuf,
    pub memory_budget_mb: u64,
    pub keep_alive_secs: u64,
    /// Extra TOML for every worker (package index, limits, ...).
    pub extra_toml: String,
}

/// The keys this command sets itself; an extra TOML file must not.
const OWN_KEYS: [&str; 8] = [
    "listen",
    "root",
    "base_dir",
    "cgroup_parent",
    "keep_alive_secs",
    "start_order",
    "memory_budget_mb",
    "zygotes",
];

/// Reads the extra TOML of `--worker-config`, refusing the keys the command sets per policy.
pub fn extra_toml(path: Option<&Path>) -> Result<String> {
    let Some(path) = path else {
        return Ok(String::new());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not TOML", path.display()))?;
    if let Some(k) = OWN_KEYS.iter().find(|k| table.contains_key(**k)) {
        bail!(
            "{} sets `{k}`, which `bench trace` sets for each policy's worker (it sets {})",
            path.display(),
            OWN_KEYS.join(", ")
        );
    }
    Ok(text)
}

/// The config of one policy's worker: TOML text, and whether the worker knows the start policy
/// keys (`start_order`, `memory_budget_mb`); without them the policy is approximated by
/// zygotes on or off and the keep-alive.
fn config_text(
    policy: Policy,
    shared: &Shared,
    root: &Path,
    listen: SocketAddr,
    cgroup_parent: &str,
    with_policy_keys: bool,
) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "listen = \"{listen}\"");
    let _ = writeln!(t, "root = {:?}", root.display().to_string());
    let _ = writeln!(t, "base_dir = {:?}", shared.base_dir.display().to_string());
    let _ = writeln!(t, "cgroup_parent = \"{cgroup_parent}\"");
    let _ = writeln!(t, "keep_alive_secs = {}", shared.keep_alive_secs);
    let _ = writeln!(t, "zygotes.enabled = {}", policy.zygotes());
    if with_policy_keys {
        let order: Vec<String> = policy
            .start_order()
            .iter()
            .map(|m| format!("\"{m}\""))
            .collect();
        let _ = writeln!(t, "start_order = [{}]", order.join(", "));
        let _ = writeln!(t, "memory_budget_mb = {}", shared.memory_budget_mb);
    }
    t.push_str(&shared.extra_toml);
    t
}

/// A worker started for one policy.
pub struct FreshWorker {
    pub addr: SocketAddr,
    pub root: PathBuf,
    pub cgroup_parent: String,
    pub token: Option<String>,
    /// False when the worker did not accept `start_order`/`memory_budget_mb`.
    pub policy_keys: bool,
    child: Option<Child>,
}

fn free_port() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?)
}

impl FreshWorker {
    /// Writes the policy's config and starts `kindling up` with it; waits until `/status`
    /// answers.
    pub async fn start(policy: Policy, shared: &Shared) -> Result<FreshWorker> {
        let root = shared.dir.join(policy.as_str());
        if root.exists() {
            std::fs::remove_dir_all(&root)
                .with_context(|| format!("cannot clear {}", root.display()))?;
        }
        std::fs::create_dir_all(&root)
            .with_context(|| format!("cannot create {}", root.display()))?;
        let root = std::path::absolute(&root)?;
        let addr = free_port()?;
        let cgroup_parent = format!("kindling-trace-{}-{}", std::process::id(), policy.as_str());
        let config = root.join("config.toml");
        let mut policy_keys = true;
        let text = config_text(policy, shared, &root, addr, &cgroup_parent, true);
        std::fs::write(&config, &text)?;
        if let Err(e) =
            kindling_worker::config::Config::load(&config).and_then(|c| c.validate().map(|_| c))
        {
            let msg = format!("{:#}", anyhow::Error::from(e));
            if !(msg.contains("start_order") || msg.contains("memory_budget_mb")) {
                bail!("the {} worker's config: {msg}", policy.as_str());
            }
            eprintln!(
                "warning: this worker has no start_order/memory_budget_mb yet; policy {} runs \
                 with zygotes {} and keep_alive_secs {}",
                policy.as_str(),
                if policy.zygotes() { "on" } else { "off" },
                shared.keep_alive_secs
            );
            policy_keys = false;
            let text = config_text(policy, shared, &root, addr, &cgroup_parent, false);
            std::fs::write(&config, &text)?;
            kindling_worker::config::Config::load(&config)
                .and_then(|c| c.validate().map(|_| c))
                .with_context(|| format!("the {} worker's config", policy.as_str()))?;
        }
        let log = std::fs::File::create(root.join("worker.log"))?;
        let w_root = root.clone();
        let exe = std::env::current_exe().context("cannot find the kindling binary")?;
        let child = std::process::Command::new(exe)
            .arg("up")
            .arg("--root")
            .arg(&w_root)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start a worker")?;
        let mut w = FreshWorker {
            addr,
            root,
            cgroup_parent,
            token: None,
            policy_keys,
            child: Some(child),
        };
        w.wait_ready().await?;
        Ok(w)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "the worker exited ({status}); see {}",
                        self.root.join("worker.log").display()
                    );
                }
            }
            let mut c = Client::new(self.addr);
            if c.get("/status").await.is_ok_and(|r| r.status.is_success()) {
                self.token = std::fs::read_to_string(self.root.join(kindling_api::TOKEN_FILE))
                    .ok()
                    .map(|t| t.trim().to_string());
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the worker did not answer within 120 s; see {}",
                    self.root.join("worker.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A client of this worker, with its admin token.
    pub fn client(&self) -> Client {
        Client::with_token(self.addr, self.token.clone())
    }

    /// Stops the worker (SIGTERM, then SIGKILL after 30 s) and waits for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for FreshWorker {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared {
            dir: "/tmp/x".into(),
            base_dir: "/var/lib/kindling/base".into(),
            memory_budget_mb: 1500,
            keep_alive_secs: 120,
            extra_toml: "max_sandboxes = 64\n".into(),
        }
    }

    #[test]
    fn each_policy_gets_its_config() {
        let addr: SocketAddr = "127.0.0.1:5555".parse().expect("addr");
        let t = config_text(
            Policy::Keepalive,
            &shared(),
            Path::new("/r"),
            addr,
            "cg",
            true,
        );
        assert!(t.contains("start_order = [\"warm\", \"cold\"]"), "{t}");
        assert!(t.contains("zygotes.enabled = false"), "{t}");
        assert!(t.contains("memory_budget_mb = 1500"), "{t}");
        assert!(t.contains("cgroup_parent = \"cg\""), "{t}");
        assert!(t.ends_with("max_sandboxes = 64\n"), "{t}");
        let t = config_text(Policy::Full, &shared(), Path::new("/r"), addr, "cg", false);
        assert!(
            t.contains("zygotes.enabled = true") && !t.contains("start_order"),
            "{t}"
        );
        // The worker of this branch parses what the command writes without the policy keys.
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("c.toml");
        std::fs::write(&p, &t).expect("write");
        let c = kindling_worker::config::Config::load(&p).expect("a valid config");
        assert_eq!((c.keep_alive_secs, c.cgroup_parent.as_str()), (120, "cg"));
    }

    #[test]
    fn extra_toml_may_not_set_the_policy_keys() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("extra.toml");
        std::fs::write(&p, "keep_alive_secs = 5\n").expect("write");
        let err = extra_toml(Some(&p)).expect_err("own key").to_string();
        assert!(err.contains("`keep_alive_secs`"), "{err}");
        std::fs::write(&p, "max_sandboxes = 9\n").expect("write");
        assert_eq!(extra_toml(Some(&p)).expect("ok"), "max_sandboxes = 9\n");
        assert_eq!(extra_toml(None).expect("none"), "");
    }
}
