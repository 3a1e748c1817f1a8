//! `StorageError`: the one error type of the storage seam. Not-found is its own variant so
//! callers can tell "no such object" from "the store is broken"; S3 errors keep the SDK error
//! as their source and say whether a retry may help.

use std::path::PathBuf;

use crate::keys::KeyError;

/// The SDK's errors are generic over the operation; boxing keeps one variant for all of them.
pub use kontext_proto::BoxError;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The object does not exist (S3 `NoSuchKey` / 404, or no file in the local store).
    #[error("object {key:?} not found")]
    NotFound { key: String },

    #[error(transparent)]
    InvalidKey(#[from] KeyError),

    /// Bad configuration, found before any request is made.
    #[error("storage configuration: {field}: {reason}")]
    Config { field: &'static str, reason: String },

    /// The start-up check failed: the bucket is missing, unreachable or refuses our credentials.
    #[error("S3 bucket {bucket:?} at {endpoint} is not usable: {detail}")]
    BucketUnavailable {
        bucket: String,
        endpoint: String,
        detail: String,
        #[source]
        source: Option<BoxError>,
    },

    /// An S3 request failed. `detail` is the SDK's full error chain (its `Display` alone only
    /// says "service error"); `transient` is true for timeouts, connection failures, throttling
    /// and 5xx answers.
    #[error("S3 {op} of {key:?} in bucket {bucket:?} failed: {detail}")]
    S3 {
        op: &'static str,
        bucket: String,
        key: String,
        detail: String,
        transient: bool,
        #[source]
        source: BoxError,
    },

    /// A local-directory operation failed.
    #[error("local storage: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StorageError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    /// Whether retrying the same call later may succeed. A worker maps this to a transient job
    /// error (retried with backoff) rather than a fatal one.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::S3 { transient, .. } => *transient,
            Self::BucketUnavailable { .. } => true,
            Self::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
            ),
            Self::NotFound { .. } | Self::InvalidKey(_) | Self::Config { .. } => false,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
