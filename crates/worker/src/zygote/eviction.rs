//! Zygote housekeeping: idle zygotes are paused (SIGSTOP, resumed by their next request), and
//! idle leaf zygotes are evicted, least recently used first, while the machine is short of
//! memory; they are recreated on next need. Under the worker's memory budget, what zygotes keep
//! is counted and shed on the pool's demand.

use super::{Zygote, ZygoteHost, ZygoteProcess, Zygotes};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

impl<H: ZygoteHost> Zygotes<H> {
    /// Pauses zygotes idle past `idle_pause_secs`; evicts idle leaf zygotes while the machine
    /// is short of memory.
    pub fn housekeeping(&self) {
        let idle_pause = Duration::from_secs(self.config.idle_pause_secs);
        let nodes: Vec<Arc<Zygote<H::Process>>> = self.nodes.lock().values().cloned().collect();
        for z in &nodes {
            if z.last_used().elapsed() >= idle_pause && !z.process.is_paused() {
                z.process.pause_if_idle();
            }
        }
        if self
            .host
            .available_mb()
            .is_some_and(|mb| mb < self.config.min_available_mb)
        {
            if let Some(v) = lru_leaf(&nodes, |_| true) {
                tracing::warn!(zygote = %v.id, "evicting zygote under memory pressure");
                self.discard(v);
                self.drop_seeds(&v.packages);
                v.kill();
            }
        }
    }

    /// Memory charged now to zygotes, seeds and spare sandboxes together.
    pub fn memory_usage(&self) -> u64 {
        let zygotes: u64 = self
            .nodes
            .lock()
            .values()
            .filter_map(|z| z.memory_usage())
            .sum();
        let seeds = self.seeds.sum(|c| self.host.child_memory(c).unwrap_or(0));
        let spares = self
            .spares
            .sum(|s| self.host.sandbox_memory(s).unwrap_or(0));
        zygotes + seeds + spares
    }

    /// Frees memory for the worker's budget, cheapest to remake first: every seed and spare
    /// sandbox (a few ms each to remake, refilled on the next start), else the least recently
    /// used idle leaf zygote (hundreds of ms to remake: its imports). False when there was
    /// nothing to free.
    pub fn shed(&self) -> bool {
        let seeds = self.seeds.drain();
        let spares = self.spares.drain();
        if !seeds.is_empty() || !spares.is_empty() {
            for seed in seeds {
                self.host.destroy_child(seed);
            }
            for spare in spares {
                self.host.destroy_sandbox(spare);
            }
            return true;
        }
        let nodes: Vec<Arc<Zygote<H::Process>>> = self.nodes.lock().values().cloned().collect();
        // A zygote a start holds now (beyond the tree's reference and this list's) is busy.
        match lru_leaf(&nodes, |z| Arc::strong_count(z) <= 2) {
            Some(v) => {
                tracing::info!(zygote = %v.id, "evicting zygote for the memory budget");
                self.discard(v);
                v.kill();
                true
            }
            None => false,
        }
    }
}

/// The least recently used of `nodes` that is no other's parent and passes `eligible`.
fn lru_leaf<P: ZygoteProcess>(
    nodes: &[Arc<Zygote<P>>],
    eligible: impl Fn(&Arc<Zygote<P>>) -> bool,
) -> Option<&Arc<Zygote<P>>> {
    let parents: BTreeSet<&str> = nodes
        .iter()
        .filter_map(|z| z.parent.as_ref().map(|p| p.id.as_str()))
        .collect();
    nodes
        .iter()
        .filter(|z| !parents.contains(z.id.as_str()) && eligible(z))
        .min_by_key(|z| z.last_used())
}
