//! `kindling bench report DIR`: a Markdown report with tables and plots of the results that
//! `kindling bench run` wrote to DIR.
//!
//! Latency figures are the client's end-to-end times (`times.client`) of the invocations that
//! succeeded with the start method asked for. Percentiles interpolate linearly between order
//! statistics (NumPy's default); the confidence interval is the 95 % interval of the mean by
//! Student's t, as SeBS's `ci_tstudents`.
//!
//! Plots are drawn with `plotters` twice, as SVG (text left to the viewer) and as PNG through
//! [`PngCanvas`], which rasterizes text with `ab_glyph` from a TrueType font of the system
//! (DejaVu Sans, or `$KINDLING_FONT`), so neither font-kit nor freetype is needed. Without a
//! font, the PNGs are drawn without text and the report says so.

use crate::sebs::{load_runs, RunFile, StartMethod};
use ab_glyph::{Font, FontVec, PxScale, ScaleFont};
use anyhow::{Context, Result};
use plotters::backend::BitMapBackend;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters_backend::text_anchor::{HPos, Pos, VPos};
use plotters_backend::{BackendColor, BackendCoord, BackendTextStyle, DrawingErrorKind};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Directory written by `kindling bench run --output-dir`.
    pub dir: PathBuf,
}

pub fn run(args: ReportArgs) -> Result<()> {
    let runs = load_runs(&args.dir)?;
    if runs.is_empty() {
        anyhow::bail!(
            "no results in {} (expected <dir>/<bench>/<start>.json from `kindling bench run --output-dir {}`)",
            args.dir.display(),
            args.dir.display()
        );
    }
    let written = write_report(&args.dir, &runs)?;
    if png_font().is_none() {
        eprintln!("warning: {NO_FONT}");
    }
    println!(
        "report: {} ({} plots in {})",
        written.markdown.display(),
        written.plots.len(),
        args.dir.join("plots").display()
    );
    Ok(())
}

// ---------------------------------------------------------------- statistics

/// The `p`-th percentile (0–100) of ascending `sorted`, interpolating linearly between order
/// statistics (NumPy's default `linear` method). NaN for no samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let rank = (p.clamp(0.0, 100.0) / 100.0) * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Sample standard deviation (n − 1).
pub fn std_dev(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = mean(xs);
    (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom: a table up to 30, then the
/// Cornish–Fisher expansion around the normal quantile (error below 1e-4 there).
pub fn t_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010,
        2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739,
        2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => TABLE[df - 1],
        _ => {
            let z: f64 = 1.959_963_985;
            let n = df as f64;
            let (z3, z5, z7) = (z.powi(3), z.powi(5), z.powi(7));
            z + (z3 + z) / (4.0 * n)
                + (5.0 * z5 + 16.0 * z3 + 3.0 * z) / (96.0 * n * n)
                + (3.0 * z7 + 19.0 * z5 + 17.0 * z3 - 15.0 * z) / (384.0 * n * n * n)
        }
    }
}

/// The 95 % confidence interval of the mean (Student's t); None below two samples.
pub fn ci95_mean(xs: &[f64]) -> Option<(f64, f64)> {
    if xs.len() < 2 {
        return None;
    }
    let m = mean(xs);
    let half = t_975(xs.len() - 1) * std_dev(xs) / (xs.len() as f64).sqrt();
    Some((m - half, m + half))
}

/// Summary of one sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub mean: f64,
    pub ci95: Option<(f64, f64)>,
}

impl Summary {
    /// Sorts `xs` and summarizes it; None when empty.
    pub fn of(xs: &mut [f64]) -> Option<Summary> {
        if xs.is_empty() {
            return None;
        }
        xs.sort_by(f64::total_cmp);
        Some(Summary {
            n: xs.len(),
            p50: percentile(xs, 50.0),
            p90: percentile(xs, 90.0),
            p99: percentile(xs, 99.0),
            mean: mean(xs),
            ci95: ci95_mean(xs),
        })
    }
}

