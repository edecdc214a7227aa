//! Sandboxes as the worker makes them, knowing nothing of functions: a cgroup, namespaces and
//! a root from the spawner ([`Sandboxes::create_sandbox`]), nested below the host or within a
//! zygote's namespaces; the handle that attaches mounts, freezes and destroys them; and jobs, one-off
//! programs in a fresh sandbox (compiling the runtime, installing packages).
//!
//! Functions, their code and their environment are the instance layer's (`instance.rs`); this
//! module sees only mounts, limits and processes.

use crate::layout;
use kindling_sandbox::cgroup::{Cgroup, CgroupError, CgroupManager, Limits as CgroupLimits};
use kindling_sandbox::control::{ControlChannel, ControlEvent, ControlRequest};
use kindling_sandbox::net::{NetLease, Network};
use kindling_sandbox::process::Process;
use kindling_sandbox::spawner::Spawner;
use kindling_sandbox::spec::{
    IdMaps, InstanceSpec, MountSpec, Privilege, SandboxSpec, UserNamespace,
};
use kindling_sandbox::stdio::OutputPipes;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Output of a job (an installer, a build) the worker keeps: its last bytes.
const MAX_JOB_OUTPUT: usize = 256 * 1024;
/// Size of a job's /tmp.
const JOB_TMP_BYTES: u64 = 256 * 1024 * 1024;

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
    #[error("networked sandboxes are not available on this worker")]
    NoNetwork,
    #[error("the zygote sandbox is gone")]
    ZygoteSandboxGone,
    #[error("the sandbox's init exited")]
    InitExited,
    #[error("sandbox setup failed: {0}")]
    SetupFailed(String),
    #[error("mounting into the sandbox failed: {0}")]
    MountFailed(String),
    #[error("the sandbox started no instance")]
    NoInstance,
    #[error("purging the sandbox failed: {0}")]
    PurgeFailed(String),
    #[error("forking into the switched sandbox failed: {0}")]
    SwitchFork(String),
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
/// What every sandbox of the worker is made of, set once at start.
pub struct SandboxSetup {
    pub spawner: Spawner,
    pub cgroups: CgroupManager,
    /// The base root filesystem.
    pub rootfs: PathBuf,
    /// The base's interpreter (a path inside the sandbox).
    pub python: String,
    /// Where sandbox roots are assembled on the host.
    pub mountpoint: PathBuf,
    /// The unprivileged host uid and gid function code runs as.
    pub uid: u32,
    pub gid: u32,
    /// Host uid and gid of the root of zygotes' user namespaces.
    pub zygote_uid: u32,
    pub zygote_gid: u32,
    /// RLIMIT_NOFILE of the programs sandboxes run.
    pub max_open_files: u64,
    /// Networks of `network: true` sandboxes (None: networked sandboxes cannot be made).
    pub network: Option<Arc<Network>>,
    /// The resolv.conf bound into networked sandboxes (None: theirs stays the base's).
    pub resolv_conf: Option<PathBuf>,
}

/// The worker's maker of sandboxes and runner of jobs: shared by every instance, zygote and
/// installer.
pub struct Sandboxes {
    pub spawner: Spawner,
    pub cgroups: CgroupManager,
    pub rootfs: PathBuf,
    pub python: String,
    pub mountpoint: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub zygote_uid: u32,
    pub zygote_gid: u32,
    pub max_open_files: u64,
    pub network: Option<Arc<Network>>,
    pub resolv_conf: Option<PathBuf>,
    counter: AtomicU64,
    prefix: String,
}

/// Effective limits of one function (worker defaults overridden by its config, within the
/// operator's bounds): what its sandboxes and invocations are held to.
#[derive(Debug, Clone, PartialEq)]
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

