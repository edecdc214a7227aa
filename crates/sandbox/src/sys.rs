//! Thin, safe wrappers around the raw system calls Kindling needs.
//!
//! Every `unsafe` block of the project is in this crate, and most of them are here: each wrapper
//! checks its arguments, makes one call and turns `-1` into an `io::Error`. Nothing in this file
//! knows about sandboxes; it only knows the kernel's interfaces.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Turns a path into a C string, refusing interior NULs.
pub fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_long(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `mount(2)`. `source` and `fstype` may be absent; `data` is the option string.
pub fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(cstr).transpose()?;
    let target = cstr(target)?;
    let fstype = fstype.map(CString::new).transpose()?;
    let data = data.map(CString::new).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is either null (allowed by mount(2) for these arguments) or points to
    // a NUL-terminated string owned by this frame that outlives the call.
    check(unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data) as *const libc::c_void,
        )
    })?;
    Ok(())
}

/// `umount2(2)`.
pub fn umount2(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let target = cstr(target)?;
    // SAFETY: `target` is a valid NUL-terminated string for the duration of the call.
    check(unsafe { libc::umount2(target.as_ptr(), flags) })?;
    Ok(())
}

/// `pivot_root(2)`; glibc has no wrapper.
pub fn pivot_root(new_root: &Path, put_old: &Path) -> io::Result<()> {
    let new_root = cstr(new_root)?;
    let put_old = cstr(put_old)?;
    // SAFETY: both arguments are valid NUL-terminated strings that outlive the call.
    check_long(unsafe {
        libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr())
    })?;
    Ok(())
}

/// `chdir(2)`.
pub fn chdir(path: &Path) -> io::Result<()> {
    let path = cstr(path)?;
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    check(unsafe { libc::chdir(path.as_ptr()) })?;
    Ok(())
}

/// `mknod(2)` of a character device.
pub fn mknod_char(path: &Path, mode: libc::mode_t, major: u32, minor: u32) -> io::Result<()> {
    let path = cstr(path)?;
    // SAFETY: `path` is a valid NUL-terminated string; makedev is a pure computation.
    check(unsafe {
        libc::mknod(
            path.as_ptr(),
            libc::S_IFCHR | mode,
            libc::makedev(major, minor),
        )
    })?;
    Ok(())
}

/// `chmod(2)`, used where the umask would otherwise narrow a mode we set on purpose.
pub fn chmod(path: &Path, mode: libc::mode_t) -> io::Result<()> {
    let path = cstr(path)?;
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    check(unsafe { libc::chmod(path.as_ptr(), mode) })?;
    Ok(())
}

/// `sethostname(2)`.
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe the bytes of `name`, which outlives the call.
    check(unsafe { libc::sethostname(name.as_ptr() as *const libc::c_char, name.len()) })?;
    Ok(())
}

/// `setdomainname(2)` in the current UTS namespace.
pub fn setdomainname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe the bytes of `name`, which outlives the call.
    check(unsafe { libc::setdomainname(name.as_ptr() as *const libc::c_char, name.len()) })?;
    Ok(())
}

/// A System V IPC object kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpcKind {
    SharedMemory,
    Semaphores,
    MessageQueue,
}

/// Removes the System V IPC object `id` of `kind` (`IPC_RMID`) in the current IPC namespace.
pub fn ipc_remove(kind: IpcKind, id: libc::c_int) -> io::Result<()> {
    // SAFETY: IPC_RMID takes no buffer (a null pointer is allowed); integer arguments only.
    check(unsafe {
        match kind {
            IpcKind::SharedMemory => libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()),
            IpcKind::Semaphores => libc::semctl(id, 0, libc::IPC_RMID),
            IpcKind::MessageQueue => libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()),
        }
    })?;
    Ok(())
}

/// Brings the loopback interface of the current network namespace up.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads a `struct ifreq`, which `req` is, for the whole call.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) })?;
    Ok(())
}

