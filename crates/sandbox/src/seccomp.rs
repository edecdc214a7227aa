//! The seccomp filters instances and zygotes run under.
//!
//! A deny list on top of what dropping root already removes: system calls that reach kernel
//! surfaces a function has no business with (mounting, namespaces, modules, tracing, keyrings,
//! BPF, io_uring, ...) fail with `EPERM`; a foreign architecture or x32 call kills the process.
//! `clone` is allowed only without namespace flags, and `clone3` reports `ENOSYS`, which makes
//! the C library fall back to `clone`, whose flags the filter can inspect. Sockets are limited
//! to the families functions need: Unix, IPv4, IPv6 and route netlink (which the C library's
//! `getaddrinfo` uses); anything else (AF_VSOCK, which is not namespaced; packet, other netlink
//! families, ...) fails with `EAFNOSUPPORT`.
//!
//! A zygote runs package import-time code, so it gets the same filter, except that it may call
//! `setns` (to place its children into their sandboxes). Its children install the instance
//! filter on top before running function code; stacked filters only ever narrow, so the two
//! must agree on everything else.

/// Host architecture as seen in `seccomp_data.arch`.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_JMP_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;

/// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0_LO: u32 = 16;

/// The capabilities a zygote keeps, in its own user namespace only: CAP_SETGID, CAP_SETUID
/// (its children become the function's user), CAP_SETPCAP (they empty their bounding set),
/// CAP_SYS_CHROOT and CAP_SYS_ADMIN (`setns` into the namespaces of a sandbox the zygote's user
/// namespace owns).
pub const ZYGOTE_CAPABILITIES: &[u32] = &[6, 7, 8, 18, 21];

/// Namespace flags `clone` may not use.
const NS_FLAGS: u32 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWCGROUP) as u32;

/// System calls an instance may not make.
const DENIED: &[libc::c_long] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_syslog,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_quotactl,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_pidfd_getfd,
    libc::SYS_fanotify_init,
    libc::SYS_lookup_dcookie,
    libc::SYS_vhangup,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_uselib,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_modify_ldt,
];

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Offset of a system call's third argument (low 32 bits) in `struct seccomp_data`.
const OFF_ARG2_LO: u32 = 32;

/// Who a filter is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Profile {
    Instance,
    Zygote,
}

/// Builds the instance filter as a BPF program.
pub fn instance_filter() -> Vec<libc::sock_filter> {
    filter(Profile::Instance)
}

/// Builds the zygote filter as a BPF program (see the module documentation).
pub fn zygote_filter() -> Vec<libc::sock_filter> {
    filter(Profile::Zygote)
}

/// The socket rules: `socket(2)` of an allowed family passes, anything else fails with
/// EAFNOSUPPORT; `socketpair(2)` only for AF_UNIX. Expects the system call number in the
/// accumulator and leaves it there for calls it does not handle.
fn socket_rules() -> Vec<libc::sock_filter> {
    let allow = stmt(BPF_RET_K, RET_ALLOW);
    let refuse = stmt(BPF_RET_K, RET_ERRNO | libc::EAFNOSUPPORT as u32);
    let family = |f: libc::c_int| f as u32;
    let mut socket = vec![
        stmt(BPF_LD_W_ABS, OFF_ARG0_LO),
        jump(BPF_JMP_JEQ_K, family(libc::AF_UNIX), 0, 0),
        jump(BPF_JMP_JEQ_K, family(libc::AF_INET), 0, 0),
        jump(BPF_JMP_JEQ_K, family(libc::AF_INET6), 0, 0),
    ];
    // AF_NETLINK: only NETLINK_ROUTE (protocol 0, the third argument).
    socket.push(jump(BPF_JMP_JEQ_K, family(libc::AF_NETLINK), 0, 3));
    socket.push(stmt(BPF_LD_W_ABS, OFF_ARG2_LO));
    socket.push(jump(BPF_JMP_JEQ_K, libc::NETLINK_ROUTE as u32, 0, 1));
    let allow_at = socket.len();
    // Point the family matches at `allow`.
    for (i, ins) in socket.iter_mut().enumerate().skip(1).take(3) {
        ins.jt = (allow_at - i - 1) as u8;
    }
    socket.push(allow);
    socket.push(refuse);
    let mut prog = vec![jump(
        BPF_JMP_JEQ_K,
        libc::SYS_socket as u32,
        0,
        socket.len() as u8,
    )];
    prog.extend(socket);
    prog.extend([
        jump(BPF_JMP_JEQ_K, libc::SYS_socketpair as u32, 0, 4),
        stmt(BPF_LD_W_ABS, OFF_ARG0_LO),
        jump(BPF_JMP_JEQ_K, family(libc::AF_UNIX), 0, 1),
        allow,
        refuse,
    ]);
    prog
}

