//! Chains and affinity offers in the embedded queue, mirroring `redis/lua/chain_*.lua` and
//! prelude.lua's `advance_chain` / `create_turn_job` (same checks, same order): the turn after a
//! finished turn is created inside `finish`, under the same lock as the transition that ended it.

use std::collections::VecDeque;
use std::time::Duration;

use super::{Entry, MemJob, State};
use crate::chain::{
    self, AppendOutcome, ChainFork, ChainId, ChainRecord, ChainStatus, ChainSubmission, ChainTurn,
    FailurePolicy, MAX_CHAIN_TURNS, PlannedTurn, TurnAppend, refusal, turn_seed,
};
use crate::error::QueueError;
use crate::job::{
    Carry, ChainRef, InputImage, JobId, JobRecord, JobResult, JobStatus, Millis, Priority,
    TenantId, ValidJobSpec,
};
use crate::job_history::HistoryEntry;
use crate::keys::list_member;
use crate::policy;
use crate::queue::{CancelOutcome, Claim, RetainedKind};

/// A chain record (the Redis chain hash).
#[derive(Debug)]
pub(super) struct MemChain {
    id: ChainId,
    tenant: TenantId,
    status: ChainStatus,
    carry: Carry,
    on_failure: FailurePolicy,
    seed: u64,
    input: Option<InputImage>,
    webhook_url: Option<String>,
    priority: Priority,
    created_at: Millis,
    finished_at: Option<Millis>,
    current: u32,
    last_good: u32,
    forked_from: Option<ChainRef>,
    turns: Vec<PlannedTurn>,
    /// Finished chains are dropped from here on (retention).
    pub(super) expires_at: Option<Millis>,
}

/// Where a new turn's job goes: dispatched, or offered to one worker first.
type OfferTo = Option<String>;

impl State {
    pub(crate) fn create_chain(
        &mut self,
        sub: ChainSubmission,
        now: Millis,
    ) -> Result<(), QueueError> {
        chain::check_submission(&sub)?;
        if self.chains.contains_key(&sub.id) {
            return Err(refusal::exists(sub.id));
        }
        let in_flight = self.inflight.get(&sub.tenant).copied().unwrap_or(0);
        if sub.max_in_flight > 0 && in_flight >= u64::from(sub.max_in_flight) {
            return Err(QueueError::TooManyInFlight {
                in_flight,
                limit: sub.max_in_flight,
            });
        }
        let n = sub.turns.len() as u64;
        let jobs = self.retained_jobs(&sub.tenant, now);
        sub.retained.check(RetainedKind::Jobs, jobs, 1)?;
        let (chains, turns) = self.retained_chains(&sub.tenant, now);
        sub.retained.check(RetainedKind::Chains, chains, 1)?;
        sub.retained.check(RetainedKind::Turns, turns, n)?;
        self.index_chain(&sub.tenant, sub.id, now, n);
        let first = sub.turns[0].spec.clone();
        let chain = MemChain {
            id: sub.id,
            tenant: sub.tenant,
            status: ChainStatus::Running,
            carry: sub.carry,
            on_failure: sub.on_failure,
            seed: sub.seed,
            input: sub.input,
            webhook_url: sub.webhook_url,
            priority: first.priority,
            created_at: now,
            finished_at: None,
            current: 1,
            last_good: 0,
            forked_from: None,
            turns: sub.turns,
            expires_at: None,
        };
        self.chains.insert(chain.id, chain);
        self.create_turn_job(sub.id, 1, first, now, None);
        Ok(())
    }

    pub(crate) fn get_chain(&self, id: ChainId) -> Option<ChainRecord> {
        let c = self.chains.get(&id)?;
        let turns = c
            .turns
            .iter()
            .zip(1..)
            .map(|(t, turn)| ChainTurn {
                turn,
                job_id: t.job_id,
                spec: t.spec.clone(),
                job: self.jobs.get(&t.job_id).map(|j| j.record.clone()),
            })
            .collect();
        Some(ChainRecord {
            id: c.id,
            tenant: c.tenant.clone(),
            status: c.status,
            carry: c.carry,
            on_failure: c.on_failure,
            seed: c.seed,
            input: c.input.clone(),
            webhook_url: c.webhook_url.clone(),
            created_at: c.created_at,
            finished_at: c.finished_at,
            current: c.current,
            last_good: c.last_good,
            forked_from: c.forked_from.clone(),
            turns,
        })
    }

