//! Conformance rules for everything that goes wrong: expired leases and fencing, crashes and the
//! poison rule, cancel, retries with backoff, graceful release.

use std::collections::HashSet;
use std::time::Duration;

use super::lifecycle::MakeQueue;
use super::*;
use crate::error::QueueError;
use crate::policy::MAX_CRASHES;
use crate::queue::{CompleteOutcome, FailOutcome, JobQueue, ReapReport};
use crate::{CancelOutcome, JobError, JobErrorKind, JobStatus, Priority};

const TTL_MS: u64 = TTL.as_millis() as u64;

async fn reap<Q: JobQueue>(q: &Q, now: Millis) -> ReapReport {
    within("reap", q.reap(now))
        .await
        .expect("reap should succeed")
}

fn is_stale<T: std::fmt::Debug>(r: &Result<T, QueueError>) -> bool {
    matches!(r, Err(QueueError::Stale(_)))
}

/// A heartbeat moves the lease end; the reaper honours the new end; a stale lease cannot renew.
pub async fn heartbeat_renews_only_the_current_epoch<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    let id = submit(&q, submission("t", Priority::Standard, "x"), NOW).await;
    let (lease, _) = claim(&q, "w", NOW).await;
    let s = within("heartbeat", q.heartbeat(&lease, TTL, NOW + 10_000))
        .await
        .expect("heartbeat");
    assert_eq!(
        (s.lease_until, s.cancel_requested),
        (NOW + 10_000 + TTL_MS, false)
    );
    assert!(
        reap(&q, NOW + TTL_MS).await.requeued.is_empty(),
        "the renewed lease still holds"
    );
    assert_eq!(record(&q, id).await.status, JobStatus::Running);
    let r = reap(&q, NOW + 10_000 + TTL_MS).await;
    assert_eq!(r.requeued, [id], "expired at its renewed end");
    let h = within(
        "stale heartbeat",
        q.heartbeat(&lease, TTL, NOW + 10_001 + TTL_MS),
    )
    .await;
    assert!(is_stale(&h), "{h:?}");
    let rec = record(&q, id).await;
    assert_eq!(
        (rec.status, rec.epoch, rec.crashes, rec.worker),
        (JobStatus::Queued, 2, 1, None)
    );
}

/// A worker whose lease expired cannot heartbeat, progress, fail, release or complete after
/// another worker re-claimed the job; the new owner's commit wins.
pub async fn expired_worker_cannot_commit_after_reclaim<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    let id = submit(&q, submission("t", Priority::Standard, "x"), NOW).await;
    let (old, _) = claim(&q, "slow", NOW).await;
    assert_eq!(reap(&q, NOW + TTL_MS).await.requeued, [id]);
    let (new, job) = claim(&q, "fast", NOW + TTL_MS + 1).await;
    assert_eq!((job.id, new.epoch, new.attempt), (id, 3, 2));
    let t = NOW + TTL_MS + 2;
    assert!(is_stale(
        &within("old complete", q.complete(&old, result_for(&old), t)).await
    ));
    assert!(is_stale(
        &within("old heartbeat", q.heartbeat(&old, TTL, t)).await
    ));
    assert!(is_stale(
        &within("old progress", q.progress(&old, 1, 2, TTL, t)).await
    ));
    let err = JobError::new(JobErrorKind::Transient, "late");
    assert!(is_stale(&within("old fail", q.fail(&old, err, t)).await));
    assert!(is_stale(&within("old release", q.release(&old, t)).await));
    let c = within("new complete", q.complete(&new, result_for(&new), t + 1)).await;
    assert_eq!(c.expect("complete"), CompleteOutcome::Committed);
    let rec = record(&q, id).await;
    assert_eq!(rec.status, JobStatus::Succeeded);
    assert_eq!(rec.result, Some(result_for(&new)));
    assert_eq!((rec.worker.as_deref(), rec.attempts), (Some("fast"), 2));
    assert!(is_stale(
        &within("old complete", q.complete(&old, result_for(&old), t + 2)).await
    ));
}

