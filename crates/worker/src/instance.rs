//! Instances as the worker sees them: a sandbox (init, cgroup, control channel) with one
//! running interpreter that serves one function version, and the framed protocol to invoke it.
//!
//! Creating one is a cold start: a cgroup, a sandbox from the spawner, and a fresh interpreter
//! running the runtime. The first request is written at once; the kernel buffers it until the
//! interpreter has loaded the function and reads it.

use crate::logs::{InstanceOutput, Logs};
use crate::registry::FunctionVersion;
use crate::tenants::{Assignment, Assignments};
use kindling_sandbox::cgroup::{Cgroup, CgroupManager, Limits as CgroupLimits};
use kindling_sandbox::control::{ControlChannel, ControlEvent, ControlRequest};
use kindling_sandbox::net::{NetLease, Network};
use kindling_sandbox::spawner::Spawner;
use kindling_sandbox::spec::{
    IdMaps, InstanceSpec, MountSpec, Privilege, SandboxSpec, UserNamespace,
};
use kindling_sandbox::stdio::OutputPipes;
use kindling_sandbox::sys;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Largest response an instance may send.
const MAX_RESPONSE: usize = 64 * 1024 * 1024;
/// Prefix of a forked instance's one report of the modules it imported (a JSON list follows).
const MODULES_FRAME: &[u8] = b"modules\n";
/// Largest such report.
const MAX_MODULES_FRAME: usize = 1024 * 1024;
/// Output of a job (an installer, a build) the worker keeps: its last bytes.
const MAX_JOB_OUTPUT: usize = 256 * 1024;

/// Why an invocation failed.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The handler raised; the body is its traceback.
    #[error("{0}")]
    Handler(String),
    #[error("function did not finish within its timeout of {0:.1} s")]
    Timeout(f64),
    #[error("function exceeded its memory limit of {0} MB and was killed")]
    OutOfMemory(u64),
    #[error("sandbox could not start: {0}")]
    Setup(String),
    #[error("instance died: {0}")]
    Died(String),
    #[error("instance sent a malformed response")]
    Protocol,
}

impl InvokeError {
    /// Whether the instance is unusable afterwards (the sandbox must go).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, InvokeError::Handler(_))
    }
}

