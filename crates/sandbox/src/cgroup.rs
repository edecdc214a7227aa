//! Cgroups of sandboxes: finding the memory, cpu and pids controllers (cgroup v1, v2 or a hybrid
//! of both) and the freezer, creating one cgroup per sandbox under a directory Kindling owns in
//! each hierarchy, writing its limits, reading its usage, freezing and thawing it, and killing and
//! removing it, including the ones a crashed worker left behind.
//!
//! Everything here is plain file access to cgroupfs; signals go through [`crate::sys::kill`].

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::sys;

/// CFS period used for cpu limits: quotas are expressed per 100 ms.
const CPU_PERIOD_US: u64 = 100_000;
/// The kernel refuses cpu quotas under 1 ms.
const MIN_CPU_QUOTA_US: u64 = 1_000;
/// How long [`Cgroup::kill_all`] keeps killing before giving up.
const KILL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`Cgroup::remove`] retries a busy directory while its processes exit.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between two looks at a cgroup that is emptying.
const POLL: Duration = Duration::from_millis(5);
/// How many times [`Cgroup::freeze`] moves the processes still outside the freezer cgroup in,
/// before concluding that they fork faster than it can move them.
const JOIN_ROUNDS: usize = 8;
/// An empty cgroup v1 freezer cgroup under the parent, kept frozen while the worker runs. The
/// kernel flips a static key (text patching on every CPU, ~150 µs here) whenever the number of
/// frozen v1 cgroups goes from 0 to 1 or back; with this one always frozen, freezing or thawing a
/// sandbox costs a few µs instead. Its name cannot clash with a sandbox's: [`CgroupManager::list`]
/// skips names that start with a dot.
const FREEZER_ANCHOR: &str = ".freezer-anchor";

/// A resource controller that Kindling limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Controller {
    Memory,
    Cpu,
    Pids,
}

impl Controller {
    /// Every controller Kindling needs, in the order they are reported.
    pub const ALL: [Controller; 3] = [Controller::Memory, Controller::Cpu, Controller::Pids];

    /// The kernel's name of the controller.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Pids => "pids",
        }
    }
}

impl fmt::Display for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Resource limits of one sandbox. `None` means unlimited, also when re-limiting a cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Memory limit in bytes; swap is not allowed on top of it.
    pub memory_bytes: Option<u64>,
    /// CPU bandwidth in cores (0.5 = half of one core).
    pub cpu_cores: Option<f64>,
    /// Maximum number of processes and threads.
    pub pids: Option<u64>,
}

/// A failure to find, configure, read, kill or remove a cgroup.
#[derive(thiserror::Error, Debug)]
pub enum CgroupError {
    #[error("no cgroup hierarchy provides the {0} controller")]
    ControllerMissing(Controller),
    #[error("invalid cgroup name {0:?}")]
    InvalidName(String),
    #[error("cannot read {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {value:?} to {}", .path.display())]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot remount {} with {options:?}", .path.display())]
    Remount {
        path: PathBuf,
        options: String,
        #[source]
        source: io::Error,
    },
    #[error("unexpected content in {}: {content:?}", .path.display())]
    Parse { path: PathBuf, content: String },
    #[error("cannot create {}", .path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot list {}", .path.display())]
    List {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot kill process {pid} of cgroup {name}")]
    Kill {
        name: String,
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("processes {pids:?} still in cgroup {name} after SIGKILL")]
    KillTimeout { name: String, pids: Vec<i32> },
    #[error("the processes of cgroup {name} fork faster than they can be moved to be frozen")]
    FreezerJoin { name: String },
    #[error("cannot remove {}", .path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The two cgroup interfaces; file names and value syntax differ between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// Where one controller is mounted, and in which version.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    version: Version,
    mount: PathBuf,
}

impl Version {
    /// The file that freezes a cgroup, and the values that freeze and thaw it.
    fn freezer_file(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Version::V1 => ("freezer.state", "FROZEN", "THAWED"),
            Version::V2 => ("cgroup.freeze", "1", "0"),
        }
    }
}

/// Knows where each controller lives and creates sandbox cgroups under
/// `<hierarchy>/<parent>/<name>`.
#[derive(Debug, Clone)]
pub struct CgroupManager {
    parent: String,
    memory: Hierarchy,
    cpu: Hierarchy,
    pids: Hierarchy,
    /// Where sandboxes are frozen: the cgroup2 mount (whose cgroups all have `cgroup.freeze`),
    /// else the v1 freezer hierarchy, else nowhere.
    freezer: Option<Hierarchy>,
    /// The cgroup2 mount, even when none of our controllers is on it (for the summary only).
    unified: Option<PathBuf>,
    /// The mount [`CgroupManager::favor_dynmods`] reconfigures: cgroup2 if mounted, else the
    /// memory hierarchy.
    dynmods_mount: Option<RemountTarget>,
}

/// A cgroup mount as mountinfo shows it, for a remount that keeps its options.
#[derive(Debug, Clone, PartialEq)]
struct RemountTarget {
    path: PathBuf,
    /// Per-mount options (`rw,nosuid,relatime`).
    mount_options: String,
    /// Superblock options (`rw,nsdelegate` or `rw,memory`).
    super_options: String,
}

impl RemountTarget {
    /// The `mount(2)` flags and data that add `favordynmods` and keep every other option, or
    /// `None` when the mount has it already.
    fn favordynmods_remount(&self) -> Option<(libc::c_ulong, String)> {
        let mut data: Vec<&str> = Vec::new();
        for opt in self.super_options.split(',') {
            match opt {
                "favordynmods" => return None,
                "rw" | "ro" | "" => {}
                other => data.push(other),
            }
        }
        data.push("favordynmods");
        let mut flags = libc::MS_REMOUNT;
        for opt in self.mount_options.split(',') {
            flags |= match opt {
                "ro" => libc::MS_RDONLY,
                "nosuid" => libc::MS_NOSUID,
                "nodev" => libc::MS_NODEV,
                "noexec" => libc::MS_NOEXEC,
                "noatime" => libc::MS_NOATIME,
                "nodiratime" => libc::MS_NODIRATIME,
                "relatime" => libc::MS_RELATIME,
                "strictatime" => libc::MS_STRICTATIME,
                _ => 0,
            };
        }
        Some((flags, data.join(",")))
    }
}

impl CgroupManager {
    /// Detects the layout from `/proc/self/mountinfo`: each of memory, cpu and pids comes from its
    /// cgroup v1 hierarchy when it has one, else from the cgroup2 mount if that mount's
    /// `cgroup.controllers` lists it. The freezer comes from the cgroup2 mount if there is one,
    /// even in a hybrid layout whose cgroup2 has no controllers, else from the v1 hierarchy:
    /// a process frozen by v2 still dies of SIGKILL, while one frozen by v1 waits to be thawed,
    /// so a worker killed while v1 froze its idle instances would leave them behind.
    /// `parent` is the directory Kindling owns under each hierarchy root, e.g. `kindling`.
    pub fn detect(parent: &str) -> Result<Self, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        let mountinfo = fs::read_to_string(path).map_err(|source| CgroupError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_mountinfo(&mountinfo, Path::new("/"), parent)
    }

