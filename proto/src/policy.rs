//! Queue policy as pure functions of their inputs (attempt, error kind, `now`, a jitter fraction):
//! retry with exponential backoff and jitter, lease expiry, the poison rule, and the queue
//! configuration both implementations share. Nothing here reads a clock or touches Redis, so every
//! rule is unit-tested with plain numbers.

use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::JobErrorKind;
use crate::job::{JobStatus, Millis};

/// A job whose worker lost the lease this many times is poison: it goes to `dead` and the
/// dead-letter stream instead of crashing yet another worker (the poison-pill handling of
/// Sidekiq Pro's `super_fetch`, <https://github.com/sidekiq/sidekiq/wiki/Reliability>;
/// docs/queue-protocol.md §Reaper).
pub const MAX_CRASHES: u32 = 3;

/// Retries of attempts that ended with a retryable error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included; the attempt that reaches it is not retried.
    pub max_attempts: u32,
    /// Delay after the first attempt; doubles with every further attempt.
    pub base: Duration,
    /// Upper bound of the delay.
    pub cap: Duration,
    /// Share of the delay that jitter may take off, in `0..=1`: the delay lies in
    /// `(d·(1-jitter), d]`, so retries of jobs that failed together spread out.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base: Duration::from_secs(2),
            cap: Duration::from_secs(60),
            jitter: 0.25,
        }
    }
}

/// What follows a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Back to `queued`, claimable from `at`.
    Retry { at: Millis },
    /// Terminal: `failed`, or `canceled` for a canceled attempt.
    GiveUp { status: JobStatus },
}

/// Whole milliseconds of `d`, saturating.
pub fn millis(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Backoff before attempt `attempt + 1`: `base · 2^(attempt-1)`, capped (attempt is 1-based).
pub fn backoff(policy: &RetryPolicy, attempt: u32) -> Millis {
    let base = millis(policy.base);
    let cap = millis(policy.cap);
    let doublings = attempt.saturating_sub(1).min(63);
    base.checked_mul(1u64 << doublings)
        .map_or(cap, |d| d.min(cap))
}

/// Decide what follows attempt `attempt` (1-based) ending with `kind` at `now`.
/// `jitter_fraction` in `[0, 1)` comes from the caller's RNG, so tests pass fixed values.
pub fn retry_decision(
    policy: &RetryPolicy,
    attempt: u32,
    kind: JobErrorKind,
    now: Millis,
    jitter_fraction: f64,
) -> RetryDecision {
    match kind {
        JobErrorKind::Canceled => RetryDecision::GiveUp {
            status: JobStatus::Canceled,
        },
        JobErrorKind::InvalidInput | JobErrorKind::Fatal => RetryDecision::GiveUp {
            status: JobStatus::Failed,
        },
        JobErrorKind::Transient if attempt >= policy.max_attempts => RetryDecision::GiveUp {
            status: JobStatus::Failed,
        },
        JobErrorKind::Transient => {
            let delay = backoff(policy, attempt);
            let share = (policy.jitter.clamp(0.0, 1.0) * jitter_fraction.clamp(0.0, 1.0)).min(1.0);
            // Truncation keeps the delay within (d·(1-jitter), d].
            let off = (delay as f64 * share) as u64;
            RetryDecision::Retry {
                at: now.saturating_add(delay - off.min(delay)),
            }
        }
    }
}

/// End of a lease taken or renewed at `now`.
pub fn lease_until(now: Millis, ttl: Duration) -> Millis {
    now.saturating_add(millis(ttl))
}

/// A lease is expired from its `lease_until` on (the reaper takes scores `<= now`).
pub fn lease_expired(lease_until: Millis, now: Millis) -> bool {
    lease_until <= now
}

/// After `crashes` lost leases, is the job poison?
pub fn is_poison(crashes: u32) -> bool {
    crashes >= MAX_CRASHES
}

/// Share of the work done after `step` of `total` steps, `0..=1`.
pub fn progress_fraction(step: u32, total: u32) -> f32 {
    if total == 0 {
        0.0
    } else {
        step.min(total) as f32 / total as f32
    }
}

/// Settings both queue implementations share.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    pub retry: RetryPolicy,
    /// How long finished jobs and their events are kept.
    pub retention: Duration,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: Duration,
    /// Approximate cap of each job's event stream (`MAXLEN ~`).
    pub events_maxlen: usize,
    /// Jobs handled per reaper pass and script call; a pass loops until a batch comes back short.
    pub reap_batch: usize,
    /// Seed of the jitter RNG; `None` seeds from the OS.
    pub jitter_seed: Option<u64>,
    /// A chain's next turn is offered only to the worker that ran the previous turn (warm
    /// caches) for this long, then to every worker.
    pub affinity_delay: Duration,
    /// A job with LoRAs is offered only to the worker holding its LoRA set for this long, then
    /// to every worker (docs/queue-protocol.md §LoRA affinity).
    pub lora_affinity_delay: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            retention: Duration::from_secs(7 * 24 * 3600),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            events_maxlen: 256,
            reap_batch: 100,
            jitter_seed: None,
            affinity_delay: Duration::from_secs(2),
            lora_affinity_delay: Duration::from_secs(2),
        }
    }
}

