//! The `JobQueue` seam: what the coordinator and the workers need from a job queue.
//!
//! Two implementations pass one conformance suite: `RedisQueue` (distributed; every transition is
//! one Lua script) and `MemoryQueue` (embedded mode). Rules every implementation keeps:
//!
//! - `submit` is durable before it returns. An idempotency key (per tenant) with the same body hash
//!   returns the original id; with a different body hash it is `QueueError::IdempotencyConflict`.
//! - `claim` bumps the job's epoch (the fencing token) and sets a lease. `heartbeat`, `progress`,
//!   `complete`, `fail` and `release` check the epoch and are refused with `QueueError::Stale` when
//!   it moved on (the lease expired and the job was re-queued or re-claimed).
//! - `complete` is idempotent: a second commit by the same lease reports `AlreadyDone`.
//! - `reap` re-queues jobs whose lease expired (counting a crash), moves a job that crashed
//!   `policy::MAX_CRASHES` times to `dead` and the dead-letter list, and promotes due retries.
//! - Every time-dependent call takes `now`; nothing reads a clock inside the queue.
//! - Chains (`crate::chain`): the terminal transition of a chain turn (commit, terminal fail,
//!   cancel, dead-lettering) also creates the next turn's job, in the same atomic step, so a turn
//!   is created exactly once. After a commit the next turn is offered first to the worker that
//!   ran the committed turn, and to every worker from `now + QueueConfig::affinity_delay`.

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::admin_jobs::{AdminJobPage, CancelQueuedOutcome, JobFilter};
use crate::chain::{AppendOutcome, ChainFork, ChainId, ChainRecord, ChainSubmission, TurnAppend};
use crate::dead_letters::{
    BulkAction, BulkOutcome, DeadFilter, DeadLetter, DismissOutcome, RequeueOutcome,
};
use crate::error::{JobError, QueueError};
use crate::job::{
    ChainRef, JobId, JobRecord, JobResult, JobStatus, Millis, Priority, TenantId, ValidJobSpec,
};
use crate::job_history::JobHistory;
use crate::throughput::MinuteCounts;
use crate::usage::UsageRow;
use crate::workers::{AuditEntry, Beat, DrainOutcome, WorkerInfo};

/// Stable name of a worker process (host, pid, boot nonce), used as the stream consumer name.
pub type WorkerId = String;

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    pub tenant: TenantId,
    pub spec: ValidJobSpec,
    /// Client-supplied `Idempotency-Key`, scoped to the tenant.
    pub idempotency_key: Option<String>,
    /// sha256 (hex) of the canonical request body; compared on an idempotent replay.
    pub body_hash: String,
    /// Refuse with `QueueError::TooManyInFlight` when the tenant already has this many
    /// non-terminal jobs (0 = no limit).
    pub max_in_flight: u32,
    /// Refuse with `QueueError::TooManyRetained` past these (see `RetainedLimits`).
    #[serde(default)]
    pub retained: RetainedLimits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<ChainRef>,
}

/// What a tenant may keep in the queue, counted over the last retention period (0 = no limit).
/// Finished jobs and chains stay until their retention ends, so `max_in_flight` alone does not
/// bound what a submit-then-cancel loop (or a fork loop) leaves in the queue's memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainedLimits {
    /// Jobs created in the last retention period, chain turns included.
    pub jobs: u32,
    /// Chains created or forked in the last retention period.
    pub chains: u32,
    /// Turns of those chains: planned at creation, appended, and shared by forks.
    pub turns: u32,
}

impl RetainedLimits {
    pub fn get(&self, kind: RetainedKind) -> u32 {
        match kind {
            RetainedKind::Jobs => self.jobs,
            RetainedKind::Chains => self.chains,
            RetainedKind::Turns => self.turns,
        }
    }

    /// Refuses `adding` more of `kind` when `held` are retained (mirrors prelude.lua
    /// `over_limit`).
    pub fn check(&self, kind: RetainedKind, held: u64, adding: u64) -> Result<(), QueueError> {
        let limit = self.get(kind);
        if limit > 0 && held.saturating_add(adding) > u64::from(limit) {
            return Err(QueueError::TooManyRetained {
                kind,
                retained: held,
                adding,
                limit,
            });
        }
        Ok(())
    }
}

/// Which `RetainedLimits` field a refusal is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainedKind {
    Jobs,
    Chains,
    Turns,
}

impl RetainedKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jobs => "jobs",
            Self::Chains => "chains",
            Self::Turns => "turns",
        }
    }
}

