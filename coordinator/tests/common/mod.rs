//! Test harness: a coordinator on 127.0.0.1:0 with a `MemoryQueue` and local storage in a temp
//! dir, an HTTP client, and a fake in-test "worker" that claims and completes jobs through the
//! queue API (no engine). Every wait has a deadline; nothing sleeps to synchronize.

#![allow(dead_code)]

use std::future::Future;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kontext_coordinator::AppState;
use kontext_coordinator::auth::Auth;
use kontext_coordinator::config::Config;
use kontext_proto::AnyQueue;
use kontext_proto::memory::MemoryQueue;
use kontext_proto::{JobId, JobQueue, JobResult, Lease};
use kontext_storage::keys::output_key;
use kontext_storage::{AnyBlobStore, BlobStore, LocalStore};
use serde_json::Value;
use tokio::sync::oneshot;

/// API keys of the two test tenants.
pub const KEY_A: &str = "key-a-0123456789abcdef";
pub const KEY_B: &str = "key-b-0123456789abcdef";

/// Limit on any single await in a test.
pub const STALL: Duration = Duration::from_secs(20);

pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STALL, fut).await {
        Ok(v) => v,
        Err(_) => panic!("stalled: {what} did not finish within {STALL:?}"),
    }
}

pub struct Server {
    pub url: String,
    pub state: AppState,
    pub queue: Arc<MemoryQueue>,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Two tenants: `acme` (KEY_A, 3 in flight) and `globex` (KEY_B).
pub fn tenant_keys() -> Auth {
    Auth::from_arg(&format!("{KEY_A}:acme:3,{KEY_B}:globex"), 24).expect("valid keys")
}

/// A coordinator with API keys and small test limits; `adjust` may change the config.
pub async fn start(adjust: impl FnOnce(&mut Config)) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::embedded(dir.path().join("data"));
    config.auth = tenant_keys();
    config.limits.max_body_bytes = 1 << 20;
    config.limits.max_image_bytes = 256 << 10;
    config.limits.job.max_input_pixels = 512 * 512;
    config.limits.job.max_input_side = 1024;
    config.limits.job.min_side = 64;
    config.limits.job.default_generate_size = (256, 256);
    config.limits.job.aspect_ratio_area = 256 * 256;
    config.limits.job.context_max_pixels = 256 * 256;
    config.reap_interval = Duration::from_millis(50);
    config.webhooks.poll_interval = Duration::from_millis(20);
    adjust(&mut config);

    let queue = Arc::new(MemoryQueue::new(config.queue_config.clone()));
    let store = AnyBlobStore::from(LocalStore::new(dir.path().join("data")));
    store.check().await.expect("local store");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let state = AppState::new(config, AnyQueue::Memory(queue.clone()), store, addr);
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = state.clone();
    let task = tokio::spawn(async move {
        kontext_coordinator::serve(listener, serving, async {
            let _ = stopped.await;
        })
        .await
        .expect("server runs");
    });
    Server {
        url: format!("http://{addr}"),
        state,
        queue,
        dir,
        http: reqwest::Client::new(),
        stop: Some(stop),
        task: Some(task),
    }
}

impl Server {
    /// Triggers graceful shutdown and waits until the server has stopped.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            within("graceful shutdown", task)
                .await
                .expect("server task");
        }
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// POST JSON with a bearer key; returns (status, headers, JSON body).
    pub async fn post_json(&self, path: &str, key: &str, body: &Value) -> Reply {
        self.send(self.http.post(self.at(path)).bearer_auth(key).json(body))
            .await
    }

    pub async fn get(&self, path: &str, key: &str) -> Reply {
        self.send(self.http.get(self.at(path)).bearer_auth(key))
            .await
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let resp = within("HTTP request", req.send())
            .await
            .expect("request reaches the server");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = within("HTTP body", resp.bytes()).await.expect("body");
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            json,
            bytes,
        }
    }

    /// Submits a generate job for KEY_A and returns its id.
    pub async fn submit(&self, key: &str, body: Value) -> String {
        let r = self.post_json("/v1/jobs", key, &body).await;
        assert_eq!(r.status, 202, "{}", r.json);
        r.json["id"].as_str().expect("id").to_owned()
    }

    /// Files under the data dir's `in/` tree (stored inputs).
    pub fn stored_inputs(&self) -> Vec<String> {
        let root = self.dir.path().join("data").join("in");
        let mut out = Vec::new();
        let mut stack = vec![root];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if path.is_dir() {
                    stack.push(path);
                } else if !name.starts_with('.') {
                    out.push(path.display().to_string());
                }
            }
        }
        out
    }

    /// The fake worker: claims the next job (waiting up to STALL), reports progress, stores a PNG
    /// of the job's size at its attempt-scoped key and commits it.
    pub async fn work_one(&self) -> JobId {
        let (lease, tenant, w, h) = self.claim_one().await;
        self.finish(&lease, &tenant, w, h).await;
        lease.job_id
    }

    pub async fn claim_one(&self) -> (Lease, String, u32, u32) {
        let claim = within(
            "fake worker claim",
            self.queue
                .claim("fake-worker", Duration::from_secs(30), now(), STALL),
        )
        .await
        .expect("claim")
        .expect("a job to claim");
        let spec = &claim.job.spec;
        (
            claim.lease,
            claim.job.tenant.clone(),
            spec.width,
            spec.height,
        )
    }

    pub async fn finish(&self, lease: &Lease, tenant: &str, w: u32, h: u32) {
        self.queue
            .progress(lease, 1, 2, Duration::from_secs(30), now())
            .await
            .expect("progress");
        let key = output_key(
            tenant,
            lease.job_id,
            lease.epoch,
            kontext_proto::OutputFormat::Png,
        )
        .expect("output key");
        self.state
            .store
            .put(&key, png(w, h), "image/png")
            .await
            .expect("store result");
        let result = JobResult {
            key,
            width: w,
            height: h,
            format: kontext_proto::OutputFormat::Png,
            seed: 7,
            latent_key: None,
            engine_ms: 1,
            full_evaluations: None,
            loras: Vec::new(),
            stages: None,
        };
        self.queue
            .complete(lease, result, now())
            .await
            .expect("complete");
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
    pub bytes: Bytes,
}

impl Reply {
    /// Asserts a 4xx naming `field`.
    pub fn assert_error(&self, status: u16, field: &str) {
        assert_eq!(self.status, status, "{}", self.json);
        assert_eq!(self.json["error"]["field"], field, "{}", self.json);
        assert!(
            self.json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
}

pub fn now() -> u64 {
    kontext_coordinator::state::now_ms()
}

/// A PNG of `w`x`h`.
pub fn png(w: u32, h: u32) -> Bytes {
    encode(w, h, image::ImageFormat::Png)
}

pub fn encode(w: u32, h: u32, format: image::ImageFormat) -> Bytes {
    let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([x as u8, y as u8, 99])
    }));
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), format)
        .expect("encode test image");
    Bytes::from(out)
}

/// A PNG signature and an IHDR chunk (correct CRC) claiming `w`x`h`, without pixel data.
pub fn png_header_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend_from_slice(&13u32.to_be_bytes());
    out.extend_from_slice(&ihdr);
    let mut crc = 0xffff_ffffu32;
    for &b in &ihdr {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    out.extend_from_slice(&(!crc).to_be_bytes());
    out
}
