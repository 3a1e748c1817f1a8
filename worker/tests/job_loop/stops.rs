//! Jobs stopped early: cancel, a lost lease, drains, a dead engine.

use std::sync::Arc;
use std::time::Duration;

use kontext_proto::clock::now_ms;
use kontext_proto::{JobQueue, JobStatus};
use kontext_storage::{BlobStore, ObjectKey};
use kontext_worker::job_loop::WorkerError;
use kontext_worker::metrics::Outcome;

use crate::harness::{DEADLINE, Gate, Options, spec, start, wait_until};

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
    let heartbeats = || h.status.metrics.heartbeats.get();
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
    assert_eq!(h.status.metrics.orphans_deleted.get(), 1);
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
        matches!(result, Err(WorkerError::Engine(ref m)) if m.to_string().contains("scripted panic")),
        "{result:?}"
    );
    assert!(status.fatal().is_some());
    assert!(!status.is_ready());
}
