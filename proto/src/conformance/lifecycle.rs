//! Conformance rules for the happy path: submit, idempotency, limits, priority, claiming, races,
//! commit, events, listing and stats.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Barrier;

use super::*;
use crate::error::QueueError;
use crate::queue::{CompleteOutcome, JobEvent, JobQueue};
use crate::{CancelOutcome, JobError, JobErrorKind, JobStatus, Priority};

/// A factory of fresh queues.
pub trait MakeQueue<Q>: Fn(QueueConfig) -> Self::Fut {
    type Fut: Future<Output = Q>;
}

impl<Q, F, Fut> MakeQueue<Q> for F
where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = Q>,
{
    type Fut = Fut;
}

/// A submitted job is stored at once with its lifecycle fields zeroed and one `queued` event.
pub async fn submit_is_visible_at_once<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    let mut sub = submission("acme", Priority::Standard, "a fox");
    // The trace context travels with the job, for the worker's spans.
    sub.spec.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    let id = submit(&q, sub.clone(), NOW).await;
    let r = record(&q, id).await;
    assert_eq!(r.id, id);
    assert_eq!(r.tenant, "acme");
    assert_eq!(r.status, JobStatus::Queued);
    assert_eq!(r.spec, sub.spec);
    assert_eq!((r.attempts, r.crashes, r.epoch, r.progress), (0, 0, 0, 0.0));
    assert_eq!(r.created_at, NOW);
    assert!(!r.cancel_requested);
    assert_eq!(
        (r.started_at, r.finished_at, &r.worker),
        (None, None, &None)
    );
    assert!(r.result.is_none() && r.error.is_none() && r.chain.is_none());
    let evs = events(&q, id).await;
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(
        evs[0].1,
        JobEvent::State {
            status: JobStatus::Queued,
            at: NOW
        }
    );
}

/// "Unknown id" is never reported as anything but unknown.
pub async fn unknown_ids_are_not_found<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    let id = crate::JobId::new();
    assert!(within("get", q.get(id)).await.expect("get").is_none());
    let c = within("cancel", q.cancel(id, NOW)).await.expect("cancel");
    assert_eq!(c, CancelOutcome::NotFound);
    let e = within("events", q.events(id, None, Duration::ZERO)).await;
    assert!(
        matches!(e, Err(QueueError::NotFound(x)) if x == id),
        "{e:?}"
    );
    let lease = Lease {
        job_id: id,
        worker: "w".into(),
        epoch: 1,
        attempt: 1,
    };
    let h = within("heartbeat", q.heartbeat(&lease, TTL, NOW)).await;
    assert!(matches!(h, Err(QueueError::NotFound(_))), "{h:?}");
    let c = within("complete", q.complete(&lease, result_for(&lease), NOW)).await;
    assert!(matches!(c, Err(QueueError::NotFound(_))), "{c:?}");
}

/// Same key + same body → the original id; same key + other body → a distinct error; keys are
/// per tenant; a replay is answered even when the tenant is at its in-flight limit.
pub async fn idempotent_submit<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    let keyed = |tenant: &str, body: &str| {
        let mut s = submission(tenant, Priority::Standard, body);
        s.idempotency_key = Some("key-1".into());
        s
    };
    let first = within("submit", q.submit(keyed("acme", "a"), NOW))
        .await
        .expect("submit");
    assert!(first.created);
    let again = within("replay", q.submit(keyed("acme", "a"), NOW + 5))
        .await
        .expect("replay");
    assert_eq!((again.id, again.created), (first.id, false));
    let clash = within("conflict", q.submit(keyed("acme", "b"), NOW + 6)).await;
    assert!(
        matches!(clash, Err(QueueError::IdempotencyConflict)),
        "{clash:?}"
    );
    let other = within("other tenant", q.submit(keyed("zeta", "a"), NOW))
        .await
        .expect("submit");
    assert!(other.created);
    assert_ne!(other.id, first.id);
    let page = within("list", q.list("acme", None, 10))
        .await
        .expect("list");
    assert_eq!(page.jobs.len(), 1, "a replay must not create a second job");

    let mut limited = keyed("acme", "a");
    limited.max_in_flight = 1;
    let replay = within("replay at limit", q.submit(limited, NOW + 7))
        .await
        .expect("replay");
    assert_eq!(replay.id, first.id);

    let a = submit(&q, submission("acme", Priority::Standard, "same"), NOW).await;
    let b = submit(&q, submission("acme", Priority::Standard, "same"), NOW).await;
    assert_ne!(a, b, "without a key every submission is a new job");
}