/// Milliseconds with three significant digits or so.
pub fn fmt_ms(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// An axis tick: `fmt_ms` without trailing zeros (`1`, `0.5`, `31.6`).
fn fmt_tick(v: f64) -> String {
    let s = fmt_ms(v);
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A legend label padded with spaces: plotters sizes the legend box with its built-in text
/// estimate, which is narrower than DejaVu Sans or a browser's sans-serif.
fn legend_label(s: &str) -> String {
    format!("{s}{}", " ".repeat(s.chars().count() / 3 + 1))
}

fn median_of(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    percentile(&xs, 50.0)
}

fn client_ms(run: &RunFile) -> Vec<f64> {
    let mut v: Vec<f64> = run
        .measured()
        .map(|i| i.times.client as f64 / 1000.0)
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

fn memory_mb(run: &RunFile) -> Vec<f64> {
    run.measured().filter_map(|i| i.stats.memory_used).collect()
}

// ---------------------------------------------------------------- report

pub struct Written {
    pub markdown: PathBuf,
    pub plots: Vec<PathBuf>,
}

const NO_FONT: &str = "no TrueType font found for PNG text (install fonts-dejavu-core or set \
KINDLING_FONT to a .ttf file): the PNG plots have no labels; the SVG plots do";

/// Writes `dir/report.md` and `dir/plots/*.{svg,png}` from `runs`.
pub fn write_report(dir: &Path, runs: &[RunFile]) -> Result<Written> {
    let plots_dir = dir.join("plots");
    std::fs::create_dir_all(&plots_dir)
        .with_context(|| format!("cannot create {}", plots_dir.display()))?;
    let mut benches: Vec<&str> = runs.iter().map(|r| r.benchmark.as_str()).collect();
    benches.dedup();
    let mut starts: Vec<StartMethod> = runs.iter().map(|r| r.start).collect();
    starts.sort();
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
            fmt_ms(median_of(xs))
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
            fmt_ms(median_of(bench_ms)),
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
        let series: Vec<(StartMethod, Vec<f64>)> = runs
            .iter()
            .filter(|r| r.benchmark == *bench)
            .map(|r| (r.start, client_ms(r)))
            .filter(|(_, v)| !v.is_empty())
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

// ---------------------------------------------------------------- plots

/// One bar: its value and an optional upper value drawn lighter on top (p50 and p99); None
/// where a benchmark has no result for a start method.
type Bar = Option<(f64, Option<f64>)>;

/// One bar per benchmark (group) and start method (series), from the run of that pair if any.
fn bars(
    benches: &[&str],
    starts: &[StartMethod],
    runs: &[RunFile],
    value: impl Fn(&RunFile) -> Bar,
) -> Vec<Vec<Bar>> {
    benches
        .iter()
        .map(|b| {
            starts
                .iter()
                .map(|s| {
                    let run = runs.iter().find(|r| r.benchmark == *b && r.start == *s)?;
                    value(run)
                })
                .collect()
        })
        .collect()
}

enum Plot {
    /// One step line per start method.
    Cdf {
        title: String,
        series: Vec<(StartMethod, Vec<f64>)>,
    },
    /// Bars per group (benchmark) and series (start method): `(value, optional upper value
    /// drawn lighter on top)`.
    Bars {
        title: String,
        y_desc: String,
        log: bool,
        groups: Vec<String>,
        series: Vec<StartMethod>,
        values: Vec<Vec<Bar>>,
    },
}

fn start_color(s: StartMethod) -> RGBColor {
    match s {
        StartMethod::Cold => RGBColor(214, 39, 40),
        StartMethod::Fork => RGBColor(31, 119, 180),
        StartMethod::Warm => RGBColor(44, 160, 44),
    }
}

impl Plot {
    fn size(&self) -> (u32, u32) {
        match self {
            Plot::Cdf { .. } => (900, 560),
            Plot::Bars { groups, .. } => ((160 + 110 * groups.len() as u32).max(900), 560),
        }
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        match self {
            Plot::Cdf { title, series } => {
                let all = series.iter().flat_map(|(_, v)| v.iter().copied());
                // Whole decades: plotters labels a log axis at powers of ten only.
                let lo = all.clone().fold(f64::INFINITY, f64::min).max(1e-3);
                let hi = all.fold(0.0, f64::max).max(lo * 1.01);
                let lo = 10f64.powf(lo.log10().floor());
                let hi = 10f64.powf(hi.log10().ceil());
                let mut chart = ChartBuilder::on(root)
                    .caption(title, ("sans-serif", 24))
                    .margin(18)
                    .x_label_area_size(50)
                    .y_label_area_size(64)
                    .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0f64)?;
                chart
                    .configure_mesh()
                    .x_desc("client latency (ms, log scale)")
                    .y_desc("fraction of invocations")
                    .x_label_formatter(&|v| fmt_tick(*v))
                    .y_label_formatter(&|v| format!("{v:.1}"))
                    .label_style(("sans-serif", 15))
                    .axis_desc_style(("sans-serif", 17))
                    .draw()?;
                for (start, xs) in series {
                    let color = start_color(*start);
                    let n = xs.len() as f64;
                    let mut points = Vec::with_capacity(xs.len() * 2);
                    for (i, x) in xs.iter().enumerate() {
                        points.push((*x, i as f64 / n));
                        points.push((*x, (i + 1) as f64 / n));
                    }
                    chart
                        .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                        .label(legend_label(&format!(
                            "{} (n={})",
                            start.as_str(),
                            xs.len()
                        )))
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(3))
                        });
                }
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::LowerRight)
                    .label_font(("sans-serif", 16))
                    .background_style(WHITE.mix(0.9))
                    .border_style(BLACK)
                    .draw()?;
            }
            Plot::Bars {
                title,
                y_desc,
                log,
                groups,
                series,
                values,
            } => {
                // A log axis is a linear axis of log10 values, labelled with 10^v.
                let t = |v: f64| if *log { v.max(1e-6).log10() } else { v };
                let tops = values
                    .iter()
                    .flatten()
                    .flatten()
                    .map(|(a, b)| b.unwrap_or(*a));
                let bottoms = values.iter().flatten().flatten().map(|(a, _)| *a);
                let max = tops.fold(f64::MIN, f64::max);
                let (y0, y1) = if *log {
                    let min = bottoms.fold(f64::MAX, f64::min);
                    let lo = t(min).floor().min(t(min) - 0.3);
                    (lo, t(max).ceil().max(lo + 1.0))
                } else {
                    (0.0, (max * 1.15).max(1e-9))
                };
                let mut chart = ChartBuilder::on(root)
                    .caption(title, ("sans-serif", 24))
                    .margin(18)
                    .x_label_area_size(40)
                    .y_label_area_size(70)
                    .build_cartesian_2d(0.0..groups.len() as f64, y0..y1)?;
                let log = *log;
                chart
                    .configure_mesh()
                    .disable_x_mesh()
                    .x_labels(groups.len().max(1))
                    .x_label_formatter(&|_| String::new())
                    .y_desc(y_desc.as_str())
                    .y_label_formatter(&|v| {
                        if log {
                            fmt_tick(10f64.powf(*v))
                        } else {
                            fmt_tick(*v)
                        }
                    })
                    .label_style(("sans-serif", 15))
                    .axis_desc_style(("sans-serif", 17))
                    .draw()?;
                let k = series.len().max(1) as f64;
                let width = 0.76 / k;
                for (g, row) in values.iter().enumerate() {
                    for (j, v) in row.iter().enumerate() {
                        let Some((a, b)) = v else { continue };
                        let color = start_color(series[j]);
                        let x0 = g as f64 + 0.12 + j as f64 * width;
                        let x1 = x0 + width * 0.88;
                        chart.draw_series(std::iter::once(Rectangle::new(
                            [(x0, y0), (x1, t(*a).max(y0))],
                            color.filled(),
                        )))?;
                        if let Some(b) = b {
                            chart.draw_series(std::iter::once(Rectangle::new(
                                [(x0, t(*a).max(y0)), (x1, t(*b).max(y0))],
                                color.mix(0.35).filled(),
                            )))?;
                        }
                    }
                    let (px, py) = chart.backend_coord(&(g as f64 + 0.5, y0));
                    root.draw(&Text::new(
                        groups[g].clone(),
                        (px, py + 8),
                        ("sans-serif", 15)
                            .into_font()
                            .color(&BLACK)
                            .pos(Pos::new(HPos::Center, VPos::Top)),
                    ))?;
                }
                for s in series {
                    let color = start_color(*s);
                    chart
                        .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
                        .label(legend_label(s.as_str()))
                        .legend(move |(x, y)| {
                            Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
                        });
                }
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperRight)
                    .label_font(("sans-serif", 16))
                    .background_style(WHITE.mix(0.9))
                    .border_style(BLACK)
                    .draw()?;
            }
        }
        root.present()?;
        Ok(())
    }
}

