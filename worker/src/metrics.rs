//! What a worker reports about itself: readiness and liveness flags (read by `/readyz` and
//! `/healthz`) and Prometheus metrics in hand-written text exposition (format 0.0.4).
//!
//! Everything is kept in atomics so the job loop, its heartbeat and progress tasks, and the
//! health server share one `WorkerStatus` without locks on the hot path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Upper bounds (seconds) of the denoising step buckets: from a tiny CPU step to a 12B step.
const STEP_BUCKETS_S: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Upper bounds (seconds) of the job buckets (claim → commit).
const JOB_BUCKETS_S: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 1800.0,
];

/// How one claimed job ended on this worker (the `outcome` label of `kontext_worker_jobs_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Committed (or already committed by this lease).
    Succeeded,
    /// Failed with a retryable error: back in the queue after a backoff.
    Retrying,
    /// Failed for good (invalid input, fatal engine error, retries used up).
    Failed,
    /// Stopped because the job was canceled.
    Canceled,
    /// Given back to the queue during a drain (no attempt counted).
    Released,
    /// The lease went stale (expired and re-queued): this worker's work was discarded.
    LeaseLost,
    /// The queue could not be told how the job ended; its lease will expire and the reaper
    /// re-queues it.
    Abandoned,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Succeeded,
        Outcome::Retrying,
        Outcome::Failed,
        Outcome::Canceled,
        Outcome::Released,
        Outcome::LeaseLost,
        Outcome::Abandoned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Retrying => "retrying",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Released => "released",
            Self::LeaseLost => "lease_lost",
            Self::Abandoned => "abandoned",
        }
    }

    fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|o| *o == self)
            .expect("every outcome is in ALL; this is a bug")
    }
}

/// Stages of one job whose wall time is summed (`kontext_worker_stage_seconds_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Input image / latents from the blob store.
    Fetch,
    /// The engine call (text encode, denoise, decode).
    Engine,
    /// PNG/JPEG (and latent) encoding.
    Encode,
    /// Result upload.
    Upload,
    /// The queue commit.
    Commit,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Fetch,
        Stage::Engine,
        Stage::Encode,
        Stage::Upload,
        Stage::Commit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fetch => "fetch",
            Self::Engine => "engine",
            Self::Encode => "encode",
            Self::Upload => "upload",
            Self::Commit => "commit",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A cumulative histogram over fixed buckets, in microseconds internally.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, plus +Inf.
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(micros(d), Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Counters and histograms of one worker.
#[derive(Debug)]
pub struct WorkerMetrics {
    jobs: [AtomicU64; 7],
    stage_us: [AtomicU64; 5],
    pub claims: AtomicU64,
    pub queue_errors: AtomicU64,
    pub heartbeats: AtomicU64,
    pub heartbeat_failures: AtomicU64,
    pub progress_events: AtomicU64,
    /// Result objects deleted because the commit found the lease stale.
    pub orphans_deleted: AtomicU64,
    pub engine_busy: AtomicBool,
    engine_busy_us: AtomicU64,
    pub step_seconds: Histogram,
    pub job_seconds: Histogram,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self {
            jobs: Default::default(),
            stage_us: Default::default(),
            claims: AtomicU64::new(0),
            queue_errors: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
            heartbeat_failures: AtomicU64::new(0),
            progress_events: AtomicU64::new(0),
            orphans_deleted: AtomicU64::new(0),
            engine_busy: AtomicBool::new(false),
            engine_busy_us: AtomicU64::new(0),
            step_seconds: Histogram::new(&STEP_BUCKETS_S),
            job_seconds: Histogram::new(&JOB_BUCKETS_S),
        }
    }
}

impl WorkerMetrics {
    pub fn job_finished(&self, outcome: Outcome, elapsed: Duration) {
        self.jobs[outcome.index()].fetch_add(1, Ordering::Relaxed);
        self.job_seconds.observe(elapsed);
    }

    /// Jobs that ended with `outcome` so far.
    pub fn jobs(&self, outcome: Outcome) -> u64 {
        self.jobs[outcome.index()].load(Ordering::Relaxed)
    }

    /// Total wall time spent in `stage` so far.
    pub fn stage_total(&self, stage: Stage) -> Duration {
        Duration::from_micros(self.stage_us[stage.index()].load(Ordering::Relaxed))
    }

    pub fn stage(&self, stage: Stage, elapsed: Duration) {
        self.stage_us[stage.index()].fetch_add(micros(elapsed), Ordering::Relaxed);
        if stage == Stage::Engine {
            self.engine_busy_us
                .fetch_add(micros(elapsed), Ordering::Relaxed);
        }
    }
}

/// Readiness, liveness and metrics of one worker, shared by the job loop and the health server.
#[derive(Debug)]
pub struct WorkerStatus {
    pub worker_id: String,
    /// Engine loaded, warm-up ran, and the job loop is claiming (false while draining).
    ready: AtomicBool,
    draining: AtomicBool,
    /// Set when the engine died (panic, failed warm-up): liveness fails so the pod restarts.
    fatal: Mutex<Option<String>>,
    pub metrics: WorkerMetrics,
}

