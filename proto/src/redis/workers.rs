//! The operators' reads on Redis. The worker registry (docs/queue-protocol.md §Worker registry):
//! `worker_beat.lua` writes a worker's record with its TTL and indexes it by expiry;
//! `worker_list.lua` reads the records that have not expired at the caller's `now`. Usage
//! (`crate::usage`, written by `complete.lua`): `usage_read.lua` reads a range of days.

use std::time::Duration;

use super::RedisQueue;
use super::reply::{array, int, tagged, text};
use super::scripts::SCRIPTS;
use crate::dead_letters::{DeadLetter, DismissOutcome, RequeueOutcome};
use crate::error::QueueError;
use crate::job::{JobId, Millis};
use crate::policy;
use crate::usage::{MAX_USAGE_DAYS, UsageRow, day_name};
use crate::workers::{
    AUDIT_MAXLEN, AuditEntry, Beat, DRAIN_REQUEST_TTL_S, DrainOutcome, UNKNOWN_ACTOR, WorkerInfo,
};

impl RedisQueue {
    pub(super) async fn register_worker_impl(
        &self,
        info: &WorkerInfo,
        ttl: Duration,
        now: Millis,
    ) -> Result<Beat, QueueError> {
        let k = &self.keys;
        let record = serde_json::to_string(info)
            .map_err(|e| QueueError::Corrupt(format!("worker record: {e}")))?;
        let ttl_ms = policy::millis(ttl).max(1);
        let mut inv = SCRIPTS.worker_beat.prepare_invoke();
        inv.key(k.workers())
            .key(k.worker_info(&info.id))
            .key(k.worker_drain(&info.id))
            .arg(&info.id)
            .arg(record)
            .arg(now.saturating_add(ttl_ms))
            .arg(ttl_ms)
            .arg(now);
        let reply = self.run(&inv).await?;
        Ok(Beat {
            drain_requested: int(&reply)? == 1,
        })
    }

    pub(super) async fn request_drain_impl(
        &self,
        worker: &str,
        actor: &str,
        now: Millis,
    ) -> Result<DrainOutcome, QueueError> {
        let k = &self.keys;
        let mut inv = SCRIPTS.worker_drain.prepare_invoke();
        inv.key(k.workers())
            .key(k.worker_drain(worker))
            .key(k.audit())
            .arg(worker)
            .arg(now)
            .arg(DRAIN_REQUEST_TTL_S)
            .arg(AUDIT_MAXLEN)
            .arg(actor);
        let reply = self.run(&inv).await?;
        match tagged(&reply)?.0.as_str() {
            "requested" => Ok(DrainOutcome::Requested),
            _ => Ok(DrainOutcome::NotFound),
        }
    }

    pub(super) async fn audit_log_impl(&self, limit: usize) -> Result<Vec<AuditEntry>, QueueError> {
        let mut inv = SCRIPTS.audit_read.prepare_invoke();
        inv.key(self.keys.audit()).arg(limit.clamp(1, AUDIT_MAXLEN));
        let reply = self.run(&inv).await?;
        array(&reply)?
            .iter()
            .map(|e| {
                let f = array(e)?;
                let [at, action, target, actor] = f else {
                    return Err(QueueError::Corrupt("audit entry".into()));
                };
                Ok(AuditEntry {
                    at: text(at)?
                        .parse()
                        .map_err(|_| QueueError::Corrupt("audit time".into()))?,
                    action: text(action)?,
                    target: text(target)?,
                    actor: Some(text(actor)?)
                        .filter(|a| !a.is_empty())
                        .unwrap_or_else(|| UNKNOWN_ACTOR.to_owned()),
                })
            })
            .collect()
    }

