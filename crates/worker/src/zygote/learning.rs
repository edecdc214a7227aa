//! What zygotes learn from the instances they fork: submodules of their packages that
//! instances import (the zygote imports them too, so later forks inherit them) and the pages a
//! forked instance writes during its first invocation, which seeds then write ahead of need.
//! Also which modules of a package set a zygote preloads in the first place.

use super::{Forked, PackageSet, ZygoteHost, ZygoteProcess, Zygotes};
use std::collections::BTreeSet;
use std::path::Path;

/// How many forked instances (after their first invocation) a zygote learns its seeds' working
/// set from.
const LEARN_FROM: usize = 4;
/// Most pages a seed writes ahead of need (32 MiB).
const MAX_WRITE_AHEAD_PAGES: usize = 8192;

/// The pages seeds of one zygote write ahead of need: those its forked instances wrote during
/// their first invocation (REAP's idea of recording a first invocation's working set, applied
/// to copy-on-write after fork).
#[derive(Default)]
pub(super) struct WorkingSet {
    pub(super) pages: BTreeSet<u64>,
    /// Submodules forked instances imported, which the zygote imports too (also when it is
    /// recreated).
    pub(super) modules: BTreeSet<String>,
    learned_from: usize,
}

impl<H: ZygoteHost> Zygotes<H> {
    /// Learns from a forked instance that has served its first invocation: which submodules of
    /// its packages the zygote should import too (those the instance imported on the way, e.g.
    /// plugins loaded on first use; the zygote imports them now, so later forks inherit them),
    /// and which pages its zygote's seeds should write ahead of need. Blocking.
    pub fn learn(&self, forked: &Forked, modules: &[String]) {
        if self.config.seeds == 0 {
            return;
        }
        if self
            .working_sets
            .lock()
            .get(&forked.zygote)
            .is_some_and(|w| w.learned_from >= LEARN_FROM)
        {
            return;
        }
        self.import_into_zygote(&forked.zygote, modules);
        let pages = match self.host.written_pages(forked.pid, MAX_WRITE_AHEAD_PAGES) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(
                    pid = forked.pid,
                    "cannot read a forked instance's pages: {e}"
                );
                return;
            }
        };
        let mut sets = self.working_sets.lock();
        let ws = sets.entry(forked.zygote.clone()).or_default();
        ws.learned_from += 1;
        for page in pages {
            if ws.pages.len() >= MAX_WRITE_AHEAD_PAGES {
                break;
            }
            ws.pages.insert(page);
        }
        tracing::debug!(pages = ws.pages.len(), "seed working set learned");
    }

    /// Has the live zygote holding `set` import the public submodules of its packages among
    /// `modules` (names reported by an instance: untrusted, so filtered like function imports).
    fn import_into_zygote(&self, set: &PackageSet, modules: &[String]) {
        let wanted = submodules_of(modules, &self.top_level_of(set));
        let fresh: Vec<String> = {
            let mut sets = self.working_sets.lock();
            let known = &mut sets.entry(set.clone()).or_default().modules;
            wanted
                .into_iter()
                .filter(|m| known.insert(m.clone()))
                .collect()
        };
        if fresh.is_empty() {
            return;
        }
        let Some(z) = self.live(set) else {
            return;
        };
        z.touch();
        match z.process.import(&fresh) {
            // Seeds forked before lack the modules: the refill that follows forks new ones.
            Ok(_) => self.drop_seeds(set),
            Err(e) => {
                // Its channel may be out of step (a reply still to come): replace the zygote,
                // without those modules.
                tracing::warn!(zygote = %z.id, "zygote could not import learned modules: {e}");
                if let Some(ws) = self.working_sets.lock().get_mut(set) {
                    for m in &fresh {
                        ws.modules.remove(m);
                    }
                }
                self.discard(&z);
                z.kill();
            }
        }
    }

    /// The top-level modules of the packages of `set`.
    pub(super) fn top_level_of(&self, set: &PackageSet) -> BTreeSet<String> {
        set.iter()
            .flat_map(|k| self.host.top_level_modules(k))
            .collect()
    }

    /// The runs of pages seeds of the zygote holding `set` write ahead of need.
    pub(super) fn write_ahead(&self, set: &PackageSet) -> Vec<(u64, u64)> {
        self.working_sets
            .lock()
            .get(set)
            .map(|w| kindling_sandbox::working_set::runs(w.pages.iter().copied()))
            .unwrap_or_default()
    }
}

/// The names in `imports` below one of the top-level modules `tops` (`a.b` for `a`), sorted so
/// that a package comes before its submodules. Names come from function code, so private parts
/// (`a._b`, `a.__main__`, which may run a program when imported) are never preloaded: a shared,
/// privileged zygote imports only a package's public modules.
pub(super) fn submodules_of(imports: &[String], tops: &BTreeSet<String>) -> Vec<String> {
    let mut out: Vec<String> = imports
        .iter()
        .filter(|m| {
            m.split_once('.').is_some_and(|(top, rest)| {
                tops.contains(top) && rest.split('.').all(|part| !part.starts_with('_'))
            })
        })
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Importable top-level names of an installed package directory.
pub fn top_level_modules(files: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(files) else {
        return Vec::new();
    };
    let mut names = BTreeSet::new();
    let mut declared = None;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".dist-info") {
            if let Ok(t) = std::fs::read_to_string(e.path().join("top_level.txt")) {
                declared = Some(
                    t.lines()
                        .map(|l| l.trim().to_string())
                        .filter(|l| !l.is_empty())
                        .collect::<Vec<_>>(),
                );
            }
            continue;
        }
        let path = e.path();
        let module = if path.is_dir() {
            (path.join("__init__.py").is_file()).then_some(name.clone())
        } else if let Some(stem) = name.strip_suffix(".py") {
            Some(stem.to_string())
        } else if name.ends_with(".so") {
            name.split('.').next().map(str::to_string)
        } else {
            None
        };
        if let Some(m) = module {
            names.insert(m);
        }
    }
    let candidates: Vec<String> = match declared {
        Some(d) => d.into_iter().filter(|m| names.contains(m)).collect(),
        None => names.into_iter().collect(),
    };
    candidates
        .into_iter()
        .filter(|m| {
            !m.starts_with('_') && !m.starts_with("test") && m != "setup" && m != "conftest"
        })
        .collect()
}

pub(crate) fn has_pth(files: &Path) -> bool {
    std::fs::read_dir(files)
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".pth"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_submodules_of_the_zygotes_packages_are_preloaded() {
        let imports: Vec<String> = [
            "sklearn.linear_model",
            "sklearn",
            "json",
            "os.path",
            "helpers.io",
            "pandas.core.frame",
            "sklearn.linear_model",
            "numpy_extra.x",
            "pandas.__main__",
            "sklearn.utils._testing",
        ]
        .map(String::from)
        .to_vec();
        let tops: BTreeSet<String> = ["sklearn", "pandas", "numpy"].map(String::from).into();
        assert_eq!(
            submodules_of(&imports, &tops),
            vec!["pandas.core.frame", "sklearn.linear_model"]
        );
    }
}
