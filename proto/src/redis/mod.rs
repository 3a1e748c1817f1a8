//! `RedisQueue`: the distributed `JobQueue`. The job hash is the source of truth and the class
//! streams only dispatch; every state transition is one Lua script (`lua/*.lua`, each with a
//! KEYS/ARGV/Returns header), so transitions are atomic and fenced by the job's epoch. Time comes
//! from the caller's `now` (ARGV), never from the server clock. Key layout: `crate::keys`.
//!
//! Deviations from a plain XREADGROUP-then-start claim: `claim.lua` runs the non-blocking
//! XREADGROUP itself (priority order, COUNT 1), so an entry is never pending without a lease and
//! there are no extra entries to release; only when every class is empty does the client block,
//! with XREAD (not the group) after the last ids the script saw, then claim again.
//!
//! Durability: submit is written before it returns; with `wait_replicas > 0` it also WAITs for
//! replicas on the same connection. Redis must run with `appendonly yes` to survive restarts.

mod chains;
mod connection;
mod notify;
mod reads;
mod reply;
mod scripts;
mod sentinel;
mod submit;
mod workers;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::Value;
use redis::aio::ConnectionManager;
use redis::{Client, ScriptInvocation};

pub use connection::RedisConfig;
pub use reply::RedisFailure;

use self::connection::BlockingPool;
use self::reply::{array, at, backend, hash, int, record, tagged, text};
use self::scripts::SCRIPTS;
use crate::chain::{AppendOutcome, ChainFork, ChainId, ChainRecord, ChainSubmission, TurnAppend};
use crate::error::JobError;
use crate::error::QueueError;
use crate::job::{JobId, JobRecord, JobResult, JobStatus, Millis, Priority};
use crate::keys::{KeySpace, WORKER_GROUP};
use crate::policy::{self, Jitter, MAX_CRASHES, RetryDecision, progress_fraction};
use crate::queue::{
    CancelOutcome, Claim, CompleteOutcome, FailOutcome, JobEvent, JobPage, JobQueue, Lease,
    LeaseState, Notification, QueueStats, ReapReport, Submission, SubmitOutcome,
};
use crate::usage::UsageRow;
use crate::workers::{AuditEntry, Beat, DrainOutcome, WorkerInfo};

/// Entries of canceled jobs one claim call may skip before handing control back.
const SKIP_BUDGET: u32 = 64;
/// Upper bound of reaper script calls per `reap` (each handles `reap_batch` jobs).
const MAX_REAP_ROUNDS: usize = 100;
/// Consumers (worker names) idle this long with nothing pending are deleted by the reaper.
const CONSUMER_IDLE_MS: u64 = 3_600_000;

/// The Redis-backed job queue.
pub struct RedisQueue {
    /// Replaced after a Sentinel failover (see `sentinel`); read through `conn()`.
    conn: Arc<RwLock<ConnectionManager>>,
    blocking: Arc<BlockingPool>,
    keys: KeySpace,
    cfg: RedisConfig,
    jitter: Jitter,
    /// The Sentinel watcher, stopped with the queue.
    follower: Option<tokio::task::AbortHandle>,
}

impl Drop for RedisQueue {
    fn drop(&mut self) {
        if let Some(f) = &self.follower {
            f.abort();
        }
    }
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password, so only the namespace is shown.
        f.debug_struct("RedisQueue")
            .field("prefix", &self.keys.prefix())
            .finish_non_exhaustive()
    }
}

/// One pass of the claim script.
enum ClaimStep {
    Claimed(Box<Claim>),
    /// Nothing claimable; the last entry id of each class stream and of the worker's affinity
    /// stream at that moment.
    Empty([String; 4]),
    /// The skip budget ran out; call again.
    Busy,
}

