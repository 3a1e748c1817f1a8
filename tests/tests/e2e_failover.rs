//! Worker failures end to end: a worker SIGKILLed mid-job (the job completes exactly once on the
//! other worker), and a worker told to stop with SIGTERM (it drains: the job is released and
//! finished by another worker, not counted as a crash). Real Redis, the S3 server, the
//! coordinator (reaper every 100 ms) and `e2e-worker` processes with a short lease.

mod e2e_support;

use std::time::Duration;

use e2e_support::{Fleet, FleetOptions, KEY_ALPHA, assert_png, http};
use kontext_proto::{JobEvent, JobId, JobQueue, JobStatus};
use kontext_storage::BlobStore;
use serde_json::{Value, json};

async fn submit(fleet: &Fleet, body: Value) -> JobId {
    let resp = http(KEY_ALPHA)
        .post(format!("{}/v1/jobs", fleet.url))
        .json(&body)
        .send()
        .await
        .expect("POST /v1/jobs");
    assert_eq!(resp.status(), 202);
    let v: Value = resp.json().await.expect("JSON");
    v["id"].as_str().expect("id").parse().expect("uuid")
}

/// Every state event of the job, in order.
async fn states(queue: &impl JobQueue, id: JobId) -> Vec<JobStatus> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let events = queue
            .events(id, cursor.as_deref(), Duration::ZERO)
            .await
            .expect("events");
        let Some((last, _)) = events.last() else {
            break;
        };
        cursor = Some(last.clone());
        out.extend(events.into_iter().filter_map(|(_, e)| match e {
            JobEvent::State { status, .. } => Some(status),
            JobEvent::Progress { .. } => None,
        }));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_leaves_the_job_to_the_other_worker_exactly_once() {
    let fleet = Fleet::start(FleetOptions {
        workers: 2,
        lease_ttl: "1500ms",
        min_step_ms: 40,
        grace_period: "10s",
        ..FleetOptions::default()
    })
    .expect("fleet");
    let queue = fleet.queue().await.expect("queue");
    // 80 steps of at least 40 ms: over 3 s of denoising, ample time to kill it half-way.
    let id = submit(
        &fleet,
        json!({"prompt": "a job that outlives its first worker", "width": 64, "height": 64,
               "steps": 80, "seed": 11}),
    )
    .await;
    let running = fleet
        .wait_record(&queue, id, "running with progress", |j| {
            j.status == JobStatus::Running && j.progress > 0.0
        })
        .await
        .expect("running");
    let victim = running.worker.clone().expect("a worker holds the job");
    fleet.with_worker(&victim, |w| w.kill());

    let done = fleet
        .wait_record(&queue, id, "terminal", |j| j.status.is_terminal())
        .await
        .expect("terminal");
    assert_eq!(
        done.status,
        JobStatus::Succeeded,
        "{done:#?}\n{}",
        fleet.logs()
    );
    let survivor = done.worker.clone().expect("worker");
    assert_ne!(survivor, victim, "the other worker finished it");
    assert_eq!(done.crashes, 1, "the kill counted as one crash");
    assert_eq!(done.attempts, 2);
    assert!(
        done.epoch > running.epoch,
        "{} vs {}",
        done.epoch,
        running.epoch
    );

    // Exactly once: one success event, and one stored object (the killed attempt never uploaded).
    let succeeded = states(&queue, id)
        .await
        .into_iter()
        .filter(|s| *s == JobStatus::Succeeded)
        .count();
    assert_eq!(succeeded, 1);
    let result = done.result.expect("result");
    assert_eq!(result.key, format!("out/alpha/{id}/{}.png", done.epoch));
    assert_eq!(
        fleet.object_keys(&format!("out/alpha/{id}/")),
        vec![result.key.to_string()]
    );
    let blob = fleet
        .store()
        .await
        .expect("store")
        .get(&result.key)
        .await
        .expect("object");
    assert_png(&blob.bytes, 64, 64, "result after failover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_a_job_that_does_not_fit_the_grace_period() {
    // A grace period far shorter than the job: the draining worker must give the job back.
    let fleet = Fleet::start(FleetOptions {
        workers: 1,
        lease_ttl: "3s",
        min_step_ms: 40,
        grace_period: "200ms",
        ..FleetOptions::default()
    })
    .expect("fleet");
    let queue = fleet.queue().await.expect("queue");
    let id = submit(
        &fleet,
        json!({"prompt": "too long to finish while draining", "width": 64, "height": 64,
               "steps": 100, "seed": 12}),
    )
    .await;
    let running = fleet
        .wait_record(&queue, id, "running with progress", |j| {
            j.status == JobStatus::Running && j.progress > 0.0
        })
        .await
        .expect("running");
    fleet.with_worker("w0", |w| w.terminate()).expect("SIGTERM");
    let exit = fleet
        .with_worker("w0", |w| w.wait_exit(e2e_support::DEADLINE))
        .expect("the worker exits after draining");
    assert!(exit.success(), "clean exit: {exit:?}\n{}", fleet.logs());
    let released = queue.get(id).await.expect("get").expect("job");
    assert_eq!(
        released.status,
        JobStatus::Queued,
        "{released:#?}\n{}",
        fleet.logs()
    );
    assert_eq!(released.attempts, 0, "a release does not count an attempt");
    assert_eq!(released.crashes, 0, "a release is not a crash");
    assert!(released.epoch > running.epoch);

    // A new worker picks it up and finishes it.
    fleet.spawn_worker("w1").expect("second worker");
    let done = fleet
        .wait_record(&queue, id, "terminal", |j| j.status.is_terminal())
        .await
        .expect("terminal");
    assert_eq!(
        done.status,
        JobStatus::Succeeded,
        "{done:#?}\n{}",
        fleet.logs()
    );
    assert_eq!(done.worker.as_deref(), Some("w1"));
    assert_eq!(done.attempts, 1);
    assert_eq!(fleet.object_keys(&format!("out/alpha/{id}/")).len(), 1);
}
