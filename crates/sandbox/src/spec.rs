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
    /// Which user namespace the sandbox's namespaces belong to. Every sandbox has its own pid
    /// namespace, with its init as pid 1.
    #[serde(default)]
    pub user_namespace: UserNamespace,
    /// `cgroup.procs` files the sandbox's init joins before anything else.
    pub cgroup_procs: Vec<PathBuf>,
    /// The first instance, started as soon as the root is ready.
    pub instance: Option<InstanceSpec>,
    /// Send descriptors of the sandbox's namespaces (and a pidfd of the first instance) with
    /// its `Ready` event, so that a zygote can be sent into them or sandboxes made within them.
    #[serde(default)]
    pub export_namespaces: bool,
}

/// The user namespace of a sandbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum UserNamespace {
    /// The host's: the sandbox's init is root on the host (instances drop that before exec).
    #[default]
    Host,
    /// A new user namespace below the host's, mapping these ids (a root zygote's sandbox).
    /// Its root is an unprivileged user on the host.
    New(IdMaps),
    /// Within the user and pid namespaces whose descriptors travel with the spawn request, in
    /// that order (a zygote sandbox's): the sandbox's pid namespace becomes a child of that pid
    /// namespace, and its other namespaces belong to that user namespace.
    Within,
}

/// uid and gid maps of a user namespace, each line `inside outside count`, where `outside`
/// is an id of the parent user namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdMaps {
    pub uid: Vec<[u32; 3]>,
    pub gid: Vec<[u32; 3]>,
}

impl IdMaps {
    /// The text of a `uid_map` or `gid_map` file.
    pub fn text(lines: &[[u32; 3]]) -> String {
        lines
            .iter()
            .map(|[inside, outside, count]| format!("{inside} {outside} {count}\n"))
            .collect()
    }
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
    /// Only the listed entries of the package store: a small tmpfs at `target` (writable by
    /// the sandbox's init only) holding one read-only bind of `<store>/<key>` per key.
    Packages {
        store: PathBuf,
        target: PathBuf,
        keys: Vec<String>,
    },
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
    /// Connect standard output and error to two pipes whose read ends the spawner hands to the
    /// worker (function instances: the worker writes what arrives to the function's log).
    #[serde(default)]
    pub output_pipes: bool,
    /// What the program may do.
    #[serde(default)]
    pub privilege: Privilege,
}

/// The privileges an instance keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Privilege {
    /// Function code: `uid`/`gid`, no capabilities, an empty bounding set, no_new_privs and the
    /// instance seccomp filter.
    #[default]
    Instance,
    /// A zygote: root of the sandbox's own user namespace (never the host's; init refuses
    /// otherwise) with only the capabilities forking needs ([`crate::seccomp::ZYGOTE_CAPABILITIES`]),
    /// no_new_privs and the zygote seccomp filter. Its children drop to instance privileges
    /// themselves before running function code.
    Zygote,
}
