//! The job loop (`Worker`) over the in-process queue and a local directory, with a scripted
//! engine on the real `EngineThread`: queue semantics without candle (house-style "FakeEngine").
//! The real tiny engine runs the same loop in the end-to-end tests (tests/tests/e2e_*.rs).
//!
//! No sleeps for synchronization: tests wait on queue events or poll state with a deadline, and
//! the scripted engine blocks on a permit gate the test opens step by step.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use kontext_engine::thread::EngineThread;
use kontext_engine::{
    Context, Engine, EngineError, EngineInfo, EngineOutput, EngineRequest, StepControl,
};
use kontext_proto::memory::MemoryQueue;
use kontext_proto::policy::QueueConfig;
use kontext_proto::{
    InputImage, JobEvent, JobId, JobKind, JobQueue, JobRecord, JobStatus, OutputFormat, Priority,
    Submission, ValidJobSpec,
};
use kontext_storage::{BlobStore, LocalStore, ObjectKey};
use kontext_worker::clock::now_ms;
use kontext_worker::consumer::{Worker, WorkerError, WorkerSettings};
use kontext_worker::metrics::{Outcome, WorkerStatus};
use tokio::sync::oneshot;

const DEADLINE: Duration = Duration::from_secs(20);

/// Permits the scripted engine takes one per step (and one to return, when `gate_finish`).
#[derive(Default)]
struct Gate {
    permits: Mutex<Option<u32>>,
    changed: Condvar,
}

impl Gate {
    /// `None` = open: steps never wait.
    fn closed() -> Arc<Self> {
        Arc::new(Self {
            permits: Mutex::new(Some(0)),
            changed: Condvar::new(),
        })
    }
    fn grant(&self, n: u32) {
        let mut p = self.permits.lock().expect("gate");
        if let Some(p) = p.as_mut() {
            *p += n;
        }
        self.changed.notify_all();
    }
    fn open(&self) {
        *self.permits.lock().expect("gate") = None;
        self.changed.notify_all();
    }
    fn take(&self) {
        let mut p = self.permits.lock().expect("gate");
        loop {
            match p.as_mut() {
                None => return,
                Some(n) if *n > 0 => {
                    *n -= 1;
                    return;
                }
                Some(_) => p = self.changed.wait(p).expect("gate"),
            }
        }
    }
}

/// What the scripted engine saw of each request.
#[derive(Debug, Clone)]
struct Seen {
    prompt: String,
    context: Option<(u32, u32, u32, u32)>,
    target: (u32, u32),
}

/// Steps `req.steps` times, each after a permit (when gated) and `step_time` of pretend compute;
/// prompts script failures: "panic", "invalid", "oom".
struct ScriptedEngine {
    gate: Option<Arc<Gate>>,
    gate_finish: bool,
    step_time: Duration,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Engine for ScriptedEngine {
    fn info(&self) -> EngineInfo {
        EngineInfo {
            model: "scripted".into(),
            device: "cpu".into(),
            dtype: "f32".into(),
            max_pixels: 1 << 22,
            settings: Default::default(),
        }
    }
    fn warmup(&mut self) -> Result<(), EngineError> {
        Ok(())
    }
    fn generate(
        &mut self,
        req: &EngineRequest,
        on_step: &mut dyn FnMut(u32, u32) -> StepControl,
    ) -> Result<EngineOutput, EngineError> {
        let context = req.context.as_ref().map(|c| match c {
            Context::Image {
                image,
                width,
                height,
                ..
            } => (image.width(), image.height(), *width, *height),
            Context::PackedLatent { width, height, .. } => (0, 0, *width, *height),
        });
        self.seen.lock().expect("seen").push(Seen {
            prompt: req.prompt.clone(),
            context,
            target: (req.width, req.height),
        });
        match req.prompt.as_str() {
            "panic" => panic!("scripted panic"),
            "invalid" => return Err(EngineError::InvalidInput("scripted bad input".into())),
            "oom" => return Err(EngineError::OutOfMemory("scripted".into())),
            _ => {}
        }
        for done in 0..=req.steps {
            if done > 0 {
                if let Some(g) = &self.gate {
                    g.take();
                }
                // Pretend compute (what a real step costs); never used to synchronize.
                std::thread::sleep(self.step_time);
            }
            if on_step(done, req.steps) == StepControl::Cancel {
                return Err(EngineError::Canceled);
            }
        }
        if let (true, Some(g)) = (self.gate_finish, &self.gate) {
            g.take();
        }
        let seed = req.seed as u8;
        let image = image::RgbImage::from_fn(req.width, req.height, |x, y| {
            image::Rgb([x as u8 ^ seed, y as u8, 77])
        });
        let packed_latent = req
            .want_latent
            .then(|| vec![0.25; (req.width as usize / 16) * (req.height as usize / 16) * 64]);
        Ok(EngineOutput {
            image,
            packed_latent,
            seed: req.seed,
            timings: Default::default(),
        })
    }
}

struct Harness {
    queue: Arc<MemoryQueue>,
    store: Arc<LocalStore>,
    status: Arc<WorkerStatus>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<oneshot::Sender<()>>,
    worker: tokio::task::JoinHandle<Result<(), WorkerError>>,
    _dir: tempfile::TempDir,
}

struct Options {
    gate: Option<Arc<Gate>>,
    gate_finish: bool,
    step_time: Duration,
    lease_ttl: Duration,
    grace: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            gate: None,
            gate_finish: false,
            step_time: Duration::ZERO,
            lease_ttl: Duration::from_secs(30),
            grace: Duration::from_secs(25),
        }
    }
}

