//! Redis key layout: one builder per key, all under one hash tag so every multi-key Lua script
//! stays on one Redis Cluster slot.
//!
//! Layout (`<ns>` is the namespace, default `kx`; tests use a fresh `t-<uuid>` per test):
//!
//! ```text
//! kontext:{<ns>}:job:<id>                 HASH    the job record (source of truth)
//! kontext:{<ns>}:q:hi|std|bulk            STREAM  dispatch per priority class, group "workers"
//! kontext:{<ns>}:leases                   ZSET    jid -> lease_until (ms)
//! kontext:{<ns>}:delay                    ZSET    jid -> retry time (ms)
//! kontext:{<ns>}:dlq                      STREAM  dead letters {jid, reason, crashes, attempts}
//! kontext:{<ns>}:ev:<id>                  STREAM  per-job events, MAXLEN ~ 256
//! kontext:{<ns>}:hist:<id>                LIST    the job's history (`job_history`), at most 100
//! kontext:{<ns>}:idem:<len>:<tenant>:<k>  STRING  "<jid>|<body hash>", EX 86400
//! kontext:{<ns>}:tenant:<t>:jobs          ZSET    list index (lexical members, see `list_member`)
//! kontext:{<ns>}:jobs                     ZSET    every tenant's list members: the admin index
//! kontext:{<ns>}:tenant:<t>:inflight      STRING  count of the tenant's non-terminal jobs
//! kontext:{<ns>}:tenant:<t>:chains        ZSET    cid -> created (ms): chains counted for quotas
//! kontext:{<ns>}:tenant:<t>:chains:turns  HASH    cid -> turns counted, `_` -> their sum
//! kontext:{<ns>}:notify                   ZSET    finished jid -> due (ms): notifier work
//! kontext:{<ns>}:notify:attempts          HASH    jid -> times taken
//! kontext:{<ns>}:chain:<cid>              HASH    chain record: settings, `t:<i>` turn templates,
//!                                                 `j:<i>` planned job ids (fields: prelude.lua)
//! kontext:{<ns>}:q:w:<worker>             STREAM  per-worker affinity offers (chain turns and
//!                                                 LoRA jobs), no group: the worker XDELs what it reads
//! kontext:{<ns>}:lora:<set>               STRING  worker that last completed a job with this LoRA
//!                                                 set (`loras::lora_set_id`), EX 900
//! kontext:{<ns>}:w:<worker>:lora          STRING  the LoRA set that worker's engine holds, EX 900
//! kontext:{<ns>}:w:<worker>:info          STRING  the worker's registry record (JSON), PX its TTL
//! kontext:{<ns>}:workers                  ZSET    worker id -> record expiry (ms)
//! kontext:{<ns>}:w:<worker>:drain         STRING  an operator's drain request, EX 3600
//! kontext:{<ns>}:tp:<minute>              HASH    finished jobs and latency buckets of one UTC
//!                                                 minute (`throughput`), EX 3 h
//! kontext:{<ns>}:audit                    STREAM  admin actions {at, action, target}, MAXLEN ~ 10000
//! kontext:{<ns>}:usage:<day>              HASH    `engine_ms|<t>`, `images|<t>`, `steps|<t>` of the
//!                                                 day's succeeded jobs per tenant, EX 400 days
//! ```
//!
//! The Lua scripts derive per-job and per-tenant keys from `prefix()` (they discover job ids at run
//! time), so the suffixes below are mirrored in `redis/lua/prelude.lua`; a test checks both agree.

use crate::chain::ChainId;
use crate::error::QueueError;
use crate::job::{JobId, Millis, Priority};

/// Consumer group every worker reads the class streams through.
pub const WORKER_GROUP: &str = "workers";

/// Default namespace.
pub const DEFAULT_NAMESPACE: &str = "kx";

/// The keys of one queue namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpace {
    prefix: String,
}

