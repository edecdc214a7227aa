//! The per-sandbox init: pid 1 of the sandbox's pid namespace.
//!
//! It joins the cgroup, builds the root filesystem, starts instances, reaps every process of the
//! sandbox and carries out the worker's control requests (more instances, mount changes) for as
//! long as the sandbox lives. When the worker closes the control channel, init exits, and the
//! kernel kills whatever else still runs in the namespace.

use crate::control::{ControlChannel, ControlEvent, ControlRequest};
use crate::spec::{InstanceSpec, Privilege, SandboxSpec, UserNamespace};
use crate::stdio::OutputPipes;
use crate::{rootfs, seccomp, sys};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

/// Descriptor number an instance finds its invocation socket on.
pub const INSTANCE_FD: RawFd = 3;

/// The namespaces an init exports with `Ready` (see [`SandboxSpec::export_namespaces`]).
pub const EXPORTED_NAMESPACES: [&str; 6] = ["user", "pid", "mnt", "ipc", "uts", "net"];

/// Runs the init of a freshly cloned sandbox. Never returns.
///
/// `detached` is what the spawner prepared for a sandbox in a user namespace of its own (see
/// [`rootfs::detach`]); `None` for a sandbox in the host's.
pub fn run(
    spec: &SandboxSpec,
    control: ControlChannel,
    instance: Option<OwnedFd>,
    output: Option<OutputPipes>,
    detached: Option<rootfs::Detached>,
) -> ! {
    // If the spawner dies, so does the sandbox.
    let _ = sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    sys::set_process_name(c"kindling-init");
    let ready = setup(spec, detached)
        .and_then(|namespaces| {
            if spec.network {
                await_network(&control)?;
            }
            Ok(namespaces)
        })
        .and_then(|namespaces| {
            let pid = match (&spec.instance, instance) {
                (Some(inst), Some(sock)) => {
                    Some(spawn_instance(inst, sock, output, &spec.user_namespace)?)
                }
                _ => None,
            };
            Ok((pid, namespaces))
        });
    match ready {
        Ok((instance_pid, namespaces)) => {
            let mut fds: Vec<OwnedFd> = Vec::new();
            let mut instance_pidfd = false;
            if spec.export_namespaces {
                if let Some(pidfd) = instance_pid.and_then(|p| sys::pidfd_open(p).ok()) {
                    fds.push(pidfd);
                    instance_pidfd = true;
                }
            }
            fds.extend(namespaces);
            let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
            let event = ControlEvent::Ready {
                instance_pid,
                instance_pidfd,
                namespaces: if spec.export_namespaces {
                    EXPORTED_NAMESPACES.iter().map(|n| n.to_string()).collect()
                } else {
                    Vec::new()
                },
            };
            let _ = control.send(&event, &raw);
        }
        Err(message) => {
            let _ = control.send(&ControlEvent::SetupFailed { message }, &[]);
            sys::exit_now(1);
        }
    }
    // What a purge restores (see `purge`): read once the sandbox's /proc is mounted.
    let domainname = crate::purge::domainname();
    serve(&control, &domainname)
}

/// Joins the cgroup, builds the root and the rest of the sandbox; returns descriptors of the
/// sandbox's namespaces when the spec asks to export them.
fn setup(spec: &SandboxSpec, detached: Option<rootfs::Detached>) -> Result<Vec<OwnedFd>, String> {
    // Nothing of this process (memory, descriptors, /proc entries) may be reachable from the
    // processes it starts, whatever user they run as.
    sys::set_not_dumpable().map_err(|e| format!("making init undumpable: {e}"))?;
    match (&spec.user_namespace, &detached) {
        (UserNamespace::Host, None) => {
            for procs in &spec.cgroup_procs {
                std::fs::write(procs, "0")
                    .map_err(|e| format!("joining cgroup {}: {e}", procs.display()))?;
            }
        }
        (UserNamespace::Host, Some(_)) | (_, None) => {
            return Err("sandbox prepared for the wrong user namespace".into())
        }
        (_, Some(d)) => {
            // The root of the sandbox's user namespace, an unprivileged user on the host (an
            // init cloned into a new user namespace starts out as nobody there).
            sys::become_user(0, 0)
                .map_err(|e| format!("becoming the user namespace's root: {e}"))?;
            for fd in &d.cgroup_procs {
                sys::write_all_raw(fd.as_raw_fd(), b"0")
                    .map_err(|e| format!("joining cgroup: {e}"))?;
            }
        }
    }
    let namespaces = if spec.export_namespaces {
        EXPORTED_NAMESPACES
            .iter()
            .map(|n| sys::open_own_namespace(n))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("opening own namespaces: {e}"))?
    } else {
        Vec::new()
    };
    rootfs::enter(spec, detached).map_err(|e| error_chain(&e))?;
    sys::loopback_up().map_err(|e| format!("bringing loopback up: {e}"))?;
    sys::sethostname(&spec.id).map_err(|e| format!("setting hostname: {e}"))?;
    // Children must not be reaped behind our back, and SIGCHLD arrives through a signalfd.
    sys::reset_signals().map_err(|e| format!("resetting signals: {e}"))?;
    sys::set_sigmask(&[libc::SIGCHLD], libc::SIG_BLOCK)
        .map_err(|e| format!("blocking SIGCHLD: {e}"))?;
    Ok(namespaces)
}

