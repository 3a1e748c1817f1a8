//! The chain API over HTTP with a fake in-test worker: turns run in order, each editing the
//! previous output; append, fork, cancel; validation errors name the field; tenants are apart.

mod common;

use common::{KEY_A, KEY_B, start};
use kontext_proto::chain::turn_seed;
use serde_json::{Value, json};

fn ids(v: &Value) -> Vec<String> {
    v["job_ids"]
        .as_array()
        .expect("job_ids")
        .iter()
        .map(|j| j.as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn a_text_to_image_chain_runs_its_turns_in_order() {
    let s = start(|_| {}).await;
    let body = json!({"prompt": "a fox", "turns": [{"prompt": "in the snow"},
        {"prompt": "at night", "seed": 99}], "seed": 5, "width": 128, "height": 96, "steps": 2});
    let r = s.post_json("/v1/chains", KEY_A, &body).await;
    assert_eq!(r.status, 202, "{}", r.json);
    let chain_id = r.json["id"].as_str().expect("id").to_owned();
    assert_eq!(r.json["status"], "running");
    let planned = ids(&r.json);
    assert_eq!(planned.len(), 3);
    for id in &planned {
        assert_eq!(s.work_one().await.to_string(), *id, "turns run in order");
    }
    let c = s.get(&format!("/v1/chains/{chain_id}"), KEY_A).await;
    assert_eq!(c.status, 200, "{}", c.json);
    let v = &c.json;
    assert_eq!(
        (v["status"].as_str(), v["seed"].as_u64()),
        (Some("succeeded"), Some(5))
    );
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(128), Some(96))
    );
    let turns = v["turns"].as_array().expect("turns");
    assert_eq!(turns.len(), 3);
    assert_eq!(
        turns[0]["input_key"],
        Value::Null,
        "turn 1 is text-to-image"
    );
    for (i, t) in turns.iter().enumerate() {
        assert_eq!(t["turn"].as_u64(), Some(i as u64 + 1));
        assert_eq!(t["state"], "succeeded");
        assert_eq!(t["job_id"], planned[i].as_str());
        assert!(t["job"]["result"]["url"].is_string(), "{t}");
        if i > 0 {
            assert_eq!(
                t["input_key"],
                turns[i - 1]["result_key"],
                "turn {} edits turn {i}",
                i + 1
            );
            assert_eq!(t["job"]["kind"], "edit");
        }
    }
    assert_eq!(turns[1]["seed"].as_u64(), Some(turn_seed(5, 2)));
    assert_eq!(turns[2]["seed"].as_u64(), Some(99));
    assert_eq!(turns[2]["steps"].as_u64(), Some(2));
    // The job API shows turn jobs like any other job.
    let job = s.get(&format!("/v1/jobs/{}", planned[1]), KEY_A).await;
    assert_eq!(
        (job.status, job.json["status"].as_str()),
        (200, Some("succeeded"))
    );
}

