//! Chains on `RedisQueue`: one Lua script per operation (`lua/chain_*.lua`); the step that
//! matters most — creating turn k+1 when turn k ends — runs inside the scripts that end jobs
//! (prelude.lua `advance_chain`), not here.

use std::collections::HashMap;

use redis::Value;

use super::RedisQueue;
use super::reply::{
    RedisFailure, array, at, field, hash, int, json, optional, parsed, record, tagged, text,
};
use super::scripts::SCRIPTS;
use crate::chain::{
    self, AppendOutcome, ChainFork, ChainId, ChainRecord, ChainSubmission, ChainTurn,
    MAX_CHAIN_TURNS, TurnAppend, refusal, turn_seed,
};
use crate::error::QueueError;
use crate::job::{JobId, Millis, ValidJobSpec};
use crate::keys::list_member_cutoff;
use crate::policy;
use crate::queue::{CancelOutcome, RetainedKind, RetainedLimits};

/// Rounds of read-then-append before `append_turn` gives up on a chain appended to concurrently.
const APPEND_TRIES: usize = 16;

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, QueueError> {
    serde_json::to_string(v).map_err(|e| QueueError::Corrupt(e.to_string()))
}

fn corrupt(what: String) -> QueueError {
    QueueError::Corrupt(what)
}

/// A chain hash plus the job hashes of its turns (chain_get.lua's reply) as a record.
fn chain_record(h: &HashMap<String, String>, jobs: &[Value]) -> Result<ChainRecord, QueueError> {
    let id: ChainId = parsed(h, "id")?;
    let n: u32 = parsed(h, "turns")?;
    let mut turns = Vec::with_capacity(n as usize);
    for i in 1..=n {
        let job_id: JobId = parsed(h, &format!("j:{i}"))?;
        let spec: ValidJobSpec = json(h, &format!("t:{i}"))?
            .ok_or_else(|| corrupt(format!("chain {id} lacks the template of turn {i}")))?;
        let job_hash = hash(at(jobs, (i - 1) as usize)?)?;
        let job = if job_hash.is_empty() {
            None
        } else {
            Some(record(&job_hash)?)
        };
        turns.push(ChainTurn {
            turn: i,
            job_id,
            spec,
            job,
        });
    }
    Ok(ChainRecord {
        id,
        tenant: field(h, "tenant")?.to_owned(),
        status: parsed(h, "status")?,
        carry: parsed(h, "carry")?,
        on_failure: parsed(h, "on_failure")?,
        seed: parsed(h, "seed")?,
        input: json(h, "input")?,
        webhook_url: h.get("webhook").filter(|w| !w.is_empty()).cloned(),
        created_at: parsed(h, "created_at")?,
        finished_at: optional(h, "finished_at")?,
        current: parsed(h, "current")?,
        last_good: parsed(h, "last_good")?,
        forked_from: json(h, "forked_from")?,
        turns,
    })
}

/// The refusal of a `{'too_many_retained', kind, held, adding}` reply.
pub(super) fn retained_refusal(
    rest: &[Value],
    limits: &RetainedLimits,
) -> Result<QueueError, QueueError> {
    let kind = match text(at(rest, 0)?)?.as_str() {
        "jobs" => RetainedKind::Jobs,
        "chains" => RetainedKind::Chains,
        "turns" => RetainedKind::Turns,
        other => return Err(corrupt(format!("unknown retained kind {other:?}"))),
    };
    let count = |i| int(at(rest, i)?).map(|n| u64::try_from(n).unwrap_or(0));
    Ok(QueueError::TooManyRetained {
        kind,
        retained: count(1)?,
        adding: count(2)?,
        limit: limits.get(kind),
    })
}