fn start(opts: Options) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = Arc::new(MemoryQueue::new(QueueConfig::default()));
    let store = Arc::new(LocalStore::new(dir.path().join("data")));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let engine = ScriptedEngine {
        gate: opts.gate,
        gate_finish: opts.gate_finish,
        step_time: opts.step_time,
        seen: Arc::clone(&seen),
    };
    let thread = EngineThread::spawn(Box::new(engine), true).expect("engine thread");
    let mut settings = WorkerSettings::with_lease("w-test", opts.lease_ttl);
    settings.claim_wait = Duration::from_millis(200);
    settings.grace_period = opts.grace;
    let worker = Worker::new(
        Arc::clone(&queue),
        Arc::clone(&store),
        thread.handle(),
        settings,
    );
    let status = worker.status();
    let (stop, stopped) = oneshot::channel::<()>();
    let worker = tokio::spawn(async move {
        let result = worker
            .run(async move {
                let _ = stopped.await;
            })
            .await;
        drop(thread);
        result
    });
    Harness {
        queue,
        store,
        status,
        seen,
        stop: Some(stop),
        worker,
        _dir: dir,
    }
}

fn spec(prompt: &str, width: u32, height: u32, steps: u32) -> ValidJobSpec {
    ValidJobSpec {
        kind: JobKind::Generate,
        prompt: prompt.into(),
        input: None,
        input_latent_key: None,
        resize: Default::default(),
        context_width: None,
        context_height: None,
        width,
        height,
        steps,
        guidance: 2.5,
        seed: 7,
        output_format: OutputFormat::Png,
        priority: Priority::Standard,
        webhook_url: None,
        initial_latents_key: None,
        keep_latent: false,
    }
}

impl Harness {
    async fn submit(&self, spec: ValidJobSpec) -> JobId {
        self.queue
            .submit(
                Submission {
                    tenant: "acme".into(),
                    spec,
                    idempotency_key: None,
                    body_hash: "h".into(),
                    max_in_flight: 0,
                    chain: None,
                },
                now_ms(),
            )
            .await
            .expect("submit")
            .id
    }

