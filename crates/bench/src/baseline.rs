//! Baselines of `kindling bench startup`: a deployed function's handler run outside Kindling,
//! once per process, in the layout of its instances (`GET /registry/<name>` reports it as
//! `instance`): the same root filesystem read-only, its code at /handler, the package store at
//! /packages, the runtime at /kindling and an object storage socket at
//! /kindling/storage-socket/storage.sock, the same environment and interpreter flags. The
//! worker's storage answers only its own sandboxes, so the baselines get the function's buckets
//! from a storage service of their own ([`BaselineStorage`]), bound where the worker's would be. The function's own
//! environment variables are the exception: the worker never returns their values, so baselines
//! run without them (Kindling's variables, such as `KINDLING_PATH`, have theirs).
//!
//! Two ways to start it: `chroot` into a tree prepared once (the base bound read-only with the
//! instance's mounts on top, made with the `mount` command and undone by [`ChrootTree`]'s drop),
//! and `runc run` of an OCI bundle whose config carries the same mounts ([`oci_config`]).
//! Either runs [`driver`], which puts the function's package closure on `sys.path` as the
//! runtime does, calls the handler with the event read from standard input and prints the
//! response Kindling would send, so that outputs are checked exactly as Kindling's are.

use crate::results::{now_unix, Invocation, Status};
use anyhow::{anyhow, bail, Context, Result};
use kindling_sandbox::spec::MountSpec;
use kindling_worker::instance::InstanceLayout;
use serde_json::{json, Value};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Where the instance layout puts the function's code and the runtime.
pub const HANDLER_DIR: &str = "/handler";
pub const RUNTIME_DIR: &str = "/kindling";

/// The Python program of a baseline start, run as `INTERPRETER -c DRIVER` with the event on
/// standard input. It sets `sys.path` as the runtime (`kindling_runtime._load`) does, with the
/// runtime's own `_package_path`: the code directory first, then the closure from
/// `KINDLING_PATH` (with `site.addsitedir` for the entries of `KINDLING_SITE`, packages
/// shipping `.pth` files), then the runtime directory. It uses the runtime's JSON codec, as the runtime does, so that the baseline does not pay for
/// importing `json`. For a SeBS function (`KINDLING_FORMAT=sebs`) it loads the code as the
/// package `function` and prints the envelope, both with the runtime's own functions, so its
/// `result` (the handler's dict, what `validate()` checks) is the runtime's; for an OpenLambda
/// one, `f(event)`'s JSON.
pub fn driver(handler_dir: &str, runtime_dir: &str) -> String {
    // A JSON string is a valid Python string literal.
    let lit = |s: &str| Value::String(s.to_string()).to_string();
    format!(
        r#"import os, sys
H, R = {handler}, {runtime}
os.chdir(H)
sys.path.insert(0, R)
sys.path.insert(0, H)
from kindling_runtime import _package_path, dumps, loads
_package_path()
event = loads(sys.stdin.read())
if os.environ.get("KINDLING_FORMAT") == "sebs":
    from kindling_runtime import _sebs_envelope, _sebs_package
    out = _sebs_envelope(_sebs_package(H).handler, event, "baseline", True, "baseline")
else:
    from f import f
    out = f(event)
sys.stdout.write(dumps(out))
"#,
        handler = lit(handler_dir),
        runtime = lit(runtime_dir),
    )
}

/// The command line of a baseline start inside the instance layout.
pub fn driver_argv(layout: &InstanceLayout) -> Vec<String> {
    let mut argv = layout.interpreter.clone();
    argv.push("-c".into());
    argv.push(driver(HANDLER_DIR, RUNTIME_DIR));
    argv
}

/// Where `target` (a path inside the sandbox) is on the host before `mounts` are made: inside
/// the source of the last bind mount above it, or else in `rootfs`.
fn host_path(rootfs: &Path, mounts: &[MountSpec], target: &Path) -> PathBuf {
    for m in mounts.iter().rev() {
        // The baselines bind the whole store where the worker binds a function's closure.
        if let MountSpec::Bind {
            source, target: t, ..
        }
        | MountSpec::Packages {
            store: source,
            target: t,
            ..
        } = m
        {
            if let Ok(rest) = target.strip_prefix(t) {
                if !rest.as_os_str().is_empty() {
                    return source.join(rest);
                }
            }
        }
    }
    rootfs.join(target.strip_prefix("/").unwrap_or(target))
}

