//! One zygote process, and the typed messages of its socket: requests (fork a zygote or an
//! instance, import modules) and replies, JSON in length-prefixed frames ([`crate::frame`]).
//! The Python side is `zygote_main`/`_zygote_loop` in `runtime/kindling_runtime.py`.

use super::host::ZygoteProcess;
use super::{ForkError, FORK_TIMEOUT};
use crate::frame;
use crate::sandboxes::SharedSandbox;
use kindling_sandbox::channel;
use kindling_sandbox::process::Process;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Largest reply a zygote may send.
const MAX_REPLY_BYTES: usize = 1 << 20;

/// A request to a zygote; descriptors travel with its first bytes.
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub(crate) enum Request<'a> {
    /// Fork a child into the sandbox whose namespaces and cgroup come as descriptors.
    Fork(Fork<'a>),
    /// Import these submodules of the zygote's packages (learned from its instances).
    Import { modules: &'a [String] },
}

/// What a forked child becomes.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(crate) enum Fork<'a> {
    /// A child zygote, which adds `paths` to `sys.path` and imports `modules`.
    Zygote {
        sandbox: &'a str,
        paths: &'a [String],
        sites: &'a [String],
        modules: &'a [String],
        submodules: &'a [String],
    },
    /// An instance-to-be, which drops every privilege and waits for its function.
    Instance {
        sandbox: &'a str,
        uid: u32,
        gid: u32,
        nofile: u64,
        /// The seccomp filter's code, hex.
        seccomp: &'a str,
        /// Page runs (`[address, pages]`) to write ahead of need.
        write_ahead: &'a [(u64, u64)],
    },
}

/// A zygote's reply.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(try_from = "WireReply")]
pub(crate) enum Reply {
    /// Its first frame: it imported its packages (but `failed`).
    Ready { pid: i32, failed: Vec<String> },
    /// A child was forked (its pid in the sandbox's pid namespace).
    Forked { pid: i32 },
    /// A request without a result was carried out.
    Done,
    /// A request failed.
    Failed { error: String },
}

/// A reply as the zygote writes it: `ok`, then whichever fields its kind has.
#[derive(Deserialize)]
struct WireReply {
    ok: bool,
    #[serde(default)]
    ready: bool,
    pid: Option<i32>,
    #[serde(default)]
    failed: Vec<String>,
    error: Option<String>,
}

impl TryFrom<WireReply> for Reply {
    type Error = String;

    fn try_from(w: WireReply) -> Result<Self, String> {
        match (w.ok, w.ready, w.pid) {
            (false, _, _) => Ok(Reply::Failed {
                error: w.error.unwrap_or_else(|| "unknown error".into()),
            }),
            (true, true, Some(pid)) => Ok(Reply::Ready {
                pid,
                failed: w.failed,
            }),
            (true, true, None) => Err("a ready reply without a pid".into()),
            (true, false, Some(pid)) => Ok(Reply::Forked { pid }),
            (true, false, None) => Ok(Reply::Done),
        }
    }
}

/// Reads one reply, whose frame prefix may have been read already.
pub(crate) fn read_reply(
    chan: &mut UnixStream,
    timeout: Duration,
    head: Option<[u8; frame::HEAD_BYTES]>,
) -> Result<Reply, ForkError> {
    chan.set_read_timeout(Some(timeout))?;
    let payload = match head {
        Some(h) => frame::read_after(chan, h, MAX_REPLY_BYTES),
        None => frame::read(chan, MAX_REPLY_BYTES),
    }
    .map_err(|e| match e {
        frame::FrameError::Io(e) => ForkError::Io(e),
        e => ForkError::Zygote(format!("malformed reply: {e}")),
    })?;
    serde_json::from_slice(&payload).map_err(|e| ForkError::Zygote(format!("malformed reply: {e}")))
}

/// Fills `buf` from a socket with `SO_PASSCRED` set; returns the sender's pid on the host (the
/// credentials of the first bytes).
pub(crate) fn read_exact_with_pid(chan: &UnixStream, buf: &mut [u8]) -> std::io::Result<i32> {
    let mut pid = None;
    let mut got = 0;
    while got < buf.len() {
        match channel::recv_with_credentials(chan, &mut buf[got..])? {
            None => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Some((n, sender)) => {
                got += n;
                pid = pid.or(sender);
            }
        }
    }
    pid.ok_or_else(|| std::io::Error::other("the forked child's credentials are missing"))
}

