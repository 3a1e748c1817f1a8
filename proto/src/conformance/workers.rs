//! Conformance rule for the worker registry (docs/queue-protocol.md §Worker registry): a record
//! is listed, replaced by the worker's next heartbeat, and gone once its TTL has passed.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::workers::{AuditEntry, Beat, DrainOutcome, WorkerInfo};

/// A registry record of worker `id` written at `seen_at`.
pub fn worker_info(id: &str, seen_at: Millis) -> WorkerInfo {
    WorkerInfo {
        id: id.into(),
        host: "host-1".into(),
        device: "cpu".into(),
        gpu_name: None,
        model: "tiny".into(),
        dtype: "f32".into(),
        linear_precision: "native".into(),
        version: "0.1.0".into(),
        started_at: NOW,
        seen_at,
        current_job: None,
        progress: None,
        jobs_succeeded: 0,
        jobs_failed: 0,
        cache_hit_ratio: BTreeMap::new(),
        lora_set: None,
        draining: false,
    }
}

async fn listed<Q: JobQueue>(q: &Q, now: Millis) -> Vec<WorkerInfo> {
    within("workers", q.workers(now)).await.expect("workers")
}

async fn beat<Q: JobQueue>(q: &Q, w: &WorkerInfo, ttl: Duration, now: Millis) -> Beat {
    within("register_worker", q.register_worker(w, ttl, now))
        .await
        .expect("register_worker")
}

pub async fn registered_workers_are_listed_until_their_ttl_passes<Q: JobQueue>(
    make: impl MakeQueue<Q>,
) {
    let q = fresh(&make, config()).await;
    assert!(listed(&q, NOW).await.is_empty());
    let a = worker_info("w-a", NOW);
    let b = worker_info("w-b", NOW + 1);
    beat(&q, &a, Duration::from_secs(30), NOW).await;
    beat(&q, &b, Duration::from_secs(10), NOW + 1).await;
    assert_eq!(listed(&q, NOW + 2).await, vec![a.clone(), b.clone()]);

    // The next heartbeat replaces the record and pushes its expiry.
    let mut busy = worker_info("w-a", NOW + 5);
    busy.current_job = Some(JobId::new());
    busy.progress = Some(0.25);
    busy.jobs_succeeded = 3;
    busy.cache_hit_ratio.insert("text".into(), 0.5);
    busy.lora_set = Some("0123abcd".into());
    busy.draining = true;
    beat(&q, &busy, Duration::from_secs(30), NOW + 5).await;
    assert_eq!(listed(&q, NOW + 6).await, vec![busy.clone(), b.clone()]);

    // b stopped heartbeating: gone once its TTL has passed; a's record lives to its own.
    assert_eq!(listed(&q, NOW + 1 + 10_000).await, vec![busy.clone()]);
    assert!(listed(&q, NOW + 5 + 30_000).await.is_empty());
}

/// An operator's drain request reaches a live worker at its next heartbeat and is audited; an
/// unknown or expired worker cannot be drained.
pub async fn drain_requests_reach_live_workers_and_are_audited<Q: JobQueue>(
    make: impl MakeQueue<Q>,
) {
    let q = fresh(&make, config()).await;
    let ttl = Duration::from_secs(30);
    let a = worker_info("w-a", NOW);
    assert_eq!(beat(&q, &a, ttl, NOW).await, Beat::default());
    let drain = |worker: &'static str, now: Millis| {
        let q = &q;
        async move {
            within(
                "request_drain",
                q.request_drain(worker, "key:0123456789ab", now),
            )
            .await
            .expect("request_drain")
        }
    };
    assert_eq!(drain("w-x", NOW + 1).await, DrainOutcome::NotFound);
    let audit = within("audit_log", q.audit_log(10)).await.expect("audit");
    assert!(audit.is_empty(), "{audit:?}");
    assert_eq!(drain("w-a", NOW + 1).await, DrainOutcome::Requested);
    let seen = beat(&q, &worker_info("w-a", NOW + 2), ttl, NOW + 2).await;
    assert!(
        seen.drain_requested,
        "the next heartbeat carries the request"
    );
    let audit = within("audit_log", q.audit_log(10)).await.expect("audit");
    assert_eq!(
        audit,
        vec![AuditEntry {
            at: NOW + 1,
            action: "drain_worker".into(),
            target: "w-a".into(),
            actor: "key:0123456789ab".into(),
        }]
    );
    assert_eq!(drain("w-a", NOW + 2 + 30_000).await, DrainOutcome::NotFound);
}
