//! The queue conformance suite (kontext_proto::conformance) against both implementations:
//! `MemoryQueue`, and `RedisQueue` on a real redis-server (one per test process, a fresh
//! namespace per test). Then the Redis-only rules: the server check, the key layout, retention,
//! stream trimming, script reloading, WAIT, and races between separate connections.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kontext_e2e::redis_server::{RedisServer, fresh_namespace, redis_url};
use kontext_proto::conformance::{self, NOW, TTL, within};
use kontext_proto::policy::QueueConfig;
use kontext_proto::redis::{RedisConfig, RedisQueue};
use kontext_proto::throughput::minute_of;
use kontext_proto::{CompleteOutcome, JobErrorKind, JobQueue, Priority, QueueError};

async fn redis_queue(cfg: QueueConfig) -> RedisQueue {
    let cfg = RedisConfig {
        queue: cfg,
        ..RedisConfig::default()
    };
    RedisQueue::connect(&redis_url(), &fresh_namespace(), cfg)
        .await
        .expect("connecting to the test redis-server")
}

mod memory_queue {
    kontext_proto::queue_conformance_tests!(|cfg| async move {
        kontext_proto::memory::MemoryQueue::new(cfg)
    });
}

mod redis_queue {
    kontext_proto::queue_conformance_tests!(super::redis_queue);
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).expect("redis url");
    within("raw connection", client.get_multiplexed_async_connection())
        .await
        .expect("raw connection")
}

/// All keys whose name mentions `ns`.
async fn keys_of(con: &mut redis::aio::MultiplexedConnection, ns: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = within(
            "SCAN",
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("*{ns}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(con),
        )
        .await
        .expect("SCAN");
        found.extend(batch);
        if next == 0 {
            return found;
        }
        cursor = next;
    }
}

#[tokio::test]
async fn refuses_a_server_that_may_evict_jobs() {
    let server = RedisServer::start(&["--maxmemory-policy", "allkeys-lru"]).expect("private redis");
    let err = within(
        "connect",
        RedisQueue::connect(server.url(), &fresh_namespace(), RedisConfig::default()),
    )
    .await
    .expect_err("connect must refuse allkeys-lru");
    let msg = err.to_string();
    assert!(matches!(err, QueueError::Config(_)), "{msg}");
    assert!(
        msg.contains("allkeys-lru") && msg.contains("noeviction"),
        "{msg}"
    );
}

#[tokio::test]
async fn every_key_lives_under_the_namespace_hash_tag() {
    let ns = fresh_namespace();
    let cfg = RedisConfig {
        queue: conformance::config(),
        ..RedisConfig::default()
    };
    let q = RedisQueue::connect(&redis_url(), &ns, cfg)
        .await
        .expect("connect");
    let k = q.keys().clone();
    let mut keyed = conformance::submission("acme", Priority::High, "a");
    keyed.idempotency_key = Some("idem-1".into());
    let a = within("submit", q.submit(keyed, NOW))
        .await
        .expect("submit")
        .id;
    let b = conformance::submit(
        &q,
        conformance::submission("acme", Priority::Bulk, "b"),
        NOW,
    )
    .await;
    let (lease_a, _) = conformance::claim(&q, "w", NOW).await;
    within("progress", q.progress(&lease_a, 1, 2, TTL, NOW))
        .await
        .expect("progress");
    let (lease_b, _) = conformance::claim(&q, "w", NOW).await;
    let err = kontext_proto::JobError::new(JobErrorKind::Transient, "x");
    within("fail", q.fail(&lease_b, err, NOW))
        .await
        .expect("fail");
    within("poison", async {
        for i in 0..3 {
            let now = NOW + 100_000 * (i + 1);
            q.reap(now).await.expect("reap");
            let c = q.claim("w", TTL, now, Duration::ZERO).await.expect("claim");
            assert!(c.is_some(), "round {i}: a job is claimable");
        }
        q.reap(NOW + 10_000_000).await.expect("reap")
    })
    .await;

    let me = conformance::worker_info("w", NOW);
    within("register_worker", q.register_worker(&me, TTL, NOW))
        .await
        .expect("register_worker");

    let mut con = raw(&redis_url()).await;
    let found = keys_of(&mut con, &ns).await;
    let prefix = format!("kontext:{{{ns}}}:");
    assert!(
        found.iter().all(|key| key.starts_with(&prefix)),
        "{found:?}"
    );
    let expected: BTreeSet<String> = [
        k.job(a),
        k.job(b),
        k.events(a),
        k.events(b),
        k.history(a),
        k.history(b),
        k.class_stream(Priority::High),
        k.class_stream(Priority::Standard),
        k.class_stream(Priority::Bulk),
        k.dead_letters(),
        k.idempotency("acme", "idem-1"),
        k.tenant_jobs("acme"),
        k.all_jobs(),
        k.tenant_inflight("acme"),
        k.leases(),
        k.notify(),
        k.notify_attempts(),
        k.workers(),
        k.worker_info("w"),
    ]
    .into_iter()
    // The dead-lettered job counts as a failure in its minute (throughput history).
    .chain((minute_of(NOW)..=minute_of(NOW + 10_000_000)).map(|m| k.throughput(m)))
    .collect();
    let unexpected: Vec<_> = found.difference(&expected).collect();
    assert!(
        unexpected.is_empty(),
        "keys outside the layout of keys.rs: {unexpected:?}"
    );
    for key in [
        k.job(a),
        k.events(a),
        k.tenant_jobs("acme"),
        k.all_jobs(),
        k.dead_letters(),
    ] {
        assert!(found.contains(&key), "{key} missing from {found:?}");
    }
}

