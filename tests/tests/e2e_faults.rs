//! Faults survived end to end, on real processes: worker processes SIGKILLed at random during a
//! 40-job run, Redis SIGKILLed and restarted from its append-only file while jobs run, a Sentinel
//! failover (the primary SIGKILLed; coordinator and workers follow the promoted replica through a
//! `redis+sentinel://` URL, submits wait for the replica), the S3 server unreachable for 10 s
//! mid-run, and the coordinator restarted while clients poll.
//!
//! Every test ends with the same ledger over the jobs the API accepted (answered 202): each ends
//! in a terminal state (none lost), each succeeded job has exactly one `succeeded` event and one
//! committed result that reads back as a PNG (none duplicated), and — where one coordinator saw
//! the whole run — its success counter equals the number of successes. The figures are printed.

mod e2e_support;

use std::time::{Duration, Instant};

use e2e_support::{DEADLINE, Fleet, FleetOptions, KEY_ALPHA, assert_png, http, note};
use kontext_coordinator::config::QueueSource;
use kontext_e2e::redis_sentinel::SentinelSetup;
use kontext_e2e::redis_server::RedisServer;
use kontext_e2e::s3_server::S3Server;
use kontext_proto::redis::RedisQueue;
use kontext_proto::{JobEvent, JobId, JobQueue, JobStatus};
use kontext_storage::BlobStore;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use serde_json::{Value, json};

/// A small, quick job: the tiny model at 64×64.
fn job(i: usize) -> Value {
    json!({"prompt": format!("fault run job {i}"), "width": 64, "height": 64, "steps": 4,
           "seed": i})
}

