//! The zygote policy on a fake host: which zygotes are made and reused, where a fork start's
//! child comes from (a seed, a spare sandbox, a new sandbox), refills, learning and eviction.
//! No sandbox, no process, no root.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::function_config::{Format, FunctionConfig};
use crate::lock::PackageRef;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Default)]
struct FakeProcess {
    dead: AtomicBool,
    paused: AtomicBool,
    imported: Mutex<Vec<String>>,
}

impl ZygoteProcess for FakeProcess {
    fn import(&self, modules: &[String]) -> Result<(), ForkError> {
        self.imported.lock().extend(modules.iter().cloned());
        Ok(())
    }
    fn is_alive(&self) -> bool {
        !self.dead.load(Ordering::SeqCst)
    }
    fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
    }
    fn pause_if_idle(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }
    fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }
    fn memory_usage(&self) -> Option<u64> {
        None
    }
}

/// A sandbox: its id and whether it is a spare (else made for a function).
#[derive(Debug)]
struct FakeSandbox {
    id: String,
    spare: bool,
}

/// A child: its sandbox and the zygote it was forked from.
#[derive(Debug)]
struct FakeChild {
    sandbox: FakeSandbox,
    zygote: String,
    ready: bool,
}

/// An instance: where its child came from.
#[derive(Debug)]
struct FakeInstance {
    sandbox: String,
    zygote: String,
    clean: bool,
}

#[derive(Default)]
struct FakeHost {
    next: AtomicUsize,
    /// What happened, in order.
    events: Mutex<Vec<String>>,
    /// Fork requests fail (a broken zygote).
    fork_fails: AtomicBool,
    available_mb: Mutex<Option<u64>>,
}

impl FakeHost {
    fn id(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.next.fetch_add(1, Ordering::SeqCst))
    }
    fn event(&self, e: String) {
        self.events.lock().push(e);
    }
    fn events(&self) -> Vec<String> {
        std::mem::take(&mut *self.events.lock())
    }
}

impl ZygoteHost for FakeHost {
    type Process = FakeProcess;
    type Sandbox = FakeSandbox;
    type Child = FakeChild;
    type Instance = FakeInstance;

    fn zygote_id(&self) -> String {
        self.id("zy")
    }
    fn top_level_modules(&self, key: &str) -> Vec<String> {
        vec![key.split("==").next().unwrap().to_string()]
    }
    fn start_zygote(
        &self,
        id: &str,
        set: &PackageSet,
        modules: &[String],
        submodules: &[String],
        parent: Option<&Zygote<FakeProcess>>,
    ) -> Result<Started<FakeProcess>, ForkError> {
        self.event(format!(
            "start {id} {set:?} from {} importing {modules:?} {submodules:?}",
            parent.map_or("-", |p| p.id.as_str())
        ));
        Ok(Started {
            process: FakeProcess::default(),
            pid: 1000,
            failed_imports: Vec::new(),
        })
    }
    fn spare_sandbox(&self, zygote: &Zygote<FakeProcess>) -> Result<FakeSandbox, ForkError> {
        let id = self.id("sb");
        self.event(format!("spare {id} in {}", zygote.id));
        Ok(FakeSandbox { id, spare: true })
    }
    fn function_sandbox(
        &self,
        zygote: &Zygote<FakeProcess>,
        function: &Arc<FunctionVersion>,
        _limits: &FunctionLimits,
    ) -> Result<FakeSandbox, ForkError> {
        let id = self.id("sb");
        self.event(format!(
            "sandbox {id} for {} in {}",
            function.name, zygote.id
        ));
        Ok(FakeSandbox { id, spare: false })
    }
    fn fork_child(
        &self,
        zygote: &Zygote<FakeProcess>,
        sandbox: FakeSandbox,
        write_ahead: &[(u64, u64)],
    ) -> Result<FakeChild, ForkError> {
        if self.fork_fails.load(Ordering::SeqCst) {
            self.event(format!("destroy {}", sandbox.id));
            return Err(ForkError::Zygote("fork failed".into()));
        }
        self.event(format!(
            "fork {} into {} writing {write_ahead:?}",
            zygote.id, sandbox.id
        ));
        Ok(FakeChild {
            sandbox,
            zygote: zygote.id.clone(),
            ready: false,
        })
    }
    fn wait_ready(&self, child: &mut FakeChild) -> Result<i32, ForkError> {
        child.ready = true;
        Ok(2000)
    }
    fn assign(
        &self,
        child: FakeChild,
        _set: &PackageSet,
        function: &Arc<FunctionVersion>,
        _limits: &FunctionLimits,
        clean: bool,
    ) -> Result<(FakeInstance, i32), ForkError> {
        assert_eq!(
            clean, child.sandbox.spare,
            "clean sandboxes are the spare ones"
        );
        self.event(format!("assign {} to {}", child.sandbox.id, function.name));
        Ok((
            FakeInstance {
                sandbox: child.sandbox.id,
                zygote: child.zygote,
                clean,
            },
            2000,
        ))
    }
    fn destroy_sandbox(&self, sandbox: FakeSandbox) {
        self.event(format!("destroy {}", sandbox.id));
    }
    fn destroy_child(&self, child: FakeChild) {
        self.event(format!("destroy {}", child.sandbox.id));
    }
    fn sandbox_memory(&self, _sandbox: &FakeSandbox) -> Option<u64> {
        Some(1 << 20)
    }
    fn child_memory(&self, _child: &FakeChild) -> Option<u64> {
        Some(2 << 20)
    }
    fn written_pages(&self, _pid: i32, _max: usize) -> std::io::Result<Vec<u64>> {
        Ok(vec![0x1000, 0x2000])
    }
    fn available_mb(&self) -> Option<u64> {
        *self.available_mb.lock()
    }
    fn zygote_sandboxes(&self) -> usize {
        0
    }
}

