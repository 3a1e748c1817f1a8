//! What a worker reports about itself: readiness and liveness flags (read by `/readyz` and
//! `/healthz`) and Prometheus metrics (the `prometheus` crate, text format 0.0.4), the engine
//! caches' counters included.
//!
//! Flags and metrics are atomics, so the job loop, its heartbeat and progress tasks, and the
//! health server share one `WorkerStatus` without locks on the hot path. Durations are observed
//! in seconds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Counter, CounterVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

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
}

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

/// Counters and histograms of one worker, in their own registry (several workers may share a
/// process: tests, `kontext up`).
#[derive(Debug)]
pub struct WorkerMetrics {
    registry: Registry,
    ready: IntGauge,
    draining: IntGauge,
    jobs: IntCounterVec,
    stage_seconds: CounterVec,
    pub claims: IntCounter,
    pub queue_errors: IntCounter,
    pub heartbeats: IntCounter,
    pub heartbeat_failures: IntCounter,
    pub progress_events: IntCounter,
    /// Result objects deleted because the commit found the lease stale.
    pub orphans_deleted: IntCounter,
    /// 1 while the engine runs a job.
    pub engine_busy: IntGauge,
    engine_busy_seconds: Counter,
    pub step_seconds: Histogram,
    pub job_seconds: Histogram,
    /// Usage of the jobs this worker committed, per tenant (the queue keeps the per-day totals).
    tenant_engine_seconds: CounterVec,
    tenant_images: IntCounterVec,
    tenant_steps: IntCounterVec,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        let r = Registry::new();
        let counter = |name: &str, help: &str| registered(&r, IntCounter::new(name, help));
        let gauge = |name: &str, help: &str| registered(&r, IntGauge::new(name, help));
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            registered(
                &r,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())),
            )
        };
        let jobs = registered(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "kontext_worker_jobs_total",
                    "Claimed jobs by how they ended on this worker",
                ),
                &["outcome"],
            ),
        );
        let stage_seconds = registered(
            &r,
            CounterVec::new(
                Opts::new(
                    "kontext_worker_stage_seconds_total",
                    "Wall time per job stage",
                ),
                &["stage"],
            ),
        );
        // Every label value is exported from the start, at 0.
        for o in Outcome::ALL {
            jobs.with_label_values(&[o.as_str()]);
        }
        for s in Stage::ALL {
            stage_seconds.with_label_values(&[s.as_str()]);
        }
        let metrics = Self {
            ready: gauge(
                "kontext_worker_ready",
                "1 when the model is loaded, warmed up and the worker takes jobs",
            ),
            draining: gauge(
                "kontext_worker_draining",
                "1 after SIGTERM/SIGINT: no new jobs are claimed",
            ),
            engine_busy: gauge(
                "kontext_worker_engine_busy",
                "1 while the engine runs a job",
            ),
            engine_busy_seconds: registered(
                &r,
                Counter::new(
                    "kontext_worker_engine_busy_seconds_total",
                    "Engine time spent on jobs (GPU seconds on a GPU worker)",
                ),
            ),
            jobs,
            stage_seconds,
            claims: counter("kontext_worker_claims_total", "Jobs claimed"),
            queue_errors: counter(
                "kontext_worker_queue_errors_total",
                "Failed queue calls of the job loop (claim, commit, fail, release)",
            ),
            heartbeats: counter("kontext_worker_heartbeats_total", "Lease renewals sent"),
            heartbeat_failures: counter(
                "kontext_worker_heartbeat_failures_total",
                "Lease renewals that failed",
            ),
            progress_events: counter(
                "kontext_worker_progress_events_total",
                "Progress events published (at most 2 per second per job)",
            ),
            orphans_deleted: counter(
                "kontext_worker_orphans_deleted_total",
                "Result objects deleted because the lease was stale at commit",
            ),
            step_seconds: histogram(
                "kontext_denoise_step_seconds",
                "Duration of one denoising step",
                &STEP_BUCKETS_S,
            ),
            job_seconds: histogram(
                "kontext_worker_job_seconds",
                "Claim to commit (or failure) per job",
                &JOB_BUCKETS_S,
            ),
            tenant_engine_seconds: registered(
                &r,
                CounterVec::new(
                    Opts::new(
                        "kontext_worker_tenant_engine_seconds_total",
                        "Engine time of committed jobs per tenant (GPU seconds on a GPU worker)",
                    ),
                    &["tenant"],
                ),
            ),
            tenant_images: registered(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "kontext_worker_tenant_images_total",
                        "Committed jobs (images) per tenant",
                    ),
                    &["tenant"],
                ),
            ),
            tenant_steps: registered(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "kontext_worker_tenant_steps_total",
                        "Denoising steps of committed jobs per tenant",
                    ),
                    &["tenant"],
                ),
            ),
            registry: r.clone(),
        };
        registered(&r, Ok(kontext_engine::cache::CacheCollector::new()));
        metrics
    }
}