fn target_of(m: &MountSpec) -> &Path {
    match m {
        MountSpec::Bind { target, .. }
        | MountSpec::Tmpfs { target, .. }
        | MountSpec::Proc { target }
        | MountSpec::Dev { target }
        | MountSpec::Packages { target, .. } => target,
    }
}

/// Checks that every mount of the layout has its mount point, naming the missing one.
pub fn check_mount_points(rootfs: &Path, layout: &InstanceLayout) -> Result<()> {
    for (i, m) in layout.mounts.iter().enumerate() {
        let target = target_of(m);
        let host = host_path(rootfs, &layout.mounts[..i], target);
        // A file (the storage socket) is bound on a file, anything else on a directory.
        let file = matches!(m, MountSpec::Bind { source, .. } if !source.is_dir());
        let (ok, what) = if file {
            (host.is_file(), "a file")
        } else {
            (host.is_dir(), "a directory")
        };
        if !ok {
            bail!(
                "the baselines mount {} on {}, but {} is not {what}; the base at {} needs the \
                 mount points /handler, /kindling, /packages, /tmp, /proc and /dev (the worker \
                 creates them in the bases it builds)",
                describe(m),
                target.display(),
                host.display(),
                rootfs.display()
            );
        }
    }
    Ok(())
}

fn describe(m: &MountSpec) -> String {
    match m {
        MountSpec::Bind { source, .. } | MountSpec::Packages { store: source, .. } => {
            source.display().to_string()
        }
        MountSpec::Tmpfs { .. } => "a tmpfs".into(),
        MountSpec::Proc { .. } => "proc".into(),
        MountSpec::Dev { .. } => "/dev".into(),
    }
}

/// Object storage for the baselines of one benchmark: the function's buckets under the worker's
/// storage directory, served on a socket of its own (in a root-only directory) to whatever
/// connects, since a baseline's handler runs in no sandbox. Stopped, and its socket removed,
/// on drop.
pub struct BaselineStorage {
    service: Option<kindling_worker::storage::StorageService>,
    dir: PathBuf,
}

impl BaselineStorage {
    /// Serves `function`'s buckets in `storage_dir` and points `layout`'s storage mount at the
    /// new socket; `None` when the layout has no storage mount (storage is off).
    pub fn serve(
        layout: &mut InstanceLayout,
        storage_dir: &Path,
        function: &str,
        label: &str,
    ) -> Result<Option<Self>> {
        use kindling_worker::storage::{self, DirectoryBackend, ServicePolicy, StorageService};
        let target = Path::new(storage::SANDBOX_SOCKET);
        let Some(source) = layout.mounts.iter_mut().find_map(|m| match m {
            MountSpec::Bind {
                source, target: t, ..
            } if t == target => Some(source),
            _ => None,
        }) else {
            return Ok(None);
        };
        let dir = std::env::temp_dir().join(format!(
            "kindling-bench-storage-{}-{label}",
            std::process::id()
        ));
        let backend = std::sync::Arc::new(
            DirectoryBackend::open(storage_dir)
                .with_context(|| format!("cannot open {}", storage_dir.display()))?,
        );
        let service = StorageService::start(
            &dir,
            backend,
            std::sync::Arc::new(kindling_worker::tenants::OneFunction(function.to_string())),
            ServicePolicy {
                max_object_bytes: 1 << 30,
                max_function_bytes: u64::MAX,
                max_total_bytes: u64::MAX,
                max_connections: 64,
                max_connections_per_function: 64,
                grants: Vec::new(),
            },
        )
        .context("cannot serve object storage for the baselines")?;
        *source = service.socket().to_path_buf();
        Ok(Some(Self {
            service: Some(service),
            dir,
        }))
    }
}

