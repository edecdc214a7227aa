//! Instances as the worker sees them: a sandbox (init, cgroup, control channel) with one
//! running interpreter that serves one function version, and the framed protocol to invoke it.
//!
//! Creating one is a cold start: a cgroup, a sandbox from the spawner, and a fresh interpreter
//! running the runtime. The first request is written at once; the kernel buffers it until the
//! interpreter has loaded the function and reads it.

use crate::registry::FunctionVersion;
use kindling_sandbox::cgroup::{Cgroup, CgroupManager, Limits as CgroupLimits};
use kindling_sandbox::control::{ControlChannel, ControlEvent};
use kindling_sandbox::spawner::Spawner;
use kindling_sandbox::spec::{InstanceSpec, MountSpec, SandboxSpec};
use kindling_sandbox::sys;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// The object storage socket's directory, bound read-only into function sandboxes (None:
    /// storage is off).
    pub storage_socket_dir: Option<PathBuf>,
    pub mountpoint: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub max_open_files: u64,
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
            memory_bytes: Some(self.memory_mb * 1024 * 1024),
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
        uid: u32,
        gid: u32,
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
            storage_socket_dir: None,
            mountpoint,
            uid,
            gid,
            max_open_files,
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
    /// its first instance. Returns the sandbox and the worker's end of the instance socket.
    pub(crate) fn create_sandbox(
        &self,
        id: &str,
        mounts: Vec<MountSpec>,
        network: bool,
        pid_namespace: bool,
        limits: &CgroupLimits,
        instance: Option<InstanceSpec>,
    ) -> Result<(SandboxHandle, Option<OwnedFd>), StartError> {
        let cgroup = self.cgroups.create(id, limits)?;
        let spec = SandboxSpec {
            id: id.to_string(),
            rootfs: self.rootfs.clone(),
            mountpoint: self.mountpoint.clone(),
            mounts,
            network,
            pid_namespace,
            cgroup_procs: cgroup.procs_files(),
            instance,
        };
        match self.spawner.spawn(&spec) {
            Ok(s) => Ok((
                SandboxHandle {
                    pidfd: s.pidfd,
                    control: s.control,
                    cgroup,
                },
                s.instance,
            )),
            Err(e) => {
                let _ = cgroup.remove();
                Err(e.into())
            }
        }
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
            MountSpec::Bind {
                source: self.packages_dir.clone(),
                target: "/packages".into(),
                writable: false,
            },
            MountSpec::Tmpfs {
                target: "/tmp".into(),
                size_bytes: limits.tmp_mb * 1024 * 1024,
            },
            MountSpec::Proc {
                target: "/proc".into(),
            },
            MountSpec::Dev {
                target: "/dev".into(),
            },
        ];
        mounts.extend(self.storage_mount());
        mounts
    }

    /// The storage socket's directory at /kindling/storage-socket (after the /kindling bind,
    /// whose runtime directory provides the mount point).
    pub(crate) fn storage_mount(&self) -> Option<MountSpec> {
        self.storage_socket_dir.as_ref().map(|dir| MountSpec::Bind {
            source: dir.clone(),
            target: crate::storage::SANDBOX_SOCKET_DIR.into(),
            writable: false,
        })
    }

    /// Cold start: a new sandbox running a fresh interpreter for `function`.
    pub fn cold_start(
        &self,
        function: &Arc<FunctionVersion>,
        limits: &FunctionLimits,
    ) -> Result<Instance, StartError> {
        let id = self.next_id();
        let (sandbox, sock) = self.create_sandbox(
            &id,
            self.function_mounts(function, limits),
            limits.network,
            true,
            &limits.cgroup(),
            Some(self.instance_spec(function, &id)),
        )?;
        let sock =
            sock.ok_or_else(|| StartError::Io(std::io::Error::other("no instance socket")))?;
        Instance::new(id, function, limits, sandbox, sock)
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
            privileged: false,
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
    }

    /// The init's pidfd: `setns` through it enters all of the sandbox's namespaces.
    pub(crate) fn pidfd_raw(&self) -> std::os::fd::RawFd {
        self.pidfd.as_raw_fd()
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
    /// of the directory's mount is made here and attached by the sandbox's init.
    pub(crate) fn attach(&self, source: &Path, target: &str) -> Result<(), StartError> {
        let tree = sys::open_tree_clone(source, false)?;
        sys::mount_tree_readonly(tree.as_raw_fd())?;
        let req = kindling_sandbox::control::ControlRequest::Mount {
            target: target.into(),
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

    /// Blocks until the init reports its root filesystem ready (or its setup failure).
    pub(crate) fn wait_ready(&self) -> Result<(), StartError> {
        loop {
            match self.control.recv::<ControlEvent>(false)? {
                Some((ControlEvent::Ready { .. }, _)) => return Ok(()),
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
    /// Whether its sandbox's cgroup is frozen (while idle).
    frozen: bool,
}

impl Instance {
    /// Wraps a sandbox whose instance talks on `sock`.
    pub(crate) fn new(
        id: String,
        function: &Arc<FunctionVersion>,
        limits: &FunctionLimits,
        sandbox: SandboxHandle,
        sock: OwnedFd,
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
        let result = tokio::time::timeout(timeout, self.exchange(request_id, event)).await;
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
fn parse_reply(payload: Vec<u8>) -> Result<Reply, InvokeError> {
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
        mounts.extend(job.mounts);
        let instance = InstanceSpec {
            argv: job.argv,
            env: job.env,
            cwd: job.cwd,
            uid: job.uid,
            gid: job.gid,
            max_open_files: self.max_open_files,
            stdio_to_socket: true,
            privileged: false,
        };
        let (handle, sock) =
            self.create_sandbox(&id, mounts, job.network, true, &job.limits, Some(instance))?;
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
                    Ok(n) => output.extend_from_slice(&buf[..n]),
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
                    ControlEvent::Ready { instance_pid: p } => instance_pid = p,
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