/// Errors creating a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create cgroup")]
    Cgroup(#[from] kindling_sandbox::cgroup::CgroupError),
    #[error("cannot create sandbox")]
    Spawn(#[from] kindling_sandbox::spawner::SpawnerError),
    #[error("sandbox socket setup failed")]
    Io(#[from] std::io::Error),
    #[error("cannot connect the sandbox's network")]
    Network(#[from] kindling_sandbox::net::NetError),
}

/// The uid and gid function code runs as inside a zygote's user namespace (mapped to the
/// worker's `sandbox_uid`/`sandbox_gid` on the host), so a forked instance sees the same ids as
/// a cold one on the default configuration.
pub const USERNS_INSTANCE_ID: u32 = 65534;

/// The log of what zygotes print (package import-time code): `<logs dir>/_zygotes.log`, a name
/// no function can have.
pub const ZYGOTE_LOG: &str = "_zygotes";

/// Where a new sandbox's namespaces live.
pub(crate) enum Nesting<'a> {
    /// Below the host's (cold starts and jobs): the init is root on the host until it starts
    /// an instance, which drops that before exec.
    Host,
    /// A root zygote's sandbox: a new user namespace below the host's, whose root is the
    /// worker's `zygote_uid`, an unprivileged user on the host.
    Zygote,
    /// Within a zygote sandbox's user and pid namespaces: a sandbox the zygote forks an instance
    /// or a child zygote into. It keeps the zygote sandbox alive (a pid namespace dies with its
    /// init, and this sandbox's lies inside the zygote sandbox's).
    Within(&'a Arc<SharedSandbox>),
}

/// What the worker needs to create sandboxes: shared by every instance.
pub struct Factory {
    pub spawner: Spawner,
    pub cgroups: CgroupManager,
    pub rootfs: PathBuf,
    pub python: String,
    pub runtime_dir: PathBuf,
    /// The package store, bound read-only at /packages.
    pub packages_dir: PathBuf,
    /// The object storage socket, bound read-only into function sandboxes (None: storage is
    /// off).
    pub storage_socket: Option<PathBuf>,
    /// Which function each sandbox serves (object storage checks its callers against it).
    pub assignments: Arc<Assignments>,
    /// Where instances' output goes (None: they inherit the worker's, as jobs' helpers might).
    pub logs: Option<Arc<Logs>>,
    pub mountpoint: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// Host uid and gid of the root of zygotes' user namespaces.
    pub zygote_uid: u32,
    pub zygote_gid: u32,
    pub max_open_files: u64,
    /// Networks of `network: true` sandboxes (None: networked sandboxes cannot be made).
    pub network: Option<Arc<Network>>,
    /// The resolv.conf bound into networked sandboxes (None: theirs stays the base's).
    pub resolv_conf: Option<PathBuf>,
    counter: AtomicU64,
    prefix: String,
}

/// Effective limits of one function (worker defaults overridden by its config).
#[derive(Debug, Clone)]
pub struct FunctionLimits {
    pub memory_mb: u64,
    pub timeout: Duration,
    pub cpu_cores: f64,
    pub pids: u64,
    pub tmp_mb: u64,
    pub network: bool,
}

impl FunctionLimits {
    /// The cgroup limits of a sandbox running this function.
    pub fn cgroup(&self) -> CgroupLimits {
        CgroupLimits {
            memory_bytes: Some(self.memory_mb.saturating_mul(1024 * 1024)),
            cpu_cores: Some(self.cpu_cores),
            pids: Some(self.pids),
        }
    }
}

impl Factory {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        spawner: Spawner,
        cgroups: CgroupManager,
        rootfs: PathBuf,
        python: String,
        runtime_dir: PathBuf,
        packages_dir: PathBuf,
        mountpoint: PathBuf,
        (uid, gid): (u32, u32),
        (zygote_uid, zygote_gid): (u32, u32),
        max_open_files: u64,
    ) -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self {
            spawner,
            cgroups,
            rootfs,
            python,
            runtime_dir,
            packages_dir,
            storage_socket: None,
            assignments: Arc::new(Assignments::default()),
            logs: None,
            mountpoint,
            uid,
            gid,
            zygote_uid,
            zygote_gid,
            max_open_files,
            network: None,
            resolv_conf: None,
            counter: AtomicU64::new(0),
            prefix: format!("{:x}", secs & 0xfffff),
        }
    }

    /// A fresh sandbox id: unique for this worker, short enough for a hostname.
    pub fn next_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("sb-{}-{n}", self.prefix)
    }

    /// Creates a sandbox (cgroup, namespaces, root) through the spawner, optionally starting
    /// its first instance (once its network is connected, if it has one). Returns the sandbox
    /// and the worker's end of the instance socket.
    pub(crate) fn create_sandbox(
        &self,
        id: &str,
        mounts: Vec<MountSpec>,
        network: bool,
        nesting: Nesting<'_>,
        limits: &CgroupLimits,
        instance: Option<InstanceSpec>,
    ) -> Result<(SandboxHandle, Option<OwnedFd>), StartError> {
        let (user_namespace, namespace_fds, within) = match nesting {
            Nesting::Host => (UserNamespace::Host, Vec::new(), None),
            Nesting::Zygote => (
                UserNamespace::New(IdMaps {
                    uid: vec![[0, self.zygote_uid, 1], [USERNS_INSTANCE_ID, self.uid, 1]],
                    gid: vec![[0, self.zygote_gid, 1], [USERNS_INSTANCE_ID, self.gid, 1]],
                }),
                Vec::new(),
                None,
            ),
            Nesting::Within(parent) => {
                let fds = parent
                    .namespace_fds(&["user", "pid"])
                    .ok_or_else(|| std::io::Error::other("the zygote sandbox is gone"))?;
                (UserNamespace::Within, fds, Some(parent.clone()))
            }
        };
        let export_namespaces = user_namespace != UserNamespace::Host;
        let cgroup = self.cgroups.create(id, limits)?;
        let spec = SandboxSpec {
            id: id.to_string(),
            rootfs: self.rootfs.clone(),
            mountpoint: self.mountpoint.clone(),
            mounts,
            network,
            user_namespace,
            cgroup_procs: cgroup.procs_files(),
            instance,
            export_namespaces,
        };
        let s = match self.spawner.spawn(&spec, &namespace_fds) {
            Ok(s) => s,
            Err(e) => {
                let _ = cgroup.remove();
                return Err(e.into());
            }
        };
        let mut handle = SandboxHandle {
            pidfd: s.pidfd,
            control: s.control,
            cgroup,
            namespaces: HashMap::new(),
            _within: within,
            output: s.output,
            network: None,
        };
        if network {
            // The init builds the root meanwhile; its first instance waits for this.
            match self.connect_network(handle.pidfd.as_fd(), s.pid) {
                Ok(lease) => handle.network = Some(lease),
                Err(e) => {
                    handle.destroy();
                    return Err(e);
                }
            }
            if let Err(e) = handle.control.send(&ControlRequest::NetworkReady, &[]) {
                handle.destroy();
                return Err(e.into());
            }
        }
        Ok((handle, s.instance))
    }

    /// Connects the network namespace of a sandbox (its init's pidfd and pid) to the host:
    /// veth, addresses, routes, egress rules. Whoever made the sandbox, its init must not start
    /// an instance before this is done.
    pub(crate) fn connect_network(
        &self,
        pidfd: BorrowedFd<'_>,
        pid: i32,
    ) -> Result<NetLease, StartError> {
        let network = self.network.as_ref().ok_or_else(|| {
            StartError::Io(std::io::Error::other(
                "networked sandboxes are not available on this worker",
            ))
        })?;
        let netns = kindling_sandbox::net::netns_of(pidfd, pid)?;
        Ok(network.connect(netns.as_fd())?)
    }

    /// The bind of the networked sandboxes' resolv.conf.
    fn resolv_conf_mount(&self) -> Option<MountSpec> {
        self.resolv_conf.as_ref().map(|f| MountSpec::Bind {
            source: f.clone(),
            target: "/etc/resolv.conf".into(),
            writable: false,
        })
    }

    /// The mounts of a function's sandbox: its code, the runtime, the package store, /tmp,
    /// /proc, /dev and the object storage socket.
    pub(crate) fn function_mounts(
        &self,
        function: &FunctionVersion,
        limits: &FunctionLimits,
    ) -> Vec<MountSpec> {
        let mut mounts = vec![
            MountSpec::Bind {
                source: function.dir.clone(),
                target: "/handler".into(),
                writable: false,
            },
            MountSpec::Bind {
                source: self.runtime_dir.clone(),
                target: "/kindling".into(),
                writable: false,
            },
            self.packages_mount(function.lock.packages.iter().map(|p| p.key())),
            MountSpec::Tmpfs {
                target: "/tmp".into(),
                size_bytes: limits.tmp_mb.saturating_mul(1024 * 1024),
            },
            MountSpec::Proc {
                target: "/proc".into(),
            },
            MountSpec::Dev {
                target: "/dev".into(),
            },
        ];
        mounts.extend(self.storage_mount());
        if limits.network {
            mounts.extend(self.resolv_conf_mount());
        }
        mounts
    }

    /// `/packages` showing only `keys` of the package store (a function's closure, or a
    /// zygote's package set).
    pub(crate) fn packages_mount(&self, keys: impl IntoIterator<Item = String>) -> MountSpec {
        MountSpec::Packages {
            store: self.packages_dir.clone(),
            target: crate::runtime::SANDBOX_PACKAGES.into(),
            keys: keys.into_iter().collect(),
        }
    }

    /// The storage socket at /kindling/storage-socket/storage.sock (after the /kindling bind,
    /// whose runtime directory provides the mount point): the socket alone, not the root-only
    /// directory holding it on the host.
    pub(crate) fn storage_mount(&self) -> Option<MountSpec> {
        self.storage_socket.as_ref().map(|socket| MountSpec::Bind {
            source: socket.clone(),
            target: crate::storage::SANDBOX_SOCKET.into(),
            writable: false,
        })
    }

    /// Records that sandbox `id` serves `function`, for as long as the returned assignment
    /// lives (its instance keeps it). Made before the sandbox runs any of the function's code.
    pub(crate) fn assign(&self, id: &str, function: &FunctionVersion) -> Assignment {
        self.assignments.assign(id, &function.name)
    }

    /// Whether instances get output pipes (their output goes to their function's log).
    pub(crate) fn logs_instances(&self) -> bool {
        self.logs.is_some()
    }

    /// Starts writing what an instance of `function` in sandbox `id` prints to the function's
    /// log, from the read ends of its pipes.
    pub(crate) fn collect_output(
        &self,
        function: &FunctionVersion,
        id: &str,
        pipes: Option<OutputPipes>,
    ) -> Result<Option<InstanceOutput>, StartError> {
        match (&self.logs, pipes) {
            (Some(logs), Some(pipes)) => Ok(Some(logs.collect(&function.name, id, pipes)?)),
            _ => Ok(None),
        }
    }

    /// Starts writing what a root zygote (and every zygote and seed forked from it, until a
    /// seed takes its function's pipes) prints to [`ZYGOTE_LOG`], never the worker's own log.
    pub(crate) fn collect_zygote_output(
        &self,
        id: &str,
        pipes: Option<OutputPipes>,
    ) -> Result<Option<InstanceOutput>, StartError> {
        match (&self.logs, pipes) {
            (Some(logs), Some(pipes)) => Ok(Some(logs.collect(ZYGOTE_LOG, id, pipes)?)),
            _ => Ok(None),
        }
    }

    /// Cold start: a new sandbox running a fresh interpreter for `function`.
    pub fn cold_start(
        &self,
        function: &Arc<FunctionVersion>,
        limits: &FunctionLimits,
    ) -> Result<Instance, StartError> {
        let id = self.next_id();
        let assignment = self.assign(&id, function);
        let (mut sandbox, sock) = self.create_sandbox(
            &id,
            self.function_mounts(function, limits),
            limits.network,
            Nesting::Host,
            &limits.cgroup(),
            Some(self.instance_spec(function, &id)),
        )?;
        let output = sandbox.output.take();
        let started = sock
            .ok_or_else(|| StartError::Io(std::io::Error::other("no instance socket")))
            .and_then(|sock| Ok((sock, self.collect_output(function, &id, output)?)));
        match started {
            Ok((sock, output)) => {
                Instance::new(id, function, limits, sandbox, sock, assignment, output)
            }
            Err(e) => {
                sandbox.destroy();
                Err(e)
            }
        }
    }

    /// The interpreter of an instance and its flags: no `site` (the runtime puts exactly the
    /// function's closure on `sys.path`), no `PYTHON*` variables.
    fn interpreter(&self) -> Vec<String> {
        vec![self.python.clone(), "-S".into(), "-E".into()]
    }

    fn instance_spec(&self, function: &FunctionVersion, id: &str) -> InstanceSpec {
        let mut argv = self.interpreter();
        argv.extend([
            "-c".into(),
            "import sys; sys.path.insert(0, '/kindling'); import kindling_runtime; kindling_runtime.main()".into(),
        ]);
        InstanceSpec {
            argv,
            env: self.instance_env(function, id),
            cwd: "/handler".into(),
            uid: self.uid,
            gid: self.gid,
            max_open_files: self.max_open_files,
            stdio_to_socket: false,
            output_pipes: self.logs_instances(),
            privilege: Privilege::Instance,
        }
    }

    /// How an instance of `function` is laid out, for `GET /registry/<name>`.
    pub fn instance_layout(
        &self,
        function: &FunctionVersion,
        limits: &FunctionLimits,
    ) -> InstanceLayout {
        // The function's own variables come first (see instance_env); their values stay out of
        // every reply.
        let own = function.config.environment.len();
        let env = self
            .instance_env(function, "")
            .into_iter()
            .enumerate()
            .filter(|(_, (k, _))| k != "KINDLING_SANDBOX")
            .map(|(i, (k, v))| (k, (i >= own).then_some(v)))
            .collect();
        InstanceLayout {
            interpreter: self.interpreter(),
            mounts: self.function_mounts(function, limits),
            env,
            cwd: "/handler".into(),
            uid: self.uid,
            gid: self.gid,
            limits: limits.cgroup(),
            network: limits.network,
        }
    }

    /// The whole environment of a function's instance: its own variables, then Kindling's.
    pub(crate) fn instance_env(
        &self,
        function: &FunctionVersion,
        id: &str,
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = function
            .config
            .environment
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.extend(function.lock.runtime_env());
        env.extend(
            [
                ("PATH", "/usr/local/bin:/usr/bin:/bin"),
                ("HOME", "/tmp"),
                ("LANG", "C.UTF-8"),
                ("KINDLING_FORMAT", function.format.runtime_name()),
                ("KINDLING_SANDBOX", id),
                ("KINDLING_FUNCTION", &function.name),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        env
    }
}

/// How the instances of a function are set up, as `GET /registry/<name>` reports it under
/// `instance`: what a benchmark baseline (`kindling bench startup`) needs to run the same
/// handler outside Kindling in the same layout (host paths of the code, runtime, package store
/// and storage socket, and the environment naming the function's package closure).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct InstanceLayout {
    /// The interpreter (a path inside the sandbox) and its flags; the runtime's `-c` follows.
    pub interpreter: Vec<String>,
    /// The sandbox's mounts in order, sources as host paths.
    pub mounts: Vec<MountSpec>,
    /// The instance's environment, less the per-sandbox `KINDLING_SANDBOX`: Kindling's variables
    /// with their values, the function's own by name only (`None`: withheld, may be a secret).
    pub env: Vec<(String, Option<String>)>,
    pub cwd: PathBuf,
    /// The unprivileged user and group function code runs as.
    pub uid: u32,
    pub gid: u32,
    pub limits: CgroupLimits,
    pub network: bool,
}

impl InstanceLayout {
    /// The variables whose values the layout carries (Kindling's, not the function's own).
    pub fn known_env(&self) -> impl Iterator<Item = (&str, &str)> {
        self.env
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.as_deref()?)))
    }
}