    /// Waits (on queue events, with a deadline) until the job satisfies `want`.
    async fn wait_job(
        &self,
        id: JobId,
        what: &str,
        want: impl Fn(&JobRecord) -> bool,
    ) -> JobRecord {
        let deadline = Instant::now() + DEADLINE;
        let mut cursor: Option<String> = None;
        loop {
            let job = self.queue.get(id).await.expect("get").expect("job exists");
            if want(&job) {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job never became {what}: {job:#?}"
            );
            let events = self
                .queue
                .events(id, cursor.as_deref(), Duration::from_millis(200))
                .await
                .expect("events");
            if let Some((c, _)) = events.last() {
                cursor = Some(c.clone());
            }
        }
    }

    async fn stop(mut self) -> Result<(), WorkerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(DEADLINE, self.worker)
            .await
            .expect("worker stops within the deadline")
            .expect("worker task")
    }
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_and_edit_commit_attempt_scoped_pngs() {
    let h = start(Options::default());
    let gen_id = h.submit(spec("a red fox", 64, 48, 4)).await;
    let job = h
        .wait_job(gen_id, "succeeded", |j| j.status == JobStatus::Succeeded)
        .await;
    let result = job.result.clone().expect("result");
    assert_eq!(result.key, format!("out/acme/{gen_id}/{}.png", job.epoch));
    assert_eq!((result.width, result.height, result.seed), (64, 48, 7));
    let png = h.store.get(&result.key).await.expect("stored");
    let img = image::load_from_memory(&png.bytes).expect("decodable PNG");
    assert_eq!((img.width(), img.height()), (64, 48));
    assert_eq!(job.progress, 1.0);

    // Edit of that result: the worker fetches and decodes the input and sizes the context.
    let mut edit = spec("make it blue", 32, 32, 2);
    edit.kind = JobKind::Edit;
    edit.input = Some(InputImage {
        key: result.key.clone(),
        width: 64,
        height: 48,
    });
    edit.context_width = Some(48);
    edit.context_height = Some(32);
    edit.output_format = OutputFormat::Jpeg;
    edit.keep_latent = true;
    let edit_id = h.submit(edit).await;
    let job = h
        .wait_job(edit_id, "succeeded", |j| j.status == JobStatus::Succeeded)
        .await;
    let result = job.result.expect("result");
    assert!(result.key.as_str().ends_with(".jpeg"), "{}", result.key);
    let latent_key = result.latent_key.expect("latent kept");
    let latent = h.store.get(&latent_key).await.expect("latent stored");
    let values = kontext_worker::latents::decode(&latent.bytes).expect("safetensors");
    assert_eq!(values.len(), 2 * 2 * 64);
    let seen = h.seen.lock().expect("seen").clone();
    let edit_seen = seen
        .iter()
        .find(|s| s.prompt == "make it blue")
        .expect("edit ran");
    assert_eq!(edit_seen.context, Some((64, 48, 48, 32)));
    assert_eq!(edit_seen.target, (32, 32));
    wait_until("two successes counted", || {
        h.status.metrics.jobs(Outcome::Succeeded) == 2
    })
    .await;
    assert!(h.status.is_ready());
    h.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_published_at_most_twice_a_second() {
    // 30 steps of 40 ms: ~1.2 s of denoising would be 31 events unthrottled.
    let h = start(Options {
        step_time: Duration::from_millis(40),
        ..Options::default()
    });
    let id = h.submit(spec("slow", 32, 32, 30)).await;
    h.wait_job(id, "succeeded", |j| j.status == JobStatus::Succeeded)
        .await;
    let events = h
        .queue
        .events(id, None, Duration::ZERO)
        .await
        .expect("events");
    let progress: Vec<u64> = events
        .iter()
        .filter_map(|(_, e)| match e {
            JobEvent::Progress { at, .. } => Some(*at),
            JobEvent::State { .. } => None,
        })
        .collect();
    assert!(!progress.is_empty(), "at least the first step is published");
    assert!(
        progress.len() <= 4,
        "{} progress events for ~1.2 s",
        progress.len()
    );
    // Throttled at 500 ms when the step arrives; `at` is stamped at the queue call (jitter).
    for pair in progress.windows(2) {
        assert!(
            pair[1] - pair[0] >= 400,
            "events {} ms apart",
            pair[1] - pair[0]
        );
    }
    h.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_fail_with_their_kind() {
    let h = start(Options::default());
    let mut missing = spec("edit", 32, 32, 2);
    missing.kind = JobKind::Edit;
    missing.input = Some(InputImage {
        key: ObjectKey::parse(
            "in/acme/0000000000000000000000000000000000000000000000000000000000000000.png",
        )
        .expect("key"),
        width: 32,
        height: 32,
    });
    let missing = h.submit(missing).await;
    let invalid = h.submit(spec("invalid", 32, 32, 2)).await;
    let oom = h.submit(spec("oom", 32, 32, 2)).await;
    let job = h
        .wait_job(missing, "failed", |j| j.status == JobStatus::Failed)
        .await;
    let err = job.error.expect("error");
    assert_eq!(err.kind, kontext_proto::JobErrorKind::InvalidInput);
    assert!(err.message.contains("input_image"), "{}", err.message);
    let job = h
        .wait_job(invalid, "failed", |j| j.status == JobStatus::Failed)
        .await;
    assert_eq!(
        job.error.expect("error").kind,
        kontext_proto::JobErrorKind::InvalidInput
    );
    // A transient engine error is retried by the queue: back to queued with an attempt counted.
    let job = h
        .wait_job(oom, "retrying", |j| {
            j.attempts >= 1 && j.status == JobStatus::Queued
        })
        .await;
    assert_eq!(
        job.error.expect("error").kind,
        kontext_proto::JobErrorKind::Transient
    );
    wait_until("two failures counted", || {
        h.status.metrics.jobs(Outcome::Failed) == 2
    })
    .await;
    h.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_running_job_stops_it_between_steps() {
    let gate = Gate::closed();
    let h = start(Options {
        gate: Some(Arc::clone(&gate)),
        lease_ttl: Duration::from_millis(600),
        ..Options::default()
    });
    let id = h.submit(spec("long", 32, 32, 50)).await;
    gate.grant(1);
    h.wait_job(id, "running with progress", |j| {
        j.status == JobStatus::Running && j.progress > 0.0
    })
    .await;
    let heartbeats = || {
        h.status
            .metrics
            .heartbeats
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = heartbeats();
    let outcome = h.queue.cancel(id, now_ms()).await.expect("cancel");
    assert_eq!(outcome, kontext_proto::CancelOutcome::CancellationRequested);
    // The heartbeat (every 200 ms, independent of the blocked engine) sees the flag: two more
    // renewals guarantee one was sent entirely after the cancel.
    wait_until("two heartbeats after the cancel", || {
        heartbeats() >= before + 2
    })
    .await;
    // Let the engine go on: it stops at its next step.
    gate.open();
    let job = h.wait_job(id, "terminal", |j| j.status.is_terminal()).await;
    assert_eq!(job.status, JobStatus::Canceled);
    assert!(job.result.is_none());
    assert!(job.progress < 1.0, "stopped before the last step");
    // The worker counts the outcome right after the queue call that ended the job.
    wait_until("the canceled outcome is counted", || {
        h.status.metrics.jobs(Outcome::Canceled) == 1
    })
    .await;
    h.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_discards_the_work_and_deletes_the_orphan() {
    let gate = Gate::closed();
    let h = start(Options {
        gate: Some(Arc::clone(&gate)),
        gate_finish: true,
        lease_ttl: Duration::from_millis(900),
        ..Options::default()
    });
    let id = h.submit(spec("slow commit", 32, 32, 2)).await;
    let first = h
        .wait_job(id, "running", |j| j.status == JobStatus::Running)
        .await;
    gate.grant(2);
    // Every step is done (the last progress event is published within 500 ms); the engine now
    // waits to return. Meanwhile the lease "expires": a reaper from the future re-queues the
    // job and bumps the epoch.
    h.wait_job(id, "fully stepped", |j| j.progress >= 1.0).await;
    let report = h.queue.reap(now_ms() + 60_000).await.expect("reap");
    assert_eq!(report.requeued, vec![id]);
    gate.open();
    // The worker commits with a stale epoch: refused, and its upload is deleted. Its own
    // worker loop then claims the re-queued job again and completes it under the new epoch.
    let job = h
        .wait_job(id, "succeeded", |j| j.status == JobStatus::Succeeded)
        .await;
    assert!(
        job.epoch > first.epoch + 1,
        "{} vs {}",
        job.epoch,
        first.epoch
    );
    let stale_key = format!("out/acme/{id}/{}.png", first.epoch);
    let stale = h
        .store
        .head(&ObjectKey::parse(&stale_key).expect("key"))
        .await
        .expect("head");
    assert!(stale.is_none(), "the stale attempt's object was deleted");
    assert_eq!(job.crashes, 1);
    assert_eq!(h.status.metrics.jobs(Outcome::LeaseLost), 1);
    assert_eq!(
        h.status
            .metrics
            .orphans_deleted
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    h.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_a_job_that_fits_the_grace_period() {
    let gate = Gate::closed();
    let h = start(Options {
        gate: Some(Arc::clone(&gate)),
        step_time: Duration::from_millis(5),
        grace: Duration::from_secs(20),
        ..Options::default()
    });
    let id = h.submit(spec("short", 32, 32, 6)).await;
    gate.grant(2);
    h.wait_job(id, "running with progress", |j| j.progress > 0.0)
        .await;
    let status = Arc::clone(&h.status);
    let queue = Arc::clone(&h.queue);
    let stopping = tokio::spawn(h.stop());
    wait_until("readiness drops", || status.is_draining()).await;
    assert!(!status.is_ready());
    gate.open();
    stopping.await.expect("join").expect("clean stop");
    let job = queue.get(id).await.expect("get").expect("job");
    assert_eq!(job.status, JobStatus::Succeeded, "{job:#?}");
    assert_eq!(status.metrics.jobs(Outcome::Succeeded), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_releases_a_job_that_does_not_fit() {
    let gate = Gate::closed();
    let h = start(Options {
        gate: Some(Arc::clone(&gate)),
        step_time: Duration::from_millis(50),
        grace: Duration::from_millis(200),
        ..Options::default()
    });
    let id = h.submit(spec("very long", 32, 32, 1000)).await;
    gate.grant(3);
    // Two timed steps give a step time (~50 ms); 997 steps left cannot fit 200 ms.
    h.wait_job(id, "running with progress", |j| j.progress >= 0.002)
        .await;
    let queue = Arc::clone(&h.queue);
    let status = Arc::clone(&h.status);
    let stopping = tokio::spawn(h.stop());
    // The engine sees the cancel at its next step.
    gate.open();
    stopping.await.expect("join").expect("clean stop");
    let job = queue.get(id).await.expect("get").expect("job");
    assert_eq!(job.status, JobStatus::Queued, "{job:#?}");
    assert_eq!(job.attempts, 0, "a release does not count an attempt");
    assert_eq!(job.crashes, 0);
    assert_eq!(status.metrics.jobs(Outcome::Released), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_panic_fails_the_job_and_stops_the_worker() {
    let h = start(Options::default());
    let id = h.submit(spec("panic", 32, 32, 2)).await;
    let job = h
        .wait_job(id, "failed", |j| j.status == JobStatus::Failed)
        .await;
    assert_eq!(
        job.error.expect("error").kind,
        kontext_proto::JobErrorKind::Fatal
    );
    let status = Arc::clone(&h.status);
    let result = tokio::time::timeout(DEADLINE, h.worker)
        .await
        .expect("worker exits")
        .expect("join");
    assert!(
        matches!(result, Err(WorkerError::Engine(ref m)) if m.contains("scripted panic")),
        "{result:?}"
    );
    assert!(status.fatal().is_some());
    assert!(!status.is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoint_reports_readiness_and_metrics() {
    let h = start(Options::default());
    let status = Arc::clone(&h.status);
    wait_until("ready", || status.is_ready()).await;
    let app = kontext_worker::health::router(Arc::clone(&status));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let get = |path: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .expect("write");
        let mut out = String::new();
        stream.read_to_string(&mut out).await.expect("read");
        out
    };
    assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    let metrics = get("/metrics").await;
    assert!(metrics.contains("kontext_worker_ready 1"), "{metrics}");
    status.begin_drain();
    let ready = get("/readyz").await;
    assert!(
        ready.starts_with("HTTP/1.1 503") && ready.contains("draining"),
        "{ready}"
    );
    server.abort();
    h.stop().await.expect("clean stop");
}
