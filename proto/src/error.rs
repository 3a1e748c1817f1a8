//! Error kinds carried on the wire. The kind, not the message, decides whether a job is retried.

use serde::{Deserialize, Serialize};

/// Why a job attempt ended without a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