/// Submits until the API accepts (202). Refusals and connection errors while a fault lasts are
/// not acceptances, so they are retried; they are counted in the returned figure.
async fn submit_until_accepted(fleet: &Fleet, body: &Value) -> (JobId, u32) {
    let client = http(KEY_ALPHA);
    let until = Instant::now() + DEADLINE;
    let mut refused = 0;
    loop {
        let sent = client
            .post(format!("{}/v1/jobs", fleet.url))
            .json(body)
            .send()
            .await;
        if let Ok(resp) = sent {
            if resp.status() == 202 {
                let v: Value = resp.json().await.expect("JSON");
                return (
                    v["id"].as_str().expect("id").parse().expect("uuid"),
                    refused,
                );
            }
            let status = resp.status();
            assert!(
                status.is_server_error(),
                "a fault may refuse a job with 5xx, never with {status}"
            );
        }
        refused += 1;
        assert!(
            Instant::now() < until,
            "no submit accepted within {DEADLINE:?}"
        );
        // Polling a service that is down: there is nothing to wait on but time.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Jobs of `ids` that reached a terminal state, read from the queue.
async fn terminal_count(queue: &RedisQueue, ids: &[JobId]) -> (usize, usize) {
    let (mut terminal, mut succeeded) = (0, 0);
    for id in ids {
        if let Ok(Some(job)) = queue.get(*id).await {
            terminal += usize::from(job.status.is_terminal());
            succeeded += usize::from(job.status == JobStatus::Succeeded);
        }
    }
    (terminal, succeeded)
}

/// Polls until every job of `ids` is terminal (deadline: `DEADLINE`).
async fn wait_all_terminal(fleet: &Fleet, queue: &RedisQueue, ids: &[JobId]) {
    let until = Instant::now() + DEADLINE;
    loop {
        let (terminal, _) = terminal_count(queue, ids).await;
        if terminal == ids.len() {
            return;
        }
        assert!(
            Instant::now() < until,
            "{terminal} of {} jobs terminal after {DEADLINE:?}\n{}",
            ids.len(),
            fleet.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls until at least `n` jobs of `ids` succeeded.
async fn wait_succeeded(fleet: &Fleet, queue: &RedisQueue, ids: &[JobId], n: usize) {
    let until = Instant::now() + DEADLINE;
    while terminal_count(queue, ids).await.1 < n {
        assert!(
            Instant::now() < until,
            "fewer than {n} jobs succeeded\n{}",
            fleet.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Success events of one job.
async fn successes(queue: &RedisQueue, id: JobId) -> usize {
    let mut count = 0;
    let mut cursor: Option<String> = None;
    loop {
        let events = queue
            .events(id, cursor.as_deref(), Duration::ZERO)
            .await
            .expect("events");
        let Some((last, _)) = events.last() else {
            return count;
        };
        cursor = Some(last.clone());
        count += events
            .iter()
            .filter(|(_, e)| {
                matches!(
                    e,
                    JobEvent::State {
                        status: JobStatus::Succeeded,
                        ..
                    }
                )
            })
            .count();
    }
}

/// The ledger of a run.
#[derive(Debug, Default)]
struct Ledger {
    accepted: usize,
    succeeded: usize,
    other_terminal: usize,
    lost: usize,
    duplicated: usize,
    /// Objects of attempts that uploaded but never committed (a kill between the two).
    orphan_objects: usize,
}

async fn ledger(fleet: &Fleet, queue: &RedisQueue, ids: &[JobId]) -> Ledger {
    let store = fleet.store().await.expect("store");
    let mut l = Ledger {
        accepted: ids.len(),
        ..Ledger::default()
    };
    for id in ids {
        let Some(job) = queue.get(*id).await.expect("get") else {
            l.lost += 1;
            continue;
        };
        match job.status {
            JobStatus::Succeeded => l.succeeded += 1,
            s if s.is_terminal() => l.other_terminal += 1,
            _ => l.lost += 1,
        }
        if job.status != JobStatus::Succeeded {
            continue;
        }
        if successes(queue, *id).await != 1 {
            l.duplicated += 1;
        }
        let result = job.result.expect("a succeeded job has a result");
        let blob = store.get(&result.key).await.expect("the result reads back");
        assert_png(&blob.bytes, 64, 64, "result");
        l.orphan_objects += fleet
            .object_keys(&format!("out/alpha/{id}/"))
            .len()
            .saturating_sub(1);
    }
    l
}

/// Asserts the ledger: nothing lost or duplicated, every accepted job succeeded.
fn assert_clean(fleet: &Fleet, what: &str, l: &Ledger) {
    note(&format!("{what}: {l:?}"));
    assert_eq!((l.lost, l.duplicated), (0, 0), "{what}: {l:?}");
    assert_eq!(l.succeeded, l.accepted, "{what}: {l:?}\n{}", fleet.logs());
}

/// The coordinator's count of succeeded jobs (from its notifier) reaches `n` and stays there.
async fn assert_success_counter(fleet: &Fleet, n: usize) {
    let line = format!("kontext_job_latency_seconds_count{{status=\"succeeded\"}} {n}");
    let until = Instant::now() + DEADLINE;
    loop {
        let text = reqwest::get(format!("{}/metrics", fleet.url))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        if text.contains(&line) {
            return;
        }
        assert!(Instant::now() < until, "never saw {line:?}:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_at_random_lose_and_duplicate_nothing() {
    let fleet = Fleet::start(FleetOptions {
        workers: 3,
        lease_ttl: "1500ms",
        min_step_ms: 25,
        grace_period: "10s",
        ..FleetOptions::default()
    })
    .expect("fleet");
    let queue = fleet.queue().await.expect("queue");
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(submit_until_accepted(&fleet, &job(i)).await.0);
    }
    // Kill a worker that holds a running job each time the successes pass a mark, and start a
    // replacement. The victim is drawn from a seed printed here, so a failure can be replayed.
    let seed: u64 = rand::random();
    note(&format!("worker kills: seed {seed}"));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kills = 0;
    for (round, mark) in [4usize, 12, 20, 28].into_iter().enumerate() {
        wait_succeeded(&fleet, &queue, &ids, mark).await;
        let mut holders = Vec::new();
        for id in &ids {
            if let Ok(Some(j)) = queue.get(*id).await
                && j.status == JobStatus::Running
                && let Some(w) = j.worker
            {
                holders.push(w);
            }
        }
        let Some(victim) = holders.choose(&mut rng).cloned() else {
            continue;
        };
        fleet.with_worker(&victim, |w| w.kill());
        kills += 1;
        fleet
            .spawn_worker(&format!("r{round}"))
            .expect("replacement worker");
    }
    wait_all_terminal(&fleet, &queue, &ids).await;
    let l = ledger(&fleet, &queue, &ids).await;
    note(&format!("workers killed mid-job: {kills}"));
    assert_clean(&fleet, "random worker kills", &l);
    assert_success_counter(&fleet, l.succeeded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_from_its_aof_loses_no_accepted_job() {
    // appendfsync always: every acknowledged write is on disk before the reply (a process kill
    // would lose nothing under everysec either; docs/queue-protocol.md §Durability compares them).
    let mut redis =
        RedisServer::start(&["--appendonly", "yes", "--appendfsync", "always"]).expect("redis");
    let fleet = Fleet::start(FleetOptions {
        workers: 2,
        lease_ttl: "3s",
        redis_url: Some(redis.url().to_owned()),
        ..FleetOptions::default()
    })
    .expect("fleet");
    let queue = fleet.queue().await.expect("queue");
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(submit_until_accepted(&fleet, &job(i)).await.0);
    }
    wait_succeeded(&fleet, &queue, &ids, 3).await;
    redis.kill9().expect("kill -9 redis");
    let down = Instant::now();
    // While it is down a submit is refused (5xx), never accepted and then lost.
    let refused = http(KEY_ALPHA)
        .post(format!("{}/v1/jobs", fleet.url))
        .json(&job(99))
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert!(
        !matches!(refused, Ok(202)),
        "a submit was accepted with Redis down"
    );
    redis.restart().expect("restart redis from its AOF");
    note(&format!("redis down for {:?}", down.elapsed()));
    let mut refusals = 0;
    for i in 10..20 {
        let (id, r) = submit_until_accepted(&fleet, &job(i)).await;
        ids.push(id);
        refusals += r;
    }
    wait_all_terminal(&fleet, &queue, &ids).await;
    let l = ledger(&fleet, &queue, &ids).await;
    note(&format!("submits refused while reconnecting: {refusals}"));
    assert_clean(&fleet, "redis kill -9 + AOF restart", &l);
    assert_success_counter(&fleet, l.succeeded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_unreachable_for_10_seconds_mid_run_loses_nothing() {
    let s3 = S3Server::start_for_process().expect("private S3 server");
    let fleet = Fleet::start(FleetOptions {
        workers: 2,
        s3: Some(s3),
        ..FleetOptions::default()
    })
    .expect("fleet");
    let queue = fleet.queue().await.expect("queue");
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(submit_until_accepted(&fleet, &job(i)).await.0);
    }
    wait_succeeded(&fleet, &queue, &ids, 2).await;
    s3.set_down(true);
    // The fault lasts a fixed time: this sleep is its duration, not a synchronisation.
    tokio::time::sleep(Duration::from_secs(10)).await;
    s3.set_down(false);
    wait_all_terminal(&fleet, &queue, &ids).await;
    let retried = fleet.logs().matches("upload failed; retrying").count();
    note(&format!(
        "upload tries refused during the outage: {retried}"
    ));
    assert!(retried > 0, "the outage hit no upload:\n{}", fleet.logs());
    let l = ledger(&fleet, &queue, &ids).await;
    assert_clean(&fleet, "S3 down for 10 s", &l);
    assert_success_counter(&fleet, l.succeeded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_restarted_while_clients_poll_loses_nothing() {
    let fleet = Fleet::start(FleetOptions::default()).expect("fleet");
    let queue = fleet.queue().await.expect("queue");
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(submit_until_accepted(&fleet, &job(i)).await.0);
    }
    // A client polls every job through the API the whole time, tolerating the restart.
    let poller = {
        let url = fleet.url.clone();
        let ids = ids.clone();
        tokio::spawn(async move {
            let client = http(KEY_ALPHA);
            let until = Instant::now() + DEADLINE;
            let mut failed_polls = 0u32;
            let mut pending = ids;
            while !pending.is_empty() && Instant::now() < until {
                let mut still = Vec::new();
                for id in pending {
                    let status = match client.get(format!("{url}/v1/jobs/{id}")).send().await {
                        Ok(r) if r.status() == 200 => r
                            .json::<Value>()
                            .await
                            .ok()
                            .and_then(|v| v["status"].as_str().map(str::to_owned)),
                        _ => None,
                    };
                    match status.as_deref() {
                        Some("succeeded" | "failed" | "canceled" | "dead") => {}
                        Some(_) => still.push(id),
                        None => {
                            failed_polls += 1;
                            still.push(id);
                        }
                    }
                }
                pending = still;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (pending.len(), failed_polls)
        })
    };
    wait_succeeded(&fleet, &queue, &ids, 3).await;
    let gap = fleet.restart_coordinator().expect("restart");
    note(&format!(
        "coordinator restarted: stop to serving again in {gap:?}"
    ));
    for i in 12..18 {
        ids.push(submit_until_accepted(&fleet, &job(i)).await.0);
    }
    wait_all_terminal(&fleet, &queue, &ids).await;
    let (unseen, failed_polls) = poller.await.expect("poller");
    note(&format!(
        "polls that failed during the restart: {failed_polls}"
    ));
    assert_eq!(unseen, 0, "the polling client saw every job finish");
    let l = ledger(&fleet, &queue, &ids).await;
    assert_clean(&fleet, "coordinator restart", &l);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_loses_no_acknowledged_job() {
    let setup = tokio::task::spawn_blocking(SentinelSetup::start)
        .await
        .expect("setup task")
        .expect("a primary, a replica and a Sentinel");
    // Coordinator and workers reach Redis only through Sentinel; every submit waits until the
    // replica has it before it is acknowledged.
    let fleet = Fleet::start_with(
        FleetOptions {
            workers: 2,
            lease_ttl: "5s",
            redis_url: Some(setup.url()),
            ..FleetOptions::default()
        },
        |c| {
            if let QueueSource::Redis { wait_replicas, .. } = &mut c.queue {
                *wait_replicas = 1;
            }
        },
    )
    .expect("fleet");
    let queue = fleet.queue().await.expect("queue");
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(submit_until_accepted(&fleet, &job(i)).await.0);
    }
    wait_succeeded(&fleet, &queue, &ids, 3).await;
    setup.primary.kill9().expect("kill -9 the primary");
    let setup = std::sync::Arc::new(setup);
    let watching = std::sync::Arc::clone(&setup);
    let took = tokio::task::spawn_blocking(move || watching.wait_failover())
        .await
        .expect("failover task")
        .expect("Sentinel promotes the replica");
    note(&format!(
        "Sentinel failover took {took:?} after the primary was killed"
    ));
    let mut refusals = 0;
    for i in 10..20 {
        let (id, r) = submit_until_accepted(&fleet, &job(i)).await;
        ids.push(id);
        refusals += r;
    }
    wait_all_terminal(&fleet, &queue, &ids).await;
    let l = ledger(&fleet, &queue, &ids).await;
    note(&format!("submits refused during the failover: {refusals}"));
    assert_clean(&fleet, "Sentinel failover", &l);
    assert_success_counter(&fleet, l.succeeded).await;
}