impl std::fmt::Display for RetainedKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitOutcome {
    pub id: JobId,
    /// False when an idempotent replay returned an existing job.
    pub created: bool,
}

/// Proof of ownership of a running job, returned by `claim` and presented on every later call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub job_id: JobId,
    pub worker: WorkerId,
    /// Fencing token; a call with an older epoch is refused.
    pub epoch: u64,
    /// 1-based attempt number of this claim (feeds the retry policy).
    pub attempt: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub lease: Lease,
    pub job: JobRecord,
}

/// Reply to `heartbeat` and `progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseState {
    /// The job was canceled while running: stop between steps and `fail` with `Canceled`.
    pub cancel_requested: bool,
    pub lease_until: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompleteOutcome {
    /// This call committed the result.
    Committed,
    /// The job was already committed by this lease (a retried commit); nothing changed.
    AlreadyDone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// Back to `queued`, claimable again at `at`.
    Retrying { at: Millis },
    /// Terminal: `failed`, `canceled` or `dead`.
    Finished(JobStatus),
}

/// What a cancel did, in fal's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = ApiCancelOutcome))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CancelOutcome {
    /// Was queued: now `canceled`, will never run.
    Canceled,
    /// Is running: the worker sees the flag at its next heartbeat or step.
    CancellationRequested,
    AlreadyCompleted,
    /// Never sent: the API answers 404 instead (and the schema leaves it out).
    #[serde(skip_serializing)]
    NotFound,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReapReport {
    /// Expired leases whose jobs went back to `queued`.
    pub requeued: Vec<JobId>,
    /// Jobs moved to `dead` for crashing too often.
    pub dead: Vec<JobId>,
    /// Expired leases of jobs whose cancel was requested: they end `canceled`, not re-queued.
    pub canceled: Vec<JobId>,
    /// Delayed retries made claimable.
    pub promoted: usize,
}

/// One entry of a job's event stream (the SSE source).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEvent {
    State { status: JobStatus, at: Millis },
    Progress { step: u32, total: u32, at: Millis },
}

/// A job that reached a terminal state, as the coordinators' notifier takes it (webhooks, job
/// latency metrics). Every terminal transition queues one; `take_notifications` hands it to one
/// taker at a time under a lease, and it stays until `ack_notifications` (at-least-once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub job_id: JobId,
    /// The job's tenant: deliveries are signed with its key and scheduled per tenant.
    pub tenant: TenantId,
    pub status: JobStatus,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub webhook_url: Option<String>,
    /// 1 on the first take; one more on every later take (a retry, or an expired lease).
    pub attempt: u32,
}

/// Whether `s` is an event cursor as the API documents it: `N` or `N-M`, each 1 to 19 digits (so
/// both fit a u64). Redis reads it as a stream id (`N` = `N-0`); the embedded queue's cursors are
/// plain sequence numbers, and it resumes after `N`. Any such cursor resumes after its position,
/// whether or not an event has exactly that id.
pub fn is_event_cursor(s: &str) -> bool {
    let part = |p: &str| (1..=19).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
    match s.split_once('-') {
        Some((n, m)) => part(n) && part(m),
        None => part(s),
    }
}

#[cfg(test)]
#[test]
fn event_cursors_are_one_or_two_u64s() {
    for ok in [
        "0",
        "17",
        "1700000000000-0",
        "9999999999999999999-9999999999999999999",
    ] {
        assert!(is_event_cursor(ok), "{ok}");
    }
    for bad in [
        "",
        "-1",
        "a-1",
        "1-",
        "1-2-3",
        "18446744073709551616",
        "null",
        " 1",
    ] {
        assert!(!is_event_cursor(bad), "{bad}");
    }
}

/// Largest page `list` returns; smaller limits (and 0, taken as 1) are honoured.
pub const MAX_PAGE: usize = 1_000;

/// A page of a tenant's jobs, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct JobPage {
    pub jobs: Vec<JobRecord>,
    /// Pass back to get the next page; `None` at the end.
    pub next_cursor: Option<String>,
}

/// Point-in-time numbers for metrics and autoscaling.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueStats {
    /// Claimable now, per class.
    pub ready: Vec<(Priority, u64)>,
    /// Waiting for a retry time.
    pub delayed: u64,
    pub running: u64,
    /// Age of the oldest claimable job, in ms (0 when none).
    pub oldest_ready_age_ms: u64,
    pub dead_letters: u64,
}