impl Sandboxes {
    pub fn new(setup: SandboxSetup) -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let SandboxSetup {
            spawner,
            cgroups,
            rootfs,
            python,
            mountpoint,
            uid,
            gid,
            zygote_uid,
            zygote_gid,
            max_open_files,
            network,
            resolv_conf,
        } = setup;
        Self {
            spawner,
            cgroups,
            rootfs,
            python,
            mountpoint,
            uid,
            gid,
            zygote_uid,
            zygote_gid,
            max_open_files,
            network,
            resolv_conf,
            counter: AtomicU64::new(0),
            prefix: format!("{:x}", secs & 0xfffff),
        }
    }

    /// A fresh sandbox id: unique for this worker, short enough for a hostname.
    pub fn next_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("sb-{}-{n}", self.prefix)
    }

    /// The interpreter of instances and zygotes and its flags: no `site` (the runtime puts
    /// exactly the packages it should on `sys.path`), no `PYTHON*` variables.
    pub fn interpreter(&self) -> Vec<String> {
        vec![self.python.clone(), "-S".into(), "-E".into()]
    }

    /// The mounts every sandbox has: a `/tmp` of `tmp_bytes`, `/proc` and `/dev`.
    pub fn base_mounts(tmp_bytes: u64) -> [MountSpec; 3] {
        [
            MountSpec::Tmpfs {
                target: layout::TMP.into(),
                size_bytes: tmp_bytes,
            },
            MountSpec::Proc {
                target: layout::PROC.into(),
            },
            MountSpec::Dev {
                target: layout::DEV.into(),
            },
        ]
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
                    .ok_or(StartError::ZygoteSandboxGone)?;
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
            init: Process::from_pidfd(s.pidfd),
            control: s.control,
            cgroup,
            namespaces: HashMap::new(),
            within,
            output: s.output,
            network: None,
        };
        if network {
            // The init builds the root meanwhile; its first instance waits for this.
            match self.connect_network(handle.init.as_fd(), s.pid) {
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
        let network = self.network.as_ref().ok_or(StartError::NoNetwork)?;
        let netns = kindling_sandbox::net::netns_of(pidfd, pid)?;
        Ok(network.connect(netns.as_fd())?)
    }

    /// The bind of the networked sandboxes' resolv.conf.
    pub(crate) fn resolv_conf_mount(&self) -> Option<MountSpec> {
        self.resolv_conf.as_ref().map(|f| MountSpec::Bind {
            source: f.clone(),
            target: layout::RESOLV_CONF.into(),
            writable: false,
        })
    }
}

/// The sandbox under an instance; destroying it kills every process and removes the cgroup.
pub(crate) struct SandboxHandle {
    /// Its init process.
    init: Process,
    control: ControlChannel,
    cgroup: Cgroup,
    /// Descriptors of its namespaces, by name, once its init reported them (sandboxes in a
    /// zygote's user namespace).
    namespaces: HashMap<String, OwnedFd>,
    /// The zygote sandbox whose pid namespace holds this one's.
    within: Option<Arc<SharedSandbox>>,
    /// Read ends of its first instance's output pipes, until that instance takes them.
    output: Option<OutputPipes>,
    /// A networked sandbox's subnet, freed when the sandbox goes.
    network: Option<NetLease>,
}

/// A zygote's sandbox, kept alive by the zygote and by every sandbox made within its
/// namespaces; destroyed (blocking) when the last of them lets go.
pub(crate) struct SharedSandbox {
    sandbox: parking_lot::Mutex<Option<SandboxHandle>>,
    /// How many exist (a gauge of the worker's).
    count: Arc<AtomicUsize>,
}

