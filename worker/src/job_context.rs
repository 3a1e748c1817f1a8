//! What the tasks of one claimed job share: the attempt, its lease heartbeat, its progress
//! forwarder and the job loop's drain logic all hold one `Arc<JobContext>`. `JobControl` is the
//! one flag that stops the job early; any of them may set it, the first reason wins.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kontext_proto::{Lease, LeaseState, QueueError};

use crate::drain::StepClock;
use crate::metrics::WorkerStatus;
use crate::settings::WorkerSettings;

/// One claimed job, as its tasks see it.
pub struct JobContext<Q> {
    pub queue: Arc<Q>,
    /// The fenced lease every queue call about this job presents.
    pub lease: Lease,
    pub settings: Arc<WorkerSettings>,
    /// Why the job stops early, if it does; cancels the engine between steps.
    pub control: JobControl,
    /// The denoising loop's progress, fed by the forwarder, read by the drain decision.
    clock: Mutex<StepClock>,
    pub status: Arc<WorkerStatus>,
}

impl<Q> JobContext<Q> {
    pub fn new(
        queue: Arc<Q>,
        lease: Lease,
        settings: Arc<WorkerSettings>,
        clock: StepClock,
        status: Arc<WorkerStatus>,
    ) -> Self {
        Self {
            queue,
            lease,
            settings,
            control: JobControl::default(),
            clock: Mutex::new(clock),
            status,
        }
    }

    /// The step clock. A panic while it was held cannot leave it half-updated (every update is
    /// one `record` call), so a poisoned lock is still read.
    pub fn step_clock(&self) -> MutexGuard<'_, StepClock> {
        self.clock.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

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
