//! Conformance rule for LoRA affinity (docs/queue-protocol.md §LoRA affinity): a job whose LoRA set
//! a worker's engine last ran is offered to that worker first and to anyone after the affinity
//! delay (`QueueConfig::lora_affinity_delay`; zero turns it off); a job without LoRAs clears what
//! the worker holds.

use std::time::Duration;

use super::*;
use crate::loras::LoraSpec;
use crate::queue::{CompleteOutcome, JobQueue};

const AFFINITY_MS: Millis = 2_000;

fn lora_submission(prompt: &str, scale: f64) -> Submission {
    let mut sub = submission("acme", Priority::Standard, prompt);
    sub.spec.loras = vec![LoraSpec {
        key: key("in/acme/0123abcd.safetensors"),
        scale,
    }];
    sub
}

async fn commit<Q: JobQueue>(q: &Q, lease: &Lease, now: Millis) {
    let done = within("complete", q.complete(lease, result_for(lease), now)).await;
    assert_eq!(done.expect("complete"), CompleteOutcome::Committed);
}

async fn claim_as<Q: JobQueue>(q: &Q, worker: &str, now: Millis) -> Option<JobId> {
    within("claim", q.claim(worker, TTL, now, Duration::ZERO))
        .await
        .expect("claim should succeed")
        .map(|c| c.job.id)
}

/// The worker that committed a LoRA set gets the next job with that set first; others get it
/// after the delay (and the first offer is then void); a different scale is a different set; a
/// job without LoRAs ends the worker's claim on the set.
pub async fn lora_jobs_prefer_the_worker_holding_their_set<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    let first = submit(&q, lora_submission("first", 0.8), NOW).await;
    let (lease, job) = claim(&q, "w1", NOW).await;
    assert_eq!(job.id, first, "nobody holds the set yet: dispatched to all");
    commit(&q, &lease, NOW + 1).await;

    let second = submit(&q, lora_submission("second", 0.8), NOW + 2).await;
    assert_eq!(claim_as(&q, "w2", NOW + 3).await, None, "reserved for w1");
    let (lease, job) = claim(&q, "w1", NOW + 3).await;
    assert_eq!(job.id, second, "w1 holds the set and takes the job at once");
    commit(&q, &lease, NOW + 4).await;

    let other_scale = submit(&q, lora_submission("other scale", 0.5), NOW + 5).await;
    let (lease, job) = claim(&q, "w2", NOW + 5).await;
    assert_eq!(job.id, other_scale, "another scale is another set");
    commit(&q, &lease, NOW + 6).await;

    // w1 is busy elsewhere: after the delay anyone takes the job, and w1's offer is void.
    let t = NOW + 10;
    let third = submit(&q, lora_submission("third", 0.8), t).await;
    let r = within("reap", q.reap(t + AFFINITY_MS - 1))
        .await
        .expect("reap");
    assert_eq!(r.promoted, 0, "still reserved for w1");
    claim_none(&q, t + AFFINITY_MS - 1).await;
    let r = within("reap", q.reap(t + AFFINITY_MS)).await.expect("reap");
    assert_eq!(r.promoted, 1, "offered to everyone after the delay");
    let (lease, job) = claim(&q, "w3", t + AFFINITY_MS + 1).await;
    assert_eq!(job.id, third);
    assert_eq!(
        claim_as(&q, "w1", t + AFFINITY_MS + 2).await,
        None,
        "the first offer is void once another worker took the job"
    );
    commit(&q, &lease, t + AFFINITY_MS + 3).await;

    // w3 now holds the set; a job without LoRAs on w3 clears it, so the next LoRA job goes to
    // everyone at once.
    let t = t + AFFINITY_MS + 10;
    let plain = submit(&q, submission("acme", Priority::Standard, "plain"), t).await;
    let (lease, job) = claim(&q, "w3", t).await;
    assert_eq!(job.id, plain);
    commit(&q, &lease, t + 1).await;
    let fourth = submit(&q, lora_submission("fourth", 0.8), t + 2).await;
    let (_, job) = claim(&q, "w4", t + 2).await;
    assert_eq!(job.id, fourth, "no worker holds the set any more");

    // A delay of zero turns LoRA affinity off.
    let off = QueueConfig {
        lora_affinity_delay: Duration::ZERO,
        ..config()
    };
    let q = fresh(&make, off).await;
    submit(&q, lora_submission("first", 0.8), NOW).await;
    let (lease, _) = claim(&q, "w1", NOW).await;
    commit(&q, &lease, NOW + 1).await;
    let second = submit(&q, lora_submission("second", 0.8), NOW + 2).await;
    let (_, job) = claim(&q, "w2", NOW + 2).await;
    assert_eq!(job.id, second, "without affinity anyone takes it at once");
}
