//! Keeping a claimed job's lease alive.
//!
//! The heartbeat is a tokio task renewing the lease every `lease_ttl / 3`. It never waits on the
//! engine thread, so a long denoising step (or a stuck CUDA call) cannot let the lease expire
//! behind the worker's back — the "stalled job" double processing BullMQ documents for workers
//! whose lock renewal is starved (<https://docs.bullmq.io/guide/workers/stalled-jobs>;
//! docs/queue-protocol.md §Leases, heartbeat and progress). It stops the job — through the job's
//! `JobControl`, which cancels the engine between denoising steps — when the queue reports the job
//! canceled, or when the lease is lost: refused as stale, or not renewed before it ran out.

use std::sync::Arc;

use kontext_proto::clock::now_ms;
use kontext_proto::{JobQueue, Millis, QueueError};

use crate::job_context::{JobContext, StopReason};

/// Renews the job's lease every `heartbeat_every` until aborted. `lease_until` is when the lease
/// runs out as far as this worker knows (claim time + TTL); a worker that cannot renew before then
/// stops the job.
pub async fn heartbeat<Q: JobQueue>(job: Arc<JobContext<Q>>, mut lease_until: Millis) {
    let JobContext {
        queue,
        lease,
        settings,
        control,
        status,
        ..
    } = &*job;
    let every = settings.heartbeat_every;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let reply = queue.heartbeat(lease, settings.lease_ttl, now_ms()).await;
        status.metrics.heartbeats.inc();
        control.observe(&reply);
        match reply {
            Ok(state) => {
                lease_until = state.lease_until;
                if state.cancel_requested {
                    tracing::info!("cancel requested: stopping after the current step");
                }
            }
            Err(QueueError::Stale(_)) => {
                status.metrics.heartbeat_failures.inc();
                tracing::warn!("lease is stale (re-queued after expiry): abandoning the job");
                return;
            }
            Err(e) => {
                status.metrics.heartbeat_failures.inc();
                if now_ms() >= lease_until {
                    tracing::warn!(error = %e, "lease ran out without a renewal: abandoning the job");
                    control.stop(StopReason::LeaseLost);
                    return;
                }
                tracing::warn!(error = %e, "heartbeat failed; retrying before the lease runs out");
            }
        }
    }
}

/// A spawned task that is aborted when this handle is dropped, so no path out of a job leaves its
/// heartbeat or progress task running.
pub struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl AbortOnDrop {
    pub fn spawn(task: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        Self(Some(tokio::spawn(task)))
    }

    /// Waits for the task to end on its own.
    pub async fn join(mut self) {
        if let Some(handle) = self.0.take() {
            let _ = handle.await;
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.abort();
        }
    }
}
