//! Chains (storyboards) end to end: real Redis, the S3 server, the coordinator and two
//! `e2e-worker` processes running the tiny model.
//!
//! - 10-turn chains (`carry: image` and `carry: latent`) complete in order, each turn editing the
//!   previous turn's stored output (for `latent`, the stored latent object, checked by bytes and
//!   shape); the same chain run again reproduces every frame bit for bit;
//! - fork from turn 3 shares turns 1–3; appending to a finished chain runs from its last frame;
//! - both failure policies, with a real worker-side failure: a turn asking more steps than the
//!   engine allows passes the coordinator (configured above the engine's limit) and fails
//!   `invalid_input` on the worker;
//! - a worker SIGKILLed during turn 5: the chain resumes on the other worker and completes, with
//!   no turn duplicated.
//!
//! Affinity (turns claimed by the worker of the turn before) and the workers' cache hit rates are
//! printed, not asserted: they depend on scheduling.

mod e2e_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use e2e_support::{DEADLINE, Fleet, FleetOptions};
use kontext_proto::{
    ChainId, ChainRecord, ChainStatus, JobQueue, JobRecord, JobStatus, TurnState, chain,
};
use kontext_storage::{BlobStore, ObjectKey};
use serde_json::{Value, json};

/// Steps a turn asks for to fail on the worker (the engine allows at most 200).
const TOO_MANY_STEPS: u32 = 250;

async fn create(fleet: &Fleet, body: Value) -> ChainId {
    let v = fleet.post_accepted("/v1/chains", body).await;
    v["id"].as_str().expect("id").parse().expect("chain id")
}

/// Polls the chain until it is no longer running (deadline `DEADLINE`).
async fn finished(fleet: &Fleet, queue: &impl JobQueue, id: ChainId) -> ChainRecord {
    let until = Instant::now() + DEADLINE;
    loop {
        let c = queue
            .get_chain(id)
            .await
            .expect("get_chain")
            .expect("chain");
        if c.status != ChainStatus::Running {
            return c;
        }
        assert!(
            Instant::now() < until,
            "chain {id} still running after {DEADLINE:?}: {c:#?}\n{}",
            fleet.logs()
        );
        // Wake on the live turn's next event rather than sleeping.
        let live = &c.turns[c.current as usize - 1];
        let _ = queue
            .events(live.job_id, None, Duration::from_millis(200))
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn job(c: &ChainRecord, turn: u32) -> &JobRecord {
    c.turns[turn as usize - 1]
        .job
        .as_ref()
        .unwrap_or_else(|| panic!("turn {turn} has no job: {c:#?}"))
}

async fn object(fleet: &Fleet, key: &ObjectKey) -> Vec<u8> {
    let store = fleet.store().await.expect("store");
    store
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("object {key}: {e}"))
        .bytes
        .to_vec()
}

/// Every turn succeeded once, in order, each editing the previous turn's stored output.
async fn assert_chained(fleet: &Fleet, c: &ChainRecord, latent: bool) {
    assert_eq!(c.status, ChainStatus::Succeeded, "{c:#?}\n{}", fleet.logs());
    let mut finished_at = 0;
    for t in &c.turns {
        let j = job(c, t.turn);
        assert_eq!(j.status, JobStatus::Succeeded, "turn {}", t.turn);
        assert_eq!(j.attempts, 1, "turn {} ran once", t.turn);
        let started = j.started_at.expect("started");
        assert!(
            started >= finished_at,
            "turn {} started before turn {} ended",
            t.turn,
            t.turn - 1
        );
        finished_at = j.finished_at.expect("finished");
        let result = j.result.as_ref().expect("result");
        // Exactly one stored image (plus its latent) per turn: nothing ran twice.
        let keys = fleet.object_keys(&format!("out/alpha/{}/", j.id));
        let expected = if latent { 2 } else { 1 };
        assert_eq!(keys.len(), expected, "turn {}: {keys:?}", t.turn);
        if t.turn == 1 {
            continue;
        }
        let prev = job(c, t.turn - 1).result.as_ref().expect("previous result");
        let input = j.spec.input.as_ref().expect("an edit");
        assert_eq!(
            input.key,
            prev.key,
            "turn {} edits turn {}'s image",
            t.turn,
            t.turn - 1
        );
        if latent {
            let carried = j.spec.input_latent_key.as_ref().expect("a carried latent");
            assert_eq!(Some(carried), prev.latent_key.as_ref());
            let bytes = object(fleet, carried).await;
            let values = kontext_worker::latents::decode(&bytes).expect("a latents file");
            let tokens = (j.spec.width / 16 * (j.spec.height / 16)) as usize;
            assert_eq!(
                values.len(),
                tokens * 64,
                "turn {}'s context latent",
                t.turn
            );
        } else {
            assert_eq!(j.spec.input_latent_key, None);
        }
        let _ = result;
    }
}

/// The frames (PNG bytes) of a chain's turns.
async fn frames(fleet: &Fleet, c: &ChainRecord) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for t in &c.turns {
        let key = &job(c, t.turn).result.as_ref().expect("result").key;
        out.push(object(fleet, key).await);
    }
    out
}

