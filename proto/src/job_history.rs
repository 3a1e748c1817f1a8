//! A job's history for operators (docs/queue-protocol.md §Job history): one entry per
//! transition that involves a worker or a cancel — each claim, and how each attempt ended
//! (released, lease lost, failed, succeeded) — appended by the transition itself (the Lua script
//! on Redis, in the same step), at most `HISTORY_MAXLEN` kept, expiring with the job.
//!
//! An attempt's timings are its claim and end times and the engine time; the committing attempt's
//! stages travel with its result (`JobResult::stages`).

use serde::{Deserialize, Serialize};

use crate::error::JobError;
use crate::job::{JobRecord, JobStatus, Millis};

/// Entries one job's history keeps (the oldest go first).
pub const HISTORY_MAXLEN: usize = 100;

/// One transition of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum HistoryEntry {
    /// `worker` claimed the job: attempt `attempt`, fenced by `epoch`.
    Claimed {
        at: Millis,
        worker: String,
        epoch: u64,
        attempt: u32,
    },
    /// The worker gave the job back (graceful drain; the attempt does not count): `queued`
    /// again, or `canceled` when a cancel was pending.
    Released {
        at: Millis,
        worker: String,
        epoch: u64,
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        outcome: JobStatus,
    },
    /// The lease expired (a crash, presumed): `queued` again, `dead` (too many crashes), or
    /// `canceled` when a cancel was pending.
    LeaseLost {
        at: Millis,
        worker: String,
        epoch: u64,
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        outcome: JobStatus,
    },
    /// The attempt failed: `queued` with `retry_at` when it will run again, otherwise the
    /// terminal state it ended in.
    Failed {
        at: Millis,
        worker: String,
        epoch: u64,
        error: JobError,
        retry_at: Option<Millis>,
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        outcome: JobStatus,
    },
    /// The attempt committed its result; `engine_ms` as the worker measured it.
    Succeeded {
        at: Millis,
        worker: String,
        epoch: u64,
        engine_ms: u64,
    },
    /// Canceled while queued (by its tenant, its chain's cancel or an operator).
    Canceled { at: Millis },
    /// A cancel was requested while it ran; the worker stops at its next step.
    CancelRequested { at: Millis },
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AttemptEnd {
    Released,
    LeaseLost,
    Failed,
    Succeeded,
}

/// One claim of a job and how it ended, from its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attempt {
    /// The attempt number counted at the claim (a release does not count, so it may repeat).
    pub attempt: Option<u32>,
    pub epoch: u64,
    pub worker: String,
    /// `None` when the claim entry was trimmed from the history.
    pub claimed_at: Option<Millis>,
    /// `None` while it runs.
    pub ended_at: Option<Millis>,
    pub ended: Option<AttemptEnd>,
    /// What followed: `queued` (retry, re-queue) or the terminal state.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub outcome: Option<JobStatus>,
    pub error: Option<JobError>,
    /// When a failed attempt's retry becomes claimable.
    pub retry_at: Option<Millis>,
    /// Engine time of a committed attempt.
    pub engine_ms: Option<u64>,
    /// Claim to end, as the queue saw it.
    pub wall_ms: Option<u64>,
}

/// A job with its history, as `JobQueue::job_history` reads them (in one step on Redis).
#[derive(Debug, Clone, PartialEq)]
pub struct JobHistory {
    pub record: JobRecord,
    /// Oldest first.
    pub entries: Vec<HistoryEntry>,
}