    /// Like [`CgroupManager::detect`], from given mountinfo text; every mount point is taken
    /// relative to `fs_root`, so that tests can build a fake cgroupfs in a temporary directory.
    pub fn from_mountinfo(
        mountinfo: &str,
        fs_root: &Path,
        parent: &str,
    ) -> Result<Self, CgroupError> {
        check_name(parent)?;
        let mut v1: Vec<(Vec<&str>, PathBuf)> = Vec::new();
        let mut unified = None;
        let mut dynmods_mount = None;
        for mount in mountinfo.lines().filter_map(parse_mount) {
            let path = fs_root.join(mount.point.strip_prefix("/").unwrap_or(&mount.point));
            let target = RemountTarget {
                path: path.clone(),
                mount_options: mount.mount_options.to_string(),
                super_options: mount.super_options.to_string(),
            };
            match mount.fstype {
                "cgroup" => {
                    let opts: Vec<&str> = mount.super_options.split(',').collect();
                    if opts.contains(&"memory") && dynmods_mount.is_none() {
                        dynmods_mount = Some(target);
                    }
                    v1.push((opts, path));
                }
                "cgroup2" if unified.is_none() => {
                    unified = Some(path);
                    dynmods_mount = Some(target);
                }
                _ => {}
            }
        }
        // An unreadable cgroup.controllers offers nothing; the missing controller is then
        // reported below, which says more than the read error would.
        let v2_controllers = unified
            .as_ref()
            .and_then(|dir| fs::read_to_string(dir.join("cgroup.controllers")).ok())
            .unwrap_or_default();
        let find = |controller: Controller| {
            let name = controller.name();
            // A controller bound to a v1 hierarchy is absent from cgroup2, so v1 wins only in
            // hybrid layouts, where it is the one that works.
            if let Some((_, mount)) = v1.iter().find(|(opts, _)| opts.contains(&name)) {
                return Ok(Hierarchy {
                    version: Version::V1,
                    mount: mount.clone(),
                });
            }
            match &unified {
                Some(mount) if v2_controllers.split_whitespace().any(|c| c == name) => {
                    Ok(Hierarchy {
                        version: Version::V2,
                        mount: mount.clone(),
                    })
                }
                _ => Err(CgroupError::ControllerMissing(controller)),
            }
        };
        // A v2 cgroup freezes without any controller enabled (Linux 5.2+).
        let freezer = match &unified {
            Some(mount) => Some(Hierarchy {
                version: Version::V2,
                mount: mount.clone(),
            }),
            None => v1
                .iter()
                .find(|(opts, _)| opts.contains(&"freezer"))
                .map(|(_, mount)| Hierarchy {
                    version: Version::V1,
                    mount: mount.clone(),
                }),
        };
        Ok(CgroupManager {
            parent: parent.to_string(),
            memory: find(Controller::Memory)?,
            cpu: find(Controller::Cpu)?,
            pids: find(Controller::Pids)?,
            freezer,
            unified,
            dynmods_mount,
        })
    }

    /// Remounts a cgroup hierarchy with `favordynmods` (Linux 6.0+), keeping its other options.
    /// Moving a process into a cgroup takes a machine-wide lock whose writers otherwise wait for
    /// an RCU grace period (milliseconds, on every sandbox start); with the option set once on
    /// any hierarchy, they do not, and fork and exit get slightly dearer instead. Returns the
    /// mount point it remounted, or `None` if the option was set already.
    pub fn favor_dynmods(&self) -> Result<Option<PathBuf>, CgroupError> {
        let Some(target) = &self.dynmods_mount else {
            return Ok(None);
        };
        let Some((flags, data)) = target.favordynmods_remount() else {
            return Ok(None);
        };
        sys::mount(None, &target.path, None, flags, Some(&data)).map_err(|source| {
            CgroupError::Remount {
                path: target.path.clone(),
                options: data.clone(),
                source,
            }
        })?;
        Ok(Some(target.path.clone()))
    }

    /// One line for logs and `/status`: `v2`, `v1 (memory, cpu, pids)` or
    /// `hybrid (v1: memory, cpu; v2: pids)`.
    pub fn version_summary(&self) -> String {
        let names = |version| {
            let names: Vec<&str> = Controller::ALL
                .into_iter()
                .filter(|&c| self.hierarchy(c).version == version)
                .map(Controller::name)
                .collect();
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        };
        let all_v2 = Controller::ALL
            .into_iter()
            .all(|c| self.hierarchy(c).version == Version::V2);
        if all_v2 {
            "v2".to_string()
        } else if self.unified.is_none() {
            format!("v1 ({})", names(Version::V1))
        } else {
            format!(
                "hybrid (v1: {}; v2: {})",
                names(Version::V1),
                names(Version::V2)
            )
        }
    }

