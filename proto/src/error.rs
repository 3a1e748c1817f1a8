//! Errors: the kinds carried on the wire with a failed job (the kind, not the message, decides
//! whether a job is retried), and `QueueError`, what a `JobQueue` call can fail with.

use serde::{Deserialize, Serialize};

use crate::ids::{ChainId, JobId};

/// The source of a backend failure: the client library's error, or a typed error of ours.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a job attempt ended without a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobErrorKind {
    /// The input cannot work (undecodable image, impossible size): never retried.
    InvalidInput,
    /// Might work on another attempt (storage hiccup, CUDA OOM, lost connection): retried with backoff.
    Transient,
    /// Will not work again (engine bug, corrupted weights): not retried.
    Fatal,
    /// The user canceled the job: not retried, ends in `canceled`.
    Canceled,
}

impl JobErrorKind {
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Transient)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidInput => "invalid_input",
            Self::Transient => "transient",
            Self::Fatal => "fatal",
            Self::Canceled => "canceled",
        }
    }
}

/// An error attached to a job record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[error("{kind:?}: {message}")]
pub struct JobError {
    pub kind: JobErrorKind,
    pub message: String,
}

impl JobError {
    pub fn new(kind: JobErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("job {0} not found")]
    NotFound(JobId),
    #[error("the lease on job {0} is stale: the job was re-queued or re-claimed")]
    Stale(JobId),
    #[error("Idempotency-Key was used before with a different request body")]
    IdempotencyConflict,
    #[error("tenant has {in_flight} jobs in flight; the limit is {limit}")]
    TooManyInFlight { in_flight: u64, limit: u32 },
    /// Accepting would take the tenant past a `RetainedLimits` field: `retained` are held now,
    /// `adding` more were asked for.
    #[error("tenant holds {retained} {kind} and asked for {adding} more; the limit is {limit}")]
    TooManyRetained {
        kind: crate::queue::RetainedKind,
        retained: u64,
        adding: u64,
        limit: u32,
    },
    /// A list or event cursor that no earlier call returned.
    #[error("invalid cursor {0:?}")]
    InvalidCursor(String),
    #[error("chain {0} not found")]
    ChainNotFound(ChainId),
    /// The chain's state does not allow the request (appending to a canceled chain, forking
    /// from a turn that did not succeed); the message says why.
    #[error("{0}")]
    ChainConflict(String),
    /// The backend failed or did not answer in time (a retry may succeed).
    #[error("queue backend: {0}")]
    Backend(#[source] BoxError),
    #[error("queue configuration: {0}")]
    Config(String),
    /// A bounded resource of this process is in use to its limit (blocking Redis connections
    /// held by event followers and `Prefer: wait` requests); retry shortly.
    #[error("all {limit} {what} are in use; retry shortly")]
    Saturated { what: &'static str, limit: usize },
    #[error("corrupt record: {0}")]
    Corrupt(String),
}
