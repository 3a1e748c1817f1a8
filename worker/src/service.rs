//! Starting a worker. `spawn_worker` is the one way a job loop starts with its engine: the model
//! loads on a blocking thread, moves onto its engine thread (which runs the warm-up step), and
//! the job loop runs on a task until its shutdown future resolves. `kontext-worker serve` and
//! `kontext up` both call it.
//!
//! `serve` is `kontext-worker serve` wired from its flags: health endpoint first (so probes see
//! the process during a long model load), then the Redis queue and the blob store (cheap checks
//! fail fast), then `spawn_worker`, until `shutdown`. It takes the engine loader
//! (`config::load_engine` in the binary; end-to-end harnesses wrap it to pace steps).

use std::future::Future;
use std::sync::Arc;

use kontext_engine::thread::{EngineHandle, EngineThread};
use kontext_engine::{Engine, EngineError};
use kontext_proto::redis::{RedisConfig, RedisQueue};
use kontext_proto::{JobQueue, QueueError};
use kontext_storage::{AnyBlobStore, BlobStore, StorageError};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{ConfigError, ModelArgs, ServeArgs};
use crate::job_loop::{Worker, WorkerError};
use crate::metrics::WorkerStatus;
use crate::registry;
use crate::settings::WorkerSettings;

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("loading the model: {0}")]
    Engine(#[from] EngineError),
    #[error("the model loading task failed: {0}")]
    LoadTask(#[source] tokio::task::JoinError),
    #[error("spawning the engine thread: {0}")]
    EngineThread(#[source] std::io::Error),
}

/// Why `serve` could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error("--metrics-listen {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the health address: {0}")]
    HealthAddr(#[source] std::io::Error),
}

/// A job loop running on its own task, and the engine thread it owns.
pub struct SpawnedWorker {
    status: Arc<WorkerStatus>,
    engine: EngineThread,
    task: Option<JoinHandle<Result<(), WorkerError>>>,
    /// The worker-registry heartbeat (`registry::beat`), stopped when the job loop ends.
    registry: AbortOnDrop,
    /// The job loop's result once `ended` saw the task finish.
    ended: Option<Result<(), WorkerError>>,
}

/// Loads the model (slow for real weights: on a blocking thread) and starts the job loop over
/// `queue` and `store` on a new task. Readiness and metrics go to `status`; the loop drains and
/// ends when `shutdown` resolves, or ends on its own when the engine dies.
pub async fn spawn_worker<Q, S>(
    queue: Arc<Q>,
    store: Arc<S>,
    load_engine: impl FnOnce() -> Result<Box<dyn Engine>, EngineError> + Send + 'static,
    settings: WorkerSettings,
    status: Arc<WorkerStatus>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<SpawnedWorker, SpawnError>
where
    Q: JobQueue,
    S: BlobStore + 'static,
{
    let engine = tokio::task::spawn_blocking(load_engine)
        .await
        .map_err(SpawnError::LoadTask)??;
    let engine = EngineThread::spawn(engine, true).map_err(SpawnError::EngineThread)?;
    let identity = registry::Identity::new(engine.handle().info().clone());
    let registry = AbortOnDrop(tokio::spawn(registry::beat(
        Arc::clone(&queue),
        Arc::clone(&status),
        identity,
        settings.lease_ttl,
    )));
    let worker =
        Worker::new(queue, store, engine.handle(), settings).with_status(Arc::clone(&status));
    // SIGTERM or an operator's drain request (`registry::beat`), whichever comes first.
    let requested = Arc::clone(&status);
    let shutdown = async move {
        tokio::select! {
            () = shutdown => {}
            () = requested.drain_requested() => {}
        }
    };
    let task = tokio::spawn(worker.run(shutdown));
    Ok(SpawnedWorker {
        status,
        engine,
        task: Some(task),
        registry,
        ended: None,
    })
}

/// A task aborted when its handle is dropped (the registry heartbeat outlives nothing).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl SpawnedWorker {
    /// Readiness and metrics of the job loop.
    pub fn status(&self) -> Arc<WorkerStatus> {
        Arc::clone(&self.status)
    }

    /// The engine the job loop runs on (its health says when the warm-up is done).
    pub fn engine(&self) -> EngineHandle {
        self.engine.handle()
    }

    /// Whether the job loop has ended.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Resolves once the job loop has ended (drained after its shutdown, or its engine died).
    /// Cancel-safe: dropping it early loses nothing.
    pub async fn ended(&mut self) {
        if let Some(task) = &mut self.task {
            let result = task.await.map_err(WorkerError::Task).and_then(|r| r);
            self.registry.0.abort();
            self.ended = Some(result);
            self.task = None;
        }
    }

    /// Waits for the job loop to end, then for the engine thread to exit (a request it is still
    /// running finishes first). Returns how the job loop ended.
    pub async fn join(mut self) -> Result<(), WorkerError> {
        self.ended().await;
        let engine = self.engine;
        let _ = tokio::task::spawn_blocking(move || engine.join()).await;
        self.ended.unwrap_or(Ok(()))
    }
}

/// Runs a worker from `args` until `shutdown` resolves (then drains) or the engine dies.
pub async fn serve(
    args: ServeArgs,
    load_engine: impl FnOnce(&ModelArgs) -> Result<Box<dyn Engine>, EngineError> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
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
    let health_addr = listener.local_addr().map_err(ServeError::HealthAddr)?;
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

    let model = args.model;
    let result = match spawn_worker(
        Arc::new(queue),
        Arc::new(store),
        move || load_engine(&model),
        settings,
        status,
        shutdown,
    )
    .await
    {
        Ok(worker) => worker.join().await.map_err(ServeError::from),
        Err(e) => Err(e.into()),
    };
    let _ = stop_health.send(());
    let _ = health.await;
    result
}