    pub(crate) fn append_turn(
        &mut self,
        id: ChainId,
        turn: TurnAppend,
        now: Millis,
    ) -> Result<AppendOutcome, QueueError> {
        let c = self.chains.get(&id).ok_or(QueueError::ChainNotFound(id))?;
        if c.status == ChainStatus::Canceled {
            return Err(refusal::canceled(id));
        }
        let number = c.turns.len() as u32 + 1;
        let mut spec = turn.spec;
        spec.seed = turn.seed.unwrap_or_else(|| turn_seed(c.seed, number));
        chain::check_template(&spec, number as usize)?;
        let tenant = c.tenant.clone();
        let (_, turns_held) = self.retained_chains(&tenant, now);
        turn.retained.check(RetainedKind::Turns, turns_held, 1)?;
        let c = self.chains.get(&id).ok_or(QueueError::ChainNotFound(id))?;
        let running = c.status == ChainStatus::Running;
        let (source, worker) = if running {
            (None, None)
        } else if c.last_good > 0 {
            let good = c.turns[c.last_good as usize - 1].job_id;
            let job = self.jobs.get(&good).ok_or_else(|| refusal::no_frame(id))?;
            let result = job
                .record
                .result
                .clone()
                .ok_or_else(|| refusal::no_frame(id))?;
            (Some(result), job.record.worker.clone())
        } else if c.input.is_none() {
            return Err(refusal::no_frame(id));
        } else {
            (None, None)
        };
        self.count_turn(&tenant, id);
        let c = self.chain_mut(id);
        c.turns.push(PlannedTurn {
            job_id: turn.job_id,
            spec,
        });
        if running {
            return Ok(AppendOutcome {
                turn: number,
                started: false,
            });
        }
        c.status = ChainStatus::Running;
        c.finished_at = None;
        c.expires_at = None;
        self.start_turn(id, number, source, now, worker);
        Ok(AppendOutcome {
            turn: number,
            started: true,
        })
    }

    pub(crate) fn fork_chain(
        &mut self,
        id: ChainId,
        fork: ChainFork,
        now: Millis,
    ) -> Result<(), QueueError> {
        let from_turn = fork.from_turn;
        let new_id = fork.new_id;
        let src = self.chains.get(&id).ok_or(QueueError::ChainNotFound(id))?;
        if self.chains.contains_key(&new_id) {
            return Err(refusal::exists(new_id));
        }
        let n = src.turns.len();
        if from_turn < 1 || from_turn as usize > n {
            return Err(refusal::out_of_range(&n.to_string(), from_turn));
        }
        let total = from_turn as usize + fork.turns.len();
        if total > MAX_CHAIN_TURNS {
            return Err(refusal::too_long(from_turn, fork.turns.len()));
        }
        let mut appended = Vec::with_capacity(fork.turns.len());
        for (number, t) in (from_turn + 1..).zip(fork.turns) {
            let mut spec = t.spec;
            spec.seed = t.seed.unwrap_or_else(|| turn_seed(src.seed, number));
            chain::check_template(&spec, number as usize)?;
            appended.push(PlannedTurn {
                job_id: t.job_id,
                spec,
            });
        }
        let jid = src.turns[from_turn as usize - 1].job_id;
        let frame = self.jobs.get(&jid).map(|j| j.record.clone());
        let state = frame.as_ref().map(|j| j.status);
        if state != Some(JobStatus::Succeeded) {
            return Err(refusal::not_succeeded(
                from_turn,
                state.map(JobStatus::as_str),
            ));
        }
        let tenant = src.tenant.clone();
        let (chains, turns) = self.retained_chains(&tenant, now);
        fork.retained.check(RetainedKind::Chains, chains, 1)?;
        fork.retained
            .check(RetainedKind::Turns, turns, total as u64)?;
        let src = self.chains.get(&id).ok_or(QueueError::ChainNotFound(id))?;
        let mut turns = src.turns[..from_turn as usize].to_vec();
        turns.extend(appended);
        let expires_at = now.saturating_add(policy::millis(self.cfg.retention));
        let runs = total > from_turn as usize;
        let chain = MemChain {
            id: new_id,
            tenant: src.tenant.clone(),
            status: if runs {
                ChainStatus::Running
            } else {
                ChainStatus::Succeeded
            },
            carry: src.carry,
            on_failure: src.on_failure,
            seed: src.seed,
            input: src.input.clone(),
            webhook_url: src.webhook_url.clone(),
            priority: src.priority,
            created_at: now,
            finished_at: (!runs).then_some(now),
            current: from_turn,
            last_good: from_turn,
            forked_from: Some(ChainRef {
                chain_id: id.to_string(),
                turn: from_turn,
            }),
            turns,
            expires_at: (!runs).then_some(expires_at),
        };
        self.chains.insert(new_id, chain);
        self.index_chain(&tenant, new_id, now, total as u64);
        if runs {
            let frame = frame.expect("checked succeeded above");
            self.start_turn(new_id, from_turn + 1, frame.result, now, frame.worker);
        } else {
            self.expire_chain_at(new_id, expires_at);
        }
        Ok(())
    }

