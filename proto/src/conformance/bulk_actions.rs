//! Conformance rules for operators' bulk actions (docs/queue-protocol.md §Admin actions):
//! dead letters re-queued or dismissed by filter (tenant, dead-lettered before / after), oldest
//! first, chain turns skipped by a re-queue, each audited as the single action is; and a
//! tenant's queued jobs canceled as `cancel` cancels one, running jobs left alone, a queued
//! chain turn ending its chain, each audited.

use super::chains::chain_submission;
use super::dead_letters::{crash_until_dead, poison_of};
use super::*;
use crate::JobErrorKind;
use crate::admin_jobs::MAX_CANCEL;
use crate::chain::{ChainStatus, FailurePolicy};
use crate::dead_letters::{BulkAction, BulkOutcome, DeadFilter};
use crate::error::{JobError, QueueError};
use crate::job::Carry;
use crate::job_history::HistoryEntry;
use crate::queue::{CompleteOutcome, FailOutcome};

/// Who the bulk actions below are done by.
const BULK_ACTOR: &str = "key:b0b0b0b0b0b0";

async fn bulk<Q: JobQueue>(q: &Q, action: BulkAction, f: DeadFilter, now: Millis) -> BulkOutcome {
    let out = within("bulk_dead", q.bulk_dead(action, &f, None, BULK_ACTOR, now))
        .await
        .expect("bulk_dead");
    assert_eq!(
        out.next_cursor, None,
        "a handful of dead letters fit one call"
    );
    out
}

pub async fn dead_letters_are_requeued_and_dismissed_by_filter<Q: JobQueue>(
    make: impl MakeQueue<Q>,
) {
    let q = fresh(&make, config()).await;
    let (a, t_a) = poison_of(&q, "acme", "a", NOW).await;
    let (b, t) = poison_of(&q, "beta", "b", t_a).await;
    let chain = chain_submission(1, None, Carry::Image, FailurePolicy::Stop);
    within("create_chain", q.create_chain(chain.clone(), t))
        .await
        .expect("create_chain");
    let turn = chain.turns[0].job_id;
    let t_turn = crash_until_dead(&q, turn, t).await;
    let (c, t) = poison_of(&q, "acme", "c", t_turn).await;

    // Dead-lettered strictly after a's time: c; the chain turn matches but is skipped.
    let acme_after_a = DeadFilter {
        tenant: Some("acme".into()),
        newer_than: Some(t_a),
        ..DeadFilter::default()
    };
    let out = bulk(&q, BulkAction::Requeue, acme_after_a, t).await;
    assert_eq!(out.affected.len(), 1, "{out:?}");
    let (dead, new_c) = out.affected[0];
    assert_eq!((dead, out.skipped_chain_turns.clone()), (c, vec![turn]));
    let new_c = new_c.expect("a re-queue names the new job");
    assert_eq!(record(&q, new_c).await.status, JobStatus::Queued);
    let acme = DeadFilter {
        tenant: Some("acme".into()),
        ..DeadFilter::default()
    };
    let out = bulk(&q, BulkAction::Requeue, acme, t + 1).await;
    let new_a = match out.affected.as_slice() {
        [(dead, Some(new))] if *dead == a => *new,
        other => panic!("expected a re-queued, got {other:?}"),
    };
    assert_eq!(record(&q, new_a).await.tenant, "acme");

    // Dismiss: strictly before a time, oldest first.
    let before = DeadFilter {
        older_than: Some(t_turn + 1),
        ..DeadFilter::default()
    };
    let out = bulk(&q, BulkAction::Dismiss, before, t + 2).await;
    assert_eq!(out.affected, vec![(b, None), (turn, None)]);
    let left = within("dead_letters", q.dead_letters(10)).await;
    assert!(left.expect("dead_letters").is_empty());
    let none = bulk(&q, BulkAction::Dismiss, DeadFilter::default(), t + 3).await;
    assert!(none.affected.is_empty(), "{none:?}");

    let audit = within("audit_log", q.audit_log(10)).await.expect("audit");
    let actions: Vec<(&str, String)> = audit
        .iter()
        .map(|e| (e.action.as_str(), e.target.clone()))
        .collect();
    assert!(audit.iter().all(|e| e.actor == BULK_ACTOR), "{audit:?}");
    assert_eq!(
        actions,
        vec![
            ("dismiss_dead", turn.to_string()),
            ("dismiss_dead", b.to_string()),
            ("requeue_dead", format!("{a} -> {new_a}")),
            ("requeue_dead", format!("{c} -> {new_c}")),
        ]
    );
    let bad = q
        .bulk_dead(
            BulkAction::Dismiss,
            &DeadFilter::default(),
            Some("x"),
            BULK_ACTOR,
            t,
        )
        .await;
    assert!(matches!(bad, Err(QueueError::InvalidCursor(_))), "{bad:?}");
}