/// Result of [`clone_process`] in the caller.
pub enum Forked {
    /// We are the child.
    Child,
    /// We are the parent; the child's pid (in our pid namespace) and a pidfd for it.
    Parent { pid: libc::pid_t, pidfd: OwnedFd },
}

/// A pipe; both ends close on exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: the kernel returned two fresh descriptors that nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `read(2)` into `buf` on a raw descriptor (in forked children); the number of bytes read.
pub fn read_raw(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is writable for its whole length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n == -1 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        return Ok(n as usize);
    }
}

/// Fork-like `clone(2)` with namespace flags (and `CLONE_PARENT`) and `CLONE_PIDFD`.
///
/// # Safety
/// The caller must be single-threaded: the child continues on a copy of the caller's stack and
/// memory, and any lock another thread held would stay locked forever in the child.
pub unsafe fn clone_process(flags: libc::c_int) -> io::Result<Forked> {
    let mut pidfd: libc::c_int = -1;
    let flags = (flags | libc::CLONE_PIDFD | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: with a null stack the kernel gives the child a copy of our stack (fork semantics),
    // which is sound because the caller guarantees it is single-threaded. `pidfd` is a valid
    // out-pointer for CLONE_PIDFD (x86_64 and aarch64 take parent_tid as the third argument).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            std::ptr::null_mut::<libc::c_void>(),
            &mut pidfd as *mut libc::c_int,
            std::ptr::null_mut::<libc::c_void>(),
            0usize,
        )
    };
    match check_long(ret)? {
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent {
            pid: pid as libc::pid_t,
            // SAFETY: the kernel returned a fresh pidfd for the child, owned by nobody else.
            pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        }),
    }
}

/// Plain `fork(2)` without a pidfd.
///
/// # Safety
/// As for [`clone_process`]: the caller must be single-threaded.
pub unsafe fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: the caller guarantees it is single-threaded, so the child inherits no held locks.
    check(unsafe { libc::fork() })
}

/// Sends `signal` to the process behind `pidfd` (race-free against pid reuse).
pub fn pidfd_send_signal(pidfd: RawFd, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a null siginfo and no flags; `pidfd` is only read.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })?;
    Ok(())
}

/// `kill(2)`.
pub fn kill(pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill(2) has no memory arguments.
    check(unsafe { libc::kill(pid, signal) })?;
    Ok(())
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

/// `waitpid(pid, WNOHANG)`: `None` while no child (of `pid`, or any when -1) has ended.
pub fn try_wait(pid: libc::pid_t) -> io::Result<Option<(libc::pid_t, ExitStatus)>> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a valid out-pointer for the duration of the call.
    let ret = check(unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) })?;
    if ret == 0 {
        return Ok(None);
    }
    let how = if libc::WIFSIGNALED(status) {
        ExitStatus::Signaled(libc::WTERMSIG(status))
    } else {
        ExitStatus::Exited(libc::WEXITSTATUS(status))
    };
    Ok(Some((ret, how)))
}

/// `prctl(2)` with one argument.
pub fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the options we use take integer arguments only.
    check(unsafe { libc::prctl(option, arg, 0, 0, 0) })?;
    Ok(())
}

/// Drops every capability from the bounding set (needs CAP_SETPCAP, so call before setuid).
pub fn drop_bounding_set() -> io::Result<()> {
    for cap in 0..=63 {
        // SAFETY: PR_CAPBSET_DROP takes an integer capability number.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if ret == -1 {
            let err = io::Error::last_os_error();
            // EINVAL: past the last capability this kernel knows.
            if err.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(err);
        }
    }
    Ok(())
}

/// Becomes `uid`/`gid` with no supplementary groups. Going from root to a non-zero uid clears the
/// permitted, effective and ambient capability sets.
pub fn become_user(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: setgroups with size 0 never reads the (null) list.
    check(unsafe { libc::setgroups(0, std::ptr::null()) })?;
    // SAFETY: plain integer arguments.
    check(unsafe { libc::setresgid(gid, gid, gid) })?;
    // SAFETY: plain integer arguments.
    check(unsafe { libc::setresuid(uid, uid, uid) })?;
    Ok(())
}

