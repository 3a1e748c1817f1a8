//! Conformance rules for chains (storyboards): turns run in order, each editing the frame before
//! it; the next turn is created exactly once, inside the step that ends the turn before it; it is
//! offered to the previous turn's worker first; failure policies; append and cancel (forks are in
//! `forks`).

use std::time::Duration;

use super::*;
use crate::chain::{
    AppendOutcome, ChainId, ChainRecord, ChainStatus, ChainSubmission, FailurePolicy, PlannedTurn,
    TurnAppend, TurnState, turn_seed,
};
use crate::error::QueueError;
use crate::job::{Carry, ChainRef, InputImage, JobKind, JobRecord};
use crate::queue::{CancelOutcome, CompleteOutcome, FailOutcome, JobQueue, RetainedLimits};
use crate::{JobError, JobErrorKind, JobStatus, Priority};

pub(super) const CHAIN_SEED: u64 = 1234;
pub(super) const AFFINITY_MS: Millis = 2_000;
const TTL_MS: Millis = TTL.as_millis() as u64;

pub(super) fn source_image() -> InputImage {
    InputImage {
        key: key("in/acme/source.png"),
        width: 512,
        height: 512,
    }
}

/// A chain of `n` turns for tenant `acme` (turn 1 edits `input`, or generates without one).
pub fn chain_submission(
    n: usize,
    input: Option<InputImage>,
    carry: Carry,
    on_failure: FailurePolicy,
) -> ChainSubmission {
    let turns = (1..=n)
        .map(|i| {
            let mut s = spec(Priority::Standard, &format!("turn {i}"));
            s.seed = turn_seed(CHAIN_SEED, i as u32);
            s.keep_latent = carry == Carry::Latent;
            if i > 1 || input.is_some() {
                s.kind = JobKind::Edit;
                s.context_width = Some(512);
                s.context_height = Some(512);
            }
            if i == 1 {
                s.input = input.clone();
            }
            PlannedTurn {
                job_id: crate::JobId::new(),
                spec: s,
            }
        })
        .collect();
    ChainSubmission {
        id: ChainId::new(),
        tenant: "acme".into(),
        carry,
        on_failure,
        seed: CHAIN_SEED,
        input,
        webhook_url: None,
        turns,
        max_in_flight: 0,
        retained: RetainedLimits::default(),
    }
}

pub(super) async fn create<Q: JobQueue>(q: &Q, chain: &ChainSubmission, now: Millis) {
    within("create_chain", q.create_chain(chain.clone(), now))
        .await
        .expect("create_chain should succeed");
}

pub async fn chain<Q: JobQueue>(q: &Q, id: ChainId) -> ChainRecord {
    within("get_chain", q.get_chain(id))
        .await
        .expect("get_chain should succeed")
        .expect("chain should exist")
}

/// A result that also names a latent when the job kept one.
pub(super) fn result_of(lease: &Lease, job: &JobRecord) -> crate::JobResult {
    let mut r = result_for(lease);
    if job.spec.keep_latent {
        r.latent_key = Some(key(&format!(
            "out/{}/{}.latent.safetensors",
            lease.job_id, lease.epoch
        )));
    }
    r
}

/// `worker` claims the next job and commits it; returns the job (as claimed) and its result.
pub(super) async fn run_turn<Q: JobQueue>(
    q: &Q,
    worker: &str,
    now: Millis,
) -> (JobRecord, crate::JobResult) {
    let (lease, job) = claim(q, worker, now).await;
    let result = result_of(&lease, &job);
    let c = within("complete", q.complete(&lease, result.clone(), now + 1)).await;
    assert_eq!(c.expect("complete"), CompleteOutcome::Committed);
    (job, result)
}

pub(super) fn frame(r: &crate::JobResult) -> Option<InputImage> {
    Some(InputImage {
        key: r.key.clone(),
        width: r.width,
        height: r.height,
    })
}

