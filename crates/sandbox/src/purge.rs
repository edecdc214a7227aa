//! Making a live sandbox clean for another function (the `switch` start method): run by the
//! sandbox's init, pid 1 of its pid namespace, which survives so that the namespace stays
//! usable. Everything the previous function could leave behind goes: its processes (daemons,
//! fork bombs), System V IPC objects and POSIX message queues, `/tmp` (POSIX shared memory lives there too, `/dev/shm`
//! points at it), the hostname and domain name, and the package entries of `/packages` the next
//! function does not name. The root, `/dev` and every other mount are read-only; abstract Unix
//! sockets die with the processes holding them, and init holds no descriptor of theirs.

use crate::{rootfs, sys};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long killing every process may take before the purge fails.
const KILL_DEADLINE: Duration = Duration::from_secs(5);

/// What a purge resets the sandbox to.
#[derive(Debug, Clone)]
pub struct Clean<'a> {
    pub hostname: &'a str,
    /// The domain name the sandbox started with.
    pub domainname: &'a str,
    /// Size of the fresh `/tmp`.
    pub tmp_bytes: u64,
    /// Package entries of `/packages` to keep.
    pub packages: &'a [String],
    /// Where the package entries are.
    pub packages_dir: &'a Path,
}

/// Runs every step; returns the package entries kept.
pub fn purge(clean: &Clean<'_>) -> Result<Vec<String>, String> {
    kill_all().map_err(|e| format!("killing processes: {e}"))?;
    remove_ipc_objects().map_err(|e| format!("removing System V IPC objects: {e}"))?;
    rootfs::fresh_tmp(Path::new("/tmp"), clean.tmp_bytes).map_err(|e| e.to_string())?;
    remove_posix_message_queues().map_err(|e| format!("removing POSIX message queues: {e}"))?;
    sys::sethostname(clean.hostname).map_err(|e| format!("setting hostname: {e}"))?;
    sys::setdomainname(clean.domainname).map_err(|e| format!("setting domain name: {e}"))?;
    prune_packages(clean.packages_dir, clean.packages)
        .map_err(|e| format!("removing package entries: {e}"))
}

/// The domain name of the current UTS namespace (read once by init, to restore it).
pub fn domainname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/domainname")
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "(none)".into())
}

/// Kills every process of the pid namespace but init, until none is left but zombies of
/// parents outside it (a zygote's forked child, reaped by the zygote).
pub fn kill_all() -> io::Result<()> {
    // From pid 1, kill(-1) reaches every other process of the namespace. Anywhere else (a
    // sandbox sharing the host's pid namespace) it would reach the whole machine.
    if sys::getpid() != 1 {
        return Err(io::Error::other(
            "this sandbox has no pid namespace of its own",
        ));
    }
    let deadline = Instant::now() + KILL_DEADLINE;
    loop {
        // A process forking as it is signalled leaves a child the next round reaches.
        match sys::kill(-1, libc::SIGKILL) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(e),
        }
        while let Ok(Some(_)) = sys::try_wait(-1) {}
        if living_processes()? == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::from(io::ErrorKind::TimedOut));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Processes of the namespace (its `/proc`) other than init, not counting zombies.
fn living_processes() -> io::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc")? {
        let name = entry?.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == 1 {
            continue;
        }
        // Gone meanwhile: not living.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The state follows the command name's closing parenthesis.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if state != Some('Z') && state != Some('X') {
            n += 1;
        }
    }
    Ok(n)
}

/// Removes every shared memory segment, semaphore set and message queue of the IPC namespace.
fn remove_ipc_objects() -> io::Result<()> {
    for (file, kind) in [
        ("/proc/sysvipc/shm", sys::IpcKind::SharedMemory),
        ("/proc/sysvipc/sem", sys::IpcKind::Semaphores),
        ("/proc/sysvipc/msg", sys::IpcKind::MessageQueue),
    ] {
        for id in ipc_ids(&std::fs::read_to_string(file)?) {
            match sys::ipc_remove(kind, id) {
                // Removed meanwhile.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                other => other?,
            }
        }
    }
    Ok(())
}

/// POSIX message queues (`mq_open`) belong to the IPC namespace as well, and no `/proc` table
/// lists them: an mqueue filesystem, mounted for the purpose in the fresh `/tmp` (nothing of the
/// previous function's is there, and none of its processes is left), lists them, and unlinking
/// an entry there removes the queue.
fn remove_posix_message_queues() -> io::Result<()> {
    let dir = Path::new("/tmp/.kindling-mqueue");
    std::fs::create_dir(dir)?;
    sys::mount(
        Some(Path::new("mqueue")),
        dir,
        Some("mqueue"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )?;
    let removed = std::fs::read_dir(dir).and_then(|mut entries| {
        entries.try_for_each(|e| e.and_then(|e| std::fs::remove_file(e.path())))
    });
    sys::umount2(dir, libc::MNT_DETACH)?;
    std::fs::remove_dir(dir)?;
    removed
}

/// The ids (second column) of a `/proc/sysvipc` table.
fn ipc_ids(table: &str) -> Vec<libc::c_int> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

/// Unmounts and removes the entries of `dir` not in `keep`; returns those left.
fn prune_packages(dir: &Path, keep: &[String]) -> io::Result<Vec<String>> {
    let mut kept = Vec::new();
    let mut gone = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(kept),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if keep.contains(&name) {
            kept.push(name);
        } else {
            gone.push(dir.join(name));
        }
    }
    for entry in &gone {
        unmount_all(entry)?;
    }
    rootfs::remove_package_entries(&gone)?;
    Ok(kept)
}

/// Peels off every mount at `target` (EINVAL: nothing is mounted there).
pub(crate) fn unmount_all(target: &Path) -> io::Result<()> {
    loop {
        match sys::umount2(target, libc::MNT_DETACH) {
            Ok(()) => continue,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipc_table_ids() {
        let table = "       key      shmid perms                  size  cpid  lpid nattch\n\
                     \x20  1234        0   600  4096 10 10 0\n\
                     \x20     0    32769   600  4096 10 10 0\n";
        assert_eq!(ipc_ids(table), vec![0, 32769]);
        assert!(ipc_ids("key semid perms\n").is_empty());
    }
}