impl Drop for BaselineStorage {
    fn drop(&mut self) {
        if let Some(s) = self.service.take() {
            s.stop();
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// One mount of a chroot tree: the `mount` command lines that make it (the first creates it,
/// the others adjust it) and where it ends up.
#[derive(Debug, PartialEq)]
pub struct MountStep {
    pub target: PathBuf,
    pub commands: Vec<Vec<OsString>>,
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// A bind of `source` at `target`: private, so that nothing mounted below it propagates back
/// to the source's mount, and read-only unless `writable`.
fn bind_step(source: &Path, target: PathBuf, writable: bool) -> MountStep {
    let mut first = os(&["--bind"]);
    first.push(source.into());
    first.push(target.clone().into());
    let mut commands = vec![first, private(&target)];
    if !writable {
        let mut ro = os(&["-o", "remount,bind,ro"]);
        ro.push(target.clone().into());
        commands.push(ro);
    }
    MountStep { target, commands }
}

fn private(target: &Path) -> Vec<OsString> {
    let mut c = os(&["--make-private"]);
    c.push(target.into());
    c
}

/// The mounts that turn the empty directory `tree` into the instance layout for `chroot`: the
/// base read-only, then the layout's mounts in order (`/dev` is the host's, read-only).
pub fn chroot_steps(rootfs: &Path, tree: &Path, layout: &InstanceLayout) -> Vec<MountStep> {
    let mut steps = vec![bind_step(rootfs, tree.to_path_buf(), false)];
    for m in &layout.mounts {
        let target = target_of(m);
        let at = tree.join(target.strip_prefix("/").unwrap_or(target));
        steps.push(match m {
            MountSpec::Bind {
                source, writable, ..
            } => bind_step(source, at, *writable),
            // The whole store (the closure on sys.path is the same).
            MountSpec::Packages { store, .. } => bind_step(store, at, false),
            MountSpec::Dev { .. } => bind_step(Path::new("/dev"), at, false),
            MountSpec::Tmpfs { size_bytes, .. } => {
                let mut first = os(&["-t", "tmpfs", "-o"]);
                first.push(format!("mode=1777,nosuid,nodev,size={size_bytes}").into());
                first.push("tmpfs".into());
                first.push(at.clone().into());
                MountStep {
                    commands: vec![first, private(&at)],
                    target: at,
                }
            }
            MountSpec::Proc { .. } => {
                let mut first = os(&["-t", "proc", "-o", "nosuid,nodev,noexec", "proc"]);
                first.push(at.clone().into());
                MountStep {
                    commands: vec![first, private(&at)],
                    target: at,
                }
            }
        });
    }
    steps
}

/// A root for `chroot` in a fresh directory under the temporary directory, holding the
/// instance layout. Dropping it detaches every mount (lazily, in reverse order) and removes the
/// directory, also when the run stops early on an error.
pub struct ChrootTree {
    dir: PathBuf,
    mounted: Vec<PathBuf>,
}

fn mount(args: &[OsString]) -> Result<()> {
    let out = std::process::Command::new("mount")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run mount")?;
    if !out.status.success() {
        bail!(
            "mount {} failed: {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(())
}

impl ChrootTree {
    /// Builds the tree for `layout` over `rootfs` (not timed: once per benchmark).
    pub fn prepare(rootfs: &Path, layout: &InstanceLayout, label: &str) -> Result<Self> {
        check_mount_points(rootfs, layout)?;
        let dir = std::env::temp_dir().join(format!(
            "kindling-bench-chroot-{}-{label}",
            std::process::id()
        ));
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut tree = ChrootTree {
            dir,
            mounted: Vec::new(),
        };
        for step in chroot_steps(rootfs, &tree.dir, layout) {
            let mut commands = step.commands.iter();
            if let Some(first) = commands.next() {
                mount(first)?;
                tree.mounted.push(step.target.clone());
            }
            for c in commands {
                mount(c)?;
            }
        }
        Ok(tree)
    }

    /// One timed start of `argv` in the tree with the layout's environment (nothing else).
    pub async fn start_once(
        &self,
        chroot: &Path,
        layout: &InstanceLayout,
        argv: &[String],
        input: &[u8],
        limit: Duration,
    ) -> Invocation {
        let mut cmd = tokio::process::Command::new(chroot);
        cmd.arg(&self.dir)
            .args(argv)
            .env_clear()
            .envs(layout.known_env());
        start_once(cmd, input, limit).await
    }
}

impl Drop for ChrootTree {
    fn drop(&mut self) {
        let mut clean = true;
        for target in self.mounted.iter().rev() {
            let out = std::process::Command::new("umount")
                .arg("-l")
                .arg(target)
                .stdin(Stdio::null())
                .output();
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => {
                    clean = false;
                    eprintln!(
                        "warning: umount -l {}: {}",
                        target.display(),
                        String::from_utf8_lossy(&o.stderr).trim_end()
                    );
                }
                Err(e) => {
                    clean = false;
                    eprintln!("warning: cannot run umount -l {}: {e}", target.display());
                }
            }
        }
        // Never a recursive removal: with a mount left, that would reach into the host.
        if clean {
            if let Err(e) = std::fs::remove_dir(&self.dir) {
                eprintln!("warning: cannot remove {}: {e}", self.dir.display());
            }
        } else {
            eprintln!(
                "warning: {} still has mounts; check `mount | grep kindling-bench`",
                self.dir.display()
            );
        }
    }
}

fn oci_mount(m: &MountSpec) -> Value {
    match m {
        MountSpec::Bind {
            source,
            target,
            writable,
        } => json!({"destination": target, "type": "bind", "source": source,
                    "options": ["bind", if *writable { "rw" } else { "ro" }, "nosuid", "nodev"]}),
        MountSpec::Packages { store, target, .. } => json!({"destination": target, "type": "bind",
            "source": store, "options": ["bind", "ro", "nosuid", "nodev"]}),
        MountSpec::Tmpfs { target, size_bytes } => json!({"destination": target, "type": "tmpfs",
            "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777", format!("size={size_bytes}")]}),
        MountSpec::Proc { target } => {
            json!({"destination": target, "type": "proc", "source": "proc"})
        }
        // runc fills a tmpfs /dev with the default devices (null, zero, urandom, ...).
        MountSpec::Dev { target } => json!({"destination": target, "type": "tmpfs",
            "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
    }
}

/// An OCI runtime config running `args` in `rootfs` (read-only) laid out as `layout` says:
/// its mounts in order, environment, working directory, user and cgroup limits, with new pid,
/// mount, ipc, uts and network namespaces (no network) and no capabilities.
pub fn oci_config(rootfs: &Path, layout: &InstanceLayout, args: &[String]) -> Value {
    let mut resources = serde_json::Map::new();
    if let Some(bytes) = layout.limits.memory_bytes {
        resources.insert("memory".into(), json!({"limit": bytes}));
    }
    if let Some(pids) = layout.limits.pids {
        resources.insert("pids".into(), json!({"limit": pids}));
    }
    if let Some(cores) = layout.limits.cpu_cores {
        let period = 100_000u64;
        resources.insert(
            "cpu".into(),
            json!({"quota": (cores * period as f64).round() as i64, "period": period}),
        );
    }
    let env: Vec<String> = layout
        .known_env()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": layout.uid, "gid": layout.gid},
            "args": args,
            "env": env,
            "cwd": layout.cwd,
            "noNewPrivileges": true,
            "capabilities": {"bounding": [], "effective": [], "permitted": [], "ambient": []}
        },
        "root": {"path": rootfs, "readonly": true},
        "hostname": "bench",
        "mounts": layout.mounts.iter().map(oci_mount).collect::<Vec<_>>(),
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}],
            "resources": resources,
            "maskedPaths": [], "readonlyPaths": []
        }
    })
}

