//! Conformance rules for `RetainedLimits`: what a tenant may hold in the queue over the retention
//! period — jobs (finished ones too, so a submit-then-cancel loop is bounded), chains and their
//! turns (created, appended, and shared by forks). Counts are per tenant and free up as the
//! retention period moves past what was created.

use std::time::Duration;

use super::*;
use crate::chain::{ChainFork, ChainId, ChainSubmission, FailurePolicy, TurnAppend};
use crate::error::QueueError;
use crate::job::Carry;
use crate::queue::{JobQueue, RetainedKind, RetainedLimits};
use crate::{CancelOutcome, Priority};

const RETENTION: Duration = Duration::from_secs(100);
const RETENTION_MS: Millis = 100_000;

fn over(
    kind: RetainedKind,
    retained: u64,
    adding: u64,
    limit: u32,
) -> impl Fn(&QueueError) -> bool {
    move |e| {
        matches!(e, QueueError::TooManyRetained { kind: k, retained: r, adding: a, limit: l }
            if *k == kind && *r == retained && *a == adding && *l == limit)
    }
}

/// Jobs count from creation until the retention period has moved past it, finished or not:
/// cancelling every job at once does not make room.
pub async fn retained_jobs_are_limited_per_tenant<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(
        &make,
        QueueConfig {
            retention: RETENTION,
            ..config()
        },
    )
    .await;
    let limited = |tenant: &str, prompt: &str| Submission {
        retained: RetainedLimits {
            jobs: 3,
            ..RetainedLimits::default()
        },
        ..submission(tenant, Priority::Standard, prompt)
    };
    for i in 0..3 {
        let id = submit(&q, limited("acme", &format!("job {i}")), NOW + i).await;
        let c = within("cancel", q.cancel(id, NOW + i)).await;
        assert_eq!(c.expect("cancel"), CancelOutcome::Canceled);
    }
    let refused = within("submit", q.submit(limited("acme", "one more"), NOW + 3)).await;
    match refused {
        Err(e) => assert!(over(RetainedKind::Jobs, 3, 1, 3)(&e), "{e:?}"),
        Ok(out) => panic!("a fourth job was accepted: {out:?}"),
    }
    submit(&q, limited("globex", "another tenant"), NOW + 3).await;
    // Once the period has moved past the first job, there is room for one more.
    submit(&q, limited("acme", "later"), NOW + RETENTION_MS + 1).await;
    let refused = within(
        "submit",
        q.submit(limited("acme", "still full"), NOW + RETENTION_MS + 1),
    )
    .await;
    assert!(
        matches!(refused, Err(QueueError::TooManyRetained { .. })),
        "{refused:?}"
    );
}

/// Chains and their turns are counted at creation, on every append and for every turn a fork
/// shares or appends; a refusal stores nothing.
pub async fn retained_chains_and_turns_are_limited_per_tenant<Q: JobQueue>(
    make: impl MakeQueue<Q>,
) {
    let q = fresh(
        &make,
        QueueConfig {
            retention: RETENTION,
            ..config()
        },
    )
    .await;
    let limits = RetainedLimits {
        chains: 2,
        turns: 5,
        ..RetainedLimits::default()
    };
    let planned = |n: usize| ChainSubmission {
        retained: limits,
        ..chain_submission(n, None, Carry::Image, FailurePolicy::Stop)
    };
    let first = planned(3);
    create(&q, &first, NOW).await;
    let refused = planned(3);
    let r = within("create_chain", q.create_chain(refused.clone(), NOW + 1)).await;
    match r {
        Err(e) => assert!(over(RetainedKind::Turns, 3, 3, 5)(&e), "{e:?}"),
        Ok(()) => panic!("a chain past the turn limit was created"),
    }
    assert!(
        within("get_chain", q.get_chain(refused.id))
            .await
            .expect("get")
            .is_none()
    );
    create(&q, &planned(2), NOW + 2).await;

    let turn = TurnAppend {
        job_id: crate::JobId::new(),
        spec: spec(Priority::Standard, "appended"),
        seed: None,
        retained: limits,
    };
    let r = within("append", q.append_turn(first.id, turn.clone(), NOW + 3)).await;
    match r {
        Err(e) => assert!(over(RetainedKind::Turns, 5, 1, 5)(&e), "{e:?}"),
        Ok(out) => panic!("an append past the turn limit was accepted: {out:?}"),
    }
    run_turn(&q, "w", NOW + 4).await;
    let fork = ChainFork {
        new_id: ChainId::new(),
        from_turn: 1,
        turns: Vec::new(),
        retained: limits,
    };
    let r = within("fork", q.fork_chain(first.id, fork.clone(), NOW + 5)).await;
    match r {
        Err(e) => assert!(over(RetainedKind::Chains, 2, 1, 2)(&e), "{e:?}"),
        Ok(()) => panic!("a fork past the chain limit was accepted"),
    }
    assert!(
        within("get_chain", q.get_chain(fork.new_id))
            .await
            .expect("get")
            .is_none()
    );
    // Once the period has moved past both chains, they no longer count.
    let later = NOW + RETENTION_MS + 3;
    let out = within("append", q.append_turn(first.id, turn, later)).await;
    assert_eq!(out.expect("append after the period").turn, 4);
    within("fork", q.fork_chain(first.id, fork, later))
        .await
        .expect("fork after the period");
}
