//! `MemoryQueue`: the embedded-mode queue. One mutex around `State` (whose transitions mirror the
//! Redis scripts one for one) plus a `Notify` that wakes blocked `claim` and `events` calls after
//! every change. Same observable semantics as `RedisQueue` (the conformance suite runs on both);
//! "durable" here means durable for the life of the process, nothing more.

mod operators;
mod state;

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::admin_jobs::{AdminJobPage, CancelQueuedOutcome, JobFilter};
use crate::chain::{AppendOutcome, ChainFork, ChainId, ChainRecord, ChainSubmission, TurnAppend};
use crate::dead_letters::{
    BulkAction, BulkOutcome, DeadFilter, DeadLetter, DismissOutcome, RequeueOutcome,
};
use crate::error::JobError;
use crate::error::QueueError;
use crate::job::{JobId, JobRecord, JobResult, JobStatus, Millis};
use crate::job_history::JobHistory;
use crate::policy::{self, Jitter, QueueConfig};
use crate::queue::{
    CancelOutcome, Claim, CompleteOutcome, FailOutcome, JobEvent, JobPage, JobQueue, Lease,
    LeaseState, Notification, QueueStats, ReapReport, Submission, SubmitOutcome,
};
use crate::throughput::MinuteCounts;
use crate::usage::UsageRow;
use crate::workers::{AuditEntry, Beat, DrainOutcome, WorkerInfo};

use operators::Operators;
use state::State;

/// Most events one `events` call returns.
const EVENTS_PER_CALL: usize = 100;

/// The in-process job queue.
#[derive(Debug)]
pub struct MemoryQueue {
    state: Mutex<State>,
    /// Registry, usage, drain requests, audit (`operators`); apart from `state`, which no
    /// transition here reads.
    ops: Operators,
    /// Signalled after every change; waiters re-check their condition.
    changed: Notify,
    jitter: Jitter,
}

impl MemoryQueue {
    pub fn new(config: QueueConfig) -> Self {
        let jitter = Jitter::new(config.jitter_seed);
        Self {
            state: Mutex::new(State::new(config)),
            ops: Operators::default(),
            changed: Notify::new(),
            jitter,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Transitions check before they write, so a panic inside one leaves the state consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Run a mutating transition, then wake every waiter.
    fn mutate<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.lock());
        self.changed.notify_waiters();
        out
    }

    /// Poll `attempt` until it yields something or `wait` has passed, sleeping on `changed`.
    /// `attempt` gets the milliseconds waited so far.
    async fn wait_for<T>(
        &self,
        wait: Duration,
        mut attempt: impl FnMut(u64) -> Result<Option<T>, QueueError>,
    ) -> Result<Option<T>, QueueError> {
        let started = Instant::now();
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Register before checking, so a change between the check and the wait is not lost.
            notified.as_mut().enable();
            if let Some(found) = attempt(policy::millis(started.elapsed()))? {
                return Ok(Some(found));
            }
            let remaining = wait.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Ok(None);
            }
            // On timeout the loop runs once more and then returns `None`.
            let _ = tokio::time::timeout(remaining, notified).await;
        }
    }
}

impl Default for MemoryQueue {
    fn default() -> Self {
        Self::new(QueueConfig::default())
    }
}

