//! The Markdown of `bench report`: `report.md` with its tables (client latency, where the time
//! goes, outcomes) and the plots it links, drawn by [`super::plot`].

use super::plot::{bars, save, start_series, Plot};
use super::png::{png_font, NO_FONT};
use crate::results::{start_order, RunFile};
use crate::stats::{fmt_ms, mean, median, Summary};
use anyhow::{Context, Result};
use kindling_api::StartMethod;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Client latencies (ms) of the measured invocations of `run`, ascending.
pub(crate) fn client_ms(run: &RunFile) -> Vec<f64> {
    let mut v: Vec<f64> = run
        .measured()
        .map(|i| i.times.client as f64 / 1000.0)
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Memory (MB) of the measured invocations of `run` that reported it.
fn memory_mb(run: &RunFile) -> Vec<f64> {
    run.measured().filter_map(|i| i.stats.memory_used).collect()
}

// ---------------------------------------------------------------- report

/// What `write_report` wrote.
pub struct Written {
    pub markdown: PathBuf,
    pub plots: Vec<PathBuf>,
}

/// Writes `dir/report.md` and `dir/plots/*.{svg,png}` from `runs`.
pub fn write_report(dir: &Path, runs: &[RunFile]) -> Result<Written> {
    let plots_dir = dir.join("plots");
    std::fs::create_dir_all(&plots_dir)
        .with_context(|| format!("cannot create {}", plots_dir.display()))?;
    let mut benches: Vec<&str> = runs.iter().map(|r| r.benchmark.as_str()).collect();
    benches.dedup();
    let mut starts: Vec<StartMethod> = runs.iter().map(|r| r.start).collect();
    starts.sort_by(start_order);
    starts.dedup();

    let mut md = String::new();
    let invocations: usize = runs.iter().map(|r| r.invocations.len()).sum();
    let mut sizes: Vec<&str> = runs.iter().map(|r| r.size.as_str()).collect();
    sizes.sort();
    sizes.dedup();
    let mut workers: Vec<&str> = runs.iter().map(|r| r.worker.as_str()).collect();
    workers.sort();
    workers.dedup();
    let _ = writeln!(md, "# Kindling benchmark report\n");
    let _ = writeln!(
        md,
        "{} runs, {invocations} invocations of {} benchmarks (size {}), worker {}. \
         Made by `kindling bench report` from the results of `kindling bench run`; \
         per-invocation data in `<benchmark>/<start>.json` and `result.csv`.\n",
        runs.len(),
        benches.len(),
        sizes.join(", "),
        workers.join(", ")
    );
    let _ = writeln!(
        md,
        "Latency is the client's end-to-end time (`times.client`) of the invocations that \
         succeeded (output validated) with the start method asked for. Percentiles \
         interpolate linearly; the CI is the 95 % confidence interval of the mean \
         (Student's t).\n"
    );

    let _ = writeln!(md, "## Client latency (ms)\n");
    let _ = writeln!(
        md,
        "| benchmark | start | n | p50 | p90 | p99 | mean | 95% CI of mean |\n|---|---|---:|---:|---:|---:|---:|---|"
    );
    for run in runs {
        let mut xs = client_ms(run);
        match Summary::of(&mut xs) {
            Some(s) => {
                let ci = s
                    .ci95
                    .map(|(lo, hi)| format!("{} – {}", fmt_ms(lo), fmt_ms(hi)))
                    .unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} | {ci} |",
                    run.benchmark,
                    run.start.as_str(),
                    s.n,
                    fmt_ms(s.p50),
                    fmt_ms(s.p90),
                    fmt_ms(s.p99),
                    fmt_ms(s.mean)
                );
            }
            None => {
                let _ = writeln!(
                    md,
                    "| {} | {} | 0 | - | - | - | - | - |",
                    run.benchmark,
                    run.start.as_str()
                );
            }
        }
    }

    let _ = writeln!(md, "\n## Where the time goes (medians, ms)\n");
    let _ = writeln!(
        md,
        "`benchmark` is the handler's `end - begin` (SeBS's `times.benchmark`); the others are \
         the worker's `X-Kindling-Timing`; memory is the sandbox's cgroup usage after the \
         invocation (`X-Kindling-Memory`, MB of 2^20 bytes).\n"
    );
    let _ = writeln!(
        md,
        "| benchmark | start | benchmark | worker total | queue | sandbox | instance | handler | memory (MB, mean) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for run in runs {
        let timing = |k: &str| {
            let xs: Vec<f64> = run
                .measured()
                .filter_map(|i| i.timing.get(k).copied())
                .collect();
            fmt_ms(median(xs))
        };
        let bench_ms: Vec<f64> = run
            .measured()
            .map(|i| i.times.benchmark as f64 / 1000.0)
            .collect();
        let mem = memory_mb(run);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            run.benchmark,
            run.start.as_str(),
            fmt_ms(median(bench_ms)),
            timing("total"),
            timing("queue"),
            timing("sandbox"),
            timing("instance"),
            timing("handler"),
            if mem.is_empty() {
                "-".into()
            } else {
                format!("{:.1}", mean(&mem))
            }
        );
    }

    let _ = writeln!(md, "\n## Outcomes\n");
    let _ = writeln!(
        md,
        "`incorrect`: the output failed the benchmark's `validate()`; it never counts as a \
         success. `other start`: succeeded with another start method than asked (left out of \
         the latencies).\n"
    );
    let _ = writeln!(
        md,
        "| benchmark | size | start | clients | invocations | ok | incorrect | failed | other start |\n|---|---|---|---:|---:|---:|---:|---:|---:|"
    );
    for run in runs {
        let s = &run.statistics;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            run.benchmark,
            run.size.as_str(),
            run.start.as_str(),
            run.concurrency,
            s.samples,
            s.ok,
            s.incorrect,
            s.failures,
            s.start_mismatch
        );
    }
    let failures: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            let i = r.invocations.iter().find(|i| i.error.is_some())?;
            Some(format!(
                "- {} {}: request {}: {}",
                r.benchmark,
                r.start.as_str(),
                if i.request_id.is_empty() {
                    "-"
                } else {
                    &i.request_id
                },
                i.error.as_deref().unwrap_or("").replace('\n', " ")
            ))
        })
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(
            md,
            "\nFirst problem of each run:\n\n{}",
            failures.join("\n")
        );
    }

    // Plots.
    let mut plots = Vec::new();
    let _ = writeln!(md, "\n## Plots\n");
    if png_font().is_none() {
        let _ = writeln!(md, "Note: {NO_FONT}.\n");
    }
    let _ = writeln!(md, "### Latency CDF per start method\n");
    for bench in &benches {
        let series: Vec<_> = runs
            .iter()
            .filter(|r| r.benchmark == *bench)
            .map(|r| start_series(r.start, client_ms(r)))
            .filter(|s| !s.values.is_empty())
            .collect();
        if series.is_empty() {
            continue;
        }
        let stem = format!("cdf-{bench}");
        let plot = Plot::Cdf {
            title: format!("{bench}: client latency CDF"),
            series,
        };
        plots.extend(save(&plot, &plots_dir, &stem)?);
        let _ = writeln!(
            md,
            "![{bench} latency CDF](plots/{stem}.svg) ([PNG](plots/{stem}.png))\n"
        );
    }
    let latency = bars(&benches, &starts, runs, |run| {
        let s = Summary::of(&mut client_ms(run))?;
        Some((s.p50, Some(s.p99)))
    });
    if latency.iter().flatten().any(Option::is_some) {
        let plot = Plot::Bars {
            title: "client latency: p50 (solid) and p99 (light) per benchmark".into(),
            y_desc: "ms (log scale)".into(),
            log: true,
            groups: benches.iter().map(|b| b.to_string()).collect(),
            series: starts.clone(),
            values: latency,
        };
        plots.extend(save(&plot, &plots_dir, "latency")?);
        let _ = writeln!(
            md,
            "### p50 and p99 per benchmark\n\n![p50/p99](plots/latency.svg) ([PNG](plots/latency.png))\n"
        );
    }
    let memory = bars(&benches, &starts, runs, |run| {
        let m = memory_mb(run);
        (!m.is_empty()).then(|| (mean(&m), None))
    });
    if memory.iter().flatten().any(Option::is_some) {
        let plot = Plot::Bars {
            title: "memory per instance (sandbox cgroup usage, mean)".into(),
            y_desc: "MB".into(),
            log: false,
            groups: benches.iter().map(|b| b.to_string()).collect(),
            series: starts.clone(),
            values: memory,
        };
        plots.extend(save(&plot, &plots_dir, "memory")?);
        let _ = writeln!(
            md,
            "### Memory per instance\n\n![memory](plots/memory.svg) ([PNG](plots/memory.png))\n"
        );
    } else {
        let _ = writeln!(
            md,
            "### Memory per instance\n\nNo successful invocation carried `X-Kindling-Memory`.\n"
        );
    }

    let markdown = dir.join("report.md");
    std::fs::write(&markdown, md)
        .with_context(|| format!("cannot write {}", markdown.display()))?;
    Ok(Written { markdown, plots })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{load_runs, tests::fixture_run, write_result_csv};

    #[test]
    fn report_from_a_results_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runs = [
            fixture_run("gzip", StartMethod::Cold, &[40.0, 45.0, 48.0, 52.0, 60.0]),
            fixture_run("gzip", StartMethod::Warm, &[1.0, 1.2, 1.1, 1.3, 0.9, 1.0]),
            fixture_run("json_serdes", StartMethod::Cold, &[30.0, 33.0]),
            fixture_run("json_serdes", StartMethod::Fork, &[5.0, 6.0, 7.0, 5.5]),
        ];
        for r in &runs {
            let sub = dir.path().join(&r.benchmark);
            std::fs::create_dir_all(&sub).expect("mkdir");
            std::fs::write(
                sub.join(format!("{}.json", r.start.as_str())),
                serde_json::to_vec_pretty(r).expect("json"),
            )
            .expect("write");
        }
        std::fs::write(dir.path().join("gzip/notes.json"), "{}").expect("write");

        let loaded = load_runs(dir.path()).expect("load");
        assert_eq!(loaded.len(), 4, "notes.json is skipped");
        let csv = write_result_csv(dir.path()).expect("csv");
        let rows = std::fs::read_to_string(csv).expect("read").lines().count();
        assert_eq!(rows, 1 + 5 + 6 + 2 + 4);

        let written = write_report(dir.path(), &loaded).expect("report");
        assert_eq!(written.plots.len(), 8);
        let md = std::fs::read_to_string(dir.path().join("report.md")).expect("report.md");
        // gzip cold: the first of 5 is incorrect, so 4 measured: 45, 48, 52, 60.
        assert!(
            md.contains("| gzip | cold | 4 | 50.0 | 57.6 | 59.8 | 51.2 |"),
            "{md}"
        );
        assert!(
            md.contains("| gzip | test | cold | 1 | 5 | 4 | 1 | 0 | 0 |"),
            "{md}"
        );
        assert!(md.contains("| json_serdes | fork |"));
        assert!(md.contains("plots/latency.svg"));
        for stem in ["cdf-gzip", "cdf-json_serdes", "latency", "memory"] {
            let svg =
                std::fs::read_to_string(dir.path().join(format!("plots/{stem}.svg"))).expect("svg");
            assert!(
                svg.starts_with("<svg") && svg.contains("</svg>"),
                "{stem}.svg"
            );
            let png = std::fs::read(dir.path().join(format!("plots/{stem}.png"))).expect("png");
            let decoder = png::Decoder::new(std::io::Cursor::new(png));
            let reader = decoder.read_info().expect("a valid PNG");
            let info = reader.info();
            assert!(info.width >= 900 && info.height == 560, "{stem}.png");
        }
        let svg = std::fs::read_to_string(dir.path().join("plots/cdf-gzip.svg")).expect("svg");
        assert!(svg.contains("cold (n=4)") && svg.contains("warm (n=5)"));
    }
}
