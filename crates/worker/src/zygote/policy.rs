//! The zygotes' decisions, as functions of what the worker knows (no processes, no locks), so
//! that they are unit-tested: which zygotes a function may fork from, whether a function fits
//! a clean sandbox (a seed's or a spare's), and which zygote a refill serves next.

use super::{PackageSet, ZygoteConfig};
use crate::lock::{normalize, Lock};
use crate::sandboxes::FunctionLimits;
use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

/// The package sets of the zygotes a function with `lock` could use, smallest first: the root
/// (no packages), the operator's tree entries its lock contains, and (with `auto`) its whole
/// lock. Sets hold exact versions (`<name>==<version>`), so a function only forks from a zygote
/// whose every package is in its lock at the same version.
pub(crate) fn candidates(config: &ZygoteConfig, lock: &Lock) -> Vec<PackageSet> {
    let names: BTreeSet<&str> = lock.packages.iter().map(|p| p.name.as_str()).collect();
    let mut sets = vec![PackageSet::new()];
    for entry in &config.tree {
        let normalized: Vec<String> = entry.iter().map(|n| normalize(n)).collect();
        if !normalized.is_empty() && normalized.iter().all(|n| names.contains(n.as_str())) {
            sets.push(lock.closure_of(&normalized));
        }
    }
    if config.auto && !lock.packages.is_empty() {
        sets.push(lock.packages.iter().map(|p| p.key()).collect());
    }
    sets.sort_by_key(|s| s.len());
    sets.dedup();
    sets
}

/// Whether a function with `limits` can run in a clean sandbox made ahead of need (a seed's or
/// a spare): those have no network and a `/tmp` of `spare_tmp_mb`.
pub(crate) fn fits_clean_sandbox(limits: &FunctionLimits, spare_tmp_mb: u64) -> bool {
    !limits.network && limits.tmp_mb == spare_tmp_mb
}

/// What the refill policy knows of a live zygote.
#[derive(Debug, Clone)]
pub(crate) struct Standing<'a> {
    pub id: &'a str,
    pub packages: &'a PackageSet,
    /// It has started an instance (only those get seeds and spares).
    pub serves_instances: bool,
    pub last_used: Instant,
    /// The most fork starts it had in flight at once lately (see `Zygote::recent_burst`).
    pub burst: usize,
}