impl KeySpace {
    /// A namespace may not contain braces (it is the hash tag), ':' or whitespace.
    pub fn new(ns: &str) -> Result<Self, QueueError> {
        let bad = |c: char| c == '{' || c == '}' || c == ':' || c.is_whitespace() || c.is_control();
        if ns.is_empty() || ns.len() > 64 || ns.chars().any(bad) {
            return Err(QueueError::Config(format!(
                "namespace {ns:?} must be 1..=64 characters without braces, ':' or whitespace"
            )));
        }
        Ok(Self {
            prefix: format!("kontext:{{{ns}}}:"),
        })
    }

    /// `kontext:{<ns>}:`; the Lua scripts append the suffixes below to it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn job(&self, id: JobId) -> String {
        format!("{}job:{id}", self.prefix)
    }

    /// Dispatch stream of a priority class.
    pub fn class_stream(&self, priority: Priority) -> String {
        format!("{}q:{}", self.prefix, priority.class())
    }

    pub fn leases(&self) -> String {
        format!("{}leases", self.prefix)
    }

    pub fn delay(&self) -> String {
        format!("{}delay", self.prefix)
    }

    pub fn dead_letters(&self) -> String {
        format!("{}dlq", self.prefix)
    }

    pub fn events(&self, id: JobId) -> String {
        format!("{}ev:{id}", self.prefix)
    }

    /// The job's history (`job_history::HistoryEntry` JSON, oldest first).
    pub fn history(&self, id: JobId) -> String {
        format!("{}hist:{id}", self.prefix)
    }

    /// The tenant's length prefix keeps the key injective: tenant `a` with key `b:c` and tenant
    /// `a:b` with key `c` must not share a slot.
    pub fn idempotency(&self, tenant: &str, key: &str) -> String {
        format!("{}idem:{}:{tenant}:{key}", self.prefix, tenant.len())
    }

    pub fn tenant_jobs(&self, tenant: &str) -> String {
        format!("{}tenant:{tenant}:jobs", self.prefix)
    }

    /// Every tenant's list members in one index (`admin_jobs`), trimmed with the tenants' own.
    pub fn all_jobs(&self) -> String {
        format!("{}jobs", self.prefix)
    }

    pub fn tenant_inflight(&self, tenant: &str) -> String {
        format!("{}tenant:{tenant}:inflight", self.prefix)
    }

    /// The tenant's chains created in the retention period (cid -> created ms).
    pub fn tenant_chains(&self, tenant: &str) -> String {
        format!("{}tenant:{tenant}:chains", self.prefix)
    }

    /// Turns counted per chain of `tenant_chains` (cid -> turns, `_` -> their sum).
    pub fn tenant_chain_turns(&self, tenant: &str) -> String {
        format!("{}tenant:{tenant}:chains:turns", self.prefix)
    }

    /// Finished jobs waiting for the notifier (webhooks, latency metrics), scored by due time.
    pub fn notify(&self) -> String {
        format!("{}notify", self.prefix)
    }

    /// A chain's record.
    pub fn chain(&self, id: ChainId) -> String {
        format!("{}chain:{id}", self.prefix)
    }

    /// Offers of chain turns to the worker that ran the turn before (read before the class
    /// streams by that worker's claims).
    pub fn affinity_stream(&self, worker: &str) -> String {
        format!("{}q:w:{worker}", self.prefix)
    }

    /// The worker that last completed a job with LoRA set `set` (`loras::lora_set_id`).
    pub fn lora_owner(&self, set: &str) -> String {
        format!("{}lora:{set}", self.prefix)
    }

    /// The LoRA set `worker`'s engine holds applied.
    pub fn worker_lora(&self, worker: &str) -> String {
        format!("{}w:{worker}:lora", self.prefix)
    }

    /// A worker's registry record (`workers::WorkerInfo`, JSON).
    pub fn worker_info(&self, worker: &str) -> String {
        format!("{}w:{worker}:info", self.prefix)
    }

    /// Usage of day `day` (days since 1970-01-01 UTC; `usage::day_of`).
    pub fn usage(&self, day: u32) -> String {
        format!("{}usage:{day}", self.prefix)
    }

    /// Throughput and latency of minute `minute` (`throughput::minute_of`).
    pub fn throughput(&self, minute: u64) -> String {
        format!("{}tp:{minute}", self.prefix)
    }

    /// An operator's request that `worker` drain.
    pub fn worker_drain(&self, worker: &str) -> String {
        format!("{}w:{worker}:drain", self.prefix)
    }

    /// Admin actions (`workers::AuditEntry`).
    pub fn audit(&self) -> String {
        format!("{}audit", self.prefix)
    }

    /// The registry index: worker id → when its record expires.
    pub fn workers(&self) -> String {
        format!("{}workers", self.prefix)
    }

    /// How many times each pending notification was taken.
    pub fn notify_attempts(&self) -> String {
        format!("{}notify:attempts", self.prefix)
    }
}