impl WorkerStatus {
    pub fn new(worker_id: impl Into<String>) -> Self {
        Self {
            worker_id: worker_id.into(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            fatal: Mutex::new(None),
            metrics: WorkerMetrics::default(),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Stop being ready for good: a draining worker never takes new work.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.ready.store(false, Ordering::SeqCst);
    }

    /// Why the worker is no longer alive, if it is not.
    pub fn fatal(&self) -> Option<String> {
        self.fatal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_fatal(&self, reason: impl Into<String>) {
        self.ready.store(false, Ordering::SeqCst);
        *self.fatal.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason.into());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let m = &self.metrics;
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {v}");
        };
        gauge(
            &mut out,
            "kontext_worker_ready",
            "1 when the model is loaded, warmed up and the worker takes jobs",
            u64::from(self.is_ready()),
        );
        gauge(
            &mut out,
            "kontext_worker_draining",
            "1 after SIGTERM/SIGINT: no new jobs are claimed",
            u64::from(self.is_draining()),
        );
        gauge(
            &mut out,
            "kontext_worker_engine_busy",
            "1 while the engine runs a job",
            u64::from(m.engine_busy.load(Ordering::Relaxed)),
        );
        let _ = writeln!(
            out,
            "# HELP kontext_worker_engine_busy_seconds_total Engine time spent on jobs (GPU seconds on a GPU worker)"
        );
        let _ = writeln!(
            out,
            "# TYPE kontext_worker_engine_busy_seconds_total counter"
        );
        let _ = writeln!(
            out,
            "kontext_worker_engine_busy_seconds_total {}",
            m.engine_busy_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP kontext_worker_jobs_total Claimed jobs by how they ended on this worker"
        );
        let _ = writeln!(out, "# TYPE kontext_worker_jobs_total counter");
        for o in Outcome::ALL {
            let _ = writeln!(
                out,
                "kontext_worker_jobs_total{{outcome=\"{}\"}} {}",
                o.as_str(),
                m.jobs(o)
            );
        }
        let _ = writeln!(
            out,
            "# HELP kontext_worker_stage_seconds_total Wall time per job stage"
        );
        let _ = writeln!(out, "# TYPE kontext_worker_stage_seconds_total counter");
        for s in Stage::ALL {
            let _ = writeln!(
                out,
                "kontext_worker_stage_seconds_total{{stage=\"{}\"}} {}",
                s.as_str(),
                m.stage_us[s.index()].load(Ordering::Relaxed) as f64 / 1e6
            );
        }
        kontext_engine::cache::render_prometheus(&mut out);
        counter(
            &mut out,
            "kontext_worker_claims_total",
            "Jobs claimed",
            m.claims.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "kontext_worker_queue_errors_total",
            "Failed queue calls of the job loop (claim, commit, fail, release)",
            m.queue_errors.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "kontext_worker_heartbeats_total",
            "Lease renewals sent",
            m.heartbeats.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "kontext_worker_heartbeat_failures_total",
            "Lease renewals that failed",
            m.heartbeat_failures.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "kontext_worker_progress_events_total",
            "Progress events published (at most 2 per second per job)",
            m.progress_events.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "kontext_worker_orphans_deleted_total",
            "Result objects deleted because the lease was stale at commit",
            m.orphans_deleted.load(Ordering::Relaxed),
        );
        m.step_seconds.render(
            &mut out,
            "kontext_denoise_step_seconds",
            "Duration of one denoising step",
        );
        m.job_seconds.render(
            &mut out,
            "kontext_worker_job_seconds",
            "Claim to commit (or failure) per job",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&STEP_BUCKETS_S);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.025\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
        assert!(out.contains("x_sum 60.0205\n"), "{out}");
    }

    #[test]
    fn status_renders_outcomes_and_flags() {
        let s = WorkerStatus::new("w1");
        s.set_ready(true);
        s.metrics
            .job_finished(Outcome::Succeeded, Duration::from_millis(30));
        s.metrics
            .job_finished(Outcome::LeaseLost, Duration::from_millis(30));
        s.metrics.stage(Stage::Engine, Duration::from_millis(1500));
        let text = s.render();
        assert!(text.contains("kontext_worker_ready 1\n"), "{text}");
        assert!(
            text.contains("kontext_worker_jobs_total{outcome=\"succeeded\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("kontext_worker_jobs_total{outcome=\"lease_lost\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("kontext_worker_engine_busy_seconds_total 1.5\n"),
            "{text}"
        );
        s.begin_drain();
        assert!(!s.is_ready());
        assert!(s.render().contains("kontext_worker_draining 1\n"));
        s.set_fatal("engine panicked");
        assert_eq!(s.fatal().as_deref(), Some("engine panicked"));
    }
}