#[tokio::test]
async fn finished_jobs_expire_and_streams_are_trimmed() {
    let ns = fresh_namespace();
    let mut qc = conformance::config();
    qc.retention = Duration::from_secs(3_600);
    let q = RedisQueue::connect(
        &redis_url(),
        &ns,
        RedisConfig {
            queue: qc,
            ..RedisConfig::default()
        },
    )
    .await
    .expect("connect");
    let mut last = None;
    for i in 0..20 {
        let id = conformance::submit(
            &q,
            conformance::submission("t", Priority::Standard, "x"),
            NOW + i,
        )
        .await;
        let (lease, _) = conformance::claim(&q, "w", NOW + i).await;
        let c = within(
            "complete",
            q.complete(&lease, conformance::result_for(&lease), NOW + i),
        )
        .await;
        assert_eq!(c.expect("complete"), CompleteOutcome::Committed);
        last = Some(id);
    }
    let id = last.expect("a job");
    let mut con = raw(&redis_url()).await;
    for key in [q.keys().job(id), q.keys().events(id), q.keys().history(id)] {
        let ttl: i64 = redis::cmd("TTL")
            .arg(&key)
            .query_async(&mut con)
            .await
            .expect("TTL");
        assert!(ttl > 0 && ttl <= 3_600, "{key} has TTL {ttl}");
    }
    within("reap", q.reap(NOW + 100)).await.expect("reap");
    let len: u64 = redis::cmd("XLEN")
        .arg(q.keys().class_stream(Priority::Standard))
        .query_async(&mut con)
        .await
        .expect("XLEN");
    assert!(len <= 1, "acked entries must be trimmed, {len} left");
    let inflight: Option<u64> = redis::cmd("GET")
        .arg(q.keys().tenant_inflight("t"))
        .query_async(&mut con)
        .await
        .expect("GET");
    assert_eq!(inflight.unwrap_or(0), 0);
}

#[tokio::test]
async fn scripts_reload_after_script_flush() {
    let server = RedisServer::start(&[]).expect("private redis");
    let q = RedisQueue::connect(server.url(), &fresh_namespace(), RedisConfig::default())
        .await
        .expect("connect");
    let mut con = raw(server.url()).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut con)
        .await
        .expect("SCRIPT FLUSH");
    let id = conformance::submit(
        &q,
        conformance::submission("t", Priority::Standard, "x"),
        NOW,
    )
    .await;
    let (_, job) = conformance::claim(&q, "w", NOW).await;
    assert_eq!(job.id, id);
}

async fn zset_members(con: &mut redis::aio::MultiplexedConnection, key: String) -> Vec<String> {
    redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(con)
        .await
        .expect("ZRANGE")
}

/// The operators' global `jobs` index is trimmed past retention by any tenant's submit (the
/// tenant lists only by their own), so it cannot grow without bound across tenants.
#[tokio::test]
async fn the_global_jobs_index_is_trimmed_past_retention() {
    let mut qc = conformance::config();
    qc.retention = Duration::from_secs(3_600);
    let q = redis_queue(qc).await;
    let mut con = raw(&redis_url()).await;
    let mut old = Vec::new();
    for i in 0..3 {
        let sub = conformance::submission("t", Priority::Standard, "old");
        old.push(conformance::submit(&q, sub, NOW + i).await);
    }
    assert_eq!(zset_members(&mut con, q.keys().all_jobs()).await.len(), 3);
    let later = NOW + 3_600_000 + 10;
    let sub = conformance::submission("u", Priority::Standard, "new");
    let new = conformance::submit(&q, sub, later).await;
    let global = zset_members(&mut con, q.keys().all_jobs()).await;
    assert_eq!(global.len(), 1, "{global:?}");
    assert!(global[0].ends_with(&new.to_string()), "{global:?}");
    let t_list = zset_members(&mut con, q.keys().tenant_jobs("t")).await;
    assert_eq!(
        t_list.len(),
        3,
        "another tenant's submit leaves t's own list alone"
    );
    let sub = conformance::submission("t", Priority::Standard, "again");
    conformance::submit(&q, sub, later).await;
    let t_list = zset_members(&mut con, q.keys().tenant_jobs("t")).await;
    assert_eq!(t_list.len(), 1, "t's own submit trims t's list: {t_list:?}");
    assert!(
        old.iter()
            .all(|id| !t_list.iter().any(|m| m.ends_with(&id.to_string())))
    );
}