impl SharedSandbox {
    pub(crate) fn new(sandbox: SandboxHandle, count: &Arc<AtomicUsize>) -> Arc<Self> {
        count.fetch_add(1, Ordering::SeqCst);
        Arc::new(Self {
            sandbox: parking_lot::Mutex::new(Some(sandbox)),
            count: count.clone(),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&SandboxHandle) -> T) -> Option<T> {
        self.sandbox.lock().as_ref().map(f)
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
        let taken = self.sandbox.get_mut().take();
        if let Some(s) = taken {
            s.destroy();
        }
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

impl SandboxHandle {
    /// Kills the sandbox and removes its cgroup. Blocking (waits for the processes to exit).
    pub(crate) fn destroy(self) {
        let _ = self.init.kill();
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
    pub(crate) fn namespace_fds(&self, names: &[&str]) -> Option<Vec<BorrowedFd<'_>>> {
        names
            .iter()
            .map(|n| self.namespaces.get(*n).map(|fd| fd.as_fd()))
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
        let tree = kindling_sandbox::mount::readonly_tree(source)?;
        let req = kindling_sandbox::control::ControlRequest::Mount {
            target: target.into(),
            create,
        };
        self.control.send(&req, &[tree.as_raw_fd()])?;
        loop {
            match self.control.recv::<ControlEvent>(false)? {
                Some((ControlEvent::Mounted { .. }, _)) => return Ok(()),
                Some((ControlEvent::Failed { message }, _)) => {
                    return Err(StartError::MountFailed(message))
                }
                Some(_) => continue,
                None => return Err(StartError::InitExited),
            }
        }
    }

    /// Makes the sandbox clean for another function (`switch`): its init kills every other
    /// process and purges what they could leave (see `kindling_sandbox::purge`), keeping only
    /// `packages` of its package entries (returned: those it kept); then the sandbox moves to a
    /// fresh cgroup `id` with `limits`, so that its memory accounting starts from the next
    /// function's own usage (what the previous one was charged, its page cache included, stays
    /// with the old cgroup, removed in the background).
    pub(crate) fn repurpose(
        &mut self,
        cgroups: &CgroupManager,
        id: &str,
        limits: &CgroupLimits,
        tmp_bytes: u64,
        packages: Vec<String>,
    ) -> Result<Vec<String>, StartError> {
        // An idle instance's channel is nonblocking; requests here wait for their answers.
        self.control.set_blocking()?;
        // Frozen processes take a SIGKILL only once thawed (v1).
        self.cgroup.thaw()?;
        let req = ControlRequest::Purge {
            hostname: id.to_string(),
            tmp_bytes,
            packages_dir: layout::PACKAGES.into(),
            packages,
        };
        self.control.send(&req, &[])?;
        let kept = loop {
            match self.control.recv::<ControlEvent>(false)? {
                Some((ControlEvent::Purged { packages }, _)) => break packages,
                Some((ControlEvent::Failed { message }, _)) => {
                    return Err(StartError::PurgeFailed(message))
                }
                // Exits of the processes it killed, and older events.
                Some(_) => continue,
                None => return Err(StartError::InitExited),
            }
        };
        let fresh = cgroups.create(id, limits)?;
        let moved = self
            .init
            .pid()
            .map_err(StartError::from)
            .and_then(|pid| pid.ok_or(StartError::InitExited))
            .and_then(|pid| Ok(fresh.adopt(pid)?));
        if let Err(e) = moved {
            let _ = fresh.remove();
            return Err(e);
        }
        let old = std::mem::replace(&mut self.cgroup, fresh);
        // An rmdir per hierarchy (a memory cgroup's takes milliseconds): off the start's path.
        // One left behind by a crash meanwhile is removed at the next start, like any other.
        std::thread::spawn(move || {
            if let Err(e) = old.remove() {
                tracing::warn!(
                    cgroup = old.name(),
                    "removing a switched sandbox's cgroup: {e}"
                );
            }
        });
        Ok(kept)
    }

    /// Starts an instance in the live sandbox (its init forks and execs `spec`): the worker's
    /// end of its socket, and the read ends of its output pipes if the spec asks for them.
    pub(crate) fn spawn(
        &self,
        spec: InstanceSpec,
    ) -> Result<(OwnedFd, Option<OutputPipes>), StartError> {
        let (ours, theirs) = kindling_sandbox::channel::pair_with_credentials()?;
        let pipes = if spec.output_pipes {
            Some(OutputPipes::new()?)
        } else {
            None
        };
        let mut fds = vec![theirs.as_raw_fd()];
        if let Some((_, write)) = &pipes {
            fds.extend([write.stdout.as_raw_fd(), write.stderr.as_raw_fd()]);
        }
        self.control
            .send(&ControlRequest::Spawn { instance: spec }, &fds)?;
        // The instance holds the only other ends.
        drop(theirs);
        let read = pipes.map(|(read, _write)| read);
        loop {
            match self.control.recv::<ControlEvent>(false)? {
                Some((ControlEvent::Spawned { .. }, _)) => return Ok((ours.into(), read)),
                Some((ControlEvent::Failed { message }, _)) => {
                    return Err(StartError::SetupFailed(message))
                }
                Some(_) => continue,
                None => return Err(StartError::InitExited),
            }
        }
    }

    /// Whether the sandbox was made within a zygote's namespaces.
    pub(crate) fn is_within_zygote(&self) -> bool {
        self.within.is_some()
    }

    /// Whether the sandbox's pid namespace lies below that of the zygote sandbox `zygote` (it
    /// was made within it, or within a zygote made within it): only then can that zygote's
    /// children be born in it.
    pub(crate) fn lies_within(&self, zygote: &Arc<SharedSandbox>) -> bool {
        let mut current = self.within.clone();
        while let Some(s) = current {
            if Arc::ptr_eq(&s, zygote) {
                return true;
            }
            current = s.with(|h| h.within.clone()).flatten();
        }
        false
    }

    /// Sets the cgroup's limits (a spare sandbox or a seed's taking on a function).
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
                    return Err(StartError::SetupFailed(message))
                }
                Some(_) => continue,
                None => return Err(StartError::InitExited),
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

    /// Whether the kernel killed a process of the sandbox for want of memory.
    pub(crate) fn oom_killed(&self) -> bool {
        self.cgroup.oom_kills().unwrap_or(0) > 0
    }

    /// Makes the init's control channel non-blocking (an instance's sandbox is polled, never
    /// waited on).
    pub(crate) fn set_nonblocking(&self) -> std::io::Result<()> {
        self.control.set_nonblocking()
    }

    /// Freezes every process of the sandbox (cgroup freezer).
    pub(crate) fn freeze(&self) -> Result<bool, CgroupError> {
        self.cgroup.freeze()
    }

    /// Thaws the sandbox's processes.
    pub(crate) fn thaw(&self) -> Result<bool, CgroupError> {
        self.cgroup.thaw()
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

impl Sandboxes {
    /// Runs a job to completion in a fresh sandbox on the base (blocking).
    pub fn run_job(&self, job: Job) -> Result<JobOutput, StartError> {
        use std::io::Read;
        let id = self.next_id();
        let mut mounts = Vec::from(Self::base_mounts(JOB_TMP_BYTES));
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
