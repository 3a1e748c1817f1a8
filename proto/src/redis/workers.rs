//! The worker registry on Redis (docs/queue-protocol.md §Worker registry): `worker_beat.lua`
//! writes a worker's record with its TTL and indexes it by expiry; `worker_list.lua` reads the
//! records that have not expired at the caller's `now`.

use std::time::Duration;

use super::RedisQueue;
use super::reply::{array, text};
use super::scripts::SCRIPTS;
use crate::error::QueueError;
use crate::job::Millis;
use crate::policy;
use crate::workers::WorkerInfo;

impl RedisQueue {
    pub(super) async fn register_worker_impl(
        &self,
        info: &WorkerInfo,
        ttl: Duration,
        now: Millis,
    ) -> Result<(), QueueError> {
        let k = &self.keys;
        let record = serde_json::to_string(info)
            .map_err(|e| QueueError::Corrupt(format!("worker record: {e}")))?;
        let ttl_ms = policy::millis(ttl).max(1);
        let mut inv = SCRIPTS.worker_beat.prepare_invoke();
        inv.key(k.workers())
            .key(k.worker_info(&info.id))
            .arg(&info.id)
            .arg(record)
            .arg(now.saturating_add(ttl_ms))
            .arg(ttl_ms)
            .arg(now);
        self.run(&inv).await.map(|_| ())
    }

    pub(super) async fn workers_impl(&self, now: Millis) -> Result<Vec<WorkerInfo>, QueueError> {
        let mut inv = SCRIPTS.worker_list.prepare_invoke();
        inv.key(self.keys.workers())
            .arg(self.keys.prefix())
            .arg(now);
        let reply = self.run(&inv).await?;
        let mut out = array(&reply)?
            .iter()
            .map(|v| {
                let json = text(v)?;
                serde_json::from_str::<WorkerInfo>(&json)
                    .map_err(|e| QueueError::Corrupt(format!("worker record: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}
