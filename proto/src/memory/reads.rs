//! Read-only queries of the embedded queue's state: a tenant's list, jobs across tenants
//! (mirrors `admin_jobs.lua`), a job's events and the queue's numbers.

use std::collections::BTreeSet;
use std::ops::Bound;

use super::{State, class_index};
use crate::admin_jobs::{AdminJobPage, JobFilter, clamp_admin_page, scan_budget, scan_range};
use crate::error::QueueError;
use crate::job::{JobId, Millis, Priority};
use crate::keys::parse_list_member;
use crate::queue::{JobEvent, JobPage, QueueStats};

impl State {
    /// One page of a tenant's jobs, newest first (list.lua).
    pub(crate) fn list(
        &self,
        tenant: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<JobPage, QueueError> {
        let empty = BTreeSet::new();
        let members = self.tenant_jobs.get(tenant).unwrap_or(&empty);
        let below: Box<dyn Iterator<Item = &String>> = match cursor {
            Some(c) => {
                parse_list_member(c)?;
                Box::new(
                    members
                        .range::<str, _>((Bound::Unbounded, Bound::Excluded(c)))
                        .rev(),
                )
            }
            None => Box::new(members.iter().rev()),
        };
        let limit = clamp_page(limit);
        let page: Vec<&String> = below.take(limit + 1).collect();
        let next_cursor = (page.len() > limit).then(|| page[limit - 1].clone());
        let mut jobs = Vec::new();
        for member in page.into_iter().take(limit) {
            let id = parse_list_member(member)?;
            if let Some(job) = self.jobs.get(&id) {
                jobs.push(job.record.clone());
            }
        }
        Ok(JobPage { jobs, next_cursor })
    }

    /// One page of jobs across tenants (admin_jobs.lua): newest first, at most
    /// `scan_budget(limit)` index members examined.
    pub(crate) fn admin_jobs(
        &self,
        filter: &JobFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<AdminJobPage, QueueError> {
        let range = scan_range(filter, cursor)?;
        let (limit, budget) = (clamp_admin_page(limit), scan_budget(limit));
        let empty = BTreeSet::new();
        let index = match &filter.tenant {
            Some(t) => self.tenant_jobs.get(t).unwrap_or(&empty),
            None => &self.all_jobs,
        };
        let lower = range.at_least.map_or(Bound::Unbounded, Bound::Included);
        let upper = range.below.map_or(Bound::Unbounded, Bound::Excluded);
        let members: Vec<&String> = index
            .range::<String, _>((lower, upper))
            .rev()
            .take(budget)
            .collect();
        let mut jobs = Vec::new();
        let mut last = None;
        for (i, member) in members.iter().enumerate() {
            last = Some(i);
            let Some(job) = self.jobs.get(&parse_list_member(member)?) else {
                continue;
            };
            if filter.status.is_none_or(|s| s == job.record.status) {
                jobs.push(job.record.clone());
                if jobs.len() >= limit {
                    break;
                }
            }
        }
        let exhausted = members.len() < budget;
        let next_cursor = last
            .filter(|&i| !(exhausted && i + 1 == members.len()))
            .map(|i| members[i].clone());
        Ok(AdminJobPage { jobs, next_cursor })
    }

    /// Events after `after` (a cursor from an earlier call), at most `limit`.
    pub(crate) fn events(
        &self,
        id: JobId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, JobEvent)>, QueueError> {
        let job = self.jobs.get(&id).ok_or(QueueError::NotFound(id))?;
        let after: u64 = match after {
            Some(c) if crate::queue::is_event_cursor(c) => c
                .split('-')
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| QueueError::InvalidCursor(c.to_owned()))?,
            Some(c) => return Err(QueueError::InvalidCursor(c.to_owned())),
            None => 0,
        };
        Ok(job
            .events
            .iter()
            .filter(|(seq, _)| *seq > after)
            .take(limit)
            .map(|(seq, ev)| (seq.to_string(), ev.clone()))
            .collect())
    }

    pub(crate) fn stats(&self, now: Millis) -> QueueStats {
        let ready = Priority::ORDER
            .iter()
            .map(|&p| (p, self.streams[class_index(p)].len() as u64))
            .collect();
        let oldest = self
            .streams
            .iter()
            .filter_map(|s| s.front().map(|e| e.at))
            .min();
        QueueStats {
            ready,
            delayed: self.delay.len() as u64,
            running: self.leases.len() as u64,
            oldest_ready_age_ms: oldest.map_or(0, |at| now.saturating_sub(at)),
            dead_letters: self.dead_letters.len() as u64,
        }
    }
}

/// Page sizes are clamped to `1..=MAX_PAGE`.
pub(crate) fn clamp_page(limit: usize) -> usize {
    limit.clamp(1, crate::queue::MAX_PAGE)
}
