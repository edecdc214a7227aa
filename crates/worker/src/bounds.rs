//! Operator bounds on what a function's own configuration may ask for: memory, timeout and
//! network (`max_memory_mb`, `max_timeout_secs`, `allow_network` in the worker config).
//!
//! A deploy asking for more is refused ([`check`], HTTP 400) and the version in service stays. A
//! version deployed before the operator lowered a bound is not refused at run time: it runs
//! clamped to the bound (no network when networking is no longer allowed), and the worker warns
//! once at start ([`effective`] says what was clamped). Clamping keeps such a function serving
//! within the operator's limits; refusing it would take it down until its tenant redeploys.

use crate::function_config::{Format, FunctionConfig};
use crate::sandboxes::FunctionLimits;
use serde::Deserialize;
use std::time::Duration;

/// The operator's bounds on tenant settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Bounds {
    pub max_memory_mb: u64,
    pub max_timeout_secs: f64,
    pub max_pids: u64,
    pub allow_network: bool,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            max_memory_mb: 2048,
            max_timeout_secs: 900.0,
            max_pids: 1024,
            allow_network: false,
        }
    }
}

/// Per-function limits (worker-wide defaults; functions may override memory, timeout, network).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Memory limit of the sandbox's cgroup, in MB (at least 16, at most `max_memory_mb`).
    pub memory_mb: u64,
    /// Handler time limit, in seconds (at most `max_timeout_secs`); past it the call gets 504.
    pub timeout_secs: f64,
    /// CPU quota, in cores.
    pub cpu_cores: f64,
    /// Pids limit (fork bombs), at most `max_pids`.
    pub pids: u64,
    /// Size of the sandbox's /tmp, in MB.
    pub tmp_mb: u64,
    /// Network for functions that do not say (needs `allow_network`).
    pub network: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mb: 256,
            timeout_secs: 30.0,
            cpu_cores: 1.0,
            pids: 64,
            tmp_mb: 64,
            network: false,
        }
    }
}

/// A setting of a function's config beyond the operator's bounds.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OverBound {
    #[error("`{setting}` of {asked} MB in {file} is over this worker's maximum of {max} MB (max_memory_mb)")]
    Memory {
        setting: &'static str,
        file: &'static str,
        asked: u64,
        max: u64,
    },
    #[error("`{setting}` of {asked} s in {file} is over this worker's maximum of {max} s (max_timeout_secs)")]
    Timeout {
        setting: &'static str,
        file: &'static str,
        asked: String,
        max: f64,
    },
    #[error("`{setting}: true` in {file} is refused: this worker does not give functions network access (allow_network = false)")]
    Network {
        setting: &'static str,
        file: &'static str,
    },
}

/// How a format names its config file and its memory, timeout and network settings.
fn names(format: Format) -> (&'static str, &'static str, &'static str, &'static str) {
    match format {
        Format::OpenLambda => ("ol.yaml", "memory_mb", "timeout_secs", "network"),
        Format::Sebs => ("config.json", "memory", "timeout", "network"),
    }
}

/// Seconds as a short string, whatever their magnitude (an error message stays bounded).
fn seconds(t: f64) -> String {
    if t.abs() < 1e9 {
        format!("{t}")
    } else {
        format!("{t:e}")
    }
}

/// Every setting of `config` beyond `bounds`.
fn over(config: &FunctionConfig, format: Format, bounds: &Bounds) -> Vec<OverBound> {
    let (file, memory, timeout, network) = names(format);
    let mut found = Vec::new();
    if let Some(m) = config.memory_mb.filter(|&m| m > bounds.max_memory_mb) {
        found.push(OverBound::Memory {
            setting: memory,
            file,
            asked: m,
            max: bounds.max_memory_mb,
        });
    }
    // NaN is refused by the registry; here it counts as over, never as within.
    if let Some(t) = config
        .timeout_secs
        .filter(|&t| t.is_nan() || t > bounds.max_timeout_secs)
    {
        found.push(OverBound::Timeout {
            setting: timeout,
            file,
            asked: seconds(t),
            max: bounds.max_timeout_secs,
        });
    }
    if config.network == Some(true) && !bounds.allow_network {
        found.push(OverBound::Network {
            setting: network,
            file,
        });
    }
    found
}

