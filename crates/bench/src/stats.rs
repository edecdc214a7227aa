//! The statistics every `kindling bench` command reports, defined once, so that the same
//! samples give the same p50 and p99 in `bench startup`, `bench fork`, `bench run` and
//! `bench report`.
//!
//! Percentiles interpolate linearly between order statistics: NumPy's default (`method =
//! "linear"`, Hyndman and Fan's definition 7), which SeBS uses for its reports. The confidence
//! interval is the 95 % interval of the mean by Student's t, as SeBS's `ci_tstudents`.

/// The `p`-th percentile (0–100, clamped) of `sorted` (ascending), as NumPy's
/// `np.percentile(sorted, p)`: the order statistic at rank `p/100 · (n − 1)`, interpolated
/// linearly between its neighbours. NaN for no samples.
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

/// The arithmetic mean; NaN for no samples.
pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Sample standard deviation (n − 1); 0 below two samples.
pub fn std_dev(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = mean(xs);
    (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom: a table up to 30, then the
/// Cornish–Fisher expansion around the normal quantile (error below 1e-4 there). A table,
/// not a statistics crate: this is the one quantile the benchmarks need.
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

/// The median of unsorted `xs` (NaN for none).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    percentile(&xs, 50.0)
}

/// Summary of one sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
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
            min: xs[0],
            p50: percentile(xs, 50.0),
            p90: percentile(xs, 90.0),
            p99: percentile(xs, 99.0),
            max: xs[xs.len() - 1],
            mean: mean(xs),
            ci95: ci95_mean(xs),
        })
    }
}

/// Latency samples of one start method, in milliseconds, in the order they were taken.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    /// The `p`-th percentile ([`percentile`]); NaN for no samples.
    pub fn pct(&self, p: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        percentile(&v, p)
    }

    /// `{n, p50_ms, p90_ms, p99_ms, min_ms, max_ms}` as `bench startup` and `bench fork` write
    /// them (null figures for no samples).
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"n": self.0.len(), "p50_ms": self.pct(50.0), "p90_ms": self.pct(90.0),
            "p99_ms": self.pct(99.0), "min_ms": self.pct(0.0), "max_ms": self.pct(100.0)})
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

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// Expected values are NumPy's (`np.percentile(xs, p)`, default method), worked out by
    /// hand from its definition or taken from its documentation, and hard-coded here.
    #[test]
    fn percentiles_are_numpys_linear_interpolation() {
        // np.percentile([1, 2, 3, 4], [25, 50, 75, 99]) == [1.75, 2.5, 3.25, 3.97]
        let xs = [1.0, 2.0, 3.0, 4.0];
        assert!(close(percentile(&xs, 25.0), 1.75, 1e-12));
        assert!(close(percentile(&xs, 50.0), 2.5, 1e-12));
        assert!(close(percentile(&xs, 75.0), 3.25, 1e-12));
        assert!(close(percentile(&xs, 99.0), 3.97, 1e-12));
        // NumPy's documented example: a = [[10, 7, 4], [3, 2, 1]]; np.percentile(a, 50) == 3.5,
        // and per column (axis=0) [6.5, 4.5, 2.5].
        let mut a = [10.0, 7.0, 4.0, 3.0, 2.0, 1.0];
        a.sort_by(f64::total_cmp);
        assert!(close(percentile(&a, 50.0), 3.5, 1e-12));
        for (column, expected) in [([3.0, 10.0], 6.5), ([2.0, 7.0], 4.5), ([1.0, 4.0], 2.5)] {
            assert!(close(percentile(&column, 50.0), expected, 1e-12));
        }
        // np.percentile(range(1, 11), [0, 50, 90, 99, 100]) == [1, 5.5, 9.1, 9.91, 10]
        let xs: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&xs, 0.0), 1.0);
        assert!(close(percentile(&xs, 50.0), 5.5, 1e-12));
        assert!(close(percentile(&xs, 90.0), 9.1, 1e-12));
        assert!(close(percentile(&xs, 99.0), 9.91, 1e-12));
        assert_eq!(percentile(&xs, 100.0), 10.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
        // Out-of-range p is clamped rather than indexing past the end.
        assert_eq!(percentile(&xs, 150.0), 10.0);
        assert_eq!(percentile(&xs, -5.0), 1.0);
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
        assert_eq!((s.n, s.min, s.p50, s.max, s.mean), (5, 1.0, 3.0, 5.0, 3.0));
        assert!(close(s.p90, 4.6, 1e-12));
        assert!(close(s.p99, 4.96, 1e-12));
        assert!(Summary::of(&mut []).is_none());
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn samples_report_the_same_percentiles_as_the_report() {
        // 50 starts of 1..=50 ms: p50 25.5 (the old nearest-rank `bench startup` said 26),
        // p99 49.51 (it said 50).
        let s = Samples((1..=50).rev().map(f64::from).collect());
        let mut sorted = s.0.clone();
        let summary = Summary::of(&mut sorted).expect("summary");
        assert_eq!(s.pct(50.0), summary.p50);
        assert_eq!(s.pct(99.0), summary.p99);
        assert!(close(s.pct(50.0), 25.5, 1e-12));
        assert!(close(s.pct(99.0), 49.51, 1e-12));
        let v = s.json();
        assert_eq!(v["n"], 50);
        assert_eq!(v["min_ms"], 1.0);
        assert_eq!(v["max_ms"], 50.0);
        assert!(close(v["p90_ms"].as_f64().expect("p90"), 45.1, 1e-12));
        let empty = Samples::default().json();
        assert_eq!(empty["n"], 0);
        assert!(empty["p50_ms"].is_null());
    }

    #[test]
    fn milliseconds_keep_three_significant_digits() {
        assert_eq!(fmt_ms(123.456), "123");
        assert_eq!(fmt_ms(12.345), "12.3");
        assert_eq!(fmt_ms(1.2345), "1.23");
        assert_eq!(fmt_ms(0.12345), "0.123");
        assert_eq!(fmt_ms(f64::NAN), "-");
    }
}