pub(super) async fn fail_turn<Q: JobQueue>(q: &Q, worker: &str, now: Millis) -> JobRecord {
    let (lease, job) = claim(q, worker, now).await;
    let err = JobError::new(JobErrorKind::InvalidInput, "cannot edit this");
    let f = within("fail", q.fail(&lease, err, now + 1)).await;
    assert_eq!(f.expect("fail"), FailOutcome::Finished(JobStatus::Failed));
    job
}

async fn tenant_job_count<Q: JobQueue>(q: &Q) -> usize {
    within("list", q.list("acme", None, 1_000))
        .await
        .expect("list")
        .jobs
        .len()
}

/// Turns run in order with their planned ids, prompts and seeds; turn k+1 edits turn k's output;
/// the chain succeeds after its last turn and nothing more is created.
pub async fn chain_turns_run_in_order_from_the_previous_frame<Q: JobQueue>(
    make: impl MakeQueue<Q>,
) {
    let q = fresh(&make, config()).await;
    let sub = chain_submission(4, Some(source_image()), Carry::Image, FailurePolicy::Stop);
    create(&q, &sub, NOW).await;
    let c = chain(&q, sub.id).await;
    assert_eq!(
        (c.status, c.current, c.last_good, c.turns.len()),
        (ChainStatus::Running, 1, 0, 4)
    );
    assert_eq!(
        (c.tenant.as_str(), c.seed, c.input.clone()),
        ("acme", CHAIN_SEED, Some(source_image()))
    );
    assert_eq!(c.turn_state(&c.turns[0]), TurnState::Job(JobStatus::Queued));
    assert_eq!(c.turn_state(&c.turns[1]), TurnState::Pending);
    assert!(c.turns[1].job.is_none() && c.turns[3].job.is_none());

    let mut previous: Option<crate::JobResult> = None;
    for (i, planned) in sub.turns.iter().enumerate() {
        let turn = i as u32 + 1;
        let now = NOW + 100 * Millis::from(turn);
        let (job, result) = run_turn(&q, "w", now).await;
        assert_eq!(job.id, planned.job_id, "turn {turn} runs its planned job");
        let chain_ref = ChainRef {
            chain_id: sub.id.to_string(),
            turn,
        };
        assert_eq!(job.chain, Some(chain_ref));
        assert_eq!(
            (job.spec.prompt.as_str(), job.spec.seed),
            (planned.spec.prompt.as_str(), planned.spec.seed)
        );
        let expected_input = match &previous {
            Some(r) => frame(r),
            None => Some(source_image()),
        };
        assert_eq!(
            job.spec.input, expected_input,
            "turn {turn} edits the frame before it"
        );
        assert_eq!(job.spec.input_latent_key, None);
        previous = Some(result);
    }
    let c = chain(&q, sub.id).await;
    assert_eq!(
        (c.status, c.current, c.last_good),
        (ChainStatus::Succeeded, 4, 4)
    );
    assert_eq!(c.finished_at, Some(NOW + 401));
    assert!(c.turns.iter().all(|t| {
        t.job
            .as_ref()
            .is_some_and(|j| j.status == JobStatus::Succeeded)
    }));
    claim_none(&q, NOW + 10 * AFFINITY_MS).await;
    assert_eq!(tenant_job_count(&q).await, 4);
}

/// With `carry: latent` every turn keeps its latent and the next turn reads it (and still names
/// the image, for users and forks).
pub async fn chain_carries_latents_when_asked<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    let mut sub = chain_submission(3, Some(source_image()), Carry::Latent, FailurePolicy::Stop);
    // The queue splices the context into the stored template: everything else must come back
    // byte for byte (a prompt quoting the splice point, a seed no double holds, odd floats).
    sub.turns[1].spec.prompt =
        "say \"input\":null, then {\"input\":null} – ünïcode \\ \u{1F600}".into();
    sub.turns[1].spec.seed = u64::MAX - 1;
    sub.turns[1].spec.guidance = 0.1 + 0.2;
    // Every turn continues the trace of the request that planned it.
    sub.turns[1].spec.traceparent =
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    create(&q, &sub, NOW).await;
    let (first, mut previous) = run_turn(&q, "w", NOW).await;
    assert!(first.spec.keep_latent);
    assert_eq!(
        first.spec.input_latent_key, None,
        "the chain's input has no latent"
    );
    for turn in 2..=3u64 {
        let (job, result) = run_turn(&q, "w", NOW + 100 * turn).await;
        assert!(job.spec.keep_latent);
        assert_eq!(job.spec.input, frame(&previous));
        assert_eq!(
            job.spec.input_latent_key, previous.latent_key,
            "turn {turn}"
        );
        let mut planned = sub.turns[turn as usize - 1].spec.clone();
        planned.input = job.spec.input.clone();
        planned.input_latent_key = job.spec.input_latent_key.clone();
        assert_eq!(
            job.spec, planned,
            "turn {turn}: only the context was filled in"
        );
        previous = result;
    }
    assert_eq!(chain(&q, sub.id).await.status, ChainStatus::Succeeded);
}

