//! Conformance rules for forks: a fork shares the committed prefix of a chain (the same jobs,
//! not re-run); with turns appended it runs them at once from the fork point's frame; it exists
//! whole or not at all, and never passes `MAX_CHAIN_TURNS`.

use super::*;
use crate::chain::MAX_CHAIN_TURNS;
use crate::chain::{AppendOutcome, ChainFork, ChainId, ChainStatus, FailurePolicy, TurnAppend};
use crate::error::QueueError;
use crate::job::{Carry, ChainRef};
use crate::queue::{JobQueue, RetainedLimits};
use crate::{JobStatus, Priority};

/// A fork at `from_turn` without appended turns or limits.
pub fn plain_fork(new_id: ChainId, from_turn: u32) -> ChainFork {
    ChainFork {
        new_id,
        from_turn,
        turns: Vec::new(),
        retained: RetainedLimits::default(),
    }
}

fn appended(prompt: &str) -> TurnAppend {
    TurnAppend {
        job_id: crate::JobId::new(),
        spec: spec(Priority::Standard, prompt),
        seed: None,
        retained: RetainedLimits::default(),
    }
}

/// A fork shares the committed prefix (the same jobs), starts succeeded, and its next turn edits
/// the fork point's frame; the original is untouched.
pub async fn fork_shares_the_committed_prefix<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    let sub = chain_submission(
        3,
        Some(source_image()),
        Carry::Image,
        FailurePolicy::Continue,
    );
    create(&q, &sub, NOW).await;
    let (_, r1) = run_turn(&q, "w", NOW).await;
    fail_turn(&q, "w", NOW + 10).await;
    run_turn(&q, "w", NOW + 20).await;
    let fork = ChainId::new();
    within("fork", q.fork_chain(sub.id, plain_fork(fork, 1), NOW + 30))
        .await
        .expect("fork");
    let f = chain(&q, fork).await;
    assert_eq!(
        (f.status, f.current, f.last_good, f.turns.len()),
        (ChainStatus::Succeeded, 1, 1, 1)
    );
    assert_eq!(
        f.forked_from,
        Some(ChainRef {
            chain_id: sub.id.to_string(),
            turn: 1
        })
    );
    assert_eq!(
        (f.seed, f.carry, f.on_failure, f.tenant.as_str()),
        (CHAIN_SEED, Carry::Image, FailurePolicy::Continue, "acme")
    );
    assert_eq!(f.turns[0].job_id, sub.turns[0].job_id, "shared, not re-run");
    assert_eq!(
        f.turns[0].job.as_ref().map(|j| j.status),
        Some(JobStatus::Succeeded)
    );

    let t = TurnAppend {
        job_id: crate::JobId::new(),
        spec: spec(Priority::Standard, "branch"),
        seed: None,
        retained: RetainedLimits::default(),
    };
    let out = within("append", q.append_turn(fork, t.clone(), NOW + 31)).await;
    assert_eq!(
        out.expect("append"),
        AppendOutcome {
            turn: 2,
            started: true
        }
    );
    let (job, _) = run_turn(&q, "w", NOW + 32).await;
    assert_eq!(job.id, t.job_id);
    assert_eq!(
        job.spec.input,
        frame(&r1),
        "the branch edits turn 1's frame"
    );
    assert_eq!(
        job.chain,
        Some(ChainRef {
            chain_id: fork.to_string(),
            turn: 2
        })
    );
    assert_eq!(chain(&q, fork).await.status, ChainStatus::Succeeded);
    let original = chain(&q, sub.id).await;
    assert_eq!(
        (original.turns.len(), original.status),
        (3, ChainStatus::Succeeded)
    );

    for (from, what) in [(2, "a failed turn"), (4, "past the end"), (0, "turn 0")] {
        let r = within(
            "fork",
            q.fork_chain(sub.id, plain_fork(ChainId::new(), from), NOW + 40),
        )
        .await;
        assert!(
            matches!(r, Err(QueueError::ChainConflict(_))),
            "{what}: {r:?}"
        );
    }
    let r = within(
        "fork",
        q.fork_chain(ChainId::new(), plain_fork(ChainId::new(), 1), NOW + 40),
    )
    .await;
    assert!(matches!(r, Err(QueueError::ChainNotFound(_))), "{r:?}");
}

/// A fork with turns runs the first at once from the fork point's frame, offered to the worker
/// that made it, then the rest in order; seeds derive from the new turn numbers. A fork that
/// would pass `MAX_TURNS` is refused whole: no chain, no job.
pub async fn fork_with_turns_runs_them_and_is_all_or_nothing<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    let sub = chain_submission(2, Some(source_image()), Carry::Image, FailurePolicy::Stop);
    create(&q, &sub, NOW).await;
    let (_, r1) = run_turn(&q, "painter", NOW).await;
    run_turn(&q, "painter", NOW + 10).await;

    let too_long = ChainFork {
        turns: (0..MAX_CHAIN_TURNS)
            .map(|i| appended(&format!("t{i}")))
            .collect(),
        ..plain_fork(ChainId::new(), 1)
    };
    let refused = within("fork", q.fork_chain(sub.id, too_long.clone(), NOW + 20)).await;
    assert!(
        matches!(refused, Err(QueueError::ChainConflict(ref m)) if m.contains("at most")),
        "{refused:?}"
    );
    assert!(
        within("get_chain", q.get_chain(too_long.new_id))
            .await
            .expect("get")
            .is_none(),
        "nothing of a refused fork is stored"
    );
    claim_none(&q, NOW + 20).await;

    let fork = ChainFork {
        turns: vec![appended("branch a"), appended("branch b")],
        ..plain_fork(ChainId::new(), 1)
    };
    within("fork", q.fork_chain(sub.id, fork.clone(), NOW + 30))
        .await
        .expect("fork");
    let f = chain(&q, fork.new_id).await;
    assert_eq!(
        (
            f.status,
            f.turns.len(),
            f.current,
            f.last_good,
            f.finished_at
        ),
        (ChainStatus::Running, 3, 2, 1, None)
    );
    // Offered to the worker of turn 1's frame first.
    let (job, _) = run_turn(&q, "painter", NOW + 31).await;
    assert_eq!(job.id, fork.turns[0].job_id);
    assert_eq!(job.spec.input, frame(&r1), "edits the fork point's frame");
    assert_eq!(job.spec.seed, crate::chain::turn_seed(CHAIN_SEED, 2));
    assert_eq!(
        job.chain,
        Some(ChainRef {
            chain_id: fork.new_id.to_string(),
            turn: 2
        })
    );
    let (last, _) = run_turn(&q, "painter", NOW + 40).await;
    assert_eq!(last.id, fork.turns[1].job_id);
    assert_eq!(last.spec.seed, crate::chain::turn_seed(CHAIN_SEED, 3));
    let f = chain(&q, fork.new_id).await;
    assert_eq!((f.status, f.last_good), (ChainStatus::Succeeded, 3));
    assert_eq!(
        chain(&q, sub.id).await.turns.len(),
        2,
        "the source is untouched"
    );
}
