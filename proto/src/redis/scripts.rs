//! The Lua scripts, one per state transition, compiled into the binary with `include_str!`. Each
//! is `prelude.lua` (shared helpers) followed by its own file, whose header lists KEYS, ARGV and
//! Returns. `redis::Script` runs them with EVALSHA and loads them on NOSCRIPT; `Scripts::load`
//! loads them all at connect so the first calls don't pay for that.

use std::sync::LazyLock;

use redis::Script;
use redis::aio::ConnectionLike;

const PRELUDE: &str = include_str!("lua/prelude.lua");

/// Every script file by name, for loading and for the header checks in the tests.
pub(crate) const SOURCES: [(&str, &str); 32] = [
    ("submit", include_str!("lua/submit.lua")),
    ("claim", include_str!("lua/claim.lua")),
    ("heartbeat", include_str!("lua/heartbeat.lua")),
    ("progress", include_str!("lua/progress.lua")),
    ("complete", include_str!("lua/complete.lua")),
    ("fail", include_str!("lua/fail.lua")),
    ("release", include_str!("lua/release.lua")),
    ("cancel", include_str!("lua/cancel.lua")),
    ("reap", include_str!("lua/reap.lua")),
    ("stats", include_str!("lua/stats.lua")),
    ("list", include_str!("lua/list.lua")),
    ("notify_take", include_str!("lua/notify_take.lua")),
    ("notify_ack", include_str!("lua/notify_ack.lua")),
    ("notify_retry", include_str!("lua/notify_retry.lua")),
    ("chain_create", include_str!("lua/chain_create.lua")),
    ("chain_get", include_str!("lua/chain_get.lua")),
    ("chain_append", include_str!("lua/chain_append.lua")),
    ("chain_fork", include_str!("lua/chain_fork.lua")),
    ("chain_cancel", include_str!("lua/chain_cancel.lua")),
    ("worker_beat", include_str!("lua/worker_beat.lua")),
    ("worker_list", include_str!("lua/worker_list.lua")),
    ("usage_read", include_str!("lua/usage_read.lua")),
    ("worker_drain", include_str!("lua/worker_drain.lua")),
    ("audit_read", include_str!("lua/audit_read.lua")),
    ("dead_requeue", include_str!("lua/dead_requeue.lua")),
    ("dead_dismiss", include_str!("lua/dead_dismiss.lua")),
    ("dead_read", include_str!("lua/dead_read.lua")),
    ("admin_jobs", include_str!("lua/admin_jobs.lua")),
    ("job_history", include_str!("lua/job_history.lua")),
    ("throughput_read", include_str!("lua/throughput_read.lua")),
    ("dead_bulk", include_str!("lua/dead_bulk.lua")),
    ("cancel_queued", include_str!("lua/cancel_queued.lua")),
];

pub(crate) struct Scripts {
    pub submit: Script,
    pub claim: Script,
    pub heartbeat: Script,
    pub progress: Script,
    pub complete: Script,
    pub fail: Script,
    pub release: Script,
    pub cancel: Script,
    pub reap: Script,
    pub stats: Script,
    pub list: Script,
    pub notify_take: Script,
    pub notify_ack: Script,
    pub notify_retry: Script,
    pub chain_create: Script,
    pub chain_get: Script,
    pub chain_append: Script,
    pub chain_fork: Script,
    pub chain_cancel: Script,
    pub worker_beat: Script,
    pub worker_list: Script,
    pub usage_read: Script,
    pub worker_drain: Script,
    pub audit_read: Script,
    pub dead_requeue: Script,
    pub dead_dismiss: Script,
    pub dead_read: Script,
    pub admin_jobs: Script,
    pub job_history: Script,
    pub throughput_read: Script,
    pub dead_bulk: Script,
    pub cancel_queued: Script,
}

