//! The queue conformance suite: one async function per rule of the `JobQueue` contract, generic
//! over the implementation, plus `queue_conformance_tests!` which expands into one `#[tokio::test]`
//! per rule. `tests/tests/queue_conformance.rs` runs it against `MemoryQueue` and against
//! `RedisQueue` on a real redis-server (apalis' `generic_storage_test!` idea).
//!
//! Chain rules are in `chains`. Rules drive time through the injected `now` (never sleeps); every await sits in `within`, whose
//! panic names what stalled. Each rule gets a fresh queue from the factory, which receives the
//! `QueueConfig` the rule needs.

mod admin_jobs;
mod bulk_actions;
mod bulk_bounds;
mod chain_endings;
mod chains;
mod dead_letters;
mod failures;
mod forks;
mod history;
mod lifecycle;
mod loras;
mod notifications;
mod retention;
mod throughput;
mod usage;
mod workers;

use std::future::Future;
use std::time::Duration;

use crate::job::{
    JobId, JobKind, JobResult, JobStatus, Millis, OutputFormat, Priority, ValidJobSpec,
};
use crate::object_key::ObjectKey;
use crate::policy::{QueueConfig, RetryPolicy};
use crate::queue::{JobEvent, JobQueue, Lease, Submission};
use crate::resolution::ResizeMode;

pub use admin_jobs::*;
pub use bulk_actions::*;
pub use bulk_bounds::*;
pub use chain_endings::*;
pub use chains::*;
pub use dead_letters::*;
pub use failures::*;
pub use forks::*;
pub use history::*;
pub use lifecycle::*;
pub use loras::*;
pub use notifications::*;
pub use retention::*;
pub use throughput::*;
pub use usage::*;
pub use workers::*;

/// Injected start time of every rule (ms since the epoch).
pub const NOW: Millis = 1_700_000_000_000;
/// Lease length used by the rules.
pub const TTL: Duration = Duration::from_secs(30);
/// How long any single await may take before the rule fails as stalled.
const STALL: Duration = Duration::from_secs(20);

/// Await `fut`, failing with `stalled: <what>` after `STALL`.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STALL, fut).await {
        Ok(v) => v,
        Err(_) => panic!("stalled: {what} did not finish within {STALL:?}"),
    }
}

/// A config with deterministic jitter (none) and a fixed RNG seed.
pub fn config() -> QueueConfig {
    QueueConfig {
        retry: RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        },
        jitter_seed: Some(7),
        ..QueueConfig::default()
    }
}

/// Build a fresh queue from the factory.
pub async fn fresh<Q, F, Fut>(make: &F, cfg: QueueConfig) -> Q
where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = Q>,
{
    within("creating a fresh queue", make(cfg)).await
}

pub fn spec(priority: Priority, prompt: &str) -> ValidJobSpec {
    ValidJobSpec {
        kind: JobKind::Generate,
        prompt: prompt.into(),
        input: None,
        input_latent_key: None,
        resize: ResizeMode::Snap,
        context_width: None,
        context_height: None,
        width: 512,
        height: 512,
        steps: 4,
        guidance: 2.5,
        seed: 42,
        output_format: OutputFormat::Png,
        priority,
        webhook_url: None,
        initial_latents_key: None,
        keep_latent: false,
        acceleration: Default::default(),
        more_references: Vec::new(),
        reference_positions: Default::default(),
        loras: Vec::new(),
        traceparent: None,
    }
}

pub fn submission(tenant: &str, priority: Priority, prompt: &str) -> Submission {
    Submission {
        tenant: tenant.into(),
        spec: spec(priority, prompt),
        idempotency_key: None,
        body_hash: format!("hash-of-{prompt}"),
        max_in_flight: 0,
        retained: crate::queue::RetainedLimits::default(),
        chain: None,
    }
}

/// Submit and return the new id.
pub async fn submit<Q: JobQueue>(q: &Q, sub: Submission, now: Millis) -> JobId {
    let out = within("submit", q.submit(sub, now))
        .await
        .expect("submit should succeed");
    assert!(
        out.created,
        "a submission without idempotency key always creates a job"
    );
    out.id
}

/// Claim without waiting; panics when nothing is claimable.
pub async fn claim<Q: JobQueue>(q: &Q, worker: &str, now: Millis) -> (Lease, crate::JobRecord) {
    let c = within("claim", q.claim(worker, TTL, now, Duration::ZERO))
        .await
        .expect("claim should succeed")
        .unwrap_or_else(|| panic!("{worker} expected a claimable job at {now}"));
    (c.lease, c.job)
}

/// Assert that nothing is claimable at `now`.
pub async fn claim_none<Q: JobQueue>(q: &Q, now: Millis) {
    let c = within(
        "claim on an empty queue",
        q.claim("probe", TTL, now, Duration::ZERO),
    )
    .await
    .expect("claim should succeed");
    assert!(
        c.is_none(),
        "expected no claimable job at {now}, got {:?}",
        c.map(|c| c.job.id)
    );
}

