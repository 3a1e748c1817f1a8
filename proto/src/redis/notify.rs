//! Notifications of finished jobs on Redis: `finish()` in `prelude.lua` ZADDs every job that
//! reaches a terminal state to the `notify` ZSET (score = due time); `notify_take.lua` leases due
//! entries to one taker at a time by pushing their score to the lease end, so a coordinator that
//! dies mid-delivery only delays a notification. Time is the caller's `now`, as everywhere.

use std::time::Duration;

use super::RedisQueue;
use super::reply::{array, int, text};
use super::scripts::SCRIPTS;
use crate::error::QueueError;
use crate::job::{JobId, JobStatus, Millis};
use crate::policy;
use crate::queue::Notification;

impl RedisQueue {
    pub(super) async fn take_notifications_impl(
        &self,
        now: Millis,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Notification>, QueueError> {
        let k = &self.keys;
        let mut inv = SCRIPTS.notify_take.prepare_invoke();
        inv.key(k.notify())
            .key(k.notify_attempts())
            .arg(k.prefix())
            .arg(now)
            .arg(policy::lease_until(now, lease))
            .arg(limit.max(1));
        let reply = self.run(&inv).await?;
        array(&reply)?.iter().map(notification).collect()
    }

    pub(super) async fn ack_notifications_impl(&self, ids: &[JobId]) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        let k = &self.keys;
        let mut inv = SCRIPTS.notify_ack.prepare_invoke();
        inv.key(k.notify()).key(k.notify_attempts());
        for id in ids {
            inv.arg(id.to_string());
        }
        self.run(&inv).await.map(|_| ())
    }

    /// Due again at `at`; `uncount` takes back the take that handed it out (a deferral).
    pub(super) async fn reschedule_notification(
        &self,
        id: JobId,
        at: Millis,
        uncount: bool,
    ) -> Result<(), QueueError> {
        let mut inv = SCRIPTS.notify_retry.prepare_invoke();
        inv.key(self.keys.notify())
            .key(self.keys.notify_attempts())
            .arg(id.to_string())
            .arg(at)
            .arg(u8::from(uncount));
        self.run(&inv).await.map(|_| ())
    }
}

fn notification(v: &redis::Value) -> Result<Notification, QueueError> {
    let f = array(v)?;
    let field = |i: usize| -> Result<String, QueueError> {
        f.get(i)
            .ok_or_else(|| QueueError::Corrupt(format!("notification lacks field {i}")))
            .and_then(text)
    };
    let millis = |i: usize| -> Result<Option<Millis>, QueueError> {
        let raw = field(i)?;
        if raw.is_empty() {
            return Ok(None);
        }
        raw.parse()
            .map(Some)
            .map_err(|_| QueueError::Corrupt(format!("bad time {raw:?} in a notification")))
    };
    let raw_id = field(0)?;
    let job_id = raw_id
        .parse()
        .map_err(|_| QueueError::Corrupt(format!("bad job id {raw_id:?}")))?;
    let attempt = f
        .get(1)
        .ok_or_else(|| QueueError::Corrupt("notification lacks its attempt".into()))
        .and_then(int)?;
    let raw_status = field(2)?;
    let status: JobStatus = raw_status
        .parse()
        .map_err(|_| QueueError::Corrupt(format!("bad state {raw_status:?}")))?;
    let hook = field(6)?;
    Ok(Notification {
        job_id,
        tenant: field(7)?,
        status,
        created_at: millis(3)?.unwrap_or(0),
        started_at: millis(4)?,
        finished_at: millis(5)?,
        webhook_url: (!hook.is_empty()).then_some(hook),
        attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
    })
}