/// Draws `plot` as `<stem>.svg` and `<stem>.png` in `dir`.
fn save(plot: &Plot, dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    let (w, h) = plot.size();
    let svg = dir.join(format!("{stem}.svg"));
    {
        let root = SVGBackend::new(&svg, (w, h)).into_drawing_area();
        plot.draw(&root)
            .with_context(|| format!("cannot draw {}", svg.display()))?;
    }
    let png = dir.join(format!("{stem}.png"));
    let mut pixels = vec![0u8; w as usize * h as usize * 3];
    {
        let canvas = PngCanvas {
            inner: BitMapBackend::with_buffer(&mut pixels, (w, h)),
            font: png_font(),
        };
        let root = canvas.into_drawing_area();
        plot.draw(&root)
            .with_context(|| format!("cannot draw {}", png.display()))?;
    }
    write_png(&png, w, h, &pixels)?;
    Ok(vec![svg, png])
}

fn write_png(path: &Path, w: u32, h: u32, rgb: &[u8]) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(())
}

/// Fonts tried for PNG text, after `$KINDLING_FONT`.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
];

/// The font PNG text is drawn with, loaded once.
fn png_font() -> Option<&'static FontVec> {
    static FONT: OnceLock<Option<FontVec>> = OnceLock::new();
    FONT.get_or_init(|| {
        let env = std::env::var_os("KINDLING_FONT").map(PathBuf::from);
        env.into_iter()
            .chain(FONT_PATHS.iter().map(PathBuf::from))
            .find_map(|p| FontVec::try_from_vec(std::fs::read(p).ok()?).ok())
    })
    .as_ref()
}