fn with_prelude(name: &str) -> Script {
    let body = SOURCES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, body)| *body)
        .expect("every script named in Scripts is in SOURCES; this is a bug");
    Script::new(&format!("{PRELUDE}\n{body}"))
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    submit: with_prelude("submit"),
    claim: with_prelude("claim"),
    heartbeat: with_prelude("heartbeat"),
    progress: with_prelude("progress"),
    complete: with_prelude("complete"),
    fail: with_prelude("fail"),
    release: with_prelude("release"),
    cancel: with_prelude("cancel"),
    reap: with_prelude("reap"),
    stats: with_prelude("stats"),
    list: with_prelude("list"),
    notify_take: with_prelude("notify_take"),
    notify_ack: with_prelude("notify_ack"),
    notify_retry: with_prelude("notify_retry"),
    chain_create: with_prelude("chain_create"),
    chain_get: with_prelude("chain_get"),
    chain_append: with_prelude("chain_append"),
    chain_fork: with_prelude("chain_fork"),
    chain_cancel: with_prelude("chain_cancel"),
    worker_beat: with_prelude("worker_beat"),
    worker_list: with_prelude("worker_list"),
    usage_read: with_prelude("usage_read"),
    worker_drain: with_prelude("worker_drain"),
    audit_read: with_prelude("audit_read"),
    dead_requeue: with_prelude("dead_requeue"),
    dead_dismiss: with_prelude("dead_dismiss"),
    dead_read: with_prelude("dead_read"),
    admin_jobs: with_prelude("admin_jobs"),
    job_history: with_prelude("job_history"),
    throughput_read: with_prelude("throughput_read"),
    dead_bulk: with_prelude("dead_bulk"),
    cancel_queued: with_prelude("cancel_queued"),
});

impl Scripts {
    fn all(&self) -> [&Script; 32] {
        [
            &self.submit,
            &self.claim,
            &self.heartbeat,
            &self.progress,
            &self.complete,
            &self.fail,
            &self.release,
            &self.cancel,
            &self.reap,
            &self.stats,
            &self.list,
            &self.notify_take,
            &self.notify_ack,
            &self.notify_retry,
            &self.chain_create,
            &self.chain_get,
            &self.chain_append,
            &self.chain_fork,
            &self.chain_cancel,
            &self.worker_beat,
            &self.worker_list,
            &self.usage_read,
            &self.worker_drain,
            &self.audit_read,
            &self.dead_requeue,
            &self.dead_dismiss,
            &self.dead_read,
            &self.admin_jobs,
            &self.job_history,
            &self.throughput_read,
            &self.dead_bulk,
            &self.cancel_queued,
        ]
    }

    /// SCRIPT LOAD every script (also surfaces Lua syntax errors at connect).
    pub(crate) async fn load(&self, con: &mut impl ConnectionLike) -> redis::RedisResult<()> {
        for script in self.all() {
            script.prepare_invoke().load_async(con).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_has_a_keys_argv_returns_header() {
        for (name, body) in SOURCES {
            let header: Vec<&str> = body.lines().take_while(|l| l.starts_with("--")).collect();
            let header = header.join("\n");
            for tag in ["KEYS[1]", "ARGV[1]", "Returns"] {
                assert!(header.contains(tag), "{name}.lua header lacks {tag}");
            }
        }
    }

    #[test]
    fn the_history_cap_is_the_same_in_lua_and_rust() {
        let line = format!(
            "local HISTORY_MAXLEN = {}",
            crate::job_history::HISTORY_MAXLEN
        );
        assert!(PRELUDE.contains(&line), "prelude.lua lacks {line:?}");
    }

    #[test]
    fn latency_buckets_and_expiry_are_the_same_in_lua_and_rust() {
        use crate::throughput::{LATENCY_BOUNDS_MS, MINUTE_TTL_S};
        let bounds: Vec<String> = LATENCY_BOUNDS_MS.iter().map(u64::to_string).collect();
        let line = format!("local LATENCY_BOUNDS_MS = {{{}}}", bounds.join(", "));
        assert!(PRELUDE.contains(&line), "prelude.lua lacks {line:?}");
        let line = format!("local THROUGHPUT_TTL_S = {MINUTE_TTL_S}");
        assert!(PRELUDE.contains(&line), "prelude.lua lacks {line:?}");
    }

    #[test]
    fn no_script_reads_the_server_clock() {
        for (name, body) in SOURCES.iter().chain([("prelude", PRELUDE)].iter()) {
            let code: String = body
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect();
            assert!(
                !code.contains("'TIME'") && !code.contains("\"TIME\""),
                "{name}.lua calls TIME"
            );
        }
    }
}
