//! `kontext-worker serve` wired from its flags: health endpoint first (so probes see the process
//! during a long model load), then the Redis queue and the blob store (cheap checks fail fast),
//! then the model on its engine thread with a warm-up step, then the job loop until `shutdown`.
//!
//! `serve` takes the engine loader (`model::load_engine` in the binary; end-to-end harnesses wrap
//! it to pace steps), called on a blocking thread once queue and store answered.

use std::future::Future;
use std::sync::Arc;

use kontext_proto::QueueError;
use kontext_proto::redis::{RedisConfig, RedisQueue};
use kontext_storage::{AnyBlobStore, StorageError};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::config::{ConfigError, ModelArgs, ServeArgs};
use crate::consumer::{Worker, WorkerError};
use crate::metrics::WorkerStatus;
use kontext_engine::thread::EngineThread;
use kontext_engine::{Engine, EngineError};

/// Why `serve` could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("loading the model: {0}")]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error("--metrics-listen {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Runs a worker from `args` until `shutdown` resolves (then drains) or the engine dies.
pub async fn serve(
    args: ServeArgs,
    load_engine: impl FnOnce(&ModelArgs) -> Result<Box<dyn Engine>, EngineError> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let settings = args.consumer.settings()?;
    tracing::info!(?args, worker = %settings.worker_id, "worker starting");
    let status = Arc::new(WorkerStatus::new(settings.worker_id.clone()));

    let listener = TcpListener::bind(args.metrics_listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: args.metrics_listen,
            source,
        })?;
    let health_addr = listener.local_addr().map_err(|source| ServeError::Io {
        what: "reading the health address",
        source,
    })?;
    tracing::info!(addr = %health_addr, "health and metrics endpoint listening");
    let (stop_health, health_stopped) = oneshot::channel::<()>();
    let health = tokio::spawn(crate::health::serve(
        listener,
        Arc::clone(&status),
        async move {
            let _ = health_stopped.await;
        },
    ));

    let queue = RedisQueue::connect(
        &args.redis_url,
        &args.redis_namespace,
        RedisConfig::default(),
    )
    .await?;
    let store = AnyBlobStore::open(args.storage.into_config()?).await?;

    let model_args = args.model.clone();
    let engine = tokio::task::spawn_blocking(move || load_engine(&model_args))
        .await
        .map_err(|e| ServeError::Io {
            what: "the model loading task",
            source: std::io::Error::other(e.to_string()),
        })??;
    let thread = EngineThread::spawn(engine, true).map_err(|source| ServeError::Io {
        what: "spawning the engine thread",
        source,
    })?;

    let worker = Worker::new(Arc::new(queue), Arc::new(store), thread.handle(), settings)
        .with_status(Arc::clone(&status));
    let result = worker.run(shutdown).await;

    // The worker's handle is gone; the engine thread exits once its queue is empty.
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    let _ = stop_health.send(());
    let _ = health.await;
    result.map_err(ServeError::from)
}
