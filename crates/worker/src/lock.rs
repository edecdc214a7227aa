//! The lock model: exact package versions (`<name>==<version>`, PEP 503 names) and a
//! function's resolved closure, as the registry stores it with each version and as zygotes
//! match it. The store that installs them is `packages.rs`.

use crate::layout;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// One exact package version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PackageRef {
    /// Normalized (PEP 503) name.
    pub name: String,
    pub version: String,
    /// A direct reference (URL or path, only with `allow_unsafe_requirements`) the package is
    /// installed from; its `version` is then `0+direct.<digest>` of what it names, so it never
    /// shares a store entry with a release on the index or with other content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl PackageRef {
    /// `<name>==<version>`: the store directory's name.
    pub fn key(&self) -> String {
        format!("{}=={}", self.name, self.version)
    }

    /// Parses `<name>==<version>`.
    pub fn parse(key: &str) -> Option<Self> {
        let (name, version) = key.split_once("==")?;
        let ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.+!".contains(&b))
                && !s.starts_with('.')
        };
        (ok(name) && ok(version)).then(|| Self {
            name: normalize(name),
            version: version.to_string(),
            source: None,
        })
    }
}

/// PEP 503 name normalization.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if c == '-' || c == '_' || c == '.' {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// A function's resolved closure, in `sys.path` order (each package before its dependencies).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lock {
    pub packages: Vec<PackageRef>,
    /// Keys of packages shipping `.pth` files, which the runtime adds with `site.addsitedir`.
    #[serde(default)]
    pub site_packages: Vec<String>,
    /// Direct dependencies within the closure: package name -> names it requires.
    #[serde(default)]
    pub requires: BTreeMap<String, Vec<String>>,
}

impl Lock {
    /// Keys of `names` and everything they require, transitively, within this lock.
    pub fn closure_of(&self, names: &[String]) -> BTreeSet<String> {
        let by_name: HashMap<&str, &PackageRef> =
            self.packages.iter().map(|p| (p.name.as_str(), p)).collect();
        let mut seen = HashSet::new();
        let mut stack: Vec<String> = names.iter().map(|n| normalize(n)).collect();
        let mut out = BTreeSet::new();
        while let Some(n) = stack.pop() {
            if !seen.insert(n.clone()) {
                continue;
            }
            if let Some(p) = by_name.get(n.as_str()) {
                out.insert(p.key());
                stack.extend(self.requires.get(&n).cloned().unwrap_or_default());
            }
        }
        out
    }

    /// `KINDLING_PATH` and `KINDLING_SITE` for the runtime: store paths inside the sandbox.
    pub fn runtime_env(&self) -> [(String, String); 2] {
        let path = |k: &str| layout::package_files(k);
        let plain: Vec<String> = self.packages.iter().map(|p| path(&p.key())).collect();
        let site: Vec<String> = self.site_packages.iter().map(|k| path(k)).collect();
        [
            ("KINDLING_PATH".into(), plain.join(":")),
            ("KINDLING_SITE".into(), site.join(":")),
        ]
    }
}