impl RedisQueue {
    /// Connect, check the server (Redis >= 7, `maxmemory-policy noeviction`), create the consumer
    /// groups and load the scripts. `ns` is the namespace inside the hash tag (default "kx").
    pub async fn connect(url: &str, ns: &str, cfg: RedisConfig) -> Result<Self, QueueError> {
        let keys = KeySpace::new(ns)?;
        let (client, sentinel_client) = match sentinel::parse(url)? {
            Some(s) => {
                let mut sc = s.client()?;
                (sentinel::primary(&mut sc).await?, Some(sc))
            }
            None => (
                Client::open(url)
                    .map_err(|e| QueueError::Config(format!("invalid Redis URL: {e}")))?,
                None,
            ),
        };
        let mut conn = connection::shared(&client, &cfg).await?;
        connection::check_server(&mut conn).await?;
        for p in Priority::ORDER {
            let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(keys.class_stream(p))
                .arg(WORKER_GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match created {
                Err(e) if e.code() != Some("BUSYGROUP") => return Err(backend(e)),
                _ => {}
            }
        }
        SCRIPTS.load(&mut conn).await.map_err(backend)?;
        let primary = client.get_connection_info().addr().to_string();
        let blocking = Arc::new(BlockingPool::new(
            client,
            cfg.connect_timeout,
            cfg.max_blocking,
        ));
        let jitter = Jitter::new(cfg.queue.jitter_seed);
        let conn = Arc::new(RwLock::new(conn));
        let follower = sentinel_client.map(|sc| {
            tokio::spawn(sentinel::follow(
                sc,
                primary,
                Arc::downgrade(&conn),
                Arc::downgrade(&blocking),
                cfg.clone(),
            ))
            .abort_handle()
        });
        Ok(Self {
            conn,
            blocking,
            keys,
            cfg,
            jitter,
            follower,
        })
    }

    /// The key layout of this queue's namespace.
    pub fn keys(&self) -> &KeySpace {
        &self.keys
    }

    /// The shared multiplexed connection (to the current primary).
    fn conn(&self) -> ConnectionManager {
        self.conn
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    async fn run(&self, inv: &ScriptInvocation<'_>) -> Result<Value, QueueError> {
        inv.invoke_async(&mut self.conn()).await.map_err(backend)
    }

    /// Blocking commands in flight now, each on its own connection (at most
    /// `RedisConfig::max_blocking`).
    pub fn blocking_in_use(&self) -> usize {
        self.blocking.in_use()
    }

    /// Start of the retention period ending at `now`: what was created before it is no longer
    /// counted against a tenant's `RetainedLimits`.
    fn cutoff(&self, now: Millis) -> Millis {
        now.saturating_sub(policy::millis(self.cfg.queue.retention))
    }

    fn retention_s(&self) -> u64 {
        self.cfg.queue.retention.as_secs().max(1)
    }

    fn maxlen(&self) -> usize {
        self.cfg.queue.events_maxlen.max(1)
    }

    /// Run a blocking command on a dedicated connection, bounded by `wait` plus the command
    /// timeout; the connection is reused only when the command finished in time.
    async fn blocking_query(&self, cmd: &redis::Cmd, wait: Duration) -> Result<Value, QueueError> {
        let mut con = self.blocking.take().await?;
        let bound = wait + self.cfg.command_timeout;
        match tokio::time::timeout(bound, cmd.query_async::<Value>(&mut con.con)).await {
            Ok(Ok(v)) => {
                self.blocking.put(con);
                Ok(v)
            }
            Ok(Err(e)) => Err(backend(e)),
            Err(_) => Err(RedisFailure::NoReply {
                what: "blocking command",
                after: bound,
            }
            .into()),
        }
    }

    async fn claim_once(
        &self,
        worker: &str,
        ttl: Duration,
        now: Millis,
    ) -> Result<ClaimStep, QueueError> {
        let k = &self.keys;
        let mut inv = SCRIPTS.claim.prepare_invoke();
        for p in Priority::ORDER {
            inv.key(k.class_stream(p));
        }
        inv.key(k.leases())
            .key(k.affinity_stream(worker))
            .key(k.delay())
            .arg(k.prefix())
            .arg(WORKER_GROUP)
            .arg(worker)
            .arg(now)
            .arg(policy::lease_until(now, ttl))
            .arg(self.maxlen())
            .arg(SKIP_BUDGET);
        let reply = self.run(&inv).await?;
        let (tag, rest) = tagged(&reply)?;
        match tag.as_str() {
            "claimed" => {
                let job = record(&hash(at(rest, 0)?)?)?;
                let lease = Lease {
                    job_id: job.id,
                    worker: worker.to_owned(),
                    epoch: job.epoch,
                    attempt: job.attempts,
                };
                Ok(ClaimStep::Claimed(Box::new(Claim { lease, job })))
            }
            "empty" => Ok(ClaimStep::Empty([
                text(at(rest, 0)?)?,
                text(at(rest, 1)?)?,
                text(at(rest, 2)?)?,
                text(at(rest, 3)?)?,
            ])),
            "busy" => Ok(ClaimStep::Busy),
            other => Err(QueueError::Corrupt(format!("claim replied {other:?}"))),
        }
    }

    /// Block until any class stream or the worker's affinity stream gets an entry after `last`,
    /// or `wait` passes.
    async fn wait_for_dispatch(
        &self,
        worker: &str,
        last: &[String; 4],
        wait: Duration,
    ) -> Result<(), QueueError> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(policy::millis(wait).max(1))
            .arg("STREAMS");
        for p in Priority::ORDER {
            cmd.arg(self.keys.class_stream(p));
        }
        cmd.arg(self.keys.affinity_stream(worker));
        cmd.arg(last.as_slice());
        self.blocking_query(&cmd, wait).await.map(|_| ())
    }

    /// The error for a lease-check reply (`not_found`, `stale`) of a lease-bearing script.
    fn lease_error(tag: &str, lease: &Lease) -> QueueError {
        match tag {
            "not_found" => QueueError::NotFound(lease.job_id),
            "stale" => QueueError::Stale(lease.job_id),
            other => QueueError::Corrupt(format!("unexpected script reply {other:?}")),
        }
    }

    async fn renew(
        &self,
        lease: &Lease,
        ttl: Duration,
        now: Millis,
        step: Option<(u32, u32)>,
    ) -> Result<LeaseState, QueueError> {
        let k = &self.keys;
        let until = policy::lease_until(now, ttl);
        let mut inv = match step {
            None => SCRIPTS.heartbeat.prepare_invoke(),
            Some(_) => SCRIPTS.progress.prepare_invoke(),
        };
        inv.key(k.job(lease.job_id)).key(k.leases());
        if step.is_some() {
            inv.key(k.events(lease.job_id));
        }
        inv.arg(lease.job_id.to_string())
            .arg(lease.epoch)
            .arg(until);
        if let Some((step, total)) = step {
            inv.arg(step)
                .arg(total)
                .arg(progress_fraction(step, total))
                .arg(now)
                .arg(self.maxlen());
        }
        let reply = self.run(&inv).await?;
        let (tag, rest) = tagged(&reply)?;
        if tag != "ok" {
            return Err(Self::lease_error(&tag, lease));
        }
        Ok(LeaseState {
            cancel_requested: int(at(rest, 0)?)? == 1,
            lease_until: until,
        })
    }
}

impl JobQueue for RedisQueue {
    async fn submit(&self, sub: Submission, now: Millis) -> Result<SubmitOutcome, QueueError> {
        self.submit_impl(sub, now).await
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, QueueError> {
        self.read_job(id).await
    }

    async fn list(
        &self,
        tenant: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<JobPage, QueueError> {
        self.list_jobs(tenant, cursor, limit).await
    }

    async fn cancel(&self, id: JobId, now: Millis) -> Result<CancelOutcome, QueueError> {
        let mut inv = SCRIPTS.cancel.prepare_invoke();
        inv.key(self.keys.job(id))
            .key(self.keys.delay())
            .arg(self.keys.prefix())
            .arg(id.to_string())
            .arg(now)
            .arg(self.retention_s())
            .arg(self.maxlen());
        let reply = self.run(&inv).await?;
        match tagged(&reply)?.0.as_str() {
            "canceled" => Ok(CancelOutcome::Canceled),
            "requested" => Ok(CancelOutcome::CancellationRequested),
            "already" => Ok(CancelOutcome::AlreadyCompleted),
            "not_found" => Ok(CancelOutcome::NotFound),
            other => Err(QueueError::Corrupt(format!("cancel replied {other:?}"))),
        }
    }

    async fn claim(
        &self,
        worker: &str,
        lease_ttl: Duration,
        now: Millis,
        wait: Duration,
    ) -> Result<Option<Claim>, QueueError> {
        let started = Instant::now();
        loop {
            let waited = policy::millis(started.elapsed());
            match self.claim_once(worker, lease_ttl, now + waited).await? {
                ClaimStep::Claimed(c) => return Ok(Some(*c)),
                ClaimStep::Busy => {}
                ClaimStep::Empty(last) => {
                    let remaining = wait.saturating_sub(started.elapsed());
                    if remaining.is_zero() {
                        return Ok(None);
                    }
                    // Then claim again: on news, or for one last look when the wait ran out.
                    self.wait_for_dispatch(worker, &last, remaining).await?;
                }
            }
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(job_id = %lease.job_id, epoch = lease.epoch))]
    async fn heartbeat(
        &self,
        lease: &Lease,
        lease_ttl: Duration,
        now: Millis,
    ) -> Result<LeaseState, QueueError> {
        self.renew(lease, lease_ttl, now, None).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(job_id = %lease.job_id, epoch = lease.epoch))]
    async fn progress(
        &self,
        lease: &Lease,
        step: u32,
        total: u32,
        lease_ttl: Duration,
        now: Millis,
    ) -> Result<LeaseState, QueueError> {
        self.renew(lease, lease_ttl, now, Some((step, total))).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(job_id = %lease.job_id, epoch = lease.epoch))]
    async fn complete(
        &self,
        lease: &Lease,
        result: JobResult,
        now: Millis,
    ) -> Result<CompleteOutcome, QueueError> {
        let k = &self.keys;
        let engine_ms = result.engine_ms;
        let result =
            serde_json::to_string(&result).map_err(|e| QueueError::Corrupt(e.to_string()))?;
        let mut inv = SCRIPTS.complete.prepare_invoke();
        inv.key(k.job(lease.job_id))
            .key(k.leases())
            .key(k.events(lease.job_id))
            .arg(k.prefix())
            .arg(lease.job_id.to_string())
            .arg(lease.epoch)
            .arg(result)
            .arg(now)
            .arg(WORKER_GROUP)
            .arg(self.retention_s())
            .arg(self.maxlen())
            .arg(policy::millis(self.cfg.queue.affinity_delay))
            .arg(crate::usage::day_of(now))
            .arg(engine_ms);
        let reply = self.run(&inv).await?;
        match tagged(&reply)?.0.as_str() {
            "committed" => Ok(CompleteOutcome::Committed),
            "already" => Ok(CompleteOutcome::AlreadyDone),
            other => Err(Self::lease_error(other, lease)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(job_id = %lease.job_id, epoch = lease.epoch))]
    async fn fail(
        &self,
        lease: &Lease,
        error: JobError,
        now: Millis,
    ) -> Result<FailOutcome, QueueError> {
        let k = &self.keys;
        let decision = policy::retry_decision(
            &self.cfg.queue.retry,
            lease.attempt,
            error.kind,
            now,
            self.jitter.fraction(),
        );
        let (decision, retry_at) = match decision {
            RetryDecision::Retry { at } => ("retry", at),
            RetryDecision::GiveUp { status } => (status.as_str(), 0),
        };
        let error =
            serde_json::to_string(&error).map_err(|e| QueueError::Corrupt(e.to_string()))?;
        let mut inv = SCRIPTS.fail.prepare_invoke();
        inv.key(k.job(lease.job_id))
            .key(k.leases())
            .key(k.delay())
            .key(k.events(lease.job_id))
            .arg(k.prefix())
            .arg(lease.job_id.to_string())
            .arg(lease.epoch)
            .arg(decision)
            .arg(retry_at)
            .arg(error)
            .arg(now)
            .arg(WORKER_GROUP)
            .arg(self.retention_s())
            .arg(self.maxlen());
        let reply = self.run(&inv).await?;
        let (tag, rest) = tagged(&reply)?;
        match tag.as_str() {
            "retry" => Ok(FailOutcome::Retrying {
                at: u64::try_from(int(at(rest, 0)?)?).unwrap_or(0),
            }),
            "finished" => {
                let state = text(at(rest, 0)?)?;
                let status: JobStatus = state
                    .parse()
                    .map_err(|_| QueueError::Corrupt(format!("fail ended in {state:?}")))?;
                Ok(FailOutcome::Finished(status))
            }
            other => Err(Self::lease_error(other, lease)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(job_id = %lease.job_id, epoch = lease.epoch))]
    async fn release(&self, lease: &Lease, now: Millis) -> Result<(), QueueError> {
        let mut inv = SCRIPTS.release.prepare_invoke();
        inv.key(self.keys.job(lease.job_id))
            .arg(self.keys.prefix())
            .arg(lease.job_id.to_string())
            .arg(lease.epoch)
            .arg(now)
            .arg(WORKER_GROUP)
            .arg(self.retention_s())
            .arg(self.maxlen());
        let reply = self.run(&inv).await?;
        match tagged(&reply)?.0.as_str() {
            "released" | "canceled" => Ok(()),
            other => Err(Self::lease_error(other, lease)),
        }
    }

    async fn reap(&self, now: Millis) -> Result<ReapReport, QueueError> {
        let k = &self.keys;
        let batch = self.cfg.queue.reap_batch.max(1);
        let mut report = ReapReport::default();
        let ids = |v: &Value| -> Result<Vec<JobId>, QueueError> {
            array(v)?
                .iter()
                .map(|j| {
                    let raw = text(j)?;
                    raw.parse()
                        .map_err(|_| QueueError::Corrupt(format!("bad job id {raw:?}")))
                })
                .collect()
        };
        for _ in 0..MAX_REAP_ROUNDS {
            let mut inv = SCRIPTS.reap.prepare_invoke();
            inv.key(k.leases()).key(k.delay()).key(k.dead_letters());
            for p in Priority::ORDER {
                inv.key(k.class_stream(p));
            }
            inv.arg(k.prefix())
                .arg(now)
                .arg(WORKER_GROUP)
                .arg(batch)
                .arg(MAX_CRASHES)
                .arg(self.retention_s())
                .arg(self.maxlen())
                .arg(CONSUMER_IDLE_MS);
            let reply = self.run(&inv).await?;
            let parts = array(&reply)?;
            report.requeued.extend(ids(at(parts, 0)?)?);
            report.dead.extend(ids(at(parts, 1)?)?);
            report.canceled.extend(ids(at(parts, 2)?)?);
            report.promoted += usize::try_from(int(at(parts, 3)?)?).unwrap_or(0);
            let expired_seen = usize::try_from(int(at(parts, 4)?)?).unwrap_or(0);
            let due_seen = usize::try_from(int(at(parts, 5)?)?).unwrap_or(0);
            if expired_seen < batch && due_seen < batch {
                break;
            }
        }
        Ok(report)
    }

    async fn events(
        &self,
        id: JobId,
        after: Option<&str>,
        wait: Duration,
    ) -> Result<Vec<(String, JobEvent)>, QueueError> {
        self.read_events(id, after, wait).await
    }

    async fn stats(&self, now: Millis) -> Result<QueueStats, QueueError> {
        self.read_stats(now).await
    }

    async fn register_worker(
        &self,
        info: &WorkerInfo,
        ttl: Duration,
        now: Millis,
    ) -> Result<Beat, QueueError> {
        self.register_worker_impl(info, ttl, now).await
    }

    async fn request_drain(&self, worker: &str, now: Millis) -> Result<DrainOutcome, QueueError> {
        self.request_drain_impl(worker, now).await
    }

    async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, QueueError> {
        self.audit_log_impl(limit).await
    }

    async fn workers(&self, now: Millis) -> Result<Vec<WorkerInfo>, QueueError> {
        self.workers_impl(now).await
    }

    async fn usage(&self, from_day: u32, to_day: u32) -> Result<Vec<UsageRow>, QueueError> {
        self.usage_impl(from_day, to_day).await
    }

    async fn take_notifications(
        &self,
        now: Millis,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Notification>, QueueError> {
        self.take_notifications_impl(now, lease, limit).await
    }

    async fn ack_notifications(&self, ids: &[JobId]) -> Result<(), QueueError> {
        self.ack_notifications_impl(ids).await
    }

    async fn defer_notification(&self, id: JobId, at: Millis) -> Result<(), QueueError> {
        self.reschedule_notification(id, at, true).await
    }

    async fn retry_notification(&self, id: JobId, at: Millis) -> Result<(), QueueError> {
        self.reschedule_notification(id, at, false).await
    }

    async fn create_chain(&self, chain: ChainSubmission, now: Millis) -> Result<(), QueueError> {
        self.create_chain_impl(chain, now).await
    }

    async fn get_chain(&self, id: ChainId) -> Result<Option<ChainRecord>, QueueError> {
        self.get_chain_impl(id).await
    }

    async fn append_turn(
        &self,
        id: ChainId,
        turn: TurnAppend,
        now: Millis,
    ) -> Result<AppendOutcome, QueueError> {
        self.append_turn_impl(id, turn, now).await
    }

    async fn fork_chain(
        &self,
        id: ChainId,
        fork: ChainFork,
        now: Millis,
    ) -> Result<(), QueueError> {
        self.fork_chain_impl(id, fork, now).await
    }

    async fn cancel_chain(&self, id: ChainId, now: Millis) -> Result<CancelOutcome, QueueError> {
        self.cancel_chain_impl(id, now).await
    }
}
