//! The admin API end to end (docs/security.md §Admin API): an `e2e-worker` process on real
//! Redis heartbeats into the worker registry; `GET /v1/admin/workers` lists it with an admin
//! key only (tenant keys get 401) and shows its job count move after a job; its record is gone
//! once its TTL has passed after it stopped; `GET /v1/admin/usage` reports the
//! job's engine time, image and steps for its tenant and day, and names a bad date range; a
//! drain request (`POST /v1/admin/workers/{id}/drain`) makes its worker exit cleanly and lands in
//! the audit log.

mod e2e_support;

use std::time::{Duration, Instant};

use e2e_support::{DEADLINE, Fleet, FleetOptions, KEY_ALPHA, http};
use kontext_coordinator::admin_auth::AdminAuth;
use kontext_proto::conformance::crash_until_dead;
use kontext_proto::{JobId, JobQueue};
use serde_json::{Value, json};

const ADMIN_KEY: &str = "admin-key-of-the-e2e-test-0123";

async fn workers(fleet: &Fleet, key: &str) -> (u16, Value) {
    let resp = http(key)
        .get(format!("{}/v1/admin/workers", fleet.url))
        .send()
        .await
        .expect("GET /v1/admin/workers");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON"))
}

/// How the audit log names `ADMIN_KEY`: by a prefix of its digest, never the key.
fn admin_actor() -> String {
    let admin = AdminAuth::from_arg(Some(ADMIN_KEY), false).expect("admin key");
    let actor = admin.actor(Some(ADMIN_KEY));
    assert!(
        actor.starts_with("key:") && !actor.contains(ADMIN_KEY),
        "{actor}"
    );
    actor
}

async fn admin_get(fleet: &Fleet, path: &str) -> (u16, Value) {
    let resp = http(ADMIN_KEY)
        .get(format!("{}{path}", fleet.url))
        .send()
        .await
        .expect("GET");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON"))
}

/// Reads the registry until `done` holds, within the deadline. A worker rewrites its record as
/// soon as a job starts or ends (`registry::beat`), right after the commit the caller waited
/// for, so this takes a few requests; nothing signals the write itself.
async fn workers_until(fleet: &Fleet, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let until = Instant::now() + DEADLINE;
    loop {
        let (status, v) = workers(fleet, ADMIN_KEY).await;
        assert_eq!(status, 200, "{v}");
        let list = v["workers"].as_array().cloned().unwrap_or_default();
        if done(&list) {
            return list;
        }
        assert!(
            Instant::now() < until,
            "{what}: still {list:#?}\n{}",
            fleet.logs()
        );
        tokio::task::yield_now().await;
    }
}