/// `setrlimit(2)`.
pub fn setrlimit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit for the duration of the call.
    check(unsafe { libc::setrlimit(resource, &lim) })?;
    Ok(())
}

/// Installs a seccomp BPF program on the calling thread (needs no_new_privs or CAP_SYS_ADMIN).
pub fn seccomp_install(filter: &[libc::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: filter.len() as libc::c_ushort,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `filter`, which lives for the whole call; the kernel copies it.
    check(unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog as libc::c_ulong,
            0,
            0,
        )
    })?;
    Ok(())
}

/// Resets every signal's disposition to default and unblocks all signals, so that a program we
/// exec does not inherit the ignored SIGCHLD or blocked signals of its launcher.
pub fn reset_signals() -> io::Result<()> {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL is always a valid handler; errors (e.g. reserved signals) are ignored.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    set_sigmask(&[], libc::SIG_SETMASK)
}

/// Changes the signal mask: `how` is SIG_BLOCK, SIG_UNBLOCK or SIG_SETMASK.
pub fn set_sigmask(signals: &[libc::c_int], how: libc::c_int) -> io::Result<()> {
    // SAFETY: sigset_t is plain data and sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for &sig in signals {
        // SAFETY: `set` is a valid sigset_t; invalid numbers make sigaddset fail harmlessly.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    // SAFETY: `set` is valid; the old mask is not requested.
    check(unsafe { libc::sigprocmask(how, &set, std::ptr::null_mut()) })?;
    Ok(())
}

/// Sets SIGCHLD to be ignored, so the kernel reaps our children for us.
pub fn ignore_sigchld() {
    // SAFETY: SIG_IGN is a valid disposition for SIGCHLD.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
}

/// A signalfd reading the given (already blocked) signals.
pub fn signalfd(signals: &[libc::c_int]) -> io::Result<OwnedFd> {
    // SAFETY: as in set_sigmask.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for &sig in signals {
        // SAFETY: `set` is a valid sigset_t.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    // SAFETY: `set` is valid for the call; -1 asks for a new descriptor.
    let fd = check(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
    // SAFETY: the kernel returned a fresh descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Drains a signalfd (nonblocking).
pub fn drain_signalfd(fd: RawFd) {
    let mut buf = [0u8; std::mem::size_of::<libc::signalfd_siginfo>() * 8];
    loop {
        // SAFETY: `buf` is writable for its whole length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n <= 0 {
            break;
        }
    }
}

/// `poll(2)` on several descriptors for readability; returns which are ready.
pub fn poll_readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structures.
        let ret = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
        if ret == -1 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        return Ok(pfds.iter().map(|p| p.revents != 0).collect());
    }
}

/// Socket type for [`socketpair`].
#[derive(Clone, Copy)]
pub enum SocketKind {
    /// Byte stream: invocation traffic.
    Stream,
    /// Message boundaries and descriptor passing: control traffic.
    SeqPacket,
}

/// A Unix socket pair; both ends close on exec.
pub fn socketpair(kind: SocketKind) -> io::Result<(OwnedFd, OwnedFd)> {
    let ty = match kind {
        SocketKind::Stream => libc::SOCK_STREAM,
        SocketKind::SeqPacket => libc::SOCK_SEQPACKET,
    } | libc::SOCK_CLOEXEC;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    check(unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) })?;
    // SAFETY: the kernel returned two fresh descriptors that nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Most descriptors one message may carry.
pub const MAX_FDS: usize = 16;

