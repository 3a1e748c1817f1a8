//! The embedded queue's state and its transitions as plain functions on `State`: no locks, no
//! clocks, no waiting. Each transition mirrors one Redis Lua script (same checks, same order), so
//! both implementations show the same behaviour; `MemoryQueue` wraps this in a mutex.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use crate::chain::ChainId;
use crate::error::JobError;
use crate::error::QueueError;
use crate::job::{JobId, JobRecord, JobResult, JobStatus, Millis, Priority, TenantId};
use crate::job_history::HistoryEntry;
use crate::keys::list_member;
use crate::policy::{self, QueueConfig, RetryDecision, progress_fraction};
use crate::queue::{
    CancelOutcome, Claim, CompleteOutcome, FailOutcome, JobEvent, Lease, LeaseState, ReapReport,
    RetainedKind, Submission, SubmitOutcome,
};

/// One dispatch entry of a class stream.
#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    job: JobId,
    /// When the entry was added (for the age of the oldest ready job).
    at: Millis,
}

#[derive(Debug)]
struct MemJob {
    record: JobRecord,
    /// The dispatch entry that may start this job; older entries are skipped.
    entry: Option<u64>,
    lease_until: Option<Millis>,
    delayed_until: Option<Millis>,
    /// Finished jobs are dropped from here on (retention).
    expires_at: Option<Millis>,
    events: VecDeque<(u64, JobEvent)>,
    next_event: u64,
    /// `loras::lora_set_id` of a submitted job's LoRAs (chain turns get none, as in Redis).
    lora_set: Option<String>,
    history: VecDeque<HistoryEntry>,
}

#[derive(Debug)]
struct IdempotencyEntry {
    job: JobId,
    body_hash: String,
    expires_at: Millis,
}

/// Everything the embedded queue knows.
#[derive(Debug)]
pub(crate) struct State {
    cfg: QueueConfig,
    jobs: HashMap<JobId, MemJob>,
    /// Undelivered dispatch entries per class, in `Priority::ORDER`.
    streams: [VecDeque<Entry>; 3],
    next_seq: u64,
    leases: BTreeSet<(Millis, JobId)>,
    delay: BTreeSet<(Millis, JobId)>,
    /// (sequence, job): the sequence is the bulk actions' cursor (the stream entry id in Redis).
    dead_letters: Vec<(u64, JobId)>,
    idempotency: HashMap<(TenantId, String), IdempotencyEntry>,
    /// Per tenant: `list_member`s (creation order).
    tenant_jobs: HashMap<TenantId, BTreeSet<String>>,
    /// Every tenant's `list_member`s: the global index of `admin_jobs` (see `retention`).
    all_jobs: BTreeSet<String>,
    inflight: HashMap<TenantId, u64>,
    /// Finished jobs waiting for the notifier: (due, id), plus id -> (due, times taken).
    notify: BTreeSet<(Millis, JobId)>,
    notify_due: HashMap<JobId, (Millis, u32)>,
    chains: HashMap<ChainId, chains::MemChain>,
    /// Per tenant: chains counted against `RetainedLimits` (see `retention`).
    tenant_chains: HashMap<TenantId, retention::TenantChains>,
    /// When finished jobs, idempotency keys and finished chains expire (may hold stale entries).
    job_expiry: BTreeSet<(Millis, JobId)>,
    idem_expiry: BTreeSet<(Millis, (TenantId, String))>,
    chain_expiry: BTreeSet<(Millis, ChainId)>,
    /// Chain turns and LoRA jobs offered to one worker first (see `chains`, `lora_affinity`).
    affinity: HashMap<String, VecDeque<Entry>>,
    lora: lora_affinity::LoraAffinity,
}

pub(super) fn class_index(p: Priority) -> usize {
    match p {
        Priority::High => 0,
        Priority::Standard => 1,
        Priority::Bulk => 2,
    }
}

