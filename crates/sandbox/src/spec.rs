//! What the worker asks for: the description of a sandbox and of the instances it runs.
//!
//! These types cross a process boundary (worker → spawner → init) as JSON, so they hold only
//! plain data: paths, numbers and strings.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A sandbox: namespaces, a cgroup, and a root filesystem assembled from mounts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Short unique id, used as hostname and in logs.
    pub id: String,
    /// Base root filesystem, bound read-only at `/`.
    pub rootfs: PathBuf,
    /// An empty host directory used as the mount point of the new root inside the sandbox's own
    /// mount namespace. Every sandbox may share the same one: the mounts never reach the host.
    pub mountpoint: PathBuf,
    /// Mounts on top of the root, in order.
    pub mounts: Vec<MountSpec>,
    /// The sandbox's own network namespace has only loopback (`false`), or is connected to the
    /// host by the worker ([`crate::net`]) before the first instance starts (`true`): init waits
    /// for [`crate::control::ControlRequest::NetworkReady`] first.
    pub network: bool,
    /// A new pid namespace (init is pid 1). Zygote sandboxes stay in the host's, because a
    /// zygote must be able to `setns` into the pid namespaces of the sandboxes it forks into,
    /// and a process may only enter a pid namespace below its own.
    #[serde(default = "yes")]
    pub pid_namespace: bool,
    /// `cgroup.procs` files the sandbox's init joins before anything else.
    pub cgroup_procs: Vec<PathBuf>,
    /// The first instance, started as soon as the root is ready.
    pub instance: Option<InstanceSpec>,
}

/// One mount inside the sandbox; `target` is an absolute path inside the sandbox's root.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MountSpec {
    /// A host directory or file bound into the sandbox.
    Bind {
        source: PathBuf,
        target: PathBuf,
        writable: bool,
    },
    /// A size-limited tmpfs, world-writable with the sticky bit (like `/tmp`).
    Tmpfs { target: PathBuf, size_bytes: u64 },
    /// `/proc` of the sandbox's pid namespace.
    Proc { target: PathBuf },
    /// A minimal `/dev`: null, zero, full, random, urandom, tty and the fd symlinks.
    Dev { target: PathBuf },
}

/// An instance: one program (the interpreter) started inside a sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceSpec {
    /// Program and arguments; `argv[0]` is an absolute path inside the sandbox.
    pub argv: Vec<String>,
    /// The whole environment (nothing is inherited).
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    pub cwd: PathBuf,
    /// Unprivileged user and group the instance runs as.
    pub uid: u32,
    pub gid: u32,
    /// Most open files.
    pub max_open_files: u64,
    /// Connect standard output and error to the invocation socket (for jobs whose output the
    /// worker collects) instead of inheriting the worker's.
    #[serde(default)]
    pub stdio_to_socket: bool,
    /// Keep root and all capabilities, without seccomp (zygotes only: they `setns` on behalf of
    /// the instances they fork, which drop privileges themselves before running user code).
    #[serde(default)]
    pub privileged: bool,
}

fn yes() -> bool {
    true
}