/// A tenant at `max_in_flight` non-terminal jobs is refused until one finishes.
pub async fn in_flight_limit_per_tenant<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    let limited = |tenant: &str| {
        let mut s = submission(tenant, Priority::Standard, "x");
        s.max_in_flight = 2;
        s
    };
    let a = submit(&q, limited("acme"), NOW).await;
    submit(&q, limited("acme"), NOW).await;
    let over = within("third submit", q.submit(limited("acme"), NOW)).await;
    assert!(
        matches!(
            over,
            Err(QueueError::TooManyInFlight {
                in_flight: 2,
                limit: 2
            })
        ),
        "{over:?}"
    );
    submit(&q, limited("zeta"), NOW).await;
    assert_eq!(
        within("cancel", q.cancel(a, NOW)).await.expect("cancel"),
        CancelOutcome::Canceled
    );
    submit(&q, limited("acme"), NOW).await;
    let over = within("submit at limit", q.submit(limited("acme"), NOW)).await;
    assert!(
        matches!(over, Err(QueueError::TooManyInFlight { .. })),
        "{over:?}"
    );
    // Finish one by completing it; the slot frees up.
    let (lease, job) = claim(&q, "w", NOW).await;
    assert_ne!(job.id, a);
    let done = within("complete", q.complete(&lease, result_for(&lease), NOW)).await;
    assert_eq!(done.expect("complete"), CompleteOutcome::Committed);
    submit(&q, limited("acme"), NOW).await;
}

/// Workers take `high` before `standard` before `bulk`, FIFO within a class.
pub async fn claims_follow_priority_then_fifo<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    let b1 = submit(&q, submission("t", Priority::Bulk, "b1"), NOW).await;
    let s1 = submit(&q, submission("t", Priority::Standard, "s1"), NOW + 1).await;
    let h1 = submit(&q, submission("t", Priority::High, "h1"), NOW + 2).await;
    let s2 = submit(&q, submission("t", Priority::Standard, "s2"), NOW + 3).await;
    let h2 = submit(&q, submission("t", Priority::High, "h2"), NOW + 4).await;
    let mut order = Vec::new();
    for i in 0..5 {
        order.push(claim(&q, "w", NOW + 10 + i).await.1.id);
    }
    assert_eq!(order, [h1, h2, s1, s2, b1]);
    claim_none(&q, NOW + 20).await;
}

/// A claim that waits returns as soon as a job is submitted (and `None` after its wait).
pub async fn blocked_claim_wakes_on_submit<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = Arc::new(fresh(&make, config()).await);
    let short = within(
        "short wait",
        q.claim("w", TTL, NOW, Duration::from_millis(50)),
    )
    .await;
    assert!(short.expect("claim").is_none());
    let waiter = {
        let q = Arc::clone(&q);
        tokio::spawn(async move { q.claim("w", TTL, NOW, Duration::from_secs(15)).await })
    };
    let id = submit(&*q, submission("t", Priority::Bulk, "late"), NOW).await;
    let got = within("blocked claim", waiter)
        .await
        .expect("task")
        .expect("claim");
    assert_eq!(got.map(|c| c.job.id), Some(id));
}

