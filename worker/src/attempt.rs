//! One attempt at a claimed job: fetch inputs → run the engine (progress published, cancel
//! checked between steps) → encode → upload under the attempt's own key → commit. The lease is
//! renewed by a heartbeat task for as long as the attempt runs.
//!
//! How it ends decides the one queue call made at the end: `complete` on success (a stale lease
//! there means another worker owns the job now, so the uploaded objects are deleted as orphans);
//! `fail` with the error's kind (the queue's retry policy takes it from there) or with `Canceled`;
//! `release` when a drain stopped it; nothing at all when the lease was lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kontext_engine::EngineError;
use kontext_engine::thread::EngineHandle;
use kontext_proto::clock::now_ms;
use kontext_proto::{
    FailOutcome, JobError, JobErrorKind, JobQueue, JobRecord, JobResult, JobStatus, QueueError,
};
use kontext_storage::BlobStore;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::inputs;
use crate::job_context::{JobContext, StopReason};
use crate::lease::{self, AbortOnDrop};
use crate::metrics::{Outcome, Stage};
use crate::output::Outputs;
use crate::progress;

/// Commit attempts before the worker gives up and lets the lease expire.
const COMMIT_TRIES: u32 = 4;
/// First delay between commit attempts; doubled each time.
const COMMIT_RETRY: Duration = Duration::from_millis(100);

/// Retry semantics of an engine error (the error decides, not the caller): bad input is never
/// retried, a stopped engine or a full device is worth another worker's try, anything else in
/// the engine (weights, kernels, a caught panic) fails the job.
pub fn engine_error_kind(e: &EngineError) -> JobErrorKind {
    match e {
        EngineError::InvalidInput(_) | EngineError::Lora { .. } => JobErrorKind::InvalidInput,
        EngineError::Canceled => JobErrorKind::Canceled,
        EngineError::OutOfMemory(_) | EngineError::Stopped => JobErrorKind::Transient,
        EngineError::Weights(_)
        | EngineError::WeightsCheck(_)
        | EngineError::Tiny(_)
        | EngineError::Device { .. }
        | EngineError::Candle(_)
        | EngineError::Panicked(_)
        | EngineError::WarmUp(_) => JobErrorKind::Fatal,
    }
}

/// How an attempt went, for metrics and the drain estimates of later jobs.
#[derive(Debug, Clone)]
pub struct AttemptReport {
    pub outcome: Outcome,
    /// Recent step time of this job's denoising loop.
    pub step_time: Option<Duration>,
    /// Time after the last step: decode, encode, upload, commit.
    pub tail: Option<Duration>,
    /// Engine time of the result it committed or tried to.
    pub engine_ms: Option<u64>,
}

/// Why the attempt did not produce a result.
enum Stop {
    Reason(StopReason),
    Error(JobError),
}

/// A generation that is stored and ready to commit.
struct Stored {
    outputs: Outputs,
    result: JobResult,
    decode: Duration,
    /// When the engine returned.
    engine_done: Instant,
}

/// One attempt at a claimed job: its context (shared with the heartbeat, the progress forwarder
/// and the job loop), and what only the attempt itself uses.
pub struct Attempt<Q, S> {
    pub job: Arc<JobContext<Q>>,
    pub store: Arc<S>,
    pub engine: EngineHandle,
}

