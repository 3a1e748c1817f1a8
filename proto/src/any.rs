//! `AnyQueue` (features "memory" and "redis"): the job queue chosen at run time — `RedisQueue`
//! when a Redis URL is configured, otherwise the in-process `MemoryQueue` (embedded mode:
//! `kontext up`, tests). Both sit behind an `Arc`, so the coordinator and an in-process worker
//! can share one `MemoryQueue`.
//!
//! `JobQueue` uses `impl Future` returns (not object safe), hence an enum rather than `dyn`.

use std::sync::Arc;
use std::time::Duration;

use crate::admin_jobs::{AdminJobPage, CancelQueuedOutcome, JobFilter};
use crate::chain::{AppendOutcome, ChainFork, ChainId, ChainRecord, ChainSubmission, TurnAppend};
use crate::dead_letters::{
    BulkAction, BulkOutcome, DeadFilter, DeadLetter, DismissOutcome, RequeueOutcome,
};
use crate::error::{JobError, QueueError};
use crate::job::{JobId, JobRecord, JobResult, Millis};
use crate::job_history::JobHistory;
use crate::memory::MemoryQueue;
use crate::queue::{
    CancelOutcome, Claim, CompleteOutcome, FailOutcome, JobEvent, JobPage, JobQueue, Lease,
    LeaseState, Notification, QueueStats, ReapReport, Submission, SubmitOutcome,
};
use crate::redis::RedisQueue;
use crate::throughput::MinuteCounts;
use crate::usage::UsageRow;
use crate::workers::{AuditEntry, Beat, DrainOutcome, WorkerInfo};

/// One of the queue implementations. Cloning is cheap (an `Arc`).
#[derive(Debug, Clone)]
pub enum AnyQueue {
    Memory(Arc<MemoryQueue>),
    Redis(Arc<RedisQueue>),
}

impl AnyQueue {
    /// Short name for logs and `/readyz`.
    pub fn describe(&self) -> &'static str {
        match self {
            Self::Memory(_) => "in-process memory queue",
            Self::Redis(_) => "redis queue",
        }
    }
}

impl From<Arc<MemoryQueue>> for AnyQueue {
    fn from(q: Arc<MemoryQueue>) -> Self {
        Self::Memory(q)
    }
}

impl From<Arc<RedisQueue>> for AnyQueue {
    fn from(q: Arc<RedisQueue>) -> Self {
        Self::Redis(q)
    }
}

/// Forwards a call to whichever queue this is.
macro_rules! dispatch {
    ($self:ident, $q:ident => $call:expr) => {
        match $self {
            AnyQueue::Memory($q) => $call,
            AnyQueue::Redis($q) => $call,
        }
    };
}

