//! Seeds: children forked from a zygote ahead of need, each waiting entered and unprivileged
//! in a spare sandbox until a function takes it (docs/adr/0003); and the refill that keeps
//! `seeds` of them per zygote that starts instances, and `spare_sandboxes` spare sandboxes.

use super::{policy, ForkError, Forked, PackageSet, Zygote, ZygoteHost, Zygotes, REFILL_DELAY};
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl<H: ZygoteHost> Zygotes<H> {
    /// Destroys the seeds of the zygote holding `set`.
    pub(super) fn drop_seeds(&self, set: &PackageSet) {
        for seed in self.seeds.remove(set) {
            self.host.destroy_child(seed);
        }
    }

    /// A live zygote that started instances and has fewer than `seeds` seeds.
    fn short_of_seeds(&self) -> Option<Arc<Zygote<H::Process>>> {
        let seeds = self.seeds.counts();
        self.choose(|standing| {
            policy::next_seed(standing, &seeds, self.config.seeds, self.config.max_seeds)
        })
    }

    /// The live zygote `pick` chooses among those alive now, in a stable order.
    fn choose(
        &self,
        pick: impl FnOnce(&[policy::Standing<'_>]) -> Option<usize>,
    ) -> Option<Arc<Zygote<H::Process>>> {
        let mut live: Vec<Arc<Zygote<H::Process>>> = self
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
                burst: z.recent_burst(),
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
                    None => self.host.spare_sandbox(&z),
                };
                let write_ahead = self.write_ahead(&z.packages);
                let seeded = clean
                    .and_then(|sandbox| self.fork_child(&z, sandbox, &write_ahead))
                    .and_then(|mut seed| match self.host.wait_ready(&mut seed) {
                        Ok(_) => Ok(seed),
                        Err(e) => {
                            self.host.destroy_child(seed);
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
            match self.host.spare_sandbox(&z) {
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
    fn short_of_spares(&self) -> Option<Arc<Zygote<H::Process>>> {
        let spares = self.spares.counts();
        self.choose(|standing| policy::next_spare(standing, &spares, self.config.spare_sandboxes))
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
