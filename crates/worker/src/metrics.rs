//! Counters and latency histograms of the worker, rendered as JSON (`/stats`) and Prometheus
//! text (`/metrics`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds (ms) of the latency histogram buckets.
const BUCKETS_MS: &[f64] = &[
    0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
    30000.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, ms: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS_MS.len()];
        }
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            if ms <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += ms;
        self.count += 1;
    }
}

#[derive(Default)]
struct Inner {
    counters: BTreeMap<String, u64>,
    latency: BTreeMap<String, Histogram>,
}

/// The worker's metrics.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// Adds `n` to counter `name` (dotted, OpenLambda style: `start.cold`, `errors.timeout`).
    pub fn add(&self, name: &str, n: u64) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *g.counters.entry(name.to_string()).or_default() += n;
    }

    /// Records an invocation's end-to-end latency under its start method.
    pub fn observe_latency(&self, start: &str, ms: f64) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.latency.entry(start.to_string()).or_default().observe(ms);
    }

    /// Counters as a JSON object, plus `<start>.ms-avg` means, plus the given gauges.
    pub fn stats_json(&self, gauges: &[(&str, u64)]) -> serde_json::Value {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut map = serde_json::Map::new();
        for (k, v) in &g.counters {
            map.insert(k.clone(), (*v).into());
        }
        for (k, h) in &g.latency {
            if h.count > 0 {
                let avg = (h.sum / h.count as f64 * 1000.0).round() / 1000.0;
                map.insert(format!("latency.{k}.ms-avg"), avg.into());
            }
        }
        for (k, v) in gauges {
            map.insert((*k).to_string(), (*v).into());
        }
        serde_json::Value::Object(map)
    }

    /// Prometheus text exposition.
    pub fn prometheus(&self, gauges: &[(&str, u64)]) -> String {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        let _ = writeln!(out, "# HELP kindling_events_total Worker events by kind (invocations, start methods, errors, deploys).");
        let _ = writeln!(out, "# TYPE kindling_events_total counter");
        for (k, v) in &g.counters {
            let _ = writeln!(out, "kindling_events_total{{event=\"{k}\"}} {v}");
        }
        let _ = writeln!(out, "# HELP kindling_invocation_latency_ms End-to-end invocation latency inside the worker, by start method.");
        let _ = writeln!(out, "# TYPE kindling_invocation_latency_ms histogram");
        for (start, h) in &g.latency {
            for (b, c) in BUCKETS_MS.iter().zip(&h.counts) {
                let _ = writeln!(
                    out,
                    "kindling_invocation_latency_ms_bucket{{start=\"{start}\",le=\"{b}\"}} {c}"
                );
            }
            let _ = writeln!(
                out,
                "kindling_invocation_latency_ms_bucket{{start=\"{start}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "kindling_invocation_latency_ms_sum{{start=\"{start}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "kindling_invocation_latency_ms_count{{start=\"{start}\"}} {}",
                h.count
            );
        }
        for (k, v) in gauges {
            let name = k.replace(['.', '-'], "_");
            let _ = writeln!(out, "# TYPE kindling_{name} gauge");
            let _ = writeln!(out, "kindling_{name} {v}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders() {
        let m = Metrics::default();
        m.add("start.cold", 1);
        m.add("start.cold", 2);
        m.observe_latency("cold", 7.0);
        m.observe_latency("cold", 9.0);
        let s = m.stats_json(&[("sandboxes.live", 3)]);
        assert_eq!(s["start.cold"], 3);
        assert_eq!(s["latency.cold.ms-avg"], 8.0);
        assert_eq!(s["sandboxes.live"], 3);
        let p = m.prometheus(&[("sandboxes.live", 3)]);
        assert!(p.contains("kindling_events_total{event=\"start.cold\"} 3"));
        assert!(p.contains("kindling_invocation_latency_ms_bucket{start=\"cold\",le=\"10\"} 2"));
        assert!(p.contains("kindling_invocation_latency_ms_bucket{start=\"cold\",le=\"5\"} 0"));
        assert!(p.contains("kindling_invocation_latency_ms_count{start=\"cold\"} 2"));
        assert!(p.contains("kindling_sandboxes_live 3"));
    }
}
