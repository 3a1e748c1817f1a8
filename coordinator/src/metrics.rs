//! Prometheus metrics (the `prometheus` crate, text format 0.0.4): counters and histograms kept by
//! the request paths and background tasks, plus queue gauges read from the queue at scrape time.
//!
//! Queue gauges describe the whole fleet, so every coordinator reports the same values (aggregate
//! them with `max`); counters and histograms count what *this* coordinator did (aggregate with
//! `sum`). Job latency comes from the notifier, which sees each finished job on exactly one
//! coordinator. Durations are observed in seconds.

use std::time::Duration;

use kontext_proto::{JobStatus, Priority, QueueStats};
use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{
    Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};

/// Upper bounds (seconds) of the job latency buckets.
const LATENCY_BUCKETS_S: [f64; 14] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

const TERMINAL: [JobStatus; 4] = [
    JobStatus::Succeeded,
    JobStatus::Failed,
    JobStatus::Canceled,
    JobStatus::Dead,
];

/// Registers `metric` in `registry` and returns it. Definitions are static (names, help, labels,
/// buckets), so an error here is a bug the unit tests catch.
fn registered<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("a static metric definition is valid; this is a bug");
    registry
        .register(Box::new(metric.clone()))
        .expect("each metric is registered once; this is a bug");
    metric
}

/// Every metric this coordinator keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Per priority class.
    submitted: IntCounterVec,
    /// Per terminal status (succeeded, failed, canceled, dead): created → finished.
    latency: HistogramVec,
    /// Expired leases re-queued by this coordinator's reaper (crash retries).
    pub requeued: IntCounter,
    /// Delayed retries (after a transient error) made claimable by this coordinator's reaper.
    pub promoted: IntCounter,
    /// Jobs this coordinator's reaper moved to the dead-letter list.
    pub dead_lettered: IntCounter,
    pub webhooks_delivered: IntCounter,
    pub webhook_attempts_failed: IntCounter,
    pub webhooks_abandoned: IntCounter,
    /// Deliveries put back because their tenant had all its delivery slots busy.
    pub webhooks_deferred: IntCounter,
    /// Requests with a missing or unknown API key.
    pub auth_failed: IntCounter,
    /// Requests refused because their client failed to authenticate too often.
    pub auth_throttled: IntCounter,
    /// By method, route and status.
    http: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        let r = Registry::new();
        let submitted = registered(
            &r,
            IntCounterVec::new(
                Opts::new("kontext_jobs_submitted_total", "Jobs accepted, per class"),
                &["class"],
            ),
        );
        let latency = registered(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "kontext_job_latency_seconds",
                    "Time from submit to a terminal state",
                )
                .buckets(LATENCY_BUCKETS_S.to_vec()),
                &["status"],
            ),
        );
        let retries = registered(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "kontext_retries_total",
                    "Jobs put back in line by this coordinator's reaper: reason=crash (lease \
                     expired) or reason=backoff (a delayed retry after a transient error became \
                     claimable)",
                ),
                &["reason"],
            ),
        );
        let webhooks = registered(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "kontext_webhook_deliveries_total",
                    "Webhook delivery attempts by outcome",
                ),
                &["outcome"],
            ),
        );
        let auth = registered(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "kontext_auth_rejected_total",
                    "Keyed requests refused: unknown or missing key, or the client failed too often",
                ),
                &["reason"],
            ),
        );
        let http = registered(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "kontext_http_requests_total",
                    "HTTP requests by route and status",
                ),
                &["method", "route", "status"],
            ),
        );
        // Every fixed label value is exported from the start, at 0.
        for p in Priority::ORDER {
            submitted.with_label_values(&[p.class()]);
        }
        for status in TERMINAL {
            latency.with_label_values(&[status.to_string()]);
        }
        Self {
            submitted,
            latency,
            requeued: retries.with_label_values(&["crash"]),
            promoted: retries.with_label_values(&["backoff"]),
            dead_lettered: registered(
                &r,
                IntCounter::new(
                    "kontext_dead_lettered_total",
                    "Jobs this coordinator's reaper dead-lettered (poison: too many crashes)",
                ),
            ),
            webhooks_delivered: webhooks.with_label_values(&["delivered"]),
            webhook_attempts_failed: webhooks.with_label_values(&["failed_attempt"]),
            webhooks_abandoned: webhooks.with_label_values(&["abandoned"]),
            webhooks_deferred: webhooks.with_label_values(&["deferred"]),
            auth_failed: auth.with_label_values(&["unknown_key"]),
            auth_throttled: auth.with_label_values(&["throttled"]),
            http,
            registry: r,
        }
    }
}

