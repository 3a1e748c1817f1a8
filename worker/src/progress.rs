//! Progress of a running job: engine step events → the queue (and so the SSE stream), at most one
//! per `interval` (500 ms: two per second, Replicate's cadence), never blocking the engine.
//!
//! The engine thread sends every step on an unbounded channel; a tokio task drains it, feeds the
//! drain logic's `StepClock` with every step, and publishes through `ProgressThrottle`: a step that
//! arrives too soon after the last published one is held, and the newest held step goes out when
//! the interval has passed. Each publish also renews the lease and may report a cancel.

use std::sync::Arc;
use std::time::Duration;

use kontext_engine::thread::StepProgress;
use kontext_proto::JobQueue;
use kontext_proto::clock::now_ms;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::job_context::JobContext;

/// Rate limiter of progress events. Pure: the caller passes the time.
#[derive(Debug, Clone)]
pub struct ProgressThrottle {
    interval: Duration,
    last_sent: Option<Instant>,
    pending: Option<StepProgress>,
}

impl ProgressThrottle {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_sent: None,
            pending: None,
        }
    }

    /// A new step event: returns it when it may be published now, else holds it (replacing an
    /// older held one).
    pub fn offer(&mut self, p: StepProgress, now: Instant) -> Option<StepProgress> {
        match self.last_sent {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.pending = Some(p);
                None
            }
            _ => {
                self.pending = None;
                self.last_sent = Some(now);
                Some(p)
            }
        }
    }

    /// When the held event may go out, if one is held.
    pub fn due_at(&self) -> Option<Instant> {
        self.pending
            .and(self.last_sent)
            .map(|last| last + self.interval)
    }

    /// The held event, if it is due at `now`.
    pub fn take_due(&mut self, now: Instant) -> Option<StepProgress> {
        match self.due_at() {
            Some(due) if now >= due => {
                self.last_sent = Some(now);
                self.pending.take()
            }
            _ => None,
        }
    }
}

/// Forwards the engine's step events of one job until the engine closes the channel (the job's
/// generation ended).
pub async fn forward<Q: JobQueue>(
    job: Arc<JobContext<Q>>,
    mut steps: mpsc::UnboundedReceiver<StepProgress>,
) {
    let mut throttle = ProgressThrottle::new(job.settings.progress_interval);
    loop {
        // Far in the future when nothing is held: the branch is then disabled anyway.
        let due = throttle
            .due_at()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let publish = tokio::select! {
            step = steps.recv() => match step {
                Some(p) => {
                    let now = Instant::now();
                    job.step_clock().record(p.done, p.total, now.into_std());
                    throttle.offer(p, now)
                }
                None => return,
            },
            () = tokio::time::sleep_until(due), if throttle.due_at().is_some() => {
                throttle.take_due(Instant::now())
            }
        };
        if let Some(p) = publish {
            publish_step(&job, p).await;
        }
    }
}

async fn publish_step<Q: JobQueue>(job: &JobContext<Q>, p: StepProgress) {
    let reply = job
        .queue
        .progress(
            &job.lease,
            p.done,
            p.total,
            job.settings.lease_ttl,
            now_ms(),
        )
        .await;
    job.status.metrics.progress_events.inc();
    job.status.update_activity(|a| {
        a.progress = Some(p.done as f32 / p.total.max(1) as f32);
    });
    if let Err(e) = &reply {
        tracing::warn!(error = %e, step = p.done, "publishing progress failed");
    }
    job.control.observe(&reply);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(done: u32) -> StepProgress {
        StepProgress { done, total: 10 }
    }

    #[test]
    fn at_most_one_event_per_interval_and_the_newest_held_goes_out() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut t = ProgressThrottle::new(ms(500));
        assert_eq!(
            t.offer(step(0), t0),
            Some(step(0)),
            "the first goes out at once"
        );
        assert_eq!(t.due_at(), None);
        assert_eq!(t.offer(step(1), t0 + ms(100)), None);
        assert_eq!(t.offer(step(2), t0 + ms(200)), None);
        assert_eq!(t.due_at(), Some(t0 + ms(500)));
        assert_eq!(t.take_due(t0 + ms(499)), None, "not yet due");
        assert_eq!(t.take_due(t0 + ms(500)), Some(step(2)), "newest held step");
        assert_eq!(t.due_at(), None);
        assert_eq!(
            t.offer(step(3), t0 + ms(900)),
            None,
            "400 ms after the last"
        );
        assert_eq!(
            t.offer(step(4), t0 + ms(1000)),
            Some(step(4)),
            "500 ms after"
        );
        assert_eq!(t.due_at(), None, "a publish drops the held event");
    }

    #[test]
    fn rate_is_bounded_for_a_burst_of_steps() {
        let t0 = Instant::now();
        let mut t = ProgressThrottle::new(Duration::from_millis(500));
        let mut sent = Vec::new();
        // 100 steps of 10 ms each over one second, draining due events as a timer would.
        for i in 0..100u32 {
            let now = t0 + Duration::from_millis(u64::from(i) * 10);
            if let Some(p) = t.take_due(now) {
                sent.push(now);
                let _ = p;
            }
            if t.offer(step(i), now).is_some() {
                sent.push(now);
            }
        }
        assert!(sent.len() <= 2, "{} events in 1 s", sent.len());
        for pair in sent.windows(2) {
            assert!(pair[1] - pair[0] >= Duration::from_millis(500));
        }
    }
}
