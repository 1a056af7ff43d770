//! Metrics: lock-free counters, fixed-bucket latency histograms, per-operation request
//! statistics, and an encoder for the Prometheus text exposition format (version 0.0.4).
//!
//! Values that are state rather than events (blocks stored, Raft term, nodes by state)
//! are not kept here: each server computes them when scraped and writes them with
//! [`Encoder::gauge`], so they can never drift from the truth.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds (seconds) of the latency buckets: 100 µs to 30 s.
pub const LATENCY_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0];

/// A latency histogram with the fixed [`LATENCY_BUCKETS`] (plus `+Inf`).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative counts per bucket; the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|b| s <= *b).unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Count, errors and latency of one operation.
#[derive(Debug, Default)]
pub struct OpStat {
    pub requests: Counter,
    pub errors: Counter,
    pub latency: Histogram,
}

/// Request statistics per operation name (`op` label).
#[derive(Debug, Default)]
pub struct OpStats {
    ops: RwLock<BTreeMap<&'static str, Arc<OpStat>>>,
}

impl OpStats {
    /// Records one finished request.
    pub fn record(&self, op: &'static str, elapsed: Duration, ok: bool) {
        let stat = self.get(op);
        stat.requests.inc();
        if !ok {
            stat.errors.inc();
        }
        stat.latency.observe(elapsed);
    }

    fn get(&self, op: &'static str) -> Arc<OpStat> {
        if let Some(s) = self.ops.read().expect("op stats lock").get(op) {
            return s.clone();
        }
        self.ops.write().expect("op stats lock").entry(op).or_default().clone()
    }

    /// Requests of every operation so far.
    pub fn total(&self) -> u64 {
        self.ops.read().expect("op stats lock").values().map(|s| s.requests.get()).sum()
    }

    /// Requests of one operation so far.
    pub fn requests(&self, op: &str) -> u64 {
        self.ops.read().expect("op stats lock").get(op).map(|s| s.requests.get()).unwrap_or(0)
    }

    /// Writes `<prefix>_requests_total`, `<prefix>_request_errors_total` and
    /// `<prefix>_request_duration_seconds` (a histogram), each labelled by `op`.
    pub fn encode(&self, enc: &mut Encoder, prefix: &str) {
        let ops: Vec<(&'static str, Arc<OpStat>)> =
            self.ops.read().expect("op stats lock").iter().map(|(k, v)| (*k, v.clone())).collect();
        let name = format!("{prefix}_requests_total");
        enc.family(&name, "counter", "Requests handled, by operation.");
        for (op, s) in &ops {
            enc.sample(&name, &[("op", op)], s.requests.get() as f64);
        }
        let name = format!("{prefix}_request_errors_total");
        enc.family(&name, "counter", "Requests that ended in an error, by operation.");
        for (op, s) in &ops {
            enc.sample(&name, &[("op", op)], s.errors.get() as f64);
        }
        let name = format!("{prefix}_request_duration_seconds");
        enc.family(&name, "histogram", "Time to handle a request, by operation.");
        for (op, s) in &ops {
            enc.histogram_samples(&name, &[("op", op)], &s.latency);
        }
    }
}

/// Builds a Prometheus text-format document.
#[derive(Debug, Default)]
pub struct Encoder {
    out: String,
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder::default()
    }

    /// Starts a metric family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", fmt_value(value));
    }

    /// A family with one unlabelled sample.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }

    /// A counter family with one unlabelled sample.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        self.sample(name, &[], value as f64);
    }

    /// The `_bucket`, `_sum` and `_count` samples of one histogram.
    pub fn histogram_samples(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let mut cumulative = 0u64;
        let bucket = format!("{name}_bucket");
        for (i, n) in h.buckets.iter().enumerate() {
            cumulative += n.load(Ordering::Relaxed);
            let le = LATENCY_BUCKETS.get(i).map(|b| fmt_value(*b)).unwrap_or_else(|| "+Inf".into());
            let mut l: Vec<(&str, &str)> = labels.to_vec();
            l.push(("le", &le));
            self.sample(&bucket, &l, cumulative as f64);
        }
        self.sample(&format!("{name}_sum"), labels, h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9);
        self.sample(&format!("{name}_count"), labels, h.count() as f64);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn fmt_value(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// Parses the samples of a Prometheus text document into `name{labels}` → value
/// (labels as written). Tests and tools use it to read a scrape.
pub fn parse_text(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            let v = match v {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().ok()?,
            };
            Some((k.to_string(), v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_has_help_type_labels_and_cumulative_buckets() {
        let ops = OpStats::default();
        ops.record("put", Duration::from_micros(50), true);
        ops.record("put", Duration::from_millis(3), true);
        ops.record("put", Duration::from_secs(60), false);
        ops.record("get", Duration::from_millis(1), true);
        let mut enc = Encoder::new();
        ops.encode(&mut enc, "x");
        enc.gauge("x_blocks", "Blocks.", 7.0);
        enc.family("x_odd", "gauge", "Odd labels.");
        enc.sample("x_odd", &[("path", "a\"b\\c")], 0.5);
        let text = enc.finish();
        assert!(text.contains("# TYPE x_requests_total counter\n"), "{text}");
        assert!(text.contains("# TYPE x_request_duration_seconds histogram\n"), "{text}");
        let m = parse_text(&text);
        assert_eq!(m["x_requests_total{op=\"put\"}"], 3.0);
        assert_eq!(m["x_request_errors_total{op=\"put\"}"], 1.0);
        assert_eq!(m["x_request_duration_seconds_bucket{op=\"put\",le=\"0.0001\"}"], 1.0);
        assert_eq!(m["x_request_duration_seconds_bucket{op=\"put\",le=\"0.005\"}"], 2.0);
        assert_eq!(m["x_request_duration_seconds_bucket{op=\"put\",le=\"30\"}"], 2.0);
        assert_eq!(m["x_request_duration_seconds_bucket{op=\"put\",le=\"+Inf\"}"], 3.0);
        assert_eq!(m["x_request_duration_seconds_count{op=\"put\"}"], 3.0);
        assert!((m["x_request_duration_seconds_sum{op=\"put\"}"] - 60.00305).abs() < 1e-6);
        assert_eq!(m["x_blocks"], 7.0);
        assert!(text.contains("x_odd{path=\"a\\\"b\\\\c\"} 0.5\n"), "{text}");
        assert_eq!(ops.total(), 4);
        assert_eq!(ops.requests("get"), 1);
    }
}
