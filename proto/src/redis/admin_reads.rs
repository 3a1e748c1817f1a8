//! The operators' views of jobs on Redis (docs/queue-protocol.md §Admin job views):
//! `admin_jobs.lua` pages through the global list index `jobs` (or a tenant's own) newest first,
//! examining a bounded number of members per call (`crate::admin_jobs`); `job_history.lua`
//! reads a job and its history list (`crate::job_history`) in one step; `throughput_read.lua`
//! the per-minute counts `complete.lua` and `fail.lua` keep (`crate::throughput`).

use super::RedisQueue;
use super::reply::{array, at, hash, record, text};
use super::scripts::SCRIPTS;
use crate::admin_jobs::{AdminJobPage, JobFilter, clamp_admin_page, scan_budget, scan_range};
use crate::error::QueueError;
use crate::job::JobId;
use crate::job::Millis;
use crate::job_history::{HISTORY_MAXLEN, HistoryEntry, JobHistory};
use crate::throughput::{LATENCY_BUCKETS, MinuteCounts, window};

impl RedisQueue {
    pub(super) async fn admin_jobs_impl(
        &self,
        filter: &JobFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<AdminJobPage, QueueError> {
        let k = &self.keys;
        let range = scan_range(filter, cursor)?;
        let index = match &filter.tenant {
            Some(t) => k.tenant_jobs(t),
            None => k.all_jobs(),
        };
        let mut inv = SCRIPTS.admin_jobs.prepare_invoke();
        inv.key(index)
            .arg(k.prefix())
            .arg(
                range
                    .below
                    .map_or_else(|| "+".to_owned(), |m| format!("({m}")),
            )
            .arg(
                range
                    .at_least
                    .map_or_else(|| "-".to_owned(), |m| format!("[{m}")),
            )
            .arg(clamp_admin_page(limit))
            .arg(scan_budget(limit))
            .arg(filter.status.map_or("", |s| s.as_str()));
        let reply = self.run(&inv).await?;
        let parts = array(&reply)?;
        let jobs = array(at(parts, 0)?)?
            .iter()
            .map(|h| record(&hash(h)?))
            .collect::<Result<Vec<_>, _>>()?;
        let next = text(at(parts, 1)?)?;
        Ok(AdminJobPage {
            jobs,
            next_cursor: (!next.is_empty()).then_some(next),
        })
    }

    pub(super) async fn job_history_impl(
        &self,
        id: JobId,
    ) -> Result<Option<JobHistory>, QueueError> {
        let k = &self.keys;
        let mut inv = SCRIPTS.job_history.prepare_invoke();
        inv.key(k.job(id)).key(k.history(id)).arg(HISTORY_MAXLEN);
        let reply = self.run(&inv).await?;
        let parts = array(&reply)?;
        let h = hash(at(parts, 0)?)?;
        if h.is_empty() {
            return Ok(None);
        }
        let entries = array(at(parts, 1)?)?
            .iter()
            .map(|e| {
                let json = text(e)?;
                serde_json::from_str::<HistoryEntry>(&json)
                    .map_err(|err| QueueError::Corrupt(format!("history of job {id}: {err}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(JobHistory {
            record: record(&h)?,
            entries,
        }))
    }

    pub(super) async fn throughput_impl(
        &self,
        now: Millis,
    ) -> Result<Vec<MinuteCounts>, QueueError> {
        let minutes: Vec<u64> = window(now).collect();
        let mut inv = SCRIPTS.throughput_read.prepare_invoke();
        for m in &minutes {
            inv.key(self.keys.throughput(*m));
        }
        inv.arg(0);
        let reply = self.run(&inv).await?;
        let count = |h: &std::collections::HashMap<String, String>, f: &str| {
            h.get(f).map_or(Ok(0), |v| {
                v.parse::<u64>()
                    .map_err(|_| QueueError::Corrupt(format!("throughput field {f} = {v:?}")))
            })
        };
        array(&reply)?
            .iter()
            .zip(minutes)
            .map(|(v, minute)| {
                let h = hash(v)?;
                let mut latency = [0u64; LATENCY_BUCKETS];
                for (i, slot) in latency.iter_mut().enumerate() {
                    *slot = count(&h, &format!("b{i}"))?;
                }
                Ok(MinuteCounts {
                    minute,
                    succeeded: count(&h, "succeeded")?,
                    failed: count(&h, "failed")?,
                    latency,
                })
            })
            .collect()
    }
}
