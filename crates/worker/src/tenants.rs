//! Which function each sandbox serves, and which function a process calling the worker over a
//! socket acts for (object storage asks).
//!
//! The answer never comes from the caller: the kernel names the connecting process and its
//! cgroup, which is its sandbox (`kindling_sandbox::peer`), and the instance layer records which function
//! each sandbox was given ([`Assignments`]). A cold instance's sandbox gets its function before
//! it starts, a forked instance's (a seed's too) when it is assigned one, before it runs any of
//! the function's code; the record goes with the instance. Zygotes, jobs, spare sandboxes and
//! seeds still waiting have none, and neither has any host process.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

/// The function each live sandbox serves, by sandbox id.
#[derive(Default)]
pub struct Assignments {
    by_sandbox: Mutex<HashMap<String, String>>,
}

impl Assignments {
    /// Records that `sandbox` serves `function` until the returned guard is dropped.
    pub fn assign(self: &Arc<Self>, sandbox: &str, function: &str) -> Assignment {
        self.by_sandbox
            .lock()
            .insert(sandbox.to_string(), function.to_string());
        Assignment {
            assignments: self.clone(),
            sandbox: sandbox.to_string(),
        }
    }

    /// The function `sandbox` serves now.
    pub fn function_of(&self, sandbox: &str) -> Option<String> {
        self.by_sandbox.lock().get(sandbox).cloned()
    }
}

/// A sandbox's assignment to a function, withdrawn on drop (when its instance is destroyed).
pub struct Assignment {
    assignments: Arc<Assignments>,
    sandbox: String,
}

impl Drop for Assignment {
    fn drop(&mut self) {
        self.assignments.by_sandbox.lock().remove(&self.sandbox);
    }
}

/// Why a caller is not served.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("only function instances may use this service; the calling process is in no sandbox")]
    NotASandbox,
    #[error("sandbox {0} serves no function")]
    Unassigned(String),
    #[error("cannot identify the calling process")]
    Unknown(#[source] io::Error),
}

/// The sandbox a connected peer runs in, by its socket: the seam between the kernel's answer
/// and the worker's policy.
pub trait PeerSandbox: Send + Sync {
    fn sandbox_of(&self, peer: BorrowedFd<'_>) -> io::Result<Option<String>>;
}

/// The kernel's answer: the peer's credentials and pidfd, its cgroup under `cgroup_parent`.
pub struct KernelPeers {
    cgroup_parent: String,
}

impl KernelPeers {
    pub fn new(cgroup_parent: &str) -> Self {
        Self {
            cgroup_parent: cgroup_parent.to_string(),
        }
    }
}

impl PeerSandbox for KernelPeers {
    fn sandbox_of(&self, peer: BorrowedFd<'_>) -> io::Result<Option<String>> {
        kindling_sandbox::peer::Peer::of(peer)?.sandbox(&self.cgroup_parent)
    }
}

/// Whom a connection's peer acts for.
pub trait Callers: Send + Sync {
    /// The function whose instance is at the other end of `peer`.
    fn function_of(&self, peer: BorrowedFd<'_>) -> Result<String, Refused>;
}

/// Callers as the worker sees them: a live sandbox that serves a function acts for it.
pub struct SandboxCallers<P> {
    peers: P,
    assignments: Arc<Assignments>,
}

impl<P: PeerSandbox> SandboxCallers<P> {
    pub fn new(peers: P, assignments: Arc<Assignments>) -> Self {
        Self { peers, assignments }
    }
}

impl<P: PeerSandbox> Callers for SandboxCallers<P> {
    fn function_of(&self, peer: BorrowedFd<'_>) -> Result<String, Refused> {
        let sandbox = self
            .peers
            .sandbox_of(peer)
            .map_err(Refused::Unknown)?
            .ok_or(Refused::NotASandbox)?;
        self.assignments
            .function_of(&sandbox)
            .ok_or(Refused::Unassigned(sandbox))
    }
}

/// Every caller acts for one function: for a tool serving that function's storage on a socket
/// of its own, outside the worker (the benchmark baselines, which run the handler outside any
/// sandbox).
pub struct OneFunction(pub String);

impl Callers for OneFunction {
    fn function_of(&self, _peer: BorrowedFd<'_>) -> Result<String, Refused> {
        Ok(self.0.clone())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, AsRawFd};

    /// Answers as the kernel would for the peers it was told about, by descriptor number.
    struct FakePeers(Mutex<HashMap<i32, Option<String>>>);

    impl PeerSandbox for FakePeers {
        fn sandbox_of(&self, peer: BorrowedFd<'_>) -> io::Result<Option<String>> {
            self.0
                .lock()
                .get(&peer.as_raw_fd())
                .cloned()
                .ok_or_else(|| io::Error::other("peer gone"))
        }
    }

    #[test]
    fn a_caller_acts_for_the_function_its_sandbox_serves_while_assigned() {
        let (a, _) = std::os::unix::net::UnixStream::pair().unwrap();
        let (host, _) = std::os::unix::net::UnixStream::pair().unwrap();
        let (seed, _) = std::os::unix::net::UnixStream::pair().unwrap();
        let (zygote, _) = std::os::unix::net::UnixStream::pair().unwrap();
        let (gone, _) = std::os::unix::net::UnixStream::pair().unwrap();
        let fake = FakePeers(Mutex::new(HashMap::from([
            (a.as_raw_fd(), Some("sb-1-1".to_string())),
            (host.as_raw_fd(), None),
            (seed.as_raw_fd(), Some("sb-1-2".to_string())),
            (zygote.as_raw_fd(), Some("zy-sb-1-0".to_string())),
        ])));
        let assignments = Arc::new(Assignments::default());
        let callers = SandboxCallers::new(fake, assignments.clone());

        let cold = assignments.assign("sb-1-1", "alpha");
        assert_eq!(callers.function_of(a.as_fd()).unwrap(), "alpha");
        // A process in no sandbox, a seed not assigned yet, a zygote: refused.
        assert!(matches!(
            callers.function_of(host.as_fd()),
            Err(Refused::NotASandbox)
        ));
        assert!(matches!(
            callers.function_of(seed.as_fd()),
            Err(Refused::Unassigned(s)) if s == "sb-1-2"
        ));
        assert!(matches!(
            callers.function_of(zygote.as_fd()),
            Err(Refused::Unassigned(_))
        ));
        // The peer cannot be identified (it exited): refused.
        assert!(matches!(
            callers.function_of(gone.as_fd()),
            Err(Refused::Unknown(_))
        ));
        // The seed becomes an instance of beta.
        let forked = assignments.assign("sb-1-2", "beta");
        assert_eq!(callers.function_of(seed.as_fd()).unwrap(), "beta");
        // Destroying the instance withdraws the assignment.
        drop(cold);
        assert!(matches!(
            callers.function_of(a.as_fd()),
            Err(Refused::Unassigned(_))
        ));
        assert_eq!(assignments.function_of("sb-1-2").as_deref(), Some("beta"));
        drop(forked);
        assert_eq!(assignments.function_of("sb-1-2"), None);
    }

    #[test]
    fn the_kernel_places_this_test_in_no_sandbox() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let assignments = Arc::new(Assignments::default());
        let callers = SandboxCallers::new(KernelPeers::new("kindling-unit"), assignments);
        assert!(matches!(
            callers.function_of(a.as_fd()),
            Err(Refused::NotASandbox)
        ));
    }
}
