//! Quotas of object storage: what one function's buckets may hold, and what the whole store may
//! hold. An upload reserves what it may add before any of its bytes is written, and is refused
//! if that does not fit; when it ends it commits what it really changed (or its reservation
//! lapses), so uploads in flight never overshoot either quota together.
//!
//! Usage is kept in memory, counted from the backend at start. Objects written or removed on the
//! host behind the worker's back (inputs put in place by benchmark tools, an operator clearing
//! a bucket) make the count drift; so before refusing an upload, the function's space (or, for
//! the total, every space) is counted again, at most once per `recount_after`.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The unit quotas count in: a file system block.
pub const BLOCK: u64 = 4096;

/// What an object of `size` bytes counts: its size rounded up to whole blocks, at least one
/// (so that empty objects are not free; each takes an inode and a directory entry).
pub fn charge(size: u64) -> u64 {
    size.div_ceil(BLOCK).max(1).saturating_mul(BLOCK)
}

/// The backend's true count, for a recount.
pub trait Usage {
    /// What `space` holds now; `None` if it cannot be counted.
    fn usage(&self, space: &str) -> Option<u64>;
    /// Every space that holds anything.
    fn spaces(&self) -> Vec<String>;
}

/// An upload that does not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exceeded {
    /// The function's own quota: what its buckets would hold, and the quota.
    Function { would: u64, limit: u64 },
    /// The whole store's.
    Store { would: u64, limit: u64 },
}

#[derive(Default)]
struct State {
    used: HashMap<String, u64>,
    reserved: HashMap<String, u64>,
    total_used: u64,
    total_reserved: u64,
    counted_at: HashMap<String, Instant>,
    all_counted_at: Option<Instant>,
}

impl State {
    fn set_used(&mut self, space: &str, bytes: u64) {
        let old = self.used.insert(space.to_string(), bytes).unwrap_or(0);
        self.total_used = self.total_used.saturating_sub(old).saturating_add(bytes);
    }
}

/// Both quotas and the usage they are checked against.
pub struct Quotas {
    per_function: u64,
    total: u64,
    recount_after: Duration,
    state: Mutex<State>,
}

impl Quotas {
    /// Quotas over what `usage` counts now.
    pub fn new(per_function: u64, total: u64, recount_after: Duration, usage: &dyn Usage) -> Self {
        let quotas = Self {
            per_function,
            total,
            recount_after,
            state: Mutex::new(State::default()),
        };
        quotas.recount_all(usage);
        quotas
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    /// What `space` holds as far as the quotas know (uploads in flight not included).
    pub fn used(&self, space: &str) -> u64 {
        self.lock().used.get(space).copied().unwrap_or(0)
    }

    /// `space` holds `bytes` less than counted: objects were removed.
    pub fn release(&self, space: &str, bytes: u64) {
        let mut st = self.lock();
        let now = st.used.get(space).copied().unwrap_or(0);
        st.set_used(space, now.saturating_sub(bytes));
    }

    /// Reserves `bytes` for an upload into `space`, or says which quota it would exceed.
    pub fn reserve(
        &self,
        space: &str,
        bytes: u64,
        usage: &dyn Usage,
    ) -> Result<Reservation<'_>, Exceeded> {
        let mut recounted = false;
        loop {
            let mut st = self.lock();
            let own = st.used.get(space).copied().unwrap_or(0)
                + st.reserved.get(space).copied().unwrap_or(0);
            let all = st.total_used + st.total_reserved;
            let over = if own.saturating_add(bytes) > self.per_function {
                Some(Exceeded::Function {
                    would: own.saturating_add(bytes),
                    limit: self.per_function,
                })
            } else if all.saturating_add(bytes) > self.total {
                Some(Exceeded::Store {
                    would: all.saturating_add(bytes),
                    limit: self.total,
                })
            } else {
                None
            };
            let Some(over) = over else {
                *st.reserved.entry(space.to_string()).or_default() += bytes;
                st.total_reserved += bytes;
                return Ok(Reservation {
                    quotas: self,
                    space: space.to_string(),
                    bytes,
                    open: true,
                });
            };
            // Before refusing, make sure the count is not stale (at most once a while: a
            // count walks the space).
            let due = |at: Option<&Instant>| at.is_none_or(|t| t.elapsed() >= self.recount_after);
            let recount = !recounted
                && match over {
                    Exceeded::Function { .. } => due(st.counted_at.get(space)),
                    Exceeded::Store { .. } => due(st.all_counted_at.as_ref()),
                };
            drop(st);
            if !recount {
                return Err(over);
            }
            recounted = true;
            match over {
                Exceeded::Function { .. } => self.recount(space, usage),
                Exceeded::Store { .. } => self.recount_all(usage),
            }
        }
    }

    fn recount(&self, space: &str, usage: &dyn Usage) {
        let counted = usage.usage(space);
        let mut st = self.lock();
        if let Some(bytes) = counted {
            st.set_used(space, bytes);
        }
        st.counted_at.insert(space.to_string(), Instant::now());
    }

    fn recount_all(&self, usage: &dyn Usage) {
        let counts: Vec<(String, Option<u64>)> = usage
            .spaces()
            .into_iter()
            .map(|s| {
                let n = usage.usage(&s);
                (s, n)
            })
            .collect();
        let mut st = self.lock();
        let now = Instant::now();
        let listed: std::collections::HashSet<&String> = counts.iter().map(|(s, _)| s).collect();
        // Spaces gone from the backend hold nothing any more.
        let gone: Vec<String> = st
            .used
            .keys()
            .filter(|s| !listed.contains(s))
            .cloned()
            .collect();
        for s in gone {
            st.set_used(&s, 0);
        }
        for (space, n) in &counts {
            if let Some(bytes) = n {
                st.set_used(space, *bytes);
            }
            st.counted_at.insert(space.clone(), now);
        }
        st.all_counted_at = Some(now);
    }
}

