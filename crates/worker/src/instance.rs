//! Instances as the worker sees them: a sandbox with one running interpreter that serves one
//! function version, the framed protocol to invoke it, and [`Instances`], which lays out a
//! function's sandbox (its code, the runtime, its packages, object storage, its environment)
//! on the sandboxes of [`crate::sandboxes`].
//!
//! Creating one is a cold start: a cgroup, a sandbox from the spawner, and a fresh interpreter
//! running the runtime. The first request is written at once; the kernel buffers it until the
//! interpreter has loaded the function and reads it.
//!
//! The protocol (frames of [`crate::frame`]): a request is `<request id>\n<input>`, the input an
//! event (JSON) or, for a web function, an [`HttpRequest`] ([`HttpRequest::input`]). A reply is
//! `ok <ms>\n<JSON>`, `error <ms>\n<traceback>`, or a web function's
//! `http <ms> <status> <header bytes>\n<headers JSON><body>`. Replies are bounded by
//! [`MAX_RESPONSE`]: web responses are buffered whole, never streamed.

use crate::frame::{self, FrameError};
use crate::layout;
use crate::logs::{InstanceOutput, Logs};
use crate::registry::FunctionVersion;
use crate::sandboxes::{
    FunctionLimits, Nesting, SandboxHandle, Sandboxes, StartError, USERNS_INSTANCE_ID, ZYGOTE_LOG,
};
use crate::tenants::{Assignment, Assignments};
use hyper::body::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::StatusCode;
use kindling_sandbox::cgroup::Limits as CgroupLimits;
use kindling_sandbox::spec::{InstanceSpec, MountSpec, Privilege};
use kindling_sandbox::stdio::OutputPipes;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// Largest response an instance may send (the runtime's `MAX_RESPONSE`, which refuses larger
/// ones with an error reply).
pub const MAX_RESPONSE: usize = 64 * 1024 * 1024;
/// Inputs larger than this are written after their frame's head rather than copied into it.
const COPY_INPUT_BELOW: usize = 64 * 1024;
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
    /// A web function's response cannot be sent as HTTP (its status or a header).
    #[error("the function's response is not valid HTTP: {0}")]
    Response(String),
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
        !matches!(self, InvokeError::Handler(_) | InvokeError::Response(_))
    }
}

/// What the worker needs to make instances of functions: the sandboxes, and what a function's
/// sandbox shows besides its code.
pub struct Instances {
    pub sandboxes: Arc<Sandboxes>,
    /// The runtime directory, bound read-only at /kindling.
    pub runtime_dir: PathBuf,
    /// The package store, bound read-only at /packages.
    pub packages_dir: PathBuf,
    /// The object storage socket, bound read-only into function sandboxes (None: storage is
    /// off).
    pub storage_socket: Option<PathBuf>,
    /// The NoSQL socket, bound read-only into function sandboxes (None: NoSQL is off).
    pub nosql_socket: Option<PathBuf>,
    /// Which function each sandbox serves (object storage checks its callers against it).
    pub assignments: Arc<Assignments>,
    /// Where instances' output goes (None: they inherit the worker's).
    pub logs: Option<Arc<Logs>>,
}

impl Instances {
    /// The mounts of a function's sandbox: its code, the runtime, the package store, /tmp,
    /// /proc, /dev and the sockets of object storage and NoSQL.
    pub(crate) fn function_mounts(
        &self,
        function: &FunctionVersion,
        limits: &FunctionLimits,
    ) -> Vec<MountSpec> {
        let mut mounts = vec![
            MountSpec::Bind {
                source: function.dir.clone(),
                target: layout::HANDLER.into(),
                writable: false,
            },
            self.runtime_mount(),
            self.packages_mount(function.lock.packages.iter().map(|p| p.key())),
        ];
        mounts.extend(Sandboxes::base_mounts(
            limits.tmp_mb.saturating_mul(1024 * 1024),
        ));
        mounts.extend(self.service_mounts());
        if limits.network {
            mounts.extend(self.sandboxes.resolv_conf_mount());
        }
        mounts
    }

