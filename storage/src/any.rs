//! `AnyBlobStore`: the store chosen at run time (S3 when a bucket is configured, otherwise a
//! local directory), so coordinator and worker code is written once against one concrete type.

use std::path::PathBuf;

use bytes::Bytes;

use crate::{
    Blob, BlobStore, LocalStore, ObjectKey, ObjectMeta, PutOutcome, S3Config, S3Store, StorageError,
};

/// Which store to open.
#[derive(Debug, Clone)]
pub enum StorageConfig {
    S3(S3Config),
    Local { root: PathBuf },
}

/// One of the implementations, chosen at run time. Cloning is cheap.
#[derive(Debug, Clone)]
pub enum AnyBlobStore {
    S3(S3Store),
    Local(LocalStore),
}

impl AnyBlobStore {
    /// Builds the store and runs its start-up [`BlobStore::check`], so a missing bucket or an
    /// unwritable directory stops the service at start with an error that names it.
    pub async fn open(config: StorageConfig) -> Result<Self, StorageError> {
        let store = match config {
            StorageConfig::S3(config) => Self::S3(S3Store::connect(config).await?),
            StorageConfig::Local { root } => Self::Local(LocalStore::new(root)),
        };
        store.check().await?;
        tracing::info!(store = %store.describe(), "blob store ready");
        Ok(store)
    }

    /// Whether `presigned_get` gives URLs (S3) or the coordinator must serve bytes (local).
    pub fn serves_presigned_urls(&self) -> bool {
        matches!(self, Self::S3(_))
    }
}

impl From<S3Store> for AnyBlobStore {
    fn from(store: S3Store) -> Self {
        Self::S3(store)
    }
}

impl From<LocalStore> for AnyBlobStore {
    fn from(store: LocalStore) -> Self {
        Self::Local(store)
    }
}

/// Forwards a call to whichever store this is.
macro_rules! dispatch {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyBlobStore::S3($store) => $call,
            AnyBlobStore::Local($store) => $call,
        }
    };
}

impl BlobStore for AnyBlobStore {
    fn describe(&self) -> String {
        dispatch!(self, s => s.describe())
    }

    async fn check(&self) -> Result<(), StorageError> {
        dispatch!(self, s => s.check().await)
    }

    async fn put(
        &self,
        key: &ObjectKey,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<(), StorageError> {
        dispatch!(self, s => s.put(key, bytes, content_type).await)
    }

    async fn put_if_absent(
        &self,
        key: &ObjectKey,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<PutOutcome, StorageError> {
        dispatch!(self, s => s.put_if_absent(key, bytes, content_type).await)
    }

    async fn get(&self, key: &ObjectKey) -> Result<Blob, StorageError> {
        dispatch!(self, s => s.get(key).await)
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError> {
        dispatch!(self, s => s.head(key).await)
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        dispatch!(self, s => s.delete(key).await)
    }

    async fn presigned_get(&self, key: &ObjectKey) -> Result<Option<String>, StorageError> {
        dispatch!(self, s => s.presigned_get(key).await)
    }
}
