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