/// The zygote (an index into `zygotes`) that should get the next seed: one that serves
/// instances and has fewer seeds (`seeds`, by package set) than its target, `per_zygote` or,
/// when it saw a larger burst of fork starts lately, that burst's size up to `max_per_zygote`
/// (so that the next burst finds a seed per start instead of waiting on the zygote's forks).
pub(crate) fn next_seed(
    zygotes: &[Standing<'_>],
    seeds: &HashMap<PackageSet, usize>,
    per_zygote: usize,
    max_per_zygote: usize,
) -> Option<usize> {
    if per_zygote == 0 {
        return None;
    }
    zygotes.iter().position(|z| {
        let target = per_zygote.max(z.burst.min(max_per_zygote));
        z.serves_instances && seeds.get(z.packages).copied().unwrap_or(0) < target
    })
}

/// The zygote that should get the next spare sandbox while there are fewer than `wanted`
/// (`spares`, by zygote id): of those serving instances, the one with the fewest, then the
/// most recently used.
pub(crate) fn next_spare(
    zygotes: &[Standing<'_>],
    spares: &HashMap<String, usize>,
    wanted: usize,
) -> Option<usize> {
    if spares.values().sum::<usize>() >= wanted {
        return None;
    }
    zygotes
        .iter()
        .enumerate()
        .filter(|(_, z)| z.serves_instances)
        .min_by_key(|(_, z)| {
            (
                spares.get(z.id).copied().unwrap_or(0),
                std::cmp::Reverse(z.last_used),
            )
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::lock::PackageRef;
    use std::time::Duration;

    fn lock(pkgs: &[&str], requires: &[(&str, &[&str])]) -> Lock {
        Lock {
            packages: pkgs.iter().map(|k| PackageRef::parse(k).unwrap()).collect(),
            site_packages: Vec::new(),
            requires: requires
                .iter()
                .map(|(n, deps)| (n.to_string(), deps.iter().map(|d| d.to_string()).collect()))
                .collect(),
        }
    }

    fn set(keys: &[&str]) -> PackageSet {
        keys.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn zygote_choice_follows_package_versions() {
        let config = ZygoteConfig::default();
        // No packages: the root zygote only.
        assert_eq!(candidates(&config, &Lock::default()), vec![set(&[])]);
        let pandas = lock(
            &["pandas==2.2.0", "numpy==1.26.4", "six==1.16.0"],
            &[("pandas", &["numpy"])],
        );
        assert_eq!(
            candidates(&config, &pandas),
            vec![
                set(&[]),
                set(&["numpy==1.26.4"]),
                set(&["numpy==1.26.4", "pandas==2.2.0"]),
                set(&["numpy==1.26.4", "pandas==2.2.0", "six==1.16.0"]),
            ]
        );
        // Another numpy version: other zygotes, never the first function's.
        let other = lock(&["numpy==2.0.0"], &[]);
        let sets = candidates(&config, &other);
        assert_eq!(sets, vec![set(&[]), set(&["numpy==2.0.0"])]);
        assert!(!sets.contains(&set(&["numpy==1.26.4"])));
        // Names in the tree are normalized; entries the lock lacks are skipped; without `auto`
        // the whole lock is no zygote of its own.
        let config = ZygoteConfig {
            tree: vec![vec!["Six".into()], vec!["requests".into()]],
            auto: false,
            ..ZygoteConfig::default()
        };
        assert_eq!(
            candidates(&config, &pandas),
            vec![set(&[]), set(&["six==1.16.0"])]
        );
    }

    #[test]
    fn clean_sandboxes_fit_functions_without_network_and_with_the_default_tmp() {
        let limits = FunctionLimits {
            memory_mb: 128,
            timeout: Duration::from_secs(1),
            cpu_cores: 1.0,
            pids: 8,
            tmp_mb: 64,
            network: false,
        };
        assert!(fits_clean_sandbox(&limits, 64));
        assert!(!fits_clean_sandbox(&limits, 32));
        let networked = FunctionLimits {
            network: true,
            ..limits
        };
        assert!(!fits_clean_sandbox(&networked, 64));
    }

    #[test]
    fn refills_go_to_zygotes_that_serve_instances() {
        let now = Instant::now();
        let (a, b, c) = (set(&[]), set(&["numpy==1"]), set(&["x==1"]));
        let zygotes = [
            Standing {
                id: "zy-a",
                packages: &a,
                serves_instances: true,
                last_used: now,
                burst: 0,
            },
            Standing {
                id: "zy-b",
                packages: &b,
                serves_instances: true,
                last_used: now + Duration::from_secs(1),
                burst: 0,
            },
            Standing {
                id: "zy-c",
                packages: &c,
                serves_instances: false,
                last_used: now + Duration::from_secs(2),
                burst: 0,
            },
        ];
        // Seeds: the first zygote short of them; none when seeds are off.
        let mut seeds = HashMap::new();
        assert_eq!(next_seed(&zygotes, &seeds, 1, 16), Some(0));
        seeds.insert(a.clone(), 1);
        assert_eq!(next_seed(&zygotes, &seeds, 1, 16), Some(1));
        seeds.insert(b.clone(), 1);
        assert_eq!(
            next_seed(&zygotes, &seeds, 1, 16),
            None,
            "c serves no instance"
        );
        assert_eq!(next_seed(&zygotes, &seeds, 2, 16), Some(0));
        assert_eq!(next_seed(&zygotes, &HashMap::new(), 0, 16), None);
        // After a burst of 20 fork starts, a zygote keeps a seed per start, up to the bound.
        let mut bursty = zygotes.clone();
        bursty[1].burst = 20;
        assert_eq!(next_seed(&bursty, &seeds, 1, 16), Some(1));
        seeds.insert(b.clone(), 15);
        assert_eq!(next_seed(&bursty, &seeds, 1, 16), Some(1));
        seeds.insert(b.clone(), 16);
        assert_eq!(next_seed(&bursty, &seeds, 1, 16), None);
        assert_eq!(
            next_seed(&bursty, &seeds, 0, 16),
            None,
            "seeds off stay off"
        );
        // Spares: spread over the serving zygotes, most recently used first, up to `wanted`.
        let mut spares = HashMap::new();
        assert_eq!(next_spare(&zygotes, &spares, 4), Some(1));
        spares.insert("zy-b".to_string(), 1);
        assert_eq!(next_spare(&zygotes, &spares, 4), Some(0));
        spares.insert("zy-a".to_string(), 1);
        assert_eq!(next_spare(&zygotes, &spares, 4), Some(1));
        spares.insert("zy-b".to_string(), 3);
        assert_eq!(next_spare(&zygotes, &spares, 4), None);
        assert_eq!(next_spare(&zygotes, &HashMap::new(), 0), None);
    }
}
