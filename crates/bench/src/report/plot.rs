//! The plots of `bench report`: a latency CDF per benchmark and bars per benchmark and start
//! method, each drawn as SVG and as PNG.

use super::png::{png_font, write_png, PngCanvas};
use crate::results::RunFile;
use crate::stats::fmt_ms;
use anyhow::{Context, Result};
use kindling_api::StartMethod;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters_backend::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};

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

/// One bar: its value and an optional upper value drawn lighter on top (p50 and p99); None
/// where a benchmark has no result for a start method.
pub type Bar = Option<(f64, Option<f64>)>;

/// One bar per benchmark (group) and start method (series), from the run of that pair if any.
pub fn bars(
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

/// One line of a plot: its legend, colour and values (latencies of a CDF, or `(x, y)` points
/// flattened as x0, y0, x1, y1, ... for [`Plot::Lines`]).
pub struct Series {
    pub label: String,
    pub color: RGBColor,
    pub values: Vec<f64>,
}

/// The CDF series of one start method, in its colour.
pub fn start_series(start: StartMethod, values: Vec<f64>) -> Series {
    Series {
        label: start.as_str().to_string(),
        color: start_color(start),
        values,
    }
}

/// The colour of the `i`-th series that is not a start method (policies): a qualitative
/// palette.
pub fn palette(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    COLORS[i % COLORS.len()]
}

pub enum Plot {
    /// One step line per series (a start method, or a policy).
    Cdf { title: String, series: Vec<Series> },
    /// One line per series of `(x, y)` points (memory over time per policy).
    Lines {
        title: String,
        x_desc: String,
        y_desc: String,
        series: Vec<Series>,
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
        StartMethod::Switch => RGBColor(148, 103, 189),
    }
}

impl Plot {
    fn size(&self) -> (u32, u32) {
        match self {
            Plot::Cdf { .. } | Plot::Lines { .. } => (900, 560),
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
                let all = series.iter().flat_map(|s| s.values.iter().copied());
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
                for Series {
                    label,
                    color,
                    values: xs,
                } in series
                {
                    let color = *color;
                    let n = xs.len() as f64;
                    let mut points = Vec::with_capacity(xs.len() * 2);
                    for (i, x) in xs.iter().enumerate() {
                        points.push((*x, i as f64 / n));
                        points.push((*x, (i + 1) as f64 / n));
                    }
                    chart
                        .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                        .label(legend_label(&format!("{label} (n={})", xs.len())))
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
            Plot::Lines {
                title,
                x_desc,
                y_desc,
                series,
            } => {
                let points = |s: &Series| -> Vec<(f64, f64)> {
                    s.values.chunks_exact(2).map(|p| (p[0], p[1])).collect()
                };
                let all: Vec<(f64, f64)> = series.iter().flat_map(points).collect();
                let x_hi = all.iter().map(|p| p.0).fold(1.0, f64::max);
                let y_hi = all.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
                let mut chart = ChartBuilder::on(root)
                    .caption(title, ("sans-serif", 24))
                    .margin(18)
                    .x_label_area_size(50)
                    .y_label_area_size(64)
                    .build_cartesian_2d(0.0..x_hi, 0.0..y_hi)?;
                chart
                    .configure_mesh()
                    .x_desc(x_desc.as_str())
                    .y_desc(y_desc.as_str())
                    .x_label_formatter(&|v| format!("{v:.0}"))
                    .y_label_formatter(&|v| format!("{v:.0}"))
                    .label_style(("sans-serif", 15))
                    .axis_desc_style(("sans-serif", 17))
                    .draw()?;
                for s in series {
                    let color = s.color;
                    chart
                        .draw_series(LineSeries::new(points(s), color.stroke_width(2)))?
                        .label(legend_label(&s.label))
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(3))
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
pub fn save(plot: &Plot, dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
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
        let canvas = PngCanvas::new(&mut pixels, (w, h), png_font());
        let root = canvas.into_drawing_area();
        plot.draw(&root)
            .with_context(|| format!("cannot draw {}", png.display()))?;
    }
    write_png(&png, w, h, &pixels)?;
    Ok(vec![svg, png])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_drop_trailing_zeros() {
        assert_eq!(fmt_tick(0.1), "0.1");
        assert_eq!(fmt_tick(10.0), "10");
        assert_eq!(fmt_tick(31.62), "31.6");
    }

    #[test]
    fn png_without_a_font_draws_everything_but_text() {
        let plot = Plot::Cdf {
            title: "no font".into(),
            series: vec![start_series(StartMethod::Warm, vec![1.0, 2.0, 3.0])],
        };
        let (w, h) = plot.size();
        let mut pixels = vec![0u8; w as usize * h as usize * 3];
        {
            let canvas = PngCanvas::new(&mut pixels, (w, h), None);
            plot.draw(&canvas.into_drawing_area()).expect("draw");
        }
        let warm = start_color(StartMethod::Warm);
        assert!(
            pixels.chunks(3).any(|p| p == [warm.0, warm.1, warm.2]),
            "the CDF line is drawn"
        );
    }
}