/// Source of jitter fractions in `[0, 1)`; seeded for reproducible tests.
#[derive(Debug)]
pub struct Jitter(Mutex<StdRng>);

impl Jitter {
    pub fn new(seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Self(Mutex::new(rng))
    }

    pub fn fraction(&self) -> f64 {
        // A poisoned lock only means another thread panicked mid-draw; the RNG state is still fine.
        let mut rng = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        rng.random::<f64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_700_000_000_000;

    fn no_jitter() -> RetryPolicy {
        RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn backoff_doubles_from_base_and_caps() {
        let p = RetryPolicy {
            max_attempts: 10,
            ..no_jitter()
        };
        let delays: Vec<Millis> = (1..=8).map(|a| backoff(&p, a)).collect();
        assert_eq!(
            delays,
            [2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000]
        );
        assert_eq!(
            backoff(&p, u32::MAX),
            60_000,
            "huge attempt counts must not overflow"
        );
    }

    #[test]
    fn transient_errors_retry_until_attempts_run_out() {
        let p = no_jitter();
        assert_eq!(
            retry_decision(&p, 1, JobErrorKind::Transient, NOW, 0.0),
            RetryDecision::Retry { at: NOW + 2_000 }
        );
        assert_eq!(
            retry_decision(&p, 2, JobErrorKind::Transient, NOW, 0.0),
            RetryDecision::Retry { at: NOW + 4_000 }
        );
        assert_eq!(
            retry_decision(&p, 3, JobErrorKind::Transient, NOW, 0.0),
            RetryDecision::GiveUp {
                status: JobStatus::Failed
            }
        );
    }

    #[test]
    fn error_kind_decides_whether_to_retry() {
        let p = no_jitter();
        for (kind, status) in [
            (JobErrorKind::InvalidInput, JobStatus::Failed),
            (JobErrorKind::Fatal, JobStatus::Failed),
            (JobErrorKind::Canceled, JobStatus::Canceled),
        ] {
            assert_eq!(
                retry_decision(&p, 1, kind, NOW, 0.5),
                RetryDecision::GiveUp { status }
            );
        }
    }

    #[test]
    fn jitter_takes_at_most_its_share_off_the_delay() {
        let p = RetryPolicy {
            jitter: 0.25,
            ..RetryPolicy::default()
        };
        let at = |f| match retry_decision(&p, 2, JobErrorKind::Transient, NOW, f) {
            RetryDecision::Retry { at } => at - NOW,
            other => panic!("expected a retry, got {other:?}"),
        };
        assert_eq!(at(0.0), 4_000);
        assert_eq!(at(0.5), 3_500);
        assert_eq!(at(0.999_999), 3_001);
        assert_eq!(at(7.0), 3_000, "fractions are clamped to [0, 1]");
    }

    #[test]
    fn seeded_jitter_is_reproducible_and_in_range() {
        let a = Jitter::new(Some(7));
        let b = Jitter::new(Some(7));
        for _ in 0..100 {
            let f = a.fraction();
            assert!((0.0..1.0).contains(&f));
            assert_eq!(f.to_bits(), b.fraction().to_bits());
        }
    }

    #[test]
    fn leases_expire_at_their_deadline() {
        let until = lease_until(NOW, Duration::from_secs(30));
        assert_eq!(until, NOW + 30_000);
        assert!(!lease_expired(until, until - 1));
        assert!(lease_expired(until, until));
    }

    #[test]
    fn third_crash_makes_a_job_poison() {
        assert!(!is_poison(0));
        assert!(!is_poison(2));
        assert!(is_poison(3));
    }
}
