//! Conformance rule for the throughput history (`crate::throughput`): each commit and each
//! terminal failure (a retry or a cancel is neither) counts once in the minute it happened,
//! with a succeeded job's latency in its bucket; the reaper's dead letters count as failures.

use super::*;
use crate::JobErrorKind;
use crate::error::JobError;
use crate::policy::MAX_CRASHES;
use crate::queue::{CompleteOutcome, FailOutcome};
use crate::throughput::{HISTORY_MINUTES, MINUTE_MS, latency_bucket, minute_of};

const TTL_MS: Millis = TTL.as_millis() as u64;

async fn commit<Q: JobQueue>(q: &Q, submitted: Millis, done: Millis) {
    submit(q, submission("acme", Priority::Standard, "fast"), submitted).await;
    let (lease, _) = claim(q, "w", submitted).await;
    let r = within("complete", q.complete(&lease, result_for(&lease), done)).await;
    assert_eq!(r.expect("complete"), CompleteOutcome::Committed);
    let again = within("complete", q.complete(&lease, result_for(&lease), done + 1)).await;
    assert_eq!(again.expect("complete"), CompleteOutcome::AlreadyDone);
}

async fn fail<Q: JobQueue>(q: &Q, kind: JobErrorKind, at: Millis) -> FailOutcome {
    submit(q, submission("beta", Priority::Standard, "bad"), at).await;
    let (lease, _) = claim(q, "w", at).await;
    within("fail", q.fail(&lease, JobError::new(kind, "no"), at))
        .await
        .expect("fail")
}

pub async fn throughput_counts_finished_jobs_per_minute_once<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    let base = minute_of(NOW) * MINUTE_MS + 1_000;
    commit(&q, base, base + 150).await;
    commit(&q, base + 10, base + MINUTE_MS + 3_000).await;
    let out = fail(&q, JobErrorKind::InvalidInput, base + 20).await;
    assert_eq!(out, FailOutcome::Finished(JobStatus::Failed));
    let out = fail(&q, JobErrorKind::Transient, base + 30).await;
    assert!(matches!(out, FailOutcome::Retrying { .. }), "{out:?}");
    let canceled = submit(&q, submission("beta", Priority::Bulk, "never"), base).await;
    within("cancel", q.cancel(canceled, base + 40))
        .await
        .expect("cancel");

    let now = base + MINUTE_MS + 5_000;
    let minutes = within("throughput", q.throughput(now))
        .await
        .expect("throughput");
    assert_eq!(minutes.len(), HISTORY_MINUTES as usize);
    assert_eq!(minutes.last().map(|m| m.minute), Some(minute_of(now)));
    let (first, second) = (minutes[58], minutes[59]);
    assert_eq!(first.minute, minute_of(base));
    assert_eq!((first.succeeded, first.failed), (1, 1));
    assert_eq!(first.latency[latency_bucket(150)], 1);
    assert_eq!(first.latency.iter().sum::<u64>(), 1);
    assert_eq!((second.succeeded, second.failed), (1, 0));
    assert_eq!(second.latency[latency_bucket(MINUTE_MS + 2_990)], 1);
    assert!(
        minutes[..58].iter().all(|m| m.succeeded + m.failed == 0),
        "{minutes:?}"
    );

    // A job the reaper gives up on fails in the minute of that reap.
    let poison = submit(&q, submission("acme", Priority::High, "poison"), now).await;
    let mut t = now;
    for crash in 1..=MAX_CRASHES {
        let (_, job) = claim(&q, &format!("victim{crash}"), t).await;
        assert_eq!(job.id, poison);
        t += TTL_MS;
        within("reap", q.reap(t)).await.expect("reap");
    }
    let minutes = within("throughput", q.throughput(t))
        .await
        .expect("throughput");
    let last = minutes.last().expect("a minute");
    assert_eq!((last.minute, last.failed), (minute_of(t), 1));
}
