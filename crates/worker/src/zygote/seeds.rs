//! Seeds: children forked from a zygote ahead of need, each waiting entered and unprivileged
//! in a spare sandbox until a function takes it (docs/adr/0003); and the refill that keeps
//! `seeds` of them per zygote that starts instances, and `spare_sandboxes` spare sandboxes.

use super::process::read_exact_with_pid;
use super::{policy, Forked};
use super::{ForkError, PackageSet, Zygote, Zygotes, FORK_TIMEOUT, REFILL_DELAY};
use crate::frame;
use crate::sandboxes::{Nesting, SandboxHandle};
use crate::spares::Spare;
use kindling_sandbox::spec::MountSpec;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A child forked ahead of need (like Android's unspecialized app processes): it has entered a
/// clean sandbox and dropped every privilege, and waits on `channel` for the function it becomes.
pub(super) struct Seed {
    pub(super) id: String,
    pub(super) sandbox: SandboxHandle,
    pub(super) channel: UnixStream,
    /// The child's pid on the host, from the credentials of its `ready` frame, once read.
    pub(super) pid: Option<i32>,
}

impl Seed {
    /// Waits for the child's `ready` frame (sent once it is entered and unprivileged).
    /// Returns the child's host pid.
    pub(super) fn wait_ready(&mut self) -> Result<i32, ForkError> {
        self.channel.set_read_timeout(Some(FORK_TIMEOUT))?;
        let expected = frame::encode(READY)?;
        let mut got = vec![0u8; expected.len()];
        let sender = read_exact_with_pid(&self.channel, &mut got);
        self.channel.set_read_timeout(None)?;
        match sender {
            Ok(pid) if got == expected => {
                self.pid = Some(pid);
                Ok(pid)
            }
            Ok(_) => Err(ForkError::Zygote(
                "forked child sent a malformed ready frame".into(),
            )),
            Err(e) => Err(ForkError::Zygote(format!(
                "forked child did not get ready ({e}); {}",
                self.sandbox
                    .setup_error()
                    .unwrap_or_else(|| "see the worker log".into())
            ))),
        }
    }
}

/// The payload of the frame a forked child sends once it is entered and unprivileged.
const READY: &[u8] = b"ready";

impl Zygotes {
    /// A seed of the zygote holding `set`.
    pub(super) fn take_seed(&self, set: &PackageSet) -> Option<Seed> {
        self.seeds.take(set)
    }

    /// Destroys the seeds of the zygote holding `set`.
    pub(super) fn drop_seeds(&self, set: &PackageSet) {
        for seed in self.seeds.remove(set) {
            seed.sandbox.destroy();
        }
    }

    /// A live zygote that started instances and has fewer than `seeds` seeds.
    fn short_of_seeds(&self) -> Option<Arc<Zygote>> {
        let seeds = self.seeds.counts();
        self.choose(|standing| policy::next_seed(standing, &seeds, self.config.seeds))
    }

    /// The live zygote `pick` chooses among those alive now, in a stable order.
    fn choose(
        &self,
        pick: impl FnOnce(&[policy::Standing<'_>]) -> Option<usize>,
    ) -> Option<Arc<Zygote>> {
        let mut live: Vec<Arc<Zygote>> = self
            .nodes
            .lock()
            .values()
            .filter(|z| !z.is_dead())
            .cloned()
            .collect();
        live.sort_by(|a, b| a.packages.cmp(&b.packages));
        let standing: Vec<policy::Standing<'_>> = live
            .iter()
            .map(|z| policy::Standing {
                id: &z.id,
                packages: &z.packages,
                serves_instances: z.serves_instances.load(Ordering::SeqCst),
                last_used: z.last_used(),
            })
            .collect();
        let chosen = pick(&standing)?;
        live.get(chosen).cloned()
    }

    /// On a thread of its own, learns from `forked` (a forked instance that has served its
    /// first invocation, and the modules it reported importing) if given, then runs
    /// [`Zygotes::refill`]; `/stats` counts it as pending until done.
    pub fn schedule_refill(self: &Arc<Self>, forked: Option<(Forked, Vec<String>)>) {
        self.refills_pending.fetch_add(1, Ordering::SeqCst);
        let zygotes = self.clone();
        std::thread::spawn(move || {
            std::thread::sleep(REFILL_DELAY);
            if let Some((f, modules)) = forked {
                zygotes.learn(&f, &modules);
            }
            zygotes.refill();
            zygotes.refills_pending.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// Refills scheduled and not finished.
    pub fn refills_pending(&self) -> usize {
        self.refills_pending.load(Ordering::SeqCst)
    }

    /// Forks seeds for the zygotes that start instances, then tops the spare sandboxes up to
    /// `spare_sandboxes`, spread over the zygotes that start instances (blocking; run off the
    /// request path).
    pub fn refill(&self) {
        // One refiller at a time; others find the work being done and leave.
        let Some(_refilling) = self.refilling.try_lock() else {
            return;
        };
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            if let Some(z) = self.short_of_seeds() {
                let clean = match self.spares.take(&z.id) {
                    Some(p) => Ok(p),
                    None => self.create_spare(&z),
                };
                let write_ahead = self.write_ahead(&z.packages);
                let seeded = clean
                    .and_then(|(id, sandbox)| self.fork_into(&z, id, sandbox, &write_ahead))
                    .and_then(|mut seed| match seed.wait_ready() {
                        Ok(_) => Ok(seed),
                        Err(e) => {
                            seed.sandbox.destroy();
                            Err(e)
                        }
                    });
                match seeded {
                    Ok(seed) => self.seeds.put(z.packages.clone(), seed),
                    Err(e) => {
                        tracing::warn!(zygote = %z.id, "cannot fork a seed: {e}");
                        if matches!(e, ForkError::Io(_) | ForkError::Zygote(_)) {
                            self.discard(&z);
                        }
                        return;
                    }
                }
                continue;
            }
            let Some(z) = self.short_of_spares() else {
                return;
            };
            match self.create_spare(&z) {
                Ok(p) => self.spares.put(z.id.clone(), p),
                Err(e) => {
                    tracing::warn!(zygote = %z.id, "cannot pre-create a sandbox: {e}");
                    return;
                }
            }
        }
    }

    /// The live zygote that starts instances and should get the next spare sandbox (the
    /// fewest, then the most recently used), while there are fewer than `spare_sandboxes`.
    fn short_of_spares(&self) -> Option<Arc<Zygote>> {
        let spares = self.spares.counts();
        self.choose(|standing| policy::next_spare(standing, &spares, self.config.spare_sandboxes))
    }

    /// A spare sandbox within `zygote`'s namespaces: a function's mounts with the zygote's
    /// packages and without its code, its root complete.
    fn create_spare(&self, zygote: &Zygote) -> Result<Spare, ForkError> {
        let id = self.instances.sandboxes.next_id();
        let (mut sandbox, _) = self.instances.sandboxes.create_sandbox(
            &id,
            self.spare_mounts(&zygote.packages),
            false,
            Nesting::Within(&zygote.sandbox),
            &self.cgroup_limits(),
            None,
        )?;
        match sandbox.wait_ready() {
            Ok(_) => Ok((id, sandbox)),
            Err(e) => {
                sandbox.destroy();
                Err(e.into())
            }
        }
    }

    /// Spare sandboxes' mounts: a function's mounts without its code (attached on use), with
    /// the zygote's packages (the function's others are attached on use too).
    fn spare_mounts(&self, set: &PackageSet) -> Vec<MountSpec> {
        let mut mounts = self.mounts(set);
        for m in &mut mounts {
            if let MountSpec::Tmpfs { size_bytes, .. } = m {
                *size_bytes = self.spare_tmp_mb << 20;
            }
        }
        // Function sandboxes reach object storage (see Factory::function_mounts).
        mounts.extend(self.instances.storage_mount());
        mounts
    }

    /// Spare sandboxes waiting.
    pub fn spares(&self) -> usize {
        self.spares.count()
    }

    /// Spare sandboxes waiting (the `/stats` key `sandboxes.pooled` keeps its name).
    pub fn pooled(&self) -> usize {
        self.spares()
    }

    /// Seeds waiting to become instances.
    pub fn seeded(&self) -> usize {
        self.seeds.count()
    }
}
