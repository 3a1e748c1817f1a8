//! The harness: a `Worker` over the in-process queue and a local directory, with a scripted
//! engine on the real `EngineThread`, plus waits that poll with a deadline.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use kontext_engine::thread::EngineThread;
use kontext_engine::{
    Context, Engine, EngineError, EngineInfo, EngineOutput, EngineRequest, StepControl,
};
use kontext_proto::clock::now_ms;
use kontext_proto::memory::MemoryQueue;
use kontext_proto::policy::QueueConfig;
use kontext_proto::{
    JobId, JobKind, JobQueue, JobRecord, OutputFormat, Priority, Submission, ValidJobSpec,
};
use kontext_storage::LocalStore;
use kontext_worker::job_loop::{Worker, WorkerError};
use kontext_worker::metrics::WorkerStatus;
use kontext_worker::settings::WorkerSettings;
use tokio::sync::oneshot;

pub const DEADLINE: Duration = Duration::from_secs(20);

/// Permits the scripted engine takes one per step (and one to return, when `gate_finish`).
#[derive(Default)]
pub struct Gate {
    permits: Mutex<Option<u32>>,
    changed: Condvar,
}

impl Gate {
    /// `None` = open: steps never wait.
    pub fn closed() -> Arc<Self> {
        Arc::new(Self {
            permits: Mutex::new(Some(0)),
            changed: Condvar::new(),
        })
    }
    pub fn grant(&self, n: u32) {
        let mut p = self.permits.lock().expect("gate");
        if let Some(p) = p.as_mut() {
            *p += n;
        }
        self.changed.notify_all();
    }
    pub fn open(&self) {
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
pub struct Seen {
    pub prompt: String,
    pub context: Option<(u32, u32, u32, u32)>,
    pub target: (u32, u32),
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
            linear_precision: "native".into(),
            model: "scripted".into(),
            device: "cpu".into(),
            gpu_name: None,
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
        let context = req.references.contexts.first().map(|c| match c {
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
            full_evaluations: req.steps,
            loras: Vec::new(),
        })
    }
}

pub struct Harness {
    pub queue: Arc<MemoryQueue>,
    pub store: Arc<LocalStore>,
    pub status: Arc<WorkerStatus>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<oneshot::Sender<()>>,
    pub worker: tokio::task::JoinHandle<Result<(), WorkerError>>,
    _dir: tempfile::TempDir,
}

pub struct Options {
    pub gate: Option<Arc<Gate>>,
    pub gate_finish: bool,
    pub step_time: Duration,
    pub lease_ttl: Duration,
    pub grace: Duration,
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

pub fn start(opts: Options) -> Harness {
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

pub fn spec(prompt: &str, width: u32, height: u32, steps: u32) -> ValidJobSpec {
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
        acceleration: Default::default(),
        more_references: Vec::new(),
        reference_positions: Default::default(),
        loras: Vec::new(),
        traceparent: None,
    }
}

impl Harness {
    pub async fn submit(&self, spec: ValidJobSpec) -> JobId {
        self.queue
            .submit(
                Submission {
                    tenant: "acme".into(),
                    spec,
                    idempotency_key: None,
                    body_hash: "h".into(),
                    max_in_flight: 0,
                    retained: Default::default(),
                    chain: None,
                },
                now_ms(),
            )
            .await
            .expect("submit")
            .id
    }

    /// Waits (on queue events, with a deadline) until the job satisfies `want`.
    pub async fn wait_job(
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

    pub async fn stop(mut self) -> Result<(), WorkerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(DEADLINE, self.worker)
            .await
            .expect("worker stops within the deadline")
            .expect("worker task")
    }
}

pub async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