/// A worker that dies (no heartbeats) loses the job to the reaper; another worker completes it,
/// exactly once.
pub async fn crashed_worker_job_completes_exactly_once<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    let id = submit(&q, submission("t", Priority::Standard, "x"), NOW).await;
    let (dead, _) = claim(&q, "dies", NOW).await;
    assert!(
        reap(&q, NOW + TTL_MS - 1).await.requeued.is_empty(),
        "not yet expired"
    );
    let r = reap(&q, NOW + TTL_MS).await;
    assert_eq!((r.requeued.as_slice(), r.dead.len()), ([id].as_slice(), 0));
    let (lease, _) = claim(&q, "survivor", NOW + TTL_MS + 5).await;
    let c = within(
        "complete",
        q.complete(&lease, result_for(&lease), NOW + TTL_MS + 9),
    )
    .await;
    assert_eq!(c.expect("complete"), CompleteOutcome::Committed);
    assert!(
        reap(&q, NOW + 10 * TTL_MS).await.requeued.is_empty(),
        "a finished job stays done"
    );
    claim_none(&q, NOW + 10 * TTL_MS).await;
    let c = within(
        "zombie complete",
        q.complete(&dead, result_for(&dead), NOW + 11 * TTL_MS),
    )
    .await;
    assert!(is_stale(&c), "{c:?}");
    let rec = record(&q, id).await;
    assert_eq!(
        (rec.status, rec.crashes, rec.attempts),
        (JobStatus::Succeeded, 1, 2)
    );
    assert_eq!(
        state_events(&q, id).await,
        [
            JobStatus::Queued,
            JobStatus::Running,
            JobStatus::Queued,
            JobStatus::Running,
            JobStatus::Succeeded
        ]
    );
}

/// A job that loses its worker `MAX_CRASHES` times goes to `dead` and the dead-letter stream,
/// while other jobs keep completing.
pub async fn poison_job_is_dead_lettered_after_three_crashes<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    let poison = submit(&q, submission("t", Priority::High, "oom every time"), NOW).await;
    let mut others = Vec::new();
    for i in 0..MAX_CRASHES + 1 {
        others.push(
            submit(
                &q,
                submission("t", Priority::Standard, &format!("ok{i}")),
                NOW,
            )
            .await,
        );
    }
    let mut t = NOW;
    let mut completed = HashSet::new();
    for crash in 1..=MAX_CRASHES {
        let (_, job) = claim(&q, &format!("victim{crash}"), t).await;
        assert_eq!(
            job.id, poison,
            "the high-priority poison job is claimed first"
        );
        // Meanwhile a healthy worker completes an ordinary job.
        let (lease, other) = claim(&q, "healthy", t).await;
        assert_ne!(other.id, poison);
        let c = within(
            "complete other",
            q.complete(&lease, result_for(&lease), t + 1),
        )
        .await;
        assert_eq!(c.expect("complete"), CompleteOutcome::Committed);
        completed.insert(other.id);
        t += TTL_MS;
        let r = reap(&q, t).await;
        if crash < MAX_CRASHES {
            assert_eq!(
                (r.requeued.as_slice(), r.dead.len()),
                ([poison].as_slice(), 0)
            );
        } else {
            assert_eq!(
                (r.requeued.len(), r.dead.as_slice()),
                (0, [poison].as_slice())
            );
        }
        t += 1;
    }
    let rec = record(&q, poison).await;
    assert_eq!(
        (rec.status, rec.crashes, rec.finished_at),
        (JobStatus::Dead, 3, Some(t - 1))
    );
    let s = within("stats", q.stats(t)).await.expect("stats");
    assert_eq!((s.dead_letters, s.running), (1, 0));
    while let Some(c) = within("drain", q.claim("healthy", TTL, t, Duration::ZERO))
        .await
        .expect("claim")
    {
        assert_ne!(c.job.id, poison, "a dead job is never claimed again");
        within("complete", q.complete(&c.lease, result_for(&c.lease), t))
            .await
            .expect("complete");
        completed.insert(c.job.id);
    }
    assert_eq!(completed, others.iter().copied().collect::<HashSet<_>>());
    assert_eq!(
        state_events(&q, poison).await.last(),
        Some(&JobStatus::Dead)
    );
}

/// A canceled queued job never runs; cancel of a finished job says so.
pub async fn cancel_queued_job_never_runs<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    let a = submit(&q, submission("t", Priority::Standard, "a"), NOW).await;
    let b = submit(&q, submission("t", Priority::Standard, "b"), NOW).await;
    let c = within("cancel", q.cancel(a, NOW + 1))
        .await
        .expect("cancel");
    assert_eq!(c, CancelOutcome::Canceled);
    let rec = record(&q, a).await;
    assert_eq!(
        (rec.status, rec.finished_at),
        (JobStatus::Canceled, Some(NOW + 1))
    );
    let (_, job) = claim(&q, "w", NOW + 2).await;
    assert_eq!(job.id, b, "the canceled job is skipped");
    claim_none(&q, NOW + 3).await;
    assert_eq!(record(&q, a).await.attempts, 0);
    let c = within("cancel again", q.cancel(a, NOW + 4))
        .await
        .expect("cancel");
    assert_eq!(c, CancelOutcome::AlreadyCompleted);
    assert_eq!(
        state_events(&q, a).await,
        [JobStatus::Queued, JobStatus::Canceled]
    );
}

