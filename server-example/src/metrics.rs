//! Prometheus text exposition, written by hand: a handful of counters and histograms do not
//! justify a metrics framework.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use chrono::Utc;
use history_sink::SpoolStats;

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0];

#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// Counters and histograms for `/metrics`, shared by handlers, the pool and the jobs.
#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    inference: Mutex<Histogram>,
    by_ensemble: Mutex<BTreeMap<&'static str, Histogram>>,
    batch_size: Mutex<Histogram>,
    /// Requests refused with 503 because the queue or admission was full.
    pub rejected: AtomicU64,
    /// Jobs dropped before running because their client went away or timed out.
    pub cancelled: AtomicU64,
    /// Requests that ran past `--timeout`.
    pub timed_out: AtomicU64,
    /// History events a sink failed to record.
    pub history_failures: AtomicU64,
    /// Inference workers running a batch now.
    pub busy_workers: AtomicU64,
    /// Fine-tune steps this process trained (summed over replicas, each step once).
    pub finetune_steps: AtomicU64,
    /// Fine-tune jobs this process claimed from the queue, resumed ones included.
    pub finetune_claims: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::default(),
            latency: Mutex::default(),
            inference: Mutex::new(Histogram::new(LATENCY_BUCKETS)),
            by_ensemble: Mutex::default(),
            batch_size: Mutex::new(Histogram::new(BATCH_BUCKETS)),
            rejected: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            history_failures: AtomicU64::new(0),
            busy_workers: AtomicU64::new(0),
            finetune_steps: AtomicU64::new(0),
            finetune_claims: AtomicU64::new(0),
        }
    }
}

/// Label values come from our route table and methods, but escape anyway.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

