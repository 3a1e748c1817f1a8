//! Conformance rules for how chains end early or start without an input: a canceled chain
//! creates no more turns; a text-to-image chain; creation checks (split from `chains`).

use super::chains::{AFFINITY_MS, chain, chain_submission, source_image};
use super::*;
use crate::chain::{ChainId, ChainStatus, FailurePolicy};
use crate::error::QueueError;
use crate::job::{Carry, JobKind};
use crate::queue::{CancelOutcome, CompleteOutcome, JobQueue};
use crate::{JobStatus, Priority};

/// Canceling a chain cancels its live turn (queued: at once; running: flag) and creates no more
/// turns, even when the running turn still commits.
pub async fn canceled_chain_creates_no_more_turns<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    let queued = chain_submission(
        3,
        Some(source_image()),
        Carry::Image,
        FailurePolicy::Continue,
    );
    create(&q, &queued, NOW).await;
    let c = within("cancel_chain", q.cancel_chain(queued.id, NOW + 1)).await;
    assert_eq!(c.expect("cancel_chain"), CancelOutcome::Canceled);
    assert_eq!(
        record(&q, queued.turns[0].job_id).await.status,
        JobStatus::Canceled
    );
    let c = chain(&q, queued.id).await;
    assert_eq!(
        (c.status, c.finished_at),
        (ChainStatus::Canceled, Some(NOW + 1))
    );
    claim_none(&q, NOW + 2).await;
    let again = within("cancel_chain", q.cancel_chain(queued.id, NOW + 3)).await;
    assert_eq!(
        again.expect("cancel_chain"),
        CancelOutcome::AlreadyCompleted
    );

    let running = chain_submission(
        3,
        Some(source_image()),
        Carry::Image,
        FailurePolicy::Continue,
    );
    create(&q, &running, NOW).await;
    let (lease, job) = claim(&q, "w", NOW + 4).await;
    let c = within("cancel_chain", q.cancel_chain(running.id, NOW + 5)).await;
    assert_eq!(
        c.expect("cancel_chain"),
        CancelOutcome::CancellationRequested
    );
    let hb = within("heartbeat", q.heartbeat(&lease, TTL, NOW + 6))
        .await
        .expect("heartbeat");
    assert!(hb.cancel_requested);
    // The commit raced the cancel and won: the job succeeds, the chain stays canceled.
    let done = within(
        "complete",
        q.complete(&lease, result_of(&lease, &job), NOW + 7),
    )
    .await;
    assert_eq!(done.expect("complete"), CompleteOutcome::Committed);
    let c = chain(&q, running.id).await;
    assert_eq!((c.status, c.current), (ChainStatus::Canceled, 1));
    assert!(c.turns[1].job.is_none());
    claim_none(&q, NOW + 10 * AFFINITY_MS).await;
    let unknown = within("cancel_chain", q.cancel_chain(ChainId::new(), NOW)).await;
    assert_eq!(unknown.expect("cancel_chain"), CancelOutcome::NotFound);
}

/// Without an input image turn 1 generates; creation counts against the in-flight limit; a bad
/// plan is refused before anything is stored.
pub async fn text_to_image_chain_and_creation_checks<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    let sub = chain_submission(2, None, Carry::Image, FailurePolicy::Stop);
    create(&q, &sub, NOW).await;
    let (first, r1) = run_turn(&q, "w", NOW).await;
    assert_eq!(
        (first.spec.kind, first.spec.input.clone()),
        (JobKind::Generate, None)
    );
    let (second, _) = run_turn(&q, "w", NOW + 10).await;
    assert_eq!(
        (second.spec.kind, second.spec.input.clone()),
        (JobKind::Edit, frame(&r1))
    );

    let mut limited = chain_submission(2, None, Carry::Image, FailurePolicy::Stop);
    submit(&q, submission("acme", Priority::Standard, "busy"), NOW).await;
    limited.max_in_flight = 1;
    let over = within("create_chain", q.create_chain(limited.clone(), NOW)).await;
    assert!(
        matches!(
            over,
            Err(QueueError::TooManyInFlight {
                in_flight: 1,
                limit: 1
            })
        ),
        "{over:?}"
    );
    let mut bad = chain_submission(2, Some(source_image()), Carry::Image, FailurePolicy::Stop);
    bad.turns[1].spec.input = Some(source_image());
    let refused = within("create_chain", q.create_chain(bad.clone(), NOW)).await;
    assert!(
        matches!(refused, Err(QueueError::ChainConflict(_))),
        "{refused:?}"
    );
    assert!(
        within("get_chain", q.get_chain(bad.id))
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        within("get_chain", q.get_chain(limited.id))
            .await
            .expect("get")
            .is_none()
    );
}