fn config(seeds: usize, spares: usize) -> ZygoteConfig {
    ZygoteConfig {
        tree: vec![vec!["numpy".into()]],
        seeds,
        spare_sandboxes: spares,
        ..ZygoteConfig::default()
    }
}

fn zygotes(config: ZygoteConfig) -> Zygotes<FakeHost> {
    Zygotes::new(FakeHost::default(), config, 64)
}

fn function(name: &str, packages: &[&str]) -> Arc<FunctionVersion> {
    Arc::new(FunctionVersion {
        name: name.into(),
        hash: "h".into(),
        format: Format::OpenLambda,
        dir: PathBuf::new(),
        config: FunctionConfig::default(),
        lock: Lock {
            packages: packages
                .iter()
                .map(|k| PackageRef::parse(k).unwrap())
                .collect(),
            ..Lock::default()
        },
        imports: vec!["numpy.linalg".into(), "json".into()],
        entry: Default::default(),
    })
}

fn limits(network: bool, tmp_mb: u64) -> FunctionLimits {
    FunctionLimits {
        memory_mb: 128,
        timeout: Duration::from_secs(1),
        cpu_cores: 1.0,
        pids: 8,
        tmp_mb,
        network,
    }
}

#[test]
fn zygotes_are_made_once_smallest_first_and_remade_after_they_die() {
    let z = zygotes(config(0, 0));
    let f = function("f", &["numpy==1.26.4", "scipy==1.13.0"]);
    let deepest = z.acquire(&f).unwrap();
    assert_eq!(
        z.host.events(),
        vec![
            "start zy0 {} from - importing [] []",
            r#"start zy1 {"numpy==1.26.4"} from zy0 importing ["numpy"] []"#,
            // The zygote the function forks from preloads the function's submodule imports.
            r#"start zy2 {"numpy==1.26.4", "scipy==1.13.0"} from zy1 importing ["scipy"] ["numpy.linalg"]"#,
        ]
    );
    assert_eq!(deepest.id, "zy2");
    assert_eq!(deepest.parent.as_ref().unwrap().id, "zy1");
    assert_eq!(z.count(), 3);
    // Live zygotes are reused; another numpy version gets zygotes of its own.
    assert_eq!(z.acquire(&f).unwrap().id, "zy2");
    assert!(z.host.events().is_empty());
    let g = function("g", &["numpy==2.0.0"]);
    assert_eq!(z.acquire(&g).unwrap().id, "zy3");
    assert_eq!(
        z.host.events(),
        vec![r#"start zy3 {"numpy==2.0.0"} from zy0 importing ["numpy"] ["numpy.linalg"]"#]
    );
    // A dead zygote is made again, below its live parent.
    deepest.process.kill();
    assert_eq!(z.acquire(&f).unwrap().id, "zy4");
    assert_eq!(z.host.events().len(), 1);
    let off = zygotes(ZygoteConfig {
        enabled: false,
        ..config(0, 0)
    });
    assert!(matches!(off.acquire(&f), Err(ForkError::Disabled)));
}

#[test]
fn a_fork_start_takes_a_seed_then_a_spare_then_a_new_sandbox() {
    let z = zygotes(config(1, 1));
    let f = function("f", &[]);
    let root = z.acquire(&f).unwrap();
    z.host.events();
    // Nothing made ahead yet: a sandbox for the function.
    let (i, forked) = z.fork_start(&root, &f, &limits(false, 64)).unwrap();
    assert!(!forked.seeded && !i.clean);
    assert_eq!(
        z.host.events(),
        vec![
            "sandbox sb1 for f in zy0",
            "fork zy0 into sb1 writing []",
            "assign sb1 to f"
        ]
    );
    // It started an instance: the refill forks it a seed, then makes it a spare.
    z.refill();
    assert_eq!(
        z.host.events(),
        vec![
            "spare sb2 in zy0",
            "fork zy0 into sb2 writing []",
            "spare sb3 in zy0"
        ]
    );
    assert_eq!((z.seeded(), z.spares()), (1, 1));
    // The seed first...
    let (i, forked) = z.fork_start(&root, &f, &limits(false, 64)).unwrap();
    assert!(forked.seeded && i.clean);
    assert_eq!(i.sandbox, "sb2");
    // ...then the spare...
    let (i, forked) = z.fork_start(&root, &f, &limits(false, 64)).unwrap();
    assert!(!forked.seeded && i.clean);
    assert_eq!(i.sandbox, "sb3");
    assert_eq!((z.seeded(), z.spares()), (0, 0));
    z.refill();
    z.host.events();
    // ...but a function whose sandbox differs from a clean one (network, another /tmp) gets a
    // sandbox of its own, and the seed and spare wait.
    for l in [limits(true, 64), limits(false, 32)] {
        let (i, forked) = z.fork_start(&root, &f, &l).unwrap();
        assert!(!forked.seeded && !i.clean);
        assert_eq!(i.zygote, "zy0");
    }
    assert_eq!((z.seeded(), z.spares()), (1, 1));
    assert_eq!(root.forks.load(Ordering::SeqCst), 6);
}

#[test]
fn refills_serve_only_zygotes_that_start_instances_and_stop_at_the_targets() {
    let z = zygotes(config(2, 3));
    let f = function("f", &["numpy==1.26.4"]);
    let numpy = z.acquire(&f).unwrap();
    z.host.events();
    z.refill();
    assert!(
        z.host.events().is_empty(),
        "no zygote started an instance yet"
    );
    z.fork_start(&numpy, &f, &limits(false, 64)).unwrap();
    z.host.events();
    z.refill();
    let events = z.host.events();
    // Two seeds for the numpy zygote, none for the root; then three spares, all for it.
    assert_eq!(
        events.iter().filter(|e| e.starts_with("fork zy1")).count(),
        2
    );
    assert_eq!(
        events.iter().filter(|e| e.starts_with("fork zy0")).count(),
        0
    );
    assert_eq!(z.seeded(), 2);
    assert_eq!(z.spares(), 3);
    z.refill();
    assert!(z.host.events().is_empty(), "nothing short");
    // A zygote that cannot fork is discarded, and made again on the next need.
    z.fork_start(&numpy, &f, &limits(false, 64)).unwrap();
    z.host.fork_fails.store(true, Ordering::SeqCst);
    z.refill();
    assert!(numpy.is_dead());
    assert_eq!(z.spares(), 0, "its spares went with it");
    z.host.fork_fails.store(false, Ordering::SeqCst);
    assert_ne!(z.acquire(&f).unwrap().id, numpy.id);
}

#[test]
fn learning_imports_the_zygotes_own_submodules_and_seeds_write_ahead() {
    let z = zygotes(config(1, 0));
    let f = function("f", &["numpy==1.26.4"]);
    let numpy = z.acquire(&f).unwrap();
    let (_, forked) = z.fork_start(&numpy, &f, &limits(false, 64)).unwrap();
    z.refill();
    assert_eq!(z.seeded(), 1);
    z.host.events();
    z.learn(
        &forked,
        &[
            "numpy.fft".into(),
            "numpy._private".into(),
            "os.path".into(),
        ],
    );
    assert_eq!(
        *numpy.process.imported.lock(),
        vec!["numpy.fft".to_string()]
    );
    // Seeds forked before lack the module: they go, and the refill forks new ones that write
    // the learned pages ahead of need.
    assert_eq!(z.seeded(), 0);
    z.refill();
    let events = z.host.events();
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("fork zy1") && e.ends_with("writing [(4096, 2)]")),
        "{events:?}"
    );
}