impl State {
    pub(crate) fn new(cfg: QueueConfig) -> Self {
        Self {
            cfg,
            jobs: HashMap::new(),
            streams: Default::default(),
            next_seq: 0,
            leases: BTreeSet::new(),
            delay: BTreeSet::new(),
            dead_letters: Vec::new(),
            idempotency: HashMap::new(),
            tenant_jobs: HashMap::new(),
            all_jobs: BTreeSet::new(),
            inflight: HashMap::new(),
            notify: BTreeSet::new(),
            notify_due: HashMap::new(),
            chains: HashMap::new(),
            tenant_chains: HashMap::new(),
            job_expiry: BTreeSet::new(),
            idem_expiry: BTreeSet::new(),
            chain_expiry: BTreeSet::new(),
            affinity: HashMap::new(),
            lora: Default::default(),
        }
    }

    pub(crate) fn config(&self) -> &QueueConfig {
        &self.cfg
    }

    fn emit(&mut self, id: JobId, event: JobEvent) {
        let cap = self.cfg.events_maxlen.max(1);
        if let Some(job) = self.jobs.get_mut(&id) {
            job.next_event += 1;
            job.events.push_back((job.next_event, event));
            while job.events.len() > cap {
                job.events.pop_front();
            }
        }
    }

    fn emit_state(&mut self, id: JobId, status: JobStatus, at: Millis) {
        self.emit(id, JobEvent::State { status, at });
    }

