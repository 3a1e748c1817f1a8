//! Prometheus metrics, hand-written text exposition (format 0.0.4): counters and histograms kept
//! in atomics by the request paths and background tasks, plus queue gauges read from the queue at
//! scrape time.
//!
//! Queue gauges describe the whole fleet, so every coordinator reports the same values (aggregate
//! them with `max`); counters and histograms count what *this* coordinator did (aggregate with
//! `sum`). Job latency comes from the notifier, which sees each finished job on exactly one
//! coordinator.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use kontext_proto::{JobStatus, Priority, QueueStats};

/// Upper bounds (seconds) of the job latency buckets.
const LATENCY_BUCKETS_S: [f64; 14] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// A cumulative histogram over fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, plus +Inf.
    counts: Vec<AtomicU64>,
    sum_ms: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ms: AtomicU64::new(0),
        }
    }

    pub fn observe_ms(&self, ms: u64) {
        let secs = ms as f64 / 1000.0;
        let i = self
            .bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = self.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// Every metric this coordinator keeps.
#[derive(Debug)]
pub struct Metrics {
    /// Per priority class, in `Priority::ORDER`.
    submitted: [AtomicU64; 3],
    /// Per terminal status (succeeded, failed, canceled, dead): created → finished.
    latency: [Histogram; 4],
    /// Expired leases re-queued by this coordinator's reaper (crash retries).
    pub requeued: AtomicU64,
    /// Delayed retries (after a transient error) made claimable by this coordinator's reaper.
    pub promoted: AtomicU64,
    /// Jobs this coordinator's reaper moved to the dead-letter list.
    pub dead_lettered: AtomicU64,
    pub webhooks_delivered: AtomicU64,
    pub webhook_attempts_failed: AtomicU64,
    pub webhooks_abandoned: AtomicU64,
    /// (method, route, status) → count.
    http: Mutex<BTreeMap<(String, String, u16), u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            submitted: Default::default(),
            latency: std::array::from_fn(|_| Histogram::new(&LATENCY_BUCKETS_S)),
            requeued: AtomicU64::new(0),
            promoted: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            webhooks_delivered: AtomicU64::new(0),
            webhook_attempts_failed: AtomicU64::new(0),
            webhooks_abandoned: AtomicU64::new(0),
            http: Mutex::new(BTreeMap::new()),
        }
    }
}

const TERMINAL: [JobStatus; 4] = [
    JobStatus::Succeeded,
    JobStatus::Failed,
    JobStatus::Canceled,
    JobStatus::Dead,
];

impl Metrics {
    pub fn submitted(&self, priority: Priority) {
        let i = Priority::ORDER
            .iter()
            .position(|&p| p == priority)
            .expect("ORDER lists every priority; this is a bug");
        self.submitted[i].fetch_add(1, Ordering::Relaxed);
    }

    /// A job reached `status` `latency_ms` after it was created.
    pub fn finished(&self, status: JobStatus, latency_ms: u64) {
        if let Some(i) = TERMINAL.iter().position(|&s| s == status) {
            self.latency[i].observe_ms(latency_ms);
        }
    }

    pub fn http_request(&self, method: &str, route: &str, status: u16) {
        let mut map = self
            .http
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *map.entry((method.to_owned(), route.to_owned(), status))
            .or_insert(0) += 1;
    }

    /// The exposition text; `stats` is `None` when the queue could not be read (the
    /// `kontext_queue_up` gauge then says 0).
    pub fn render(&self, stats: Option<&QueueStats>) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

        gauge_header(
            &mut out,
            "kontext_queue_up",
            "1 when the queue answered this scrape",
        );
        let _ = writeln!(out, "kontext_queue_up {}", u8::from(stats.is_some()));
        if let Some(s) = stats {
            gauge_header(
                &mut out,
                "kontext_queue_depth",
                "Jobs ready to be claimed (not yet delivered to a worker), per priority class: \
                 the backlog/lag autoscalers act on",
            );
            for p in Priority::ORDER {
                let n = s.ready.iter().find(|(c, _)| *c == p).map_or(0, |(_, n)| *n);
                let _ = writeln!(out, "kontext_queue_depth{{class=\"{}\"}} {n}", p.class());
            }
            gauge_header(
                &mut out,
                "kontext_queue_delayed",
                "Jobs waiting for a retry time",
            );
            let _ = writeln!(out, "kontext_queue_delayed {}", s.delayed);
            gauge_header(
                &mut out,
                "kontext_queue_running",
                "Jobs held by a worker's lease",
            );
            let _ = writeln!(out, "kontext_queue_running {}", s.running);
            gauge_header(
                &mut out,
                "kontext_queue_oldest_ready_age_seconds",
                "Age of the oldest job ready to be claimed (0 when none)",
            );
            let age = s.oldest_ready_age_ms as f64 / 1000.0;
            let _ = writeln!(out, "kontext_queue_oldest_ready_age_seconds {age}");
            gauge_header(
                &mut out,
                "kontext_dead_letters",
                "Entries in the dead-letter list",
            );
            let _ = writeln!(out, "kontext_dead_letters {}", s.dead_letters);
        }

        counter_header(
            &mut out,
            "kontext_jobs_submitted_total",
            "Jobs accepted, per class",
        );
        for (p, n) in Priority::ORDER.iter().zip(&self.submitted) {
            let _ = writeln!(
                out,
                "kontext_jobs_submitted_total{{class=\"{}\"}} {}",
                p.class(),
                load(n)
            );
        }

        let _ = writeln!(
            out,
            "# HELP kontext_job_latency_seconds Time from submit to a terminal state\n\
             # TYPE kontext_job_latency_seconds histogram"
        );
        for (status, h) in TERMINAL.iter().zip(&self.latency) {
            h.render(
                &mut out,
                "kontext_job_latency_seconds",
                &format!("status=\"{status}\""),
            );
        }

        counter_header(
            &mut out,
            "kontext_retries_total",
            "Jobs put back in line by this coordinator's reaper: reason=crash (lease expired) or \
             reason=backoff (a delayed retry after a transient error became claimable)",
        );
        let _ = writeln!(
            out,
            "kontext_retries_total{{reason=\"crash\"}} {}",
            load(&self.requeued)
        );
        let _ = writeln!(
            out,
            "kontext_retries_total{{reason=\"backoff\"}} {}",
            load(&self.promoted)
        );
        counter_header(
            &mut out,
            "kontext_dead_lettered_total",
            "Jobs this coordinator's reaper dead-lettered (poison: too many crashes)",
        );
        let _ = writeln!(
            out,
            "kontext_dead_lettered_total {}",
            load(&self.dead_lettered)
        );

        counter_header(
            &mut out,
            "kontext_webhook_deliveries_total",
            "Webhook delivery attempts by outcome",
        );
        for (outcome, n) in [
            ("delivered", &self.webhooks_delivered),
            ("failed_attempt", &self.webhook_attempts_failed),
            ("abandoned", &self.webhooks_abandoned),
        ] {
            let _ = writeln!(
                out,
                "kontext_webhook_deliveries_total{{outcome=\"{outcome}\"}} {}",
                load(n)
            );
        }

        counter_header(
            &mut out,
            "kontext_http_requests_total",
            "HTTP requests by route and status",
        );
        let map = self
            .http
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((method, route, status), n) in map.iter() {
            let _ = writeln!(
                out,
                "kontext_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out
    }
}

fn gauge_header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
}

fn counter_header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.finished(JobStatus::Succeeded, 80);
        m.finished(JobStatus::Succeeded, 3_000);
        m.finished(JobStatus::Succeeded, 4_000_000);
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
