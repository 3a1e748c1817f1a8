//! Embedded mode: the coordinator and one worker in this process (`kontext up`, `kontext demo`).
//!
//! Both share one queue and one store: with no --redis-url that is the in-process `MemoryQueue`
//! (the only queue this worker can reach), otherwise Redis; a local directory unless a bucket is
//! configured. The worker starts through the same `spawn_worker` as `kontext-worker serve`; the
//! coordinator is the same library the `kontext-coordinator` binary runs. On shutdown the worker drains first (the
//! running job finishes or goes back to the queue), then the HTTP server stops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kontext_coordinator::{AppState, Config, RunError};
use kontext_engine::thread::Health;
use kontext_engine::{Engine, EngineError};
use kontext_proto::AnyQueue;
use kontext_proto::model_profile::{ModelProfile, ModelProfileError};
use kontext_storage::AnyBlobStore;
use kontext_worker::config::ModelArgs;
use kontext_worker::job_loop::WorkerError;
use kontext_worker::metrics::WorkerStatus;
use kontext_worker::service::{SpawnError, SpawnedWorker, spawn_worker};
use kontext_worker::settings::WorkerSettings;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(transparent)]
    Coordinator(#[from] RunError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error("the model: {0}")]
    Model(#[from] EngineError),
    #[error("the model's sizes: {0}")]
    ModelProfile(#[from] ModelProfileError),
    #[error("{what}: {detail}")]
    Task { what: &'static str, detail: String },
}

/// Loads the engine `ModelArgs` names (`kontext_worker::config::load_engine`); called on a
/// blocking thread.
pub type EngineLoader =
    Box<dyn FnOnce(&ModelArgs) -> Result<Box<dyn Engine>, EngineError> + Send + 'static>;

/// What to run.
pub struct EmbeddedConfig {
    pub coordinator: Config,
    pub model: ModelArgs,
    pub load_engine: EngineLoader,
    pub worker: WorkerSettings,
}

/// A running coordinator + worker.
pub struct Embedded {
    addr: SocketAddr,
    url: String,
    stop_worker: oneshot::Sender<()>,
    stop_http: oneshot::Sender<()>,
    worker: SpawnedWorker,
    http: JoinHandle<Result<(), RunError>>,
    queue: AnyQueue,
}

impl Embedded {
    /// Opens queue and store, loads the model (on a blocking thread; the warm-up runs on the
    /// engine thread), and starts serving on `listener`.
    pub async fn start(
        listener: TcpListener,
        mut config: EmbeddedConfig,
    ) -> Result<Self, EmbeddedError> {
        let addr = listener.local_addr().map_err(RunError::Io)?;
        kontext_coordinator::check_open_access(&config.coordinator, addr)?;
        // The coordinator must not accept jobs the engine would refuse for their size.
        let limits = &mut config.coordinator.limits.job;
        limits.max_pixels = limits.max_pixels.min(config.model.engine_max_pixels);
        // ...nor validate sizes for another model than the one loaded (models/shapes is 96x96).
        let model_dir = kontext_engine::loader::model_dir(&config.model.load_options())?;
        if let Some(profile) = ModelProfile::read(&model_dir)? {
            limits.adopt_model(&profile);
        }
        let queue = kontext_coordinator::open_queue(&config.coordinator).await?;
        let store = AnyBlobStore::open(config.coordinator.storage.clone())
            .await
            .map_err(RunError::Storage)?;

        let (model, load) = (config.model, config.load_engine);
        let status = Arc::new(WorkerStatus::new(config.worker.worker_id.clone()));
        let (stop_worker, worker_stopped) = oneshot::channel::<()>();
        let worker = spawn_worker(
            Arc::new(queue.clone()),
            Arc::new(store.clone()),
            move || load(&model),
            config.worker,
            Arc::clone(&status),
            async move {
                let _ = worker_stopped.await;
            },
        )
        .await?;

        let state = AppState::new(config.coordinator, queue.clone(), store, addr);
        // One process, one /metrics: the worker's (stages, engine caches) after the coordinator's.
        state.set_extra_metrics(Box::new(move || status.render()));
        let url = state.public_url.clone();
        let (stop_http, http_stopped) = oneshot::channel::<()>();
        let http = tokio::spawn(kontext_coordinator::serve(listener, state, async move {
            let _ = http_stopped.await;
        }));
        Ok(Self {
            addr,
            url,
            stop_worker,
            stop_http,
            worker,
            http,
            queue,
        })
    }

    /// The queue the coordinator and the worker share (tests drive it directly, e.g. to play a
    /// crashing worker).
    pub fn queue(&self) -> AnyQueue {
        self.queue.clone()
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn status(&self) -> Arc<WorkerStatus> {
        self.worker.status()
    }

    /// Waits until the worker is warm (model loaded and warm-up done) or died.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), EmbeddedError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut health = self.worker.engine().health();
        let waited =
            tokio::time::timeout_at(deadline, health.wait_for(|h| *h != Health::Starting)).await;
        match waited {
            Ok(Ok(h)) => {
                let error = match &*h {
                    Health::Ready => None,
                    Health::Unhealthy(e) => Some(Arc::clone(e)),
                    Health::Starting | Health::Stopped => Some(Arc::new(EngineError::Stopped)),
                };
                if let Some(e) = error {
                    return Err(EmbeddedError::Worker(WorkerError::Engine(e)));
                }
            }
            Ok(Err(_)) | Err(_) => {
                return Err(EmbeddedError::Task {
                    what: "warm-up",
                    detail: format!("the engine was not ready within {timeout:?}"),
                });
            }
        }
        // The worker flips readiness right after it sees the engine ready.
        let status = self.worker.status();
        while !status.is_ready() {
            if self.worker.is_finished() || tokio::time::Instant::now() > deadline {
                return Err(EmbeddedError::Task {
                    what: "worker",
                    detail: "stopped before it was ready".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Resolves once the worker's job loop has ended (drained on an admin's request, or its
    /// engine died); the HTTP server keeps serving.
    pub async fn worker_ended(&mut self) {
        self.worker.ended().await;
    }

    /// Drains the worker, then stops the HTTP server.
    pub async fn shutdown(self) -> Result<(), EmbeddedError> {
        let _ = self.stop_worker.send(());
        let worker = self.worker.join().await;
        let _ = self.stop_http.send(());
        let http = self.http.await.map_err(|e| EmbeddedError::Task {
            what: "HTTP server task",
            detail: e.to_string(),
        })?;
        worker?;
        http?;
        Ok(())
    }

    /// Runs until `signal` resolves or the worker stops on its own (its engine died), then shuts
    /// down.
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), EmbeddedError> {
        tokio::select! {
            () = signal => {}
            () = self.worker.ended() => {}
        }
        self.shutdown().await
    }
}