/// (turns claimed by the worker of the turn before, turns after the first).
fn affinity(c: &ChainRecord) -> (usize, usize) {
    let workers: Vec<Option<&str>> = c
        .turns
        .iter()
        .map(|t| t.job.as_ref().and_then(|j| j.worker.as_deref()))
        .collect();
    let pairs = workers
        .windows(2)
        .filter(|w| w[0].is_some() && w[1].is_some());
    let total = pairs.clone().count();
    (pairs.filter(|w| w[0] == w[1]).count(), total)
}

/// The workers' cache counters, read from each worker's /metrics (its address is in its log).
async fn cache_counters(fleet: &Fleet) -> HashMap<String, f64> {
    let logs = {
        let workers = fleet.workers.lock().expect("workers");
        workers.iter().map(|w| w.log_text()).collect::<Vec<_>>()
    };
    let mut sums = HashMap::new();
    for log in logs {
        let plain = strip_ansi(&log);
        let Some(line) = plain
            .lines()
            .find(|l| l.contains("health and metrics endpoint listening"))
        else {
            continue;
        };
        let Some(addr) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
        else {
            continue;
        };
        let Ok(resp) = reqwest::get(format!("http://{addr}/metrics")).await else {
            continue;
        };
        let text = resp.text().await.unwrap_or_default();
        for l in text
            .lines()
            .filter(|l| l.starts_with("kontext_worker_cache_"))
        {
            if let Some((name, value)) = l.rsplit_once(' ')
                && let Ok(v) = value.parse::<f64>()
            {
                *sums.entry(name.to_owned()).or_insert(0.0) += v;
            }
        }
    }
    sums
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn ten_turns(carry: &str, seed: u64) -> Value {
    let turns: Vec<Value> = (1..=10)
        .map(|i| json!({"prompt": format!("storyboard panel {i}: the fox moves on")}))
        .collect();
    json!({"prompt": "a red fox in the snow", "turns": turns[1..], "carry": carry,
           "seed": seed, "width": 64, "height": 64, "steps": 2})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_carry_state_across_a_fleet() {
    let fleet = Fleet::start_with(
        FleetOptions {
            workers: 2,
            lease_ttl: "3s",
            min_step_ms: 0,
            grace_period: "10s",
            ..FleetOptions::default()
        },
        |config| config.limits.job.max_steps = TOO_MANY_STEPS,
    )
    .expect("fleet");
    let queue = fleet.queue().await.expect("queue");
    let mut affinity_hits = (0, 0);
    let mut tally = |c: &ChainRecord| {
        let (hit, n) = affinity(c);
        affinity_hits = (affinity_hits.0 + hit, affinity_hits.1 + n);
    };

    // 10 turns carrying images.
    let images = create(&fleet, ten_turns("image", 5)).await;
    let images = finished(&fleet, &queue, images).await;
    assert_eq!(images.turns.len(), 10);
    assert_chained(&fleet, &images, false).await;
    tally(&images);

    // 10 turns carrying latents, then the same chain again: every frame bit for bit.
    let latent = create(&fleet, ten_turns("latent", 6)).await;
    let latent = finished(&fleet, &queue, latent).await;
    assert_chained(&fleet, &latent, true).await;
    tally(&latent);
    let again = create(&fleet, ten_turns("latent", 6)).await;
    let again = finished(&fleet, &queue, again).await;
    assert_chained(&fleet, &again, true).await;
    tally(&again);
    for (i, (a, b)) in frames(&fleet, &latent)
        .await
        .iter()
        .zip(frames(&fleet, &again).await.iter())
        .enumerate()
    {
        assert!(a == b, "turn {}: the re-run frame differs", i + 1);
    }
    let seeds = |c: &ChainRecord| c.turns.iter().map(|t| t.spec.seed).collect::<Vec<_>>();
    assert_eq!(seeds(&latent), seeds(&again));
    assert_eq!(
        latent.turns[3].spec.seed,
        chain::turn_seed(6, 4),
        "derived seeds"
    );
    assert_ne!(
        frames(&fleet, &images).await[1],
        frames(&fleet, &latent).await[1]
    );

    // Fork from turn 3: turns 1-3 shared, turn 4 edits turn 3's frame.
    let fork = fleet
        .post_accepted(
            &format!("/v1/chains/{}/fork", images.id),
            json!({"from_turn": 3, "turns": [{"prompt": "a different ending"}]}),
        )
        .await;
    let fork: ChainId = fork["id"].as_str().expect("id").parse().expect("id");
    let fork = finished(&fleet, &queue, fork).await;
    assert_eq!(fork.status, ChainStatus::Succeeded, "{fork:#?}");
    assert_eq!(fork.turns.len(), 4);
    for turn in 1..=3 {
        assert_eq!(
            fork.turns[turn - 1].job_id,
            images.turns[turn - 1].job_id,
            "turn {turn} shared"
        );
    }
    let branch = job(&fork, 4);
    let third = job(&images, 3).result.as_ref().expect("result");
    assert_eq!(
        branch.spec.input.as_ref().map(|i| i.key.as_str()),
        Some(third.key.as_str())
    );
    assert_ne!(branch.id, images.turns[3].job_id);

    // Appending to a finished chain: it runs again from its last frame.
    let added = fleet
        .post_accepted(
            &format!("/v1/chains/{}/turns", images.id),
            json!({"prompt": "an epilogue"}),
        )
        .await;
    assert_eq!(
        (added["turn"].as_u64(), added["started"].as_bool()),
        (Some(11), Some(true))
    );
    let extended = finished(&fleet, &queue, images.id).await;
    assert_eq!(extended.turns.len(), 11);
    assert_chained(&fleet, &extended, false).await;

    // Failure policies, with turn 2 failing on the worker.
    let failing = |policy: &str| {
        json!({"prompt": "a fox", "turns": [{"prompt": "too long", "steps": TOO_MANY_STEPS},
            {"prompt": "after the failure"}, {"prompt": "the end"}],
            "on_failure": policy, "width": 64, "height": 64, "steps": 2, "seed": 8})
    };
    let stop = create(&fleet, failing("stop")).await;
    let stop = finished(&fleet, &queue, stop).await;
    assert_eq!(stop.status, ChainStatus::Failed, "{stop:#?}");
    let failed = job(&stop, 2);
    assert_eq!(failed.status, JobStatus::Failed);
    let err = failed.error.as_ref().expect("error");
    assert_eq!(
        err.kind,
        kontext_proto::JobErrorKind::InvalidInput,
        "{err:?}"
    );
    for turn in &stop.turns[2..] {
        assert_eq!(stop.turn_state(turn), TurnState::Skipped);
        assert!(
            queue.get(turn.job_id).await.expect("get").is_none(),
            "never created"
        );
    }
    let cont = create(&fleet, failing("continue")).await;
    let cont = finished(&fleet, &queue, cont).await;
    assert_eq!(cont.status, ChainStatus::Succeeded, "{cont:#?}");
    assert_eq!(job(&cont, 2).status, JobStatus::Failed);
    let first = &job(&cont, 1).result.as_ref().expect("result").key;
    let resumed = job(&cont, 3).spec.input.as_ref().expect("input");
    assert_eq!(
        &resumed.key, first,
        "turn 3 edits the last good frame (turn 1)"
    );
    assert_eq!(job(&cont, 4).status, JobStatus::Succeeded);
    tally(&fork);

    let caches = cache_counters(&fleet).await;
    let ratio = |cache: &str| {
        let hits = caches
            .get(&format!(
                "kontext_worker_cache_hits_total{{cache=\"{cache}\"}}"
            ))
            .copied()
            .unwrap_or(0.0);
        let misses = caches
            .get(&format!(
                "kontext_worker_cache_misses_total{{cache=\"{cache}\"}}"
            ))
            .copied()
            .unwrap_or(0.0);
        format!(
            "{hits}/{} = {:.2}",
            hits + misses,
            hits / (hits + misses).max(1.0)
        )
    };
    println!(
        "affinity: {}/{} turns claimed by the worker of the turn before ({:.2}); \
         cache hits/lookups (both workers): text {}, context {}",
        affinity_hits.0,
        affinity_hits.1,
        affinity_hits.0 as f64 / affinity_hits.1.max(1) as f64,
        ratio("text"),
        ratio("context"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_during_turn_5_leaves_the_chain_to_the_other_worker() {
    let fleet = Fleet::start(FleetOptions {
        workers: 2,
        lease_ttl: "1500ms",
        min_step_ms: 40,
        grace_period: "10s",
        ..FleetOptions::default()
    })
    .expect("fleet");
    let queue = fleet.queue().await.expect("queue");
    let turns: Vec<Value> = (2..=8)
        .map(|i| json!({"prompt": format!("panel {i}")}))
        .collect();
    let id = create(
        &fleet,
        json!({"prompt": "panel 1", "turns": turns, "carry": "latent", "seed": 21,
               "width": 64, "height": 64, "steps": 12}),
    )
    .await;
    // Turn 5 running with progress: kill its worker.
    let chain = queue.get_chain(id).await.expect("get").expect("chain");
    let fifth = chain.turns[4].job_id;
    let until = Instant::now() + DEADLINE;
    let running = loop {
        if let Some(j) = queue.get(fifth).await.expect("get")
            && j.status == JobStatus::Running
            && j.progress > 0.0
        {
            break j;
        }
        assert!(Instant::now() < until, "turn 5 never ran\n{}", fleet.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let victim = running.worker.clone().expect("worker");
    fleet.with_worker(&victim, |w| w.kill());

    let c = finished(&fleet, &queue, id).await;
    assert_chained_after_crash(&fleet, &c, &victim).await;
    let (hit, n) = affinity(&c);
    println!(
        "affinity with a crash at turn 5: {hit}/{n} turns claimed by the previous turn's worker"
    );
}

async fn assert_chained_after_crash(fleet: &Fleet, c: &ChainRecord, victim: &str) {
    assert_eq!(c.status, ChainStatus::Succeeded, "{c:#?}\n{}", fleet.logs());
    let fifth = job(c, 5);
    assert_eq!((fifth.crashes, fifth.attempts), (1, 2), "{fifth:#?}");
    assert_ne!(
        fifth.worker.as_deref(),
        Some(victim),
        "the other worker finished turn 5"
    );
    for t in &c.turns {
        let j = job(c, t.turn);
        assert_eq!(j.status, JobStatus::Succeeded);
        // One image and one latent per turn: the killed attempt never stored anything.
        let keys = fleet.object_keys(&format!("out/alpha/{}/", j.id));
        assert_eq!(keys.len(), 2, "turn {}: {keys:?}", t.turn);
        if t.turn > 1 {
            let prev = job(c, t.turn - 1).result.as_ref().expect("result");
            assert_eq!(j.spec.input_latent_key, prev.latent_key, "turn {}", t.turn);
        }
    }
    // No turn duplicated: the tenant has exactly these 8 jobs.
    let queue = fleet.queue().await.expect("queue");
    let page = queue.list("alpha", None, 100).await.expect("list");
    assert_eq!(
        page.jobs.len(),
        8,
        "{:?}",
        page.jobs.iter().map(|j| j.id).collect::<Vec<_>>()
    );
}
