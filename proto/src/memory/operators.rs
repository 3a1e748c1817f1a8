//! The embedded queue's operator state, beside the job state: the worker registry, usage per
//! tenant and day, drain requests and the audit log (docs/queue-protocol.md §Worker registry,
//! §Usage, §Admin actions). Mirrors `worker_beat.lua`, `worker_list.lua`, `usage_read.lua`,
//! `worker_drain.lua` and `audit_read.lua`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::error::QueueError;
use crate::job::Millis;
use crate::policy;
use crate::throughput::{self, MinuteCounts};
use crate::usage::{self, UsageRow};
use crate::workers::{
    AUDIT_MAXLEN, AuditEntry, Beat, DRAIN_REQUEST_TTL_S, DrainOutcome, WorkerInfo,
};

#[derive(Debug, Default)]
pub(super) struct Operators {
    /// id → (record, expiry).
    workers: Mutex<BTreeMap<String, (WorkerInfo, Millis)>>,
    /// (day, tenant) → usage.
    usage: Mutex<BTreeMap<(u32, String), UsageRow>>,
    /// worker id → when its drain request expires.
    drains: Mutex<HashMap<String, Millis>>,
    /// Newest last, at most `AUDIT_MAXLEN`.
    audit: Mutex<VecDeque<AuditEntry>>,
    /// minute → counts, for `MINUTE_TTL_S` (prelude.lua `record_throughput`).
    throughput: Mutex<BTreeMap<u64, MinuteCounts>>,
}

fn guard<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Operators {
    pub(super) fn register(&self, info: &WorkerInfo, ttl: Duration, now: Millis) -> Beat {
        let until = now.saturating_add(policy::millis(ttl).max(1));
        let mut workers = guard(&self.workers);
        workers.retain(|_, (_, expiry)| *expiry > now);
        workers.insert(info.id.clone(), (info.clone(), until));
        let drain_requested = guard(&self.drains)
            .get(&info.id)
            .is_some_and(|until| *until > now);
        Beat { drain_requested }
    }

    pub(super) fn workers(&self, now: Millis) -> Vec<WorkerInfo> {
        guard(&self.workers)
            .values()
            .filter(|(_, expiry)| *expiry > now)
            .map(|(info, _)| info.clone())
            .collect()
    }

    /// One succeeded job (called inside the commit, under the state lock).
    pub(super) fn count_usage(&self, tenant: &str, now: Millis, engine_ms: u64, steps: u32) {
        let day = usage::day_of(now);
        let mut usage = guard(&self.usage);
        let row = usage
            .entry((day, tenant.to_owned()))
            .or_insert_with(|| UsageRow {
                day: usage::day_name(day),
                tenant: tenant.to_owned(),
                ..UsageRow::default()
            });
        row.engine_ms += engine_ms;
        row.images += 1;
        row.steps += u64::from(steps);
    }

    pub(super) fn usage(&self, from_day: u32, to_day: u32) -> Result<Vec<UsageRow>, QueueError> {
        if to_day < from_day || to_day - from_day >= usage::MAX_USAGE_DAYS {
            return Err(QueueError::Config(format!(
                "usage range {from_day}..={to_day}: at most {} days, from ≤ to",
                usage::MAX_USAGE_DAYS
            )));
        }
        Ok(guard(&self.usage)
            .range((from_day, String::new())..)
            .take_while(|((day, _), _)| *day <= to_day)
            .map(|(_, row)| row.clone())
            .collect())
    }

    pub(super) fn request_drain(&self, worker: &str, actor: &str, now: Millis) -> DrainOutcome {
        let live = guard(&self.workers)
            .get(worker)
            .is_some_and(|(_, expiry)| *expiry > now);
        if !live {
            return DrainOutcome::NotFound;
        }
        let until = now.saturating_add(DRAIN_REQUEST_TTL_S * 1_000);
        guard(&self.drains).insert(worker.to_owned(), until);
        self.record("drain_worker", worker, actor, now);
        DrainOutcome::Requested
    }

    /// Appends an admin action to the audit log.
    pub(super) fn record(&self, action: &str, target: &str, actor: &str, now: Millis) {
        let mut audit = guard(&self.audit);
        audit.push_back(AuditEntry {
            at: now,
            action: action.to_owned(),
            target: target.to_owned(),
            actor: actor.to_owned(),
        });
        while audit.len() > AUDIT_MAXLEN {
            audit.pop_front();
        }
    }

    /// The newest `limit` entries, newest first.
    pub(super) fn audit(&self, limit: usize) -> Vec<AuditEntry> {
        guard(&self.audit)
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }

    /// One finished job (under the state lock, in the transition that finished it): succeeded
    /// with its creation time for the latency, or failed (`failed` or `dead`).
    pub(super) fn count_finished(&self, now: Millis, succeeded_since: Option<Millis>) {
        let minute = throughput::minute_of(now);
        let mut counts = guard(&self.throughput);
        let kept = minute.saturating_sub(throughput::MINUTE_TTL_S / 60);
        counts.retain(|m, _| *m >= kept);
        let c = counts.entry(minute).or_insert_with(|| MinuteCounts {
            minute,
            ..MinuteCounts::default()
        });
        match succeeded_since {
            Some(created) => {
                c.succeeded += 1;
                c.latency[throughput::latency_bucket(now.saturating_sub(created))] += 1;
            }
            None => c.failed += 1,
        }
    }

    /// The minutes of `throughput::window(now)`, zeros included.
    pub(super) fn throughput(&self, now: Millis) -> Vec<MinuteCounts> {
        let counts = guard(&self.throughput);
        throughput::window(now)
            .map(|minute| {
                counts.get(&minute).copied().unwrap_or(MinuteCounts {
                    minute,
                    ..MinuteCounts::default()
                })
            })
            .collect()
    }
}