impl WorkerMetrics {
    pub fn job_finished(&self, outcome: Outcome, elapsed: Duration) {
        self.jobs.with_label_values(&[outcome.as_str()]).inc();
        self.job_seconds.observe(elapsed.as_secs_f64());
    }

    /// A committed job of `tenant`: its engine time and steps.
    pub fn tenant_usage(&self, tenant: &str, engine_ms: u64, steps: u32) {
        self.tenant_engine_seconds
            .with_label_values(&[tenant])
            .inc_by(engine_ms as f64 / 1e3);
        self.tenant_images.with_label_values(&[tenant]).inc();
        self.tenant_steps
            .with_label_values(&[tenant])
            .inc_by(u64::from(steps));
    }

    /// Jobs that ended with `outcome` so far.
    pub fn jobs(&self, outcome: Outcome) -> u64 {
        self.jobs.with_label_values(&[outcome.as_str()]).get()
    }

    /// Total wall time spent in `stage` so far.
    pub fn stage_total(&self, stage: Stage) -> Duration {
        Duration::from_secs_f64(
            self.stage_seconds
                .with_label_values(&[stage.as_str()])
                .get(),
        )
    }

    pub fn stage(&self, stage: Stage, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        self.stage_seconds
            .with_label_values(&[stage.as_str()])
            .inc_by(seconds);
        if stage == Stage::Engine {
            self.engine_busy_seconds.inc_by(seconds);
        }
    }
}

/// The job a worker runs and what its engine holds, as the registry reports them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Activity {
    pub current_job: Option<kontext_proto::JobId>,
    /// Steps done / total of the current job.
    pub progress: Option<f32>,
    /// The LoRA set of the last job this worker committed (`loras::lora_set_id`).
    pub lora_set: Option<String>,
}

/// Readiness, liveness and metrics of one worker, shared by the job loop and the health server.
#[derive(Debug)]
pub struct WorkerStatus {
    pub worker_id: String,
    /// What the job loop does now, for the worker registry (`registry`).
    activity: Mutex<Activity>,
    /// Set when an operator asked this worker to drain (seen by `registry::beat`).
    drain_request: tokio::sync::watch::Sender<bool>,
    /// Bumped when a job starts or ends or draining begins, so the registry record is rewritten
    /// at once rather than at the next periodic beat.
    changed: tokio::sync::watch::Sender<u64>,
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
            activity: Mutex::new(Activity::default()),
            drain_request: tokio::sync::watch::Sender::new(false),
            changed: tokio::sync::watch::Sender::new(0),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            fatal: Mutex::new(None),
            metrics: WorkerMetrics::default(),
        }
    }

    /// An operator asked this worker to drain (`POST /v1/admin/workers/{id}/drain`).
    pub fn request_drain(&self) {
        self.drain_request.send_replace(true);
    }

    /// Resolves once a drain was requested (at once if it already was).
    pub async fn drain_requested(&self) {
        let mut rx = self.drain_request.subscribe();
        // Only fails when the sender is gone, and `self` holds it.
        let _ = rx.wait_for(|requested| *requested).await;
    }

    /// What the job loop does now.
    pub fn activity(&self) -> Activity {
        self.activity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Changes the activity record (the job loop and the progress publisher call this).
    pub fn update_activity(&self, f: impl FnOnce(&mut Activity)) {
        f(&mut self.activity.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Marks a change the registry should publish at once (a job started or ended, draining).
    pub fn announce(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver of `announce`s.
    pub fn announcements(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
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
        self.announce();
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

    /// The Prometheus text exposition (format 0.0.4) of every metric, the engine caches' included.
    pub fn render(&self) -> String {
        let m = &self.metrics;
        m.ready.set(i64::from(self.is_ready()));
        m.draining.set(i64::from(self.is_draining()));
        let mut out = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&m.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding the worker's metrics failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let s = WorkerStatus::new("w1");
        let h = &s.metrics.step_seconds;
        h.observe(Duration::from_micros(500).as_secs_f64());
        h.observe(Duration::from_millis(20).as_secs_f64());
        h.observe(Duration::from_secs(60).as_secs_f64());
        let out = s.render();
        let x = "kontext_denoise_step_seconds";
        assert!(
            out.contains(&format!("{x}_bucket{{le=\"0.001\"}} 1\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{x}_bucket{{le=\"0.025\"}} 2\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{x}_bucket{{le=\"10\"}} 2\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{x}_bucket{{le=\"+Inf\"}} 3\n")),
            "{out}"
        );
        assert!(out.contains(&format!("{x}_count 3\n")), "{out}");
        assert!(out.contains(&format!("{x}_sum 60.0205\n")), "{out}");
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