/// Many workers claim one job at the same moment: exactly one gets it.
pub async fn two_workers_race_for_one_job<Q: JobQueue>(make: impl MakeQueue<Q>) {
    const WORKERS: usize = 8;
    let q = Arc::new(fresh(&make, config()).await);
    for round in 0..5u64 {
        let id = submit(
            &*q,
            submission("t", Priority::Standard, "contested"),
            NOW + round,
        )
        .await;
        let barrier = Arc::new(Barrier::new(WORKERS));
        let tasks: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (q, barrier) = (Arc::clone(&q), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    q.claim(&format!("w{w}"), TTL, NOW + round, Duration::ZERO)
                        .await
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            if let Some(c) = within("racing claim", t)
                .await
                .expect("task")
                .expect("claim")
            {
                winners.push(c);
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one worker may win"
        );
        assert_eq!(winners[0].job.id, id);
        assert_eq!((winners[0].lease.attempt, winners[0].lease.epoch), (1, 1));
        let r = record(&*q, id).await;
        assert_eq!(r.worker.as_deref(), Some(winners[0].lease.worker.as_str()));
    }
}

/// Commit: refused for a stale epoch, idempotent for the owner, terminal afterwards.
pub async fn complete_is_fenced_and_idempotent<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    let id = submit(&q, submission("t", Priority::Standard, "x"), NOW).await;
    let (lease, job) = claim(&q, "w1", NOW + 10).await;
    assert_eq!(
        (job.status, job.attempts, job.epoch),
        (JobStatus::Running, 1, 1)
    );
    assert_eq!(
        (job.started_at, job.worker.as_deref()),
        (Some(NOW + 10), Some("w1"))
    );
    let forged = Lease {
        epoch: lease.epoch + 1,
        ..lease.clone()
    };
    let c = within(
        "forged complete",
        q.complete(&forged, result_for(&forged), NOW + 20),
    )
    .await;
    assert!(matches!(c, Err(QueueError::Stale(x)) if x == id), "{c:?}");
    let c = within("complete", q.complete(&lease, result_for(&lease), NOW + 20)).await;
    assert_eq!(c.expect("complete"), CompleteOutcome::Committed);
    let c = within(
        "complete again",
        q.complete(&lease, result_for(&lease), NOW + 21),
    )
    .await;
    assert_eq!(c.expect("complete again"), CompleteOutcome::AlreadyDone);
    let r = record(&q, id).await;
    assert_eq!(r.status, JobStatus::Succeeded);
    assert_eq!(r.result, Some(result_for(&lease)));
    assert_eq!((r.finished_at, r.progress), (Some(NOW + 20), 1.0));
    let h = within("heartbeat after commit", q.heartbeat(&lease, TTL, NOW + 22)).await;
    assert!(matches!(h, Err(QueueError::Stale(_))), "{h:?}");
    let f = within(
        "fail after commit",
        q.fail(&lease, JobError::new(JobErrorKind::Fatal, "x"), NOW + 23),
    )
    .await;
    assert!(matches!(f, Err(QueueError::Stale(_))), "{f:?}");
    let c = within("cancel after commit", q.cancel(id, NOW + 24))
        .await
        .expect("cancel");
    assert_eq!(c, CancelOutcome::AlreadyCompleted);
    assert_eq!(
        state_events(&q, id).await,
        [JobStatus::Queued, JobStatus::Running, JobStatus::Succeeded]
    );
}

/// Progress is recorded and published; event cursors resume; a waiting reader wakes on news.
pub async fn progress_and_state_events<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = Arc::new(fresh(&make, config()).await);
    let id = submit(&*q, submission("t", Priority::Standard, "x"), NOW).await;
    let (lease, _) = claim(&*q, "w", NOW + 1).await;
    for step in 1..=2 {
        let s = within(
            "progress",
            q.progress(&lease, step, 4, TTL, NOW + 1 + u64::from(step)),
        )
        .await;
        assert!(!s.expect("progress").cancel_requested);
    }
    assert_eq!(record(&*q, id).await.progress, 0.5);
    let all = events(&*q, id).await;
    let kinds: Vec<JobEvent> = all.iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(
        kinds,
        [
            JobEvent::State {
                status: JobStatus::Queued,
                at: NOW
            },
            JobEvent::State {
                status: JobStatus::Running,
                at: NOW + 1
            },
            JobEvent::Progress {
                step: 1,
                total: 4,
                at: NOW + 2
            },
            JobEvent::Progress {
                step: 2,
                total: 4,
                at: NOW + 3
            },
        ]
    );
    let after_first = &all[2].0;
    let tail = within(
        "events after cursor",
        q.events(id, Some(after_first), Duration::ZERO),
    )
    .await;
    assert_eq!(tail.expect("events").len(), 1);
    let last = all[3].0.clone();
    let reader = {
        let q = Arc::clone(&q);
        tokio::spawn(async move { q.events(id, Some(&last), Duration::from_secs(15)).await })
    };
    let c = within("complete", q.complete(&lease, result_for(&lease), NOW + 9)).await;
    assert_eq!(c.expect("complete"), CompleteOutcome::Committed);
    let news = within("waiting event reader", reader)
        .await
        .expect("task")
        .expect("events");
    assert_eq!(news.len(), 1, "{news:?}");
    assert_eq!(
        news[0].1,
        JobEvent::State {
            status: JobStatus::Succeeded,
            at: NOW + 9
        }
    );
    let bad = within(
        "bad cursor",
        q.events(id, Some("not-a-cursor"), Duration::ZERO),
    )
    .await;
    assert!(matches!(bad, Err(QueueError::InvalidCursor(_))), "{bad:?}");
}

