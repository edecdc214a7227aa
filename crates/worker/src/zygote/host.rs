//! The mechanism under the zygote policy, behind [`ZygoteHost`]: starting zygote processes,
//! making sandboxes within a zygote's namespaces, forking children into them and turning a child
//! into an instance. [`SandboxHost`] is the worker's, on real sandboxes and processes; the
//! policy's unit tests (`zygote/tests.rs`) use a fake.

use super::process::{read_exact_with_pid, read_reply, Fork, Reply, Request, ZygoteProc};
use super::{ForkError, PackageSet, Zygote, FORK_TIMEOUT, READY_TIMEOUT};
use crate::frame;
use crate::instance::{Instance, Instances};
use crate::layout;
use crate::registry::FunctionVersion;
use crate::sandboxes::{FunctionLimits, Nesting, SandboxHandle, Sandboxes, SharedSandbox};
use kindling_sandbox::cgroup::Limits as CgroupLimits;
use kindling_sandbox::channel;
use kindling_sandbox::process::Process;
use kindling_sandbox::spec::{InstanceSpec, MountSpec, Privilege};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A running zygote's process, as the policy uses it.
pub trait ZygoteProcess: Send + Sync + 'static {
    /// Has the zygote import these submodules of its packages.
    fn import(&self, modules: &[String]) -> Result<(), ForkError>;
    /// Whether the process still exists.
    fn is_alive(&self) -> bool;
    /// Kills it.
    fn kill(&self);
    /// Pauses it, unless a request is in flight (its next request resumes it).
    fn pause_if_idle(&self);
    /// Whether it is paused.
    fn is_paused(&self) -> bool;
    /// Memory its sandbox is charged.
    fn memory_usage(&self) -> Option<u64>;
}

/// A zygote that started.
pub struct Started<P> {
    pub process: P,
    /// Its pid on the host.
    pub pid: i32,
    /// Modules it could not preload.
    pub failed_imports: Vec<String>,
}

/// What the zygote policy needs made: zygotes, sandboxes within them, children and instances.
/// Every call may block.
pub trait ZygoteHost: Send + Sync + 'static {
    type Process: ZygoteProcess;
    /// A sandbox made within a zygote's namespaces, its root complete (a spare sandbox, or one
    /// made for a function).
    type Sandbox: Send + 'static;
    /// A child forked into such a sandbox, waiting for its function.
    type Child: Send + 'static;
    /// What a child becomes.
    type Instance: Send + 'static;

    /// A fresh id for a zygote.
    fn zygote_id(&self) -> String;
    /// The importable top-level modules of package `key` of the store.
    fn top_level_modules(&self, key: &str) -> Vec<String>;
    /// Starts the zygote `id` for `set`: a root, or forked from `parent` (whose packages it
    /// inherits); it imports `modules` (top-level, of the packages it adds) and `submodules`.
    fn start_zygote(
        &self,
        id: &str,
        set: &PackageSet,
        modules: &[String],
        submodules: &[String],
        parent: Option<&Zygote<Self::Process>>,
    ) -> Result<Started<Self::Process>, ForkError>;
    /// A spare sandbox within `zygote`'s namespaces: no function, no code, its packages.
    fn spare_sandbox(&self, zygote: &Zygote<Self::Process>) -> Result<Self::Sandbox, ForkError>;
    /// A sandbox within `zygote`'s namespaces laid out for `function`.
    fn function_sandbox(
        &self,
        zygote: &Zygote<Self::Process>,
        function: &Arc<FunctionVersion>,
        limits: &FunctionLimits,
    ) -> Result<Self::Sandbox, ForkError>;
    /// Forks a child of `zygote` into `sandbox`, writing `write_ahead` pages ahead of need.
    /// Destroys the sandbox on failure.
    fn fork_child(
        &self,
        zygote: &Zygote<Self::Process>,
        sandbox: Self::Sandbox,
        write_ahead: &[(u64, u64)],
    ) -> Result<Self::Child, ForkError>;
    /// Waits until the child is entered and unprivileged; its host pid.
    fn wait_ready(&self, child: &mut Self::Child) -> Result<i32, ForkError>;
    /// Makes a child of the zygote holding `set` an instance of `function` (in a clean
    /// sandbox, a seed's or a spare, when `clean`); the instance and the child's host pid.
    /// Destroys the child on failure.
    fn assign(
        &self,
        child: Self::Child,
        set: &PackageSet,
        function: &Arc<FunctionVersion>,
        limits: &FunctionLimits,
        clean: bool,
    ) -> Result<(Self::Instance, i32), ForkError>;
    fn destroy_sandbox(&self, sandbox: Self::Sandbox);
    fn destroy_child(&self, child: Self::Child);
    /// Memory charged to a spare sandbox, or to a child's.
    fn sandbox_memory(&self, sandbox: &Self::Sandbox) -> Option<u64>;
    fn child_memory(&self, child: &Self::Child) -> Option<u64>;
    /// The pages process `pid` wrote since it was forked (at most `max`).
    fn written_pages(&self, pid: i32, max: usize) -> std::io::Result<Vec<u64>>;
    /// MemAvailable, in MB.
    fn available_mb(&self) -> Option<u64>;
    /// Zygote sandboxes that exist, including those kept after their zygote died for the
    /// sandboxes made within them.
    fn zygote_sandboxes(&self) -> usize;
}

