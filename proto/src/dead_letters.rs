//! Dead letters for operators (docs/queue-protocol.md §Admin actions): the jobs the reaper gave
//! up on (`dead`, after `policy::MAX_CRASHES` crashes), listed, re-queued as a new job with the
//! same tenant, spec and priority, or dismissed. Terminal states never change: a re-queue
//! creates a job and records it on the dead one.

use serde::{Deserialize, Serialize};

use crate::job::{JobId, Millis};

/// One entry of the dead-letter stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeadLetter {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub job_id: JobId,
    /// Why it died (`crashed`).
    pub reason: String,
    pub crashes: u32,
    pub attempts: u32,
    /// When it was dead-lettered (ms since the epoch).
    pub at: Millis,
}

/// How a re-queue ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequeueOutcome {
    /// The new job, queued now.
    Requeued(JobId),
    /// No dead letter has that id (never dead, already re-queued or dismissed).
    NotFound,
    /// A chain turn: re-run it by appending a turn to its chain instead.
    ChainTurn,
}

/// How dismissing a dead letter ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DismissOutcome {
    Dismissed,
    NotFound,
}

/// Most dead letters one bulk call acts on.
pub const MAX_BULK: usize = 500;
/// Most dead-letter entries one bulk call examines (so a filter matching little stays bounded).
pub const BULK_SCAN: usize = 5 * MAX_BULK;

/// What a bulk action does to each matching dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkAction {
    /// As `JobQueue::requeue_dead` (chain turns are skipped).
    Requeue,
    /// As `JobQueue::dismiss_dead`.
    Dismiss,
}

impl BulkAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requeue => "requeue",
            Self::Dismiss => "dismiss",
        }
    }
}

/// Which dead letters a bulk action takes; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadFilter {
    pub tenant: Option<String>,
    /// Dead-lettered strictly before (ms since the epoch).
    pub older_than: Option<Millis>,
    /// Dead-lettered strictly after (ms since the epoch).
    pub newer_than: Option<Millis>,
}

/// What one bulk call did, oldest dead letter first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkOutcome {
    /// Each dead letter acted on, with its new job after a re-queue.
    pub affected: Vec<(JobId, Option<JobId>)>,
    /// Matching chain turns a re-queue left alone.
    pub skipped_chain_turns: Vec<JobId>,
    /// The last entry examined, when more may match after it: pass it back.
    pub next_cursor: Option<String>,
}