/// A tenant sees only its own jobs, newest first, in pages that cover each job once.
pub async fn list_by_tenant_newest_first<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    let mut mine = Vec::new();
    for i in 0..5 {
        mine.push(submit(&q, submission("acme", Priority::Standard, "m"), NOW + i).await);
    }
    // Same creation time: pagination must still not skip or repeat.
    mine.push(submit(&q, submission("acme", Priority::Bulk, "tie"), NOW + 4).await);
    for i in 0..2 {
        submit(&q, submission("zeta", Priority::Standard, "z"), NOW + i).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let page = within("list page", q.list("acme", cursor.as_deref(), 2))
            .await
            .expect("list");
        assert!(page.jobs.len() <= 2);
        assert!(page.jobs.iter().all(|j| j.tenant == "acme"));
        seen.extend(page.jobs.iter().map(|j| (j.created_at, j.id)));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), 6, "every job exactly once: {seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seen:?}"
    );
    let mut ids: Vec<_> = seen.iter().map(|s| s.1).collect();
    ids.sort();
    mine.sort();
    assert_eq!(ids, mine);
    let zeta = within("list zeta", q.list("zeta", None, 10))
        .await
        .expect("list");
    assert_eq!((zeta.jobs.len(), zeta.next_cursor), (2, None));
    let none = within("list unknown", q.list("nobody", None, 10))
        .await
        .expect("list");
    assert!(none.jobs.is_empty());
    let bad = within("bad cursor", q.list("acme", Some("garbage"), 10)).await;
    assert!(matches!(bad, Err(QueueError::InvalidCursor(_))), "{bad:?}");
}

/// Stats: ready per class, age of the oldest ready job, running, delayed, dead letters.
pub async fn stats_count_ready_running_delayed_dead<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    submit(&q, submission("t", Priority::High, "a"), NOW).await;
    submit(&q, submission("t", Priority::High, "b"), NOW + 100).await;
    submit(&q, submission("t", Priority::Bulk, "c"), NOW + 200).await;
    let s = within("stats", q.stats(NOW + 500)).await.expect("stats");
    let ready = |s: &crate::QueueStats, p| s.ready.iter().find(|(c, _)| *c == p).map(|r| r.1);
    assert_eq!(ready(&s, Priority::High), Some(2));
    assert_eq!(ready(&s, Priority::Standard), Some(0));
    assert_eq!(ready(&s, Priority::Bulk), Some(1));
    assert_eq!(
        (s.oldest_ready_age_ms, s.running, s.delayed, s.dead_letters),
        (500, 0, 0, 0)
    );
    let (lease, _) = claim(&q, "w", NOW + 600).await;
    let s = within("stats", q.stats(NOW + 700)).await.expect("stats");
    assert_eq!(
        (ready(&s, Priority::High), s.running, s.oldest_ready_age_ms),
        (Some(1), 1, 600)
    );
    let err = JobError::new(JobErrorKind::Transient, "storage hiccup");
    within("fail", q.fail(&lease, err, NOW + 800))
        .await
        .expect("fail");
    let s = within("stats", q.stats(NOW + 900)).await.expect("stats");
    assert_eq!((s.running, s.delayed), (0, 1));
}
