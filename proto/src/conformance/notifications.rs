//! Conformance rules for notifications of finished jobs (the coordinators' webhook and metrics
//! feed): one per terminal job, leased to one taker at a time, retried, acknowledged.

use std::time::Duration;

use super::*;
use crate::queue::{CompleteOutcome, JobQueue};
use crate::{JobStatus, Priority};

const LEASE: Duration = Duration::from_secs(60);
const LEASE_MS: Millis = 60_000;
const TTL_MS: Millis = TTL.as_millis() as u64;

async fn take<Q: JobQueue>(q: &Q, now: Millis) -> Vec<crate::queue::Notification> {
    within("take_notifications", q.take_notifications(now, LEASE, 100))
        .await
        .expect("take_notifications should succeed")
}

/// A finished job is notified once, with its times and webhook; unfinished jobs are not.
pub async fn finished_jobs_are_notified_once<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    let mut sub = submission("t", Priority::Standard, "hooked");
    sub.spec.webhook_url = Some("https://hooks.example.com/k".into());
    let id = submit(&q, sub, NOW).await;
    let _waiting = submit(&q, submission("t", Priority::Standard, "still queued"), NOW).await;
    assert!(take(&q, NOW + 1).await.is_empty(), "nothing finished yet");

    let (lease, _) = claim(&q, "w", NOW + 10).await;
    let c = within("complete", q.complete(&lease, result_for(&lease), NOW + 20)).await;
    assert_eq!(c.expect("complete"), CompleteOutcome::Committed);

    let got = take(&q, NOW + 25).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let n = &got[0];
    assert_eq!(
        (n.job_id, n.status, n.attempt, n.tenant.as_str()),
        (id, JobStatus::Succeeded, 1, "t")
    );
    assert_eq!(
        (n.created_at, n.started_at, n.finished_at),
        (NOW, Some(NOW + 10), Some(NOW + 20))
    );
    assert_eq!(
        n.webhook_url.as_deref(),
        Some("https://hooks.example.com/k")
    );
    assert!(
        take(&q, NOW + 26).await.is_empty(),
        "taken: leased to its taker"
    );

    within("ack", q.ack_notifications(&[id]))
        .await
        .expect("ack");
    assert!(
        take(&q, NOW + 10 * LEASE_MS).await.is_empty(),
        "acknowledged: gone for good"
    );
}

/// A taker that never acknowledges (it died) loses nothing: the lease runs out and the
/// notification comes back with the next attempt number; a retry makes it due at its time; a
/// deferral too, without counting the take.
pub async fn unacknowledged_notifications_come_back<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    let id = submit(&q, submission("t", Priority::Standard, "x"), NOW).await;
    let cancel = within("cancel", q.cancel(id, NOW + 1))
        .await
        .expect("cancel");
    assert_eq!(cancel, crate::CancelOutcome::Canceled);

    let first = take(&q, NOW + 2).await;
    assert_eq!(first.len(), 1);
    assert_eq!(
        (
            first[0].status,
            first[0].attempt,
            first[0].webhook_url.clone()
        ),
        (JobStatus::Canceled, 1, None)
    );
    assert!(take(&q, NOW + 2 + LEASE_MS - 1).await.is_empty());
    let again = take(&q, NOW + 2 + LEASE_MS).await;
    assert_eq!(
        (again.len(), again[0].attempt),
        (1, 2),
        "lease expired: taken again"
    );

    let at = NOW + 2 + LEASE_MS + 5_000;
    within("retry", q.retry_notification(id, at))
        .await
        .expect("retry");
    assert!(
        take(&q, at - 1).await.is_empty(),
        "not due before its retry time"
    );
    let third = take(&q, at).await;
    assert_eq!((third.len(), third[0].attempt), (1, 3));
    // A deferral gives it back without counting that take.
    let later = at + 1_000;
    within("defer", q.defer_notification(id, later))
        .await
        .expect("defer");
    assert!(take(&q, later - 1).await.is_empty(), "not due before");
    let fourth = take(&q, later).await;
    assert_eq!(
        (fourth.len(), fourth[0].attempt),
        (1, 3),
        "a deferred take is not an attempt"
    );

    within("ack", q.ack_notifications(&[id]))
        .await
        .expect("ack");
    within("retry after ack", q.retry_notification(id, at))
        .await
        .expect("retry");
    assert!(
        take(&q, at + 10 * LEASE_MS).await.is_empty(),
        "a retry does not revive an ack"
    );
}

/// Failed and dead jobs are notified too (webhooks report every terminal state).
pub async fn failed_and_dead_jobs_are_notified<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    let failed = submit(&q, submission("t", Priority::Standard, "bad"), NOW).await;
    let (lease, _) = claim(&q, "w", NOW).await;
    let err = crate::JobError::new(crate::JobErrorKind::InvalidInput, "no");
    within("fail", q.fail(&lease, err, NOW + 1))
        .await
        .expect("fail");

    let poison = submit(&q, submission("t", Priority::Standard, "poison"), NOW + 2).await;
    let mut now = NOW + 2;
    for _ in 0..crate::policy::MAX_CRASHES {
        let _ = claim(&q, "crashy", now).await;
        now += TTL_MS;
        let _ = within("reap", q.reap(now)).await.expect("reap");
    }
    assert_eq!(record(&q, poison).await.status, JobStatus::Dead);

    let mut got: Vec<(crate::JobId, JobStatus)> = take(&q, now)
        .await
        .into_iter()
        .map(|n| (n.job_id, n.status))
        .collect();
    got.sort_by_key(|(_, s)| s.as_str());
    assert_eq!(
        got,
        [(poison, JobStatus::Dead), (failed, JobStatus::Failed)]
    );
}
