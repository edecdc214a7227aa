//! Things made ahead of need and kept until a start takes one: spare sandboxes (clean
//! sandboxes with no function attached yet, DESIGN.md's vocabulary) and seeds. Today each spare
//! is made within a zygote's namespaces for that zygote's fork starts, so spares are kept by the
//! zygote's id (useless to any other zygote, even one with the same packages); seeds are kept
//! by their zygote's package set. How many to keep and for which zygote is the zygotes' refill
//! policy (`zygote/policy.rs`); this module only keeps them.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::Hash;

/// Items made ahead of need, by key; the most recently made is taken first.
pub(crate) struct Reserve<K, T> {
    by_key: Mutex<HashMap<K, Vec<T>>>,
}

impl<K, T> Default for Reserve<K, T> {
    fn default() -> Self {
        Self {
            by_key: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, T> Reserve<K, T> {
    /// An item kept for `key`, if one waits.
    pub(crate) fn take(&self, key: &K) -> Option<T> {
        let mut map = self.by_key.lock();
        let list = map.get_mut(key)?;
        let item = list.pop();
        if list.is_empty() {
            map.remove(key);
        }
        item
    }

    /// Keeps an item for `key`.
    pub(crate) fn put(&self, key: K, item: T) {
        self.by_key.lock().entry(key).or_default().push(item);
    }

    /// Items kept, all keys together.
    pub(crate) fn count(&self) -> usize {
        self.by_key.lock().values().map(Vec::len).sum()
    }

    /// The sum of `f` over every item kept.
    pub(crate) fn sum(&self, f: impl Fn(&T) -> u64) -> u64 {
        self.by_key.lock().values().flatten().map(f).sum()
    }

    /// Items kept for each key.
    pub(crate) fn counts(&self) -> HashMap<K, usize> {
        self.by_key
            .lock()
            .iter()
            .map(|(k, list)| (k.clone(), list.len()))
            .collect()
    }

    /// Takes every item kept for `key` (for the caller to destroy).
    pub(crate) fn remove(&self, key: &K) -> Vec<T> {
        self.by_key.lock().remove(key).unwrap_or_default()
    }

    /// Takes every item (shutdown).
    pub(crate) fn drain(&self) -> Vec<T> {
        self.by_key
            .lock()
            .drain()
            .flat_map(|(_, list)| list)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_goes_only_to_its_key_newest_first() {
        let r: Reserve<&str, u32> = Reserve::default();
        assert_eq!(r.take(&"numpy==1"), None);
        r.put("numpy==1", 1);
        r.put("numpy==1", 2);
        r.put("numpy==2", 3);
        assert_eq!(r.count(), 3);
        assert_eq!(
            r.counts(),
            HashMap::from([("numpy==1", 2), ("numpy==2", 1)])
        );
        // A seed of another version's zygote is never used.
        assert_eq!(r.take(&"pandas==1"), None);
        assert_eq!(r.take(&"numpy==1"), Some(2));
        assert_eq!(r.take(&"numpy==1"), Some(1));
        assert_eq!(r.take(&"numpy==1"), None);
        assert_eq!(r.counts(), HashMap::from([("numpy==2", 1)]));
        r.put("numpy==1", 4);
        assert_eq!(r.remove(&"numpy==2"), vec![3]);
        assert_eq!(r.drain(), vec![4]);
        assert_eq!(r.count(), 0);
    }
}