fn filter(profile: Profile) -> Vec<libc::sock_filter> {
    let eperm = RET_ERRNO | libc::EPERM as u32;
    let enosys = RET_ERRNO | libc::ENOSYS as u32;
    let mut prog = vec![
        stmt(BPF_LD_W_ABS, OFF_ARCH),
        jump(BPF_JMP_JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(BPF_RET_K, RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, OFF_NR),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        // x32 system calls (the __X32_SYSCALL_BIT range) would bypass the numbers below.
        prog.push(jump(BPF_JMP_JGE_K, 0x4000_0000, 0, 1));
        prog.push(stmt(BPF_RET_K, RET_KILL_PROCESS));
    }
    // clone: inspect the flags (low 32 bits of the first argument).
    prog.push(jump(BPF_JMP_JEQ_K, libc::SYS_clone as u32, 0, 4));
    prog.push(stmt(BPF_LD_W_ABS, OFF_ARG0_LO));
    prog.push(jump(BPF_JMP_JSET_K, NS_FLAGS, 0, 1));
    prog.push(stmt(BPF_RET_K, eperm));
    prog.push(stmt(BPF_RET_K, RET_ALLOW));
    prog.push(jump(BPF_JMP_JEQ_K, libc::SYS_clone3 as u32, 0, 1));
    prog.push(stmt(BPF_RET_K, enosys));
    prog.extend(socket_rules());
    for &nr in DENIED {
        if profile == Profile::Zygote && nr == libc::SYS_setns {
            continue;
        }
        prog.push(jump(BPF_JMP_JEQ_K, nr as u32, 0, 1));
        prog.push(stmt(BPF_RET_K, eperm));
    }
    prog.push(stmt(BPF_RET_K, RET_ALLOW));
    prog
}

/// The instance filter as raw `struct sock_filter` bytes (native endianness), for a zygote to
/// install in the instances it forks.
pub fn instance_filter_bytes() -> Vec<u8> {
    let mut out = Vec::new();
    for ins in instance_filter() {
        out.extend_from_slice(&ins.code.to_ne_bytes());
        out.push(ins.jt);
        out.push(ins.jf);
        out.extend_from_slice(&ins.k.to_ne_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_well_formed() {
        for prog in [instance_filter(), zygote_filter()] {
            assert!(prog.len() < 4096);
            // Every jump lands inside the program.
            for (i, ins) in prog.iter().enumerate() {
                if ins.code & 0x07 == 0x05 {
                    assert!(i + 1 + (ins.jt as usize) < prog.len());
                    assert!(i + 1 + (ins.jf as usize) < prog.len());
                }
            }
            assert_eq!(prog.last().map(|i| i.k), Some(RET_ALLOW));
        }
    }

    /// Runs `probe` in a forked child under `prog`; the child's exit code is the probe's.
    fn under_filter(prog: &[libc::sock_filter], probe: fn() -> i32) -> i32 {
        // SAFETY: the child only makes raw system calls and leaves with _exit, so forking from
        // the multi-threaded test harness is sound.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = crate::sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1).is_ok()
                && crate::sys::seccomp_install(prog).is_ok();
            crate::sys::exit_now(if ok { probe() } else { 100 });
        }
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "child died: {status:#x}");
        libc::WEXITSTATUS(status)
    }

    /// 0 if socket(domain, SOCK_DGRAM, proto) succeeds, 1 on EAFNOSUPPORT, 2 otherwise.
    fn socket_result(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> i32 {
        // SAFETY: socket(2) with integer arguments; the descriptor is closed right away.
        let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
        if fd >= 0 {
            // SAFETY: we own `fd`.
            unsafe { libc::close(fd) };
            return 0;
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAFNOSUPPORT) => 1,
            _ => 2,
        }
    }

    fn instance_sockets() -> i32 {
        let expect = [
            (libc::AF_UNIX, libc::SOCK_DGRAM, 0, 0),
            (libc::AF_INET, libc::SOCK_DGRAM, 0, 0),
            (libc::AF_INET6, libc::SOCK_DGRAM, 0, 0),
            (libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE, 0),
            (libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_AUDIT, 1),
            (libc::AF_VSOCK, libc::SOCK_STREAM, 0, 1),
            (libc::AF_PACKET, libc::SOCK_DGRAM, 0, 1),
        ];
        for (i, (d, t, p, want)) in expect.into_iter().enumerate() {
            if socket_result(d, t, p) != want {
                return 10 + i as i32;
            }
        }
        0
    }

    fn zygote_sockets() -> i32 {
        if socket_result(libc::AF_UNIX, libc::SOCK_STREAM, 0) != 0 {
            return 10;
        }
        if socket_result(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_AUDIT) != 1 {
            return 11;
        }
        if socket_result(libc::AF_VSOCK, libc::SOCK_STREAM, 0) != 1 {
            return 12;
        }
        // setns is allowed (it fails for lack of a namespace descriptor, not with EPERM).
        // SAFETY: setns with an invalid descriptor only returns an error.
        let r = unsafe { libc::setns(-1, 0) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        if r != -1 || errno != Some(libc::EBADF) {
            return 13;
        }
        // unshare is not.
        // SAFETY: unshare with an integer argument.
        let r = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        if r != -1 || errno != Some(libc::EPERM) {
            return 14;
        }
        0
    }

    #[test]
    fn socket_families_are_limited() {
        assert_eq!(under_filter(&instance_filter(), instance_sockets), 0);
        assert_eq!(under_filter(&zygote_filter(), zygote_sockets), 0);
    }

    /// Installs the filter in a forked child (seccomp needs only no_new_privs, not root) and
    /// checks that a denied call fails with EPERM while an allowed one still works.
    #[test]
    fn denies_unshare_and_allows_getpid() {
        let prog = instance_filter();
        // SAFETY: the child only makes raw system calls (no allocation, no locks) and leaves
        // with _exit, so forking from the multi-threaded test harness is sound.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = (|| {
                crate::sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1).ok()?;
                crate::sys::seccomp_install(&prog).ok()?;
                // SAFETY: unshare with an integer argument.
                let r = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
                let errno = std::io::Error::last_os_error().raw_os_error();
                if r != -1 || errno != Some(libc::EPERM) {
                    return None;
                }
                // SAFETY: getpid has no arguments.
                (unsafe { libc::getpid() } > 0).then_some(0)
            })()
            .unwrap_or(1);
            crate::sys::exit_now(code);
        }
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "child died: {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0);
    }
}