    /// The runtime directory at /kindling, read-only.
    pub(crate) fn runtime_mount(&self) -> MountSpec {
        MountSpec::Bind {
            source: self.runtime_dir.clone(),
            target: layout::RUNTIME.into(),
            writable: false,
        }
    }

    /// `/packages` showing only `keys` of the package store (a function's closure, or a
    /// zygote's package set).
    pub(crate) fn packages_mount(&self, keys: impl IntoIterator<Item = String>) -> MountSpec {
        MountSpec::Packages {
            store: self.packages_dir.clone(),
            target: layout::PACKAGES.into(),
            keys: keys.into_iter().collect(),
        }
    }

    /// The sockets of the services function code calls, object storage at
    /// /kindling/storage-socket/storage.sock and NoSQL at /kindling/nosql-socket/nosql.sock
    /// (after the /kindling bind, whose runtime directory provides the mount points): each socket
    /// alone, not the root-only directory holding it on the host.
    pub(crate) fn service_mounts(&self) -> Vec<MountSpec> {
        [
            (&self.storage_socket, layout::STORAGE_SOCKET),
            (&self.nosql_socket, layout::NOSQL_SOCKET),
        ]
        .into_iter()
        .filter_map(|(socket, target)| {
            socket.as_ref().map(|socket| MountSpec::Bind {
                source: socket.clone(),
                target: target.into(),
                writable: false,
            })
        })
        .collect()
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
        let id = self.sandboxes.next_id();
        let assignment = self.assign(&id, function);
        let (mut sandbox, sock) = self.sandboxes.create_sandbox(
            &id,
            self.function_mounts(function, limits),
            limits.network,
            Nesting::Host,
            &limits.cgroup(),
            Some(self.instance_spec(function, &id)),
        )?;
        let output = sandbox.take_output();
        let started = sock
            .ok_or(StartError::NoInstance)
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

    /// The sandbox of `previous`, an idle instance of another function, made clean for
    /// `function` under a fresh id (see [`SandboxHandle::repurpose`]: its processes killed, its
    /// writable state purged, a fresh cgroup with this function's limits, a fresh hostname),
    /// keeping the entries of its package closure already there (returned). The caller keeps
    /// the network setting (a sandbox's network namespace stays) and checks that the sandbox's
    /// usage fits this function's memory limit. Destroys the sandbox on failure.
    pub(crate) fn repurpose(
        &self,
        previous: Instance,
        function: &FunctionVersion,
        limits: &FunctionLimits,
    ) -> Result<(String, SandboxHandle, Vec<String>), StartError> {
        let mut sandbox = previous.into_sandbox().ok_or(StartError::InitExited)?;
        let id = self.sandboxes.next_id();
        let keys: Vec<String> = function.lock.packages.iter().map(|p| p.key()).collect();
        match sandbox.repurpose(
            &self.sandboxes.cgroups,
            &id,
            &limits.cgroup(),
            limits.tmp_mb.saturating_mul(1024 * 1024),
            keys,
        ) {
            Ok(kept) => Ok((id, sandbox, kept)),
            Err(e) => {
                sandbox.destroy();
                Err(e)
            }
        }
    }

    /// Switch start without a zygote: `function`'s code and the rest of its package closure
    /// attached to a sandbox made clean for it ([`Instances::repurpose`]), then a fresh
    /// interpreter started in it by the sandbox's init.
    pub(crate) fn exec_in(
        &self,
        (id, sandbox, kept): (String, SandboxHandle, Vec<String>),
        function: &Arc<FunctionVersion>,
        limits: &FunctionLimits,
    ) -> Result<Instance, StartError> {
        let assignment = self.assign(&id, function);
        let started = (|| {
            sandbox.attach(&function.dir, layout::HANDLER, false)?;
            for key in function.lock.packages.iter().map(|p| p.key()) {
                if !kept.contains(&key) {
                    sandbox.attach(
                        &self.packages_dir.join(&key),
                        &layout::package_dir(&key),
                        true,
                    )?;
                }
            }
            let mut spec = self.instance_spec(function, &id);
            if sandbox.is_within_zygote() {
                // The ids function code has in a zygote's user namespace.
                spec.uid = USERNS_INSTANCE_ID;
                spec.gid = USERNS_INSTANCE_ID;
            }
            let (sock, pipes) = sandbox.spawn(spec)?;
            Ok::<_, StartError>((sock, self.collect_output(function, &id, pipes)?))
        })();
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

    fn instance_spec(&self, function: &FunctionVersion, id: &str) -> InstanceSpec {
        let mut argv = self.sandboxes.interpreter();
        argv.extend([
            "-c".into(),
            format!("{}; kindling_runtime.main()", layout::RUNTIME_IMPORT),
        ]);
        InstanceSpec {
            argv,
            env: self.instance_env(function, id),
            cwd: layout::HANDLER.into(),
            uid: self.sandboxes.uid,
            gid: self.sandboxes.gid,
            max_open_files: self.sandboxes.max_open_files,
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
            interpreter: self.sandboxes.interpreter(),
            mounts: self.function_mounts(function, limits),
            env,
            cwd: layout::HANDLER.into(),
            uid: self.sandboxes.uid,
            gid: self.sandboxes.gid,
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
                ("PATH", layout::PATH),
                ("HOME", layout::TMP),
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

/// Result of one invocation.
#[derive(Debug)]
pub struct Reply {
    /// The JSON body, or a web function's body.
    pub body: Bytes,
    /// Handler time measured inside the sandbox, in milliseconds.
    pub handler_ms: f64,
    /// A web function's status and headers (None: a plain function's JSON reply).
    pub http: Option<HttpHead>,
}

/// The status and headers of a web function's response.
#[derive(Debug)]
pub struct HttpHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// An HTTP request to a web function, as the runtime's web adapters read it (`kindling_web`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HttpRequest {
    pub method: String,
    /// The path below the function's root, percent-decoded, one character per byte (WSGI's
    /// `PATH_INFO`); `/` when empty.
    pub path: String,
    /// The same path as it was sent.
    pub raw_path: String,
    /// The query string as it was sent, without `?`.
    pub query: String,
    /// The function's root: `/run/<name>` (WSGI's `SCRIPT_NAME`, ASGI's `root_path`).
    pub root: String,
    /// Headers with lower-case names, values one character per byte (ISO-8859-1), in order.
    pub headers: Vec<(String, String)>,
    /// The worker's host and port as the request named them.
    pub server: (String, u16),
}

impl HttpRequest {
    /// The request as an instance's input: `HTTP <meta bytes>\n<meta JSON><body>`.
    pub fn input(&self, body: &[u8]) -> Vec<u8> {
        // Serializing strings and numbers cannot fail.
        let meta = serde_json::to_vec(self).unwrap_or_default();
        let head = format!("HTTP {}\n", meta.len());
        let mut input = Vec::with_capacity(head.len() + meta.len() + body.len());
        input.extend_from_slice(head.as_bytes());
        input.extend_from_slice(&meta);
        input.extend_from_slice(body);
        input
    }
}

/// A byte string as a string of one character per byte (ISO-8859-1), as WSGI passes them.
pub fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// `%XX` sequences of a path decoded into bytes (an invalid one stays as it is).
pub fn percent_decode(path: &str) -> Vec<u8> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                // Two hex digits make at most 255.
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(u8::MAX));
                i += 3;
            }
            (c, ..) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// A running instance of one function version.
pub struct Instance {
    pub id: String,
    pub function: Arc<FunctionVersion>,
    memory_mb: u64,
    network: bool,
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
        sandbox.set_nonblocking()?;
        Ok(Instance {
            id,
            function: function.clone(),
            memory_mb: limits.memory_mb,
            network: limits.network,
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
                    .and_then(|s| post_mortem(s, self.memory_mb));
                Err(reason.unwrap_or_else(|| InvokeError::Died(e.to_string())))
            }
        }
    }

    async fn exchange(
        &mut self,
        request_id: &str,
        event: &[u8],
    ) -> std::io::Result<Result<Reply, InvokeError>> {
        if event.len() < COPY_INPUT_BELOW {
            let request = frame::encode_parts(&[request_id.as_bytes(), b"\n", event])?;
            self.stream.write_all(&request).await?;
        } else {
            let len = request_id.len() + 1 + event.len();
            let head = frame::encode_parts(&[&frame::head(len)?, request_id.as_bytes(), b"\n"])?;
            // The head's own length prefix is not part of the frame.
            self.stream.write_all(&head[frame::HEAD_BYTES..]).await?;
            self.stream.write_all(event).await?;
        }
        loop {
            let payload = match frame::read_async(&mut self.stream, MAX_RESPONSE).await {
                Ok(p) => p,
                Err(FrameError::TooLarge { .. }) => return Ok(Err(InvokeError::Protocol)),
                Err(FrameError::Io(e)) => return Err(e),
            };
            // A forked instance reports, once, before its first reply, the modules it imported
            // beyond its zygote's (see `Zygotes::learn`).
            if let Some(list) = payload.strip_prefix(MODULES_FRAME) {
                if self.loaded_modules.is_some() || payload.len() > MAX_MODULES_FRAME {
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

    /// Its sandbox, the instance gone (its socket, output and assignment closed).
    fn into_sandbox(mut self) -> Option<SandboxHandle> {
        self.sandbox.take()
    }

    /// Its sandbox.
    pub(crate) fn sandbox(&self) -> Option<&SandboxHandle> {
        self.sandbox.as_ref()
    }

    /// Whether its sandbox has a network.
    pub fn network(&self) -> bool {
        self.network
    }

    /// Destroys the sandbox (blocking: call from a blocking context).
    pub fn destroy(mut self) {
        if let Some(s) = self.sandbox.take() {
            s.destroy();
        }
    }

    /// Memory the sandbox's cgroup charges now, in bytes.
    pub fn memory_usage(&self) -> Option<u64> {
        self.sandbox.as_ref()?.memory_usage()
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
                sandbox.freeze()?;
            } else {
                sandbox.thaw()?;
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

/// Why a sandbox stopped serving: an out-of-memory kill or a setup failure, if either.
fn post_mortem(sandbox: &SandboxHandle, memory_mb: u64) -> Option<InvokeError> {
    if sandbox.oom_killed() {
        return Some(InvokeError::OutOfMemory(memory_mb));
    }
    sandbox.setup_error().map(InvokeError::Setup)
}

/// Parses `<status> <ms>\n<body>`, or a web function's `http <ms> <status> <header bytes>\n
/// <headers JSON><body>`.
pub(crate) fn parse_reply(payload: Vec<u8>) -> Result<Reply, InvokeError> {
    let nl = payload
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(InvokeError::Protocol)?;
    let payload = Bytes::from(payload);
    let body = payload.slice(nl + 1..);
    let head = std::str::from_utf8(&payload[..nl]).map_err(|_| InvokeError::Protocol)?;
    let mut fields = head.split(' ');
    let (Some(status), Some(ms)) = (fields.next(), fields.next()) else {
        return Err(InvokeError::Protocol);
    };
    let handler_ms: f64 = ms.parse().map_err(|_| InvokeError::Protocol)?;
    match (status, fields.next(), fields.next(), fields.next()) {
        ("ok", None, ..) => Ok(Reply {
            body,
            handler_ms,
            http: None,
        }),
        ("error", None, ..) => Err(InvokeError::Handler(
            String::from_utf8_lossy(&body).into_owned(),
        )),
        ("http", Some(code), Some(meta), None) => {
            let meta: usize = meta.parse().map_err(|_| InvokeError::Protocol)?;
            if meta > body.len() {
                return Err(InvokeError::Protocol);
            }
            let http = http_head(code, &body[..meta])?;
            Ok(Reply {
                body: body.slice(meta..),
                handler_ms,
                http: Some(http),
            })
        }
        _ => Err(InvokeError::Protocol),
    }
}

/// A web function's status and headers (`[name, value]` pairs, values one character per byte).
fn http_head(code: &str, headers: &[u8]) -> Result<HttpHead, InvokeError> {
    let bad = |what: String| InvokeError::Response(crate::echo::echo(&what).into_owned());
    let status = code
        .parse::<u16>()
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| bad(format!("status {code}")))?;
    let pairs: Vec<(String, String)> =
        serde_json::from_slice(headers).map_err(|_| InvokeError::Protocol)?;
    let mut map = HeaderMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| bad(format!("header name `{name}`")))?;
        // Hop-by-hop headers and the body's length are the server's, not the app's.
        if is_connection_header(&header) {
            continue;
        }
        let bytes: Option<Vec<u8>> = value.chars().map(|c| u8::try_from(c).ok()).collect();
        let value = bytes
            .and_then(|b| HeaderValue::from_bytes(&b).ok())
            .ok_or_else(|| bad(format!("value of header `{name}`")))?;
        map.append(header, value);
    }
    Ok(HttpHead {
        status,
        headers: map,
    })
}

fn is_connection_header(name: &HeaderName) -> bool {
    use hyper::header::*;
    [
        CONNECTION,
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        TE,
        TRAILER,
        UPGRADE,
    ]
    .contains(name)
        || matches!(name.as_str(), "keep-alive" | "proxy-connection")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        let r = parse_reply(b"ok 1.500\n{\"a\": 1}".to_vec()).unwrap();
        assert_eq!(r.body, &b"{\"a\": 1}"[..]);
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
        assert!(matches!(
            parse_reply(b"ok 1 2\n{}".to_vec()),
            Err(InvokeError::Protocol)
        ));
    }

    #[test]
    fn web_replies() {
        let headers = r#"[["X-Tea","pot"],["set-cookie","a=1"],["Set-Cookie","b=\u00e9"],["Content-Length","9"],["Connection","close"]]"#;
        let mut bytes = format!("http 0.5 418 {}\n{headers}", headers.len()).into_bytes();
        // The body is binary: not UTF-8.
        bytes.extend_from_slice(b"\x00\xffbody");
        let r = parse_reply(bytes).unwrap();
        let http = r.http.unwrap();
        assert_eq!(http.status.as_u16(), 418);
        assert_eq!(http.headers["x-tea"], "pot");
        let cookies: Vec<_> = http.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, [&b"a=1"[..], &b"b=\xe9"[..]]);
        assert!(!http.headers.contains_key("content-length"));
        assert!(!http.headers.contains_key("connection"));
        assert_eq!(&r.body[..], b"\x00\xffbody");
        for (code, headers) in [
            ("1000", "[]"),
            ("200", r#"[["bad name","x"]]"#),
            ("200", r#"[["x","\n"]]"#),
            ("200", r#"[["x","\u0100"]]"#),
        ] {
            let p = format!("http 1 {code} {}\n{headers}", headers.len());
            assert!(
                matches!(parse_reply(p.into_bytes()), Err(InvokeError::Response(_))),
                "{code} {headers}"
            );
        }
        for bad in ["http 1 200 99\n[]", "http 1 200 2\n{}", "http 1 200\n"] {
            assert!(
                matches!(
                    parse_reply(bad.as_bytes().to_vec()),
                    Err(InvokeError::Protocol)
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn http_inputs() {
        let req = HttpRequest {
            method: "POST".into(),
            path: latin1(&percent_decode("/a%20b/%C3%A9%zz%4")),
            raw_path: "/a%20b/%C3%A9%zz%4".into(),
            query: "q=1".into(),
            root: "/run/f".into(),
            headers: vec![("x".into(), latin1(b"\xe9"))],
            server: ("localhost".into(), 5000),
        };
        assert_eq!(req.path, "/a b/\u{c3}\u{a9}%zz%4");
        let input = req.input(b"\x00\x01");
        let nl = input.iter().position(|&b| b == b'\n').unwrap();
        let len: usize = std::str::from_utf8(&input[5..nl]).unwrap().parse().unwrap();
        assert!(input.starts_with(b"HTTP "));
        let meta: serde_json::Value = serde_json::from_slice(&input[nl + 1..nl + 1 + len]).unwrap();
        assert_eq!(meta["headers"][0][1], "\u{e9}");
        assert_eq!(meta["server"], serde_json::json!(["localhost", 5000]));
        assert_eq!(&input[nl + 1 + len..], b"\x00\x01");
    }

    /// The runtime refuses what the worker would not read.
    #[test]
    fn the_runtime_knows_the_response_bound() {
        assert!(crate::runtime::SOURCE.contains("MAX_RESPONSE = 64 * 1024 * 1024\n"));
        assert_eq!(MAX_RESPONSE, 64 * 1024 * 1024);
    }
}
