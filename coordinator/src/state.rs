//! `AppState`: what every handler and background task shares (config, queue, store, metrics,
//! the shutdown signal), and the few operations several routes need: find a job for a tenant,
//! sign its result URL, render it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kontext_proto::{AnyQueue, JobId, JobQueue, JobRecord, JobStatus, Millis};
use kontext_storage::{AnyBlobStore, BlobStore, ObjectKey};
use tokio::sync::watch;

use crate::auth::Tenant;
use crate::auth_failures::AuthFailures;
use crate::config::Config;
use crate::http::error::ApiError;
use crate::http::views::{JobView, job_view};
use crate::metrics::Metrics;
use crate::signing;

/// The fleet's one wall clock, where the request paths have always imported it from.
pub use kontext_proto::clock::now_ms;

/// Shared state; cloning is cheap.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub queue: AnyQueue,
    pub store: AnyBlobStore,
    pub metrics: Metrics,
    /// Bounds concurrent image decodes (each may hold up to `max_input_pixels` × 16 bytes), so a
    /// burst of uploads cannot exhaust memory; one permit per CPU.
    pub decode_permits: tokio::sync::Semaphore,
    /// LoRA files received or fetched at once (`lora_input`).
    pub lora_permits: tokio::sync::Semaphore,
    /// Failed authentications per client.
    pub auth_failures: AuthFailures,
    /// Base of every URL we hand out, without a trailing slash.
    pub public_url: String,
    /// Flips to `true` when the server starts shutting down: long-lived responses (SSE,
    /// `Prefer: wait`) end so that graceful shutdown can finish.
    shutdown_tx: watch::Sender<bool>,
    /// More Prometheus text appended to `/metrics` (`kontext up` adds its in-process worker's).
    extra_metrics: std::sync::OnceLock<ExtraMetrics>,
}

/// Renders Prometheus text for `/metrics` (see `AppState::set_extra_metrics`).
pub type ExtraMetrics = Box<dyn Fn() -> String + Send + Sync>;

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// `local_addr` is where the listener is bound; it is the public URL unless
    /// `config.public_url` says otherwise.
    pub fn new(
        config: Config,
        queue: AnyQueue,
        store: AnyBlobStore,
        local_addr: SocketAddr,
    ) -> Self {
        let public_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{local_addr}"));
        let (shutdown_tx, _) = watch::channel(false);
        let auth_failures = AuthFailures::new(config.auth_failures);
        Self(Arc::new(Inner {
            auth_failures,
            config,
            queue,
            store,
            metrics: Metrics::default(),
            decode_permits: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
            ),
            lora_permits: tokio::sync::Semaphore::new(crate::lora_input::LORA_FETCH_PERMITS),
            public_url,
            shutdown_tx,
            extra_metrics: std::sync::OnceLock::new(),
        }))
    }

    /// Appends `render()` to every `/metrics` answer (set once; later calls are ignored).
    pub fn set_extra_metrics(&self, render: ExtraMetrics) {
        let _ = self.extra_metrics.set(render);
    }

    /// The extra Prometheus text, if any.
    pub fn extra_metrics(&self) -> Option<String> {
        self.extra_metrics.get().map(|render| render())
    }

    /// A receiver that sees `true` once shutdown began.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    pub(crate) fn begin_shutdown(&self) {
        self.shutdown_tx.send_replace(true);
    }

    /// The job `raw_id` if it exists and belongs to `tenant`; 404 otherwise (malformed ids,
    /// unknown ids and other tenants' ids are indistinguishable).
    pub async fn job_for(&self, raw_id: &str, tenant: &Tenant) -> Result<JobRecord, ApiError> {
        let id: JobId = raw_id
            .parse()
            .map_err(|_| ApiError::not_found("id", "job"))?;
        match self.queue.get(id).await? {
            Some(job) if job.tenant == tenant.id => Ok(job),
            _ => Err(ApiError::not_found("id", "job")),
        }
    }

    /// A URL anyone may GET the job's result from until it expires: presigned (S3) or signed by
    /// us (local storage). `None` until the job succeeded.
    pub async fn result_url(&self, job: &JobRecord) -> Result<Option<String>, ApiError> {
        let Some(result) = job
            .result
            .as_ref()
            .filter(|_| job.status == JobStatus::Succeeded)
        else {
            return Ok(None);
        };
        if let Some(url) = self.store.presigned_get(&result.key).await? {
            return Ok(Some(url));
        }
        Ok(Some(self.signed_blob_url(&result.key, now_ms())))
    }

    /// `<public>/v1/blobs/<key>?expires=..&signature=..`, valid for the result URL TTL.
    pub fn signed_blob_url(&self, key: &ObjectKey, now: Millis) -> String {
        let ttl = self.config.result_url_ttl.max(Duration::from_secs(1));
        let expires_s = now / 1000 + ttl.as_secs();
        let query = signing::blob_query(&self.config.url_signing_secret, key.as_str(), expires_s);
        format!("{}/v1/blobs/{key}?{query}", self.public_url)
    }

    pub async fn view(&self, job: &JobRecord) -> Result<JobView, ApiError> {
        let url = self.result_url(job).await?;
        Ok(job_view(job, url))
    }

    pub fn job_url(&self, id: &str) -> String {
        format!("{}/v1/jobs/{id}", self.public_url)
    }
}
