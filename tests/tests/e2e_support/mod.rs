//! A whole fleet on loopback for the end-to-end tests: the real Redis server and the real S3 server
//! (tests/src/{redis_server,s3_server}.rs), the coordinator library on its own thread and runtime
//! (a free port, API keys for two tenants, a fresh Redis namespace and bucket), and worker
//! *processes* (`e2e-worker`, the `kontext-worker serve` entry) running the tiny model, which a
//! test can SIGKILL or SIGTERM. Workers watch their stdin, so they never outlive the test process.
//!
//! Nothing here sleeps to synchronize: helpers poll state with a deadline.

#![allow(dead_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kontext_coordinator::auth::Auth;
use kontext_coordinator::config::{Config, QueueSource};
use kontext_e2e::redis_server::{fresh_namespace, redis_url};
use kontext_e2e::s3_server::{S3Server, unique_bucket_name};
use kontext_proto::redis::{RedisConfig, RedisQueue};
use kontext_proto::{JobId, JobQueue, JobRecord};
use kontext_storage::{BlobStore, S3Store, StorageConfig};

/// API keys of the test tenants.
pub const KEY_ALPHA: &str = "key-alpha-0123456789abcdef";
pub const KEY_BETA: &str = "key-beta-0123456789abcdef";
pub const KEY_GAMMA: &str = "key-gamma-0123456789abcdef";
/// A tenant of its own for tests that must not show up in another test's job list.
pub const KEY_DELTA: &str = "key-delta-0123456789abcdef";

/// Longest wait of any test step (workers start, the tiny model loads, jobs run on 2 shared cores).
pub const DEADLINE: Duration = Duration::from_secs(180);

/// Request body limit of the test coordinator (small so the oversized-body test is cheap).
pub const MAX_BODY_BYTES: u64 = 1 << 20;

pub struct FleetOptions {
    pub workers: usize,
    /// `--model` of the workers: `tiny` (fast, random weights) or `shapes` (the trained model).
    pub model: &'static str,
    pub lease_ttl: &'static str,
    pub min_step_ms: u64,
    pub grace_period: &'static str,
    /// A Redis of the test's own (fault tests); `None`: the process-wide one.
    pub redis_url: Option<String>,
    /// An S3 server of the test's own (fault tests); `None`: the process-wide one.
    pub s3: Option<&'static S3Server>,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            workers: 2,
            model: "tiny",
            lease_ttl: "3s",
            min_step_ms: 30,
            grace_period: "20s",
            redis_url: None,
            s3: None,
        }
    }
}

/// A worker process.
pub struct WorkerProcess {
    pub id: String,
    child: Child,
    pub log: PathBuf,
}