/// Sends one message with descriptors attached (SCM_RIGHTS).
pub fn send_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS, "too many descriptors in one message");
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // Room for the largest control message we send, aligned as cmsghdr requires.
    let mut cbuf = [0u64; 32];
    // SAFETY: msghdr is plain data; all-zero is valid and we fill the fields we use.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let payload = std::mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
        msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `cbuf`, large enough for one header plus MAX_FDS ints,
        // so CMSG_FIRSTHDR is non-null and CMSG_DATA has room for `fds`.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr() as *const u8,
                libc::CMSG_DATA(cmsg),
                payload as usize,
            );
        }
    }
    loop {
        // SAFETY: `msg` and everything it points to live until the call returns.
        let ret = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if ret == -1 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        return Ok(());
    }
}

/// What one `recvmsg(2)` got: bytes, descriptors (SCM_RIGHTS, made close-on-exec) and the
/// sender's pid (SCM_CREDENTIALS).
struct Received {
    len: usize,
    fds: Vec<OwnedFd>,
    pid: Option<libc::pid_t>,
}

/// One `recvmsg(2)` into `buf`, collecting whatever control messages came with it.
fn recv_message(sock: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<Received> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // Room for MAX_FDS descriptors and a `struct ucred`, aligned as cmsghdr requires.
    let mut cbuf = [0u64; 40];
    // SAFETY: msghdr is plain data; all-zero is valid and we fill the fields we use.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    let len = loop {
        // SAFETY: `msg` points at `iov`/`buf` and `cbuf`, all live and writable for the call.
        let ret = unsafe { libc::recvmsg(sock, &mut msg, flags | libc::MSG_CMSG_CLOEXEC) };
        if ret == -1 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        break ret as usize;
    };
    let mut fds = Vec::new();
    let mut pid = None;
    // SAFETY: the kernel filled `msg`'s control area; CMSG_FIRSTHDR/NXTHDR walk it within
    // msg_controllen; an SCM_RIGHTS payload holds cmsg_len - CMSG_LEN(0) bytes of ints, an
    // SCM_CREDENTIALS payload one `struct ucred`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET {
                if (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let bytes = (*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize;
                    let data = libc::CMSG_DATA(cmsg) as *const libc::c_int;
                    for i in 0..bytes / std::mem::size_of::<libc::c_int>() {
                        fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                    }
                } else if (*cmsg).cmsg_type == libc::SCM_CREDENTIALS {
                    let cred: libc::ucred =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::ucred);
                    pid = Some(cred.pid);
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Received { len, fds, pid })
}

/// Receives one message and the descriptors attached to it (made close-on-exec).
/// Returns `Ok(None)` at end of stream. With `nonblock`, `WouldBlock` means nothing is waiting.
pub fn recv_with_fds(
    sock: RawFd,
    buf: &mut [u8],
    nonblock: bool,
) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    let flags = if nonblock { libc::MSG_DONTWAIT } else { 0 };
    let got = recv_message(sock, buf, flags)?;
    if got.len == 0 && got.fds.is_empty() {
        return Ok(None);
    }
    Ok(Some((got.len, got.fds)))
}

/// `dup2(2)` onto a fixed descriptor number (the result is not close-on-exec).
pub fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    if from == to {
        // dup2 would leave CLOEXEC set; clear it instead.
        // SAFETY: fcntl F_SETFD with an integer argument.
        check(unsafe { libc::fcntl(from, libc::F_SETFD, 0) })?;
        return Ok(());
    }
    // SAFETY: plain integer arguments.
    check(unsafe { libc::dup2(from, to) })?;
    Ok(())
}

/// Closes every descriptor from `first` up, except those in `keep`.
pub fn close_fds_from(first: RawFd, keep: &[RawFd]) {
    let max = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
            .max()
            .unwrap_or(first),
        Err(_) => 1024,
    };
    for fd in first..=max {
        if !keep.contains(&fd) {
            // SAFETY: closing a descriptor we may or may not own; nothing else in this
            // single-threaded process uses the ones we close.
            unsafe { libc::close(fd) };
        }
    }
}

/// Marks a descriptor nonblocking.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with integer arguments.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: fcntl with integer arguments.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// Marks a descriptor blocking.
pub fn set_blocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with integer arguments.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: fcntl with integer arguments.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) })?;
    Ok(())
}