/// A plotters bitmap backend over an RGB buffer whose text is rasterized with `ab_glyph`
/// (plotters' own bitmap text needs font-kit or its `ab_glyph` feature with a registered
/// font, and fails without one); with no font, text is skipped and the rest is drawn.
struct PngCanvas<'a> {
    inner: BitMapBackend<'a>,
    font: Option<&'static FontVec>,
}

/// Width and height in pixels of `text` set in `font` at `scale`.
fn text_extent(font: &FontVec, scale: PxScale, text: &str) -> (i32, i32) {
    let f = font.as_scaled(scale);
    let mut width = 0.0f32;
    let mut prev = None;
    for ch in text.chars() {
        let id = f.glyph_id(ch);
        if let Some(p) = prev {
            width += f.kern(p, id);
        }
        width += f.h_advance(id);
        prev = Some(id);
    }
    (
        width.ceil() as i32,
        (f.ascent() - f.descent()).ceil() as i32,
    )
}

type CanvasResult<'a> =
    Result<(), DrawingErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>>;

impl<'a> DrawingBackend for PngCanvas<'a> {
    type ErrorType = <BitMapBackend<'a> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }
    fn ensure_prepared(&mut self) -> CanvasResult<'a> {
        self.inner.ensure_prepared()
    }
    fn present(&mut self) -> CanvasResult<'a> {
        self.inner.present()
    }
    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> CanvasResult<'a> {
        self.inner.draw_pixel(point, color)
    }
    fn draw_line<S: plotters_backend::BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> CanvasResult<'a> {
        self.inner.draw_line(from, to, style)
    }
    fn draw_rect<S: plotters_backend::BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> CanvasResult<'a> {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }
    fn draw_path<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> CanvasResult<'a> {
        self.inner.draw_path(path, style)
    }
    fn draw_circle<S: plotters_backend::BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> CanvasResult<'a> {
        self.inner.draw_circle(center, radius, style, fill)
    }
    fn fill_polygon<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> CanvasResult<'a> {
        self.inner.fill_polygon(vert, style)
    }
    fn blit_bitmap(&mut self, pos: BackendCoord, size: (u32, u32), src: &[u8]) -> CanvasResult<'a> {
        self.inner.blit_bitmap(pos, size, src)
    }

    fn estimate_text_size<T: BackendTextStyle>(
        &self,
        text: &str,
        style: &T,
    ) -> Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        match self.font {
            Some(font) => {
                let (w, h) = text_extent(font, PxScale::from(style.size() as f32), text);
                Ok((w.max(0) as u32, h.max(0) as u32))
            }
            None => {
                let ((x0, y0), (x1, y1)) = style
                    .layout_box(text)
                    .map_err(|e| DrawingErrorKind::FontError(Box::new(e)))?;
                Ok(((x1 - x0) as u32, (y1 - y0) as u32))
            }
        }
    }

    fn draw_text<T: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &T,
        pos: BackendCoord,
    ) -> CanvasResult<'a> {
        let color = style.color();
        let Some(font) = self.font else {
            return Ok(());
        };
        if color.alpha == 0.0 {
            return Ok(());
        }
        let scale = PxScale::from(style.size() as f32);
        let scaled = font.as_scaled(scale);
        let (width, height) = text_extent(font, scale, text);
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Right => -width,
            HPos::Center => -width / 2,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -height / 2,
            VPos::Bottom => -height,
        };
        let transform = style.transform();
        let mut caret = 0.0f32;
        let mut prev = None;
        for ch in text.chars() {
            let id = scaled.glyph_id(ch);
            if let Some(p) = prev {
                caret += scaled.kern(p, id);
            }
            let glyph = id.with_scale_and_position(scale, ab_glyph::point(caret, scaled.ascent()));
            caret += scaled.h_advance(id);
            prev = Some(id);
            let Some(outline) = font.outline_glyph(glyph) else {
                continue;
            };
            let bounds = outline.px_bounds();
            let mut failed = None;
            outline.draw(|gx, gy, coverage| {
                let x = bounds.min.x as i32 + gx as i32 + dx;
                let y = bounds.min.y as i32 + gy as i32 + dy;
                let (x, y) = transform.transform(x, y);
                if failed.is_none() && coverage > 0.0 {
                    if let Err(e) = self
                        .inner
                        .draw_pixel((pos.0 + x, pos.1 + y), color.mix(coverage.min(1.0) as f64))
                    {
                        failed = Some(e);
                    }
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sebs::tests::fixture_run;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn percentiles_interpolate_linearly() {
        let xs: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&xs, 0.0), 1.0);
        assert_eq!(percentile(&xs, 100.0), 10.0);
        assert!(close(percentile(&xs, 50.0), 5.5, 1e-12));
        assert!(close(percentile(&xs, 90.0), 9.1, 1e-12));
        assert!(close(percentile(&xs, 99.0), 9.91, 1e-12));
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
        // Out-of-range p is clamped rather than indexing past the end.
        assert_eq!(percentile(&xs, 150.0), 10.0);
    }

    #[test]
    fn t_quantiles_match_tables() {
        assert!(close(t_975(1), 12.706, 1e-3));
        assert!(close(t_975(4), 2.776, 1e-3));
        assert!(close(t_975(30), 2.042, 1e-3));
        // Beyond the table: scipy.stats.t.ppf(0.975, df).
        assert!(close(t_975(40), 2.0211, 2e-4));
        assert!(close(t_975(60), 2.0003, 2e-4));
        assert!(close(t_975(120), 1.9799, 2e-4));
        assert!(close(t_975(100_000), 1.96, 1e-3));
        assert!(t_975(0).is_nan());
    }

    #[test]
    fn mean_ci_and_summary() {
        let xs = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(mean(&xs), 3.0);
        assert!(close(std_dev(&xs), 1.581_138_8, 1e-6));
        let (lo, hi) = ci95_mean(&xs).expect("ci");
        // 3 ± 2.7764 * 1.5811 / sqrt(5)
        assert!(close(lo, 1.0368, 1e-3), "{lo}");
        assert!(close(hi, 4.9632, 1e-3), "{hi}");
        assert!(ci95_mean(&[1.0]).is_none());
        let mut unsorted = vec![5.0, 1.0, 4.0, 2.0, 3.0];
        let s = Summary::of(&mut unsorted).expect("summary");
        assert_eq!((s.n, s.p50, s.mean), (5, 3.0, 3.0));
        assert!(close(s.p90, 4.6, 1e-12));
        assert!(Summary::of(&mut []).is_none());
        assert_eq!(fmt_ms(123.456), "123");
        assert_eq!(fmt_ms(12.345), "12.3");
        assert_eq!(fmt_ms(1.2345), "1.23");
        assert_eq!(fmt_ms(0.12345), "0.123");
        assert_eq!(fmt_ms(f64::NAN), "-");
        assert_eq!(fmt_tick(0.1), "0.1");
        assert_eq!(fmt_tick(10.0), "10");
        assert_eq!(fmt_tick(31.62), "31.6");
    }

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
        let csv = crate::sebs::write_result_csv(dir.path()).expect("csv");
        let rows = std::fs::read_to_string(csv).expect("read").lines().count();
        assert_eq!(rows, 1 + 5 + 6 + 2 + 4);

        run(ReportArgs {
            dir: dir.path().to_path_buf(),
        })
        .expect("report");
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

    #[test]
    fn png_without_a_font_draws_everything_but_text() {
        let plot = Plot::Cdf {
            title: "no font".into(),
            series: vec![(StartMethod::Warm, vec![1.0, 2.0, 3.0])],
        };
        let (w, h) = plot.size();
        let mut pixels = vec![0u8; w as usize * h as usize * 3];
        {
            let canvas = PngCanvas {
                inner: BitMapBackend::with_buffer(&mut pixels, (w, h)),
                font: None,
            };
            plot.draw(&canvas.into_drawing_area()).expect("draw");
        }
        let warm = start_color(StartMethod::Warm);
        assert!(
            pixels.chunks(3).any(|p| p == [warm.0, warm.1, warm.2]),
            "the CDF line is drawn"
        );
    }

    #[test]
    fn an_empty_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = run(ReportArgs {
            dir: dir.path().to_path_buf(),
        })
        .expect_err("empty");
        assert!(err.to_string().contains("no results in"));
    }
}