    /// Where idle sandboxes can be frozen, for logs and `/status`: `v1`, `v2` or `none`.
    pub fn freezer_summary(&self) -> &'static str {
        match self.freezer.as_ref().map(|h| h.version) {
            Some(Version::V1) => "v1",
            Some(Version::V2) => "v2",
            None => "none",
        }
    }

    /// Readies the freezer: on v1, creates the parent and keeps [`FREEZER_ANCHOR`] frozen in it,
    /// so that freezing a sandbox stays cheap. Returns false when there is no freezer at all.
    pub fn prepare_freezer(&self) -> Result<bool, CgroupError> {
        let Some(hierarchy) = &self.freezer else {
            return Ok(false);
        };
        if hierarchy.version == Version::V1 {
            let anchor = hierarchy.mount.join(&self.parent).join(FREEZER_ANCHOR);
            fs::create_dir_all(&anchor).map_err(|source| CgroupError::Create {
                path: anchor.clone(),
                source,
            })?;
            let (file, frozen, _) = Version::V1.freezer_file();
            write(&anchor.join(file), frozen)?;
        }
        Ok(true)
    }

    /// Creates `<hierarchy>/<parent>/<name>` in every hierarchy of the limits, enabling the
    /// controllers on the way down in v2, and writes `limits`. On failure, the directories made
    /// so far are removed. A freezer in a hierarchy of its own is joined at the first
    /// [`Cgroup::freeze`] instead, so that starting a sandbox costs no extra cgroup move.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<Cgroup, CgroupError> {
        check_name(name)?;
        for (hierarchy, controllers) in self.hierarchies() {
            if controllers.is_empty() {
                continue;
            }
            let parent = hierarchy.mount.join(&self.parent);
            match fs::create_dir(&parent) {
                Err(err) if err.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(CgroupError::Create {
                        path: parent,
                        source: err,
                    })
                }
                _ => {}
            }
            if hierarchy.version == Version::V2 {
                // A v2 cgroup only gets the controllers its parent enables for its children.
                enable_controllers(&hierarchy.mount, &controllers)?;
                enable_controllers(&parent, &controllers)?;
            }
        }
        let cgroup = self.open(name);
        let mut created = Vec::new();
        let mut make = || {
            for node in cgroup.nodes() {
                fs::create_dir(&node.dir).map_err(|source| CgroupError::Create {
                    path: node.dir.clone(),
                    source,
                })?;
                created.push(node.dir.clone());
            }
            cgroup.set_limits(limits)
        };
        if let Err(err) = make() {
            for dir in created {
                let _ = fs::remove_dir(dir);
            }
            return Err(err);
        }
        tracing::debug!(cgroup = name, ?limits, "created cgroup");
        Ok(cgroup)
    }

    /// Names of the sandbox cgroups under the parent in any hierarchy, sorted (for crash cleanup).
    pub fn list(&self) -> Result<Vec<String>, CgroupError> {
        let mut names = BTreeSet::new();
        for (hierarchy, _) in self.hierarchies() {
            let parent = hierarchy.mount.join(&self.parent);
            let list_err = |source| CgroupError::List {
                path: parent.clone(),
                source,
            };
            let entries = match fs::read_dir(&parent) {
                Ok(entries) => entries,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(list_err(err)),
            };
            for entry in entries {
                let entry = entry.map_err(list_err)?;
                let name = entry.file_name().to_string_lossy().into_owned();
                // Dot names are Kindling's own (the freezer anchor), never a sandbox's.
                if entry.file_type().map_err(list_err)?.is_dir() && !name.starts_with('.') {
                    names.insert(name);
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    /// The cgroup called `name`, which need not exist. `name` must come from
    /// [`CgroupManager::list`] or an earlier [`CgroupManager::create`].
    pub fn open(&self, name: &str) -> Cgroup {
        let node = |hierarchy: &Hierarchy| Node {
            version: hierarchy.version,
            dir: hierarchy.mount.join(&self.parent).join(name),
        };
        Cgroup {
            name: name.to_string(),
            memory: node(&self.memory),
            cpu: node(&self.cpu),
            pids: node(&self.pids),
            freezer: self.freezer.as_ref().map(node),
        }
    }

    /// Removes the (empty) parent directories, on a clean shutdown. Leaves any that still hold
    /// cgroups, such as another worker's.
    pub fn remove_parent(&self) {
        for (hierarchy, _) in self.hierarchies() {
            let parent = hierarchy.mount.join(&self.parent);
            let _ = fs::remove_dir(parent.join(FREEZER_ANCHOR));
            let _ = fs::remove_dir(parent);
        }
    }

    /// Kills the processes of every cgroup under the parent and removes them all; for a worker
    /// starting after a crash. Tries every cgroup, then returns the first failure if any.
    pub fn remove_stale(&self) -> Result<usize, CgroupError> {
        let mut removed = 0;
        let mut first_err = None;
        for name in self.list()? {
            let cgroup = self.open(&name);
            match cgroup.kill_all().and_then(|()| cgroup.remove()) {
                Ok(()) => removed += 1,
                Err(err) => {
                    tracing::warn!(
                        cgroup = %name,
                        error = &err as &(dyn std::error::Error + 'static),
                        "cannot remove stale cgroup"
                    );
                    first_err.get_or_insert(err);
                }
            }
        }
        if removed > 0 {
            tracing::info!(count = removed, "removed stale cgroups");
        }
        first_err.map_or(Ok(removed), Err)
    }

    fn hierarchy(&self, controller: Controller) -> &Hierarchy {
        match controller {
            Controller::Memory => &self.memory,
            Controller::Cpu => &self.cpu,
            Controller::Pids => &self.pids,
        }
    }

    /// The distinct hierarchies in use, each with the controllers it provides (none for a
    /// hierarchy used only to freeze).
    fn hierarchies(&self) -> Vec<(&Hierarchy, Vec<Controller>)> {
        let mut out: Vec<(&Hierarchy, Vec<Controller>)> = Vec::new();
        for controller in Controller::ALL {
            let hierarchy = self.hierarchy(controller);
            match out
                .iter_mut()
                .find(|(seen, _)| seen.mount == hierarchy.mount)
            {
                Some((_, controllers)) => controllers.push(controller),
                None => out.push((hierarchy, vec![controller])),
            }
        }
        if let Some(freezer) = &self.freezer {
            if !out.iter().any(|(seen, _)| seen.mount == freezer.mount) {
                out.push((freezer, Vec::new()));
            }
        }
        out
    }
}

/// One controller's directory of a cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    version: Version,
    dir: PathBuf,
}

/// The cgroup of one sandbox: a directory per hierarchy, shared by controllers on the same one.
#[derive(Debug, Clone)]
pub struct Cgroup {
    name: String,
    memory: Node,
    cpu: Node,
    pids: Node,
    freezer: Option<Node>,
}

impl Cgroup {
    /// The sandbox cgroup's name (its directory name under the parent).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `cgroup.procs` files a process writes `0` into to join this cgroup, one per
    /// distinct directory of the limits (a separate freezer's is joined when freezing).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.nodes()
            .into_iter()
            .map(|node| node.dir.join("cgroup.procs"))
            .collect()
    }

    /// Writes all three limits; `None` resets a limit to unlimited, so that a reused cgroup
    /// carries nothing over from its previous sandbox.
    pub fn set_limits(&self, limits: &Limits) -> Result<(), CgroupError> {
        self.set_memory(limits.memory_bytes)?;
        self.set_cpu(limits.cpu_cores)?;
        let pids = limits.pids.map_or("max".to_string(), |n| n.to_string());
        write(&self.pids.dir.join("pids.max"), &pids)
    }

    fn set_memory(&self, bytes: Option<u64>) -> Result<(), CgroupError> {
        let dir = &self.memory.dir;
        match self.memory.version {
            Version::V1 => {
                let limit = bytes.map_or("-1".to_string(), |b| b.to_string());
                // memsw (memory + swap) must stay at or above the memory limit: writing it on
                // both sides of the memory limit works whether the limit goes up or down.
                // Its failures are ignored, as swap accounting may be off.
                let memsw = dir.join("memory.memsw.limit_in_bytes");
                let has_memsw = memsw.exists();
                if has_memsw {
                    let _ = fs::write(&memsw, &limit);
                }
                write(&dir.join("memory.limit_in_bytes"), &limit)?;
                if has_memsw {
                    let _ = fs::write(&memsw, &limit);
                }
                Ok(())
            }
            Version::V2 => {
                let limit = bytes.map_or("max".to_string(), |b| b.to_string());
                write(&dir.join("memory.max"), &limit)?;
                // Without swap accounting the file is absent and there is no swap to forbid.
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, if bytes.is_some() { "0" } else { "max" })?;
                }
                Ok(())
            }
        }
    }

    fn set_cpu(&self, cores: Option<f64>) -> Result<(), CgroupError> {
        // A negative or NaN count saturates to 0 and is raised to the minimum.
        let quota =
            cores.map(|c| ((c * CPU_PERIOD_US as f64).round() as u64).max(MIN_CPU_QUOTA_US));
        let dir = &self.cpu.dir;
        match self.cpu.version {
            Version::V1 => {
                write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                let quota = quota.map_or("-1".to_string(), |q| q.to_string());
                write(&dir.join("cpu.cfs_quota_us"), &quota)
            }
            Version::V2 => {
                let quota = quota.map_or("max".to_string(), |q| q.to_string());
                write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))
            }
        }
    }

    /// Memory in use now, page cache included.
    pub fn memory_usage(&self) -> Result<u64, CgroupError> {
        let file = match self.memory.version {
            Version::V1 => "memory.usage_in_bytes",
            Version::V2 => "memory.current",
        };
        read_u64(&self.memory.dir.join(file))
    }

    /// Highest memory use since the cgroup was created; the current use on v2 kernels older
    /// than 5.19, which lack `memory.peak`.
    pub fn memory_peak(&self) -> Result<u64, CgroupError> {
        let dir = &self.memory.dir;
        match self.memory.version {
            Version::V1 => read_u64(&dir.join("memory.max_usage_in_bytes")),
            Version::V2 => {
                let peak = dir.join("memory.peak");
                if peak.exists() {
                    read_u64(&peak)
                } else {
                    read_u64(&dir.join("memory.current"))
                }
            }
        }
    }

    /// How many processes the OOM killer has killed in this cgroup (0 on kernels that do not
    /// count them).
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        let file = match self.memory.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        let path = self.memory.dir.join(file);
        let content = read(&path)?;
        let value = content.lines().find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == "oom_kill").then_some(value)
        });
        match value {
            None => Ok(0),
            Some(value) => value.trim().parse().map_err(|_| CgroupError::Parse {
                path,
                content: content.clone(),
            }),
        }
    }

    /// Freezes every process in the cgroup (they stay, using no CPU, until [`Cgroup::thaw`] or
    /// a SIGKILL, which on v1 only takes effect once thawed).
    /// Returns false, doing nothing, when the machine has no freezer. The kernel completes the
    /// freeze asynchronously; nothing here waits for it.
    pub fn freeze(&self) -> Result<bool, CgroupError> {
        self.set_frozen(true)
    }

    /// Lets a frozen cgroup's processes run again; false when there is no freezer.
    pub fn thaw(&self) -> Result<bool, CgroupError> {
        self.set_frozen(false)
    }

    fn set_frozen(&self, frozen: bool) -> Result<bool, CgroupError> {
        let Some(node) = &self.freezer else {
            return Ok(false);
        };
        if self.freezer_is_separate() {
            if frozen {
                self.join_freezer(node)?;
            } else if !node.dir.exists() {
                // Never frozen: nothing to thaw.
                return Ok(true);
            }
        }
        let (file, freeze, thaw) = node.version.freezer_file();
        write(&node.dir.join(file), if frozen { freeze } else { thaw })?;
        Ok(true)
    }

    /// Whether the freezer is a hierarchy apart from the limits' (v1 `freezer`, or cgroup2 in a
    /// hybrid layout), whose directory processes do not join at start.
    fn freezer_is_separate(&self) -> bool {
        self.freezer
            .as_ref()
            .is_some_and(|f| self.nodes().iter().all(|n| n.dir != f.dir))
    }

    /// Moves every process of the sandbox into the freezer's cgroup (creating it), looking
    /// again until none is left outside: children forked meanwhile by a process not yet moved
    /// are born outside, those of a moved one inside. Every process is in the memory cgroup.
    fn join_freezer(&self, node: &Node) -> Result<(), CgroupError> {
        fs::create_dir_all(&node.dir).map_err(|source| CgroupError::Create {
            path: node.dir.clone(),
            source,
        })?;
        let target = node.dir.join("cgroup.procs");
        let source = self.memory.dir.join("cgroup.procs");
        for _ in 0..JOIN_ROUNDS {
            let inside = read_pids(&target)?;
            let outside: Vec<i32> = read_pids(&source)?.difference(&inside).copied().collect();
            if outside.is_empty() {
                return Ok(());
            }
            for pid in outside {
                match append_pid(&target, pid) {
                    // Exited meanwhile.
                    Err(CgroupError::Write { source, .. })
                        if source.raw_os_error() == Some(libc::ESRCH) => {}
                    other => other?,
                }
            }
        }
        Err(CgroupError::FreezerJoin {
            name: self.name.clone(),
        })
    }

    /// Moves process `pid` into this cgroup in every hierarchy, a separate freezer's included
    /// (a sandbox's init, when its sandbox changes cgroups). What it was charged so far stays
    /// with its old cgroup: v1 moves charges only with `memory.move_charge_at_immigrate`, which
    /// Kindling never sets, and v2 never moves them.
    pub fn adopt(&self, pid: i32) -> Result<(), CgroupError> {
        for node in self.nodes() {
            append_pid(&node.dir.join("cgroup.procs"), pid)?;
        }
        if let Some(f) = self.freezer.as_ref().filter(|_| self.freezer_is_separate()) {
            fs::create_dir_all(&f.dir).map_err(|source| CgroupError::Create {
                path: f.dir.clone(),
                source,
            })?;
            append_pid(&f.dir.join("cgroup.procs"), pid)?;
        }
        Ok(())
    }

    /// The processes in the cgroup, sorted; empty once its directories are gone.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let mut pids = BTreeSet::new();
        for path in self.procs_files() {
            pids.extend(read_pids(&path)?);
        }
        Ok(pids.into_iter().collect())
    }

    /// SIGKILLs every process in the cgroup, looking again until it is empty (processes may
    /// fork while being killed) or [`KILL_TIMEOUT`] has passed.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        // v2's cgroup.kill (Linux 5.14+) kills the whole cgroup at once, forks included.
        let kill_file = self
            .nodes()
            .into_iter()
            .filter(|node| node.version == Version::V2)
            .map(|node| node.dir.join("cgroup.kill"))
            .find(|path| path.exists());
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let name = self.name.clone();
                return Err(CgroupError::KillTimeout { name, pids });
            }
            match &kill_file {
                Some(path) => write(path, "1")?,
                None => {
                    for &pid in &pids {
                        match sys::kill(pid, libc::SIGKILL) {
                            Err(err) if err.raw_os_error() != Some(libc::ESRCH) => {
                                return Err(CgroupError::Kill {
                                    name: self.name.clone(),
                                    pid,
                                    source: err,
                                })
                            }
                            _ => {}
                        }
                    }
                }
            }
            // A task frozen by the v1 freezer does not die until thawed; thawed after the
            // SIGKILL, it dies before running any more of its own code. A cgroup whose
            // directory is already gone has nothing left to thaw.
            let _ = self.thaw();
            thread::sleep(POLL);
        }
    }

    /// Removes every directory of the cgroup; ones already gone are fine. Retries for a while on
    /// `EBUSY`, as killed processes take a moment to leave.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let separate = self.freezer.as_ref().filter(|_| self.freezer_is_separate());
        for node in self.nodes().into_iter().chain(separate) {
            let deadline = Instant::now() + REMOVE_TIMEOUT;
            loop {
                match fs::remove_dir(&node.dir) {
                    Ok(()) => break,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => break,
                    Err(err)
                        if err.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        thread::sleep(POLL)
                    }
                    Err(source) => {
                        let path = node.dir.clone();
                        return Err(CgroupError::Remove { path, source });
                    }
                }
            }
        }
        tracing::debug!(cgroup = %self.name, "removed cgroup");
        Ok(())
    }

    /// The distinct directories of the limits: controllers sharing a hierarchy share one.
    fn nodes(&self) -> Vec<&Node> {
        let mut nodes: Vec<&Node> = Vec::with_capacity(3);
        for node in [&self.memory, &self.cpu, &self.pids] {
            if !nodes.iter().any(|seen| seen.dir == node.dir) {
                nodes.push(node);
            }
        }
        nodes
    }
}

