//! The progress of one measurement on stderr: an `indicatif` bar redrawn in place on a
//! terminal; elsewhere (CI logs, pipes) a line every 10 s and one at the end.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The bar on a terminal: label, bar, counts, failures, elapsed time.
const TEMPLATE: &str = "{prefix} [{bar:24}] {pos}/{len} ({msg}) {elapsed}";

/// Finished invocations of one measurement out of its total, and how many failed.
pub struct Progress {
    bar: ProgressBar,
    failed: AtomicU64,
    /// Prints the line every 10 s where the bar is not drawn.
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Starts showing the progress of `total` invocations labelled `label` (call within the
    /// tokio runtime).
    pub fn new(label: String, total: u64) -> Arc<Self> {
        let style = ProgressStyle::with_template(TEMPLATE)
            .map(|s| s.progress_chars("#-"))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
            .with_style(style)
            .with_prefix(label)
            .with_message("0 failed");
        let ticker = if bar.is_hidden() {
            let bar = bar.clone();
            Some(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    eprintln!("{}", line(&bar));
                }
            }))
        } else {
            bar.enable_steady_tick(Duration::from_millis(200));
            None
        };
        Arc::new(Progress {
            bar,
            failed: AtomicU64::new(0),
            ticker,
        })
    }

    /// Counts one finished invocation.
    pub fn record(&self, ok: bool) {
        if !ok {
            let failed = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
            self.bar.set_message(format!("{failed} failed"));
        }
        self.bar.inc(1);
    }

    /// Leaves the final state on stderr.
    pub fn finish(&self) {
        if let Some(t) = &self.ticker {
            t.abort();
        }
        self.bar.finish();
        if self.bar.is_hidden() {
            eprintln!("{}", line(&self.bar));
        } else {
            // The bar stays as the last line; what follows starts below it.
            eprintln!();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(t) = &self.ticker {
            t.abort();
        }
    }
}

/// The progress as one plain line, where no bar is drawn.
fn line(bar: &ProgressBar) -> String {
    format!(
        "{} {}/{} ({}) {:.1}s",
        bar.prefix(),
        bar.position(),
        bar.length().unwrap_or(0),
        bar.message(),
        bar.elapsed().as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_finished_and_failed_invocations() {
        assert!(ProgressStyle::with_template(TEMPLATE).is_ok());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let p = Progress::new("gzip cold".into(), 3);
            p.record(true);
            p.record(false);
            assert!(
                line(&p.bar).starts_with("gzip cold 2/3 (1 failed) "),
                "{}",
                line(&p.bar)
            );
            p.finish();
        });
    }
}