/// A child forked into a sandbox within a zygote's namespaces, waiting on `channel` for the
/// function it becomes.
pub struct Child {
    id: String,
    sandbox: SandboxHandle,
    channel: UnixStream,
    /// The child's pid on the host, from the credentials of its `ready` frame, once read.
    pid: Option<i32>,
}

/// A sandbox made within a zygote's namespaces, its root complete: a spare sandbox, or one
/// made for a function.
pub struct Within {
    id: String,
    sandbox: SandboxHandle,
}

impl Within {
    /// A sandbox made within a zygote's namespaces, under id `id` (a switched one).
    pub(crate) fn new(id: String, sandbox: SandboxHandle) -> Self {
        Self { id, sandbox }
    }
}

impl super::Zygotes<SandboxHost> {
    /// Whether `zygote` can fork into `instance`'s sandbox (see [`SandboxHandle::lies_within`]).
    pub(crate) fn reaches(&self, zygote: &Zygote<ZygoteProc>, instance: &Instance) -> bool {
        instance
            .sandbox()
            .is_some_and(|s| s.lies_within(&zygote.process.sandbox))
    }
}

/// The payload of the frame a forked child sends once it is entered and unprivileged.
const READY: &[u8] = b"ready";

/// The worker's zygote mechanism: zygotes and children in real sandboxes.
pub struct SandboxHost {
    instances: Arc<Instances>,
    seccomp_hex: String,
    max_open_files: u64,
    /// The ids function code runs as inside a zygote's user namespace.
    uid: u32,
    gid: u32,
    /// Cgroup memory limit of each zygote, in MB.
    memory_mb: u64,
    /// `/tmp` size of spare sandboxes.
    spare_tmp_mb: u64,
    /// Zygote sandboxes that exist.
    sandboxes: Arc<AtomicUsize>,
}