/// An OCI bundle (a directory holding `config.json`) and the containers `runc run` makes of
/// it. Dropping it deletes a container whose run did not finish (failed, timed out, or
/// dropped midway) and removes the bundle.
pub struct RuncBundle {
    runc: PathBuf,
    dir: PathBuf,
    label: String,
    /// The container of a run that has not cleaned up after itself.
    unfinished: Option<String>,
    runs: usize,
}

impl RuncBundle {
    pub fn create(runc: &Path, label: &str, config: &Value) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "kindling-bench-runc-{}-{label}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let bundle = RuncBundle {
            runc: runc.to_path_buf(),
            dir,
            label: label.to_string(),
            unfinished: None,
            runs: 0,
        };
        std::fs::write(bundle.dir.join("config.json"), config.to_string())?;
        Ok(bundle)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// One timed `runc run` of the bundle in a new container.
    pub async fn start_once(&mut self, input: &[u8], limit: Duration) -> Invocation {
        let id = format!(
            "kindling-bench-{}-{}-{}",
            std::process::id(),
            self.label,
            self.runs
        );
        self.runs += 1;
        let mut cmd = tokio::process::Command::new(&self.runc);
        cmd.args(["run", "--bundle"]).arg(&self.dir).arg(&id);
        self.unfinished = Some(id);
        let inv = start_once(cmd, input, limit).await;
        if inv.status == Status::Ok {
            // `runc run` deleted its container when the process exited.
            self.unfinished = None;
        } else {
            self.delete_unfinished();
        }
        inv
    }

    fn delete_unfinished(&mut self) {
        if let Some(id) = self.unfinished.take() {
            let _ = std::process::Command::new(&self.runc)
                .args(["delete", "--force", &id])
                .stdin(Stdio::null())
                .output();
        }
    }
}