    /// Append a dispatch entry for `id` to its class stream and remember it as current.
    fn dispatch(&mut self, id: JobId, now: Millis) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        self.next_seq += 1;
        job.entry = Some(self.next_seq);
        let class = class_index(job.record.spec.priority);
        self.streams[class].push_back(Entry {
            seq: self.next_seq,
            job: id,
            at: now,
        });
    }

    pub(crate) fn submit(
        &mut self,
        sub: Submission,
        id: JobId,
        now: Millis,
    ) -> Result<SubmitOutcome, QueueError> {
        let idem_key = sub.idempotency_key.clone().map(|k| (sub.tenant.clone(), k));
        if let Some(key) = &idem_key
            && let Some(prev) = self.idempotency.get(key).filter(|e| e.expires_at > now)
        {
            if prev.body_hash == sub.body_hash {
                return Ok(SubmitOutcome {
                    id: prev.job,
                    created: false,
                });
            }
            return Err(QueueError::IdempotencyConflict);
        }
        let in_flight = self.inflight.get(&sub.tenant).copied().unwrap_or(0);
        if sub.max_in_flight > 0 && in_flight >= u64::from(sub.max_in_flight) {
            return Err(QueueError::TooManyInFlight {
                in_flight,
                limit: sub.max_in_flight,
            });
        }
        let held = self.retained_jobs(&sub.tenant, now);
        sub.retained.check(RetainedKind::Jobs, held, 1)?;
        let lora_set = crate::loras::lora_set_id(&sub.spec.loras);
        let holder = if self.cfg.lora_affinity_delay.is_zero() {
            None
        } else {
            self.lora_holder(lora_set.as_deref(), now)
        };
        let record = JobRecord {
            id,
            tenant: sub.tenant.clone(),
            status: JobStatus::Queued,
            spec: sub.spec,
            progress: 0.0,
            attempts: 0,
            crashes: 0,
            epoch: 0,
            cancel_requested: false,
            created_at: now,
            started_at: None,
            finished_at: None,
            worker: None,
            result: None,
            error: None,
            chain: sub.chain,
        };
        self.jobs.insert(
            id,
            MemJob {
                record,
                entry: None,
                lease_until: None,
                delayed_until: None,
                expires_at: None,
                events: VecDeque::new(),
                next_event: 0,
                lora_set,
                history: VecDeque::new(),
            },
        );
        if let Some(key) = idem_key {
            let expires_at = now.saturating_add(policy::millis(self.cfg.idempotency_ttl));
            let entry = IdempotencyEntry {
                job: id,
                body_hash: sub.body_hash,
                expires_at,
            };
            self.idem_expiry.insert((expires_at, key.clone()));
            self.idempotency.insert(key, entry);
        }
        self.index_job(&sub.tenant, list_member(now, id));
        *self.inflight.entry(sub.tenant).or_default() += 1;
        match holder {
            Some(worker) => self.offer_to_worker(id, worker, now, self.cfg.lora_affinity_delay),
            None => self.dispatch(id, now),
        }
        self.emit_state(id, JobStatus::Queued, now);
        Ok(SubmitOutcome { id, created: true })
    }

    pub(crate) fn get(&self, id: JobId) -> Option<JobRecord> {
        self.jobs.get(&id).map(|j| j.record.clone())
    }

    pub(crate) fn cancel(&mut self, id: JobId, now: Millis) -> CancelOutcome {
        let Some(job) = self.jobs.get_mut(&id) else {
            return CancelOutcome::NotFound;
        };
        match job.record.status {
            s if s.is_terminal() => CancelOutcome::AlreadyCompleted,
            JobStatus::Running => {
                job.record.cancel_requested = true;
                self.note(id, HistoryEntry::CancelRequested { at: now });
                CancelOutcome::CancellationRequested
            }
            _ => {
                // Queued (maybe waiting for a retry): its stream entry stays and is skipped on claim.
                if let Some(at) = job.delayed_until.take() {
                    self.delay.remove(&(at, id));
                }
                self.note(id, HistoryEntry::Canceled { at: now });
                self.finish(id, JobStatus::Canceled, now);
                CancelOutcome::Canceled
            }
        }
    }

    /// Take the next queued job in priority order, skipping entries of jobs that are no longer
    /// queued (canceled) or that were superseded by a newer entry.
    pub(crate) fn claim(
        &mut self,
        worker: &str,
        lease_ttl: Duration,
        now: Millis,
    ) -> Option<Claim> {
        if let Some(claim) = self.claim_offered(worker, lease_ttl, now) {
            return Some(claim);
        }
        for class in 0..self.streams.len() {
            while let Some(entry) = self.streams[class].pop_front() {
                let startable = self.jobs.get(&entry.job).is_some_and(|j| {
                    j.record.status == JobStatus::Queued && j.entry == Some(entry.seq)
                });
                if startable {
                    return Some(self.start(entry.job, worker, lease_ttl, now));
                }
            }
        }
        None
    }

    fn start(&mut self, id: JobId, worker: &str, lease_ttl: Duration, now: Millis) -> Claim {
        let until = policy::lease_until(now, lease_ttl);
        let job = self
            .jobs
            .get_mut(&id)
            .expect("start is called with a live job; this is a bug");
        let r = &mut job.record;
        r.status = JobStatus::Running;
        r.attempts += 1;
        r.epoch += 1;
        r.progress = 0.0;
        r.started_at = Some(now);
        r.worker = Some(worker.to_owned());
        job.lease_until = Some(until);
        let lease = Lease {
            job_id: id,
            worker: worker.to_owned(),
            epoch: r.epoch,
            attempt: r.attempts,
        };
        let record = r.clone();
        self.leases.insert((until, id));
        self.emit_state(id, JobStatus::Running, now);
        self.note_claimed(id, now);
        Claim { lease, job: record }
    }

    /// The job behind a lease, if the lease is current: present, same epoch, running.
    fn current(&mut self, lease: &Lease) -> Result<&mut MemJob, QueueError> {
        let job = self
            .jobs
            .get_mut(&lease.job_id)
            .ok_or(QueueError::NotFound(lease.job_id))?;
        if job.record.epoch != lease.epoch || job.record.status != JobStatus::Running {
            return Err(QueueError::Stale(lease.job_id));
        }
        Ok(job)
    }

    fn renew(&mut self, id: JobId, lease_ttl: Duration, now: Millis) -> LeaseState {
        let until = policy::lease_until(now, lease_ttl);
        let job = self
            .jobs
            .get_mut(&id)
            .expect("renew follows `current`; this is a bug");
        if let Some(old) = job.lease_until.replace(until) {
            self.leases.remove(&(old, id));
        }
        self.leases.insert((until, id));
        LeaseState {
            cancel_requested: job.record.cancel_requested,
            lease_until: until,
        }
    }

    pub(crate) fn heartbeat(
        &mut self,
        lease: &Lease,
        lease_ttl: Duration,
        now: Millis,
    ) -> Result<LeaseState, QueueError> {
        self.current(lease)?;
        Ok(self.renew(lease.job_id, lease_ttl, now))
    }

    pub(crate) fn progress(
        &mut self,
        lease: &Lease,
        step: u32,
        total: u32,
        lease_ttl: Duration,
        now: Millis,
    ) -> Result<LeaseState, QueueError> {
        let job = self.current(lease)?;
        job.record.progress = progress_fraction(step, total);
        self.emit(
            lease.job_id,
            JobEvent::Progress {
                step,
                total,
                at: now,
            },
        );
        Ok(self.renew(lease.job_id, lease_ttl, now))
    }

    pub(crate) fn complete(
        &mut self,
        lease: &Lease,
        result: JobResult,
        now: Millis,
    ) -> Result<CompleteOutcome, QueueError> {
        let id = lease.job_id;
        let job = self.jobs.get_mut(&id).ok_or(QueueError::NotFound(id))?;
        if job.record.epoch == lease.epoch && job.record.status == JobStatus::Succeeded {
            return Ok(CompleteOutcome::AlreadyDone);
        }
        self.current(lease)?;
        let job = self
            .jobs
            .get(&id)
            .expect("checked by `current`; this is a bug");
        let (worker, set) = (job.record.worker.clone(), job.lora_set.clone());
        self.record_lora_set(worker.as_deref(), set.as_deref(), now);
        let engine_ms = result.engine_ms;
        self.note_ended(id, lease.epoch, Ended::Succeeded { engine_ms }, now);
        let job = self
            .jobs
            .get_mut(&id)
            .expect("checked by `current`; this is a bug");
        job.record.result = Some(result);
        job.record.error = None;
        job.record.progress = 1.0;
        self.finish(id, JobStatus::Succeeded, now);
        Ok(CompleteOutcome::Committed)
    }

    /// `decision` comes from `policy::retry_decision` for this lease's attempt.
    pub(crate) fn fail(
        &mut self,
        lease: &Lease,
        error: JobError,
        decision: RetryDecision,
        now: Millis,
    ) -> Result<FailOutcome, QueueError> {
        let id = lease.job_id;
        let job = self.current(lease)?;
        job.record.error = Some(error.clone());
        let cancel = job.record.cancel_requested;
        let worker = job.record.worker.clone();
        self.record_lora_set(worker.as_deref(), None, now);
        self.drop_lease(id);
        let ended = Ended::failed(error, decision, cancel);
        self.note_ended(id, lease.epoch, ended, now);
        match decision {
            RetryDecision::Retry { at } if !cancel => {
                let job = self
                    .jobs
                    .get_mut(&id)
                    .expect("checked by `current`; this is a bug");
                job.record.status = JobStatus::Queued;
                job.record.epoch += 1;
                job.record.worker = None;
                job.delayed_until = Some(at);
                self.delay.insert((at, id));
                self.emit_state(id, JobStatus::Queued, now);
                Ok(FailOutcome::Retrying { at })
            }
            RetryDecision::Retry { .. } => {
                self.finish(id, JobStatus::Canceled, now);
                Ok(FailOutcome::Finished(JobStatus::Canceled))
            }
            RetryDecision::GiveUp { status } => {
                let status = if cancel { JobStatus::Canceled } else { status };
                self.finish(id, status, now);
                Ok(FailOutcome::Finished(status))
            }
        }
    }

    pub(crate) fn release(&mut self, lease: &Lease, now: Millis) -> Result<(), QueueError> {
        let id = lease.job_id;
        let cancel = self.current(lease)?.record.cancel_requested;
        let outcome = [JobStatus::Queued, JobStatus::Canceled][usize::from(cancel)];
        self.note_ended(id, lease.epoch, Ended::Released(outcome), now);
        let job = self.current(lease)?;
        if job.record.cancel_requested {
            self.drop_lease(id);
            self.finish(id, JobStatus::Canceled, now);
            return Ok(());
        }
        job.record.status = JobStatus::Queued;
        job.record.epoch += 1;
        job.record.attempts = job.record.attempts.saturating_sub(1);
        job.record.worker = None;
        self.drop_lease(id);
        self.dispatch(id, now);
        self.emit_state(id, JobStatus::Queued, now);
        Ok(())
    }

    pub(crate) fn reap(&mut self, now: Millis) -> ReapReport {
        let mut report = ReapReport::default();
        let expired: Vec<JobId> = self
            .leases
            .iter()
            .take_while(|(until, _)| *until <= now)
            .map(|&(_, id)| id)
            .collect();
        for id in expired {
            self.drop_lease(id);
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            if job.record.status != JobStatus::Running {
                continue;
            }
            job.record.epoch += 1;
            job.record.crashes += 1;
            let r = &job.record;
            let (lost, epoch) = (
                Ended::lease_lost(r.cancel_requested, r.crashes),
                r.epoch - 1,
            );
            self.note_ended(id, epoch, lost, now);
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            if job.record.cancel_requested {
                self.finish(id, JobStatus::Canceled, now);
                report.canceled.push(id);
            } else if policy::is_poison(job.record.crashes) {
                self.finish(id, JobStatus::Dead, now);
                self.next_seq += 1;
                self.dead_letters.push((self.next_seq, id));
                report.dead.push(id);
            } else {
                job.record.status = JobStatus::Queued;
                job.record.worker = None;
                self.dispatch(id, now);
                self.emit_state(id, JobStatus::Queued, now);
                report.requeued.push(id);
            }
        }
        let due: Vec<(Millis, JobId)> = self
            .delay
            .iter()
            .take_while(|(at, _)| *at <= now)
            .copied()
            .collect();
        for key in due {
            self.delay.remove(&key);
            let id = key.1;
            let queued = self.jobs.get_mut(&id).is_some_and(|j| {
                j.delayed_until = None;
                j.record.status == JobStatus::Queued
            });
            if queued {
                self.dispatch(id, now);
                report.promoted += 1;
            }
        }
        self.forget_expired(now);
        report
    }

    fn drop_lease(&mut self, id: JobId) {
        if let Some(until) = self.jobs.get_mut(&id).and_then(|j| j.lease_until.take()) {
            self.leases.remove(&(until, id));
        }
    }

    /// Move a job to a terminal state: timestamps, in-flight count, retention, event.
    fn finish(&mut self, id: JobId, status: JobStatus, now: Millis) {
        let retention = policy::millis(self.cfg.retention);
        self.drop_lease(id);
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.record.status = status;
        job.record.finished_at = Some(now);
        job.expires_at = Some(now.saturating_add(retention));
        let tenant = job.record.tenant.clone();
        self.expire_job_at(id, now.saturating_add(retention));
        if let Some(n) = self.inflight.get_mut(&tenant) {
            *n = n.saturating_sub(1);
        }
        self.emit_state(id, status, now);
        self.queue_notification(id, now);
        self.advance_chain(id, status, now);
    }
}

// Notifications of finished jobs (mirrors redis/lua/notify_*.lua).
#[path = "notify.rs"]
mod notify;

// Chains and affinity offers (mirrors redis/lua/chain_*.lua and prelude.lua's advance_chain).
#[path = "chains.rs"]
mod chains;

// Events and stats.
#[path = "reads.rs"]
mod reads;

// LoRA affinity and dead letters (mirror prelude.lua's lora_holder / record_lora_set, dead_*.lua).
#[path = "cancel_queued.rs"]
mod cancel_queued;
#[path = "dead_letters.rs"]
mod dead_letters;
#[path = "lora_affinity.rs"]
mod lora_affinity;

// Job history (mirrors prelude.lua's note_history).
#[path = "history.rs"]
mod history;
use history::Ended;

// Retained-state quotas and expiry.
#[path = "retention.rs"]
mod retention;
