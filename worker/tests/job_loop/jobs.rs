//! Jobs that run to their end: results, progress, error kinds, the health endpoint.

use std::sync::Arc;
use std::time::Duration;

use kontext_proto::{InputImage, JobEvent, JobKind, JobQueue, JobStatus, OutputFormat};
use kontext_storage::{BlobStore, ObjectKey};
use kontext_worker::metrics::Outcome;

use crate::harness::{Options, spec, start, wait_until};

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
