//! Read-only queries of the embedded queue's state: a job's events and the queue's numbers.

use super::{State, class_index};
use crate::error::QueueError;
use crate::job::{JobId, Millis, Priority};
use crate::queue::{JobEvent, QueueStats};

impl State {
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
