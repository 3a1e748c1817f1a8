//! Dead letters in the embedded queue, mirroring `dead_read.lua`, `dead_requeue.lua`,
//! `dead_dismiss.lua` and `dead_bulk.lua` (docs/queue-protocol.md §Admin actions).

use super::State;
use crate::dead_letters::{
    BULK_SCAN, BulkAction, BulkOutcome, DeadFilter, DeadLetter, DismissOutcome, MAX_BULK,
    RequeueOutcome,
};
use crate::error::QueueError;
use crate::job::{JobId, Millis};
use crate::queue::{RetainedLimits, Submission};

impl State {
    /// The newest `limit` dead letters, newest first.
    pub(crate) fn dead_letter_list(&self, limit: usize) -> Vec<DeadLetter> {
        self.dead_letters
            .iter()
            .rev()
            .take(limit)
            .filter_map(|(_, id)| self.get(*id))
            .map(|job| DeadLetter {
                job_id: job.id,
                reason: "crashed".into(),
                crashes: job.crashes,
                attempts: job.attempts,
                at: job.finished_at.unwrap_or(job.created_at),
            })
            .collect()
    }

    /// Re-queue dead letter `id` as job `new_id` (same tenant, spec and priority; no quota
    /// checks: an operator's action).
    pub(crate) fn requeue_dead(
        &mut self,
        id: JobId,
        new_id: JobId,
        now: Millis,
    ) -> Result<RequeueOutcome, QueueError> {
        let Some(at) = self.dead_letters.iter().position(|(_, d)| *d == id) else {
            return Ok(RequeueOutcome::NotFound);
        };
        let Some(job) = self.get(id) else {
            return Ok(RequeueOutcome::NotFound);
        };
        if job.chain.is_some() {
            return Ok(RequeueOutcome::ChainTurn);
        }
        let sub = Submission {
            tenant: job.tenant.clone(),
            spec: job.spec.clone(),
            idempotency_key: None,
            body_hash: String::new(),
            max_in_flight: 0,
            retained: RetainedLimits::default(),
            chain: None,
        };
        self.submit(sub, new_id, now)?;
        self.dead_letters.remove(at);
        Ok(RequeueOutcome::Requeued(new_id))
    }

    /// Remove dead letter `id` from the list (its record stays until retention ends).
    pub(crate) fn dismiss_dead(&mut self, id: JobId) -> DismissOutcome {
        match self.dead_letters.iter().position(|(_, d)| *d == id) {
            Some(at) => {
                self.dead_letters.remove(at);
                DismissOutcome::Dismissed
            }
            None => DismissOutcome::NotFound,
        }
    }

    /// Re-queue or dismiss the dead letters matching `filter` after `cursor` (dead_bulk.lua);
    /// the caller audits what it returns.
    pub(crate) fn bulk_dead(
        &mut self,
        action: BulkAction,
        filter: &DeadFilter,
        cursor: Option<&str>,
        now: Millis,
    ) -> Result<BulkOutcome, QueueError> {
        let after: u64 = match cursor {
            None => 0,
            Some(c) => crate::queue::is_event_cursor(c)
                .then(|| c.split('-').next().and_then(|n| n.parse().ok()))
                .flatten()
                .ok_or_else(|| QueueError::InvalidCursor(c.to_owned()))?,
        };
        let entries: Vec<(u64, JobId)> = self
            .dead_letters
            .iter()
            .filter(|(seq, _)| *seq > after)
            .take(BULK_SCAN)
            .copied()
            .collect();
        let mut out = BulkOutcome {
            affected: Vec::new(),
            skipped_chain_turns: Vec::new(),
            next_cursor: None,
        };
        let mut last = None;
        for (i, (_, id)) in entries.iter().enumerate() {
            last = Some(i);
            let Some(job) = self.get(*id) else {
                continue;
            };
            let at = job.finished_at.unwrap_or(job.created_at);
            if filter.older_than.is_some_and(|t| at >= t)
                || filter.newer_than.is_some_and(|t| at <= t)
                || filter.tenant.as_ref().is_some_and(|t| *t != job.tenant)
            {
                continue;
            }
            match action {
                BulkAction::Dismiss => {
                    self.dismiss_dead(*id);
                    out.affected.push((*id, None));
                }
                BulkAction::Requeue => match self.requeue_dead(*id, JobId::new(), now)? {
                    RequeueOutcome::Requeued(new) => out.affected.push((*id, Some(new))),
                    RequeueOutcome::ChainTurn => out.skipped_chain_turns.push(*id),
                    RequeueOutcome::NotFound => {}
                },
            }
            if out.affected.len() >= MAX_BULK {
                break;
            }
        }
        let exhausted = entries.len() < BULK_SCAN;
        out.next_cursor = last
            .filter(|&i| !(exhausted && i + 1 == entries.len()))
            .map(|i| entries[i].0.to_string());
        Ok(out)
    }
}
