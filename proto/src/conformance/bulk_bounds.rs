//! Conformance rule for the bounds of operators' bulk dead-letter actions
//! (docs/queue-protocol.md §Admin actions): one call examines at most `BULK_SCAN` entries and
//! acts on at most `MAX_BULK`, and hands back a cursor from which the next call continues, so a
//! filter that matches little, or a dead-letter list of any length, never makes one call (one
//! Lua script) unbounded — and following the cursors still reaches every entry once.

use super::*;
use crate::dead_letters::{BULK_SCAN, BulkAction, BulkOutcome, DeadFilter, MAX_BULK};
use crate::policy::MAX_CRASHES;

const TTL_MS: Millis = TTL.as_millis() as u64;
const ACTOR: &str = "key:b0a7d5b0a7d5";

/// `n` jobs of `tenant`, dead-lettered together: submitted, then `MAX_CRASHES` rounds of
/// claiming all and letting every lease expire. Returns them and the time after.
async fn dead_letters_of<Q: JobQueue>(
    q: &Q,
    tenant: &str,
    n: usize,
    start: Millis,
) -> (Vec<JobId>, Millis) {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(submit(q, submission(tenant, Priority::Bulk, "doomed"), start).await);
    }
    let mut t = start;
    for round in 1..=MAX_CRASHES {
        for _ in 0..n {
            claim(q, &format!("victim{round}"), t).await;
        }
        t += TTL_MS;
        // One reap handles a bounded batch of expired leases: reap until all are handled.
        let mut handled = 0;
        while handled < n {
            let report = within("reap", q.reap(t)).await.expect("reap");
            let now_handled = report.requeued.len() + report.dead.len();
            assert!(now_handled > 0, "{} leases left unreaped", n - handled);
            handled += now_handled;
        }
    }
    (ids, t)
}

async fn bulk_call<Q: JobQueue>(
    q: &Q,
    action: BulkAction,
    filter: &DeadFilter,
    cursor: Option<&str>,
    now: Millis,
) -> BulkOutcome {
    within("bulk_dead", q.bulk_dead(action, filter, cursor, ACTOR, now))
        .await
        .expect("bulk_dead")
}

pub async fn bulk_dead_letter_calls_are_bounded_and_continue_by_cursor<Q: JobQueue>(
    make: impl MakeQueue<Q>,
) {
    let q = fresh(&make, config()).await;
    let (mut others, t) = dead_letters_of(&q, "other", BULK_SCAN, NOW).await;
    let (acme, t) = dead_letters_of(&q, "acme", 1, t).await;

    // A filter matching only the newest entry: the first call spends its whole scan budget on
    // other tenants' entries, acts on none and says where to go on; the next call finds it.
    let only_acme = DeadFilter {
        tenant: Some("acme".into()),
        ..DeadFilter::default()
    };
    let first = bulk_call(&q, BulkAction::Requeue, &only_acme, None, t).await;
    assert!(first.affected.is_empty(), "{:?}", first.affected);
    let cursor = first
        .next_cursor
        .expect("a call that used up its scan budget hands back a cursor");
    let second = bulk_call(&q, BulkAction::Requeue, &only_acme, Some(&cursor), t + 1).await;
    assert_eq!(second.affected.len(), 1, "{second:?}");
    assert_eq!(second.affected[0].0, acme[0]);
    assert_eq!(second.next_cursor, None, "nothing after acme's entry");

    // Everything left, dismissed: at most MAX_BULK per call, following the cursors, each once.
    let mut dismissed = Vec::new();
    let mut cursor: Option<String> = None;
    let mut calls = 0;
    loop {
        let out = bulk_call(
            &q,
            BulkAction::Dismiss,
            &DeadFilter::default(),
            cursor.as_deref(),
            t + 2 + calls,
        )
        .await;
        calls += 1;
        assert!(out.affected.len() <= MAX_BULK, "{}", out.affected.len());
        if calls == 1 {
            assert_eq!(
                out.affected.len(),
                MAX_BULK,
                "a long list fills the first call"
            );
        }
        dismissed.extend(out.affected.iter().map(|(id, new)| {
            assert_eq!(*new, None, "a dismissal re-queues nothing");
            *id
        }));
        match out.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(
            calls <= 6,
            "{BULK_SCAN} entries take at most 6 calls of {MAX_BULK}"
        );
    }
    dismissed.sort_unstable();
    others.sort_unstable();
    assert_eq!(dismissed.len(), BULK_SCAN, "each once");
    assert_eq!(dismissed, others);
    let left = within("dead_letters", q.dead_letters(10)).await;
    assert!(left.expect("dead_letters").is_empty());
    let audit = within("audit_log", q.audit_log(1000)).await.expect("audit");
    assert_eq!(
        audit.len(),
        1000,
        "one entry per dismissal (the newest 1000 read)"
    );
    assert!(
        audit.iter().all(|e| e.actor == ACTOR),
        "every entry says who"
    );
}