/// Waits until the worker has configured the sandbox's network (a function may use it in its
/// first request); requests before then are refused.
fn await_network(control: &ControlChannel) -> Result<(), String> {
    loop {
        match control.recv::<ControlRequest>(false) {
            Ok(Some((ControlRequest::NetworkReady, _))) => return Ok(()),
            Ok(Some(_)) => {
                let message = "the sandbox's network is not configured yet".to_string();
                let _ = control.send(&ControlEvent::Failed { message }, &[]);
            }
            Ok(None) => sys::exit_now(0),
            Err(e) => return Err(format!("waiting for the network: {e}")),
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        msg.push_str(": ");
        msg.push_str(&e.to_string());
        cur = e.source();
    }
    msg
}

/// Forks an instance; the child becomes `spec`'s program with `sock` on [`INSTANCE_FD`] and,
/// when given, the write ends of `output` on standard output and error. Init keeps none of
/// them.
fn spawn_instance(
    spec: &InstanceSpec,
    sock: OwnedFd,
    output: Option<OutputPipes>,
    user_namespace: &UserNamespace,
) -> Result<i32, String> {
    if spec.privilege == Privilege::Zygote && *user_namespace == UserNamespace::Host {
        // Capabilities there would be the host's.
        return Err("a zygote needs a sandbox with its own user namespace".into());
    }
    if spec.output_pipes != output.is_some() {
        return Err("instance output pipes missing".into());
    }
    let prepared = Prepared::new(spec)?;
    let output_fds = output
        .as_ref()
        .map(|o| (o.stdout.as_raw_fd(), o.stderr.as_raw_fd()));
    // SAFETY: init is single-threaded.
    match unsafe { sys::fork() } {
        Err(e) => Err(format!("forking instance: {e}")),
        Ok(0) => {
            let err = prepared.exec(sock.as_raw_fd(), output_fds);
            let _ = sys::write_all_raw(
                2,
                format!("kindling: starting instance: {err}\n").as_bytes(),
            );
            sys::exit_now(127)
        }
        Ok(pid) => Ok(pid),
    }
}

/// Everything an instance needs, allocated before fork so the child only makes system calls.
struct Prepared<'a> {
    spec: &'a InstanceSpec,
    argv: Vec<CString>,
    envp: Vec<CString>,
    filter: Vec<libc::sock_filter>,
}

impl<'a> Prepared<'a> {
    fn new(spec: &'a InstanceSpec) -> Result<Self, String> {
        let cs = |s: String| CString::new(s).map_err(|_| "NUL byte in instance spec".to_string());
        let argv = spec
            .argv
            .iter()
            .cloned()
            .map(cs)
            .collect::<Result<Vec<_>, _>>()?;
        if argv.is_empty() {
            return Err("instance has no program".into());
        }
        let envp = spec
            .env
            .iter()
            .map(|(k, v)| cs(format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()?;
        let filter = match spec.privilege {
            Privilege::Instance => seccomp::instance_filter(),
            Privilege::Zygote => seccomp::zygote_filter(),
        };
        Ok(Self {
            spec,
            argv,
            envp,
            filter,
        })
    }

    /// In the forked child: drop every privilege and exec. Returns only on failure.
    fn exec(&self, sock: RawFd, output: Option<(RawFd, RawFd)>) -> String {
        let step = |what: &str, r: std::io::Result<()>| r.map_err(|e| format!("{what}: {e}"));
        let result = (|| {
            step("resetting signals", sys::reset_signals())?;
            // The instance must not outlive its init (which matters where the sandbox has no
            // pid namespace of its own to take it down). Survives execve.
            step(
                "parent death signal",
                sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong),
            )?;
            // Output first: a pipe end may have the number INSTANCE_FD (never 0 to 2, which
            // are open), and the socket's dup2 would close it.
            if let Some((stdout, stderr)) = output {
                step("dup2", sys::dup2(stdout, 1))?;
                step("dup2", sys::dup2(stderr, 2))?;
            }
            step("dup2", sys::dup2(sock, INSTANCE_FD))?;
            if self.spec.stdio_to_socket {
                step("dup2", sys::dup2(sock, 1))?;
                step("dup2", sys::dup2(sock, 2))?;
            }
            sys::close_fds_from(INSTANCE_FD + 1, &[]);
            step("chdir", sys::chdir(&self.spec.cwd))?;
            step("rlimit", sys::setrlimit(libc::RLIMIT_CORE, 0, 0))?;
            let nofile = self.spec.max_open_files;
            step(
                "rlimit",
                sys::setrlimit(libc::RLIMIT_NOFILE, nofile, nofile),
            )?;
            match self.spec.privilege {
                Privilege::Instance => {
                    step("dropping bounding set", sys::drop_bounding_set())?;
                    step(
                        "dropping to user",
                        sys::become_user(self.spec.uid, self.spec.gid),
                    )?;
                }
                Privilege::Zygote => {
                    step(
                        "becoming the zygote's user",
                        sys::become_user(self.spec.uid, self.spec.gid),
                    )?;
                    step(
                        "narrowing capabilities",
                        sys::keep_capabilities(seccomp::ZYGOTE_CAPABILITIES),
                    )?;
                }
            }
            step("no_new_privs", sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1))?;
            step("seccomp", sys::seccomp_install(&self.filter))?;
            Ok::<(), String>(())
        })();
        if let Err(e) = result {
            return e;
        }
        let err = sys::execve(&self.argv[0], &self.argv, &self.envp);
        format!("exec {}: {err}", self.spec.argv[0])
    }
}

