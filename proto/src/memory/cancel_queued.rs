//! Cancelling a tenant's queued jobs in the embedded queue, mirroring `cancel_queued.lua`
//! (docs/queue-protocol.md §Admin actions): newest first, bounded per call, each as `cancel`
//! does it (a turn of a running chain cancels its chain, as `cancel_chain` does), running jobs
//! left alone. The caller audits what it returns.

use std::ops::Bound;

use super::State;
use crate::admin_jobs::{CANCEL_SCAN, CancelQueuedOutcome, MAX_CANCEL};
use crate::error::QueueError;
use crate::job::{JobStatus, Millis};
use crate::keys::parse_list_member;

impl State {
    pub(crate) fn cancel_queued(
        &mut self,
        tenant: &str,
        cursor: Option<&str>,
        now: Millis,
    ) -> Result<CancelQueuedOutcome, QueueError> {
        if let Some(c) = cursor {
            parse_list_member(c)?;
        }
        let upper = cursor.map_or(Bound::Unbounded, |c| Bound::Excluded(c.to_owned()));
        let members: Vec<String> = self
            .tenant_jobs
            .get(tenant)
            .map(|set| {
                set.range::<String, _>((Bound::Unbounded, upper))
                    .rev()
                    .take(CANCEL_SCAN)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut out = CancelQueuedOutcome {
            canceled: Vec::new(),
            running: 0,
            next_cursor: None,
        };
        let mut last = None;
        for (i, member) in members.iter().enumerate() {
            last = Some(i);
            let id = parse_list_member(member)?;
            match self.get(id).map(|j| j.status) {
                Some(JobStatus::Running) => out.running += 1,
                Some(JobStatus::Queued) => {
                    match self.running_chain_of(id) {
                        Some(chain) => self.cancel_chain(chain, now),
                        None => self.cancel(id, now),
                    };
                    out.canceled.push(id);
                    if out.canceled.len() >= MAX_CANCEL {
                        break;
                    }
                }
                _ => {}
            }
        }
        let exhausted = members.len() < CANCEL_SCAN;
        out.next_cursor = last
            .filter(|&i| !(exhausted && i + 1 == members.len()))
            .map(|i| members[i].clone());
        Ok(out)
    }
}