impl SandboxHost {
    pub fn new(
        instances: Arc<Instances>,
        (uid, gid): (u32, u32),
        max_open_files: u64,
        memory_mb: u64,
        spare_tmp_mb: u64,
    ) -> Self {
        Self {
            instances,
            seccomp_hex: hex::encode(kindling_sandbox::seccomp::instance_filter_bytes()),
            max_open_files,
            uid,
            gid,
            memory_mb,
            spare_tmp_mb,
            sandboxes: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The mounts of a zygote's sandbox: runtime, its packages, /tmp, /proc, /dev.
    fn mounts(&self, set: &PackageSet) -> Vec<MountSpec> {
        let mut mounts = vec![
            self.instances.runtime_mount(),
            self.instances.packages_mount(set.iter().cloned()),
        ];
        mounts.extend(Sandboxes::base_mounts(16 << 20));
        mounts
    }

    fn cgroup_limits(&self) -> CgroupLimits {
        CgroupLimits {
            memory_bytes: Some(self.memory_mb << 20),
            cpu_cores: Some(2.0),
            pids: Some(64),
        }
    }

    /// Spare sandboxes' mounts: a function's mounts without its code (attached on use), with
    /// the zygote's packages (the function's others are attached on use too).
    fn spare_mounts(&self, set: &PackageSet) -> Vec<MountSpec> {
        let mut mounts = self.mounts(set);
        for m in &mut mounts {
            if let MountSpec::Tmpfs { size_bytes, .. } = m {
                *size_bytes = self.spare_tmp_mb << 20;
            }
        }
        // Function sandboxes reach object storage and NoSQL (see Instances::function_mounts).
        mounts.extend(self.instances.service_mounts());
        mounts
    }

    /// A sandbox within `zygote`'s namespaces with `mounts`, its root complete (a child enters
    /// its mount namespace).
    fn sandbox_within(
        &self,
        zygote: &Zygote<ZygoteProc>,
        mounts: Vec<MountSpec>,
        network: bool,
        limits: &CgroupLimits,
    ) -> Result<Within, ForkError> {
        let id = self.instances.sandboxes.next_id();
        let (mut sandbox, _) = self.instances.sandboxes.create_sandbox(
            &id,
            mounts,
            network,
            Nesting::Within(&zygote.process.sandbox),
            limits,
            None,
        )?;
        match sandbox.wait_ready() {
            Ok(_) => Ok(Within { id, sandbox }),
            Err(e) => {
                sandbox.destroy();
                Err(e.into())
            }
        }
    }

    /// Asks `zygote` to fork a child into `sandbox` (made within the zygote's namespaces, its
    /// root complete): the child gets the sandbox's namespaces and cgroup and the returned
    /// socket's other end, which carries its credentials (so its host pid) with every frame.
    fn fork_request(
        &self,
        zygote: &ZygoteProc,
        sandbox: &SandboxHandle,
        req: &Request<'_>,
    ) -> Result<UnixStream, ForkError> {
        let namespaces = sandbox
            .namespace_fds(&["pid", "mnt", "ipc", "uts", "net"])
            .ok_or_else(|| ForkError::NotReady("the sandbox exported no namespaces".into()))?;
        let (ours, theirs) = channel::pair_with_credentials()?;
        let procs = open_procs(&sandbox.cgroup_procs())?;
        let mut fds = vec![theirs.as_fd()];
        fds.extend(namespaces);
        fds.extend(procs.iter().map(|f| f.as_fd()));
        zygote.call(req, &fds)?;
        Ok(ours)
    }

    /// Starts a root zygote: a new sandbox with its own user namespace, running the runtime's
    /// zygote loop.
    fn start_root(
        &self,
        id: &str,
        set: &PackageSet,
        env: Vec<(String, String)>,
    ) -> Result<
        (
            SandboxHandle,
            UnixStream,
            Reply,
            i32,
            Option<crate::logs::InstanceOutput>,
        ),
        ForkError,
    > {
        let spec = InstanceSpec {
            argv: [
                self.instances.sandboxes.interpreter(),
                vec![
                    "-c".into(),
                    format!("{}; kindling_runtime.zygote_main()", layout::RUNTIME_IMPORT),
                ],
            ]
            .concat(),
            env,
            cwd: "/".into(),
            // The root of the zygote's own user namespace.
            uid: 0,
            gid: 0,
            max_open_files: self.max_open_files,
            stdio_to_socket: false,
            output_pipes: self.instances.logs_instances(),
            privilege: Privilege::Zygote,
        };
        let (mut sandbox, sock) = self.instances.sandboxes.create_sandbox(
            id,
            self.mounts(set),
            false,
            Nesting::Zygote,
            &self.cgroup_limits(),
            Some(spec),
        )?;
        let output = sandbox.take_output();
        let started = sandbox
            .wait_ready()
            .map_err(ForkError::from)
            .and_then(|pidfd| {
                let pidfd = pidfd.ok_or_else(|| ForkError::NotReady("no zygote pidfd".into()))?;
                let pid = Process::from_pidfd(pidfd)
                    .pid()?
                    .ok_or_else(|| ForkError::NotReady("the zygote exited".into()))?;
                let sock = sock.ok_or_else(|| ForkError::NotReady("no zygote socket".into()))?;
                let mut chan = UnixStream::from(sock);
                let ready = read_reply(&mut chan, READY_TIMEOUT, None).map_err(|e| {
                    ForkError::NotReady(format!(
                        "{e}; {}",
                        sandbox.setup_error().unwrap_or_default()
                    ))
                })?;
                let output = self.instances.collect_zygote_output(id, output)?;
                Ok((chan, ready, pid, output))
            });
        match started {
            Ok((chan, ready, pid, output)) => Ok((sandbox, chan, ready, pid, output)),
            Err(e) => {
                sandbox.destroy();
                Err(e)
            }
        }
    }
}

impl ZygoteHost for SandboxHost {
    type Process = ZygoteProc;
    type Sandbox = Within;
    type Child = Child;
    type Instance = Instance;

    fn zygote_id(&self) -> String {
        format!("zy-{}", self.instances.sandboxes.next_id())
    }

    fn top_level_modules(&self, key: &str) -> Vec<String> {
        super::learning::top_level_modules(&self.instances.packages_dir.join(key).join("files"))
    }

    fn start_zygote(
        &self,
        id: &str,
        set: &PackageSet,
        modules: &[String],
        submodules: &[String],
        parent: Option<&Zygote<ZygoteProc>>,
    ) -> Result<Started<ZygoteProc>, ForkError> {
        let paths: Vec<String> = set.iter().map(|k| layout::package_files(k)).collect();
        let sites: Vec<String> = set
            .iter()
            .filter(|k| {
                super::learning::has_pth(&self.instances.packages_dir.join(k).join("files"))
            })
            .map(|k| layout::package_files(k))
            .collect();
        let (sandbox, channel, ready, pid, output) = match parent {
            None => self.start_root(id, set, zygote_env(&paths, &sites, modules))?,
            Some(p) => {
                let Within { sandbox, .. } =
                    self.sandbox_within(p, self.mounts(set), false, &self.cgroup_limits())?;
                let req = Request::Fork(Fork::Zygote {
                    sandbox: id,
                    paths: &paths,
                    sites: &sites,
                    modules,
                    submodules,
                });
                let forked = self
                    .fork_request(&p.process, &sandbox, &req)
                    .and_then(|mut chan| {
                        let mut head = [0u8; frame::HEAD_BYTES];
                        let pid = read_exact_with_pid(&chan, &mut head)?;
                        let ready = read_reply(&mut chan, READY_TIMEOUT, Some(head))
                            .map_err(|e| ForkError::NotReady(e.to_string()))?;
                        Ok((chan, ready, pid))
                    });
                match forked {
                    Ok((chan, ready, pid)) => (sandbox, chan, ready, pid, None),
                    Err(e) => {
                        sandbox.destroy();
                        return Err(e);
                    }
                }
            }
        };
        let failed_imports = match ready {
            Reply::Ready { failed, .. } => failed,
            other => {
                sandbox.destroy();
                return Err(ForkError::NotReady(format!(
                    "the zygote's first reply is not `ready`: {other:?}"
                )));
            }
        };
        if !failed_imports.is_empty() {
            tracing::debug!(zygote = %id, ?failed_imports, "modules a zygote could not preload");
        }
        let process = match Process::open(pid) {
            Ok(p) => p,
            Err(e) => {
                sandbox.destroy();
                return Err(e.into());
            }
        };
        Ok(Started {
            process: ZygoteProc::new(
                process,
                channel,
                SharedSandbox::new(sandbox, &self.sandboxes),
                output,
            ),
            pid,
            failed_imports,
        })
    }

    fn spare_sandbox(&self, zygote: &Zygote<ZygoteProc>) -> Result<Within, ForkError> {
        self.sandbox_within(
            zygote,
            self.spare_mounts(&zygote.packages),
            false,
            &self.cgroup_limits(),
        )
    }

    fn function_sandbox(
        &self,
        zygote: &Zygote<ZygoteProc>,
        function: &Arc<FunctionVersion>,
        limits: &FunctionLimits,
    ) -> Result<Within, ForkError> {
        self.sandbox_within(
            zygote,
            self.instances.function_mounts(function, limits),
            limits.network,
            &limits.cgroup(),
        )
    }

    fn fork_child(
        &self,
        zygote: &Zygote<ZygoteProc>,
        Within { id, sandbox }: Within,
        write_ahead: &[(u64, u64)],
    ) -> Result<Child, ForkError> {
        let req = Request::Fork(Fork::Instance {
            sandbox: &id,
            uid: self.uid,
            gid: self.gid,
            nofile: self.max_open_files,
            seccomp: &self.seccomp_hex,
            write_ahead,
        });
        match self.fork_request(&zygote.process, &sandbox, &req) {
            Ok(channel) => Ok(Child {
                id,
                sandbox,
                channel,
                pid: None,
            }),
            Err(e) => {
                sandbox.destroy();
                Err(e)
            }
        }
    }

    fn wait_ready(&self, child: &mut Child) -> Result<i32, ForkError> {
        if let Some(pid) = child.pid {
            return Ok(pid);
        }
        child.channel.set_read_timeout(Some(FORK_TIMEOUT))?;
        let expected = frame::encode(READY)?;
        let mut got = vec![0u8; expected.len()];
        let sender = read_exact_with_pid(&child.channel, &mut got);
        child.channel.set_read_timeout(None)?;
        match sender {
            Ok(pid) if got == expected => {
                child.pid = Some(pid);
                Ok(pid)
            }
            Ok(_) => Err(ForkError::Zygote(
                "forked child sent a malformed ready frame".into(),
            )),
            Err(e) => Err(ForkError::Zygote(format!(
                "forked child did not get ready ({e}); {}",
                child
                    .sandbox
                    .setup_error()
                    .unwrap_or_else(|| "see the worker log".into())
            ))),
        }
    }

    /// In a clean sandbox, sets the function's limits and attaches its code and the packages
    /// of its closure the zygote lacks; waits for the child's setup, records the sandbox's
    /// function, then sends the child the function's environment, upon which it imports the
    /// handler. The write ends of its output pipes travel with the first bytes of that frame
    /// (SCM_RIGHTS), so the function writes to its own log from its first line on.
    fn assign(
        &self,
        mut child: Child,
        set: &PackageSet,
        function: &Arc<FunctionVersion>,
        limits: &FunctionLimits,
        clean: bool,
    ) -> Result<(Instance, i32), ForkError> {
        let assignment = self.instances.assign(&child.id, function);
        let result = (|| {
            if clean {
                child.sandbox.set_limits(&limits.cgroup())?;
                child
                    .sandbox
                    .attach(&function.dir, layout::HANDLER, false)?;
                for key in function.lock.packages.iter().map(|p| p.key()) {
                    if !set.contains(&key) {
                        child.sandbox.attach(
                            &self.instances.packages_dir.join(&key),
                            &layout::package_dir(&key),
                            true,
                        )?;
                    }
                }
            }
            let pid = self.wait_ready(&mut child)?;
            let env: serde_json::Map<String, serde_json::Value> = self
                .instances
                .instance_env(function, &child.id)
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
            let body = serde_json::to_vec(&env).map_err(std::io::Error::other)?;
            let head = frame::head(body.len())?;
            let pipes = if self.instances.logs_instances() {
                let (read, write) = kindling_sandbox::stdio::OutputPipes::new()?;
                let fds = [write.stdout.as_fd(), write.stderr.as_fd()];
                channel::send_with_fds(&child.channel, &head, &fds)?;
                // Ours close here: the instance holds the only write ends.
                drop(write);
                Some(read)
            } else {
                child.channel.write_all(&head)?;
                None
            };
            child.channel.write_all(&body)?;
            Ok::<_, ForkError>((
                pid,
                self.instances.collect_output(function, &child.id, pipes)?,
            ))
        })();
        match result {
            Ok((pid, output)) => {
                let Child {
                    id,
                    sandbox,
                    channel,
                    ..
                } = child;
                let instance = Instance::new(
                    id,
                    function,
                    limits,
                    sandbox,
                    channel.into(),
                    assignment,
                    output,
                )?;
                Ok((instance, pid))
            }
            Err(e) => {
                child.sandbox.destroy();
                Err(e)
            }
        }
    }

    fn destroy_sandbox(&self, within: Within) {
        within.sandbox.destroy();
    }

    fn destroy_child(&self, child: Child) {
        child.sandbox.destroy();
    }

    fn sandbox_memory(&self, within: &Within) -> Option<u64> {
        within.sandbox.memory_usage()
    }

    fn child_memory(&self, child: &Child) -> Option<u64> {
        child.sandbox.memory_usage()
    }

    fn written_pages(&self, pid: i32, max: usize) -> std::io::Result<Vec<u64>> {
        kindling_sandbox::working_set::written_pages(pid, max)
    }

    fn available_mb(&self) -> Option<u64> {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
        line.split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|kb| kb / 1024)
    }

    fn zygote_sandboxes(&self) -> usize {
        self.sandboxes.load(Ordering::SeqCst)
    }
}

fn zygote_env(paths: &[String], sites: &[String], modules: &[String]) -> Vec<(String, String)> {
    [
        ("PATH", layout::PATH.to_string()),
        ("HOME", layout::TMP.to_string()),
        ("LANG", "C.UTF-8".to_string()),
        ("KINDLING_PATH", paths.join(":")),
        ("KINDLING_SITE", sites.join(":")),
        ("KINDLING_PRELOAD", modules.join(",")),
        // Thread pools started at import would be lost in forked children.
        ("OPENBLAS_NUM_THREADS", "1".to_string()),
        ("OMP_NUM_THREADS", "1".to_string()),
        ("MKL_NUM_THREADS", "1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Opens a sandbox's `cgroup.procs` files for writing, so a forked child can join the cgroup
/// by writing "0" into them from inside its new mount namespace.
fn open_procs(files: &[PathBuf]) -> std::io::Result<Vec<OwnedFd>> {
    files
        .iter()
        .map(|f| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(f)
                .map(OwnedFd::from)
        })
        .collect()
}
