//! The job loop of a worker: wait for the engine to be warm → claim (blocking wait) → run the
//! attempt in a span carrying the job id → repeat, until the shutdown future resolves; then drain.
//!
//! `Worker` works with any `JobQueue` and `BlobStore`: `RedisQueue` + S3 in a `kontext-worker
//! serve` process, the coordinator's shared `MemoryQueue` + a local directory inside `kontext up`.
//!
//! Shutdown never interrupts a claim call half-way (a claim whose reply is dropped would leave a
//! leased job nobody runs until the lease expires): the loop waits for the claim to return —
//! at most `claim_wait` — and releases whatever it got. Readiness turns false at once.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kontext_engine::EngineError;
use kontext_engine::thread::{EngineHandle, Health};
use kontext_proto::clock::now_ms;
use kontext_proto::{Claim, JobQueue};
use kontext_storage::BlobStore;
use kontext_telemetry::{continue_trace, record_past_span, record_trace_id};
use opentelemetry::KeyValue;
use tracing::Instrument;

use crate::attempt::{Attempt, AttemptReport};
use crate::drain::{DrainDecision, StepClock, drain_decision};
use crate::job_context::{JobContext, StopReason};
use crate::metrics::{Outcome, WorkerStatus};
use crate::settings::WorkerSettings;

/// Longest pause after a failed claim (the queue is unreachable); doubles from 100 ms.
const MAX_CLAIM_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Warm-up failed, the engine panicked or its thread stopped: this process can run no more
    /// jobs.
    #[error("the engine is not usable: {0}")]
    Engine(#[source] Arc<EngineError>),
    /// The task running the job loop panicked or was aborted.
    #[error("the job loop task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// What earlier jobs measured, for the drain estimate of the next one.
#[derive(Debug, Default, Clone, Copy)]
struct History {
    step_time: Option<Duration>,
    tail: Duration,
}

/// A job consumer over any queue and blob store.
pub struct Worker<Q, S> {
    queue: Arc<Q>,
    store: Arc<S>,
    engine: EngineHandle,
    settings: Arc<WorkerSettings>,
    status: Arc<WorkerStatus>,
    history: History,
}

impl<Q: JobQueue, S: BlobStore + 'static> Worker<Q, S> {
    pub fn new(
        queue: Arc<Q>,
        store: Arc<S>,
        engine: EngineHandle,
        settings: WorkerSettings,
    ) -> Self {
        let status = Arc::new(WorkerStatus::new(settings.worker_id.clone()));
        Self {
            queue,
            store,
            engine,
            settings: Arc::new(settings),
            status,
            history: History::default(),
        }
    }

    /// Shares an existing status (a health server started before the model finished loading).
    pub fn with_status(mut self, status: Arc<WorkerStatus>) -> Self {
        self.status = status;
        self
    }

    /// Readiness and metrics, for a health server.
    pub fn status(&self) -> Arc<WorkerStatus> {
        Arc::clone(&self.status)
    }

    /// Takes jobs until `shutdown` resolves, then drains (see `drain`). Returns an error only when
    /// the engine becomes unusable; queue outages are waited out.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), WorkerError> {
        tokio::pin!(shutdown);
        let mut stopping = false;
        let mut health = self.engine.health();
        tokio::select! {
            changed = health.wait_for(|h| *h != Health::Starting) => {
                let ready = changed.map(|h| h.clone()).unwrap_or(Health::Stopped);
                self.check_engine(&ready)?;
            }
            () = &mut shutdown => {
                self.status.begin_drain();
                return Ok(());
            }
        }
        tracing::info!(worker = %self.settings.worker_id, engine = ?self.engine.info(), "worker ready");
        self.status.set_ready(true);
        let mut backoff = Duration::from_millis(100);
        while !stopping {
            let current = health.borrow().clone();
            self.check_engine(&current)?;
            let claimed = {
                let claim = self.queue.claim(
                    &self.settings.worker_id,
                    self.settings.lease_ttl,
                    now_ms(),
                    self.settings.claim_wait,
                );
                tokio::pin!(claim);
                loop {
                    tokio::select! {
                        claimed = &mut claim => break claimed,
                        () = &mut shutdown, if !stopping => {
                            stopping = true;
                            self.status.begin_drain();
                        }
                    }
                }
            };
            match claimed {
                Ok(Some(claim)) if stopping => self.release_unstarted(claim).await,
                Ok(Some(claim)) => {
                    backoff = Duration::from_millis(100);
                    self.run_job(claim, &mut shutdown, &mut stopping).await;
                }
                Ok(None) => backoff = Duration::from_millis(100),
                Err(e) => {
                    self.status.metrics.queue_errors.inc();
                    tracing::warn!(error = %e, retry_in = ?backoff, "claim failed");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = &mut shutdown, if !stopping => {
                            stopping = true;
                            self.status.begin_drain();
                        }
                    }
                    backoff = (backoff * 2).min(MAX_CLAIM_BACKOFF);
                }
            }
        }
        tracing::info!("worker drained");
        Ok(())
    }

    fn check_engine(&self, health: &Health) -> Result<(), WorkerError> {
        match health {
            Health::Ready | Health::Starting => Ok(()),
            Health::Unhealthy(error) => {
                self.status.set_fatal(error.to_string());
                Err(WorkerError::Engine(Arc::clone(error)))
            }
            Health::Stopped => {
                let error = EngineError::Stopped;
                self.status.set_fatal(error.to_string());
                Err(WorkerError::Engine(Arc::new(error)))
            }
        }
    }

    /// A job claimed while the shutdown arrived: give it back untouched.
    async fn release_unstarted(&self, claim: Claim) {
        let span = job_span(&claim);
        match self
            .queue
            .release(&claim.lease, now_ms())
            .instrument(span.clone())
            .await
        {
            Ok(()) => {
                span.in_scope(|| tracing::info!("draining: released a job claimed during shutdown"))
            }
            Err(e) => span.in_scope(
                || tracing::warn!(error = %e, "draining: release failed; the lease will expire"),
            ),
        }
    }

    async fn run_job(
        &mut self,
        claim: Claim,
        shutdown: &mut std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
        stopping: &mut bool,
    ) {
        let started = Instant::now();
        self.status.metrics.claims.inc();
        record_queue_wait(&claim);
        let span = job_span(&claim);
        let Claim { lease, job } = claim;
        let lora_set = kontext_proto::loras::lora_set_id(&job.spec.loras);
        let (tenant, steps) = (job.tenant.clone(), job.spec.steps);
        self.status.update_activity(|a| {
            a.current_job = Some(job.id);
            a.progress = Some(0.0);
        });
        self.status.announce();
        let context = Arc::new(JobContext::new(
            Arc::clone(&self.queue),
            lease,
            Arc::clone(&self.settings),
            StepClock::new(job.spec.steps, self.history.step_time),
            Arc::clone(&self.status),
        ));
        let attempt = Attempt {
            job: Arc::clone(&context),
            store: Arc::clone(&self.store),
            engine: self.engine.clone(),
        }
        .run(job)
        .instrument(span.clone());
        tokio::pin!(attempt);
        let report: AttemptReport = tokio::select! {
            report = &mut attempt => report,
            () = shutdown.as_mut(), if !*stopping => {
                *stopping = true;
                self.status.begin_drain();
                let decision = {
                    let c = context.step_clock();
                    drain_decision(c.steps_left(), c.step_time(), self.history.tail, self.settings.grace_period)
                };
                span.in_scope(|| tracing::info!(?decision, grace = ?self.settings.grace_period, "draining"));
                match decision {
                    DrainDecision::Release => {
                        context.control.stop(StopReason::Draining);
                        attempt.await
                    }
                    DrainDecision::Finish { .. } => tokio::select! {
                        report = &mut attempt => report,
                        () = tokio::time::sleep(self.settings.grace_period) => {
                            span.in_scope(|| tracing::warn!("grace period ran out: releasing the job"));
                            context.control.stop(StopReason::Draining);
                            attempt.await
                        }
                    },
                }
            }
        };
        if report.step_time.is_some() {
            self.history.step_time = report.step_time;
        }
        if let Some(tail) = report.tail {
            self.history.tail = tail;
        }
        let elapsed = started.elapsed();
        self.status.metrics.job_finished(report.outcome, elapsed);
        // The queue records the same (complete.lua / fail.lua `record_lora_set`).
        let held = match report.outcome {
            Outcome::Succeeded => lora_set,
            _ => None,
        };
        if let (Outcome::Succeeded, Some(engine_ms)) = (report.outcome, report.engine_ms) {
            self.status.metrics.tenant_usage(&tenant, engine_ms, steps);
        }
        self.status.update_activity(|a| {
            a.current_job = None;
            a.progress = None;
            a.lora_set = held;
        });
        self.status.announce();
        span.record("outcome", report.outcome.as_str());
        if matches!(report.outcome, Outcome::Failed | Outcome::Abandoned) {
            span.record("otel.status_code", "ERROR");
        }
        span.in_scope(|| {
            tracing::info!(
                outcome = report.outcome.as_str(),
                elapsed_ms = elapsed.as_millis() as u64,
                "job done"
            );
        });
    }
}

