//! Conformance rule for usage metering (`crate::usage`): a succeeded job counts its engine time,
//! one image and its steps for its tenant on the day of its commit, once, however often the
//! commit is repeated; a failed job counts nothing.

use super::*;
use crate::error::JobError;
use crate::queue::CompleteOutcome;
use crate::usage::{DAY_MS, UsageRow, day_name, day_of};
use crate::{JobErrorKind, Priority};

async fn run_one<Q: JobQueue>(q: &Q, tenant: &str, now: Millis, succeed: bool) {
    submit(q, submission(tenant, Priority::Standard, "usage"), now).await;
    let (lease, _) = claim(q, "w", now).await;
    if succeed {
        let r = within("complete", q.complete(&lease, result_for(&lease), now + 1)).await;
        assert_eq!(r.expect("complete"), CompleteOutcome::Committed);
        // A redelivered commit of the same attempt counts nothing more.
        let again = within("complete", q.complete(&lease, result_for(&lease), now + 2)).await;
        assert_eq!(again.expect("complete"), CompleteOutcome::AlreadyDone);
    } else {
        let err = JobError::new(JobErrorKind::InvalidInput, "bad input");
        within("fail", q.fail(&lease, err, now + 1))
            .await
            .expect("fail");
    }
}

pub async fn usage_counts_each_succeeded_job_once<Q: JobQueue>(make: impl MakeQueue<Q>) {
    let q = fresh(&make, config()).await;
    let today = day_of(NOW);
    run_one(&q, "acme", NOW, true).await;
    run_one(&q, "acme", NOW + 10, true).await;
    run_one(&q, "beta", NOW + 20, false).await;
    run_one(&q, "beta", NOW + DAY_MS, true).await;
    let row = |day: u32, tenant: &str, n: u64| UsageRow {
        day: day_name(day),
        tenant: tenant.into(),
        engine_ms: 5 * n,
        images: n,
        steps: 4 * n,
    };
    let both = within("usage", q.usage(today, today + 1))
        .await
        .expect("usage");
    assert_eq!(both, vec![row(today, "acme", 2), row(today + 1, "beta", 1)]);
    let first = within("usage", q.usage(today, today)).await.expect("usage");
    assert_eq!(first, vec![row(today, "acme", 2)]);
    assert!(within("usage", q.usage(today + 1, today)).await.is_err());
}