/// Refuses a function whose config asks for more than `bounds` allow (the first such setting).
pub fn check(config: &FunctionConfig, format: Format, bounds: &Bounds) -> Result<(), OverBound> {
    match over(config, format, bounds).into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The limits a function runs under: its config over the worker's defaults, clamped to
/// `bounds`; and the settings that were clamped.
pub fn effective(
    config: &FunctionConfig,
    format: Format,
    defaults: &Limits,
    bounds: &Bounds,
) -> (FunctionLimits, Vec<OverBound>) {
    let memory_mb = config
        .memory_mb
        .unwrap_or(defaults.memory_mb)
        .min(bounds.max_memory_mb);
    let timeout_secs = config
        .timeout_secs
        .unwrap_or(defaults.timeout_secs)
        .min(bounds.max_timeout_secs);
    // Config validation keeps both finite and positive; should one not be, the bound is.
    let timeout = Duration::try_from_secs_f64(timeout_secs)
        .ok()
        .filter(|t| !t.is_zero())
        .unwrap_or_else(|| Duration::from_secs_f64(bounds.max_timeout_secs));
    let network = config.network.unwrap_or(defaults.network) && bounds.allow_network;
    let limits = FunctionLimits {
        memory_mb,
        timeout,
        cpu_cores: defaults.cpu_cores,
        pids: defaults.pids.min(bounds.max_pids),
        tmp_mb: defaults.tmp_mb,
        network,
    };
    (limits, over(config, format, bounds))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn bounds() -> Bounds {
        Bounds {
            max_memory_mb: 512,
            max_timeout_secs: 60.0,
            max_pids: 100,
            allow_network: false,
        }
    }

    fn config(memory: Option<u64>, timeout: Option<f64>, network: Option<bool>) -> FunctionConfig {
        FunctionConfig {
            memory_mb: memory,
            timeout_secs: timeout,
            network,
            ..Default::default()
        }
    }

    #[test]
    fn within_bounds_passes() {
        let b = bounds();
        assert!(check(&config(None, None, None), Format::OpenLambda, &b).is_ok());
        assert!(check(
            &config(Some(512), Some(60.0), Some(false)),
            Format::OpenLambda,
            &b
        )
        .is_ok());
    }

    #[test]
    fn refusals_name_the_setting_and_the_maximum() {
        let b = bounds();
        let e = check(&config(Some(513), None, None), Format::OpenLambda, &b).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`memory_mb` of 513 MB in ol.yaml is over this worker's maximum of 512 MB (max_memory_mb)"
        );
        let e = check(&config(Some(4096), None, None), Format::Sebs, &b).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("`memory` of 4096 MB in config.json"),
            "{e}"
        );
        let e = check(&config(None, Some(1e30), None), Format::OpenLambda, &b).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`timeout_secs` of 1e30 s in ol.yaml is over this worker's maximum of 60 s (max_timeout_secs)"
        );
        let e = check(&config(None, Some(f64::MAX), None), Format::Sebs, &b).unwrap_err();
        assert!(e.to_string().len() < 150, "{e}");
        assert!(e.to_string().contains("`timeout`"), "{e}");
        let e = check(&config(None, Some(f64::NAN), None), Format::Sebs, &b);
        assert!(e.is_err());
        let e = check(&config(None, None, Some(true)), Format::OpenLambda, &b).unwrap_err();
        assert!(e.to_string().contains("`network: true` in ol.yaml"), "{e}");
        assert!(e.to_string().contains("allow_network = false"), "{e}");
        let allowed = Bounds {
            allow_network: true,
            ..bounds()
        };
        assert!(check(
            &config(None, None, Some(true)),
            Format::OpenLambda,
            &allowed
        )
        .is_ok());
    }

    #[test]
    fn effective_limits_are_clamped_and_say_so() {
        let b = bounds();
        let d = Limits::default();
        let (l, clamped) = effective(&config(None, None, None), Format::OpenLambda, &d, &b);
        assert_eq!(l.memory_mb, 256);
        assert_eq!(l.timeout, Duration::from_secs(30));
        assert!(!l.network);
        assert!(clamped.is_empty());
        let (l, clamped) = effective(
            &config(Some(1 << 40), Some(1e30), Some(true)),
            Format::OpenLambda,
            &d,
            &b,
        );
        assert_eq!(l.memory_mb, 512);
        assert_eq!(l.timeout, Duration::from_secs(60));
        assert!(!l.network);
        assert_eq!(clamped.len(), 3);
        // No overflow: the cgroup's byte count of the largest bound fits.
        assert_eq!(l.cgroup().memory_bytes, Some(512 << 20));
        let huge = FunctionLimits {
            memory_mb: u64::MAX,
            ..l
        };
        assert_eq!(huge.cgroup().memory_bytes, Some(u64::MAX));
        let allowed = Bounds {
            allow_network: true,
            ..bounds()
        };
        let (l, _) = effective(&config(None, None, Some(true)), Format::Sebs, &d, &allowed);
        assert!(l.network);
    }
}
