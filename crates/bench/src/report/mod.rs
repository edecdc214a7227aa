//! `kindling bench report DIR`: a Markdown report with tables and plots of the results that
//! `kindling bench run` wrote to DIR, and [`trace`]'s report of those of `kindling bench trace`.
//!
//! Latency figures are the client's end-to-end times (`times.client`) of the invocations that
//! succeeded with the start method asked for, summarized by [`crate::stats`] (percentiles as
//! NumPy's default, the 95 % confidence interval of the mean by Student's t, as SeBS's
//! `ci_tstudents`). [`markdown`] writes the report, [`plot`] draws its plots with `plotters`
//! twice, as SVG (text left to the viewer) and as PNG through [`png`], which rasterizes text
//! with `ab_glyph` from a TrueType font of the system.

pub mod markdown;
pub mod plot;
pub mod png;
pub mod trace;

use crate::results::load_runs;
use crate::trace::record::load_traces;
use anyhow::Result;
use std::path::PathBuf;

/// The arguments of `kindling bench report`.
#[derive(clap::Args)]
pub struct ReportArgs {
    /// Directory written by `kindling bench run --output-dir` or `kindling bench trace
    /// --output-dir`.
    pub dir: PathBuf,
}

pub fn run(args: ReportArgs) -> Result<()> {
    let runs = load_runs(&args.dir)?;
    let traces = load_traces(&args.dir)?;
    if runs.is_empty() && traces.is_empty() {
        anyhow::bail!(
            "no results in {} (expected <dir>/<bench>/<start>.json from `kindling bench run --output-dir {}`, or trace-<policy>.json from `kindling bench trace --output-dir {}`)",
            args.dir.display(),
            args.dir.display(),
            args.dir.display()
        );
    }
    if png::png_font().is_none() {
        eprintln!("warning: {}", png::NO_FONT);
    }
    if !runs.is_empty() {
        let written = markdown::write_report(&args.dir, &runs)?;
        println!(
            "report: {} ({} plots in {})",
            written.markdown.display(),
            written.plots.len(),
            args.dir.join("plots").display()
        );
    }
    if !traces.is_empty() {
        let (md, plots) = trace::write_report(&args.dir, &traces)?;
        println!(
            "trace report: {} ({} plots in {})",
            md.display(),
            plots.len(),
            args.dir.join("plots").display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = run(ReportArgs {
            dir: dir.path().to_path_buf(),
        })
        .expect_err("empty");
        assert!(err.to_string().contains("no results in"));
    }

    #[test]
    fn a_results_directory_gets_a_report() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = crate::results::tests::fixture_run("gzip", kindling_api::StartMethod::Fork, &[2.0]);
        std::fs::create_dir_all(dir.path().join("gzip")).expect("mkdir");
        std::fs::write(
            dir.path().join("gzip/fork.json"),
            serde_json::to_vec(&r).expect("json"),
        )
        .expect("write");
        run(ReportArgs {
            dir: dir.path().to_path_buf(),
        })
        .expect("report");
        let md = std::fs::read_to_string(dir.path().join("report.md")).expect("report.md");
        assert!(
            md.contains("| gzip | fork | 1 | 2.00 | 2.00 | 2.00 | 2.00 | - |"),
            "{md}"
        );
    }
}