    pub(super) async fn workers_impl(&self, now: Millis) -> Result<Vec<WorkerInfo>, QueueError> {
        let mut inv = SCRIPTS.worker_list.prepare_invoke();
        inv.key(self.keys.workers())
            .arg(self.keys.prefix())
            .arg(now);
        let reply = self.run(&inv).await?;
        let mut out = array(&reply)?
            .iter()
            .map(|v| {
                let json = text(v)?;
                serde_json::from_str::<WorkerInfo>(&json)
                    .map_err(|e| QueueError::Corrupt(format!("worker record: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    pub(super) async fn usage_impl(
        &self,
        from_day: u32,
        to_day: u32,
    ) -> Result<Vec<UsageRow>, QueueError> {
        if to_day < from_day || to_day - from_day >= MAX_USAGE_DAYS {
            return Err(QueueError::Config(format!(
                "usage range {from_day}..={to_day}: at most {MAX_USAGE_DAYS} days, from ≤ to"
            )));
        }
        let mut inv = SCRIPTS.usage_read.prepare_invoke();
        inv.key(self.keys.usage(from_day))
            .arg(self.keys.prefix())
            .arg(from_day)
            .arg(to_day);
        let reply = self.run(&inv).await?;
        let flat = array(&reply)?;
        let mut rows: std::collections::BTreeMap<(u32, String), UsageRow> = Default::default();
        for triple in flat.chunks(3) {
            let [day, field, value] = triple else {
                return Err(QueueError::Corrupt("usage reply is not in threes".into()));
            };
            let day: u32 = text(day)?
                .parse()
                .map_err(|_| QueueError::Corrupt("usage day".into()))?;
            let field = text(field)?;
            let value = u64::try_from(int(value)?).unwrap_or(0);
            let Some((what, tenant)) = field.split_once('|') else {
                continue;
            };
            let row = rows
                .entry((day, tenant.to_owned()))
                .or_insert_with(|| UsageRow {
                    day: day_name(day),
                    tenant: tenant.to_owned(),
                    ..UsageRow::default()
                });
            match what {
                "engine_ms" => row.engine_ms = value,
                "images" => row.images = value,
                "steps" => row.steps = value,
                _ => {}
            }
        }
        Ok(rows.into_values().collect())
    }

    pub(super) async fn dead_letters_impl(
        &self,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        let mut inv = SCRIPTS.dead_read.prepare_invoke();
        inv.key(self.keys.dead_letters()).arg(limit.max(1));
        let reply = self.run(&inv).await?;
        let corrupt = |what: &str| QueueError::Corrupt(format!("dead letter {what}"));
        array(&reply)?
            .iter()
            .map(|e| {
                let f = array(e)?;
                let [jid, reason, crashes, attempts, at] = f else {
                    return Err(corrupt("entry"));
                };
                Ok(DeadLetter {
                    job_id: text(jid)?.parse().map_err(|_| corrupt("id"))?,
                    reason: text(reason)?,
                    crashes: text(crashes)?.parse().map_err(|_| corrupt("crashes"))?,
                    attempts: text(attempts)?.parse().map_err(|_| corrupt("attempts"))?,
                    at: text(at)?.parse().map_err(|_| corrupt("time"))?,
                })
            })
            .collect()
    }

    pub(super) async fn requeue_dead_impl(
        &self,
        id: JobId,
        new_id: JobId,
        actor: &str,
        now: Millis,
    ) -> Result<RequeueOutcome, QueueError> {
        let k = &self.keys;
        let mut inv = SCRIPTS.dead_requeue.prepare_invoke();
        inv.key(k.job(id))
            .key(k.job(new_id))
            .key(k.dead_letters())
            .key(k.audit())
            .arg(k.prefix())
            .arg(id.to_string())
            .arg(new_id.to_string())
            .arg(now)
            .arg(self.maxlen())
            .arg(AUDIT_MAXLEN)
            .arg(actor);
        let reply = self.run(&inv).await?;
        Ok(match tagged(&reply)?.0.as_str() {
            "requeued" => RequeueOutcome::Requeued(new_id),
            "chain_turn" => RequeueOutcome::ChainTurn,
            _ => RequeueOutcome::NotFound,
        })
    }

    pub(super) async fn dismiss_dead_impl(
        &self,
        id: JobId,
        actor: &str,
        now: Millis,
    ) -> Result<DismissOutcome, QueueError> {
        let k = &self.keys;
        let mut inv = SCRIPTS.dead_dismiss.prepare_invoke();
        inv.key(k.job(id))
            .key(k.dead_letters())
            .key(k.audit())
            .arg(id.to_string())
            .arg(now)
            .arg(AUDIT_MAXLEN)
            .arg(actor);
        let reply = self.run(&inv).await?;
        Ok(match tagged(&reply)?.0.as_str() {
            "dismissed" => DismissOutcome::Dismissed,
            _ => DismissOutcome::NotFound,
        })
    }
}