/// A repeated commit, a crashed worker and a zombie's late commit never create a turn twice.
pub async fn chain_turn_is_created_once_under_redelivery_and_crashes<Q: JobQueue>(
    make: impl MakeQueue<Q>,
) {
    let q = fresh(&make, config()).await;
    let sub = chain_submission(3, Some(source_image()), Carry::Image, FailurePolicy::Stop);
    create(&q, &sub, NOW).await;
    let (lease, job) = claim(&q, "w", NOW).await;
    let result = result_of(&lease, &job);
    for expected in [CompleteOutcome::Committed, CompleteOutcome::AlreadyDone] {
        let c = within("complete", q.complete(&lease, result.clone(), NOW + 1)).await;
        assert_eq!(c.expect("complete"), expected);
    }
    assert_eq!(tenant_job_count(&q).await, 2, "one commit, one next turn");

    let (zombie, _) = claim(&q, "w", NOW + 2).await;
    let r = within("reap", q.reap(NOW + 2 + TTL_MS))
        .await
        .expect("reap");
    assert_eq!(r.requeued, [sub.turns[1].job_id]);
    let (lease, job) = claim(&q, "survivor", NOW + 3 + TTL_MS).await;
    assert_eq!(
        (job.id, job.attempts, job.crashes),
        (sub.turns[1].job_id, 2, 1)
    );
    let c = within(
        "complete",
        q.complete(&lease, result_of(&lease, &job), NOW + 4 + TTL_MS),
    )
    .await;
    assert_eq!(c.expect("complete"), CompleteOutcome::Committed);
    let late = within(
        "zombie",
        q.complete(&zombie, result_of(&zombie, &job), NOW + 5 + TTL_MS),
    )
    .await;
    assert!(matches!(late, Err(QueueError::Stale(_))), "{late:?}");
    assert_eq!(tenant_job_count(&q).await, 3);
    let c = chain(&q, sub.id).await;
    assert_eq!((c.current, c.last_good), (3, 2));
    let third = c.turns[2].job.as_ref().expect("turn 3 exists");
    assert_eq!(
        third.spec.input.as_ref().map(|i| i.key.to_string()),
        Some(format!("out/{}/{}.png", lease.job_id, lease.epoch))
    );
}