    pub(crate) fn cancel_chain(&mut self, id: ChainId, now: Millis) -> CancelOutcome {
        let Some(c) = self.chains.get(&id) else {
            return CancelOutcome::NotFound;
        };
        if c.status != ChainStatus::Running {
            return CancelOutcome::AlreadyCompleted;
        }
        let jid = c.turns[c.current as usize - 1].job_id;
        self.end_chain(id, ChainStatus::Canceled, now);
        let Some(job) = self.jobs.get_mut(&jid) else {
            return CancelOutcome::Canceled;
        };
        match job.record.status {
            JobStatus::Running => {
                job.record.cancel_requested = true;
                self.note(jid, HistoryEntry::CancelRequested { at: now });
                CancelOutcome::CancellationRequested
            }
            JobStatus::Queued => {
                if let Some(at) = job.delayed_until.take() {
                    self.delay.remove(&(at, jid));
                }
                self.note(jid, HistoryEntry::Canceled { at: now });
                self.finish(jid, JobStatus::Canceled, now);
                CancelOutcome::Canceled
            }
            _ => CancelOutcome::Canceled,
        }
    }

    /// The running chain whose turn job `id` is, if any (cancel_queued.lua's chain check).
    pub(super) fn running_chain_of(&self, id: JobId) -> Option<ChainId> {
        let chain_ref = self.jobs.get(&id)?.record.chain.as_ref()?;
        let cid = chain_ref.chain_id.parse::<ChainId>().ok()?;
        (self.chains.get(&cid)?.status == ChainStatus::Running).then_some(cid)
    }

    /// A job just ended in `status` (called from `finish`): if it is its chain's live turn,
    /// create the next turn or end the chain. A commit offers the next turn to its worker first.
    pub(super) fn advance_chain(&mut self, jid: JobId, status: JobStatus, now: Millis) {
        let Some(job) = self.jobs.get(&jid) else {
            return;
        };
        let Some(chain_ref) = &job.record.chain else {
            return;
        };
        let Ok(cid) = chain_ref.chain_id.parse::<ChainId>() else {
            return;
        };
        let turn = chain_ref.turn;
        let (result, worker) = (job.record.result.clone(), job.record.worker.clone());
        let Some(c) = self.chains.get(&cid) else {
            return;
        };
        if c.status != ChainStatus::Running || c.current != turn {
            return;
        }
        let (source, offer_to) = if status == JobStatus::Succeeded {
            self.chain_mut(cid).last_good = turn;
            (result, worker)
        } else if c.on_failure == FailurePolicy::Continue {
            (self.last_good_result(cid), None)
        } else {
            self.end_chain(cid, ChainStatus::Failed, now);
            return;
        };
        if turn as usize >= self.chain_mut(cid).turns.len() {
            let end = if status == JobStatus::Succeeded {
                ChainStatus::Succeeded
            } else {
                ChainStatus::Failed
            };
            self.end_chain(cid, end, now);
        } else if !self.start_turn(cid, turn + 1, source, now, offer_to) {
            self.end_chain(cid, ChainStatus::Failed, now);
        }
    }