/// The sandbox under an instance; destroying it kills every process and removes the cgroup.
pub(crate) struct SandboxHandle {
    pidfd: OwnedFd,
    control: ControlChannel,
    cgroup: Cgroup,
    /// Descriptors of its namespaces, by name, once its init reported them (sandboxes in a
    /// zygote's user namespace).
    namespaces: HashMap<String, OwnedFd>,
    /// The zygote sandbox whose pid namespace holds this one's.
    _within: Option<Arc<SharedSandbox>>,
    /// Read ends of its first instance's output pipes, until that instance takes them.
    output: Option<OutputPipes>,
    /// A networked sandbox's subnet, freed when the sandbox goes.
    network: Option<NetLease>,
}

/// A zygote's sandbox, kept alive by the zygote and by every sandbox made within its
/// namespaces; destroyed (blocking) when the last of them lets go.
pub(crate) struct SharedSandbox {
    sandbox: std::sync::Mutex<Option<SandboxHandle>>,
    /// How many exist (a gauge of the worker's).
    count: Arc<AtomicUsize>,
}

impl SharedSandbox {
    pub(crate) fn new(sandbox: SandboxHandle, count: &Arc<AtomicUsize>) -> Arc<Self> {
        count.fetch_add(1, Ordering::SeqCst);
        Arc::new(Self {
            sandbox: std::sync::Mutex::new(Some(sandbox)),
            count: count.clone(),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&SandboxHandle) -> T) -> Option<T> {
        self.sandbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(f)
    }

    /// Duplicates of the named namespace descriptors, in order.
    pub(crate) fn namespace_fds(&self, names: &[&str]) -> Option<Vec<RawFd>> {
        self.with(|s| {
            names
                .iter()
                .map(|n| s.namespaces.get(*n).map(|fd| fd.as_raw_fd()))
                .collect::<Option<Vec<_>>>()
        })
        .flatten()
    }

    /// Memory charged to the sandbox's cgroup.
    pub(crate) fn memory_usage(&self) -> Option<u64> {
        self.with(|s| s.memory_usage()).flatten()
    }
}

impl Drop for SharedSandbox {
    fn drop(&mut self) {
        let taken = self
            .sandbox
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(s) = taken {
            s.destroy();
        }
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

impl SandboxHandle {
    /// Kills the sandbox and removes its cgroup. Blocking (waits for the processes to exit).
    pub(crate) fn destroy(self) {
        let _ = sys::pidfd_kill(self.pidfd.as_raw_fd());
        drop(self.control);
        if let Err(e) = self.cgroup.kill_all() {
            tracing::warn!(
                cgroup = self.cgroup.name(),
                "killing sandbox processes: {e}"
            );
        }
        if let Err(e) = self.cgroup.remove() {
            tracing::warn!(cgroup = self.cgroup.name(), "removing sandbox cgroup: {e}");
        }
        drop(self.network);
    }

    /// The read ends of its first instance's output pipes (once).
    pub(crate) fn take_output(&mut self) -> Option<OutputPipes> {
        self.output.take()
    }

    /// Descriptors of the named namespaces, in order (after [`SandboxHandle::wait_ready`]).
    pub(crate) fn namespace_fds(&self, names: &[&str]) -> Option<Vec<RawFd>> {
        names
            .iter()
            .map(|n| self.namespaces.get(*n).map(|fd| fd.as_raw_fd()))
            .collect()
    }

    /// The cgroup.procs files a process writes to join the sandbox's cgroup.
    pub(crate) fn cgroup_procs(&self) -> Vec<PathBuf> {
        self.cgroup.procs_files()
    }

    /// Memory charged to the sandbox's cgroup.
    pub(crate) fn memory_usage(&self) -> Option<u64> {
        self.cgroup.memory_usage().ok()
    }

    /// Mounts a host directory read-only at `target` inside the live sandbox: a detached copy
    /// of the directory's mount is made here and attached by the sandbox's init, which first
    /// makes the directory `target` with `create`.
    pub(crate) fn attach(
        &self,
        source: &Path,
        target: &str,
        create: bool,
    ) -> Result<(), StartError> {
        let tree = sys::open_tree_clone(source, false)?;
        sys::mount_tree_readonly(tree.as_raw_fd())?;
        let req = kindling_sandbox::control::ControlRequest::Mount {
            target: target.into(),
            create,
        };
        self.control.send(&req, &[tree.as_raw_fd()])?;
        loop {
            match self.control.recv::<ControlEvent>(false)? {
                Some((ControlEvent::Mounted { .. }, _)) => return Ok(()),
                Some((ControlEvent::Failed { message }, _)) => {
                    return Err(StartError::Io(std::io::Error::other(message)))
                }
                Some(_) => continue,
                None => return Err(StartError::Io(std::io::Error::other("sandbox init exited"))),
            }
        }
    }

    /// Sets the cgroup's limits (a pooled sandbox taking on a function).
    pub(crate) fn set_limits(&self, limits: &CgroupLimits) -> Result<(), StartError> {
        Ok(self.cgroup.set_limits(limits)?)
    }

    /// Blocks until the init reports its root filesystem ready (or its setup failure); keeps
    /// the namespace descriptors it exported and returns a pidfd of its first instance, if it
    /// sent one.
    pub(crate) fn wait_ready(&mut self) -> Result<Option<OwnedFd>, StartError> {
        loop {
            match self.control.recv::<ControlEvent>(false)? {
                Some((
                    ControlEvent::Ready {
                        instance_pidfd,
                        namespaces,
                        ..
                    },
                    mut fds,
                )) => {
                    let pidfd = if instance_pidfd && !fds.is_empty() {
                        Some(fds.remove(0))
                    } else {
                        None
                    };
                    self.namespaces = namespaces.into_iter().zip(fds).collect();
                    return Ok(pidfd);
                }
                Some((ControlEvent::SetupFailed { message }, _)) => {
                    return Err(StartError::Io(std::io::Error::other(format!(
                        "sandbox setup failed: {message}"
                    ))))
                }
                Some(_) => continue,
                None => return Err(StartError::Io(std::io::Error::other("sandbox init exited"))),
            }
        }
    }

    /// The init's setup failure message, if it reported one.
    pub(crate) fn setup_error(&self) -> Option<String> {
        while let Ok(Some((event, _))) = self.control.recv::<ControlEvent>(true) {
            if let ControlEvent::SetupFailed { message } = event {
                return Some(message);
            }
        }
        None
    }

    /// Why the sandbox stopped serving: a setup failure or an out-of-memory kill, if either.
    fn post_mortem(&self, memory_mb: u64) -> Option<InvokeError> {
        if self.cgroup.oom_kills().unwrap_or(0) > 0 {
            return Some(InvokeError::OutOfMemory(memory_mb));
        }
        while let Ok(Some((event, _))) = self.control.recv::<ControlEvent>(true) {
            if let ControlEvent::SetupFailed { message } = event {
                return Some(InvokeError::Setup(message));
            }
        }
        None
    }
}

/// Result of one invocation.
#[derive(Debug)]
pub struct Reply {
    /// The JSON body.
    pub body: Vec<u8>,
    /// Handler time measured inside the sandbox, in milliseconds.
    pub handler_ms: f64,
}

/// A running instance of one function version.
pub struct Instance {
    pub id: String,
    pub function: Arc<FunctionVersion>,
    memory_mb: u64,
    sandbox: Option<SandboxHandle>,
    stream: UnixStream,
    pub created: Instant,
    pub last_used: Instant,
    pub invocations: u64,
    /// What a forked instance reported importing beyond its zygote's modules.
    loaded_modules: Option<Vec<String>>,
    /// Its output, going to its function's log.
    output: Option<InstanceOutput>,
    /// Its sandbox's assignment to its function, withdrawn when the instance goes.
    _assignment: Assignment,
    /// Whether its sandbox's cgroup is frozen (while idle).
    frozen: bool,
}

impl Instance {
    /// Wraps a sandbox whose instance talks on `sock` and whose output `output` collects.
    pub(crate) fn new(
        id: String,
        function: &Arc<FunctionVersion>,
        limits: &FunctionLimits,
        sandbox: SandboxHandle,
        sock: OwnedFd,
        assignment: Assignment,
        output: Option<InstanceOutput>,
    ) -> Result<Self, StartError> {
        let stream = std::os::unix::net::UnixStream::from(sock);
        stream.set_nonblocking(true)?;
        sandbox.control.set_nonblocking()?;
        Ok(Instance {
            id,
            function: function.clone(),
            memory_mb: limits.memory_mb,
            sandbox: Some(sandbox),
            stream: UnixStream::from_std(stream)?,
            created: Instant::now(),
            last_used: Instant::now(),
            invocations: 0,
            loaded_modules: None,
            output,
            _assignment: assignment,
            frozen: false,
        })
    }

    /// Sends one event and waits for the reply, up to `timeout`.
    pub async fn invoke(
        &mut self,
        request_id: &str,
        event: &[u8],
        timeout: Duration,
    ) -> Result<Reply, InvokeError> {
        self.invocations += 1;
        if let Some(o) = &self.output {
            o.begin(request_id);
        }
        let result = tokio::time::timeout(timeout, self.exchange(request_id, event)).await;
        if let Some(o) = &self.output {
            o.end();
        }
        self.last_used = Instant::now();
        match result {
            Err(_) => Err(InvokeError::Timeout(timeout.as_secs_f64())),
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                // The connection broke: find out why from the sandbox.
                let reason = self
                    .sandbox
                    .as_ref()
                    .and_then(|s| s.post_mortem(self.memory_mb));
                Err(reason.unwrap_or_else(|| InvokeError::Died(e.to_string())))
            }
        }
    }

    async fn exchange(
        &mut self,
        request_id: &str,
        event: &[u8],
    ) -> std::io::Result<Result<Reply, InvokeError>> {
        let len = (request_id.len() + 1 + event.len()) as u32;
        let mut frame = Vec::with_capacity(len as usize + 4);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(request_id.as_bytes());
        frame.push(b'\n');
        frame.extend_from_slice(event);
        self.stream.write_all(&frame).await?;
        loop {
            let mut head = [0u8; 4];
            self.stream.read_exact(&mut head).await?;
            let n = u32::from_be_bytes(head) as usize;
            if n > MAX_RESPONSE {
                return Ok(Err(InvokeError::Protocol));
            }
            let mut payload = vec![0u8; n];
            self.stream.read_exact(&mut payload).await?;
            // A forked instance reports, once, before its first reply, the modules it imported
            // beyond its zygote's (see `Zygotes::learn`).
            if let Some(list) = payload.strip_prefix(MODULES_FRAME) {
                if self.loaded_modules.is_some() || n > MAX_MODULES_FRAME {
                    return Ok(Err(InvokeError::Protocol));
                }
                let modules: Vec<String> = serde_json::from_slice(list).unwrap_or_default();
                self.loaded_modules = Some(modules);
                continue;
            }
            return Ok(parse_reply(payload));
        }
    }

    /// The modules the instance reported importing beyond its zygote's (once).
    pub(crate) fn take_loaded_modules(&mut self) -> Vec<String> {
        self.loaded_modules
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Destroys the sandbox (blocking: call from a blocking context).
    pub fn destroy(mut self) {
        if let Some(s) = self.sandbox.take() {
            s.destroy();
        }
    }

    /// Memory the sandbox's cgroup charges now, in bytes.
    pub fn memory_usage(&self) -> Option<u64> {
        self.sandbox.as_ref()?.cgroup.memory_usage().ok()
    }

    /// Whether its sandbox is frozen.
    pub(crate) fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// Freezes (or thaws) every process of the instance's sandbox, so that an idle instance's
    /// background processes get no CPU; nothing to do if it is in that state already.
    pub(crate) fn set_frozen(
        &mut self,
        frozen: bool,
    ) -> Result<(), kindling_sandbox::cgroup::CgroupError> {
        let Some(sandbox) = &self.sandbox else {
            return Ok(());
        };
        if self.frozen != frozen {
            if frozen {
                sandbox.cgroup.freeze()?;
            } else {
                sandbox.cgroup.thaw()?;
            }
            self.frozen = frozen;
        }
        Ok(())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Dropped without destroy(): still never leak the sandbox.
        if let Some(s) = self.sandbox.take() {
            s.destroy();
        }
    }
}

/// Parses `<status> <ms>\n<body>`.
pub(crate) fn parse_reply(payload: Vec<u8>) -> Result<Reply, InvokeError> {
    let nl = payload
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(InvokeError::Protocol)?;
    let head = std::str::from_utf8(&payload[..nl]).map_err(|_| InvokeError::Protocol)?;
    let (status, ms) = head.split_once(' ').ok_or(InvokeError::Protocol)?;
    let handler_ms: f64 = ms.parse().map_err(|_| InvokeError::Protocol)?;
    let body = payload[nl + 1..].to_vec();
    match status {
        "ok" => Ok(Reply { body, handler_ms }),
        "error" => Err(InvokeError::Handler(
            String::from_utf8_lossy(&body).into_owned(),
        )),
        _ => Err(InvokeError::Protocol),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        let r = parse_reply(b"ok 1.500\n{\"a\": 1}".to_vec()).unwrap();
        assert_eq!(r.body, b"{\"a\": 1}");
        assert_eq!(r.handler_ms, 1.5);
        match parse_reply(b"error 0.1\nTraceback".to_vec()) {
            Err(InvokeError::Handler(t)) => assert_eq!(t, "Traceback"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_reply(b"garbage".to_vec()),
            Err(InvokeError::Protocol)
        ));
        assert!(matches!(
            parse_reply(b"ok x\n".to_vec()),
            Err(InvokeError::Protocol)
        ));
    }
}

/// The outcome of a job (a one-off program in a sandbox, such as compiling the runtime).
#[derive(Debug)]
pub struct JobOutput {
    /// Exit code, or None when killed by a signal or the timeout.
    pub code: Option<i32>,
    /// Standard output and error, interleaved.
    pub output: String,
    pub timed_out: bool,
}

/// A job: what runs, with which extra mounts and limits.
pub struct Job {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<MountSpec>,
    pub network: bool,
    pub uid: u32,
    pub gid: u32,
    pub limits: CgroupLimits,
    pub timeout: Duration,
    pub cwd: PathBuf,
}

impl Factory {
    /// Runs a job to completion in a fresh sandbox on the base (blocking).
    pub fn run_job(&self, job: Job) -> Result<JobOutput, StartError> {
        use std::io::Read;
        let id = self.next_id();
        let mut mounts = vec![
            MountSpec::Tmpfs {
                target: "/tmp".into(),
                size_bytes: 256 * 1024 * 1024,
            },
            MountSpec::Proc {
                target: "/proc".into(),
            },
            MountSpec::Dev {
                target: "/dev".into(),
            },
        ];
        if job.network {
            mounts.extend(self.resolv_conf_mount());
        }
        mounts.extend(job.mounts);
        let instance = InstanceSpec {
            argv: job.argv,
            env: job.env,
            cwd: job.cwd,
            uid: job.uid,
            gid: job.gid,
            max_open_files: self.max_open_files,
            stdio_to_socket: true,
            output_pipes: false,
            privilege: Privilege::Instance,
        };
        let (handle, sock) = self.create_sandbox(
            &id,
            mounts,
            job.network,
            Nesting::Host,
            &job.limits,
            Some(instance),
        )?;
        let deadline = Instant::now() + job.timeout;
        let mut output = Vec::new();
        let mut timed_out = false;
        if let Some(sock) = sock {
            let mut stream = std::os::unix::net::UnixStream::from(sock);
            let mut buf = [0u8; 16 * 1024];
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    timed_out = true;
                    break;
                }
                stream.set_read_timeout(Some(left))?;
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        output.extend_from_slice(&buf[..n]);
                        // A job may print without end (a package's build): keep the tail.
                        if output.len() > 2 * MAX_JOB_OUTPUT {
                            output.drain(..output.len() - MAX_JOB_OUTPUT);
                        }
                    }
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        timed_out = true;
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let mut code = None;
        if !timed_out {
            // The socket closed: the program ended (or closed its output). Wait for init's report.
            let mut instance_pid = None;
            while let Ok(Some((event, _))) = handle.control.recv::<ControlEvent>(false) {
                match event {
                    ControlEvent::Ready {
                        instance_pid: p, ..
                    } => instance_pid = p,
                    ControlEvent::SetupFailed { message } => {
                        output.extend_from_slice(
                            format!("sandbox setup failed: {message}\n").as_bytes(),
                        );
                        break;
                    }
                    ControlEvent::Exited { pid, code: c, .. } if Some(pid) == instance_pid => {
                        code = c;
                        break;
                    }
                    _ => {}
                }
                if Instant::now() > deadline {
                    timed_out = true;
                    break;
                }
            }
        }
        handle.destroy();
        Ok(JobOutput {
            code,
            output: String::from_utf8_lossy(&output).into_owned(),
            timed_out,
        })
    }
}