#[test]
fn housekeeping_pauses_idle_zygotes_and_evicts_the_least_recently_used_leaf() {
    let z = zygotes(ZygoteConfig {
        idle_pause_secs: 0,
        ..config(1, 0)
    });
    let f = function("f", &["numpy==1.26.4"]);
    let g = function("g", &["numpy==1.26.4", "six==1.16.0"]);
    let numpy = z.acquire(&f).unwrap();
    std::thread::sleep(Duration::from_millis(2));
    let six = z.acquire(&g).unwrap();
    z.fork_start(&numpy, &f, &limits(false, 64)).unwrap();
    z.refill();
    assert_eq!(z.seeded(), 1);
    z.housekeeping();
    assert!(numpy.process.is_paused() && six.process.is_paused());
    assert_eq!(z.count(), 3);
    // Enough memory: nothing is evicted.
    *z.host.available_mb.lock() = Some(4096);
    z.housekeeping();
    assert_eq!(z.count(), 3);
    // Short of memory: the leaf goes (six's zygote, a child of numpy's); parents stay.
    *z.host.available_mb.lock() = Some(10);
    z.housekeeping();
    assert!(six.is_dead() && !numpy.is_dead());
    assert_eq!(z.count(), 2);
    z.shutdown();
    assert_eq!(z.count(), 0);
    assert_eq!((z.seeded(), z.spares()), (0, 0));
}

