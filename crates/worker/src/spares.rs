//! Spare sandboxes: clean sandboxes created ahead of need, with no function attached yet
//! (DESIGN.md's vocabulary). Today each is made within a zygote's namespaces for the fork
//! starts of that zygote, so they are kept by the zygote's id: useless to any other zygote,
//! even one with the same packages. How many to keep and for which zygote is the zygotes'
//! refill policy; this module only keeps them.

use crate::sandboxes::SandboxHandle;
use parking_lot::Mutex;
use std::collections::HashMap;

/// A spare sandbox: its id and the sandbox.
pub(crate) type Spare = (String, SandboxHandle);

/// Spare sandboxes by the id of the zygote they were made within.
#[derive(Default)]
pub(crate) struct SpareSandboxes {
    by_zygote: Mutex<HashMap<String, Vec<Spare>>>,
}

impl SpareSandboxes {
    /// A spare made within zygote `zygote`, if one waits.
    pub(crate) fn take(&self, zygote: &str) -> Option<Spare> {
        let mut map = self.by_zygote.lock();
        let list = map.get_mut(zygote)?;
        let spare = list.pop();
        if list.is_empty() {
            map.remove(zygote);
        }
        spare
    }

    /// Keeps a spare made within zygote `zygote`.
    pub(crate) fn put(&self, zygote: &str, spare: Spare) {
        self.by_zygote
            .lock()
            .entry(zygote.to_string())
            .or_default()
            .push(spare);
    }

    /// Spares waiting, all zygotes together.
    pub(crate) fn count(&self) -> usize {
        self.by_zygote.lock().values().map(Vec::len).sum()
    }

    /// Spares waiting for each zygote (by id).
    pub(crate) fn counts(&self) -> HashMap<String, usize> {
        self.by_zygote
            .lock()
            .iter()
            .map(|(z, list)| (z.clone(), list.len()))
            .collect()
    }

    /// Destroys the spares made within zygote `zygote` (blocking).
    pub(crate) fn destroy_for(&self, zygote: &str) {
        let dropped = self.by_zygote.lock().remove(zygote);
        for (_, sandbox) in dropped.into_iter().flatten() {
            sandbox.destroy();
        }
    }

    /// Destroys every spare (shutdown; blocking).
    pub(crate) fn destroy_all(&self) {
        let all: Vec<Spare> = self
            .by_zygote
            .lock()
            .drain()
            .flat_map(|(_, list)| list)
            .collect();
        for (_, sandbox) in all {
            sandbox.destroy();
        }
    }
}
