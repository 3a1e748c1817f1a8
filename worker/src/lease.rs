//! Keeping a claimed job's lease alive, and the one flag that stops the job early.
//!
//! The heartbeat is a tokio task renewing the lease every `lease_ttl / 3`. It never waits on the
//! engine thread, so a long denoising step (or a stuck CUDA call) cannot let the lease expire
//! behind the worker's back (serving-reference.md §2 item 1). It stops the job — by flipping the
//! engine's cancel flag, checked between denoising steps — when the queue reports the job
//! canceled, or when the lease is lost: refused as stale, or not renewed before it ran out.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use kontext_proto::{JobQueue, Lease, LeaseState, Millis, QueueError};

use crate::clock::now_ms;
use crate::metrics::WorkerStatus;

/// Why a running job stops before it is done. The first reason recorded wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StopReason {
    /// The user canceled the job: fail it with `Canceled`.
    CancelRequested = 1,
    /// The lease is no longer ours: drop the work, touch nothing in the queue.
    LeaseLost = 2,
    /// The worker is draining and the job does not fit the grace period: release it.
    Draining = 3,
}

impl StopReason {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::CancelRequested),
            2 => Some(Self::LeaseLost),
            3 => Some(Self::Draining),
            _ => None,
        }
    }
}

/// Shared between the job, its heartbeat and progress tasks, and the drain logic.
#[derive(Debug, Default)]
pub struct JobControl {
    /// Handed to the engine: checked between denoising steps.
    engine_cancel: Arc<AtomicBool>,
    reason: AtomicU8,
}

impl JobControl {
    /// Records `reason` (unless another came first) and cancels the engine.
    pub fn stop(&self, reason: StopReason) {
        let _ = self
            .reason
            .compare_exchange(0, reason as u8, Ordering::SeqCst, Ordering::SeqCst);
        self.engine_cancel.store(true, Ordering::SeqCst);
    }

    pub fn reason(&self) -> Option<StopReason> {
        StopReason::from_u8(self.reason.load(Ordering::SeqCst))
    }

    /// The flag `EngineHandle::generate` watches.
    pub fn engine_cancel(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.engine_cancel)
    }

    /// Applies a heartbeat or progress reply.
    pub fn observe(&self, reply: &Result<LeaseState, QueueError>) {
        match reply {
            Ok(state) if state.cancel_requested => self.stop(StopReason::CancelRequested),
            Err(QueueError::Stale(_)) => self.stop(StopReason::LeaseLost),
            _ => {}
        }
    }
}

/// Renews `lease` every `every` until aborted. `lease_until` is when the lease runs out as far as
/// this worker knows (claim time + TTL); a worker that cannot renew before then stops the job.
pub async fn heartbeat<Q: JobQueue>(
    queue: Arc<Q>,
    lease: Lease,
    lease_ttl: Duration,
    every: Duration,
    mut lease_until: Millis,
    control: Arc<JobControl>,
    status: Arc<WorkerStatus>,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let reply = queue.heartbeat(&lease, lease_ttl, now_ms()).await;
        status.metrics.heartbeats.fetch_add(1, Ordering::Relaxed);
        control.observe(&reply);
        match reply {
            Ok(state) => {
                lease_until = state.lease_until;
                if state.cancel_requested {
                    tracing::info!("cancel requested: stopping after the current step");
                }
            }
            Err(QueueError::Stale(_)) => {
                status
                    .metrics
                    .heartbeat_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!("lease is stale (re-queued after expiry): abandoning the job");
                return;
            }
            Err(e) => {
                status
                    .metrics
                    .heartbeat_failures
                    .fetch_add(1, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use kontext_proto::JobId;

    #[test]
    fn first_reason_wins_and_cancels_the_engine() {
        let c = JobControl::default();
        assert_eq!(c.reason(), None);
        c.stop(StopReason::Draining);
        c.stop(StopReason::LeaseLost);
        assert_eq!(c.reason(), Some(StopReason::Draining));
        assert!(c.engine_cancel().load(Ordering::SeqCst));
    }

    #[test]
    fn replies_map_to_reasons() {
        let c = JobControl::default();
        c.observe(&Ok(LeaseState {
            cancel_requested: false,
            lease_until: 5,
        }));
        assert_eq!(c.reason(), None);
        c.observe(&Err(QueueError::Backend("down".into())));
        assert_eq!(c.reason(), None, "a transient error is not a lost lease");
        c.observe(&Err(QueueError::Stale(JobId::new())));
        assert_eq!(c.reason(), Some(StopReason::LeaseLost));
        let c = JobControl::default();
        c.observe(&Ok(LeaseState {
            cancel_requested: true,
            lease_until: 5,
        }));
        assert_eq!(c.reason(), Some(StopReason::CancelRequested));
    }
}