impl<Q: JobQueue, S: BlobStore + 'static> Attempt<Q, S> {
    /// Runs the claimed `record` (the job the context's lease holds) to one of its ends; call
    /// inside the job's tracing span.
    pub async fn run(self, record: JobRecord) -> AttemptReport {
        let claimed_at = now_ms();
        let lease_until = claimed_at + kontext_proto::policy::millis(self.job.settings.lease_ttl);
        let heartbeat = AbortOnDrop::spawn(
            lease::heartbeat(Arc::clone(&self.job), lease_until).in_current_span(),
        );
        let result = self.execute(&record).await;
        // The final queue call settles the lease; a renewal racing it would only add noise.
        drop(heartbeat);
        let step_time = self.job.step_clock().step_time();
        match result {
            Ok(stored) => {
                let outcome = self
                    .commit(&stored)
                    .instrument(tracing::info_span!("commit"))
                    .await;
                AttemptReport {
                    outcome,
                    step_time,
                    tail: Some(stored.decode + stored.engine_done.elapsed()),
                    engine_ms: Some(stored.result.engine_ms),
                }
            }
            Err(stop) => AttemptReport {
                outcome: self
                    .settle(stop)
                    .instrument(tracing::info_span!("settle"))
                    .await,
                step_time,
                tail: None,
                engine_ms: None,
            },
        }
    }

    async fn execute(&self, record: &JobRecord) -> Result<Stored, Stop> {
        let metrics = &self.job.status.metrics;
        let started = Instant::now();
        let req = inputs::engine_request(&*self.store, &record.spec)
            .instrument(tracing::info_span!("fetch"))
            .await
            .map_err(Stop::Error)?;
        let fetch_time = started.elapsed();
        metrics.stage(Stage::Fetch, fetch_time);
        if let Some(reason) = self.job.control.reason() {
            return Err(Stop::Reason(reason));
        }

        let (steps_tx, steps_rx) = mpsc::unbounded_channel();
        let forwarder = AbortOnDrop::spawn(
            progress::forward(Arc::clone(&self.job), steps_rx).in_current_span(),
        );
        let started = Instant::now();
        metrics.engine_busy.set(1);
        let generated = self
            .engine
            .generate(req, Some(steps_tx), self.job.control.engine_cancel())
            .instrument(tracing::info_span!("engine", steps = record.spec.steps))
            .await;
        metrics.engine_busy.set(0);
        let engine_time = started.elapsed();
        let engine_done = Instant::now();
        metrics.stage(Stage::Engine, engine_time);
        // The engine drops its end of the channel once it replied; the forwarder then ends
        // (after a publish in flight), so no progress event trails the commit.
        forwarder.join().await;

        let out = match generated {
            Ok(out) => out,
            Err(EngineError::Canceled) => {
                return Err(Stop::Reason(
                    self.job
                        .control
                        .reason()
                        .unwrap_or(StopReason::CancelRequested),
                ));
            }
            Err(e) => {
                if let EngineError::Panicked(msg) = &e {
                    self.job.status.set_fatal(format!("engine panicked: {msg}"));
                }
                let kind = engine_error_kind(&e);
                tracing::warn!(error = %e, kind = kind.as_str(), "engine failed");
                return Err(Stop::Error(JobError::new(kind, e.to_string())));
            }
        };
        for step in &out.timings.steps {
            metrics.step_seconds.observe(step.as_secs_f64());
        }

        let spec = &record.spec;
        let (width, height) = out.image.dimensions();
        let latent = out.packed_latent.map(|data| {
            let tokens = kontext_proto::resolution::token_count(width, height).max(1);
            let features = data.len() / tokens;
            (data, features)
        });
        let started = Instant::now();
        let outputs = Outputs::encode(
            &record.tenant,
            record.id,
            self.job.lease.epoch,
            spec.output_format,
            out.image,
            latent,
        )
        .instrument(tracing::info_span!("encode"))
        .await
        .map_err(Stop::Error)?;
        let encode_time = started.elapsed();
        metrics.stage(Stage::Encode, encode_time);
        let started = Instant::now();
        outputs
            .upload(&*self.store)
            .instrument(tracing::info_span!("upload"))
            .await
            .map_err(Stop::Error)?;
        let upload_time = started.elapsed();
        metrics.stage(Stage::Upload, upload_time);
        let millis = kontext_proto::policy::millis;
        let result = JobResult {
            key: outputs.image_key.clone(),
            width,
            height,
            format: spec.output_format,
            seed: out.seed,
            latent_key: outputs.latent_key(),
            engine_ms: millis(engine_time),
            full_evaluations: Some(out.full_evaluations),
            stages: Some(kontext_proto::StageTimings {
                fetch_ms: millis(fetch_time),
                engine_ms: millis(engine_time),
                encode_ms: millis(encode_time),
                upload_ms: millis(upload_time),
            }),
            // The engine reports in request order, which is the spec's order.
            loras: spec
                .loras
                .iter()
                .zip(&out.loras)
                .map(|(requested, applied)| kontext_proto::loras::AppliedLora {
                    key: requested.key.clone(),
                    scale: applied.scale,
                    format: applied.format.as_str().to_owned(),
                    layers: applied.layers,
                    skipped_text_encoder_modules: applied.skipped_text_encoder_modules,
                })
                .collect(),
        };
        Ok(Stored {
            outputs,
            result,
            decode: out.timings.decode,
            engine_done,
        })
    }

    /// Points the job at this attempt's objects. Retries a failing queue a few times: the commit
    /// is idempotent for one lease.
    async fn commit(&self, stored: &Stored) -> Outcome {
        let started = Instant::now();
        let mut delay = COMMIT_RETRY;
        for attempt in 1..=COMMIT_TRIES {
            match self
                .job
                .queue
                .complete(&self.job.lease, stored.result.clone(), now_ms())
                .await
            {
                Ok(outcome) => {
                    self.job
                        .status
                        .metrics
                        .stage(Stage::Commit, started.elapsed());
                    tracing::info!(key = %stored.result.key, ?outcome, "job committed");
                    return Outcome::Succeeded;
                }
                Err(QueueError::Stale(_)) => {
                    let deleted = stored.outputs.delete(&*self.store).await;
                    self.job
                        .status
                        .metrics
                        .orphans_deleted
                        .inc_by(deleted as u64);
                    tracing::warn!(
                        key = %stored.result.key,
                        "commit refused: the lease is stale and another attempt owns the job; \
                         deleted this attempt's result"
                    );
                    return Outcome::LeaseLost;
                }
                Err(e) => {
                    self.job.status.metrics.queue_errors.inc();
                    if attempt == COMMIT_TRIES {
                        tracing::error!(error = %e, "commit failed; the lease will expire and the job re-run");
                        return Outcome::Abandoned;
                    }
                    tracing::warn!(error = %e, attempt, "commit failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        Outcome::Abandoned
    }

    /// Tells the queue how an attempt without a result ended.
    async fn settle(&self, stop: Stop) -> Outcome {
        let error = match stop {
            Stop::Reason(StopReason::LeaseLost) => {
                tracing::warn!("lease lost: the job was re-queued; dropping this attempt");
                return Outcome::LeaseLost;
            }
            Stop::Reason(StopReason::Draining) => {
                return match self.job.queue.release(&self.job.lease, now_ms()).await {
                    Ok(()) => {
                        tracing::info!("draining: job released to the queue");
                        Outcome::Released
                    }
                    Err(QueueError::Stale(_)) => Outcome::LeaseLost,
                    Err(e) => {
                        self.job.status.metrics.queue_errors.inc();
                        tracing::error!(error = %e, "release failed; the lease will expire");
                        Outcome::Abandoned
                    }
                };
            }
            Stop::Reason(StopReason::CancelRequested) => {
                JobError::new(JobErrorKind::Canceled, "canceled by request")
            }
            Stop::Error(e) => e,
        };
        let kind = error.kind;
        match self.job.queue.fail(&self.job.lease, error, now_ms()).await {
            Ok(FailOutcome::Retrying { at }) => {
                tracing::info!(
                    kind = kind.as_str(),
                    retry_at = at,
                    "job failed; will retry"
                );
                Outcome::Retrying
            }
            Ok(FailOutcome::Finished(status)) => {
                tracing::info!(kind = kind.as_str(), %status, "job ended");
                match status {
                    JobStatus::Canceled => Outcome::Canceled,
                    _ => Outcome::Failed,
                }
            }
            Err(QueueError::Stale(_)) => Outcome::LeaseLost,
            Err(e) => {
                self.job.status.metrics.queue_errors.inc();
                tracing::error!(error = %e, "recording the failure failed; the lease will expire");
                Outcome::Abandoned
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_retry_semantics() {
        assert_eq!(
            engine_error_kind(&EngineError::InvalidInput("too big".into())),
            JobErrorKind::InvalidInput
        );
        assert_eq!(
            engine_error_kind(&EngineError::Canceled),
            JobErrorKind::Canceled
        );
        assert_eq!(
            engine_error_kind(&EngineError::Stopped),
            JobErrorKind::Transient
        );
        assert_eq!(
            engine_error_kind(&EngineError::OutOfMemory("cuda".into())),
            JobErrorKind::Transient
        );
        assert_eq!(
            engine_error_kind(&EngineError::Panicked("boom".into())),
            JobErrorKind::Fatal
        );
        let bad_device = kontext_engine::loader::parse_device("tpu").expect_err("not a device");
        assert_eq!(engine_error_kind(&bad_device), JobErrorKind::Fatal);
    }

    #[test]
    fn the_engine_accepts_what_the_api_accepts_by_default() {
        assert_eq!(
            kontext_engine::pipeline::DEFAULT_MAX_PIXELS,
            kontext_proto::resolution::DEFAULT_MAX_PIXELS
        );
    }
}