impl RedisQueue {
    pub(super) async fn create_chain_impl(
        &self,
        chain: ChainSubmission,
        now: Millis,
    ) -> Result<(), QueueError> {
        chain::check_submission(&chain)?;
        let k = &self.keys;
        let first = &chain.turns[0].spec;
        let mut inv = SCRIPTS.chain_create.prepare_invoke();
        inv.key(k.chain(chain.id))
            .key(k.tenant_inflight(&chain.tenant))
            .arg(k.prefix())
            .arg(chain.id.to_string())
            .arg(&chain.tenant)
            .arg(now)
            .arg(chain.max_in_flight)
            .arg(chain.carry.as_str())
            .arg(chain.on_failure.as_str())
            .arg(chain.seed)
            .arg(match &chain.input {
                Some(img) => to_json(img)?,
                None => String::new(),
            })
            .arg(chain.webhook_url.as_deref().unwrap_or(""))
            .arg(first.priority.class())
            .arg(self.maxlen())
            .arg(chain.turns.len())
            .arg(list_member_cutoff(self.cutoff(now)))
            .arg(self.cutoff(now))
            .arg(chain.retained.jobs)
            .arg(chain.retained.chains)
            .arg(chain.retained.turns);
        for t in &chain.turns {
            inv.arg(t.job_id.to_string()).arg(to_json(&t.spec)?);
        }
        let reply = self.run(&inv).await?;
        let (tag, rest) = tagged(&reply)?;
        match tag.as_str() {
            "created" => Ok(()),
            "exists" => Err(refusal::exists(chain.id)),
            "too_many" => Err(QueueError::TooManyInFlight {
                in_flight: u64::try_from(int(at(rest, 0)?)?).unwrap_or(0),
                limit: chain.max_in_flight,
            }),
            "too_many_retained" => Err(retained_refusal(rest, &chain.retained)?),
            other => Err(corrupt(format!("chain_create replied {other:?}"))),
        }
    }

    pub(super) async fn get_chain_impl(
        &self,
        id: ChainId,
    ) -> Result<Option<ChainRecord>, QueueError> {
        let mut inv = SCRIPTS.chain_get.prepare_invoke();
        inv.key(self.keys.chain(id)).arg(self.keys.prefix());
        let reply = self.run(&inv).await?;
        let parts = array(&reply)?;
        if parts.is_empty() {
            return Ok(None);
        }
        let h = hash(at(parts, 0)?)?;
        chain_record(&h, array(at(parts, 1)?)?).map(Some)
    }