/// The attempt's span: a child of the coordinator's `enqueue` span when the job carries its
/// `traceparent` (docs/tracing.md), with the trace id in every log line inside it.
fn job_span(claim: &Claim) -> tracing::Span {
    let span = tracing::info_span!(
        "job",
        job_id = %claim.lease.job_id,
        attempt = claim.lease.attempt,
        epoch = claim.lease.epoch,
        worker = %claim.lease.worker,
        trace_id = tracing::field::Empty,
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    continue_trace(&span, claim.job.spec.traceparent.as_deref(), None);
    record_trace_id(&span);
    span
}

/// The first attempt's wait in the queue, from submission to this claim, as a span of the job's
/// trace (it ran in no process). Later attempts waited through earlier ones: not recorded.
fn record_queue_wait(claim: &Claim) {
    if claim.lease.attempt != 1 {
        return;
    }
    let at = |ms: u64| std::time::UNIX_EPOCH + Duration::from_millis(ms);
    record_past_span(
        "queued",
        claim.job.spec.traceparent.as_deref(),
        at(claim.job.created_at),
        std::time::SystemTime::now(),
        vec![
            KeyValue::new("job_id", claim.lease.job_id.to_string()),
            KeyValue::new("worker", claim.lease.worker.to_string()),
        ],
    );
}