#[test]
fn after_a_burst_of_fork_starts_a_zygote_keeps_a_seed_per_start_up_to_the_bound() {
    let z = zygotes(ZygoteConfig {
        max_seeds: 3,
        ..config(1, 0)
    });
    let f = function("f", &["numpy==1.26.4"]);
    let numpy = z.acquire(&f).unwrap();
    z.fork_start(&numpy, &f, &limits(false, 64)).unwrap();
    z.refill();
    assert_eq!(z.seeded(), 1, "one seed while starts come one at a time");
    // Five fork starts in flight at once (held as the pool holds them while they start).
    let burst: Vec<_> = (0..5).map(|_| numpy.start_counted()).collect();
    assert_eq!(numpy.recent_burst(), 5);
    drop(burst);
    assert_eq!(numpy.starting.load(Ordering::SeqCst), 0);
    z.host.events();
    z.refill();
    // Seeds up to min(5, max_seeds): the next burst takes three without waiting on forks.
    assert_eq!(z.seeded(), 3);
    let events = z.host.events();
    assert_eq!(
        events.iter().filter(|e| e.starts_with("fork zy1")).count(),
        2,
        "{events:?}"
    );
    for _ in 0..3 {
        let (_, forked) = z.fork_start(&numpy, &f, &limits(false, 64)).unwrap();
        assert!(forked.seeded);
    }
    // The bound holds after later bursts too, and seeds off stay off.
    let off = zygotes(ZygoteConfig {
        max_seeds: 3,
        ..config(0, 0)
    });
    let numpy = off.acquire(&f).unwrap();
    let _burst: Vec<_> = (0..5).map(|_| numpy.start_counted()).collect();
    off.fork_start(&numpy, &f, &limits(false, 64)).unwrap();
    off.refill();
    assert_eq!(off.seeded(), 0);
}