/// Rejects names that would leave the parent directory.
fn check_name(name: &str) -> Result<(), CgroupError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(CgroupError::InvalidName(name.to_string()));
    }
    Ok(())
}

/// Adds the controllers missing from `dir/cgroup.subtree_control`. Writing only the missing
/// ones avoids a needless write, which fails in a non-root cgroup that holds processes.
fn enable_controllers(dir: &Path, controllers: &[Controller]) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.subtree_control");
    let enabled = match fs::read_to_string(&path) {
        Ok(content) => content,
        // Only a fake cgroupfs lacks the file; treat it as empty.
        Err(err) if err.kind() == io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(CgroupError::Read { path, source }),
    };
    let missing: Vec<String> = controllers
        .iter()
        .filter(|c| {
            !enabled
                .split_whitespace()
                .any(|word| word.trim_start_matches('+') == c.name())
        })
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    write(&path, &missing.join(" "))
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The pids a `cgroup.procs` file lists (none if it is gone). Processes outside our pid
/// namespace show as 0 and are left out: kill(0) would hit our own process group.
fn read_pids(path: &Path) -> Result<BTreeSet<i32>, CgroupError> {
    let content = match fs::read_to_string(path) {
        Ok(content) => content,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mut pids = BTreeSet::new();
    for line in content.lines() {
        let pid: i32 = line.trim().parse().map_err(|_| CgroupError::Parse {
            path: path.to_path_buf(),
            content: content.clone(),
        })?;
        if pid > 0 {
            pids.insert(pid);
        }
    }
    Ok(pids)
}

/// Moves process `pid` into the cgroup of `procs` (appending, one pid a line, as the kernel
/// takes it and as a fake cgroupfs records it).
fn append_pid(procs: &Path, pid: i32) -> Result<(), CgroupError> {
    use std::io::Write;
    let value = format!("{pid}\n");
    // `create` only matters in a fake cgroupfs; the kernel's file always exists.
    fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(procs)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| CgroupError::Write {
            path: procs.to_path_buf(),
            value,
            source,
        })
}

fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    let content = read(path)?;
    content.trim().parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        content,
    })
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

/// The fields of a mountinfo line that detection needs.
struct Mount<'a> {
    point: PathBuf,
    mount_options: &'a str,
    fstype: &'a str,
    super_options: &'a str,
}

/// Parses one line of `/proc/self/mountinfo` (see proc(5)):
/// `id parent major:minor root mount-point options [optional...] - fstype source super-options`.
fn parse_mount(line: &str) -> Option<Mount<'_>> {
    let fields: Vec<&str> = line.split(' ').collect();
    let separator = 6 + fields.get(6..)?.iter().position(|&f| f == "-")?;
    Some(Mount {
        point: unescape(fields.get(4)?),
        mount_options: fields.get(5)?,
        fstype: fields.get(separator + 1)?,
        super_options: fields.get(separator + 3)?,
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space, etc.) in mountinfo paths.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes.get(i + 1..i + 4).and_then(|digits| {
            let digits = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(digits, 8).ok()
        });
        match code {
            Some(byte) if bytes[i] == b'\\' => {
                out.push(byte);
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn favordynmods_remount_keeps_options() {
        let dir = fake_tree(HYBRID, "");
        let m = CgroupManager::from_mountinfo(HYBRID, dir.path(), "kindling").unwrap();
        let target = m.dynmods_mount.clone().unwrap();
        assert_eq!(target.path, dir.path().join("sys/fs/cgroup/unified"));
        let (flags, data) = target.favordynmods_remount().unwrap();
        assert_eq!(data, "favordynmods");
        assert_eq!(flags, libc::MS_REMOUNT | libc::MS_RELATIME);

        let v2 = RemountTarget {
            path: "/sys/fs/cgroup".into(),
            mount_options: "rw,nosuid,nodev,noexec,relatime".into(),
            super_options: "rw,nsdelegate,memory_recursiveprot".into(),
        };
        let (flags, data) = v2.favordynmods_remount().unwrap();
        assert_eq!(data, "nsdelegate,memory_recursiveprot,favordynmods");
        assert_eq!(
            flags,
            libc::MS_REMOUNT
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC
                | libc::MS_RELATIME
        );
        let done = RemountTarget {
            super_options: "rw,favordynmods".into(),
            ..v2
        };
        assert_eq!(done.favordynmods_remount(), None);
    }

    #[test]
    fn favordynmods_goes_to_the_memory_hierarchy_without_cgroup2() {
        let v1_only: String = HYBRID
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .collect::<Vec<_>>()
            .join("\n");
        let dir = fake_tree(&v1_only, "");
        let m = CgroupManager::from_mountinfo(&v1_only, dir.path(), "kindling").unwrap();
        let target = m.dynmods_mount.unwrap();
        assert_eq!(target.path, dir.path().join("sys/fs/cgroup/memory"));
        assert_eq!(
            target.favordynmods_remount().unwrap().1,
            "memory,favordynmods"
        );
    }

    /// This machine's layout: memory, cpu and pids in v1, cgroup2 with only hugetlb.
    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// A systemd-era v1 layout: cpu co-mounted with cpuacct, optional fields present.
    const V1: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
25 24 0:21 / /sys/fs/cgroup rw shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:22 / /sys/fs/cgroup/systemd rw shared:10 - cgroup cgroup rw,xattr,name=systemd
27 25 0:23 / /sys/fs/cgroup/cpu,cpuacct rw shared:11 - cgroup cgroup rw,cpu,cpuacct
28 25 0:24 / /sys/fs/cgroup/memory rw shared:12 - cgroup cgroup rw,memory
29 25 0:25 / /sys/fs/cgroup/pids rw shared:13 - cgroup cgroup rw,pids
";

    const V2: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
26 25 0:22 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    fn fake_tree(mountinfo: &str, v2_controllers: &str) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for mount in mountinfo.lines().filter_map(parse_mount) {
            let dir = root.path().join(mount.point.strip_prefix("/").unwrap());
            fs::create_dir_all(&dir).unwrap();
            if mount.fstype == "cgroup2" {
                fs::write(dir.join("cgroup.controllers"), v2_controllers).unwrap();
            }
        }
        root
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap()
    }

    const LIMITS: Limits = Limits {
        memory_bytes: Some(128 << 20),
        cpu_cores: Some(0.5),
        pids: Some(64),
    };

    #[test]
    fn detects_v1() {
        let root = fake_tree(V1, "");
        let manager = CgroupManager::from_mountinfo(V1, root.path(), "kindling").unwrap();
        assert_eq!(manager.version_summary(), "v1 (memory, cpu, pids)");
        let cgroup_root = root.path().join("sys/fs/cgroup");
        assert_eq!(manager.cpu.mount, cgroup_root.join("cpu,cpuacct"));
        assert_eq!(manager.memory.mount, cgroup_root.join("memory"));
        assert_eq!(manager.pids.version, Version::V1);
    }

    #[test]
    fn detects_v2_and_hybrid() {
        let root = fake_tree(V2, "cpuset cpu io memory pids\n");
        let manager = CgroupManager::from_mountinfo(V2, root.path(), "kindling").unwrap();
        assert_eq!(manager.version_summary(), "v2");
        assert_eq!(manager.memory.mount, root.path().join("sys/fs/cgroup"));

        let root = fake_tree(HYBRID, "hugetlb\n");
        let manager = CgroupManager::from_mountinfo(HYBRID, root.path(), "kindling").unwrap();
        assert_eq!(
            manager.version_summary(),
            "hybrid (v1: memory, cpu, pids; v2: none)"
        );
        assert_eq!(manager.memory.version, Version::V1);
    }

    #[test]
    fn reports_missing_controller() {
        let root = fake_tree(V2, "cpu memory\n");
        let err = CgroupManager::from_mountinfo(V2, root.path(), "kindling").unwrap_err();
        assert!(matches!(
            err,
            CgroupError::ControllerMissing(Controller::Pids)
        ));
        assert_eq!(
            err.to_string(),
            "no cgroup hierarchy provides the pids controller"
        );
    }

    #[test]
    fn unescapes_mount_points() {
        let line = "30 25 0:26 / /mnt/my\\040cgroups rw - cgroup2 none rw";
        let mount = parse_mount(line).unwrap();
        assert_eq!(mount.point, Path::new("/mnt/my cgroups"));
        assert_eq!(mount.fstype, "cgroup2");
        assert!(parse_mount("garbage").is_none());
    }

    #[test]
    fn creates_v1() {
        let root = fake_tree(V1, "");
        let cgroups = root.path().join("sys/fs/cgroup");
        let manager = CgroupManager::from_mountinfo(V1, root.path(), "kindling").unwrap();
        let cgroup = manager.create("sb1", &LIMITS).unwrap();
        assert_eq!(cgroup.name(), "sb1");
        let memory = cgroups.join("memory/kindling/sb1");
        let cpu = cgroups.join("cpu,cpuacct/kindling/sb1");
        let pids = cgroups.join("pids/kindling/sb1");
        assert_eq!(read(&memory.join("memory.limit_in_bytes")), "134217728");
        assert!(!memory.join("memory.memsw.limit_in_bytes").exists());
        assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "50000");
        assert_eq!(read(&pids.join("pids.max")), "64");
        assert_eq!(
            cgroup.procs_files(),
            vec![
                memory.join("cgroup.procs"),
                cpu.join("cgroup.procs"),
                pids.join("cgroup.procs")
            ]
        );

        // Re-limiting a reused cgroup resets what is no longer limited; with swap accounting
        // on, memsw follows the memory limit.
        fs::write(memory.join("memory.memsw.limit_in_bytes"), "").unwrap();
        let relimit = Limits {
            memory_bytes: Some(1 << 20),
            cpu_cores: None,
            pids: None,
        };
        cgroup.set_limits(&relimit).unwrap();
        assert_eq!(read(&memory.join("memory.memsw.limit_in_bytes")), "1048576");
        assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "-1");
        assert_eq!(read(&pids.join("pids.max")), "max");

        // An existing cgroup is not silently taken over.
        let err = manager.create("sb1", &LIMITS).unwrap_err();
        assert!(matches!(err, CgroupError::Create { .. }));
        assert!(memory.exists());
    }

    #[test]
    fn creates_v2() {
        let root = fake_tree(V2, "cpuset cpu io memory pids\n");
        let cgroups = root.path().join("sys/fs/cgroup");
        // systemd already enabled memory at the root.
        fs::write(cgroups.join("cgroup.subtree_control"), "memory").unwrap();
        let manager = CgroupManager::from_mountinfo(V2, root.path(), "kindling").unwrap();
        let cgroup = manager.create("sb1", &LIMITS).unwrap();
        assert_eq!(read(&cgroups.join("cgroup.subtree_control")), "+cpu +pids");
        let parent = cgroups.join("kindling");
        assert_eq!(
            read(&parent.join("cgroup.subtree_control")),
            "+memory +cpu +pids"
        );
        let dir = parent.join("sb1");
        assert_eq!(read(&dir.join("memory.max")), "134217728");
        assert!(!dir.join("memory.swap.max").exists());
        assert_eq!(read(&dir.join("cpu.max")), "50000 100000");
        assert_eq!(read(&dir.join("pids.max")), "64");
        assert_eq!(cgroup.procs_files(), vec![dir.join("cgroup.procs")]);

        fs::write(dir.join("memory.swap.max"), "max").unwrap();
        let tiny = Limits {
            memory_bytes: Some(4096),
            cpu_cores: Some(0.0),
            pids: None,
        };
        cgroup.set_limits(&tiny).unwrap();
        assert_eq!(read(&dir.join("memory.swap.max")), "0");
        assert_eq!(read(&dir.join("cpu.max")), "1000 100000");
        cgroup.set_limits(&Limits::default()).unwrap();
        assert_eq!(read(&dir.join("memory.max")), "max");
        assert_eq!(read(&dir.join("memory.swap.max")), "max");
        assert_eq!(read(&dir.join("cpu.max")), "max 100000");
    }

    #[test]
    fn creates_in_mixed_hybrid() {
        // pids from cgroup2, the rest from v1: only pids is enabled in the v2 tree.
        let mountinfo = HYBRID.replace("rw,pids", "rw,net_cls");
        let root = fake_tree(&mountinfo, "pids hugetlb\n");
        let manager = CgroupManager::from_mountinfo(&mountinfo, root.path(), "kd").unwrap();
        assert_eq!(
            manager.version_summary(),
            "hybrid (v1: memory, cpu; v2: pids)"
        );
        let cgroup = manager.create("sb1", &LIMITS).unwrap();
        let unified = root.path().join("sys/fs/cgroup/unified");
        assert_eq!(read(&unified.join("cgroup.subtree_control")), "+pids");
        assert_eq!(read(&unified.join("kd/cgroup.subtree_control")), "+pids");
        assert_eq!(read(&unified.join("kd/sb1/pids.max")), "64");
        assert_eq!(cgroup.procs_files().len(), 3);
    }

    #[test]
    fn rejects_bad_names() {
        let root = fake_tree(V2, "cpu memory pids\n");
        let manager = CgroupManager::from_mountinfo(V2, root.path(), "kindling").unwrap();
        for name in ["", ".", "..", "a/b"] {
            let err = manager.create(name, &LIMITS).unwrap_err();
            assert!(matches!(err, CgroupError::InvalidName(_)), "{name:?}");
        }
        assert!(CgroupManager::from_mountinfo(V2, root.path(), "../etc").is_err());
    }

    #[test]
    fn reads_usage_and_oom_kills() {
        let root = fake_tree(V1, "");
        let manager = CgroupManager::from_mountinfo(V1, root.path(), "kindling").unwrap();
        let cgroup = manager.create("sb1", &LIMITS).unwrap();
        let memory = &cgroup.memory.dir;
        fs::write(memory.join("memory.usage_in_bytes"), "4096\n").unwrap();
        fs::write(memory.join("memory.max_usage_in_bytes"), "8192\n").unwrap();
        fs::write(
            memory.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        )
        .unwrap();
        assert_eq!(cgroup.memory_usage().unwrap(), 4096);
        assert_eq!(cgroup.memory_peak().unwrap(), 8192);
        assert_eq!(cgroup.oom_kills().unwrap(), 3);
        // Kernels before 4.13 have no oom_kill line.
        fs::write(
            memory.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\n",
        )
        .unwrap();
        assert_eq!(cgroup.oom_kills().unwrap(), 0);
        fs::write(memory.join("memory.usage_in_bytes"), "lots\n").unwrap();
        assert!(matches!(
            cgroup.memory_usage(),
            Err(CgroupError::Parse { .. })
        ));

        let root = fake_tree(V2, "cpu memory pids\n");
        let manager = CgroupManager::from_mountinfo(V2, root.path(), "kindling").unwrap();
        let cgroup = manager.create("sb1", &LIMITS).unwrap();
        let dir = &cgroup.memory.dir;
        fs::write(dir.join("memory.current"), "100\n").unwrap();
        fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(cgroup.memory_peak().unwrap(), 100);
        fs::write(dir.join("memory.peak"), "300\n").unwrap();
        assert_eq!(cgroup.memory_peak().unwrap(), 300);
        assert_eq!(cgroup.oom_kills().unwrap(), 1);
    }

    #[test]
    fn lists_and_removes() {
        let root = fake_tree(V1, "");
        let manager = CgroupManager::from_mountinfo(V1, root.path(), "kindling").unwrap();
        assert!(manager.list().unwrap().is_empty());
        let cgroups = root.path().join("sys/fs/cgroup");
        // A crash may leave a cgroup in only some hierarchies.
        fs::create_dir_all(cgroups.join("memory/kindling/b")).unwrap();
        fs::create_dir_all(cgroups.join("pids/kindling/b")).unwrap();
        fs::create_dir_all(cgroups.join("pids/kindling/a")).unwrap();
        fs::write(cgroups.join("pids/kindling/cgroup.procs"), "").unwrap();
        assert_eq!(manager.list().unwrap(), ["a", "b"]);

        // Processes outside our pid namespace read as 0 and must not be signalled.
        fs::write(cgroups.join("pids/kindling/b/cgroup.procs"), "0\n").unwrap();
        let b = manager.open("b");
        assert!(b.pids().unwrap().is_empty());
        fs::remove_file(cgroups.join("pids/kindling/b/cgroup.procs")).unwrap();

        assert_eq!(manager.remove_stale().unwrap(), 2);
        assert!(manager.list().unwrap().is_empty());
        assert!(!cgroups.join("memory/kindling/b").exists());
        b.remove().unwrap();
    }

    /// [`V1`] with the freezer hierarchy mounted, as most v1 machines have it.
    fn v1_with_freezer() -> String {
        format!("{V1}30 25 0:26 / /sys/fs/cgroup/freezer rw shared:14 - cgroup cgroup rw,freezer\n")
    }

    #[test]
    fn finds_the_freezer() {
        let root = fake_tree(V1, "");
        let manager = CgroupManager::from_mountinfo(V1, root.path(), "kindling").unwrap();
        assert_eq!(manager.freezer_summary(), "none");

        let mountinfo = v1_with_freezer();
        let root = fake_tree(&mountinfo, "");
        let manager = CgroupManager::from_mountinfo(&mountinfo, root.path(), "kindling").unwrap();
        assert_eq!(manager.freezer_summary(), "v1");
        // The freezer is not a limit: the summary of the controllers does not change.
        assert_eq!(manager.version_summary(), "v1 (memory, cpu, pids)");

        let root = fake_tree(V2, "cpu memory pids\n");
        let manager = CgroupManager::from_mountinfo(V2, root.path(), "kindling").unwrap();
        assert_eq!(manager.freezer_summary(), "v2");

        // Hybrid: sandboxes freeze in the cgroup2 tree, even with a v1 freezer mounted, and
        // even though none of the controllers is there.
        let hybrid = format!(
            "{HYBRID}42 31 0:39 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer\n"
        );
        let root = fake_tree(&hybrid, "hugetlb\n");
        let manager = CgroupManager::from_mountinfo(&hybrid, root.path(), "kindling").unwrap();
        assert_eq!(manager.freezer_summary(), "v2");
        let root = fake_tree(HYBRID, "hugetlb\n");
        let manager = CgroupManager::from_mountinfo(HYBRID, root.path(), "kindling").unwrap();
        assert_eq!(manager.freezer_summary(), "v2");
        let cgroup = manager.create("sb1", &LIMITS).unwrap();
        let unified = root.path().join("sys/fs/cgroup/unified");
        // Starting a sandbox does not touch the freezer's tree; the first freeze joins it.
        assert!(!cgroup
            .procs_files()
            .contains(&unified.join("kindling/sb1/cgroup.procs")));
        assert!(!unified.join("kindling").exists());
        assert!(cgroup.thaw().unwrap(), "thawing a never frozen sandbox");
        assert!(!unified.join("kindling/sb1").exists());
        assert!(cgroup.freeze().unwrap());
        assert_eq!(read(&unified.join("kindling/sb1/cgroup.freeze")), "1");
        // No controller is enabled in a tree used only to freeze.
        assert!(!unified.join("cgroup.subtree_control").exists());
    }

    #[test]
    fn freezes_and_thaws_v1() {
        let mountinfo = v1_with_freezer();
        let root = fake_tree(&mountinfo, "");
        let freezer = root.path().join("sys/fs/cgroup/freezer/kindling");
        let manager = CgroupManager::from_mountinfo(&mountinfo, root.path(), "kindling").unwrap();
        assert!(manager.prepare_freezer().unwrap());
        assert_eq!(
            read(&freezer.join(FREEZER_ANCHOR).join("freezer.state")),
            "FROZEN"
        );
        let cgroup = manager.create("sb1", &LIMITS).unwrap();
        assert_eq!(cgroup.procs_files().len(), 3);
        // The first freeze moves every process of the sandbox into the freezer's cgroup.
        let memory = root.path().join("sys/fs/cgroup/memory/kindling/sb1");
        fs::write(memory.join("cgroup.procs"), "5\n12\n").unwrap();
        assert!(cgroup.freeze().unwrap());
        assert_eq!(read(&freezer.join("sb1/cgroup.procs")), "5\n12\n");
        assert_eq!(read(&freezer.join("sb1/freezer.state")), "FROZEN");
        // Later ones move only what is not there yet (a child born before its parent moved).
        fs::write(memory.join("cgroup.procs"), "5\n12\n40\n").unwrap();
        assert!(cgroup.freeze().unwrap());
        assert_eq!(read(&freezer.join("sb1/cgroup.procs")), "5\n12\n40\n");
        assert!(cgroup.thaw().unwrap());
        assert_eq!(read(&freezer.join("sb1/freezer.state")), "THAWED");

        // The anchor is no sandbox: crash cleanup neither lists nor removes it.
        assert_eq!(manager.list().unwrap(), ["sb1"]);
        let stale = manager.open("sb2");
        fs::create_dir_all(freezer.join("sb2")).unwrap();
        assert_eq!(manager.list().unwrap(), ["sb1", "sb2"]);
        stale.remove().unwrap();
        assert!(freezer.join(FREEZER_ANCHOR).is_dir());
        // A shutdown removes it with the parent.
        fs::remove_file(freezer.join(FREEZER_ANCHOR).join("freezer.state")).unwrap();
        manager.remove_parent();
        assert!(!freezer.join(FREEZER_ANCHOR).exists());
    }

    #[test]
    fn freezes_and_thaws_v2() {
        let root = fake_tree(V2, "cpu memory pids\n");
        let manager = CgroupManager::from_mountinfo(V2, root.path(), "kindling").unwrap();
        // No anchor on v2: its freezer flips no static key.
        assert!(manager.prepare_freezer().unwrap());
        let cgroup = manager.create("sb1", &LIMITS).unwrap();
        let dir = root.path().join("sys/fs/cgroup/kindling/sb1");
        assert_eq!(cgroup.procs_files(), vec![dir.join("cgroup.procs")]);
        assert!(cgroup.freeze().unwrap());
        assert_eq!(read(&dir.join("cgroup.freeze")), "1");
        assert!(cgroup.thaw().unwrap());
        assert_eq!(read(&dir.join("cgroup.freeze")), "0");
        assert!(!root
            .path()
            .join("sys/fs/cgroup/kindling")
            .join(FREEZER_ANCHOR)
            .exists());
    }

    #[test]
    fn without_a_freezer_nothing_freezes() {
        let root = fake_tree(V1, "");
        let manager = CgroupManager::from_mountinfo(V1, root.path(), "kindling").unwrap();
        assert!(!manager.prepare_freezer().unwrap());
        let cgroup = manager.create("sb1", &LIMITS).unwrap();
        assert_eq!(cgroup.procs_files().len(), 3);
        assert!(!cgroup.freeze().unwrap());
        assert!(!cgroup.thaw().unwrap());
        assert!(!root.path().join("sys/fs/cgroup/freezer").exists());
    }

    #[test]
    fn reads_pids_from_every_directory() {
        let root = fake_tree(V1, "");
        let manager = CgroupManager::from_mountinfo(V1, root.path(), "kindling").unwrap();
        let cgroup = manager.create("sb1", &LIMITS).unwrap();
        let files = cgroup.procs_files();
        fs::write(&files[0], "12\n5\n").unwrap();
        fs::write(&files[1], "5\n").unwrap();
        assert_eq!(cgroup.pids().unwrap(), [5, 12]);
        fs::write(&files[2], "five\n").unwrap();
        assert!(matches!(cgroup.pids(), Err(CgroupError::Parse { .. })));
    }

    /// Needs root and a real cgroup hierarchy:
    /// `cargo test -p kindling-sandbox cgroup -- --include-ignored`.
    #[test]
    #[ignore]
    fn real_hierarchy() {
        let manager = CgroupManager::detect("kindling-selftest").unwrap();
        let name = format!("kindling-test-{}", std::process::id());
        let cgroup = manager.create(&name, &LIMITS).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let checks = std::panic::catch_unwind(|| {
            let memory = &cgroup.memory.dir;
            if cgroup.memory.version == Version::V1 {
                assert_eq!(
                    read(&memory.join("memory.limit_in_bytes")).trim(),
                    "134217728"
                );
            } else {
                assert_eq!(read(&memory.join("memory.max")).trim(), "134217728");
            }
            assert_eq!(read(&cgroup.pids.dir.join("pids.max")).trim(), "64");
            for file in cgroup.procs_files() {
                fs::write(file, child.id().to_string()).unwrap();
            }
            assert_eq!(cgroup.pids().unwrap(), [child.id() as i32]);
            cgroup.memory_usage().unwrap();
            cgroup.memory_peak().unwrap();
            assert_eq!(cgroup.oom_kills().unwrap(), 0);
            // A frozen sandbox is still killed (v1 freezes through SIGKILL until thawed).
            if cgroup.freeze().unwrap() {
                let (file, ..) = cgroup.freezer.as_ref().unwrap().version.freezer_file();
                let state = read(&cgroup.freezer.as_ref().unwrap().dir.join(file));
                assert!(
                    ["FREEZING", "FROZEN", "1"].contains(&state.trim()),
                    "{state}"
                );
            }
            cgroup.kill_all().unwrap();
            assert!(cgroup.pids().unwrap().is_empty());
        });
        let _ = child.kill();
        let _ = child.wait();
        let removed = cgroup.remove();
        manager.remove_parent();
        if let Err(panic) = checks {
            std::panic::resume_unwind(panic);
        }
        removed.unwrap();
        assert!(manager.list().unwrap().is_empty());
    }
}