impl WorkerProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the worker dies mid-whatever, with no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: the worker drains.
    pub fn terminate(&self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .context("running kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.child.id());
        }
        Ok(())
    }

    /// Waits for the process to exit (polling with a deadline).
    pub fn wait_exit(&mut self, deadline: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > until {
                bail!(
                    "worker {} did not exit within {deadline:?}; log:\n{}",
                    self.id,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The coordinator on its own thread and runtime, stopped on drop.
struct CoordinatorThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CoordinatorThread {
    /// Serves `config` on `listener` until stopped.
    fn start(listener: std::net::TcpListener, config: Config) -> anyhow::Result<Self> {
        listener.set_nonblocking(true)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("e2e-coordinator".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("coordinator runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    let shutdown = async move {
                        let _ = stopped.await;
                    };
                    if let Err(e) = kontext_coordinator::run(listener, config, shutdown).await {
                        eprintln!("e2e coordinator stopped with an error: {e}");
                    }
                });
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Graceful shutdown; returns once the coordinator has stopped.
    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for CoordinatorThread {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct Fleet {
    pub url: String,
    pub redis_url: String,
    pub namespace: String,
    pub bucket: String,
    pub s3: &'static S3Server,
    pub workers: Mutex<Vec<WorkerProcess>>,
    opts: FleetOptions,
    dir: tempfile::TempDir,
    config: Config,
    coordinator: Mutex<CoordinatorThread>,
}

fn coordinator_config(
    dir: &Path,
    redis_url: &str,
    namespace: &str,
    s3: &S3Server,
    bucket: &str,
) -> anyhow::Result<Config> {
    let mut config = Config::embedded(dir.join("unused-local"));
    config.queue = QueueSource::Redis {
        url: redis_url.to_owned(),
        namespace: namespace.to_owned(),
        wait_replicas: 0,
        max_blocking: 256,
    };
    config.storage = StorageConfig::S3(s3.config(bucket));
    config.auth = Auth::from_arg(
        &format!("{KEY_ALPHA}:alpha,{KEY_BETA}:beta,{KEY_GAMMA}:gamma,{KEY_DELTA}:delta"),
        0,
    )?;
    config.reap_interval = Duration::from_millis(100);
    config.limits.max_body_bytes = MAX_BODY_BYTES;
    config.limits.max_image_bytes = 512 << 10;
    let job = &mut config.limits.job;
    // The tiny model on a shared CPU: small images.
    job.min_side = 64;
    job.max_side = 512;
    job.max_pixels = 512 * 512;
    job.max_steps = 100;
    job.default_generate_size = (128, 128);
    job.aspect_ratio_area = 128 * 128;
    job.context_max_pixels = 256 * 256;
    Ok(config)
}

impl Fleet {
    /// Starts the coordinator and `opts.workers` worker processes (not waiting for them).
    pub fn start(opts: FleetOptions) -> anyhow::Result<Self> {
        Self::start_with(opts, |_| {})
    }

    /// `start`, with `adjust` changing the coordinator's config first.
    pub fn start_with(
        opts: FleetOptions,
        adjust: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Self> {
        let redis_url = match &opts.redis_url {
            Some(url) => url.clone(),
            None => redis_url(),
        };
        let namespace = fresh_namespace();
        let s3 = match opts.s3 {
            Some(s3) => s3,
            None => S3Server::shared()?,
        };
        let bucket = unique_bucket_name();
        let dir = tempfile::Builder::new()
            .prefix("kontext-e2e-fleet-")
            .tempdir()?;
        // On a thread of its own: the caller may be inside a test's runtime.
        let mut cfg = s3.config(&bucket);
        cfg.create_bucket_if_missing = true;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(async {
                        let store = S3Store::connect(cfg).await?;
                        store.check().await.context("creating the test bucket")
                    })
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the bucket-creating thread panicked"))?
        })?;

        let mut config = coordinator_config(dir.path(), &redis_url, &namespace, s3, &bucket)?;
        adjust(&mut config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let coordinator = CoordinatorThread::start(listener, config.clone())?;
        let fleet = Self {
            url,
            redis_url,
            namespace,
            bucket,
            s3,
            workers: Mutex::new(Vec::new()),
            opts,
            dir,
            config,
            coordinator: Mutex::new(coordinator),
        };
        for i in 0..fleet.opts.workers {
            fleet.spawn_worker(&format!("w{i}"))?;
        }
        Ok(fleet)
    }

    /// Stops the coordinator (gracefully: it finishes open requests) and starts a new one on the
    /// same address with the same configuration, as a deploy does. Returns the time from the
    /// stop to the new process answering `/healthz`.
    pub fn restart_coordinator(&self) -> anyhow::Result<Duration> {
        let addr = self.url.trim_start_matches("http://").to_owned();
        let started = Instant::now();
        let mut coordinator = self.coordinator.lock().expect("coordinator");
        coordinator.stop();
        // The same port: std's TcpListener sets SO_REUSEADDR on Unix.
        let listener =
            std::net::TcpListener::bind(&addr).with_context(|| format!("binding {addr} again"))?;
        *coordinator = CoordinatorThread::start(listener, self.config.clone())?;
        let until = Instant::now() + DEADLINE;
        loop {
            let probe = std::net::TcpStream::connect(&addr).and_then(|mut s| {
                use std::io::{Read, Write};
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
                let mut reply = String::new();
                s.read_to_string(&mut reply)?;
                Ok(reply)
            });
            if probe.is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
                return Ok(started.elapsed());
            }
            if Instant::now() > until {
                bail!("the restarted coordinator never answered /healthz");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts one more worker process named `id`.
    pub fn spawn_worker(&self, id: &str) -> anyhow::Result<()> {
        self.spawn_worker_with(id, &[])
    }

    /// `spawn_worker` with more flags of `kontext-worker serve`.
    pub fn spawn_worker_with(&self, id: &str, extra: &[&str]) -> anyhow::Result<()> {
        let log = self.dir.path().join(format!("{id}.log"));
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_e2e-worker"))
            .args([
                "--redis-url",
                &self.redis_url,
                "--redis-namespace",
                &self.namespace,
                "--bucket",
                &self.bucket,
                "--s3-endpoint",
                self.s3.endpoint_url(),
                "--s3-region",
                self.s3.region(),
                "--s3-path-style",
                "--model",
                self.opts.model,
                "--worker-id",
                id,
                "--lease-ttl",
                self.opts.lease_ttl,
                "--grace-period",
                self.opts.grace_period,
                "--claim-wait",
                "500ms",
                "--metrics-listen",
                "127.0.0.1:0",
                "--min-step-ms",
                &self.opts.min_step_ms.to_string(),
                "--stdin-guard",
            ])
            .args(extra)
            .env("AWS_ACCESS_KEY_ID", self.s3.access_key())
            .env("AWS_SECRET_ACCESS_KEY", self.s3.secret_key())
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("spawning e2e-worker")?;
        self.workers.lock().expect("workers").push(WorkerProcess {
            id: id.to_owned(),
            child,
            log,
        });
        Ok(())
    }

    /// Runs `f` on the worker named `id`.
    pub fn with_worker<T>(&self, id: &str, f: impl FnOnce(&mut WorkerProcess) -> T) -> T {
        let mut workers = self.workers.lock().expect("workers");
        let w = workers
            .iter_mut()
            .find(|w| w.id == id)
            .unwrap_or_else(|| panic!("no worker {id}"));
        f(w)
    }

    /// Every worker's log, for failure messages.
    pub fn logs(&self) -> String {
        let workers = self.workers.lock().expect("workers");
        workers
            .iter()
            .map(|w| format!("----- {} -----\n{}", w.id, w.log_text()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A client of this fleet's queue, for looking inside job records.
    pub async fn queue(&self) -> anyhow::Result<RedisQueue> {
        Ok(RedisQueue::connect(&self.redis_url, &self.namespace, RedisConfig::default()).await?)
    }

    /// The S3 store of this fleet's bucket.
    pub async fn store(&self) -> anyhow::Result<S3Store> {
        Ok(S3Store::connect(self.s3.config(&self.bucket)).await?)
    }

    /// Object keys under `prefix` in the bucket (read from the S3 server's directory).
    pub fn object_keys(&self, prefix: &str) -> Vec<String> {
        let root = self.s3.data_dir().join(&self.bucket);
        let mut keys = Vec::new();
        collect_files(&root, &root, &mut keys);
        keys.retain(|k| k.starts_with(prefix));
        keys.sort();
        keys
    }

    /// POSTs `body` to `path` as tenant alpha and expects 202; the JSON answer.
    pub async fn post_accepted(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let resp = http(KEY_ALPHA)
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .expect("POST");
        let status = resp.status();
        let v: serde_json::Value = resp.json().await.expect("JSON");
        assert_eq!(status, 202, "POST {path}: {v}");
        v
    }

    /// Polls the job record until `want` holds (deadline: `DEADLINE`).
    pub async fn wait_record(
        &self,
        queue: &RedisQueue,
        id: JobId,
        what: &str,
        want: impl Fn(&JobRecord) -> bool,
    ) -> anyhow::Result<JobRecord> {
        let until = Instant::now() + DEADLINE;
        let mut cursor: Option<String> = None;
        loop {
            let job = queue.get(id).await?.context("job exists")?;
            if want(&job) {
                return Ok(job);
            }
            if Instant::now() > until {
                bail!(
                    "job {id} never became {what}: {job:#?}\nworker logs:\n{}",
                    self.logs()
                );
            }
            // Wake on the job's next event rather than sleeping.
            let events = queue
                .events(id, cursor.as_deref(), Duration::from_millis(250))
                .await?;
            if let Some((c, _)) = events.last() {
                cursor = Some(c.clone());
            }
        }
    }
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        // s3s-fs keeps its own bookkeeping in dot-files.
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect_files(root, &path, out);
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
}

/// An HTTP client that authenticates as `key`.
pub fn http(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).expect("header"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

/// A PNG of `w × h` with a gradient.
pub fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 255 / w.max(1)) as u8, (y * 255 / h.max(1)) as u8, 128])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode");
    out.into_inner()
}

/// A PNG whose header claims `w × h` pixels but that has no image data (a decompression bomb's
/// header): signature + IHDR with a correct CRC + IEND.
pub fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc_input = kind.to_vec();
        crc_input.extend_from_slice(data);
        out.extend_from_slice(&crc_input);
        out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, adaptive filter, no interlace
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IEND", &[]);
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Reads a whole SSE response into (event, data) pairs, until the stream closes.
pub async fn read_sse(resp: reqwest::Response) -> anyhow::Result<Vec<(String, String)>> {
    use futures::StreamExt;
    let mut parser = kontext::sse::SseParser::new();
    let mut out = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = tokio::time::timeout(DEADLINE, body.next())
        .await
        .context("the event stream stalled")?
    {
        for e in parser.feed(&chunk?) {
            out.push((e.event, e.data));
        }
    }
    Ok(out)
}

/// Asserts that `bytes` is a PNG of `w × h`.
pub fn assert_png(bytes: &[u8], w: u32, h: u32, what: &str) {
    assert_eq!(
        image::guess_format(bytes).ok(),
        Some(image::ImageFormat::Png),
        "{what}: not a PNG"
    );
    let img =
        image::load_from_memory(bytes).unwrap_or_else(|e| panic!("{what}: undecodable PNG: {e}"));
    assert_eq!((img.width(), img.height()), (w, h), "{what}: size");
}

/// A response's status and JSON body (a body that is not JSON comes back as `{"raw": text}`).
pub async fn json_of(resp: reqwest::Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({ "raw": text }));
    (status, value)
}

/// A flush of stdout so interleaved test output stays readable.
pub fn note(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub type SharedFleet = Arc<Fleet>;
