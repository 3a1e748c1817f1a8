//! Conformance rule for operators' job views (docs/queue-protocol.md §Admin job views): every
//! created job — submitted, a chain's turn, a re-queued dead letter — is in the global index;
//! pages come newest first across tenants, filtered by status, tenant and creation time; each
//! call examines at most `scan_budget(limit)` index members, so a rare status comes back over
//! several short pages joined by cursors.

use super::chains::chain_submission;
use super::*;
use crate::admin_jobs::{AdminJobPage, JobFilter, SCAN_FACTOR};
use crate::chain::FailurePolicy;
use crate::error::QueueError;
use crate::job::Carry;
use crate::queue::CompleteOutcome;

async fn page<Q: JobQueue>(
    q: &Q,
    filter: &JobFilter,
    cursor: Option<&str>,
    limit: usize,
) -> AdminJobPage {
    within("admin_jobs", q.admin_jobs(filter, cursor, limit))
        .await
        .expect("admin_jobs should succeed")
}

/// Every matching job, following cursors; also the number of pages it took.
async fn all_pages<Q: JobQueue>(q: &Q, filter: &JobFilter, limit: usize) -> (Vec<JobId>, usize) {
    let (mut ids, mut pages, mut cursor) = (Vec::new(), 0, None::<String>);
    loop {
        let p = page(q, filter, cursor.as_deref(), limit).await;
        pages += 1;
        assert!(
            p.jobs.len() <= limit,
            "{} jobs on a page of {limit}",
            p.jobs.len()
        );
        ids.extend(p.jobs.iter().map(|j| j.id));
        match p.next_cursor {
            Some(c) => cursor = Some(c),
            None => return (ids, pages),
        }
        assert!(pages < 100, "cursors never end");
    }
}

pub async fn admin_job_pages_filter_across_tenants_within_a_scan_budget<Q: JobQueue>(
    make: impl MakeQueue<Q>,
) {
    let q = fresh(&make, config()).await;
    // Twelve jobs, alternating tenants, one ms apart; the oldest one succeeds.
    let mut created = Vec::new();
    for i in 0..12u64 {
        let tenant = if i % 2 == 0 { "acme" } else { "beta" };
        let sub = submission(tenant, Priority::Standard, &format!("job {i}"));
        created.push(submit(&q, sub, NOW + i).await);
    }
    let (lease, job) = claim(&q, "w", NOW + 20).await;
    assert_eq!(job.id, created[0]);
    let done = within("complete", q.complete(&lease, result_for(&lease), NOW + 21)).await;
    assert_eq!(done.expect("complete"), CompleteOutcome::Committed);
    let newest_first: Vec<JobId> = created.iter().rev().copied().collect();

    // Everything, newest first, over pages of 5.
    let any = JobFilter::default();
    let first = page(&q, &any, None, 5).await;
    let ids: Vec<JobId> = first.jobs.iter().map(|j| j.id).collect();
    assert_eq!(ids, newest_first[..5]);
    assert!(first.next_cursor.is_some());
    assert_eq!(all_pages(&q, &any, 5).await.0, newest_first);

    // One tenant; a time window (both ends inclusive).
    let beta = JobFilter {
        tenant: Some("beta".into()),
        ..JobFilter::default()
    };
    let expected: Vec<JobId> = newest_first.iter().copied().step_by(2).collect();
    assert_eq!(all_pages(&q, &beta, 4).await.0, expected);
    let window = JobFilter {
        from: Some(NOW + 3),
        to: Some(NOW + 5),
        ..JobFilter::default()
    };
    assert_eq!(
        all_pages(&q, &window, 10).await.0,
        vec![created[5], created[4], created[3]]
    );

    // A status held by the oldest job only: a page of 1 examines SCAN_FACTOR members, so the
    // first pages come back empty, each with a cursor, until the scan reaches it.
    let succeeded = JobFilter {
        status: Some(JobStatus::Succeeded),
        ..JobFilter::default()
    };
    let empty = page(&q, &succeeded, None, 1).await;
    assert!(empty.jobs.is_empty(), "{:?}", empty.jobs);
    assert!(
        empty.next_cursor.is_some(),
        "a budget-bound page has a cursor"
    );
    let (ids, pages) = all_pages(&q, &succeeded, 1).await;
    assert_eq!(ids, vec![created[0]]);
    assert_eq!(pages, 12usize.div_ceil(SCAN_FACTOR));
    let queued = JobFilter {
        status: Some(JobStatus::Queued),
        tenant: Some("acme".into()),
        ..JobFilter::default()
    };
    let expected: Vec<JobId> = newest_first
        .iter()
        .copied()
        .skip(1)
        .step_by(2)
        .take(5)
        .collect();
    assert_eq!(all_pages(&q, &queued, 200).await.0, expected);

    // A chain's turn is indexed when it is created.
    let chain = chain_submission(1, None, Carry::Image, FailurePolicy::Stop);
    within("create_chain", q.create_chain(chain.clone(), NOW + 30))
        .await
        .expect("create_chain");
    let newest = page(&q, &any, None, 1).await;
    assert_eq!(newest.jobs[0].id, chain.turns[0].job_id);
    assert_eq!(newest.jobs[0].tenant, "acme");

    let bad = q.admin_jobs(&any, Some("not a cursor"), 5).await;
    assert!(matches!(bad, Err(QueueError::InvalidCursor(_))), "{bad:?}");
}