/// `execve(2)`; only returns on failure.
pub fn execve(path: &CStr, argv: &[CString], envp: &[CString]) -> io::Error {
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    // SAFETY: both arrays are NULL-terminated and point at strings owned by the caller.
    unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr()) };
    io::Error::last_os_error()
}

/// `_exit(2)`: leaves without running destructors or atexit handlers (for forked children).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// `open_tree(2)` with `OPEN_TREE_CLONE`: a detached copy of the mount at `path`, which can be
/// sent to another mount namespace and attached there with [`move_mount_to`].
pub fn open_tree_clone(path: &Path, recursive: bool) -> io::Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    let path = cstr(path)?;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: `path` is a valid NUL-terminated string for the call.
    let fd = check_long(unsafe {
        libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags)
    })?;
    // SAFETY: the kernel returned a fresh descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `move_mount(2)` of a detached tree (from [`open_tree_clone`]) onto `target`.
pub fn move_mount_to(tree: RawFd, target: &Path) -> io::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    let target = cstr(target)?;
    let empty = c"";
    // SAFETY: both strings are valid for the call; `tree` is only read.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree,
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })?;
    Ok(())
}

/// `MOUNT_ATTR_*` flags for [`mount_setattr`].
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// `mount_setattr(2)` setting `attrs` (`MOUNT_ATTR_*`) on the tree behind `fd`, recursively.
pub fn mount_setattr(fd: RawFd, attrs: u64) -> io::Result<()> {
    const AT_EMPTY_PATH: libc::c_uint = 0x1000;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let empty = c"";
    // SAFETY: `attr` is a correctly laid out mount_attr that lives for the call, and its size is
    // passed alongside; the empty path with AT_EMPTY_PATH refers to `fd` itself.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            empty.as_ptr(),
            AT_EMPTY_PATH | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(())
}

/// Makes the tree behind `fd` read-only, nosuid and nodev (recursively).
pub fn mount_tree_readonly(fd: RawFd) -> io::Result<()> {
    mount_setattr(fd, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)
}

/// The current process id.
pub fn getpid() -> libc::pid_t {
    // SAFETY: getpid has no arguments and cannot fail.
    unsafe { libc::getpid() }
}

