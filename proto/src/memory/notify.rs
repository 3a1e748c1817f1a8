//! Notifications of finished jobs in the embedded queue, mirroring `redis/lua/notify_*.lua`:
//! every terminal transition queues one (`queue_notification`); `take` leases due ones by moving
//! their due time to the lease end; `ack` forgets them; `retry` reschedules them.

use std::time::Duration;

use super::State;
use crate::job::{JobId, Millis};
use crate::policy;
use crate::queue::Notification;

impl State {
    /// Due at once (called from `finish`).
    pub(super) fn queue_notification(&mut self, id: JobId, now: Millis) {
        if let Some((due, _)) = self.notify_due.get(&id) {
            self.notify.remove(&(*due, id));
        }
        self.notify.insert((now, id));
        let taken = self.notify_due.get(&id).map_or(0, |(_, n)| *n);
        self.notify_due.insert(id, (now, taken));
    }

    fn reschedule(&mut self, id: JobId, at: Millis, taken: u32) {
        if let Some((due, _)) = self.notify_due.insert(id, (at, taken)) {
            self.notify.remove(&(due, id));
        }
        self.notify.insert((at, id));
    }

    pub(crate) fn take_notifications(
        &mut self,
        now: Millis,
        lease: Duration,
        limit: usize,
    ) -> Vec<Notification> {
        let due: Vec<JobId> = self
            .notify
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit.max(1))
            .map(|(_, id)| *id)
            .collect();
        let until = policy::lease_until(now, lease);
        let mut out = Vec::with_capacity(due.len());
        for id in due {
            let Some(job) = self.jobs.get(&id).map(|j| j.record.clone()) else {
                // Past retention: nothing left to notify about.
                self.ack_notifications(&[id]);
                continue;
            };
            let taken = self.notify_due.get(&id).map_or(0, |(_, n)| *n) + 1;
            self.reschedule(id, until, taken);
            out.push(Notification {
                job_id: id,
                tenant: job.tenant.clone(),
                status: job.status,
                created_at: job.created_at,
                started_at: job.started_at,
                finished_at: job.finished_at,
                webhook_url: job.spec.webhook_url.clone(),
                attempt: taken,
            });
        }
        out
    }

    pub(crate) fn ack_notifications(&mut self, ids: &[JobId]) {
        for id in ids {
            if let Some((due, _)) = self.notify_due.remove(id) {
                self.notify.remove(&(due, *id));
            }
        }
    }

    pub(crate) fn defer_notification(&mut self, id: JobId, at: Millis) {
        if let Some(&(_, taken)) = self.notify_due.get(&id) {
            self.reschedule(id, at, taken.saturating_sub(1));
        }
    }

    pub(crate) fn retry_notification(&mut self, id: JobId, at: Millis) {
        if let Some(&(_, taken)) = self.notify_due.get(&id) {
            self.reschedule(id, at, taken);
        }
    }
}