/// Cancel of a running job sets a flag that the next heartbeat and progress return; the worker
/// then ends the attempt as canceled. An expired cancel-requested job is not re-queued.
pub async fn cancel_running_job_is_seen_by_heartbeat_and_progress<Q: JobQueue>(
    make: impl MakeQueue<Q>,
) {
    let q = fresh(&make, config()).await;
    let id = submit(&q, submission("t", Priority::Standard, "x"), NOW).await;
    let (lease, _) = claim(&q, "w", NOW).await;
    let s = within("heartbeat", q.heartbeat(&lease, TTL, NOW + 1))
        .await
        .expect("heartbeat");
    assert!(!s.cancel_requested);
    let c = within("cancel", q.cancel(id, NOW + 2))
        .await
        .expect("cancel");
    assert_eq!(c, CancelOutcome::CancellationRequested);
    assert!(record(&q, id).await.cancel_requested);
    let s = within("heartbeat", q.heartbeat(&lease, TTL, NOW + 3))
        .await
        .expect("heartbeat");
    assert!(s.cancel_requested);
    let s = within("progress", q.progress(&lease, 3, 28, TTL, NOW + 4))
        .await
        .expect("progress");
    assert!(s.cancel_requested);
    let err = JobError::new(JobErrorKind::Canceled, "stopped at step 3");
    let f = within("fail canceled", q.fail(&lease, err, NOW + 5))
        .await
        .expect("fail");
    assert_eq!(f, FailOutcome::Finished(JobStatus::Canceled));
    let rec = record(&q, id).await;
    assert_eq!(
        (rec.status, rec.finished_at),
        (JobStatus::Canceled, Some(NOW + 5))
    );
    assert_eq!(rec.error.map(|e| e.kind), Some(JobErrorKind::Canceled));

    let id2 = submit(&q, submission("t", Priority::Standard, "y"), NOW).await;
    claim(&q, "vanishes", NOW + 10).await;
    within("cancel", q.cancel(id2, NOW + 11))
        .await
        .expect("cancel");
    let r = reap(&q, NOW + 10 + TTL_MS).await;
    assert_eq!(
        (r.canceled.as_slice(), r.requeued.len()),
        ([id2].as_slice(), 0)
    );
    assert_eq!(record(&q, id2).await.status, JobStatus::Canceled);
    claim_none(&q, NOW + 11 + TTL_MS).await;
}

/// Transient failures retry after `base · 2^(attempt-1)` (capped) counted from the injected `now`;
/// the job is claimable exactly from then on; the last attempt ends `failed`.
pub async fn failed_attempts_retry_on_the_backoff_schedule<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let mut cfg = config();
    cfg.retry = crate::policy::RetryPolicy {
        max_attempts: 4,
        base: Duration::from_secs(2),
        cap: Duration::from_secs(5),
        jitter: 0.0,
    };
    let q = fresh(&make, cfg).await;
    let id = submit(&q, submission("t", Priority::Standard, "flaky"), NOW).await;
    let mut t = NOW;
    for (attempt, delay) in [(1u32, 2_000u64), (2, 4_000), (3, 5_000)] {
        let (lease, _) = claim(&q, "w", t).await;
        assert_eq!(lease.attempt, attempt);
        let err = JobError::new(JobErrorKind::Transient, format!("hiccup {attempt}"));
        let f = within("fail", q.fail(&lease, err, t + 100))
            .await
            .expect("fail");
        let at = t + 100 + delay;
        assert_eq!(f, FailOutcome::Retrying { at });
        let rec = record(&q, id).await;
        assert_eq!(rec.status, JobStatus::Queued);
        assert_eq!(
            rec.error.as_ref().map(|e| e.kind),
            Some(JobErrorKind::Transient)
        );
        assert_eq!(reap(&q, at - 1).await.promoted, 0, "not before the backoff");
        claim_none(&q, at - 1).await;
        assert_eq!(reap(&q, at).await.promoted, 1);
        t = at;
    }
    let (lease, _) = claim(&q, "w", t).await;
    assert_eq!(lease.attempt, 4);
    let err = JobError::new(JobErrorKind::Transient, "hiccup 4");
    let f = within("last fail", q.fail(&lease, err, t + 1))
        .await
        .expect("fail");
    assert_eq!(f, FailOutcome::Finished(JobStatus::Failed));
    let rec = record(&q, id).await;
    assert_eq!(
        (rec.status, rec.attempts, rec.finished_at),
        (JobStatus::Failed, 4, Some(t + 1))
    );
    assert_eq!(rec.error.map(|e| e.message), Some("hiccup 4".to_owned()));
}