/// After a commit, the next turn is claimable only by the committing worker until the affinity
/// delay passes; then by anyone, and the first offer is void.
pub async fn next_turn_prefers_the_previous_worker_then_anyone<Q: JobQueue>(
    make: impl MakeQueue<Q>,
) {
    let q = std::sync::Arc::new(fresh(&make, config()).await);
    let sub = chain_submission(3, Some(source_image()), Carry::Image, FailurePolicy::Stop);
    create(&*q, &sub, NOW).await;
    let (lease, job) = claim(&*q, "a", NOW).await;
    // Worker a waits for work (another of its claim loops): the offer must wake it, long
    // before its wait runs out.
    let waiter = {
        let q = std::sync::Arc::clone(&q);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let c = q.claim("a", TTL, NOW + 2, Duration::from_secs(15)).await;
            (c, started.elapsed())
        })
    };
    let done = within(
        "complete",
        q.complete(&lease, result_of(&lease, &job), NOW + 1),
    )
    .await;
    assert_eq!(done.expect("complete"), CompleteOutcome::Committed);
    let (offered, waited) = within("blocked claim", waiter).await.expect("task");
    let offered = offered
        .expect("claim")
        .expect("the offer wakes the waiting worker");
    assert_eq!(
        offered.job.id, sub.turns[1].job_id,
        "the warm worker takes turn 2 at once"
    );
    assert!(
        waited < Duration::from_secs(10),
        "woke only after {waited:?}"
    );
    claim_none(&*q, NOW + 2).await;
    let (lease, job) = (offered.lease, offered.job);
    let c = within(
        "complete",
        q.complete(&lease, result_of(&lease, &job), NOW + 4),
    )
    .await;
    assert_eq!(c.expect("complete"), CompleteOutcome::Committed);
    let q: &Q = &q;
    let committed = NOW + 4;
    let r = within("reap", q.reap(committed + AFFINITY_MS - 1))
        .await
        .expect("reap");
    assert_eq!(r.promoted, 0, "still reserved for a");
    claim_none(q, committed + AFFINITY_MS - 1).await;
    let r = within("reap", q.reap(committed + AFFINITY_MS))
        .await
        .expect("reap");
    assert_eq!(r.promoted, 1, "offered to everyone after the delay");
    let (job, _) = run_turn(q, "b", committed + AFFINITY_MS + 1).await;
    assert_eq!(job.id, sub.turns[2].job_id);
    let stale = within(
        "claim",
        q.claim("a", TTL, committed + AFFINITY_MS + 5, Duration::ZERO),
    )
    .await;
    assert!(
        stale.expect("claim").is_none(),
        "a's offer went void when b took the turn"
    );
    let c = chain(q, sub.id).await;
    let workers: Vec<_> = c
        .turns
        .iter()
        .map(|t| t.job.as_ref().and_then(|j| j.worker.clone()))
        .collect();
    assert_eq!(
        workers,
        [Some("a".into()), Some("a".into()), Some("b".into())]
    );
    assert_eq!(c.status, ChainStatus::Succeeded);
}

/// `stop`: a failed (or individually canceled) turn ends the chain `failed`; later turns are
/// skipped, never created.
pub async fn stop_policy_ends_the_chain_at_a_failed_turn<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    let sub = chain_submission(3, Some(source_image()), Carry::Image, FailurePolicy::Stop);
    create(&q, &sub, NOW).await;
    run_turn(&q, "w", NOW).await;
    fail_turn(&q, "w", NOW + 10).await;
    let c = chain(&q, sub.id).await;
    assert_eq!(
        (c.status, c.current, c.last_good, c.finished_at),
        (ChainStatus::Failed, 2, 1, Some(NOW + 11))
    );
    assert_eq!(c.turn_state(&c.turns[2]), TurnState::Skipped);
    assert!(c.turns[2].job.is_none());
    claim_none(&q, NOW + 10 * AFFINITY_MS).await;

    let sub = chain_submission(3, Some(source_image()), Carry::Image, FailurePolicy::Stop);
    create(&q, &sub, NOW).await;
    run_turn(&q, "w", NOW).await;
    let canceled = within("cancel", q.cancel(sub.turns[1].job_id, NOW + 5)).await;
    assert_eq!(canceled.expect("cancel"), CancelOutcome::Canceled);
    let c = chain(&q, sub.id).await;
    assert_eq!((c.status, c.current), (ChainStatus::Failed, 2));
    claim_none(&q, NOW + 10 * AFFINITY_MS).await;
}

