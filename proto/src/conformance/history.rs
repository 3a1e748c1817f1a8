//! Conformance rule for job histories (docs/queue-protocol.md §Job history): every claim and how
//! each attempt ended — lease lost, released, failed with its retry, succeeded with its engine
//! time — and cancels, appended by the transition itself, in order, the same on both queues.

use super::*;
use crate::JobErrorKind;
use crate::error::JobError;
use crate::job_history::{AttemptEnd, HistoryEntry, attempts_of};
use crate::queue::{CancelOutcome, CompleteOutcome, FailOutcome};

const TTL_MS: Millis = TTL.as_millis() as u64;

fn claimed(at: Millis, worker: &str, epoch: u64, attempt: u32) -> HistoryEntry {
    HistoryEntry::Claimed {
        at,
        worker: worker.into(),
        epoch,
        attempt,
    }
}

pub async fn job_history_records_every_attempt_and_how_it_ended<Q: JobQueue>(
    make: impl MakeQueue<Q>,
) {
    let q = fresh(&make, config()).await;
    let id = submit(&q, submission("acme", Priority::Standard, "history"), NOW).await;
    let (_, _) = claim(&q, "w1", NOW + 1).await;
    let lost_at = NOW + 1 + TTL_MS;
    within("reap", q.reap(lost_at)).await.expect("reap");
    let (lease, _) = claim(&q, "w2", lost_at + 1).await;
    within("release", q.release(&lease, lost_at + 2))
        .await
        .expect("release");
    let (lease, _) = claim(&q, "w3", lost_at + 3).await;
    let err = JobError::new(JobErrorKind::Transient, "CUDA out of memory");
    let out = within("fail", q.fail(&lease, err.clone(), lost_at + 4))
        .await
        .expect("fail");
    let FailOutcome::Retrying { at: retry_at } = out else {
        panic!("a transient failure retries: {out:?}");
    };
    within("reap", q.reap(retry_at)).await.expect("reap");
    let (lease, _) = claim(&q, "w4", retry_at + 1).await;
    let cancel = within("cancel", q.cancel(id, retry_at + 2)).await;
    assert_eq!(
        cancel.expect("cancel"),
        CancelOutcome::CancellationRequested
    );
    let done = within(
        "complete",
        q.complete(&lease, result_for(&lease), retry_at + 3),
    )
    .await;
    assert_eq!(done.expect("complete"), CompleteOutcome::Committed);

    let history = within("job_history", q.job_history(id))
        .await
        .expect("job_history")
        .expect("the job exists");
    assert_eq!(history.record.id, id);
    let expected = vec![
        claimed(NOW + 1, "w1", 1, 1),
        HistoryEntry::LeaseLost {
            at: lost_at,
            worker: "w1".into(),
            epoch: 1,
            outcome: JobStatus::Queued,
        },
        claimed(lost_at + 1, "w2", 3, 2),
        HistoryEntry::Released {
            at: lost_at + 2,
            worker: "w2".into(),
            epoch: 3,
            outcome: JobStatus::Queued,
        },
        claimed(lost_at + 3, "w3", 5, 2),
        HistoryEntry::Failed {
            at: lost_at + 4,
            worker: "w3".into(),
            epoch: 5,
            error: err,
            retry_at: Some(retry_at),
            outcome: JobStatus::Queued,
        },
        claimed(retry_at + 1, "w4", 7, 3),
        HistoryEntry::CancelRequested { at: retry_at + 2 },
        HistoryEntry::Succeeded {
            at: retry_at + 3,
            worker: "w4".into(),
            epoch: 7,
            engine_ms: 5,
        },
    ];
    assert_eq!(history.entries, expected);
    let ends: Vec<Option<AttemptEnd>> = attempts_of(&history.entries)
        .iter()
        .map(|a| a.ended)
        .collect();
    assert_eq!(
        ends,
        [
            AttemptEnd::LeaseLost,
            AttemptEnd::Released,
            AttemptEnd::Failed,
            AttemptEnd::Succeeded
        ]
        .map(Some)
    );

    // A queued job canceled, and a job nobody claimed yet.
    let other = submit(&q, submission("beta", Priority::Bulk, "other"), NOW).await;
    let fresh_history = within("job_history", q.job_history(other)).await;
    assert_eq!(
        fresh_history.expect("job_history").expect("exists").entries,
        []
    );
    within("cancel", q.cancel(other, NOW + 5))
        .await
        .expect("cancel");
    let canceled = within("job_history", q.job_history(other)).await;
    assert_eq!(
        canceled.expect("job_history").expect("exists").entries,
        [HistoryEntry::Canceled { at: NOW + 5 }]
    );
    let unknown = within("job_history", q.job_history(JobId::new())).await;
    assert!(unknown.expect("job_history").is_none());
}
