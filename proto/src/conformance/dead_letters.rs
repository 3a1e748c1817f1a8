//! Conformance rule for dead letters (docs/queue-protocol.md §Admin actions): listed newest
//! first, re-queued as a new job with the dead one's tenant, spec and priority (the dead job
//! stays dead), dismissed; each once, each audited.

use super::*;
use crate::admin_jobs::JobFilter;
use crate::dead_letters::{DismissOutcome, RequeueOutcome};
use crate::policy::MAX_CRASHES;

const TTL_MS: Millis = TTL.as_millis() as u64;

/// Submits a job and lets it crash `MAX_CRASHES` times; returns it and the time after.
async fn poison<Q: JobQueue>(q: &Q, prompt: &str, start: Millis) -> (JobId, Millis) {
    poison_of(q, "acme", prompt, start).await
}

/// `poison` for `tenant`.
pub(super) async fn poison_of<Q: JobQueue>(
    q: &Q,
    tenant: &str,
    prompt: &str,
    start: Millis,
) -> (JobId, Millis) {
    let id = submit(q, submission(tenant, Priority::High, prompt), start).await;
    let t = crash_until_dead(q, id, start).await;
    (id, t)
}

/// Claims job `id` (the next claimable one) and lets its lease expire until it is dead; the time
/// after. The end-to-end tests make their dead letters with it too.
pub async fn crash_until_dead<Q: JobQueue>(q: &Q, id: JobId, start: Millis) -> Millis {
    let mut t = start;
    for crash in 1..=MAX_CRASHES {
        let (_, job) = claim(q, &format!("victim{crash}"), t).await;
        assert_eq!(job.id, id);
        t += TTL_MS;
        within("reap", q.reap(t)).await.expect("reap");
    }
    assert_eq!(record(q, id).await.status, JobStatus::Dead);
    t
}

pub async fn dead_letters_are_listed_requeued_and_dismissed_once<Q: JobQueue>(
    make: impl MakeQueue<Q>,
) {
    let q = fresh(&make, config()).await;
    let (first, t) = poison(&q, "first", NOW).await;
    let (second, t) = poison(&q, "second", t).await;
    let listed = within("dead_letters", q.dead_letters(10))
        .await
        .expect("dead_letters");
    let ids: Vec<JobId> = listed.iter().map(|d| d.job_id).collect();
    assert_eq!(ids, vec![second, first], "newest first");
    assert_eq!(listed[0].crashes, MAX_CRASHES);

    // Re-queue: a new job, same tenant, spec and priority, claimable at once; the dead one
    // stays dead and leaves the list.
    let new_id = JobId::new();
    let out = within(
        "requeue_dead",
        q.requeue_dead(first, new_id, "key:aaaaaaaaaaaa", t),
    )
    .await
    .expect("requeue_dead");
    assert_eq!(out, RequeueOutcome::Requeued(new_id));
    let again = within(
        "requeue_dead",
        q.requeue_dead(first, JobId::new(), "key:aaaaaaaaaaaa", t),
    )
    .await
    .expect("requeue_dead");
    assert_eq!(again, RequeueOutcome::NotFound, "once");
    let (old, new) = (record(&q, first).await, record(&q, new_id).await);
    assert_eq!(old.status, JobStatus::Dead);
    assert_eq!(new.status, JobStatus::Queued);
    assert_eq!((new.tenant, new.spec.clone()), (old.tenant, old.spec));
    let newest = within("admin_jobs", q.admin_jobs(&JobFilter::default(), None, 1))
        .await
        .expect("admin_jobs");
    assert_eq!(
        newest.jobs[0].id, new_id,
        "a re-queued job is indexed for operators"
    );
    let (_, claimed) = claim(&q, "healthy", t + 1).await;
    assert_eq!(claimed.id, new_id);

    // Dismiss: gone from the list, once.
    let out = within(
        "dismiss_dead",
        q.dismiss_dead(second, "console open", t + 2),
    )
    .await
    .expect("dismiss_dead");
    assert_eq!(out, DismissOutcome::Dismissed);
    let out = within(
        "dismiss_dead",
        q.dismiss_dead(second, "console open", t + 3),
    )
    .await
    .expect("dismiss_dead");
    assert_eq!(out, DismissOutcome::NotFound);
    let listed = within("dead_letters", q.dead_letters(10))
        .await
        .expect("dead_letters");
    assert!(listed.is_empty(), "{listed:?}");
    let unknown = within(
        "requeue_dead",
        q.requeue_dead(JobId::new(), JobId::new(), "open", t),
    )
    .await
    .expect("requeue_dead");
    assert_eq!(unknown, RequeueOutcome::NotFound);

    let audit = within("audit_log", q.audit_log(10)).await.expect("audit");
    let actions: Vec<(&str, String, &str)> = audit
        .iter()
        .map(|e| (e.action.as_str(), e.target.clone(), e.actor.as_str()))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("dismiss_dead", second.to_string(), "console open"),
            (
                "requeue_dead",
                format!("{first} -> {new_id}"),
                "key:aaaaaaaaaaaa"
            ),
        ],
        "only actions that acted are audited, each with who did it"
    );
}