impl Metrics {
    pub fn submitted(&self, priority: Priority) {
        self.submitted.with_label_values(&[priority.class()]).inc();
    }

    /// A job reached `status` `latency` after it was created.
    pub fn finished(&self, status: JobStatus, latency: Duration) {
        if TERMINAL.contains(&status) {
            self.latency
                .with_label_values(&[status.to_string()])
                .observe(latency.as_secs_f64());
        }
    }

    pub fn http_request(&self, method: &str, route: &str, status: u16) {
        let status = status.to_string();
        self.http
            .with_label_values(&[method, route, status.as_str()])
            .inc();
    }

    /// The exposition text; `stats` is `None` when the queue could not be read (the
    /// `kontext_queue_up` gauge then says 0).
    pub fn render(&self, stats: Option<&QueueStats>) -> String {
        let mut families = self.registry.gather();
        families.extend(queue_gauges(stats));
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = String::with_capacity(4096);
        if let Err(e) = TextEncoder::new().encode_utf8(&families, &mut out) {
            tracing::error!(error = %e, "encoding the coordinator's metrics failed");
        }
        out
    }
}

/// The queue gauges of one scrape, from fresh metrics: a queue that did not answer leaves no
/// stale values behind.
fn queue_gauges(stats: Option<&QueueStats>) -> Vec<MetricFamily> {
    let r = Registry::new();
    let gauge = |name: &str, help: &str, value: f64| {
        registered(&r, Gauge::new(name, help)).set(value);
    };
    gauge(
        "kontext_queue_up",
        "1 when the queue answered this scrape",
        if stats.is_some() { 1.0 } else { 0.0 },
    );
    if let Some(s) = stats {
        let depth = registered(
            &r,
            GaugeVec::new(
                Opts::new(
                    "kontext_queue_depth",
                    "Jobs ready to be claimed (not yet delivered to a worker), per priority \
                     class: the backlog/lag autoscalers act on",
                ),
                &["class"],
            ),
        );
        for p in Priority::ORDER {
            let n = s.ready.iter().find(|(c, _)| *c == p).map_or(0, |(_, n)| *n);
            depth.with_label_values(&[p.class()]).set(n as f64);
        }
        gauge(
            "kontext_queue_delayed",
            "Jobs waiting for a retry time",
            s.delayed as f64,
        );
        gauge(
            "kontext_queue_running",
            "Jobs held by a worker's lease",
            s.running as f64,
        );
        gauge(
            "kontext_queue_oldest_ready_age_seconds",
            "Age of the oldest job ready to be claimed (0 when none)",
            Duration::from_millis(s.oldest_ready_age_ms).as_secs_f64(),
        );
        gauge(
            "kontext_dead_letters",
            "Entries in the dead-letter list",
            s.dead_letters as f64,
        );
    }
    r.gather()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.finished(JobStatus::Succeeded, Duration::from_millis(80));
        m.finished(JobStatus::Succeeded, Duration::from_millis(3_000));
        m.finished(JobStatus::Succeeded, Duration::from_millis(4_000_000));
        let text = m.render(None);
        assert!(
            text.contains("kontext_job_latency_seconds_bucket{status=\"succeeded\",le=\"0.1\"} 1")
        );
        assert!(
            text.contains("kontext_job_latency_seconds_bucket{status=\"succeeded\",le=\"5\"} 2")
        );
        assert!(
            text.contains("kontext_job_latency_seconds_bucket{status=\"succeeded\",le=\"+Inf\"} 3")
        );
        assert!(text.contains("kontext_job_latency_seconds_count{status=\"succeeded\"} 3"));
        assert!(text.contains("kontext_job_latency_seconds_sum{status=\"succeeded\"} 4003.08"));
        assert!(text.contains("kontext_queue_up 0"));
    }

    #[test]
    fn queue_gauges_cover_every_class() {
        let m = Metrics::default();
        let stats = QueueStats {
            ready: vec![(Priority::High, 2), (Priority::Standard, 5)],
            delayed: 1,
            running: 3,
            oldest_ready_age_ms: 1_500,
            dead_letters: 4,
        };
        let text = m.render(Some(&stats));
        for line in [
            "kontext_queue_depth{class=\"hi\"} 2",
            "kontext_queue_depth{class=\"std\"} 5",
            "kontext_queue_depth{class=\"bulk\"} 0",
            "kontext_queue_oldest_ready_age_seconds 1.5",
            "kontext_dead_letters 4",
            "kontext_queue_up 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
