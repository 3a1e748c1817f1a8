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

mod admin_actions;
mod admin_reads;
mod chains;
mod connection;
mod job_queue;
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
use self::reply::{array, at, backend, hash, int, job_id, record, tagged, text};
use self::scripts::SCRIPTS;
use crate::admin_jobs::{AdminJobPage, CancelQueuedOutcome, JobFilter};
use crate::chain::{AppendOutcome, ChainFork, ChainId, ChainRecord, ChainSubmission, TurnAppend};
use crate::dead_letters::{
    BulkAction, BulkOutcome, DeadFilter, DeadLetter, DismissOutcome, RequeueOutcome,
};
use crate::error::JobError;
use crate::error::QueueError;
use crate::job::{JobId, JobRecord, JobResult, JobStatus, Millis, Priority};
use crate::job_history::JobHistory;
use crate::keys::{KeySpace, WORKER_GROUP};
use crate::policy::{self, Jitter, MAX_CRASHES, RetryDecision, progress_fraction};
use crate::queue::{
    CancelOutcome, Claim, CompleteOutcome, FailOutcome, JobEvent, JobPage, JobQueue, Lease,
    LeaseState, Notification, QueueStats, ReapReport, Submission, SubmitOutcome,
};
use crate::throughput::MinuteCounts;
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