/// With jitter, retry times spread within `(d·(1-jitter), d]`.
pub async fn jitter_spreads_retries_within_bounds<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let mut cfg = config();
    cfg.retry.base = Duration::from_secs(10);
    cfg.retry.jitter = 0.5;
    let q = fresh(&make, cfg).await;
    let mut ats = HashSet::new();
    for i in 0..8 {
        submit(
            &q,
            submission("t", Priority::Standard, &format!("j{i}")),
            NOW,
        )
        .await;
        let (lease, _) = claim(&q, "w", NOW).await;
        let err = JobError::new(JobErrorKind::Transient, "x");
        match within("fail", q.fail(&lease, err, NOW))
            .await
            .expect("fail")
        {
            FailOutcome::Retrying { at } => {
                assert!(at > NOW + 5_000 && at <= NOW + 10_000, "{at} out of bounds");
                ats.insert(at);
            }
            other => panic!("expected a retry, got {other:?}"),
        }
    }
    assert!(ats.len() > 1, "jitter must spread retry times: {ats:?}");
}

/// Invalid input and fatal errors fail at once; a canceled attempt ends `canceled`.
pub async fn non_retryable_errors_end_the_job<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    for (kind, status) in [
        (JobErrorKind::InvalidInput, JobStatus::Failed),
        (JobErrorKind::Fatal, JobStatus::Failed),
        (JobErrorKind::Canceled, JobStatus::Canceled),
    ] {
        let id = submit(&q, submission("t", Priority::Standard, kind.as_str()), NOW).await;
        let (lease, _) = claim(&q, "w", NOW).await;
        let f = within("fail", q.fail(&lease, JobError::new(kind, "no"), NOW + 1)).await;
        assert_eq!(f.expect("fail"), FailOutcome::Finished(status));
        let rec = record(&q, id).await;
        assert_eq!((rec.status, rec.attempts), (status, 1));
        assert_eq!(rec.error, Some(JobError::new(kind, "no")));
        assert_eq!(reap(&q, NOW + 60_000).await.promoted, 0);
    }
    claim_none(&q, NOW + 60_000).await;
}

/// Release (graceful drain) re-queues without counting an attempt or a crash and fences the
/// releasing worker; a cancel-requested job ends canceled instead.
pub async fn release_returns_the_job_without_counting<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    let id = submit(&q, submission("t", Priority::Standard, "x"), NOW).await;
    let (lease, _) = claim(&q, "draining", NOW).await;
    within("release", q.release(&lease, NOW + 1))
        .await
        .expect("release");
    let rec = record(&q, id).await;
    assert_eq!(
        (rec.status, rec.attempts, rec.crashes),
        (JobStatus::Queued, 0, 0)
    );
    let c = within(
        "complete after release",
        q.complete(&lease, result_for(&lease), NOW + 2),
    )
    .await;
    assert!(is_stale(&c), "{c:?}");
    let (again, _) = claim(&q, "other", NOW + 3).await;
    assert_eq!((again.attempt, again.epoch), (1, 3));
    within("cancel", q.cancel(id, NOW + 4))
        .await
        .expect("cancel");
    within("release", q.release(&again, NOW + 5))
        .await
        .expect("release");
    assert_eq!(record(&q, id).await.status, JobStatus::Canceled);
    claim_none(&q, NOW + 6).await;
}

/// A job waiting for its retry can be canceled; it is then never promoted or claimed.
pub async fn delayed_retry_can_be_canceled<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    let id = submit(&q, submission("t", Priority::Standard, "x"), NOW).await;
    let (lease, _) = claim(&q, "w", NOW).await;
    let err = JobError::new(JobErrorKind::Transient, "x");
    let f = within("fail", q.fail(&lease, err, NOW))
        .await
        .expect("fail");
    assert_eq!(f, FailOutcome::Retrying { at: NOW + 2_000 });
    let c = within("cancel", q.cancel(id, NOW + 1))
        .await
        .expect("cancel");
    assert_eq!(c, CancelOutcome::Canceled);
    assert_eq!(reap(&q, NOW + 2_000).await.promoted, 0);
    claim_none(&q, NOW + 2_001).await;
    let s = within("stats", q.stats(NOW + 2_001)).await.expect("stats");
    assert_eq!(s.delayed, 0);
}
