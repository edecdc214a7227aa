//! The seccomp filter every instance runs under.
//!
//! A deny list on top of what dropping root already removes: system calls that reach kernel
//! surfaces a function has no business with (mounting, namespaces, modules, tracing, keyrings,
//! BPF, io_uring, ...) fail with `EPERM`; a foreign architecture or x32 call kills the process.
//! `clone` is allowed only without namespace flags, and `clone3` reports `ENOSYS`, which makes
//! the C library fall back to `clone`, whose flags the filter can inspect.

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

/// Builds the instance filter as a BPF program.
pub fn instance_filter() -> Vec<libc::sock_filter> {
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
    for &nr in DENIED {
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
    fn program_is_well_formed() {
        let prog = instance_filter();
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