    pub(super) async fn append_turn_impl(
        &self,
        id: ChainId,
        turn: TurnAppend,
        now: Millis,
    ) -> Result<AppendOutcome, QueueError> {
        let k = &self.keys;
        // The seed depends on the new turn's number, which the script confirms (optimistic: a
        // concurrent append makes it answer `conflict`, and we derive again).
        let mut fields: (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(k.chain(id))
            .arg("turns")
            .arg("seed")
            .query_async(&mut self.conn())
            .await
            .map_err(super::reply::backend)?;
        for _ in 0..APPEND_TRIES {
            let (Some(turns), Some(seed)) = (&fields.0, &fields.1) else {
                return Err(QueueError::ChainNotFound(id));
            };
            let turns: u32 = turns
                .parse()
                .map_err(|_| corrupt(format!("chain {id}: turns = {turns:?}")))?;
            let seed: u64 = seed
                .parse()
                .map_err(|_| corrupt(format!("chain {id}: seed = {seed:?}")))?;
            let number = turns + 1;
            let mut spec = turn.spec.clone();
            spec.seed = turn.seed.unwrap_or_else(|| turn_seed(seed, number));
            chain::check_template(&spec, number as usize)?;
            let mut inv = SCRIPTS.chain_append.prepare_invoke();
            inv.key(k.chain(id))
                .arg(k.prefix())
                .arg(number)
                .arg(turn.job_id.to_string())
                .arg(to_json(&spec)?)
                .arg(now)
                .arg(self.maxlen())
                .arg(policy::millis(self.cfg.queue.affinity_delay))
                .arg(self.cutoff(now))
                .arg(turn.retained.turns);
            let reply = self.run(&inv).await?;
            let (tag, rest) = tagged(&reply)?;
            match tag.as_str() {
                "appended" => {
                    return Ok(AppendOutcome {
                        turn: number,
                        started: int(at(rest, 0)?)? == 1,
                    });
                }
                "not_found" => return Err(QueueError::ChainNotFound(id)),
                "canceled" => return Err(refusal::canceled(id)),
                "no_frame" => return Err(refusal::no_frame(id)),
                "bad_template" => {
                    return Err(corrupt("turn template without \"input\":null".into()));
                }
                "conflict" => fields.0 = Some(text(at(rest, 0)?)?),
                "too_many_retained" => return Err(retained_refusal(rest, &turn.retained)?),
                other => return Err(corrupt(format!("chain_append replied {other:?}"))),
            }
        }
        Err(RedisFailure::AppendContention {
            chain: id,
            tries: APPEND_TRIES,
        }
        .into())
    }

    pub(super) async fn fork_chain_impl(
        &self,
        id: ChainId,
        fork: ChainFork,
        now: Millis,
    ) -> Result<(), QueueError> {
        let k = &self.keys;
        // The source's seed never changes, so the appended turns' seeds can be derived first.
        let seed: Option<String> = redis::cmd("HGET")
            .arg(k.chain(id))
            .arg("seed")
            .query_async(&mut self.conn())
            .await
            .map_err(super::reply::backend)?;
        let seed: u64 = seed
            .ok_or(QueueError::ChainNotFound(id))?
            .parse()
            .map_err(|_| corrupt(format!("chain {id}: bad seed")))?;
        let mut inv = SCRIPTS.chain_fork.prepare_invoke();
        inv.key(k.chain(id))
            .key(k.chain(fork.new_id))
            .arg(k.prefix())
            .arg(fork.new_id.to_string())
            .arg(fork.from_turn)
            .arg(now)
            .arg(self.retention_s())
            .arg(MAX_CHAIN_TURNS)
            .arg(self.cutoff(now))
            .arg(fork.retained.chains)
            .arg(fork.retained.turns)
            .arg(self.maxlen())
            .arg(policy::millis(self.cfg.queue.affinity_delay))
            .arg(fork.turns.len());
        for (number, t) in (fork.from_turn + 1..).zip(&fork.turns) {
            let mut spec = t.spec.clone();
            spec.seed = t.seed.unwrap_or_else(|| turn_seed(seed, number));
            chain::check_template(&spec, number as usize)?;
            inv.arg(t.job_id.to_string()).arg(to_json(&spec)?);
        }
        let reply = self.run(&inv).await?;
        let (tag, rest) = tagged(&reply)?;
        match tag.as_str() {
            "forked" => Ok(()),
            "not_found" => Err(QueueError::ChainNotFound(id)),
            "exists" => Err(refusal::exists(fork.new_id)),
            "range" => Err(refusal::out_of_range(&text(at(rest, 0)?)?, fork.from_turn)),
            "not_succeeded" => {
                let state = text(at(rest, 0)?)?;
                Err(refusal::not_succeeded(
                    fork.from_turn,
                    Some(state.as_str()).filter(|s| !s.is_empty()),
                ))
            }
            "too_long" => Err(refusal::too_long(fork.from_turn, fork.turns.len())),
            "bad_template" => Err(corrupt("turn template without \"input\":null".into())),
            "too_many_retained" => Err(retained_refusal(rest, &fork.retained)?),
            other => Err(corrupt(format!("chain_fork replied {other:?}"))),
        }
    }

    pub(super) async fn cancel_chain_impl(
        &self,
        id: ChainId,
        now: Millis,
    ) -> Result<CancelOutcome, QueueError> {
        let mut inv = SCRIPTS.chain_cancel.prepare_invoke();
        inv.key(self.keys.chain(id))
            .key(self.keys.delay())
            .arg(self.keys.prefix())
            .arg(now)
            .arg(self.retention_s())
            .arg(self.maxlen());
        let reply = self.run(&inv).await?;
        match tagged(&reply)?.0.as_str() {
            "canceled" => Ok(CancelOutcome::Canceled),
            "requested" => Ok(CancelOutcome::CancellationRequested),
            "already" => Ok(CancelOutcome::AlreadyCompleted),
            "not_found" => Ok(CancelOutcome::NotFound),
            other => Err(corrupt(format!("chain_cancel replied {other:?}"))),
        }
    }
}
