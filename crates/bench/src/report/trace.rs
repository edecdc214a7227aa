//! The trace section of `bench report`: `trace-report.md` from the `trace-<policy>.json` files
//! of `kindling bench trace`, with per-policy P50/P90/P99 overall and per function, start
//! method counts, failures and retries, peak memory, a latency CDF per policy and memory over
//! time.

use super::plot::{palette, save, Plot, Series};
use crate::results::Status;
use crate::stats::{fmt_ms, percentile};
use crate::trace::record::{TraceFile, TraceRequest};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// End-to-end latencies (ms) of the measured requests that succeeded, ascending.
fn latencies<'a>(reqs: impl Iterator<Item = &'a TraceRequest>) -> Vec<f64> {
    let mut v: Vec<f64> = reqs
        .filter(|r| r.invocation.status == Status::Ok)
        .map(|r| r.latency_ms)
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

fn pcts(sorted: &[f64]) -> String {
    if sorted.is_empty() {
        return "- | - | -".into();
    }
    [50.0, 90.0, 99.0]
        .map(|p| fmt_ms(percentile(sorted, p)))
        .join(" | ")
}

/// Writes `dir/trace-report.md` and its plots under `dir/plots`.
pub fn write_report(dir: &Path, traces: &[TraceFile]) -> Result<(PathBuf, Vec<PathBuf>)> {
    let plots_dir = dir.join("plots");
    std::fs::create_dir_all(&plots_dir)
        .with_context(|| format!("cannot create {}", plots_dir.display()))?;
    let mut md = String::new();
    let first = &traces[0];
    let _ = writeln!(md, "# Kindling trace report: {}\n", first.workload);
    let _ = writeln!(
        md,
        "Made by `kindling bench report` from the `trace-<policy>.json` files of `kindling bench \
         trace` (per request: `trace.csv`; per second: `memory.csv`). Each policy ran against a \
         fresh worker with the same arrivals (seed {}), input size `{}`, scale {}, memory budget \
         {} MB and keep-alive {} s. Latency is end to end at the client, first send to final \
         reply (retries and back-off included), of the measured phase's requests that succeeded \
         with a validated output.\n",
        first.seed, first.size, first.scale, first.memory_budget_mb, first.keep_alive_secs
    );
    for n in &first.notes {
        let _ = writeln!(md, "- {n}");
    }
    for t in traces.iter().filter(|t| !t.policy_applied) {
        let _ = writeln!(
            md,
            "- **{}**: the worker had no `start_order`/`memory_budget_mb`; the policy ran with zygotes {} and the keep-alive only.",
            t.policy,
            if t.zygotes { "on" } else { "off" }
        );
    }
    let _ = writeln!(md);

    let _ = writeln!(md, "## Overall (ms)\n");
    let _ = writeln!(
        md,
        "| policy | start order | requests | ok | failed | retries | p50 | p90 | p99 | peak memory (MB) | peak anonymous (MB) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for t in traces {
        let n = t.measured().count();
        let lat = latencies(t.measured());
        let retries: u64 = t.measured().map(|r| u64::from(r.retries)).sum();
        let _ = writeln!(
            md,
            "| {} | {} | {n} | {} | {} | {retries} | {} | {} | {} |",
            t.policy,
            t.start_order.join(" → "),
            lat.len(),
            n - lat.len(),
            pcts(&lat),
            mb(t.peak_mb().0),
            mb(t.peak_mb().1)
        );
    }

    let _ = writeln!(md, "\n## Start methods\n");
    let mut methods: Vec<String> = traces
        .iter()
        .flat_map(|t| t.measured().map(|r| method(r).to_string()))
        .collect();
    methods.sort();
    methods.dedup();
    let _ = writeln!(
        md,
        "| policy | {} |\n|---|{}",
        methods.join(" | "),
        "---:|".repeat(methods.len())
    );
    for t in traces {
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        for r in t.measured() {
            *counts.entry(method(r)).or_default() += 1;
        }
        let cells: Vec<String> = methods
            .iter()
            .map(|m| counts.get(m.as_str()).copied().unwrap_or(0).to_string())
            .collect();
        let _ = writeln!(md, "| {} | {} |", t.policy, cells.join(" | "));
    }

    let _ = writeln!(md, "\n## Per function (ms)\n");
    let mut functions: Vec<&str> = first.measured().map(|r| r.function.as_str()).collect();
    functions.sort();
    functions.dedup();
    let _ = writeln!(
        md,
        "| function | {} |\n|---|{}",
        traces
            .iter()
            .map(|t| format!("{0} p50 | {0} p90 | {0} p99", t.policy))
            .collect::<Vec<_>>()
            .join(" | "),
        "---:|".repeat(3 * traces.len())
    );
    for f in &functions {
        let cells: Vec<String> = traces
            .iter()
            .map(|t| pcts(&latencies(t.measured().filter(|r| r.function == *f))))
            .collect();
        let _ = writeln!(md, "| {f} | {} |", cells.join(" | "));
    }

    let mut plots = Vec::new();
    let cdf = Plot::Cdf {
        title: format!("{}: end-to-end latency CDF per policy", first.workload),
        series: traces
            .iter()
            .enumerate()
            .map(|(i, t)| Series {
                label: t.policy.clone(),
                color: palette(i),
                values: latencies(t.measured()),
            })
            .filter(|s| !s.values.is_empty())
            .collect(),
    };
    plots.extend(save(&cdf, &plots_dir, "trace-cdf")?);
    let memory = Plot::Lines {
        title: format!("{}: memory of the worker's cgroups", first.workload),
        x_desc: "seconds (warm-up included)".into(),
        y_desc: "MB".into(),
        series: traces
            .iter()
            .enumerate()
            .map(|(i, t)| Series {
                label: t.policy.clone(),
                color: palette(i),
                values: t
                    .samples
                    .iter()
                    .filter_map(|s| s.memory_bytes.map(|b| [s.t, b as f64 / 1048576.0]))
                    .flatten()
                    .collect(),
            })
            .collect(),
    };
    plots.extend(save(&memory, &plots_dir, "trace-memory")?);
    let _ = writeln!(
        md,
        "\n## Plots\n\n![latency CDF](plots/trace-cdf.svg) ([PNG](plots/trace-cdf.png))\n\n\
         ![memory over time](plots/trace-memory.svg) ([PNG](plots/trace-memory.png))"
    );
    let path = dir.join("trace-report.md");
    std::fs::write(&path, md).with_context(|| format!("cannot write {}", path.display()))?;
    Ok((path, plots))
}

fn mb(v: Option<f64>) -> String {
    v.map_or("-".into(), |m| format!("{m:.0}"))
}

fn method(r: &TraceRequest) -> &str {
    if r.invocation.status == Status::Error {
        return "failed";
    }
    r.invocation.start.as_deref().unwrap_or("-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::record::tests::fixture;

    #[test]
    fn policies_are_compared_in_tables_and_plots() {
        let dir = tempfile::tempdir().expect("tmp");
        let full = fixture(
            "full",
            &[("pyaes", "fork", 3.0), ("crypto", "warm", 1.0)],
            &[100, 120],
        );
        let keep = fixture(
            "keepalive",
            &[("pyaes", "cold", 300.0), ("crypto", "cold", 200.0)],
            &[200, 250],
        );
        let (md, plots) = write_report(dir.path(), &[full, keep]).expect("report");
        let md = std::fs::read_to_string(md).expect("md");
        assert!(
            md.contains("| full | warm → cold | 2 | 2 | 0 | 0 | 2.00 | 2.80 | 2.98 | 120 | 60 |"),
            "{md}"
        );
        assert!(md.contains("| policy | cold | fork | warm |"), "{md}");
        assert!(md.contains("| keepalive | 2 | 0 | 0 |"), "{md}");
        assert!(
            md.contains("| pyaes | 3.00 | 3.00 | 3.00 | 300 | 300 | 300 |"),
            "{md}"
        );
        assert_eq!(plots.len(), 4);
        assert!(plots.iter().all(|p| p.exists()));
    }
}
