//! Unit tests of the pure `State` transitions (no runtime, no clock). The full behaviour is
//! covered by the conformance suite; these pin the details that suite reaches only indirectly.

use std::time::Duration;

use super::state::State;
use crate::error::QueueError;
use crate::error::{JobError, JobErrorKind};
use crate::job::{JobKind, JobStatus, OutputFormat, Priority, ValidJobSpec};
use crate::policy::{QueueConfig, RetryDecision};
use crate::queue::{CancelOutcome, Submission};
use crate::resolution::ResizeMode;

const T0: u64 = 1_000_000;
const TTL: Duration = Duration::from_secs(10);

fn spec(priority: Priority) -> ValidJobSpec {
    ValidJobSpec {
        kind: JobKind::Generate,
        prompt: "p".into(),
        input: None,
        input_latent_key: None,
        resize: ResizeMode::Snap,
        context_width: None,
        context_height: None,
        width: 512,
        height: 512,
        steps: 4,
        guidance: 2.5,
        seed: 1,
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

fn sub(tenant: &str) -> Submission {
    Submission {
        tenant: tenant.into(),
        spec: spec(Priority::Standard),
        idempotency_key: None,
        body_hash: "h".into(),
        max_in_flight: 0,
        retained: crate::queue::RetainedLimits::default(),
        chain: None,
    }
}

#[test]
fn canceled_entries_are_skipped_and_consumed() {
    let mut s = State::new(QueueConfig::default());
    let a = s
        .submit(sub("t"), crate::JobId::new(), T0)
        .expect("submit")
        .id;
    let b = s
        .submit(sub("t"), crate::JobId::new(), T0)
        .expect("submit")
        .id;
    assert_eq!(s.cancel(a, T0), CancelOutcome::Canceled);
    assert_eq!(
        s.stats(T0).ready[1].1,
        2,
        "the canceled entry stays until a claim skips it"
    );
    let claim = s.claim("w", TTL, T0).expect("b is claimable");
    assert_eq!(claim.job.id, b);
    assert_eq!(s.stats(T0).ready[1].1, 0);
}

#[test]
fn release_undoes_the_attempt_and_dispatches_again() {
    let mut s = State::new(QueueConfig::default());
    let id = s
        .submit(sub("t"), crate::JobId::new(), T0)
        .expect("submit")
        .id;
    let lease = s.claim("w", TTL, T0).expect("claim").lease;
    assert_eq!(lease.attempt, 1);
    s.release(&lease, T0 + 1).expect("release");
    let rec = s.get(id).expect("job");
    assert_eq!(
        (rec.status, rec.attempts, rec.crashes, rec.epoch),
        (JobStatus::Queued, 0, 0, 2)
    );
    let again = s.claim("w2", TTL, T0 + 2).expect("claim again").lease;
    assert_eq!((again.attempt, again.epoch), (1, 3));
    assert!(matches!(
        s.release(&lease, T0 + 3),
        Err(QueueError::Stale(_))
    ));
}

#[test]
fn a_retry_of_a_cancel_requested_job_ends_canceled() {
    let mut s = State::new(QueueConfig::default());
    let id = s
        .submit(sub("t"), crate::JobId::new(), T0)
        .expect("submit")
        .id;
    let lease = s.claim("w", TTL, T0).expect("claim").lease;
    assert_eq!(s.cancel(id, T0), CancelOutcome::CancellationRequested);
    let err = JobError::new(JobErrorKind::Transient, "oom");
    let out = s
        .fail(&lease, err, RetryDecision::Retry { at: T0 + 5 }, T0)
        .expect("fail");
    assert_eq!(out, crate::FailOutcome::Finished(JobStatus::Canceled));
}

#[test]
fn finished_jobs_are_forgotten_after_the_retention() {
    let cfg = QueueConfig {
        retention: Duration::from_secs(1),
        ..QueueConfig::default()
    };
    let mut s = State::new(cfg);
    let id = s
        .submit(sub("t"), crate::JobId::new(), T0)
        .expect("submit")
        .id;
    s.cancel(id, T0);
    s.reap(T0 + 999);
    assert!(s.get(id).is_some());
    s.reap(T0 + 1_000);
    assert!(s.get(id).is_none());
    assert!(s.list("t", None, 10).expect("list").jobs.is_empty());
}

#[test]
fn list_cursors_are_checked() {
    let s = State::new(QueueConfig::default());
    assert!(matches!(
        s.list("t", Some("nope"), 10),
        Err(QueueError::InvalidCursor(_))
    ));
    assert!(matches!(
        s.events(crate::JobId::new(), None, 1),
        Err(QueueError::NotFound(_))
    ));
}