/// Audit entries written before actors were recorded (no `actor` field) still read, as
/// `unknown`, next to new ones.
#[tokio::test]
async fn audit_entries_from_before_actors_read_as_unknown() {
    let ns = fresh_namespace();
    let q = RedisQueue::connect(&redis_url(), &ns, RedisConfig::default())
        .await
        .expect("connect");
    let audit = kontext_proto::keys::KeySpace::new(&ns)
        .expect("keys")
        .audit();
    let mut con = raw(&redis_url()).await;
    let _: String = redis::cmd("XADD")
        .arg(&audit)
        .arg("*")
        .arg(&["at", "5", "action", "drain_worker", "target", "w-old"])
        .query_async(&mut con)
        .await
        .expect("XADD");
    let entries = within("audit_log", q.audit_log(10)).await.expect("audit");
    let read: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e.target.as_str(), e.actor.as_str()))
        .collect();
    assert_eq!(read, [("w-old", "unknown")]);
}

#[tokio::test]
async fn submit_with_wait_for_replicas_still_succeeds_without_replicas() {
    let cfg = RedisConfig {
        wait_replicas: 1,
        wait_timeout: Duration::from_millis(20),
        ..RedisConfig::default()
    };
    let q = RedisQueue::connect(&redis_url(), &fresh_namespace(), cfg)
        .await
        .expect("connect");
    let id = conformance::submit(
        &q,
        conformance::submission("t", Priority::Standard, "x"),
        NOW,
    )
    .await;
    assert!(within("get", q.get(id)).await.expect("get").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn separate_connections_race_and_wake_each_other() {
    let ns = fresh_namespace();
    let url = redis_url();
    let connect = || RedisQueue::connect(&url, &ns, RedisConfig::default());
    let (q1, q2) = (
        connect().await.expect("connect"),
        connect().await.expect("connect"),
    );
    for round in 0..10 {
        let id = conformance::submit(
            &q1,
            conformance::submission("t", Priority::Standard, "x"),
            NOW + round,
        )
        .await;
        let (c1, c2) = tokio::join!(
            q1.claim("w1", TTL, NOW + round, Duration::ZERO),
            q2.claim("w2", TTL, NOW + round, Duration::ZERO)
        );
        let winners: Vec<_> = [c1.expect("claim"), c2.expect("claim")]
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(winners.len(), 1, "round {round}");
        assert_eq!(winners[0].job.id, id);
    }
    // A claim blocked on one connection wakes when another connection submits.
    let q2 = std::sync::Arc::new(q2);
    let waiter = {
        let q2 = std::sync::Arc::clone(&q2);
        tokio::spawn(async move { q2.claim("w2", TTL, NOW, Duration::from_secs(15)).await })
    };
    let id = conformance::submit(
        &q1,
        conformance::submission("t", Priority::Bulk, "late"),
        NOW,
    )
    .await;
    let got = within("blocked claim", waiter)
        .await
        .expect("task")
        .expect("claim");
    assert_eq!(got.map(|c| c.job.id), Some(id));
}

/// Blocking reads hold a connection each: past `max_blocking` they fail at once with
/// `Saturated` (the coordinator's 503) instead of opening more connections to Redis; a slot is
/// free again as soon as a read ends.
#[tokio::test]
async fn blocking_reads_are_capped() {
    let ns = fresh_namespace();
    let q = Arc::new(
        RedisQueue::connect(
            &redis_url(),
            &ns,
            RedisConfig {
                queue: conformance::config(),
                max_blocking: 2,
                ..RedisConfig::default()
            },
        )
        .await
        .expect("connect"),
    );
    let id = conformance::submit(
        &*q,
        conformance::submission("t", Priority::Standard, "x"),
        NOW,
    )
    .await;
    let cursor = within("events", q.events(id, None, Duration::ZERO))
        .await
        .expect("events")
        .last()
        .map(|(c, _)| c.clone())
        .expect("the queued event");
    // Two followers wait for events that do not come (bounded by a long wait, ended below).
    let followers: Vec<_> = (0..2)
        .map(|_| {
            let q = Arc::clone(&q);
            let cursor = cursor.clone();
            tokio::spawn(async move { q.events(id, Some(&cursor), Duration::from_secs(30)).await })
        })
        .collect();
    within("both followers hold a connection", async {
        while q.blocking_in_use() < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    match q.events(id, Some(&cursor), Duration::from_secs(30)).await {
        Err(QueueError::Saturated { limit, .. }) => assert_eq!(limit, 2),
        other => panic!("expected Saturated, got {other:?}"),
    }
    // An event ends both waits; their slots come back.
    let (lease, _) = conformance::claim(&*q, "w", NOW).await;
    for f in followers {
        let got = within("a follower ends", f)
            .await
            .expect("task")
            .expect("events");
        assert!(!got.is_empty());
    }
    within("progress", q.progress(&lease, 1, 2, TTL, NOW))
        .await
        .expect("progress");
    let after = within(
        "events",
        q.events(id, Some(&cursor), Duration::from_secs(5)),
    )
    .await
    .expect("a slot is free again");
    assert!(!after.is_empty());
}