/// Writes all of `data` to a raw descriptor (used in forked children, before exec).
pub fn write_all_raw(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: `data` is readable for its whole length.
        let n = unsafe { libc::write(fd, data.as_ptr() as *const libc::c_void, data.len()) };
        if n == -1 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// Duplicates a descriptor to a new close-on-exec one.
pub fn dup_cloexec(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl F_DUPFD_CLOEXEC with integer arguments.
    let new = check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: the kernel returned a fresh descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Points standard input at `/dev/null` (after its socket was moved elsewhere).
pub fn close_stdin() {
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = dup2(null.as_raw_fd(), 0);
    }
}

/// Closes a raw descriptor this process owns but holds no `OwnedFd` for (in a forked child).
pub fn close_raw(fd: RawFd) {
    // SAFETY: the caller names a descriptor it owns and will not use again.
    unsafe { libc::close(fd) };
}

/// SIGKILLs the process behind a pidfd.
pub fn pidfd_kill(pidfd: RawFd) -> io::Result<()> {
    pidfd_send_signal(pidfd, libc::SIGKILL)
}

/// Sets the calling thread's name as `ps` shows it (at most 15 bytes).
pub fn set_process_name(name: &CStr) {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes, which `name` is
    // (longer names are truncated by the kernel).
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

/// `pidfd_open(2)`: a pidfd for an existing process.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open with integer arguments; the result is checked.
    let fd = check_long(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the kernel returned a fresh descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// SIGSTOPs the process behind a pidfd (pausing an idle zygote).
pub fn pidfd_stop(pidfd: RawFd) -> io::Result<()> {
    pidfd_send_signal(pidfd, libc::SIGSTOP)
}

/// SIGCONTs the process behind a pidfd.
pub fn pidfd_resume(pidfd: RawFd) -> io::Result<()> {
    pidfd_send_signal(pidfd, libc::SIGCONT)
}

/// `setns(2)`: moves the calling thread into the namespace behind `fd` (`nstype` one
/// `CLONE_NEW*` flag, or 0 for any). For a user namespace or a mount namespace the caller must be
/// single-threaded; for a pid namespace only the caller's future children are affected.
pub fn setns(fd: RawFd, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: setns(2) takes a descriptor and an integer; `fd` is only read.
    check(unsafe { libc::setns(fd, nstype) })?;
    Ok(())
}

/// Opens `/proc/self/ns/<name>` (for instance `mnt`, `pid`, `user`): a descriptor that keeps
/// the namespace alive and lets another process enter it with [`setns`].
pub fn open_own_namespace(name: &str) -> io::Result<OwnedFd> {
    let file = std::fs::File::open(format!("/proc/self/ns/{name}"))?;
    Ok(OwnedFd::from(file))
}

/// `prctl(PR_SET_DUMPABLE, 0)`: the process's memory, descriptors and `/proc` entries become
/// inaccessible to processes without CAP_SYS_PTRACE in the initial user namespace, even to
/// processes of the same user; inherited by forked children.
pub fn set_not_dumpable() -> io::Result<()> {
    prctl(libc::PR_SET_DUMPABLE, 0)
}

/// Keeps exactly the capabilities `keep` (numbers as in `linux/capability.h`): drops every
/// other one from the bounding set, then sets the permitted and effective sets to `keep` and
/// the inheritable set to nothing. Needs CAP_SETPCAP (for the bounding set).
pub fn keep_capabilities(keep: &[u32]) -> io::Result<()> {
    for cap in 0..=63u32 {
        if keep.contains(&cap) {
            continue;
        }
        // SAFETY: PR_CAPBSET_DROP takes an integer capability number.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if ret == -1 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(err);
        }
    }
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut mask = 0u64;
    for &cap in keep {
        mask |= 1u64 << cap;
    }
    let low = mask as u32;
    let high = (mask >> 32) as u32;
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: low,
            permitted: low,
            inheritable: 0,
        },
        CapData {
            effective: high,
            permitted: high,
            inheritable: 0,
        },
    ];
    // SAFETY: capset reads a version-3 header and two data structures, which `header` and
    // `data` are, laid out as the kernel defines them; both outlive the call.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    })?;
    Ok(())
}

/// Makes later messages on `sock` carry the sender's credentials (`SO_PASSCRED`), read with
/// [`recv_with_credentials`]. The kernel fills them in, translated into the receiver's pid
/// namespace; a sender can only claim another process with CAP_SYS_ADMIN over its own pid
/// namespace.
pub fn set_passcred(sock: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads an int of the given size from `one`, which outlives the call.
    check(unsafe {
        libc::setsockopt(
            sock,
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Receives up to `buf.len()` bytes and the sender's pid (from `SCM_CREDENTIALS`, see
/// [`set_passcred`]). `Ok(None)` at end of stream. Descriptors an unexpected SCM_RIGHTS message
/// carries are closed, not leaked.
pub fn recv_with_credentials(
    sock: RawFd,
    buf: &mut [u8],
) -> io::Result<Option<(usize, Option<libc::pid_t>)>> {
    let got = recv_message(sock, buf, 0)?;
    if got.len == 0 {
        return Ok(None);
    }
    Ok(Some((got.len, got.pid)))
}

/// The pid of the process behind `pidfd` in the caller's pid namespace (from
/// `/proc/self/fdinfo`), or `None` if it has exited or is not visible here.
pub fn pidfd_pid(pidfd: RawFd) -> io::Result<Option<libc::pid_t>> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{pidfd}"))?;
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse::<libc::pid_t>().ok());
    Ok(pid.filter(|&p| p > 0))
}