pub async fn a_tenants_queued_jobs_are_canceled_running_ones_left<Q: JobQueue>(
    make: impl MakeQueue<Q>,
) {
    let q = fresh(&make, config()).await;
    let queued = submit(&q, submission("acme", Priority::Standard, "q"), NOW).await;
    let retrying = submit(&q, submission("acme", Priority::High, "retry"), NOW + 1).await;
    let running = submit(&q, submission("acme", Priority::High, "run"), NOW + 2).await;
    let done = submit(&q, submission("acme", Priority::High, "done"), NOW + 3).await;
    let (lease, job) = claim(&q, "w", NOW + 10).await;
    assert_eq!(job.id, retrying);
    let err = JobError::new(JobErrorKind::Transient, "flaky");
    let out = within("fail", q.fail(&lease, err, NOW + 10)).await;
    assert!(matches!(out.expect("fail"), FailOutcome::Retrying { .. }));
    let (_, job) = claim(&q, "w", NOW + 11).await;
    assert_eq!(job.id, running);
    let (lease, job) = claim(&q, "w", NOW + 12).await;
    assert_eq!(job.id, done);
    let c = within("complete", q.complete(&lease, result_for(&lease), NOW + 12)).await;
    assert_eq!(c.expect("complete"), CompleteOutcome::Committed);
    let chain = chain_submission(2, None, Carry::Image, FailurePolicy::Continue);
    within("create_chain", q.create_chain(chain.clone(), NOW + 4))
        .await
        .expect("create_chain");
    let turn = chain.turns[0].job_id;
    let other = submit(&q, submission("beta", Priority::Standard, "b"), NOW + 5).await;

    let out = within(
        "cancel_queued",
        q.cancel_queued("acme", None, "open", NOW + 20),
    )
    .await
    .expect("cancel_queued");
    assert_eq!(out.canceled, vec![turn, retrying, queued], "newest first");
    assert_eq!((out.running, out.next_cursor.clone()), (1, None));
    for id in [turn, retrying, queued] {
        assert_eq!(record(&q, id).await.status, JobStatus::Canceled);
    }
    assert_eq!(record(&q, running).await.status, JobStatus::Running);
    assert_eq!(record(&q, other).await.status, JobStatus::Queued);
    let c = super::chains::chain(&q, chain.id).await;
    assert_eq!(c.status, ChainStatus::Canceled, "no later turn replaces it");
    assert!(c.turns[1].job.is_none(), "{c:?}");
    let h = within("job_history", q.job_history(queued)).await;
    let entries = h.expect("job_history").expect("exists").entries;
    assert_eq!(entries, vec![HistoryEntry::Canceled { at: NOW + 20 }]);

    let again = within(
        "cancel_queued",
        q.cancel_queued("acme", None, "open", NOW + 21),
    )
    .await;
    assert!(again.expect("cancel_queued").canceled.is_empty());
    let audit = within("audit_log", q.audit_log(10)).await.expect("audit");
    let targets: Vec<String> = audit
        .iter()
        .filter(|e| e.action == "cancel_queued" && e.actor == "open")
        .map(|e| e.target.clone())
        .collect();
    assert_eq!(
        targets,
        [queued, retrying, turn].map(|id| format!("acme/{id}"))
    );
    let bad = q.cancel_queued("acme", Some("x"), "open", NOW).await;
    assert!(matches!(bad, Err(QueueError::InvalidCursor(_))), "{bad:?}");

    // More than one call may cancel: MAX_CANCEL, then the rest below the cursor.
    for i in 0..=MAX_CANCEL as u64 {
        submit(&q, submission("many", Priority::Bulk, "m"), NOW + 100 + i).await;
    }
    let first = within(
        "cancel_queued",
        q.cancel_queued("many", None, "open", NOW + 30),
    )
    .await
    .expect("cancel_queued");
    assert_eq!(first.canceled.len(), MAX_CANCEL);
    let cursor = first.next_cursor.expect("more remain");
    let rest = within(
        "cancel_queued",
        q.cancel_queued("many", Some(&cursor), "open", NOW + 31),
    )
    .await
    .expect("cancel_queued");
    assert_eq!((rest.canceled.len(), rest.next_cursor), (1, None));
}