#[tokio::test]
async fn append_fork_and_cancel() {
    let s = start(|_| {}).await;
    let body = json!({"prompt": "a fox", "turns": [{"prompt": "red"}, {"prompt": "blue"}],
        "width": 64, "height": 64, "steps": 1});
    let r = s.post_json("/v1/chains", KEY_A, &body).await;
    assert_eq!(r.status, 202, "{}", r.json);
    let id = r.json["id"].as_str().expect("id").to_owned();
    let planned = ids(&r.json);
    for _ in 0..3 {
        s.work_one().await;
    }
    let add = s
        .post_json(
            &format!("/v1/chains/{id}/turns"),
            KEY_A,
            &json!({"prompt": "green"}),
        )
        .await;
    assert_eq!(add.status, 202, "{}", add.json);
    assert_eq!(
        (add.json["turn"].as_u64(), add.json["started"].as_bool()),
        (Some(4), Some(true))
    );
    assert_eq!(
        s.work_one().await.to_string(),
        add.json["job_id"].as_str().expect("job id")
    );
    let c = s.get(&format!("/v1/chains/{id}"), KEY_A).await.json;
    assert_eq!(c["status"], "succeeded");
    assert_eq!(c["turns"][3]["input_key"], c["turns"][2]["result_key"]);
    assert_eq!(
        c["turns"][3]["steps"].as_u64(),
        Some(1),
        "inherits the last turn's steps"
    );
    let blank = s
        .post_json(
            &format!("/v1/chains/{id}/turns"),
            KEY_A,
            &json!({"prompt": " "}),
        )
        .await;
    blank.assert_error(422, "prompt");

    let f = s
        .post_json(
            &format!("/v1/chains/{id}/fork"),
            KEY_A,
            &json!({"from_turn": 2, "turns": [{"prompt": "purple"}]}),
        )
        .await;
    assert_eq!(f.status, 202, "{}", f.json);
    let fork = f.json["id"].as_str().expect("id").to_owned();
    let fork_jobs = ids(&f.json);
    assert_eq!(fork_jobs[..2], planned[..2], "the fork shares turns 1-2");
    assert_eq!(s.work_one().await.to_string(), fork_jobs[2]);
    let fc = s.get(&format!("/v1/chains/{fork}"), KEY_A).await.json;
    assert_eq!(
        (fc["status"].as_str(), fc["forked_from"]["turn"].as_u64()),
        (Some("succeeded"), Some(2))
    );
    assert_eq!(fc["forked_from"]["chain_id"], id.as_str());
    assert_eq!(
        fc["turns"][2]["input_key"], c["turns"][1]["result_key"],
        "branches at turn 2"
    );
    let far = s
        .post_json(
            &format!("/v1/chains/{id}/fork"),
            KEY_A,
            &json!({"from_turn": 9}),
        )
        .await;
    far.assert_error(409, "from_turn");

    let r = s
        .post_json(
            "/v1/chains",
            KEY_A,
            &json!({"prompt": "x", "turns": [{"prompt": "y"}],
        "width": 64, "height": 64}),
        )
        .await;
    let doomed = r.json["id"].as_str().expect("id").to_owned();
    let cancel = s
        .post_json(&format!("/v1/chains/{doomed}/cancel"), KEY_A, &json!({}))
        .await;
    assert_eq!(
        (cancel.status, cancel.json["status"].as_str()),
        (200, Some("CANCELED")),
        "{}",
        cancel.json
    );
    let c = s.get(&format!("/v1/chains/{doomed}"), KEY_A).await.json;
    assert_eq!(
        (c["status"].as_str(), c["turns"][0]["state"].as_str()),
        (Some("canceled"), Some("canceled"))
    );
    assert_eq!(c["turns"][1]["state"], "skipped");
    let late = s
        .post_json(
            &format!("/v1/chains/{doomed}/turns"),
            KEY_A,
            &json!({"prompt": "z"}),
        )
        .await;
    late.assert_error(409, "id");
}

#[tokio::test]
async fn bad_chains_name_the_field_and_tenants_are_apart() {
    let s = start(|_| {}).await;
    let cases = [
        (json!({"turns": []}), "turns"),
        (
            json!({"turns": [{"prompt": "a"}, {"prompt": "b", "steps": 500}]}),
            "turns[1].steps",
        ),
        (json!({"turns": [{"prompt": ""}]}), "turns[0].prompt"),
        (
            json!({"turns": [{"prompt": "a"}], "carry": "pixels"}),
            "carry",
        ),
        (
            json!({"turns": [{"prompt": "a"}], "on_failure": "retry"}),
            "on_failure",
        ),
        (
            json!({"prompt": "a", "input_image": "x", "turns": [{"prompt": "b"}]}),
            "prompt",
        ),
    ];
    for (body, field) in cases {
        s.post_json("/v1/chains", KEY_A, &body)
            .await
            .assert_error(422, field);
    }
    assert!(s.stored_inputs().is_empty(), "a bad request stores nothing");

    let r = s
        .post_json(
            "/v1/chains",
            KEY_A,
            &json!({"turns": [{"prompt": "a"}],
        "width": 64, "height": 64}),
        )
        .await;
    let id = r.json["id"].as_str().expect("id").to_owned();
    s.get(&format!("/v1/chains/{id}"), KEY_B)
        .await
        .assert_error(404, "id");
    s.get("/v1/chains/not-a-uuid", KEY_A)
        .await
        .assert_error(404, "id");
    for path in ["turns", "fork", "cancel"] {
        let r = s
            .post_json(
                &format!("/v1/chains/{id}/{path}"),
                KEY_B,
                &json!({"prompt": "mine now", "from_turn": 1}),
            )
            .await;
        r.assert_error(404, "id");
    }
    let c = s.get(&format!("/v1/chains/{id}"), KEY_A).await.json;
    assert_eq!(
        (c["status"].as_str(), c["turns"].as_array().map(Vec::len)),
        (Some("running"), Some(1))
    );
}