/// Member of a tenant's list index: `<created_at, 20 digits>:<id>`. All members share score 0,
/// so lexical order is creation order (ties broken by id) and the member itself is the list
/// cursor; both queue implementations use the same format.
pub fn list_member(created_at: Millis, id: JobId) -> String {
    format!("{created_at:020}:{id}")
}

/// The smallest `list_member` of a job created at `at` or later: members below it were created
/// before `at` (the retention cutoff of the list index).
pub fn list_member_cutoff(at: Millis) -> String {
    format!("{at:020}:")
}

/// The job id inside a `list_member` (which is also the list cursor clients pass back).
pub fn parse_list_member(member: &str) -> Result<JobId, QueueError> {
    member
        .split_once(':')
        .filter(|(ts, _)| ts.len() == 20 && ts.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|(_, id)| id.parse().ok())
        .ok_or_else(|| QueueError::InvalidCursor(member.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_carries_the_namespace_hash_tag() {
        let k = KeySpace::new("kx").expect("valid namespace");
        let id: JobId = "67e55044-10b1-426f-9247-bb680e5fe0c8"
            .parse()
            .expect("uuid");
        let all = [
            k.job(id),
            k.class_stream(Priority::High),
            k.class_stream(Priority::Standard),
            k.class_stream(Priority::Bulk),
            k.leases(),
            k.delay(),
            k.dead_letters(),
            k.events(id),
            k.history(id),
            k.idempotency("acme", "key-1"),
            k.tenant_jobs("acme"),
            k.all_jobs(),
            k.tenant_inflight("acme"),
            k.notify(),
            k.notify_attempts(),
            k.chain(ChainId(id.0)),
            k.affinity_stream("host-1-abc"),
            k.lora_owner("0123abcd"),
            k.worker_lora("host-1-abc"),
            k.worker_info("host-1-abc"),
            k.workers(),
            k.usage(20_427),
            k.throughput(28_333_333),
            k.worker_drain("host-1-abc"),
            k.audit(),
        ];
        for key in &all {
            assert!(key.starts_with("kontext:{kx}:"), "{key}");
        }
        assert_eq!(
            all[0],
            "kontext:{kx}:job:67e55044-10b1-426f-9247-bb680e5fe0c8"
        );
        assert_eq!(all[1], "kontext:{kx}:q:hi");
        assert_eq!(all[3], "kontext:{kx}:q:bulk");
        assert_eq!(all[9], "kontext:{kx}:idem:4:acme:key-1");
    }

    #[test]
    fn idempotency_keys_do_not_collide_across_tenants() {
        let k = KeySpace::new("kx").expect("valid namespace");
        assert_ne!(k.idempotency("a", "b:c"), k.idempotency("a:b", "c"));
    }

    #[test]
    fn rejects_namespaces_that_break_the_hash_tag() {
        for ns in ["", "a}b", "{x", "a:b", "a b", &"n".repeat(65)] {
            assert!(
                matches!(KeySpace::new(ns), Err(QueueError::Config(_))),
                "{ns:?}"
            );
        }
        assert!(KeySpace::new("t-67e55044-10b1-426f-9247-bb680e5fe0c8").is_ok());
    }

    #[test]
    fn list_members_sort_by_creation_time() {
        let a = JobId::new();
        let b = JobId::new();
        assert!(list_member(999, a) < list_member(1_000, b));
        assert_eq!(list_member(5, a).len(), 20 + 1 + 36);
        assert_eq!(
            parse_list_member(&list_member(5, a)).expect("round trip"),
            a
        );
        assert!(parse_list_member("5:x").is_err());
    }
}
