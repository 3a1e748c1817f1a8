//! The reaper: every `--reap-interval`, `queue.reap(now)` re-queues jobs whose lease expired
//! (counting a crash), dead-letters jobs that crashed too often, and makes due retries claimable.
//!
//! Every coordinator runs one, with no leader election: each reap is one atomic script per batch
//! (Redis) or one locked transition (memory), so concurrent reapers never double-handle a job —
//! a job taken by one reaper is no longer expired when the next looks.

use kontext_proto::JobQueue;
use tokio::sync::watch;

use crate::state::{AppState, now_ms};

/// Runs until shutdown begins.
pub async fn run(state: AppState) {
    let mut shutdown = state.shutdown_signal();
    let mut tick = tokio::time::interval(state.config.reap_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => reap_once(&state).await,
            _ = stopped(&mut shutdown) => return,
        }
    }
}

/// One pass; failures are logged and the next tick tries again.
pub async fn reap_once(state: &AppState) {
    state.auth_failures.prune();
    match state.queue.reap(now_ms()).await {
        Ok(report) => {
            let m = &state.metrics;
            m.requeued.inc_by(report.requeued.len() as u64);
            m.dead_lettered.inc_by(report.dead.len() as u64);
            m.promoted.inc_by(report.promoted as u64);
            for id in &report.requeued {
                tracing::warn!(job_id = %id, "lease expired: job re-queued (worker presumed dead)");
            }
            for id in &report.dead {
                tracing::error!(job_id = %id, "job dead-lettered: it crashed workers too often");
            }
            for id in &report.canceled {
                tracing::info!(job_id = %id, "lease of a canceled job expired: job canceled");
            }
        }
        Err(e) => tracing::warn!(error = %e, "reap failed; retrying next tick"),
    }
}

/// Resolves once the shutdown flag is (or becomes) true.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means shutting down.
    let _ = shutdown.wait_for(|stop| *stop).await;
}