/// A fork is checked whole before anything is stored: a bad second turn gives 422 naming it, and
/// no chain or job is left behind; a fork past 1,000 turns is refused before it reaches the queue.
#[tokio::test]
async fn a_refused_fork_leaves_nothing_behind() {
    let s = start(|_| {}).await;
    let body = json!({"prompt": "a fox", "turns": [{"prompt": "red"}],
        "width": 64, "height": 64, "steps": 1});
    let r = s.post_json("/v1/chains", KEY_A, &body).await;
    assert_eq!(r.status, 202, "{}", r.json);
    let id = r.json["id"].as_str().expect("id").to_owned();
    for _ in 0..2 {
        s.work_one().await;
    }
    let jobs_before = s.get("/v1/jobs?limit=100", KEY_A).await.json["jobs"]
        .as_array()
        .expect("jobs")
        .len();
    let bad = s
        .post_json(
            &format!("/v1/chains/{id}/fork"),
            KEY_A,
            &json!({"from_turn": 1, "turns": [{"prompt": "ok"}, {"prompt": "bad", "steps": 500}]}),
        )
        .await;
    bad.assert_error(422, "turns[1].steps");
    let long = vec![json!({"prompt": "again"}); 1_000];
    let too_long = s
        .post_json(
            &format!("/v1/chains/{id}/fork"),
            KEY_A,
            &json!({"from_turn": 1, "turns": long}),
        )
        .await;
    too_long.assert_error(422, "turns");
    assert_eq!(too_long.json["error"]["limit"], "..=999");
    let jobs_after = s.get("/v1/jobs?limit=100", KEY_A).await.json["jobs"]
        .as_array()
        .expect("jobs")
        .len();
    assert_eq!(
        jobs_after, jobs_before,
        "no turn of a refused fork was queued"
    );
}

/// Retained chains and turns are limited per tenant (429 naming the limit); other tenants are
/// not affected.
#[tokio::test]
async fn retained_chains_are_limited_per_tenant() {
    let s = start(|c| {
        c.limits.retained.chains = 1;
        c.limits.retained.turns = 3;
    })
    .await;
    let body = json!({"prompt": "a fox", "turns": [{"prompt": "red"}],
        "width": 64, "height": 64, "steps": 1});
    let r = s.post_json("/v1/chains", KEY_A, &body).await;
    assert_eq!(r.status, 202, "{}", r.json);
    let id = r.json["id"].as_str().expect("id").to_owned();
    let again = s.post_json("/v1/chains", KEY_A, &body).await;
    again.assert_error(429, "max_retained_chains");
    assert_eq!(again.json["error"]["limit"], "..=1 chains");
    assert!(again.headers.contains_key("retry-after"));
    let other = s.post_json("/v1/chains", KEY_B, &body).await;
    assert_eq!(other.status, 202, "{}", other.json);
    let add = |prompt: &str| json!({ "prompt": prompt });
    let one = s
        .post_json(&format!("/v1/chains/{id}/turns"), KEY_A, &add("blue"))
        .await;
    assert_eq!(one.status, 202, "{}", one.json);
    let over = s
        .post_json(&format!("/v1/chains/{id}/turns"), KEY_A, &add("green"))
        .await;
    over.assert_error(429, "max_retained_turns");
}
