//! Read-only queries of `RedisQueue`: a job, a tenant's list, a job's events, queue stats.
//! None of them changes state; `events` may block (on a dedicated connection).

use std::time::Duration;

use redis::Value;

use super::RedisQueue;
use super::reply::{array, at, backend, hash, int, record, text};
use super::scripts::SCRIPTS;
use crate::error::QueueError;
use crate::job::{JobId, JobRecord, Millis, Priority};
use crate::keys::{WORKER_GROUP, parse_list_member};
use crate::policy;
use crate::queue::{JobEvent, JobPage, MAX_PAGE, QueueStats};

/// Most events one `events` call returns.
const EVENTS_PER_CALL: usize = 100;

impl RedisQueue {
    pub(super) async fn read_job(&self, id: JobId) -> Result<Option<JobRecord>, QueueError> {
        let reply: Value = redis::cmd("HGETALL")
            .arg(self.keys.job(id))
            .query_async(&mut self.conn())
            .await
            .map_err(backend)?;
        let h = hash(&reply)?;
        if h.is_empty() {
            Ok(None)
        } else {
            record(&h).map(Some)
        }
    }

    pub(super) async fn list_jobs(
        &self,
        tenant: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<JobPage, QueueError> {
        let upper = match cursor {
            Some(c) => {
                parse_list_member(c)?;
                format!("({c}")
            }
            None => "+".to_owned(),
        };
        let mut inv = SCRIPTS.list.prepare_invoke();
        inv.key(self.keys.tenant_jobs(tenant))
            .arg(self.keys.prefix())
            .arg(upper)
            .arg(limit.clamp(1, MAX_PAGE));
        let reply = self.run(&inv).await?;
        let parts = array(&reply)?;
        let jobs = array(at(parts, 0)?)?
            .iter()
            .map(|h| record(&hash(h)?))
            .collect::<Result<Vec<_>, _>>()?;
        let next = text(at(parts, 1)?)?;
        Ok(JobPage {
            jobs,
            next_cursor: (!next.is_empty()).then_some(next),
        })
    }

    pub(super) async fn read_events(
        &self,
        id: JobId,
        after: Option<&str>,
        wait: Duration,
    ) -> Result<Vec<(String, JobEvent)>, QueueError> {
        let after = match after {
            Some(c) if crate::queue::is_event_cursor(c) => c.to_owned(),
            Some(c) => return Err(QueueError::InvalidCursor(c.to_owned())),
            None => "0-0".to_owned(),
        };
        let exists: bool = redis::cmd("EXISTS")
            .arg(self.keys.job(id))
            .query_async(&mut self.conn())
            .await
            .map_err(backend)?;
        if !exists {
            return Err(QueueError::NotFound(id));
        }
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(EVENTS_PER_CALL);
        if !wait.is_zero() {
            cmd.arg("BLOCK").arg(policy::millis(wait).max(1));
        }
        cmd.arg("STREAMS").arg(self.keys.events(id)).arg(after);
        let reply = if wait.is_zero() {
            cmd.query_async::<Value>(&mut self.conn())
                .await
                .map_err(backend)?
        } else {
            self.blocking_query(&cmd, wait).await?
        };
        if reply == Value::Nil {
            return Ok(Vec::new());
        }
        // [[stream key, [[entry id, [field, value, ...]], ...]]]
        let streams = array(&reply)?;
        let entries = array(at(array(at(streams, 0)?)?, 1)?)?;
        entries
            .iter()
            .map(|entry| {
                let entry = array(entry)?;
                let cursor = text(at(entry, 0)?)?;
                let fields = array(at(entry, 1)?)?;
                let json = text(at(fields, 1)?)?;
                let event: JobEvent = serde_json::from_str(&json)
                    .map_err(|e| QueueError::Corrupt(format!("event {cursor} of job {id}: {e}")))?;
                Ok((cursor, event))
            })
            .collect()
    }

    pub(super) async fn read_stats(&self, now: Millis) -> Result<QueueStats, QueueError> {
        let k = &self.keys;
        let mut inv = SCRIPTS.stats.prepare_invoke();
        for p in Priority::ORDER {
            inv.key(k.class_stream(p));
        }
        inv.key(k.delay())
            .key(k.leases())
            .key(k.dead_letters())
            .arg(WORKER_GROUP);
        let reply = self.run(&inv).await?;
        let n = |i: usize| -> Result<u64, QueueError> {
            Ok(u64::try_from(int(at(array(&reply)?, i)?)?).unwrap_or(0))
        };
        let oldest = int(at(array(&reply)?, 6)?)?;
        Ok(QueueStats {
            ready: vec![
                (Priority::High, n(0)?),
                (Priority::Standard, n(1)?),
                (Priority::Bulk, n(2)?),
            ],
            delayed: n(3)?,
            running: n(4)?,
            oldest_ready_age_ms: u64::try_from(oldest).map_or(0, |at| now.saturating_sub(at)),
            dead_letters: n(5)?,
        })
    }
}
