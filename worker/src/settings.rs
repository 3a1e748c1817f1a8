//! `WorkerSettings`: how a worker takes and keeps jobs. Its defaults are written here and only
//! here; the flags (`config::ConsumerArgs`) and every embedding program start from them.

use std::time::Duration;

/// How a worker takes and keeps jobs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Stream consumer name and the `worker` field of running jobs: stable per process.
    pub worker_id: String,
    /// A claimed job is presumed abandoned this long after the last renewal.
    pub lease_ttl: Duration,
    /// Renewal period; a third of the TTL leaves two chances before expiry.
    pub heartbeat_every: Duration,
    /// Longest blocking wait of one claim call.
    pub claim_wait: Duration,
    /// After a shutdown signal, how long the running job may still take.
    pub grace_period: Duration,
    /// Shortest time between two progress events of one job.
    pub progress_interval: Duration,
}

impl WorkerSettings {
    pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
    /// Kubernetes gives 30 s between SIGTERM and SIGKILL; 5 s are left for the release.
    pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(25);
    pub const DEFAULT_CLAIM_WAIT: Duration = Duration::from_secs(2);
    /// Two progress events per second at most (Replicate's cadence).
    pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_millis(500);

    /// The defaults: a 30 s lease renewed every 10 s, 2 s claim wait, 25 s grace, progress at
    /// most twice a second.
    pub fn new(worker_id: impl Into<String>) -> Self {
        Self::with_lease(worker_id, Self::DEFAULT_LEASE_TTL)
    }

    /// The defaults with another lease TTL (the heartbeat follows at a third of it).
    pub fn with_lease(worker_id: impl Into<String>, lease_ttl: Duration) -> Self {
        Self {
            worker_id: worker_id.into(),
            lease_ttl,
            heartbeat_every: lease_ttl / 3,
            claim_wait: Self::DEFAULT_CLAIM_WAIT,
            grace_period: Self::DEFAULT_GRACE_PERIOD,
            progress_interval: Self::DEFAULT_PROGRESS_INTERVAL,
        }
    }
}