/// A zygote's process: its pidfd, its socket and its sandbox (which outlives it while
/// sandboxes made within it live).
pub struct ZygoteProc {
    process: Process,
    channel: Mutex<UnixStream>,
    pub(super) sandbox: Arc<SharedSandbox>,
    paused: AtomicBool,
    /// What a root zygote prints goes to the zygotes' log while this lives.
    _output: Option<crate::logs::InstanceOutput>,
}

impl ZygoteProc {
    pub(super) fn new(
        process: Process,
        channel: UnixStream,
        sandbox: Arc<SharedSandbox>,
        output: Option<crate::logs::InstanceOutput>,
    ) -> Self {
        Self {
            process,
            channel: Mutex::new(channel),
            sandbox,
            paused: AtomicBool::new(false),
            _output: output,
        }
    }

    /// Sends a request with descriptors and reads the reply; a failure it reports is an error.
    pub(crate) fn call(
        &self,
        req: &Request<'_>,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Reply, ForkError> {
        // Holding the channel while resuming: housekeeping pauses only a zygote whose channel
        // it holds, so a request can never be stopped halfway.
        let mut chan = self.channel.lock();
        if self.paused.swap(false, Ordering::SeqCst) {
            let _ = self.process.resume();
        }
        let body = serde_json::to_vec(req).map_err(std::io::Error::other)?;
        channel::send_with_fds(&*chan, &frame::encode(&body)?, fds)?;
        match read_reply(&mut chan, FORK_TIMEOUT, None)? {
            Reply::Failed { error } => Err(ForkError::Zygote(error)),
            Reply::Ready { .. } => Err(ForkError::Zygote("an unexpected ready reply".into())),
            reply => Ok(reply),
        }
    }
}

impl ZygoteProcess for ZygoteProc {
    fn import(&self, modules: &[String]) -> Result<(), ForkError> {
        self.call(&Request::Import { modules }, &[]).map(|_| ())
    }

    fn is_alive(&self) -> bool {
        // Signal 0 checks for existence; the zygote's init reaps it when it dies.
        self.process.is_alive()
    }

    fn kill(&self) {
        let _ = self.process.kill();
    }

    fn pause_if_idle(&self) {
        // Only while no request is in flight (the guard is held until the zygote stops).
        if let Some(_idle) = self.channel.try_lock() {
            self.paused.store(true, Ordering::SeqCst);
            let _ = self.process.stop();
        }
    }

    fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    fn memory_usage(&self) -> Option<u64> {
        self.sandbox.memory_usage()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_as_the_runtime_reads_them() {
        let modules = vec!["numpy".to_string()];
        let req = Request::Fork(Fork::Zygote {
            sandbox: "sb-1",
            paths: &[],
            sites: &[],
            modules: &modules,
            submodules: &[],
        });
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(v["op"], "fork");
        assert_eq!(v["kind"], "zygote");
        assert_eq!(v["modules"][0], "numpy");
        let req = Request::Fork(Fork::Instance {
            sandbox: "sb-2",
            uid: 1,
            gid: 2,
            nofile: 3,
            seccomp: "00",
            write_ahead: &[(4096, 2)],
        });
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(
            (v["op"].as_str(), v["kind"].as_str()),
            (Some("fork"), Some("instance"))
        );
        assert_eq!(v["write_ahead"], serde_json::json!([[4096, 2]]));
        let v = serde_json::to_value(Request::Import { modules: &modules }).unwrap();
        assert_eq!(v, serde_json::json!({"op": "import", "modules": ["numpy"]}));
    }

    #[test]
    fn replies_are_typed_and_a_missing_pid_is_an_error() {
        let parse = |s: &str| serde_json::from_str::<Reply>(s);
        assert_eq!(
            parse(r#"{"ok": true, "ready": true, "pid": 7, "failed": ["x: E"]}"#).unwrap(),
            Reply::Ready {
                pid: 7,
                failed: vec!["x: E".into()]
            }
        );
        assert_eq!(
            parse(r#"{"ok": true, "pid": 9}"#).unwrap(),
            Reply::Forked { pid: 9 }
        );
        assert_eq!(parse(r#"{"ok": true}"#).unwrap(), Reply::Done);
        assert_eq!(
            parse(r#"{"ok": false, "error": "OSError: x"}"#).unwrap(),
            Reply::Failed {
                error: "OSError: x".into()
            }
        );
        assert!(parse(r#"{"ok": true, "ready": true}"#).is_err());
        assert!(parse(r#"{"ok": true, "pid": "7"}"#).is_err());
        assert!(parse(r#"{"pid": 7}"#).is_err());
    }
}
