//! Graceful drain: what a worker does with its running job when it is told to stop (SIGTERM from
//! Kubernetes, SIGINT from a terminal, or the embedding program's shutdown future).
//!
//! The worker stops claiming and reports not-ready at once. The running job is finished when its
//! expected remaining time — steps left × the recent step time, plus the decode/upload/commit tail
//! measured on earlier jobs — fits the grace period; otherwise the engine is canceled between two
//! steps and the job is released to the queue without counting an attempt
//! (docs/queue-protocol.md §Release). Kubernetes sends SIGKILL `terminationGracePeriodSeconds`
//! after SIGTERM (<https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/>, "Pod
//! termination"). If a job that was expected to fit is still running when the grace period ends,
//! it is canceled and released then.
//!
//! The decision is a pure function of measured durations (`drain_decision`), unit-tested here.

use std::time::{Duration, Instant};

/// Live progress of the running job's denoising loop, fed by its progress events.
#[derive(Debug, Clone)]
pub struct StepClock {
    total: u32,
    done: u32,
    last_at: Option<Instant>,
    /// Smoothed duration of one step (exponential moving average).
    step_time: Option<Duration>,
}

/// Weight of the newest step in the moving average.
const STEP_EWMA_WEIGHT: f64 = 0.3;

impl StepClock {
    /// A job of `total` steps that has not started denoising; `prior` is the step time measured
    /// on earlier jobs, if any (used until this job's own steps are timed).
    pub fn new(total: u32, prior: Option<Duration>) -> Self {
        Self {
            total,
            done: 0,
            last_at: None,
            step_time: prior,
        }
    }

    /// Records "`done` of `total` steps finished" observed at `at` (`done` = 0: denoising starts).
    pub fn record(&mut self, done: u32, total: u32, at: Instant) {
        if let (Some(last), true) = (self.last_at, done > self.done) {
            let per_step = at.saturating_duration_since(last) / (done - self.done);
            self.step_time = Some(match self.step_time {
                Some(prev) if done > 1 => {
                    prev.mul_f64(1.0 - STEP_EWMA_WEIGHT) + per_step.mul_f64(STEP_EWMA_WEIGHT)
                }
                // The first step of a job replaces a prior from another job (sizes differ).
                _ => per_step,
            });
        }
        self.total = total;
        if done != self.done || self.last_at.is_none() {
            self.done = done;
            self.last_at = Some(at);
        }
    }

    pub fn steps_left(&self) -> u32 {
        self.total.saturating_sub(self.done)
    }

    pub fn step_time(&self) -> Option<Duration> {
        self.step_time
    }
}

/// What to do with the running job when a drain begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainDecision {
    /// Let it finish: it is expected to be committed after `expected`.
    Finish { expected: Duration },
    /// Cancel it between two steps and give it back to the queue.
    Release,
}

/// Decides from `steps_left`, the recent `step_time` (unknown before any step was timed), the
/// expected `tail` after the last step (decode, encode, upload, commit) and the time left of the
/// grace period. Past the last step the engine can no longer be stopped, so the job finishes.
pub fn drain_decision(
    steps_left: u32,
    step_time: Option<Duration>,
    tail: Duration,
    grace_left: Duration,
) -> DrainDecision {
    if steps_left == 0 {
        return DrainDecision::Finish { expected: tail };
    }
    let Some(step) = step_time else {
        // No measurement to promise anything with.
        return DrainDecision::Release;
    };
    let expected = step.saturating_mul(steps_left).saturating_add(tail);
    if expected <= grace_left {
        DrainDecision::Finish { expected }
    } else {
        DrainDecision::Release
    }
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
pub async fn termination_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT: draining"),
        () = term => tracing::info!("SIGTERM: draining"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Within a microsecond (the moving average goes through f64).
    fn assert_near(got: Option<Duration>, want: Duration) {
        let got = got.expect("a step time");
        let diff = got.abs_diff(want);
        assert!(diff < Duration::from_micros(1), "{got:?} vs {want:?}");
    }

    #[test]
    fn finishes_when_the_rest_fits_the_grace_period() {
        assert_eq!(
            drain_decision(10, Some(100 * MS), 500 * MS, 2_000 * MS),
            DrainDecision::Finish {
                expected: 1_500 * MS
            }
        );
        assert_eq!(
            drain_decision(10, Some(100 * MS), 500 * MS, 1_499 * MS),
            DrainDecision::Release
        );
    }

    #[test]
    fn unknown_step_time_releases_and_past_the_last_step_finishes() {
        assert_eq!(
            drain_decision(5, None, Duration::ZERO, 60_000 * MS),
            DrainDecision::Release
        );
        assert_eq!(
            drain_decision(0, None, 9_000 * MS, 1_000 * MS),
            DrainDecision::Finish {
                expected: 9_000 * MS
            }
        );
    }

    #[test]
    fn step_clock_measures_steps_from_events() {
        let t0 = Instant::now();
        let mut c = StepClock::new(20, Some(5_000 * MS));
        assert_eq!(c.steps_left(), 20);
        assert_eq!(
            c.step_time(),
            Some(5_000 * MS),
            "prior until a step is timed"
        );
        c.record(0, 20, t0);
        c.record(1, 20, t0 + 100 * MS);
        assert_eq!(
            c.step_time(),
            Some(100 * MS),
            "first step replaces the prior"
        );
        // Two steps reported at once: 200 ms each; EWMA 0.7·100 + 0.3·200 = 130.
        c.record(3, 20, t0 + 500 * MS);
        assert_near(c.step_time(), 130 * MS);
        assert_eq!(c.steps_left(), 17);
        // A repeated report changes nothing, not even when the step started.
        c.record(3, 20, t0 + 900 * MS);
        assert_near(c.step_time(), 130 * MS);
        c.record(4, 20, t0 + 630 * MS);
        assert_near(c.step_time(), 130 * MS);
    }
}