/// The init's main loop: control requests in, events out, zombies reaped.
fn serve(control: &ControlChannel, domainname: &str) -> ! {
    let sigfd = match sys::signalfd(&[libc::SIGCHLD]) {
        Ok(fd) => fd,
        Err(_) => sys::exit_now(1),
    };
    loop {
        let ready = match sys::poll_readable(&[control.as_raw_fd(), sigfd.as_raw_fd()], -1) {
            Ok(r) => r,
            Err(_) => sys::exit_now(1),
        };
        if ready[1] {
            sys::drain_signalfd(sigfd.as_raw_fd());
            reap(control);
        }
        if ready[0] {
            match control.recv::<ControlRequest>(true) {
                Ok(Some((req, fds))) => {
                    let event = handle(req, fds, domainname);
                    let _ = control.send(&event, &[]);
                }
                Ok(None) => sys::exit_now(0),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    let message = format!("malformed control request: {e}");
                    let _ = control.send(&ControlEvent::Failed { message }, &[]);
                }
                Err(_) => sys::exit_now(1),
            }
        }
    }
}

fn reap(control: &ControlChannel) {
    while let Ok(Some((pid, how))) = sys::try_wait(-1) {
        let (code, signal) = match how {
            sys::ExitStatus::Exited(c) => (Some(c), None),
            sys::ExitStatus::Signaled(s) => (None, Some(s)),
        };
        let _ = control.send(&ControlEvent::Exited { pid, code, signal }, &[]);
    }
}

fn handle(req: ControlRequest, mut fds: Vec<OwnedFd>, domainname: &str) -> ControlEvent {
    let failed = |message: String| ControlEvent::Failed { message };
    match req {
        // Later instances never keep privileges (a zygote is only ever the first).
        ControlRequest::Spawn { instance } if instance.privilege != Privilege::Instance => {
            failed("only the first instance may be a zygote".into())
        }
        ControlRequest::Spawn { instance } => {
            // The socket, then (when the spec asks for them) the stdout and stderr pipes.
            let output = if instance.output_pipes && fds.len() == 3 {
                let stderr = fds.remove(2);
                let stdout = fds.remove(1);
                Some(OutputPipes { stdout, stderr })
            } else {
                None
            };
            match fds.pop() {
                None => failed("spawn request carries no socket".into()),
                Some(sock) => match spawn_instance(&instance, sock, output, &UserNamespace::Host) {
                    Ok(pid) => ControlEvent::Spawned { pid },
                    Err(e) => failed(e),
                },
            }
        }
        ControlRequest::Mount { target, create } => match fds.pop() {
            None => failed("mount request carries no mount tree".into()),
            Some(tree) => match replace_mount(&tree, &target, create) {
                Ok(()) => ControlEvent::Mounted { target },
                Err(e) => failed(format!("mounting on {}: {e}", target.display())),
            },
        },
        ControlRequest::Purge {
            hostname,
            tmp_bytes,
            packages_dir,
            packages,
        } => {
            let clean = crate::purge::Clean {
                hostname: &hostname,
                domainname,
                tmp_bytes,
                packages: &packages,
                packages_dir: &packages_dir,
            };
            match crate::purge::purge(&clean) {
                Ok(packages) => ControlEvent::Purged { packages },
                Err(e) => failed(e),
            }
        }
        ControlRequest::NetworkReady => {
            failed("the sandbox's network is already configured".into())
        }
        ControlRequest::KillInstances => {
            // From pid 1, kill(-1) reaches every other process of the namespace. Anywhere else
            // (a sandbox sharing the host's pid namespace) it would reach the whole machine.
            if sys::getpid() != 1 {
                return failed("this sandbox has no pid namespace of its own".into());
            }
            match sys::kill(-1, libc::SIGKILL) {
                Ok(()) => ControlEvent::Killed,
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => ControlEvent::Killed,
                Err(e) => failed(format!("killing instances: {e}")),
            }
        }
    }
}

fn replace_mount(tree: &OwnedFd, target: &Path, create: bool) -> std::io::Result<()> {
    if create {
        rootfs::add_package_entry(target)?;
    }
    // Peel off whatever is mounted there now (EINVAL: nothing is).
    loop {
        match sys::umount2(target, libc::MNT_DETACH) {
            Ok(()) => continue,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
            Err(e) => return Err(e),
        }
    }
    sys::move_mount_to(tree.as_raw_fd(), target)
}