impl Metrics {
    /// Counts one answer and its latency, by method, route and status.
    pub fn record_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        *self
            .requests
            .lock()
            .unwrap()
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default() += 1;
        self.latency
            .lock()
            .unwrap()
            .entry(route.to_owned())
            .or_insert_with(|| Histogram::new(LATENCY_BUCKETS))
            .observe(seconds);
    }

    /// Records the model time of one batch.
    pub fn record_inference(&self, seconds: f64) {
        self.inference.lock().unwrap().observe(seconds);
    }

    /// Records the model time one request waited for, by the self-ensemble that filled it:
    /// what the page's quality setting costs.
    pub fn record_ensemble(&self, ensemble: &'static str, seconds: f64) {
        self.by_ensemble
            .lock()
            .unwrap()
            .entry(ensemble)
            .or_insert_with(|| Histogram::new(LATENCY_BUCKETS))
            .observe(seconds);
    }

    /// Records how many jobs shared one forward pass.
    pub fn record_batch(&self, size: usize) {
        self.batch_size.lock().unwrap().observe(size as f64);
    }

    /// The Prometheus text exposition, with the queue's state as gauges.
    pub fn render(&self, queue_depth: usize, queue_capacity: usize, workers: usize) -> String {
        let mut out = String::new();
        out.push_str("# HELP http_requests_total HTTP requests by method, route and status.\n");
        out.push_str("# TYPE http_requests_total counter\n");
        for ((m, r, s), n) in self.requests.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "http_requests_total{{method=\"{}\",route=\"{}\",status=\"{s}\"}} {n}",
                esc(m),
                esc(r)
            );
        }
        out.push_str("# HELP http_request_duration_seconds Request latency by route.\n");
        out.push_str("# TYPE http_request_duration_seconds histogram\n");
        for (r, h) in self.latency.lock().unwrap().iter() {
            h.write(
                &mut out,
                "http_request_duration_seconds",
                &format!("route=\"{}\"", esc(r)),
            );
        }
        let gauges = [
            (
                "inference_queue_depth",
                "Jobs waiting for a worker.",
                queue_depth as u64,
            ),
            (
                "inference_queue_capacity",
                "Jobs that may wait before 503.",
                queue_capacity as u64,
            ),
            ("inference_workers", "Inference workers.", workers as u64),
            (
                "inference_workers_busy",
                "Workers running a batch now.",
                self.busy_workers.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let counters = [
            (
                "inference_rejected_total",
                "Requests refused with 503 because the queue (or admission) was full.",
                &self.rejected,
            ),
            (
                "inference_cancelled_total",
                "Jobs dropped before running because the client went away or timed out.",
                &self.cancelled,
            ),
            (
                "inference_timeouts_total",
                "Requests answered 504 after the request timeout.",
                &self.timed_out,
            ),
            (
                "history_record_failures_total",
                "History events that could not be recorded (the request still succeeded).",
                &self.history_failures,
            ),
            (
                "finetune_steps_total",
                "Fine-tune steps this process trained.",
                &self.finetune_steps,
            ),
            (
                "finetune_claims_total",
                "Fine-tune jobs this process claimed from the shared queue (resumes included).",
                &self.finetune_claims,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP inference_duration_seconds Model time per batch.\n");
        out.push_str("# TYPE inference_duration_seconds histogram\n");
        self.inference
            .lock()
            .unwrap()
            .write(&mut out, "inference_duration_seconds", "");
        out.push_str(
            "# HELP inference_ensemble_duration_seconds Model time per request, by self-ensemble.\n",
        );
        out.push_str("# TYPE inference_ensemble_duration_seconds histogram\n");
        for (ensemble, h) in self.by_ensemble.lock().unwrap().iter() {
            h.write(
                &mut out,
                "inference_ensemble_duration_seconds",
                &format!("ensemble=\"{ensemble}\""),
            );
        }
        out.push_str("# HELP inference_batch_size Jobs per forward pass.\n");
        out.push_str("# TYPE inference_batch_size histogram\n");
        self.batch_size
            .lock()
            .unwrap()
            .write(&mut out, "inference_batch_size", "");
        out
    }
}

/// Reads one series' value from a spool's stats.
type SpoolValue = fn(&SpoolStats) -> f64;

/// Appends the history spools' gauges and counters, labelled by sink.
pub fn render_spools(out: &mut String, stats: &[SpoolStats]) {
    if stats.is_empty() {
        return;
    }
    let series: [(&str, &str, &str, SpoolValue); 8] = [
        ("history_spool_events", "gauge", "History events in the local spool, not yet delivered.", |s| s.pending_events as f64),
        ("history_spool_bytes", "gauge", "Bytes of undelivered history in the local spool.", |s| s.pending_bytes as f64),
        ("history_spool_max_bytes", "gauge", "The spool's bound (--history-spool-max-mb).", |s| s.max_bytes as f64),
        ("history_spool_oldest_age_seconds", "gauge", "Age of the oldest undelivered history event; 0 when none waits.", |s| {
            s.oldest_age_seconds(Utc::now()).unwrap_or(0.0)
        }),
        ("history_delivery_up", "gauge", "1 when the latest delivery from the spool succeeded, 0 while the destination is failing.", |s| f64::from(u8::from(s.last_error.is_none()))),
        ("history_delivered_total", "counter", "History events delivered from the spool.", |s| s.delivered as f64),
        ("history_delivery_failures_total", "counter", "Failed delivery attempts (each is retried).", |s| s.delivery_failures as f64),
        ("history_dropped_total", "counter", "History events dropped because the spool was full.", |s| s.dropped as f64),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in stats {
            let _ = writeln!(out, "{name}{{sink=\"{}\"}} {}", esc(s.sink), value(s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.record_request("POST", "/api/v1/inpaint", 200, 0.2);
        m.record_request("POST", "/api/v1/inpaint", 503, 0.001);
        m.record_batch(3);
        m.record_ensemble("single", 0.3);
        m.record_ensemble("flips", 1.5);
        m.record_ensemble("flips", 0.5);
        let text = m.render(2, 16, 1);
        assert!(text.contains(
            "http_requests_total{method=\"POST\",route=\"/api/v1/inpaint\",status=\"503\"} 1"
        ));
        assert!(text.contains(
            "http_request_duration_seconds_bucket{route=\"/api/v1/inpaint\",le=\"0.25\"} 2"
        ));
        assert!(text.contains("inference_batch_size_bucket{le=\"4\"} 1"));
        assert!(text.contains("inference_queue_depth 2"));
        assert!(text
            .contains("inference_ensemble_duration_seconds_bucket{ensemble=\"flips\",le=\"1\"} 1"));
        assert!(text.contains("inference_ensemble_duration_seconds_sum{ensemble=\"flips\"} 2"));
        assert!(text.contains("inference_ensemble_duration_seconds_count{ensemble=\"single\"} 1"));
    }
}