fn ids(list: &[Value]) -> Vec<&str> {
    list.iter().filter_map(|w| w["id"].as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_registry_lists_live_workers_to_admins_only() {
    let fleet = Fleet::start_with(
        FleetOptions {
            workers: 1,
            ..FleetOptions::default()
        },
        |c| {
            c.admin = AdminAuth::from_arg(Some(ADMIN_KEY), false).expect("admin key");
        },
    )
    .expect("fleet");

    for key in [KEY_ALPHA, ""] {
        let (status, v) = workers(&fleet, key).await;
        assert_eq!(
            (status, v["error"]["field"].as_str()),
            (401, Some("Authorization")),
            "{v}"
        );
    }

    // One job: its worker rewrites its record when the job ends and counts it.
    let v = fleet
        .post_accepted(
            "/v1/jobs",
            json!({"prompt": "a red circle", "width": 64, "height": 64, "steps": 2, "seed": 1}),
        )
        .await;
    let id: JobId = v["id"].as_str().expect("id").parse().expect("uuid");
    let queue = fleet.queue().await.expect("queue");
    let job = fleet
        .wait_record(&queue, id, "terminal", |j| j.status.is_terminal())
        .await
        .expect("terminal");
    let ran_on = job.worker.clone().expect("worker");
    assert_eq!(ran_on, "w0");
    let list = workers_until(&fleet, "the job counted", |l| {
        l.iter()
            .any(|w| w["id"] == ran_on.as_str() && w["jobs_succeeded"] == 1)
    })
    .await;
    let w = list
        .iter()
        .find(|w| w["id"] == ran_on.as_str())
        .expect("listed");
    assert!(w["current_job"].is_null(), "{w}");
    assert_eq!(ids(&list), ["w0"]);
    assert_eq!(w["device"], "cpu", "{w}");
    assert_eq!(w["draining"], false, "{w}");
    assert!(w["version"].as_str().is_some_and(|v| !v.is_empty()), "{w}");
    assert!(w["host"].as_str().is_some_and(|v| !v.is_empty()), "{w}");

    // Usage: counted in the job's commit, for its tenant and day.
    let (status, v) = admin_get(&fleet, "/v1/admin/usage").await;
    assert_eq!(status, 200, "{v}");
    let rows = v["usage"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!(rows[0]["tenant"], job.tenant.as_str(), "{v}");
    assert_eq!(
        (&rows[0]["images"], &rows[0]["steps"]),
        (&json!(1), &json!(2)),
        "{v}"
    );
    assert!(
        rows[0]["engine_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{v}"
    );
    assert_eq!(rows[0]["day"], v["to"], "{v}");
    for (query, status, field) in [
        ("from=yesterday", 400, "from"),
        ("from=2020-01-01&to=2026-12-01", 422, "from"),
        ("from=2026-12-02&to=2026-12-01", 422, "from"),
    ] {
        let (got, v) = admin_get(&fleet, &format!("/v1/admin/usage?{query}")).await;
        assert_eq!(
            (got, v["error"]["field"].as_str()),
            (status, Some(field)),
            "{query}: {v}"
        );
    }

    // The job's history: one attempt on w0, committed with its engine time.
    let (status, v) = admin_get(&fleet, &format!("/v1/admin/jobs/{id}")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["job"]["status"], "succeeded", "{v}");
    let attempts = v["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "{v}");
    assert_eq!(
        (
            &attempts[0]["worker"],
            &attempts[0]["ended"],
            &attempts[0]["epoch"]
        ),
        (&json!("w0"), &json!("succeeded"), &json!(1)),
        "{v}"
    );
    assert!(
        attempts[0]["engine_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{v}"
    );
    let states: Vec<&str> = v["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["status"].as_str())
        .collect();
    assert_eq!(states, ["queued", "running", "succeeded"], "{v}");
    let (status, v) = admin_get(&fleet, &format!("/v1/admin/jobs/{}", JobId::new())).await;
    assert_eq!(
        (status, v["error"]["field"].as_str()),
        (404, Some("id")),
        "{v}"
    );

    // The queue at a glance.
    let (status, v) = admin_get(&fleet, "/v1/admin/queue").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (&v["workers"], &v["running"]),
        (&json!(1), &json!(0)),
        "{v}"
    );
    // The job counted once in the last hour's throughput, its latency in a bucket.
    let hour = &v["throughput"]["hour"];
    assert_eq!(
        (&hour["succeeded"], &hour["failed"]),
        (&json!(1), &json!(0)),
        "{v}"
    );
    assert!(hour["p99_ms"].as_u64().is_some_and(|ms| ms >= 100), "{v}");
    let minutes = v["throughput"]["minutes"].as_array().expect("minutes");
    assert_eq!(minutes.len(), 60, "{v}");
    let counted: u64 = minutes.iter().filter_map(|m| m["succeeded"].as_u64()).sum();
    assert_eq!(counted, 1, "{v}");

    // An operator drains w0: it sees the request at its next heartbeat and exits cleanly.
    let drain = |id: &str| {
        http(ADMIN_KEY)
            .post(format!("{}/v1/admin/workers/{id}/drain", fleet.url))
            .send()
    };
    let resp = drain("no-such-worker").await.expect("POST drain");
    assert_eq!(resp.status().as_u16(), 404);
    let resp = drain("w0").await.expect("POST drain");
    assert_eq!(resp.status().as_u16(), 202);
    // The exchange, for the operator docs (shown with --nocapture).
    e2e_support::note(&format!(
        "POST /v1/admin/workers/w0/drain -> 202 {}",
        resp.text().await.expect("body")
    ));
    let exit = tokio::task::block_in_place(|| fleet.with_worker("w0", |w| w.wait_exit(DEADLINE)))
        .expect("w0 exits after the drain request");
    assert!(exit.success(), "{exit:?}\n{}", fleet.logs());
    let (status, v) = admin_get(&fleet, "/v1/admin/audit").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["entries"][0]["action"], "drain_worker", "{v}");
    assert_eq!(v["entries"][0]["target"], "w0", "{v}");
    assert_eq!(v["entries"][0]["actor"], admin_actor(), "{v}");

    // Nobody writes w0's record any more: it is gone once its TTL (the lease TTL, 3 s) has
    // passed — read at that time rather than waited for.
    let later = kontext_proto::clock::now_ms() + 3_001;
    let left = queue.workers(later).await.expect("workers");
    assert!(left.is_empty(), "{left:?}");
}

/// Dead letters over HTTP: a job crashes its way to the dead-letter stream (claimed by a fake
/// worker that never finishes, reaped three times), is listed, re-queued as a new job its tenant
/// can see, and both actions refuse to run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_requeued_by_admins() {
    let fleet = Fleet::start_with(
        FleetOptions {
            workers: 0,
            ..FleetOptions::default()
        },
        |c| {
            c.admin = AdminAuth::from_arg(Some(ADMIN_KEY), false).expect("admin key");
        },
    )
    .expect("fleet");
    let v = fleet
        .post_accepted(
            "/v1/jobs",
            json!({"prompt": "poison", "width": 64, "height": 64, "steps": 2, "seed": 3}),
        )
        .await;
    let id: JobId = v["id"].as_str().expect("id").parse().expect("uuid");
    let queue = fleet.queue().await.expect("queue");
    // Workers named doomed-0..2, as the history below expects.
    let mut t = kontext_proto::clock::now_ms();
    for crash in 0..kontext_proto::policy::MAX_CRASHES {
        let claimed = queue
            .claim(
                &format!("doomed-{crash}"),
                Duration::from_secs(1),
                t,
                Duration::ZERO,
            )
            .await
            .expect("claim")
            .expect("the job is claimable");
        assert_eq!(claimed.job.id, id);
        t += 2_000;
        queue.reap(t).await.expect("reap");
    }

    let (status, v) = admin_get(&fleet, "/v1/admin/dead").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["dead_letters"][0]["job_id"], id.to_string(), "{v}");
    // Its history: three claims, each lease lost; the third made it dead.
    let (status, v) = admin_get(&fleet, &format!("/v1/admin/jobs/{id}")).await;
    assert_eq!(status, 200, "{v}");
    let ends: Vec<(&str, &str, &str)> = v["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| {
            let s = |k: &str| a[k].as_str().unwrap_or("");
            (s("worker"), s("ended"), s("outcome"))
        })
        .collect();
    assert_eq!(
        ends,
        [
            ("doomed-0", "lease_lost", "queued"),
            ("doomed-1", "lease_lost", "queued"),
            ("doomed-2", "lease_lost", "dead")
        ],
        "{v}"
    );
    let requeue = || {
        http(ADMIN_KEY)
            .post(format!("{}/v1/admin/dead/{id}/requeue", fleet.url))
            .send()
    };
    let resp = requeue().await.expect("POST requeue");
    assert_eq!(resp.status().as_u16(), 201);
    let v: Value = resp.json().await.expect("JSON");
    e2e_support::note(&format!("POST /v1/admin/dead/{id}/requeue -> 201 {v}"));
    let new_id = v["new_id"].as_str().expect("new id").to_owned();
    let resp = requeue().await.expect("POST requeue");
    assert_eq!(
        resp.status().as_u16(),
        404,
        "a dead letter is re-queued once"
    );
    let job: Value = http(KEY_ALPHA)
        .get(format!("{}/v1/jobs/{new_id}", fleet.url))
        .send()
        .await
        .expect("GET job")
        .json()
        .await
        .expect("JSON");
    assert_eq!(job["status"], "queued", "{job}");
    assert_eq!(job["prompt"], "poison", "{job}");
    let resp = http(ADMIN_KEY)
        .delete(format!("{}/v1/admin/dead/{id}", fleet.url))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(resp.status().as_u16(), 404, "already re-queued");
    let (_, v) = admin_get(&fleet, "/v1/admin/audit").await;
    assert_eq!(v["entries"][0]["action"], "requeue_dead", "{v}");
    assert_eq!(v["entries"][0]["actor"], admin_actor(), "{v}");
    let (_, v) = admin_get(&fleet, "/v1/admin/dead").await;
    assert_eq!(v["dead_letters"], json!([]), "{v}");

    // Both jobs across tenants, newest first; filtered by status, tenant and time.
    let tenant = queue.get(id).await.expect("get").expect("dead job").tenant;
    let listed = |v: &Value| -> Vec<String> {
        v["jobs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|j| j["id"].as_str())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    let (status, v) = admin_get(&fleet, "/v1/admin/jobs").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(listed(&v), [new_id.clone(), id.to_string()], "{v}");
    assert_eq!(v["jobs"][1]["crashes"], 3, "{v}");
    assert_eq!(v["jobs"][1]["tenant"], tenant.as_str(), "{v}");
    assert!(v["next_cursor"].is_null(), "{v}");
    let created = v["jobs"][0]["created_at_ms"]
        .as_u64()
        .expect("created_at_ms");
    for (query, want) in [
        ("status=dead".to_owned(), vec![id.to_string()]),
        (
            format!("status=queued&tenant={tenant}"),
            vec![new_id.clone()],
        ),
        ("tenant=nobody".to_owned(), vec![]),
        (format!("from={created}"), vec![new_id.clone()]),
        (format!("to={}", created - 1), vec![id.to_string()]),
    ] {
        let (status, v) = admin_get(&fleet, &format!("/v1/admin/jobs?{query}")).await;
        assert_eq!((status, listed(&v)), (200, want), "{query}: {v}");
    }
    let (_, v) = admin_get(&fleet, "/v1/admin/jobs?limit=1").await;
    let cursor = v["next_cursor"]
        .as_str()
        .expect("a cursor after a full page");
    let (_, v) = admin_get(&fleet, &format!("/v1/admin/jobs?limit=1&cursor={cursor}")).await;
    assert_eq!(listed(&v), [id.to_string()], "{v}");
    for (query, field) in [
        ("status=lost", "status"),
        ("from=yesterday", "from"),
        ("from=5&to=4", "from"),
        ("to=9007199254740992", "to"),
        ("limit=201", "limit"),
        ("cursor=nope", "cursor"),
    ] {
        let (status, v) = admin_get(&fleet, &format!("/v1/admin/jobs?{query}")).await;
        assert_eq!(
            (status, v["error"]["field"].as_str()),
            (400, Some(field)),
            "{query}: {v}"
        );
    }
}

async fn admin_post(fleet: &Fleet, path: &str) -> (u16, Value) {
    let resp = http(ADMIN_KEY)
        .post(format!("{}{path}", fleet.url))
        .send()
        .await
        .expect("POST");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON"))
}

/// Bulk actions over HTTP: dead letters re-queued by tenant (then nothing left to dismiss), bad
/// filters named; all of a tenant's queued jobs canceled in one call, another tenant's left
/// queued; each action in the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_and_queued_jobs_are_handled_in_bulk_by_admins() {
    let fleet = Fleet::start_with(
        FleetOptions {
            workers: 0,
            ..FleetOptions::default()
        },
        |c| {
            c.admin = AdminAuth::from_arg(Some(ADMIN_KEY), false).expect("admin key");
        },
    )
    .expect("fleet");
    let job = json!({"prompt": "bulk", "width": 64, "height": 64, "steps": 2, "seed": 4});
    let v = fleet.post_accepted("/v1/jobs", job.clone()).await;
    let dead: JobId = v["id"].as_str().expect("id").parse().expect("uuid");
    let queue = fleet.queue().await.expect("queue");
    crash_until_dead(&queue, dead, kontext_proto::clock::now_ms()).await;
    let alpha = queue.get(dead).await.expect("get").expect("job").tenant;
    let queued: Vec<String> = {
        let mut ids = Vec::new();
        for _ in 0..2 {
            let v = fleet.post_accepted("/v1/jobs", job.clone()).await;
            ids.push(v["id"].as_str().expect("id").to_owned());
        }
        ids
    };
    let resp = http(e2e_support::KEY_BETA)
        .post(format!("{}/v1/jobs", fleet.url))
        .json(&job)
        .send()
        .await
        .expect("POST as beta");
    let (status, v) = e2e_support::json_of(resp).await;
    assert_eq!(status, 202, "{v}");
    let beta_job = v["id"].as_str().expect("id").to_owned();

    let (status, v) = admin_post(&fleet, "/v1/admin/dead/requeue?tenant=nobody").await;
    assert_eq!(
        (status, &v["count"], &v["more"]),
        (200, &json!(0), &json!(false)),
        "{v}"
    );
    let (status, v) = admin_post(&fleet, &format!("/v1/admin/dead/requeue?tenant={alpha}")).await;
    assert_eq!((status, &v["count"]), (200, &json!(1)), "{v}");
    assert_eq!(v["affected"][0]["id"], dead.to_string(), "{v}");
    let requeued = v["affected"][0]["new_id"]
        .as_str()
        .expect("new id")
        .to_owned();
    let (_, v) = admin_post(&fleet, "/v1/admin/dead/dismiss").await;
    assert_eq!(v["count"], 0, "re-queued already: {v}");
    for (query, field) in [
        ("older_than=soon", "older_than"),
        ("newer_than=-1", "newer_than"),
        ("cursor=zz", "cursor"),
    ] {
        let (status, v) = admin_post(&fleet, &format!("/v1/admin/dead/requeue?{query}")).await;
        assert_eq!(
            (status, v["error"]["field"].as_str()),
            (400, Some(field)),
            "{query}: {v}"
        );
    }

    // Every queued job of alpha, the re-queued one included; beta's stays.
    let path = format!("/v1/admin/tenants/{alpha}/cancel-queued");
    let (status, v) = admin_post(&fleet, &path).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (&v["canceled"], &v["running_untouched"], &v["more"]),
        (&json!(3), &json!(0), &json!(false)),
        "{v}"
    );
    let mut canceled: Vec<String> = v["canceled_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .filter_map(|i| i.as_str().map(String::from))
        .collect();
    canceled.sort();
    let mut expected = vec![requeued, queued[0].clone(), queued[1].clone()];
    expected.sort();
    assert_eq!(canceled, expected, "{v}");
    let job: Value = http(KEY_ALPHA)
        .get(format!("{}/v1/jobs/{}", fleet.url, queued[0]))
        .send()
        .await
        .expect("GET job")
        .json()
        .await
        .expect("JSON");
    assert_eq!(job["status"], "canceled", "{job}");
    let (_, v) = admin_get(&fleet, &format!("/v1/admin/jobs/{beta_job}")).await;
    assert_eq!(v["job"]["status"], "queued", "{v}");
    let (_, v) = admin_get(&fleet, "/v1/admin/audit?limit=4").await;
    let actions: Vec<&str> = v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "cancel_queued",
            "cancel_queued",
            "cancel_queued",
            "requeue_dead"
        ],
        "{v}"
    );
    let (status, v) = admin_post(&fleet, &format!("{path}?cursor=nope")).await;
    assert_eq!(
        (status, v["error"]["field"].as_str()),
        (400, Some("cursor")),
        "{v}"
    );
}
