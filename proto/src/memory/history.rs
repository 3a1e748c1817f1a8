//! Job history in the embedded queue, mirroring prelude.lua `note_history` as claim.lua,
//! complete.lua, fail.lua, release.lua, reap.lua, cancel.lua and chain_cancel.lua call it
//! (docs/queue-protocol.md §Job history): each transition appends its entry in the same step.

use super::State;
use crate::error::JobError;
use crate::job::{JobId, JobStatus, Millis};
use crate::job_history::{HISTORY_MAXLEN, HistoryEntry, JobHistory};
use crate::policy::RetryDecision;

/// How an attempt ended, as a transition reports it (the entry takes the worker from the job).
pub(super) enum Ended {
    Released(JobStatus),
    LeaseLost(JobStatus),
    Failed {
        error: JobError,
        retry_at: Option<Millis>,
        outcome: JobStatus,
    },
    Succeeded {
        engine_ms: u64,
    },
}

impl Ended {
    /// A failure and what the retry decision and a pending cancel make of it (fail.lua).
    pub(super) fn failed(error: JobError, decision: RetryDecision, cancel: bool) -> Self {
        let (outcome, retry_at) = match decision {
            RetryDecision::Retry { at } if !cancel => (JobStatus::Queued, Some(at)),
            RetryDecision::Retry { .. } => (JobStatus::Canceled, None),
            RetryDecision::GiveUp { .. } if cancel => (JobStatus::Canceled, None),
            RetryDecision::GiveUp { status } => (status, None),
        };
        Self::Failed {
            error,
            retry_at,
            outcome,
        }
    }

    /// A lost lease: canceled when a cancel was pending, dead when poison, else re-queued
    /// (reap.lua).
    pub(super) fn lease_lost(cancel: bool, crashes: u32) -> Self {
        Self::LeaseLost(if cancel {
            JobStatus::Canceled
        } else if crate::policy::is_poison(crashes) {
            JobStatus::Dead
        } else {
            JobStatus::Queued
        })
    }
}

impl State {
    /// Appends `entry` to job `id`'s history, keeping the newest `HISTORY_MAXLEN`.
    pub(super) fn note(&mut self, id: JobId, entry: HistoryEntry) {
        if let Some(job) = self.jobs.get_mut(&id) {
            job.history.push_back(entry);
            while job.history.len() > HISTORY_MAXLEN {
                job.history.pop_front();
            }
        }
    }

    /// The claim that just started job `id` (its record holds the worker, epoch and attempt).
    pub(super) fn note_claimed(&mut self, id: JobId, now: Millis) {
        let Some(r) = self.jobs.get(&id).map(|j| &j.record) else {
            return;
        };
        let entry = HistoryEntry::Claimed {
            at: now,
            worker: r.worker.clone().unwrap_or_default(),
            epoch: r.epoch,
            attempt: r.attempts,
        };
        self.note(id, entry);
    }

    /// The end of the attempt of `epoch` on job `id`, by the worker its record still names.
    pub(super) fn note_ended(&mut self, id: JobId, epoch: u64, ended: Ended, now: Millis) {
        let worker = self
            .jobs
            .get(&id)
            .and_then(|j| j.record.worker.clone())
            .unwrap_or_default();
        let at = now;
        let entry = match ended {
            Ended::Released(outcome) => HistoryEntry::Released {
                at,
                worker,
                epoch,
                outcome,
            },
            Ended::LeaseLost(outcome) => HistoryEntry::LeaseLost {
                at,
                worker,
                epoch,
                outcome,
            },
            Ended::Failed {
                error,
                retry_at,
                outcome,
            } => HistoryEntry::Failed {
                at,
                worker,
                epoch,
                error,
                retry_at,
                outcome,
            },
            Ended::Succeeded { engine_ms } => HistoryEntry::Succeeded {
                at,
                worker,
                epoch,
                engine_ms,
            },
        };
        self.note(id, entry);
    }

    /// A job and its history (job_history.lua).
    pub(crate) fn job_history(&self, id: JobId) -> Option<JobHistory> {
        self.jobs.get(&id).map(|j| JobHistory {
            record: j.record.clone(),
            entries: j.history.iter().cloned().collect(),
        })
    }
}