/// The attempts in `entries` (oldest first): each claim opens one, and the next end entry of
/// the same epoch closes it. An end whose claim was trimmed away is an attempt of its own.
pub fn attempts_of(entries: &[HistoryEntry]) -> Vec<Attempt> {
    let mut out: Vec<Attempt> = Vec::new();
    for entry in entries {
        let (at, worker, epoch, end) = match entry {
            HistoryEntry::Claimed {
                at,
                worker,
                epoch,
                attempt,
            } => {
                out.push(Attempt {
                    attempt: Some(*attempt),
                    epoch: *epoch,
                    worker: worker.clone(),
                    claimed_at: Some(*at),
                    ended_at: None,
                    ended: None,
                    outcome: None,
                    error: None,
                    retry_at: None,
                    engine_ms: None,
                    wall_ms: None,
                });
                continue;
            }
            HistoryEntry::Released {
                at, worker, epoch, ..
            } => (at, worker, epoch, AttemptEnd::Released),
            HistoryEntry::LeaseLost {
                at, worker, epoch, ..
            } => (at, worker, epoch, AttemptEnd::LeaseLost),
            HistoryEntry::Failed {
                at, worker, epoch, ..
            } => (at, worker, epoch, AttemptEnd::Failed),
            HistoryEntry::Succeeded {
                at, worker, epoch, ..
            } => (at, worker, epoch, AttemptEnd::Succeeded),
            HistoryEntry::Canceled { .. } | HistoryEntry::CancelRequested { .. } => continue,
        };
        let open = out
            .iter()
            .rposition(|a| a.epoch == *epoch && a.ended.is_none());
        let i = match open {
            Some(i) => i,
            None => {
                out.push(Attempt {
                    attempt: None,
                    epoch: *epoch,
                    worker: worker.clone(),
                    claimed_at: None,
                    ended_at: None,
                    ended: None,
                    outcome: None,
                    error: None,
                    retry_at: None,
                    engine_ms: None,
                    wall_ms: None,
                });
                out.len() - 1
            }
        };
        let a = &mut out[i];
        a.ended_at = Some(*at);
        a.ended = Some(end);
        a.wall_ms = a.claimed_at.map(|c| at.saturating_sub(c));
        match entry {
            HistoryEntry::Released { outcome, .. } | HistoryEntry::LeaseLost { outcome, .. } => {
                a.outcome = Some(*outcome);
            }
            HistoryEntry::Failed {
                error,
                retry_at,
                outcome,
                ..
            } => {
                a.outcome = Some(*outcome);
                a.error = Some(error.clone());
                a.retry_at = *retry_at;
            }
            HistoryEntry::Succeeded { engine_ms, .. } => {
                a.outcome = Some(JobStatus::Succeeded);
                a.engine_ms = Some(*engine_ms);
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::JobErrorKind;

    fn claimed(at: Millis, epoch: u64, attempt: u32) -> HistoryEntry {
        HistoryEntry::Claimed {
            at,
            worker: format!("w{epoch}"),
            epoch,
            attempt,
        }
    }

    #[test]
    fn each_claim_is_an_attempt_closed_by_its_end() {
        let err = JobError::new(JobErrorKind::Transient, "oom");
        let history = vec![
            claimed(10, 1, 1),
            HistoryEntry::LeaseLost {
                at: 40,
                worker: "w1".into(),
                epoch: 1,
                outcome: JobStatus::Queued,
            },
            claimed(50, 3, 2),
            HistoryEntry::Failed {
                at: 60,
                worker: "w3".into(),
                epoch: 3,
                error: err.clone(),
                retry_at: Some(100),
                outcome: JobStatus::Queued,
            },
            HistoryEntry::CancelRequested { at: 70 },
            claimed(100, 5, 3),
            HistoryEntry::Succeeded {
                at: 130,
                worker: "w5".into(),
                epoch: 5,
                engine_ms: 25,
            },
            claimed(200, 7, 4),
        ];
        let a = attempts_of(&history);
        assert_eq!(a.len(), 4);
        assert_eq!(
            (a[0].ended, a[0].outcome, a[0].wall_ms),
            (
                Some(AttemptEnd::LeaseLost),
                Some(JobStatus::Queued),
                Some(30)
            )
        );
        assert_eq!((a[1].error.clone(), a[1].retry_at), (Some(err), Some(100)));
        assert_eq!(
            (a[2].ended, a[2].engine_ms, a[2].worker.as_str()),
            (Some(AttemptEnd::Succeeded), Some(25), "w5")
        );
        assert_eq!((a[3].ended, a[3].ended_at), (None, None), "still running");
    }

    #[test]
    fn an_end_without_its_claim_is_an_attempt_of_its_own() {
        let history = vec![HistoryEntry::Released {
            at: 9,
            worker: "w".into(),
            epoch: 4,
            outcome: JobStatus::Queued,
        }];
        let a = attempts_of(&history);
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].claimed_at, a[0].wall_ms), (None, None));
        assert_eq!(a[0].ended, Some(AttemptEnd::Released));
    }

    #[test]
    fn entries_read_back_from_the_json_the_scripts_write() {
        // prelude.lua `history_entry` writes fields in this shape.
        let json = r#"{"event":"failed","at":5,"worker":"w","epoch":2,
            "error":{"kind":"fatal","message":"x"},"retry_at":null,"outcome":"failed"}"#;
        let e: HistoryEntry = serde_json::from_str(json).expect("entry");
        assert!(matches!(e, HistoryEntry::Failed { retry_at: None, .. }));
    }
}
