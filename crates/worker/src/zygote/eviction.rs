//! Zygote housekeeping: idle zygotes are paused (SIGSTOP, resumed by their next request), and
//! idle leaf zygotes are evicted, least recently used first, while the machine is short of
//! memory; they are recreated on next need.

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
            let parents: BTreeSet<String> = nodes
                .iter()
                .filter_map(|z| z.parent.as_ref().map(|p| p.id.clone()))
                .collect();
            let victim = nodes
                .iter()
                .filter(|z| !parents.contains(&z.id))
                .min_by_key(|z| z.last_used());
            if let Some(v) = victim {
                tracing::warn!(zygote = %v.id, "evicting zygote under memory pressure");
                self.discard(v);
                self.drop_seeds(&v.packages);
                v.kill();
            }
        }
    }
}
