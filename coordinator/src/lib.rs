//! kontext-coordinator: the HTTP API of Kontext Fleet. It accepts jobs (native and BFL-compatible
//! routes), stores input images, answers status, streams events, hands out result URLs, reaps
//! expired leases, delivers signed webhooks and exports metrics. It never runs a model and never
//! links candle: workers claim jobs from the queue.
//!
//! Layout: `config` (flags → `Config`), `auth` (API keys → tenants), `http` (routes, OpenAPI,
//! errors), `input` + `image_limits` + `fetch` (input images, decompression-bomb and SSRF guards),
//! `signing` (webhook and signed-URL HMACs), `reaper`, `webhooks`, `metrics`. The queue is
//! proto's `AnyQueue` (Redis, or in-process memory).
//!
//! Embedding (tests, `kontext up`): build an `AppState` from a `Config`, a queue and a store, then
//! `serve` it on a bound listener; or call `run`, which opens queue and store from the config.

pub mod admin_auth;
pub mod auth;
pub mod auth_failures;
pub mod byte_sizes;
pub mod config;
pub mod console;
pub mod fetch;
pub mod http;
pub mod http_server;
pub mod image_limits;
pub mod input;
pub mod lora_input;
pub mod metrics;
pub mod reaper;
pub mod signing;
pub mod state;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;

use kontext_proto::AnyQueue;
use kontext_proto::memory::MemoryQueue;
use kontext_proto::redis::{RedisConfig, RedisQueue};
use kontext_storage::AnyBlobStore;
use tokio::net::TcpListener;

pub use config::Config;
pub use http::{ApiDoc, openapi_json, router};
pub use state::AppState;

use config::QueueSource;

/// Why the coordinator could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "no --api-keys configured, so access is open; that is only allowed on a loopback \
         address, but the listener is on {0}. Configure --api-keys (KONTEXT_API_KEYS) or listen \
         on 127.0.0.1"
    )]
    OpenAccessNotLoopback(std::net::SocketAddr),
    #[error("queue: {0}")]
    Queue(#[from] kontext_proto::QueueError),
    #[error("storage: {0}")]
    Storage(#[from] kontext_storage::StorageError),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens the queue the config names.
pub async fn open_queue(config: &Config) -> Result<AnyQueue, RunError> {
    Ok(match &config.queue {
        QueueSource::Memory => {
            AnyQueue::Memory(Arc::new(MemoryQueue::new(config.queue_config.clone())))
        }
        QueueSource::Redis {
            url,
            namespace,
            wait_replicas,
            max_blocking,
        } => {
            let cfg = RedisConfig {
                queue: config.queue_config.clone(),
                wait_replicas: *wait_replicas,
                max_blocking: *max_blocking,
                ..RedisConfig::default()
            };
            AnyQueue::Redis(Arc::new(RedisQueue::connect(url, namespace, cfg).await?))
        }
    })
}

/// Opens queue and store from `config` and serves on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let addr = listener.local_addr()?;
    check_open_access(&config, addr)?;
    let queue = open_queue(&config).await?;
    let store = AnyBlobStore::open(config.storage.clone()).await?;
    tracing::info!(?config, queue = queue.describe(), "coordinator starting");
    serve(
        listener,
        AppState::new(config, queue, store, addr),
        shutdown,
    )
    .await
}

/// Refuses open access (no API keys) on anything but a loopback address.
pub fn check_open_access(config: &Config, addr: std::net::SocketAddr) -> Result<(), RunError> {
    if config.auth.is_open() && !addr.ip().is_loopback() {
        return Err(RunError::OpenAccessNotLoopback(addr));
    }
    Ok(())
}

/// Serves `state` on `listener` with the background tasks (reaper, webhook notifier) until
/// `shutdown` resolves; then long-lived responses end and in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    check_open_access(&state.config, listener.local_addr()?)?;
    let addr = listener.local_addr()?;
    let reaper = tokio::spawn(reaper::run(state.clone()));
    let notifier = tokio::spawn(webhooks::run(state.clone()));
    let signal = state.clone();
    let state_for_tasks = state.clone();
    let app = router(state);
    tracing::info!(%addr, "listening");
    let limits = state_for_tasks.config.server;
    let served = http_server::serve(listener, app, limits, async move {
        shutdown.await;
        signal.begin_shutdown();
    })
    .await;
    // Also when serving failed: the background tasks end on this signal.
    state_for_tasks.begin_shutdown();
    let _ = reaper.await;
    let _ = notifier.await;
    served.map_err(RunError::Io)
}