pub async fn record<Q: JobQueue>(q: &Q, id: JobId) -> crate::JobRecord {
    within("get", q.get(id))
        .await
        .expect("get should succeed")
        .expect("job should exist")
}

/// `raw` as an object key; the suite only writes valid ones.
pub fn key(raw: &str) -> ObjectKey {
    ObjectKey::parse(raw).expect("the conformance suite uses valid object keys")
}

pub fn result_for(lease: &Lease) -> JobResult {
    JobResult {
        key: key(&format!("out/{}/{}.png", lease.job_id, lease.epoch)),
        width: 512,
        height: 512,
        format: OutputFormat::Png,
        seed: 42,
        latent_key: None,
        engine_ms: 5,
        full_evaluations: None,
        loras: Vec::new(),
        // Round-trips through the queue with the rest of the result.
        stages: Some(crate::StageTimings {
            fetch_ms: 1,
            engine_ms: 5,
            encode_ms: 2,
            upload_ms: 3,
        }),
    }
}

/// All events of a job so far.
pub async fn events<Q: JobQueue>(q: &Q, id: JobId) -> Vec<(String, JobEvent)> {
    within("events", q.events(id, None, Duration::ZERO))
        .await
        .expect("events should succeed")
}

/// The state changes among a job's events, in order.
pub async fn state_events<Q: JobQueue>(q: &Q, id: JobId) -> Vec<JobStatus> {
    events(q, id)
        .await
        .into_iter()
        .filter_map(|(_, e)| match e {
            JobEvent::State { status, .. } => Some(status),
            JobEvent::Progress { .. } => None,
        })
        .collect()
}

/// Expand into one `#[tokio::test]` per conformance rule. `$make` is a factory
/// `Fn(QueueConfig) -> impl Future<Output = impl JobQueue>` returning a fresh, empty queue.
#[macro_export]
macro_rules! queue_conformance_tests {
    ($make:expr) => {
        $crate::queue_conformance_tests!(@rules $make;
            submit_is_visible_at_once,
            unknown_ids_are_not_found,
            idempotent_submit,
            in_flight_limit_per_tenant,
            claims_follow_priority_then_fifo,
            blocked_claim_wakes_on_submit,
            two_workers_race_for_one_job,
            complete_is_fenced_and_idempotent,
            progress_and_state_events,
            list_by_tenant_newest_first,
            stats_count_ready_running_delayed_dead,
            heartbeat_renews_only_the_current_epoch,
            expired_worker_cannot_commit_after_reclaim,
            crashed_worker_job_completes_exactly_once,
            poison_job_is_dead_lettered_after_three_crashes,
            cancel_queued_job_never_runs,
            cancel_running_job_is_seen_by_heartbeat_and_progress,
            failed_attempts_retry_on_the_backoff_schedule,
            jitter_spreads_retries_within_bounds,
            non_retryable_errors_end_the_job,
            release_returns_the_job_without_counting,
            delayed_retry_can_be_canceled,
            finished_jobs_are_notified_once,
            unacknowledged_notifications_come_back,
            failed_and_dead_jobs_are_notified,
            chain_turns_run_in_order_from_the_previous_frame,
            chain_carries_latents_when_asked,
            chain_turn_is_created_once_under_redelivery_and_crashes,
            next_turn_prefers_the_previous_worker_then_anyone,
            stop_policy_ends_the_chain_at_a_failed_turn,
            continue_policy_resumes_from_the_last_good_frame,
            appended_turns_extend_running_and_finished_chains,
            fork_shares_the_committed_prefix,
            fork_with_turns_runs_them_and_is_all_or_nothing,
            canceled_chain_creates_no_more_turns,
            text_to_image_chain_and_creation_checks,
            lora_jobs_prefer_the_worker_holding_their_set,
            registered_workers_are_listed_until_their_ttl_passes,
            drain_requests_reach_live_workers_and_are_audited,
            dead_letters_are_listed_requeued_and_dismissed_once,
            admin_job_pages_filter_across_tenants_within_a_scan_budget,
            job_history_records_every_attempt_and_how_it_ended,
            throughput_counts_finished_jobs_per_minute_once,
            dead_letters_are_requeued_and_dismissed_by_filter,
            bulk_dead_letter_calls_are_bounded_and_continue_by_cursor,
            a_tenants_queued_jobs_are_canceled_running_ones_left,
            usage_counts_each_succeeded_job_once,
            retained_jobs_are_limited_per_tenant,
            retained_chains_and_turns_are_limited_per_tenant,
        );
    };
    (@rules $make:expr; $($rule:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $rule() {
                $crate::conformance::$rule($make).await;
            }
        )*
    };
}