impl JobQueue for AnyQueue {
    async fn submit(&self, sub: Submission, now: Millis) -> Result<SubmitOutcome, QueueError> {
        dispatch!(self, q => q.submit(sub, now).await)
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, QueueError> {
        dispatch!(self, q => q.get(id).await)
    }

    async fn list(
        &self,
        tenant: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<JobPage, QueueError> {
        dispatch!(self, q => q.list(tenant, cursor, limit).await)
    }

    async fn cancel(&self, id: JobId, now: Millis) -> Result<CancelOutcome, QueueError> {
        dispatch!(self, q => q.cancel(id, now).await)
    }

    async fn claim(
        &self,
        worker: &str,
        lease_ttl: Duration,
        now: Millis,
        wait: Duration,
    ) -> Result<Option<Claim>, QueueError> {
        dispatch!(self, q => q.claim(worker, lease_ttl, now, wait).await)
    }

    async fn heartbeat(
        &self,
        lease: &Lease,
        lease_ttl: Duration,
        now: Millis,
    ) -> Result<LeaseState, QueueError> {
        dispatch!(self, q => q.heartbeat(lease, lease_ttl, now).await)
    }

    async fn progress(
        &self,
        lease: &Lease,
        step: u32,
        total: u32,
        lease_ttl: Duration,
        now: Millis,
    ) -> Result<LeaseState, QueueError> {
        dispatch!(self, q => q.progress(lease, step, total, lease_ttl, now).await)
    }

    async fn complete(
        &self,
        lease: &Lease,
        result: JobResult,
        now: Millis,
    ) -> Result<CompleteOutcome, QueueError> {
        dispatch!(self, q => q.complete(lease, result, now).await)
    }

    async fn fail(
        &self,
        lease: &Lease,
        error: JobError,
        now: Millis,
    ) -> Result<FailOutcome, QueueError> {
        dispatch!(self, q => q.fail(lease, error, now).await)
    }

    async fn release(&self, lease: &Lease, now: Millis) -> Result<(), QueueError> {
        dispatch!(self, q => q.release(lease, now).await)
    }

    async fn reap(&self, now: Millis) -> Result<ReapReport, QueueError> {
        dispatch!(self, q => q.reap(now).await)
    }

    async fn events(
        &self,
        id: JobId,
        after: Option<&str>,
        wait: Duration,
    ) -> Result<Vec<(String, JobEvent)>, QueueError> {
        dispatch!(self, q => q.events(id, after, wait).await)
    }

    async fn stats(&self, now: Millis) -> Result<QueueStats, QueueError> {
        dispatch!(self, q => q.stats(now).await)
    }

    async fn register_worker(
        &self,
        info: &WorkerInfo,
        ttl: Duration,
        now: Millis,
    ) -> Result<Beat, QueueError> {
        dispatch!(self, q => q.register_worker(info, ttl, now).await)
    }

    async fn request_drain(
        &self,
        worker: &str,
        actor: &str,
        now: Millis,
    ) -> Result<DrainOutcome, QueueError> {
        dispatch!(self, q => q.request_drain(worker, actor, now).await)
    }

    async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, QueueError> {
        dispatch!(self, q => q.audit_log(limit).await)
    }

    async fn admin_jobs(
        &self,
        filter: &JobFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<AdminJobPage, QueueError> {
        dispatch!(self, q => q.admin_jobs(filter, cursor, limit).await)
    }

    async fn job_history(&self, id: JobId) -> Result<Option<JobHistory>, QueueError> {
        dispatch!(self, q => q.job_history(id).await)
    }

    async fn throughput(&self, now: Millis) -> Result<Vec<MinuteCounts>, QueueError> {
        dispatch!(self, q => q.throughput(now).await)
    }

    async fn bulk_dead(
        &self,
        action: BulkAction,
        filter: &DeadFilter,
        cursor: Option<&str>,
        actor: &str,
        now: Millis,
    ) -> Result<BulkOutcome, QueueError> {
        dispatch!(self, q => q.bulk_dead(action, filter, cursor, actor, now).await)
    }

    async fn cancel_queued(
        &self,
        tenant: &str,
        cursor: Option<&str>,
        actor: &str,
        now: Millis,
    ) -> Result<CancelQueuedOutcome, QueueError> {
        dispatch!(self, q => q.cancel_queued(tenant, cursor, actor, now).await)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        dispatch!(self, q => q.dead_letters(limit).await)
    }

    async fn requeue_dead(
        &self,
        id: JobId,
        new_id: JobId,
        actor: &str,
        now: Millis,
    ) -> Result<RequeueOutcome, QueueError> {
        dispatch!(self, q => q.requeue_dead(id, new_id, actor, now).await)
    }

    async fn dismiss_dead(
        &self,
        id: JobId,
        actor: &str,
        now: Millis,
    ) -> Result<DismissOutcome, QueueError> {
        dispatch!(self, q => q.dismiss_dead(id, actor, now).await)
    }

    async fn workers(&self, now: Millis) -> Result<Vec<WorkerInfo>, QueueError> {
        dispatch!(self, q => q.workers(now).await)
    }

    async fn usage(&self, from_day: u32, to_day: u32) -> Result<Vec<UsageRow>, QueueError> {
        dispatch!(self, q => q.usage(from_day, to_day).await)
    }

    async fn take_notifications(
        &self,
        now: Millis,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Notification>, QueueError> {
        dispatch!(self, q => q.take_notifications(now, lease, limit).await)
    }

    async fn ack_notifications(&self, ids: &[JobId]) -> Result<(), QueueError> {
        dispatch!(self, q => q.ack_notifications(ids).await)
    }

    async fn defer_notification(&self, id: JobId, at: Millis) -> Result<(), QueueError> {
        dispatch!(self, q => q.defer_notification(id, at).await)
    }

    async fn retry_notification(&self, id: JobId, at: Millis) -> Result<(), QueueError> {
        dispatch!(self, q => q.retry_notification(id, at).await)
    }

    async fn create_chain(&self, chain: ChainSubmission, now: Millis) -> Result<(), QueueError> {
        dispatch!(self, q => q.create_chain(chain, now).await)
    }

    async fn get_chain(&self, id: ChainId) -> Result<Option<ChainRecord>, QueueError> {
        dispatch!(self, q => q.get_chain(id).await)
    }

    async fn append_turn(
        &self,
        id: ChainId,
        turn: TurnAppend,
        now: Millis,
    ) -> Result<AppendOutcome, QueueError> {
        dispatch!(self, q => q.append_turn(id, turn, now).await)
    }

    async fn fork_chain(
        &self,
        id: ChainId,
        fork: ChainFork,
        now: Millis,
    ) -> Result<(), QueueError> {
        dispatch!(self, q => q.fork_chain(id, fork, now).await)
    }

    async fn cancel_chain(&self, id: ChainId, now: Millis) -> Result<CancelOutcome, QueueError> {
        dispatch!(self, q => q.cancel_chain(id, now).await)
    }
}
