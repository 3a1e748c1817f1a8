//! The worker's entry in the queue's worker registry (kontext_proto::workers): a record of who
//! it is (host, device, GPU, model, version) and what it does now (job, progress, counts, cache
//! hit ratios, LoRA set, draining), written every third of its TTL while the job loop runs. A
//! worker that dies simply stops writing and drops out when the TTL passes. The queue's answer
//! carries an operator's drain request, which drains the worker as SIGTERM does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kontext_engine::EngineInfo;
use kontext_proto::clock::now_ms;
use kontext_proto::workers::WorkerInfo;
use kontext_proto::{JobQueue, Millis};

use crate::metrics::{Outcome, WorkerStatus};

/// What does not change while the worker runs.
#[derive(Debug, Clone)]
pub struct Identity {
    pub host: String,
    pub engine: EngineInfo,
    pub started_at: Millis,
}

impl Identity {
    pub fn new(engine: EngineInfo) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown".to_owned());
        Self {
            host,
            engine,
            started_at: now_ms(),
        }
    }
}

/// The record `status` describes now.
pub fn record(identity: &Identity, status: &WorkerStatus, now: Millis) -> WorkerInfo {
    let activity = status.activity();
    let m = &status.metrics;
    let failed = [Outcome::Failed, Outcome::Retrying]
        .into_iter()
        .map(|o| m.jobs(o))
        .sum();
    let caches = kontext_engine::cache::stats();
    let cache_hit_ratio: BTreeMap<String, f64> = [
        ("text", caches.text.hit_ratio()),
        ("context", caches.context.hit_ratio()),
        ("lora", caches.lora.hit_ratio()),
    ]
    .into_iter()
    .filter_map(|(name, ratio)| Some((name.to_owned(), ratio?)))
    .collect();
    let e = &identity.engine;
    WorkerInfo {
        id: status.worker_id.clone(),
        host: identity.host.clone(),
        device: e.device.clone(),
        gpu_name: e.gpu_name.clone(),
        model: e.model.clone(),
        dtype: e.dtype.clone(),
        linear_precision: e.linear_precision.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: identity.started_at,
        seen_at: now,
        current_job: activity.current_job,
        progress: activity.progress,
        jobs_succeeded: m.jobs(Outcome::Succeeded),
        jobs_failed: failed,
        cache_hit_ratio,
        lora_set: activity.lora_set,
        draining: status.is_draining(),
    }
}

/// Writes the record every `ttl / 3`, and at once when the job loop announces a change (a job
/// started or ended, draining began), until the task is aborted. A failed write is logged and
/// retried at the next beat (the record lives a whole TTL).
pub async fn beat<Q: JobQueue>(
    queue: Arc<Q>,
    status: Arc<WorkerStatus>,
    identity: Identity,
    ttl: Duration,
) {
    let every = (ttl / 3).max(Duration::from_millis(100));
    let mut changes = status.announcements();
    loop {
        let now = now_ms();
        let info = record(&identity, &status, now);
        match queue.register_worker(&info, ttl, now).await {
            Ok(beat) if beat.drain_requested && !status.is_draining() => {
                tracing::info!("an operator asked this worker to drain");
                status.request_drain();
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "worker registry heartbeat failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            // Only fails when the status (which owns the sender) is gone.
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}