/// Bytes set aside for one upload; given back on drop unless committed.
pub struct Reservation<'a> {
    quotas: &'a Quotas,
    space: String,
    bytes: u64,
    open: bool,
}

impl Reservation<'_> {
    /// The upload is stored: it added `added` bytes and freed `released` (an object it
    /// replaced).
    pub fn commit(mut self, added: u64, released: u64) {
        let mut st = self.quotas.lock();
        self.release(&mut st);
        let now = st.used.get(&self.space).copied().unwrap_or(0);
        let bytes = now.saturating_add(added).saturating_sub(released);
        st.set_used(&self.space, bytes);
    }

    fn release(&mut self, st: &mut State) {
        if !self.open {
            return;
        }
        self.open = false;
        if let Some(r) = st.reserved.get_mut(&self.space) {
            *r = r.saturating_sub(self.bytes);
            if *r == 0 {
                st.reserved.remove(&self.space);
            }
        }
        st.total_reserved = st.total_reserved.saturating_sub(self.bytes);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let quotas = self.quotas;
        let mut st = quotas.lock();
        self.release(&mut st);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A backend whose true usage the test sets, counting how often it is asked.
    #[derive(Default)]
    struct Fake {
        truth: RefCell<HashMap<String, u64>>,
        counts: RefCell<usize>,
    }

    impl Usage for Fake {
        fn usage(&self, space: &str) -> Option<u64> {
            *self.counts.borrow_mut() += 1;
            Some(self.truth.borrow().get(space).copied().unwrap_or(0))
        }
        fn spaces(&self) -> Vec<String> {
            self.truth.borrow().keys().cloned().collect()
        }
    }

    fn fake(spaces: &[(&str, u64)]) -> Fake {
        let f = Fake::default();
        for (s, n) in spaces {
            f.truth.borrow_mut().insert(s.to_string(), *n);
        }
        f
    }

    #[test]
    fn charges_round_up_to_blocks() {
        assert_eq!(charge(0), BLOCK);
        assert_eq!(charge(1), BLOCK);
        assert_eq!(charge(BLOCK), BLOCK);
        assert_eq!(charge(BLOCK + 1), 2 * BLOCK);
        assert_eq!(charge(u64::MAX), u64::MAX);
    }

    #[test]
    fn uploads_in_flight_count_until_they_end() {
        let usage = fake(&[("a", 4000)]);
        let q = Quotas::new(10_000, 1_000_000, Duration::from_secs(3600), &usage);
        assert_eq!(q.used("a"), 4000);
        let first = q.reserve("a", 5000, &usage).unwrap();
        // Together with the first, a second would not fit.
        assert_eq!(
            q.reserve("a", 2000, &usage).err(),
            Some(Exceeded::Function {
                would: 11_000,
                limit: 10_000
            })
        );
        // A failed upload gives its reservation back.
        drop(first);
        let second = q.reserve("a", 2000, &usage).unwrap();
        // What it really stored is committed: a 1000-byte object that replaced a 500-byte one.
        second.commit(1000, 500);
        assert_eq!(q.used("a"), 4500);
        // Another function is not affected by a's quota.
        q.reserve("b", 10_000, &usage).unwrap().commit(10_000, 0);
        assert_eq!(q.used("b"), 10_000);
        // Removing objects frees their bytes, never below nothing.
        q.release("b", 4000);
        assert_eq!(q.used("b"), 6000);
        q.release("b", 10_000);
        assert_eq!(q.used("b"), 0);
    }

    #[test]
    fn the_total_quota_covers_every_function() {
        let usage = fake(&[("a", 6000), ("b", 3000)]);
        let q = Quotas::new(10_000, 10_000, Duration::from_secs(3600), &usage);
        assert_eq!(
            q.reserve("c", 2000, &usage).err(),
            Some(Exceeded::Store {
                would: 11_000,
                limit: 10_000
            })
        );
        q.reserve("c", 1000, &usage).unwrap().commit(1000, 0);
        assert!(q.reserve("a", 1, &usage).is_err());
    }

    #[test]
    fn a_refusal_recounts_first_at_most_once_a_while() {
        let usage = fake(&[("a", 9000)]);
        let q = Quotas::new(10_000, 1_000_000, Duration::ZERO, &usage);
        let after_start = *usage.counts.borrow();
        // Someone removed objects on the host: the recount finds room.
        usage.truth.borrow_mut().insert("a".into(), 1000);
        q.reserve("a", 5000, &usage).unwrap().commit(5000, 0);
        assert_eq!(*usage.counts.borrow(), after_start + 1);
        assert_eq!(q.used("a"), 6000);
        // Within the interval no recount happens: the refusal comes from memory.
        usage.truth.borrow_mut().insert("a".into(), 9000);
        let q = Quotas::new(10_000, 1_000_000, Duration::from_secs(3600), &usage);
        usage.truth.borrow_mut().insert("a".into(), 0);
        let before = *usage.counts.borrow();
        assert!(q.reserve("a", 5000, &usage).is_err());
        assert_eq!(*usage.counts.borrow(), before);
    }

    #[test]
    fn a_store_recount_forgets_spaces_that_are_gone() {
        let usage = fake(&[("a", 8000)]);
        let q = Quotas::new(10_000, 10_000, Duration::ZERO, &usage);
        usage.truth.borrow_mut().remove("a");
        q.reserve("b", 9000, &usage).unwrap().commit(9000, 0);
        assert_eq!(q.used("a"), 0);
        assert_eq!(q.used("b"), 9000);
    }
}