    /// Take the oldest startable offer on `worker`'s affinity queue, dropping stale ones.
    pub(super) fn claim_offered(
        &mut self,
        worker: &str,
        lease_ttl: Duration,
        now: Millis,
    ) -> Option<Claim> {
        while let Some(entry) = self.affinity.get_mut(worker)?.pop_front() {
            if !self.is_startable(&entry) {
                continue;
            }
            let claim = self.start(entry.job, worker, lease_ttl, now);
            let job = self
                .jobs
                .get_mut(&entry.job)
                .expect("just started; this is a bug");
            job.entry = None;
            if let Some(at) = job.delayed_until.take() {
                self.delay.remove(&(at, entry.job));
            }
            return Some(claim);
        }
        self.affinity.remove(worker);
        None
    }

    /// Offers whose job moved on (claimed through the fallback, canceled) are garbage.
    pub(super) fn prune_offers(&mut self) {
        let mut offers = std::mem::take(&mut self.affinity);
        offers.retain(|_, q| {
            q.retain(|e| self.is_startable(e));
            !q.is_empty()
        });
        self.affinity = offers;
    }

    fn is_startable(&self, entry: &Entry) -> bool {
        self.jobs
            .get(&entry.job)
            .is_some_and(|j| j.record.status == JobStatus::Queued && j.entry == Some(entry.seq))
    }

    fn chain_mut(&mut self, id: ChainId) -> &mut MemChain {
        self.chains
            .get_mut(&id)
            .expect("the chain was looked up just before; this is a bug")
    }

    fn end_chain(&mut self, id: ChainId, status: ChainStatus, now: Millis) {
        let retention = policy::millis(self.cfg.retention);
        let c = self.chain_mut(id);
        c.status = status;
        c.finished_at = Some(now);
        c.expires_at = Some(now.saturating_add(retention));
        self.expire_chain_at(id, now.saturating_add(retention));
    }

    fn last_good_result(&self, id: ChainId) -> Option<JobResult> {
        let c = self.chains.get(&id)?;
        let good = c.turns.get((c.last_good as usize).checked_sub(1)?)?;
        self.jobs.get(&good.job_id)?.record.result.clone()
    }

    /// Create turn `turn`'s job editing `source`'s frame, or the chain's input image when
    /// `source` is `None`; false when there is neither.
    fn start_turn(
        &mut self,
        id: ChainId,
        turn: u32,
        source: Option<JobResult>,
        now: Millis,
        offer_to: OfferTo,
    ) -> bool {
        let c = self.chain_mut(id);
        let mut spec = c.turns[turn as usize - 1].spec.clone();
        match source {
            Some(r) => {
                spec.input = Some(InputImage {
                    key: r.key,
                    width: r.width,
                    height: r.height,
                });
                spec.input_latent_key = r.latent_key.filter(|_| c.carry == Carry::Latent);
            }
            None => match &c.input {
                Some(img) => spec.input = Some(img.clone()),
                None => return false,
            },
        }
        self.create_turn_job(id, turn, spec, now, offer_to);
        true
    }

    /// Create turn `turn`'s job with its final `spec` unless it exists (never twice).
    fn create_turn_job(
        &mut self,
        id: ChainId,
        turn: u32,
        spec: ValidJobSpec,
        now: Millis,
        offer_to: OfferTo,
    ) {
        let c = self.chain_mut(id);
        c.current = turn;
        let jid = c.turns[turn as usize - 1].job_id;
        let tenant = c.tenant.clone();
        if self.jobs.contains_key(&jid) {
            return;
        }
        let record = JobRecord {
            id: jid,
            tenant: tenant.clone(),
            status: JobStatus::Queued,
            spec,
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
            chain: Some(ChainRef {
                chain_id: id.to_string(),
                turn,
            }),
        };
        let job = MemJob {
            record,
            entry: None,
            lease_until: None,
            delayed_until: None,
            expires_at: None,
            events: VecDeque::new(),
            next_event: 0,
            lora_set: None,
            history: Default::default(),
        };
        self.jobs.insert(jid, job);
        self.index_job(&tenant, list_member(now, jid));
        *self.inflight.entry(tenant).or_default() += 1;
        self.emit_state(jid, JobStatus::Queued, now);
        match offer_to {
            Some(worker) => self.offer_to_worker(jid, worker, now, self.cfg.affinity_delay),
            None => self.dispatch(jid, now),
        }
    }
}
