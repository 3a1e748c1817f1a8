//! Jobs across tenants for operators (docs/queue-protocol.md §Admin job views): one page of
//! jobs, newest first, filtered by status, tenant and creation time. The scan walks a list index
//! (the global `jobs` index, or the tenant's own when one tenant is asked for) and examines at
//! most `scan_budget(limit)` members per call, so an operator's page never makes the queue walk
//! its whole history: a page may come back short, with a cursor to continue from.
//!
//! The bounds and the budget are computed here, once, for both queue implementations.

use crate::error::QueueError;
use crate::job::{JobRecord, JobStatus, Millis, TenantId};
use crate::keys::{list_member_cutoff, parse_list_member};

/// Largest page of `JobQueue::admin_jobs`; larger limits (and 0, taken as 1) are clamped.
pub const MAX_ADMIN_PAGE: usize = 200;
/// Index members one call may examine per job it may return.
pub const SCAN_FACTOR: usize = 5;

/// Which jobs an operator asks for; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub tenant: Option<TenantId>,
    /// Created at or after (ms since the epoch).
    pub from: Option<Millis>,
    /// Created at or before (ms since the epoch).
    pub to: Option<Millis>,
}

/// One page of `JobQueue::admin_jobs`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminJobPage {
    /// Matching jobs, newest first (possibly fewer than asked: see the module docs).
    pub jobs: Vec<JobRecord>,
    /// The last index member examined, to pass back; `None` when the range is exhausted.
    pub next_cursor: Option<String>,
}

/// The lexical range of one scan of a list index (members are `keys::list_member`s): strictly
/// below `below`, at or above `at_least`; `None` is unbounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanRange {
    pub below: Option<String>,
    pub at_least: Option<String>,
}

/// Most queued jobs one `JobQueue::cancel_queued` call cancels.
pub const MAX_CANCEL: usize = 500;
/// Most list members one `cancel_queued` call examines.
pub const CANCEL_SCAN: usize = 5 * MAX_CANCEL;

/// What one `JobQueue::cancel_queued` call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelQueuedOutcome {
    /// The queued jobs it canceled, newest first.
    pub canceled: Vec<crate::job::JobId>,
    /// Running jobs it met and left alone (a running job is canceled one by one, at its step).
    pub running: u64,
    /// The last list member examined, when more may be queued below it: pass it back.
    pub next_cursor: Option<String>,
}

/// Page size actually used for `limit`.
pub fn clamp_admin_page(limit: usize) -> usize {
    limit.clamp(1, MAX_ADMIN_PAGE)
}

/// Most index members one call with `limit` examines.
pub fn scan_budget(limit: usize) -> usize {
    clamp_admin_page(limit) * SCAN_FACTOR
}

/// The range to scan for `filter`, continuing below `cursor` (a `next_cursor` of an earlier
/// page). A cursor that is no list member is `QueueError::InvalidCursor`.
pub fn scan_range(filter: &JobFilter, cursor: Option<&str>) -> Result<ScanRange, QueueError> {
    if let Some(c) = cursor {
        parse_list_member(c)?;
    }
    // Members created at `to` or before sort below the cutoff of `to + 1`.
    let to_bound = filter.to.map(|to| list_member_cutoff(to.saturating_add(1)));
    let below = match (cursor.map(str::to_owned), to_bound) {
        (Some(c), Some(t)) => Some(c.min(t)),
        (c, t) => c.or(t),
    };
    Ok(ScanRange {
        below,
        at_least: filter.from.map(list_member_cutoff),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobId;
    use crate::keys::list_member;

    #[test]
    fn the_tighter_of_cursor_and_to_bounds_the_scan() {
        let id = JobId::new();
        let cursor = list_member(1_000, id);
        let f = JobFilter {
            to: Some(5_000),
            from: Some(10),
            ..JobFilter::default()
        };
        let r = scan_range(&f, Some(&cursor)).expect("range");
        assert_eq!(r.below.as_deref(), Some(cursor.as_str()));
        assert_eq!(r.at_least, Some(list_member_cutoff(10)));
        let f = JobFilter {
            to: Some(500),
            ..JobFilter::default()
        };
        let r = scan_range(&f, Some(&cursor)).expect("range");
        assert_eq!(r.below, Some(list_member_cutoff(501)));
        // A job created exactly at `to` is inside the range.
        assert!(list_member(500, id) < list_member_cutoff(501));
        assert_eq!(
            scan_range(&JobFilter::default(), None).expect("range"),
            ScanRange {
                below: None,
                at_least: None
            }
        );
    }

    #[test]
    fn bad_cursors_and_extreme_limits() {
        assert!(matches!(
            scan_range(&JobFilter::default(), Some("nope")),
            Err(QueueError::InvalidCursor(_))
        ));
        let f = JobFilter {
            to: Some(Millis::MAX),
            ..JobFilter::default()
        };
        assert!(scan_range(&f, None).is_ok());
        assert_eq!(scan_budget(0), SCAN_FACTOR);
        assert_eq!(scan_budget(10_000), MAX_ADMIN_PAGE * SCAN_FACTOR);
    }
}
