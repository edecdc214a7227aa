//! The worker's counters and latency histograms, rendered as JSON (`/stats`, OpenLambda-style
//! dotted keys with mean latencies in ms) and as OpenMetrics text (`/metrics`, through
//! `prometheus-client`, latencies in seconds).
//!
//! `/metrics` exposes:
//! - `kindling_events_total{event="<key>"}`: every counter of `/stats` (`invocations`,
//!   `start.cold`, `errors.timeout`, `deploys`, ...);
//! - `kindling_invocation_latency_seconds{start="cold|fork|warm"}`: a histogram of the
//!   end-to-end invocation latency inside the worker;
//! - `kindling_<gauge>`: each gauge of `/stats` with `.` and `-` as `_` (`kindling_sandboxes_live`).

use parking_lot::Mutex;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Upper bounds (seconds) of the latency histogram's buckets: 0.5 ms to 30 s.
const BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

/// The `/metrics` content type (OpenMetrics text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A label value escaped as the exposition format wants (`\`, `"` and newlines); the crate
/// writes values as given.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Escaped(String);

impl EncodeLabelValue for Escaped {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EventLabels {
    event: Escaped,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StartLabels {
    start: Escaped,
}

/// What `/stats` reports beside the exposition: counters by key, and latency sums (ms) and
/// counts by start method for the means.
#[derive(Default)]
struct Totals {
    counters: BTreeMap<String, u64>,
    latency: BTreeMap<String, (f64, u64)>,
}

/// The worker's metrics.
pub struct Metrics {
    registry: Registry,
    events: Family<EventLabels, Counter>,
    latency: Family<StartLabels, Histogram, fn() -> Histogram>,
    gauges: Vec<(&'static str, Gauge)>,
    totals: Mutex<Totals>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "kindling_events",
            "Worker events by kind (invocations, start methods, errors, deploys)",
            events.clone(),
        );
        let latency: Family<StartLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(BUCKETS_SECONDS.iter().copied()));
        registry.register_with_unit(
            "kindling_invocation_latency",
            "End-to-end invocation latency inside the worker, by start method",
            Unit::Seconds,
            latency.clone(),
        );
        let gauges = kindling_api::types::stats::GAUGES
            .iter()
            .map(|&key| {
                let gauge = Gauge::default();
                registry.register(
                    format!("kindling_{}", key.replace(['.', '-'], "_")),
                    format!("`{key}` of /stats"),
                    gauge.clone(),
                );
                (key, gauge)
            })
            .collect();
        Self {
            registry,
            events,
            latency,
            gauges,
            totals: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Adds `n` to counter `name` (dotted, OpenLambda style: `start.cold`, `errors.timeout`).
    pub fn add(&self, name: &str, n: u64) {
        let mut t = self.totals.lock();
        *t.counters.entry(name.to_string()).or_default() += n;
        self.events
            .get_or_create(&EventLabels {
                event: Escaped(name.to_string()),
            })
            .inc_by(n);
    }

    /// Records an invocation's end-to-end latency (ms) under its start method.
    pub fn observe_latency(&self, start: &str, ms: f64) {
        let mut t = self.totals.lock();
        let (sum, count) = t.latency.entry(start.to_string()).or_default();
        *sum += ms;
        *count += 1;
        self.latency
            .get_or_create(&StartLabels {
                start: Escaped(start.to_string()),
            })
            .observe(ms / 1000.0);
    }

    /// `/stats`: counters, `latency.<start>.ms-avg` means, and the given gauges.
    pub fn stats(&self, gauges: &[(&str, u64)]) -> kindling_api::Stats {
        let t = self.totals.lock();
        let mut map = BTreeMap::new();
        for (k, v) in &t.counters {
            map.insert(k.clone(), (*v).into());
        }
        for (k, (sum, count)) in &t.latency {
            if *count > 0 {
                let avg = (sum / *count as f64 * 1000.0).round() / 1000.0;
                if let Some(avg) = serde_json::Number::from_f64(avg) {
                    map.insert(format!("latency.{k}.ms-avg"), avg);
                }
            }
        }
        for (k, v) in gauges {
            map.insert((*k).to_string(), (*v).into());
        }
        kindling_api::Stats(map)
    }

    /// `/metrics`: the OpenMetrics text, with the gauges set to the given values first.
    pub fn exposition(&self, gauges: &[(&str, u64)]) -> String {
        for (key, value) in gauges {
            if let Some((_, g)) = self.gauges.iter().find(|(k, _)| k == key) {
                g.set(i64::try_from(*value).unwrap_or(i64::MAX));
            }
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("cannot render metrics: {e}");
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders() {
        let m = Metrics::default();
        m.add("start.cold", 1);
        m.add("start.cold", 2);
        m.observe_latency("cold", 7.0);
        m.observe_latency("cold", 9.0);
        let s = m.stats(&[("sandboxes.live", 3)]);
        assert_eq!(s.count("start.cold"), 3);
        assert_eq!(s.value("latency.cold.ms-avg"), Some(8.0));
        assert_eq!(s.count("sandboxes.live"), 3);
        let p = m.exposition(&[("sandboxes.live", 3)]);
        assert!(
            p.contains("kindling_events_total{event=\"start.cold\"} 3"),
            "{p}"
        );
        assert!(
            p.contains("kindling_invocation_latency_seconds_bucket{le=\"0.01\",start=\"cold\"} 2"),
            "{p}"
        );
        assert!(
            p.contains("kindling_invocation_latency_seconds_bucket{le=\"0.005\",start=\"cold\"} 0"),
            "{p}"
        );
        assert!(
            p.contains("kindling_invocation_latency_seconds_count{start=\"cold\"} 2"),
            "{p}"
        );
        assert!(p.contains("kindling_sandboxes_live 3"), "{p}");
        assert!(
            p.contains("# UNIT kindling_invocation_latency_seconds seconds"),
            "{p}"
        );
        assert!(p.trim_end().ends_with("# EOF"), "{p}");
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.add("odd\"name\\with\nbreak", 1);
        let p = m.exposition(&[]);
        assert!(
            p.contains(r#"kindling_events_total{event="odd\"name\\with\nbreak"} 1"#),
            "{p}"
        );
    }
}