impl JobQueue for MemoryQueue {
    async fn submit(&self, sub: Submission, now: Millis) -> Result<SubmitOutcome, QueueError> {
        self.mutate(|s| s.submit(sub, JobId::new(), now))
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, QueueError> {
        Ok(self.lock().get(id))
    }

    async fn list(
        &self,
        tenant: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<JobPage, QueueError> {
        self.lock().list(tenant, cursor, limit)
    }

    async fn cancel(&self, id: JobId, now: Millis) -> Result<CancelOutcome, QueueError> {
        Ok(self.mutate(|s| s.cancel(id, now)))
    }

    async fn claim(
        &self,
        worker: &str,
        lease_ttl: Duration,
        now: Millis,
        wait: Duration,
    ) -> Result<Option<Claim>, QueueError> {
        let claim = self
            .wait_for(wait, |waited| {
                Ok(self.lock().claim(worker, lease_ttl, now + waited))
            })
            .await?;
        if claim.is_some() {
            self.changed.notify_waiters();
        }
        Ok(claim)
    }

    async fn heartbeat(
        &self,
        lease: &Lease,
        lease_ttl: Duration,
        now: Millis,
    ) -> Result<LeaseState, QueueError> {
        self.lock().heartbeat(lease, lease_ttl, now)
    }

    async fn progress(
        &self,
        lease: &Lease,
        step: u32,
        total: u32,
        lease_ttl: Duration,
        now: Millis,
    ) -> Result<LeaseState, QueueError> {
        self.mutate(|s| s.progress(lease, step, total, lease_ttl, now))
    }

    async fn complete(
        &self,
        lease: &Lease,
        result: JobResult,
        now: Millis,
    ) -> Result<CompleteOutcome, QueueError> {
        let engine_ms = result.engine_ms;
        // The usage is counted under the state lock, in the commit that succeeds: a repeated
        // commit answers `AlreadyDone` and counts nothing.
        self.mutate(|s| {
            let out = s.complete(lease, result, now)?;
            if out == CompleteOutcome::Committed
                && let Some(job) = s.get(lease.job_id)
            {
                self.ops
                    .count_usage(&job.tenant, now, engine_ms, job.spec.steps);
                self.ops.count_finished(now, Some(job.created_at));
            }
            Ok(out)
        })
    }

    async fn fail(
        &self,
        lease: &Lease,
        error: JobError,
        now: Millis,
    ) -> Result<FailOutcome, QueueError> {
        let fraction = self.jitter.fraction();
        self.mutate(|s| {
            let decision =
                policy::retry_decision(&s.config().retry, lease.attempt, error.kind, now, fraction);
            let out = s.fail(lease, error, decision, now)?;
            // Terminal failures count in the minute's throughput (fail.lua).
            if let FailOutcome::Finished(JobStatus::Failed | JobStatus::Dead) = out {
                self.ops.count_finished(now, None);
            }
            Ok(out)
        })
    }

    async fn release(&self, lease: &Lease, now: Millis) -> Result<(), QueueError> {
        self.mutate(|s| s.release(lease, now))
    }

    async fn reap(&self, now: Millis) -> Result<ReapReport, QueueError> {
        let report = self.mutate(|s| s.reap(now));
        // Each dead-lettered job is a failure of its minute (reap.lua).
        for _ in &report.dead {
            self.ops.count_finished(now, None);
        }
        Ok(report)
    }

    async fn events(
        &self,
        id: JobId,
        after: Option<&str>,
        wait: Duration,
    ) -> Result<Vec<(String, JobEvent)>, QueueError> {
        let found = self
            .wait_for(wait, |_| {
                let events = self.lock().events(id, after, EVENTS_PER_CALL)?;
                Ok((!events.is_empty()).then_some(events))
            })
            .await?;
        Ok(found.unwrap_or_default())
    }

    async fn stats(&self, now: Millis) -> Result<QueueStats, QueueError> {
        Ok(self.lock().stats(now))
    }

    async fn register_worker(
        &self,
        info: &WorkerInfo,
        ttl: Duration,
        now: Millis,
    ) -> Result<Beat, QueueError> {
        Ok(self.ops.register(info, ttl, now))
    }

    async fn usage(&self, from_day: u32, to_day: u32) -> Result<Vec<UsageRow>, QueueError> {
        self.ops.usage(from_day, to_day)
    }

    async fn workers(&self, now: Millis) -> Result<Vec<WorkerInfo>, QueueError> {
        Ok(self.ops.workers(now))
    }

    async fn request_drain(
        &self,
        worker: &str,
        actor: &str,
        now: Millis,
    ) -> Result<DrainOutcome, QueueError> {
        Ok(self.ops.request_drain(worker, actor, now))
    }

    async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, QueueError> {
        Ok(self.ops.audit(limit))
    }

    async fn admin_jobs(
        &self,
        filter: &JobFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<AdminJobPage, QueueError> {
        self.lock().admin_jobs(filter, cursor, limit)
    }

    async fn job_history(&self, id: JobId) -> Result<Option<JobHistory>, QueueError> {
        Ok(self.lock().job_history(id))
    }

    async fn throughput(&self, now: Millis) -> Result<Vec<MinuteCounts>, QueueError> {
        Ok(self.ops.throughput(now))
    }

    async fn bulk_dead(
        &self,
        action: BulkAction,
        filter: &DeadFilter,
        cursor: Option<&str>,
        actor: &str,
        now: Millis,
    ) -> Result<BulkOutcome, QueueError> {
        let out = self.mutate(|s| s.bulk_dead(action, filter, cursor, now))?;
        for (dead, new) in &out.affected {
            match new {
                Some(new) => {
                    self.ops
                        .record("requeue_dead", &format!("{dead} -> {new}"), actor, now)
                }
                None => self
                    .ops
                    .record("dismiss_dead", &dead.to_string(), actor, now),
            }
        }
        Ok(out)
    }

    async fn cancel_queued(
        &self,
        tenant: &str,
        cursor: Option<&str>,
        actor: &str,
        now: Millis,
    ) -> Result<CancelQueuedOutcome, QueueError> {
        let out = self.mutate(|s| s.cancel_queued(tenant, cursor, now))?;
        for id in &out.canceled {
            self.ops
                .record("cancel_queued", &format!("{tenant}/{id}"), actor, now);
        }
        Ok(out)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        Ok(self.lock().dead_letter_list(limit))
    }

    async fn requeue_dead(
        &self,
        id: JobId,
        new_id: JobId,
        actor: &str,
        now: Millis,
    ) -> Result<RequeueOutcome, QueueError> {
        let out = self.mutate(|s| s.requeue_dead(id, new_id, now))?;
        if let RequeueOutcome::Requeued(new) = out {
            self.ops
                .record("requeue_dead", &format!("{id} -> {new}"), actor, now);
        }
        Ok(out)
    }

    async fn dismiss_dead(
        &self,
        id: JobId,
        actor: &str,
        now: Millis,
    ) -> Result<DismissOutcome, QueueError> {
        let out = self.mutate(|s| s.dismiss_dead(id));
        if out == DismissOutcome::Dismissed {
            self.ops.record("dismiss_dead", &id.to_string(), actor, now);
        }
        Ok(out)
    }

    async fn take_notifications(
        &self,
        now: Millis,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Notification>, QueueError> {
        Ok(self.lock().take_notifications(now, lease, limit))
    }

    async fn ack_notifications(&self, ids: &[JobId]) -> Result<(), QueueError> {
        self.lock().ack_notifications(ids);
        Ok(())
    }

    async fn defer_notification(&self, id: JobId, at: Millis) -> Result<(), QueueError> {
        self.mutate(|s| s.defer_notification(id, at));
        Ok(())
    }

    async fn retry_notification(&self, id: JobId, at: Millis) -> Result<(), QueueError> {
        self.lock().retry_notification(id, at);
        Ok(())
    }

    async fn create_chain(&self, chain: ChainSubmission, now: Millis) -> Result<(), QueueError> {
        self.mutate(|s| s.create_chain(chain, now))
    }

    async fn get_chain(&self, id: ChainId) -> Result<Option<ChainRecord>, QueueError> {
        Ok(self.lock().get_chain(id))
    }

    async fn append_turn(
        &self,
        id: ChainId,
        turn: TurnAppend,
        now: Millis,
    ) -> Result<AppendOutcome, QueueError> {
        self.mutate(|s| s.append_turn(id, turn, now))
    }

    async fn fork_chain(
        &self,
        id: ChainId,
        fork: ChainFork,
        now: Millis,
    ) -> Result<(), QueueError> {
        self.mutate(|s| s.fork_chain(id, fork, now))
    }

    async fn cancel_chain(&self, id: ChainId, now: Millis) -> Result<CancelOutcome, QueueError> {
        Ok(self.mutate(|s| s.cancel_chain(id, now)))
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;

#[cfg(all(test, feature = "conformance"))]
mod conformance {
    crate::queue_conformance_tests!(|cfg| async move { super::MemoryQueue::new(cfg) });
}
