//! kontext-storage: the `BlobStore` seam between our services and object storage.
//!
//! Two implementations pass one conformance suite (`conformance`, feature "conformance"):
//! - [`S3Store`]: any S3-compatible store through aws-sdk-s3 (custom endpoint, path-style,
//!   presigned GETs); what operators run.
//! - [`LocalStore`]: a local directory with atomic writes; the embedded default, where the
//!   coordinator serves object bytes itself because there is nothing to presign.
//!
//! [`AnyBlobStore`] picks one at run time from a [`StorageConfig`].
//!
//! What this crate owns: the key layout (`keys`: content-addressed inputs, attempt-scoped
//! outputs, tenant prefixes), object bytes and content types. What it must not do: decide
//! which attempt is the job's result. A worker writes its output under its own attempt's key and
//! the queue's commit points the job at it, so a stale attempt can never replace a committed one.

use std::future::Future;

use bytes::Bytes;

mod any;
#[cfg(feature = "cli")]
mod args;
#[cfg(feature = "conformance")]
pub mod conformance;
mod error;
pub mod keys;
mod local;
mod s3;

pub use any::{AnyBlobStore, StorageConfig};
#[cfg(feature = "cli")]
pub use args::StorageArgs;
pub use error::{BoxError, StorageError};
pub use keys::{KeyError, ObjectKey, ObjectKeyError};
pub use local::LocalStore;
pub use s3::{MAX_PRESIGN_TTL, S3Config, S3Store};

/// Size and content type of a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size: u64,
    pub content_type: String,
}

/// An object's bytes with the content type it was stored with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub bytes: Bytes,
    pub content_type: String,
}

/// What `put_if_absent` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object did not exist and now holds the given bytes.
    Created,
    /// An object was already stored under the key; it was left as it was.
    AlreadyExists,
}

/// Content type stored when an object's recorded type is unavailable.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Object storage as the coordinator and worker use it. Futures are `Send` so handlers and the
/// worker's upload task can await them on any runtime thread.
pub trait BlobStore: Send + Sync {
    /// A short description for logs, e.g. `s3://bucket at http://host:port` or `dir /data`.
    fn describe(&self) -> String;

    /// Start-up check: S3 checks the bucket (optionally creating it); the local store creates its
    /// directory and checks that it can write there. Call before serving.
    fn check(&self) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Stores `bytes` under `key`, replacing any existing object. Readers see either the old or
    /// the new object, never a partial one.
    fn put(
        &self,
        key: &ObjectKey,
        bytes: Bytes,
        content_type: &str,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Stores `bytes` unless an object already exists under `key`. Meant for content-addressed
    /// keys, where an existing object already holds the same bytes.
    fn put_if_absent(
        &self,
        key: &ObjectKey,
        bytes: Bytes,
        content_type: &str,
    ) -> impl Future<Output = Result<PutOutcome, StorageError>> + Send;

    /// The object's bytes; [`StorageError::NotFound`] when there is none.
    fn get(&self, key: &ObjectKey) -> impl Future<Output = Result<Blob, StorageError>> + Send;

    /// The object's size and content type; `None` when there is no such object.
    fn head(
        &self,
        key: &ObjectKey,
    ) -> impl Future<Output = Result<Option<ObjectMeta>, StorageError>> + Send;

    /// Removes the object. Removing a missing object succeeds (as in S3).
    fn delete(&self, key: &ObjectKey) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// A URL that lets anyone holding it GET the object until the configured TTL runs out.
    /// `None` when the store has no such URLs (local directory): the coordinator then serves the
    /// bytes itself.
    fn presigned_get(
        &self,
        key: &ObjectKey,
    ) -> impl Future<Output = Result<Option<String>, StorageError>> + Send;
}