impl Drop for RuncBundle {
    fn drop(&mut self) {
        self.delete_unfinished();
        // runc mounts in the container's own mount namespace: the bundle holds no mount.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `name` on the host's `PATH` (children get the function's environment, whose `PATH` is the
/// base's, so host tools are found first).
pub fn host_program(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("`{name}` is not installed (not found on PATH)"))
}

/// Runs `cmd` with `input` on its standard input and at most `limit`, timing it from spawn to
/// exit; the process is killed if the limit passes or the run is dropped.
pub async fn run_timed(
    mut cmd: tokio::process::Command,
    input: &[u8],
    limit: Duration,
) -> (Result<std::process::Output>, Duration) {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let t = Instant::now();
    let run = async {
        let mut child = cmd.spawn().context("cannot start the baseline")?;
        let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin pipe"))?;
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            // A process that exits without reading its input is judged by its output.
            let _ = stdin.write_all(&input).await;
        });
        let out = child.wait_with_output().await?;
        let _ = writer.await;
        Ok::<_, anyhow::Error>(out)
    };
    let out = match tokio::time::timeout(limit, run).await {
        Ok(r) => r,
        Err(_) => Err(anyhow!("no result within {} s", limit.as_secs())),
    };
    (out, t.elapsed())
}

/// One timed baseline start, as an invocation record (see `Invocation::from_baseline`).
pub async fn start_once(cmd: tokio::process::Command, input: &[u8], limit: Duration) -> Invocation {
    let begin = now_unix();
    let (out, elapsed) = run_timed(cmd, input, limit).await;
    Invocation::from_baseline(out, elapsed, begin, now_unix())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kindling_sandbox::cgroup::Limits;

    fn layout() -> InstanceLayout {
        InstanceLayout {
            interpreter: vec!["/usr/bin/python3".into(), "-S".into(), "-E".into()],
            mounts: vec![
                MountSpec::Bind {
                    source: "/w/functions/f/abc".into(),
                    target: "/handler".into(),
                    writable: false,
                },
                MountSpec::Bind {
                    source: "/w/runtime/base".into(),
                    target: "/kindling".into(),
                    writable: false,
                },
                MountSpec::Bind {
                    source: "/w/packages".into(),
                    target: "/packages".into(),
                    writable: false,
                },
                MountSpec::Tmpfs {
                    target: "/tmp".into(),
                    size_bytes: 64 << 20,
                },
                MountSpec::Proc {
                    target: "/proc".into(),
                },
                MountSpec::Dev {
                    target: "/dev".into(),
                },
                MountSpec::Bind {
                    source: "/w/storage-socket/storage.sock".into(),
                    target: "/kindling/storage-socket/storage.sock".into(),
                    writable: false,
                },
            ],
            env: vec![
                ("DB_PASSWORD".into(), None),
                (
                    "KINDLING_PATH".into(),
                    Some("/packages/numpy==2.4.6/files".into()),
                ),
                ("KINDLING_FORMAT".into(), Some("sebs".into())),
            ],
            cwd: "/handler".into(),
            uid: 65534,
            gid: 65534,
            limits: Limits {
                memory_bytes: Some(256 << 20),
                cpu_cores: Some(1.5),
                pids: Some(64),
            },
            network: false,
        }
    }

    fn line(c: &[OsString]) -> String {
        c.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn chroot_tree_binds_the_layout_read_only_and_private() {
        let steps = chroot_steps(Path::new("/base/rootfs"), Path::new("/t/tree"), &layout());
        let targets: Vec<&Path> = steps.iter().map(|s| s.target.as_path()).collect();
        assert_eq!(
            targets,
            [
                "/t/tree",
                "/t/tree/handler",
                "/t/tree/kindling",
                "/t/tree/packages",
                "/t/tree/tmp",
                "/t/tree/proc",
                "/t/tree/dev",
                "/t/tree/kindling/storage-socket/storage.sock",
            ]
            .map(Path::new)
        );
        let lines: Vec<Vec<String>> = steps
            .iter()
            .map(|s| s.commands.iter().map(|c| line(c)).collect())
            .collect();
        assert_eq!(
            lines[0],
            [
                "--bind /base/rootfs /t/tree",
                "--make-private /t/tree",
                "-o remount,bind,ro /t/tree"
            ]
        );
        assert_eq!(lines[1][0], "--bind /w/functions/f/abc /t/tree/handler");
        assert_eq!(
            lines[4],
            [
                "-t tmpfs -o mode=1777,nosuid,nodev,size=67108864 tmpfs /t/tree/tmp",
                "--make-private /t/tree/tmp"
            ]
        );
        assert_eq!(lines[6][0], "--bind /dev /t/tree/dev");
        for (step, l) in steps.iter().zip(&lines) {
            assert!(
                l.iter().any(|c| c.starts_with("--make-private")),
                "{} is not private",
                step.target.display()
            );
        }
        for i in [0, 1, 2, 3, 6, 7] {
            assert!(
                lines[i]
                    .last()
                    .is_some_and(|c| c.starts_with("-o remount,bind,ro")),
                "{:?} is not read-only",
                lines[i]
            );
        }
    }

    #[test]
    fn mount_points_are_looked_up_under_earlier_binds() {
        let l = layout();
        let root = Path::new("/base/rootfs");
        assert_eq!(
            host_path(
                root,
                &l.mounts[..6],
                Path::new("/kindling/storage-socket/storage.sock")
            ),
            Path::new("/w/runtime/base/storage-socket/storage.sock")
        );
        assert_eq!(
            host_path(root, &l.mounts[..1], Path::new("/kindling")),
            Path::new("/base/rootfs/kindling")
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let err = check_mount_points(dir.path(), &l).expect_err("empty base");
        assert!(
            err.to_string().contains("/handler"),
            "the error names the mount point: {err}"
        );
    }

    #[test]
    fn oci_config_carries_the_layout() {
        let c = oci_config(
            Path::new("/base/rootfs"),
            &layout(),
            &["python3".to_string()],
        );
        let mounts = c["mounts"].as_array().expect("mounts");
        let dest: Vec<&str> = mounts
            .iter()
            .map(|m| m["destination"].as_str().expect("destination"))
            .collect();
        assert_eq!(
            dest,
            [
                "/handler",
                "/kindling",
                "/packages",
                "/tmp",
                "/proc",
                "/dev",
                "/kindling/storage-socket/storage.sock"
            ]
        );
        assert_eq!(mounts[2]["source"], "/w/packages");
        assert_eq!(mounts[2]["type"], "bind");
        assert!(mounts[2]["options"]
            .as_array()
            .expect("options")
            .contains(&json!("ro")));
        assert_eq!(mounts[3]["options"][3], "size=67108864");
        assert_eq!(c["root"]["readonly"], true);
        assert_eq!(c["process"]["cwd"], "/handler");
        assert_eq!(c["process"]["user"]["uid"], 65534);
        assert_eq!(
            c["process"]["env"],
            json!([
                "KINDLING_PATH=/packages/numpy==2.4.6/files",
                "KINDLING_FORMAT=sebs"
            ])
        );
        assert_eq!(c["linux"]["resources"]["memory"]["limit"], 256 << 20);
        assert_eq!(c["linux"]["resources"]["cpu"]["quota"], 150_000);
        let ns: Vec<&str> = c["linux"]["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .map(|n| n["type"].as_str().expect("type"))
            .collect();
        assert!(ns.contains(&"network"), "no network for the baseline");
    }

    /// Runs the driver with the host's python3 over a fake layout in a temporary directory.
    #[test]
    fn the_driver_sets_sys_path_like_the_runtime_and_prints_the_envelope() {
        // CI has python3: without it this test fails rather than passing unchecked.
        crate::suite::tests::require_python3();
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let handler = d.join("handler");
        let plain = d.join("packages/plain==1/files");
        let with_pth = d.join("packages/pth==1/files");
        for p in [&handler, &plain, &with_pth.join("extra")] {
            std::fs::create_dir_all(p).expect("mkdir");
        }
        std::fs::write(plain.join("plainmod.py"), "X = 20\n").expect("w");
        std::fs::write(with_pth.join("pth.pth"), "extra\n").expect("w");
        std::fs::write(with_pth.join("extra/extramod.py"), "Y = 22\n").expect("w");
        std::fs::write(
            handler.join("function.py"),
            "import os, sys, plainmod, extramod\nfrom . import sibling\n\n\
             def handler(event):\n    \
             return {'result': {'sum': plainmod.X + extramod.Y + event['n'], 'path': sys.path[:4],\n    \
             'cwd': os.getcwd(), 'rid': event['request-id'], 'sibling': sibling.NAME},\n    \
             'measurement': {'t': 1}}\n",
        )
        .expect("w");
        std::fs::write(handler.join("sibling.py"), "NAME = __name__\n").expect("w");
        std::fs::write(
            handler.join("f.py"),
            "def f(event):\n    return [event, 'ol']\n",
        )
        .expect("w");
        let runtime = d.join("runtime");
        std::fs::create_dir_all(&runtime).expect("mkdir");
        std::fs::write(
            runtime.join("kindling_runtime.py"),
            kindling_worker::runtime::SOURCE,
        )
        .expect("w");
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let code = driver(&s(&handler), &s(&runtime));
        let run = |format: &str, event: &str| {
            let mut child = std::process::Command::new("python3")
                .args(["-S", "-E", "-c", &code])
                .env_clear()
                .env("KINDLING_FORMAT", format)
                .env("KINDLING_PATH", format!("{}:{}", s(&plain), s(&with_pth)))
                .env("KINDLING_SITE", s(&with_pth))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("python3");
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(event.as_bytes())
                .expect("write");
            let out = child.wait_with_output().expect("wait");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        let out = run("sebs", r#"{"n": 2}"#);
        let inv = Invocation::from_baseline(
            Ok(std::process::Output {
                status: std::os::unix::process::ExitStatusExt::from_raw(0),
                stdout: out,
                stderr: Vec::new(),
            }),
            Duration::from_millis(5),
            0.0,
            0.0,
        );
        assert_eq!(inv.status, Status::Ok, "{:?}", inv.error);
        let output = &inv.output["result"]["result"];
        assert_eq!(output["sum"], 44);
        assert_eq!(
            output["sibling"], "function.sibling",
            "loaded as SeBS's package"
        );
        assert_eq!(output["rid"], "baseline");
        assert_eq!(output["cwd"], s(&handler));
        assert_eq!(
            output["path"],
            json!([s(&handler), s(&plain), s(&with_pth), s(&runtime)]),
            "code first, then the closure in lock order, then the runtime"
        );
        assert_eq!(inv.output["result"]["measurement"], json!({"t": 1}));
        assert_eq!(inv.times.client, 5000);

        let out = run("ol", r#"{"a": 1}"#);
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v, json!([{"a": 1}, "ol"]));
    }

    #[test]
    fn a_failed_or_garbled_baseline_is_never_ok() {
        use std::os::unix::process::ExitStatusExt;
        let out = |code: i32, stdout: &str| {
            Ok(std::process::Output {
                status: std::process::ExitStatus::from_raw(code << 8),
                stdout: stdout.as_bytes().to_vec(),
                stderr: b"Traceback: ImportError".to_vec(),
            })
        };
        let ok = r#"{"result": {"result": 1}}"#;
        let status = |r| Invocation::from_baseline(r, Duration::ZERO, 0.0, 0.0).status;
        assert_eq!(status(out(0, ok)), Status::Ok);
        assert_eq!(status(out(1, ok)), Status::Error);
        assert_eq!(status(out(0, "not json")), Status::Error);
        assert_eq!(status(out(0, r#"{"begin": "1.0"}"#)), Status::Error);
        assert_eq!(status(Err(anyhow!("no result within 90 s"))), Status::Error);
    }
}
