//! Retention in the embedded queue: what a tenant holds in the retention period, counted against
//! its `RetainedLimits` (mirrors prelude.lua `retained_jobs` / `retained_chains` / `index_chain` /
//! `count_turn`), and forgetting what expired — through time-ordered indexes, so the reaper's
//! tick costs what expired, not everything retained.

use std::collections::BTreeSet;

use super::State;
use crate::chain::ChainId;
use crate::job::{JobId, Millis, TenantId};
use crate::keys::{list_member, list_member_cutoff};
use crate::policy;

/// A tenant's chains created in the retention period (the Redis `tenant:<t>:chains` ZSET and
/// its `:turns` HASH).
#[derive(Debug, Default)]
pub(super) struct TenantChains {
    by_creation: BTreeSet<(Millis, ChainId)>,
    turns: std::collections::HashMap<ChainId, u64>,
    total_turns: u64,
}

impl State {
    /// Start of the retention period ending at `now`.
    pub(super) fn cutoff(&self, now: Millis) -> Millis {
        now.saturating_sub(policy::millis(self.cfg.retention))
    }

    /// A new job in its tenant's list index and the global one (prelude.lua `index_job`).
    pub(super) fn index_job(&mut self, tenant: &TenantId, member: String) {
        self.all_jobs.insert(member.clone());
        self.tenant_jobs
            .entry(tenant.clone())
            .or_default()
            .insert(member);
    }

    /// The tenant's jobs created in the retention period; older ones leave its list index, and
    /// anyone's leave the global index (prelude.lua `retained_jobs`).
    pub(super) fn retained_jobs(&mut self, tenant: &str, now: Millis) -> u64 {
        let cutoff = list_member_cutoff(self.cutoff(now));
        self.all_jobs = self.all_jobs.split_off(cutoff.as_str());
        match self.tenant_jobs.get_mut(tenant) {
            Some(set) => {
                *set = set.split_off(cutoff.as_str());
                set.len() as u64
            }
            None => 0,
        }
    }

    /// The tenant's chains and their turns counted in the retention period.
    pub(super) fn retained_chains(&mut self, tenant: &str, now: Millis) -> (u64, u64) {
        let cutoff = self.cutoff(now);
        let Some(t) = self.tenant_chains.get_mut(tenant) else {
            return (0, 0);
        };
        while let Some(&(at, id)) = t.by_creation.first() {
            if at >= cutoff {
                break;
            }
            t.by_creation.pop_first();
            t.total_turns -= t.turns.remove(&id).unwrap_or(0);
        }
        (t.by_creation.len() as u64, t.total_turns)
    }

    /// Counts a new chain with `n` turns.
    pub(super) fn index_chain(&mut self, tenant: &TenantId, id: ChainId, now: Millis, n: u64) {
        let t = self.tenant_chains.entry(tenant.clone()).or_default();
        t.by_creation.insert((now, id));
        t.turns.insert(id, n);
        t.total_turns += n;
    }

    /// Counts a turn appended to `id`, if the chain is still counted.
    pub(super) fn count_turn(&mut self, tenant: &str, id: ChainId) {
        if let Some(t) = self.tenant_chains.get_mut(tenant)
            && let Some(n) = t.turns.get_mut(&id)
        {
            *n += 1;
            t.total_turns += 1;
        }
    }

    /// Retention: drop finished jobs, chains and idempotency keys whose time is up. The
    /// indexes may hold stale entries (a chain that ran again); each is checked against the
    /// record before anything is dropped.
    pub(super) fn forget_expired(&mut self, now: Millis) {
        while let Some(&(at, id)) = self.job_expiry.first() {
            if at > now {
                break;
            }
            self.job_expiry.pop_first();
            let due = self
                .jobs
                .get(&id)
                .is_some_and(|j| j.expires_at.is_some_and(|t| t <= now));
            if due && let Some(job) = self.jobs.remove(&id) {
                let member = list_member(job.record.created_at, id);
                if let Some(set) = self.tenant_jobs.get_mut(&job.record.tenant) {
                    set.remove(&member);
                }
                self.all_jobs.remove(&member);
            }
        }
        while let Some((at, key)) = self.idem_expiry.first().cloned() {
            if at > now {
                break;
            }
            self.idem_expiry.pop_first();
            if self
                .idempotency
                .get(&key)
                .is_some_and(|e| e.expires_at <= now)
            {
                self.idempotency.remove(&key);
            }
        }
        while let Some(&(at, id)) = self.chain_expiry.first() {
            if at > now {
                break;
            }
            self.chain_expiry.pop_first();
            let due = self
                .chains
                .get(&id)
                .is_some_and(|c| c.expires_at.is_some_and(|t| t <= now));
            if due {
                self.chains.remove(&id);
            }
        }
        self.tenant_jobs.retain(|_, set| !set.is_empty());
        self.prune_offers();
    }

    /// A job's retention ends at `at`.
    pub(super) fn expire_job_at(&mut self, id: JobId, at: Millis) {
        self.job_expiry.insert((at, id));
    }

    /// A chain's retention ends at `at`.
    pub(super) fn expire_chain_at(&mut self, id: ChainId, at: Millis) {
        self.chain_expiry.insert((at, id));
    }
}