/// The queue seam. See the module docs for the rules every implementation keeps.
pub trait JobQueue: Send + Sync + 'static {
    fn submit(
        &self,
        sub: Submission,
        now: Millis,
    ) -> impl Future<Output = Result<SubmitOutcome, QueueError>> + Send;

    fn get(&self, id: JobId) -> impl Future<Output = Result<Option<JobRecord>, QueueError>> + Send;

    fn list(
        &self,
        tenant: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<JobPage, QueueError>> + Send;

    fn cancel(
        &self,
        id: JobId,
        now: Millis,
    ) -> impl Future<Output = Result<CancelOutcome, QueueError>> + Send;

    /// Take the next claimable job in priority order. Waits up to `wait` when none is ready
    /// (`Duration::ZERO` returns at once). Canceled jobs met on the way are skipped for good.
    fn claim(
        &self,
        worker: &str,
        lease_ttl: Duration,
        now: Millis,
        wait: Duration,
    ) -> impl Future<Output = Result<Option<Claim>, QueueError>> + Send;

    /// Renew the lease to `now + lease_ttl` if the epoch still matches.
    fn heartbeat(
        &self,
        lease: &Lease,
        lease_ttl: Duration,
        now: Millis,
    ) -> impl Future<Output = Result<LeaseState, QueueError>> + Send;

    /// Record progress (and publish an event); also renews the lease.
    fn progress(
        &self,
        lease: &Lease,
        step: u32,
        total: u32,
        lease_ttl: Duration,
        now: Millis,
    ) -> impl Future<Output = Result<LeaseState, QueueError>> + Send;

    fn complete(
        &self,
        lease: &Lease,
        result: JobResult,
        now: Millis,
    ) -> impl Future<Output = Result<CompleteOutcome, QueueError>> + Send;

    /// End this attempt with an error; the queue's retry policy and the error kind decide what follows.
    fn fail(
        &self,
        lease: &Lease,
        error: JobError,
        now: Millis,
    ) -> impl Future<Output = Result<FailOutcome, QueueError>> + Send;

    /// Give the job back without counting an attempt (graceful drain).
    fn release(
        &self,
        lease: &Lease,
        now: Millis,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Re-queue expired leases, dead-letter poison jobs, promote due retries.
    fn reap(&self, now: Millis) -> impl Future<Output = Result<ReapReport, QueueError>> + Send;

    /// Events of one job after `after` (an opaque cursor from an earlier call; `None` = from the
    /// start). Waits up to `wait` for at least one. Returns `(cursor, event)` pairs.
    fn events(
        &self,
        id: JobId,
        after: Option<&str>,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<(String, JobEvent)>, QueueError>> + Send;

    fn stats(&self, now: Millis) -> impl Future<Output = Result<QueueStats, QueueError>> + Send;

    /// Take up to `limit` notifications due at `now`. Each taken one is due again at
    /// `now + lease` unless acknowledged or rescheduled before, so a taker that dies loses
    /// nothing; several takers never get the same notification within one lease.
    fn take_notifications(
        &self,
        now: Millis,
        lease: Duration,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Notification>, QueueError>> + Send;

    /// Done with these notifications (delivered, or given up on): forget them.
    fn ack_notifications(
        &self,
        ids: &[JobId],
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Give a taken notification back, due at `at`, without counting that take as an attempt
    /// (the taker had no room for it: its tenant's deliveries were all busy).
    fn defer_notification(
        &self,
        id: JobId,
        at: Millis,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Make a taken notification due again at `at` (a failed delivery's backoff).
    fn retry_notification(
        &self,
        id: JobId,
        at: Millis,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Create a chain and its first turn's job (durable before it returns).
    fn create_chain(
        &self,
        chain: ChainSubmission,
        now: Millis,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// A chain with its turns (and the jobs created so far).
    fn get_chain(
        &self,
        id: ChainId,
    ) -> impl Future<Output = Result<Option<ChainRecord>, QueueError>> + Send;

    /// Add a turn at the end. A running chain creates it after the turns before it; a finished
    /// (succeeded or failed) chain runs again from its last good frame at once. A canceled chain
    /// refuses (`ChainConflict`).
    fn append_turn(
        &self,
        id: ChainId,
        turn: TurnAppend,
        now: Millis,
    ) -> impl Future<Output = Result<AppendOutcome, QueueError>> + Send;

    /// A new chain `fork.new_id` sharing turns `1..=fork.from_turn` of `id` (the same jobs, not
    /// re-run), with `from_turn` as its last good frame, and `fork.turns` appended — all or
    /// nothing. Without appended turns it starts `succeeded`, ready for `append_turn`; with them
    /// it runs the first at once from `from_turn`'s frame (offered first to the worker of that
    /// frame). `from_turn` must have succeeded; the new chain may not pass `MAX_CHAIN_TURNS`.
    fn fork_chain(
        &self,
        id: ChainId,
        fork: ChainFork,
        now: Millis,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Cancel a running chain: no further turn is created, and its live turn is canceled like
    /// `cancel` does (at once when queued, at the next step when running).
    fn cancel_chain(
        &self,
        id: ChainId,
        now: Millis,
    ) -> impl Future<Output = Result<CancelOutcome, QueueError>> + Send;

    /// Record `info` in the worker registry (replacing that worker's record) until `now + ttl`;
    /// the answer says whether an operator asked the worker to drain.
    fn register_worker(
        &self,
        info: &WorkerInfo,
        ttl: Duration,
        now: Millis,
    ) -> impl Future<Output = Result<Beat, QueueError>> + Send;

    /// Ask live worker `worker` to drain (it sees it at its next heartbeat); audited as done by
    /// `actor` (`crate::workers::AuditEntry::actor`).
    fn request_drain(
        &self,
        worker: &str,
        actor: &str,
        now: Millis,
    ) -> impl Future<Output = Result<DrainOutcome, QueueError>> + Send;

    /// The newest `limit` dead letters, newest first.
    fn dead_letters(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, QueueError>> + Send;

    /// Re-queue dead letter `id` as a new job `new_id` with its tenant, spec and priority (the
    /// dead job stays dead); audited as done by `actor`. Chain turns are refused.
    fn requeue_dead(
        &self,
        id: JobId,
        new_id: JobId,
        actor: &str,
        now: Millis,
    ) -> impl Future<Output = Result<RequeueOutcome, QueueError>> + Send;

    /// Remove dead letter `id` from the list; audited as done by `actor`.
    fn dismiss_dead(
        &self,
        id: JobId,
        actor: &str,
        now: Millis,
    ) -> impl Future<Output = Result<DismissOutcome, QueueError>> + Send;

    /// One page of jobs across tenants matching `filter`, newest first, continuing below
    /// `cursor`; each call examines a bounded part of the index (`crate::admin_jobs`).
    fn admin_jobs(
        &self,
        filter: &JobFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<AdminJobPage, QueueError>> + Send;

    /// A job (of any tenant) with its history of claims and attempt ends (`crate::job_history`).
    fn job_history(
        &self,
        id: JobId,
    ) -> impl Future<Output = Result<Option<JobHistory>, QueueError>> + Send;

    /// Jobs finished and latencies per minute over the `throughput::HISTORY_MINUTES` minutes
    /// ending at `now`'s, oldest first (one entry per minute, zeros included).
    fn throughput(
        &self,
        now: Millis,
    ) -> impl Future<Output = Result<Vec<MinuteCounts>, QueueError>> + Send;

    /// Re-queue or dismiss the dead letters matching `filter`, oldest first, continuing after
    /// `cursor` (at most `MAX_BULK` acted on and `BULK_SCAN` examined per call); each audited
    /// as the single action is. Chain turns are not re-queued (reported as skipped).
    fn bulk_dead(
        &self,
        action: BulkAction,
        filter: &DeadFilter,
        cursor: Option<&str>,
        actor: &str,
        now: Millis,
    ) -> impl Future<Output = Result<BulkOutcome, QueueError>> + Send;

    /// Cancel `tenant`'s queued jobs (newest first, continuing below `cursor`; at most
    /// `MAX_CANCEL` per call) as `cancel` does, each audited; running jobs are left alone.
    fn cancel_queued(
        &self,
        tenant: &str,
        cursor: Option<&str>,
        actor: &str,
        now: Millis,
    ) -> impl Future<Output = Result<CancelQueuedOutcome, QueueError>> + Send;

    /// The newest `limit` admin actions, newest first.
    fn audit_log(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AuditEntry>, QueueError>> + Send;

    /// The registry records that have not expired at `now`, by worker id.
    fn workers(
        &self,
        now: Millis,
    ) -> impl Future<Output = Result<Vec<WorkerInfo>, QueueError>> + Send;

    /// Usage of days `from_day..=to_day` (`usage::day_of`; at most `MAX_USAGE_DAYS`), one row
    /// per day and tenant with any succeeded job, by day then tenant.
    fn usage(
        &self,
        from_day: u32,
        to_day: u32,
    ) -> impl Future<Output = Result<Vec<UsageRow>, QueueError>> + Send;
}
