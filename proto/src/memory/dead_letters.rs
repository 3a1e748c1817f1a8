//! Dead letters in the embedded queue, mirroring `dead_read.lua`, `dead_requeue.lua` and
//! `dead_dismiss.lua` (docs/queue-protocol.md §Admin actions).

use super::State;
use crate::dead_letters::{DeadLetter, DismissOutcome, RequeueOutcome};
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
            .filter_map(|id| self.get(*id))
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
        let Some(at) = self.dead_letters.iter().position(|d| *d == id) else {
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
        match self.dead_letters.iter().position(|d| *d == id) {
            Some(at) => {
                self.dead_letters.remove(at);
                DismissOutcome::Dismissed
            }
            None => DismissOutcome::NotFound,
        }
    }
}