/// `continue`: the turn after a failed one edits the last good frame; the chain's status is its
/// last turn's outcome.
pub async fn continue_policy_resumes_from_the_last_good_frame<Q: JobQueue>(
    make: impl MakeQueue<Q>,
) {
    let q = fresh(&make, config()).await;
    let sub = chain_submission(
        4,
        Some(source_image()),
        Carry::Image,
        FailurePolicy::Continue,
    );
    create(&q, &sub, NOW).await;
    let (_, first) = run_turn(&q, "w", NOW).await;
    fail_turn(&q, "w", NOW + 10).await;
    // Not a commit: the next turn is dispatched to everyone at once.
    let (third, good) = run_turn(&q, "other", NOW + 20).await;
    assert_eq!(third.id, sub.turns[2].job_id);
    assert_eq!(
        third.spec.input,
        frame(&first),
        "turn 3 edits turn 1's frame"
    );
    let last = fail_turn(&q, "other", NOW + 30).await;
    assert_eq!(last.spec.input, frame(&good));
    let c = chain(&q, sub.id).await;
    assert_eq!(
        (c.status, c.current, c.last_good),
        (ChainStatus::Failed, 4, 3)
    );
    let states: Vec<_> = c.turns.iter().map(|t| c.turn_state(t)).collect();
    let job = TurnState::Job;
    assert_eq!(
        states,
        [
            job(JobStatus::Succeeded),
            job(JobStatus::Failed),
            job(JobStatus::Succeeded),
            job(JobStatus::Failed)
        ]
    );
}

/// Appending to a running chain queues the turn behind the others; appending to a finished chain
/// runs it at once from the last good frame, on the warm worker first; canceled chains refuse.
pub async fn appended_turns_extend_running_and_finished_chains<Q: JobQueue>(
    make: impl MakeQueue<Q>,
) {
    let q = fresh(&make, config()).await;
    let sub = chain_submission(1, Some(source_image()), Carry::Image, FailurePolicy::Stop);
    create(&q, &sub, NOW).await;
    let template = |prompt: &str| {
        let mut s = spec(Priority::Standard, prompt);
        s.kind = JobKind::Edit;
        s
    };
    let second = TurnAppend {
        job_id: crate::JobId::new(),
        spec: template("appended"),
        seed: None,
        retained: RetainedLimits::default(),
    };
    let out = within("append", q.append_turn(sub.id, second.clone(), NOW + 1)).await;
    assert_eq!(
        out.expect("append"),
        AppendOutcome {
            turn: 2,
            started: false
        }
    );
    assert_eq!(tenant_job_count(&q).await, 1, "waits for turn 1");
    let (_, first) = run_turn(&q, "w", NOW + 2).await;
    let (job, r2) = run_turn(&q, "w", NOW + 10).await;
    assert_eq!(
        (job.id, job.spec.seed),
        (second.job_id, turn_seed(CHAIN_SEED, 2))
    );
    assert_eq!(job.spec.input, frame(&first));
    assert_eq!(chain(&q, sub.id).await.status, ChainStatus::Succeeded);

    let third = TurnAppend {
        job_id: crate::JobId::new(),
        spec: template("more"),
        seed: Some(7),
        retained: RetainedLimits::default(),
    };
    let out = within("append", q.append_turn(sub.id, third.clone(), NOW + 20)).await;
    assert_eq!(
        out.expect("append"),
        AppendOutcome {
            turn: 3,
            started: true
        }
    );
    let c = chain(&q, sub.id).await;
    assert_eq!(
        (c.status, c.finished_at, c.turns.len()),
        (ChainStatus::Running, None, 3)
    );
    claim_none(&q, NOW + 21).await;
    let (job, _) = run_turn(&q, "w", NOW + 22).await;
    assert_eq!((job.id, job.spec.seed), (third.job_id, 7));
    assert_eq!(job.spec.input, frame(&r2), "continues from the last frame");
    assert_eq!(chain(&q, sub.id).await.status, ChainStatus::Succeeded);

    let other = chain_submission(2, Some(source_image()), Carry::Image, FailurePolicy::Stop);
    create(&q, &other, NOW).await;
    let c = within("cancel_chain", q.cancel_chain(other.id, NOW + 1)).await;
    assert_eq!(c.expect("cancel_chain"), CancelOutcome::Canceled);
    let refused = within("append", q.append_turn(other.id, third.clone(), NOW + 2)).await;
    assert!(
        matches!(refused, Err(QueueError::ChainConflict(_))),
        "{refused:?}"
    );
    let unknown = within("append", q.append_turn(ChainId::new(), third, NOW + 2)).await;
    assert!(
        matches!(unknown, Err(QueueError::ChainNotFound(_))),
        "{unknown:?}"
    );
}
