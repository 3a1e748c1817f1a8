//! The native job API over HTTP: submit, status, list, cancel, validation errors, auth and tenant
//! isolation, idempotency, body limits, `Prefer: wait`, SSE events, results and metrics.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use serde_json::json;

#[tokio::test]
async fn submit_then_status_then_result() {
    let s = start(|_| {}).await;
    let r = s
        .post_json(
            "/v1/jobs",
            KEY_A,
            &json!({"prompt": "a red fox", "seed": 5}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.json);
    let id = r.json["id"].as_str().expect("id").to_owned();
    assert_eq!(r.json["status"], "queued");
    let location = r.headers["location"].to_str().expect("location");
    assert_eq!(location, s.at(&format!("/v1/jobs/{id}")));
    assert_eq!(r.json["events_url"], format!("{location}/events"));

    let job = s.get(&format!("/v1/jobs/{id}"), KEY_A).await;
    assert_eq!(job.status, 200);
    assert_eq!(job.json["status"], "queued");
    assert_eq!(job.json["kind"], "generate");
    assert_eq!(
        (job.json["width"].clone(), job.json["seed"].clone()),
        (json!(256), json!(5))
    );
    assert!(
        job.json["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert!(job.json["result"].is_null());

    let early = s.get(&format!("/v1/jobs/{id}/result"), KEY_A).await;
    early.assert_error(409, "id");

    s.work_one().await;
    let done = s.get(&format!("/v1/jobs/{id}"), KEY_A).await;
    assert_eq!(done.json["status"], "succeeded", "{}", done.json);
    assert_eq!(done.json["progress"], 1.0);
    assert_eq!(done.json["attempts"], 1);
    assert!(done.json["finished_at"].is_string());
    let url = done.json["result"]["url"]
        .as_str()
        .expect("result url")
        .to_owned();
    assert!(url.starts_with(&s.at("/v1/blobs/out/acme/")), "{url}");

    // The signed URL works without credentials; the bytes are the stored PNG.
    let plain = s.send(s.http.get(&url)).await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.headers["content-type"], "image/png");
    assert_eq!(plain.bytes, png(256, 256));
    // Tampering with the expiry or signature is refused.
    let tampered = url.replace("expires=", "expires=9");
    s.send(s.http.get(&tampered))
        .await
        .assert_error(403, "signature");
    // The authenticated result route serves the bytes too (local storage).
    let bytes = s.get(&format!("/v1/jobs/{id}/result"), KEY_A).await;
    assert_eq!((bytes.status, bytes.bytes.clone()), (200, png(256, 256)));
}

#[tokio::test]
async fn every_validation_error_names_its_field_and_limit() {
    let s = start(|_| {}).await;
    for (body, field) in [
        (json!({"prompt": ""}), "prompt"),
        (json!({"prompt": "x".repeat(2001)}), "prompt"),
        (json!({"prompt": "x", "steps": 500}), "steps"),
        (
            json!({"prompt": "x", "width": 1000, "height": 512}),
            "width",
        ),
        (
            json!({"prompt": "x", "width": 4096, "height": 4096}),
            "width",
        ),
        (json!({"prompt": "x", "guidance": 99.0}), "guidance"),
        (
            json!({"prompt": "x", "output_format": "gif"}),
            "output_format",
        ),
        (
            json!({"prompt": "x", "aspect_ratio": "40:1"}),
            "aspect_ratio",
        ),
        (json!({"prompt": "x", "priority": "urgent"}), "priority"),
        (json!({"prompt": "x", "steps": "many"}), "steps"),
        (
            json!({"prompt": "x", "webhook_url": "https://example.com/h"}),
            "webhook_url",
        ),
    ] {
        let r = s.post_json("/v1/jobs", KEY_A, &body).await;
        assert_eq!(r.status, 422, "{body} was accepted: {}", r.json);
        r.assert_error(422, field);
    }
    let r = s
        .post_json("/v1/jobs", KEY_A, &json!({"prompt": "x", "steps": 500}))
        .await;
    assert_eq!(r.json["error"]["limit"], "1..=100");
    let r = s
        .send(
            s.http
                .post(s.at("/v1/jobs"))
                .bearer_auth(KEY_A)
                .body("{not json"),
        )
        .await;
    r.assert_error(400, "body");
    let r = s
        .send(
            s.http
                .post(s.at("/v1/jobs"))
                .bearer_auth(KEY_A)
                .header("idempotency-key", "has space")
                .json(&json!({"prompt": "x"})),
        )
        .await;
    r.assert_error(400, "Idempotency-Key");
    // Several bad fields are all reported.
    let r = s
        .post_json(
            "/v1/jobs",
            KEY_A,
            &json!({"prompt": "", "steps": 0, "guidance": -1.0}),
        )
        .await;
    let fields: Vec<&str> = r.json["error"]["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(fields, ["prompt", "steps", "guidance"]);
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_the_limit() {
    let s = start(|c| c.limits.max_body_bytes = 4096).await;
    let big = json!({"prompt": "x".repeat(5000)});
    let r = s.post_json("/v1/jobs", KEY_A, &big).await;
    r.assert_error(413, "body");
    assert_eq!(r.json["error"]["limit"], "..=4096 bytes");
    // Without a Content-Length (chunked), the limit holds while reading.
    let chunks = futures::stream::iter(
        (0..10).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 1024]))),
    );
    let r = s
        .send(
            s.http
                .post(s.at("/v1/jobs"))
                .bearer_auth(KEY_A)
                .body(reqwest::Body::wrap_stream(chunks)),
        )
        .await;
    r.assert_error(413, "body");
}

#[tokio::test]
async fn keys_are_required_and_tenants_are_isolated() {
    let s = start(|_| {}).await;
    let r = s
        .send(s.http.post(s.at("/v1/jobs")).json(&json!({"prompt": "x"})))
        .await;
    r.assert_error(401, "Authorization");
    s.post_json("/v1/jobs", "wrong-key-0123456789", &json!({"prompt": "x"}))
        .await
        .assert_error(401, "Authorization");
    // BFL's x-key works as well as Bearer.
    let r = s
        .send(s.http.get(s.at("/v1/jobs")).header("x-key", KEY_A))
        .await;
    assert_eq!(r.status, 200);

    let id = s.submit(KEY_A, json!({"prompt": "acme's"})).await;
    for path in [
        format!("/v1/jobs/{id}"),
        format!("/v1/jobs/{id}/result"),
        format!("/v1/jobs/{id}/events"),
        format!("/v1/get_result?id={id}"),
    ] {
        let r = s.get(&path, KEY_B).await;
        assert_eq!(
            r.status, 404,
            "{path}: another tenant's job must look absent"
        );
    }
    s.send(
        s.http
            .post(s.at(&format!("/v1/jobs/{id}/cancel")))
            .bearer_auth(KEY_B),
    )
    .await
    .assert_error(404, "id");
    s.get("/v1/jobs/not-a-uuid", KEY_A)
        .await
        .assert_error(404, "id");
    s.get(&format!("/v1/jobs/{}", uuid_like()), KEY_A)
        .await
        .assert_error(404, "id");
    let listed = s.get("/v1/jobs", KEY_B).await;
    assert_eq!(listed.json["jobs"], json!([]));
    // Another tenant's object keys are refused as if they did not exist.
    let r = s
        .post_json(
            "/v1/jobs",
            KEY_B,
            &json!({"prompt": "x", "input_image": format!("out/acme/{id}/1.png")}),
        )
        .await;
    r.assert_error(422, "input_image");
}

fn uuid_like() -> String {
    "0b6a4f52-6f9e-4c55-9d0a-6f2f1b1e2c3d".into()
}

#[tokio::test]
async fn idempotent_submits_return_the_original_job() {
    let s = start(|_| {}).await;
    let send = |body: serde_json::Value| {
        s.send(
            s.http
                .post(s.at("/v1/jobs"))
                .bearer_auth(KEY_A)
                .header("idempotency-key", "order-42")
                .json(&body),
        )
    };
    let first = send(json!({"prompt": "a", "seed": 1})).await;
    assert_eq!(first.status, 202);
    // Same body (different key order and spacing) → the same job.
    let again = s
        .send(
            s.http
                .post(s.at("/v1/jobs"))
                .bearer_auth(KEY_A)
                .header("idempotency-key", "order-42")
                .header("content-type", "application/json")
                .body("{ \"seed\": 1, \"prompt\": \"a\" }"),
        )
        .await;
    assert_eq!(again.status, 202);
    assert_eq!(again.json["id"], first.json["id"]);
    // Same key, different body → 422 naming the header.
    send(json!({"prompt": "b", "seed": 1}))
        .await
        .assert_error(422, "Idempotency-Key");
    // The key is per tenant.
    let other = s
        .send(
            s.http
                .post(s.at("/v1/jobs"))
                .bearer_auth(KEY_B)
                .header("idempotency-key", "order-42")
                .json(&json!({"prompt": "b"})),
        )
        .await;
    assert_eq!(other.status, 202);
    assert_ne!(other.json["id"], first.json["id"]);
    assert_eq!(
        s.get("/v1/jobs", KEY_A).await.json["jobs"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[tokio::test]
async fn in_flight_limit_gives_429_naming_the_limit() {
    let s = start(|_| {}).await;
    for i in 0..3 {
        s.submit(KEY_A, json!({"prompt": format!("job {i}")})).await;
    }
    let r = s
        .post_json("/v1/jobs", KEY_A, &json!({"prompt": "one too many"}))
        .await;
    r.assert_error(429, "max_in_flight");
    assert_eq!(r.json["error"]["limit"], "..=3 jobs in flight");
    assert_eq!(r.headers["retry-after"], "1");
    // Another tenant is not affected; finishing a job frees a slot.
    s.submit(KEY_B, json!({"prompt": "globex"})).await;
    s.work_one().await;
    s.submit(KEY_A, json!({"prompt": "fits again"})).await;
}

#[tokio::test]
async fn list_pages_newest_first_and_cancel_uses_fal_words() {
    let s = start(|c| {
        c.auth =
            kontext_coordinator::auth::Auth::from_arg(&format!("{KEY_A}:acme:0"), 0).expect("keys");
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(s.submit(KEY_A, json!({"prompt": format!("job {i}")})).await);
    }
    // Page through with limit=2: every job once, newest first (jobs of the same millisecond are
    // ordered by id).
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut path = "/v1/jobs?limit=2".to_owned();
    loop {
        let page = s.get(&path, KEY_A).await;
        let jobs = page.json["jobs"].as_array().expect("jobs").clone();
        assert!(jobs.len() <= 2);
        for j in &jobs {
            seen.push((
                j["created_at"].as_str().expect("t").into(),
                j["id"].as_str().expect("id").into(),
            ));
        }
        match page.json["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/jobs?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert!(
        seen.windows(2).all(|w| w[0].0 >= w[1].0),
        "newest first: {seen:?}"
    );
    let mut got: Vec<String> = seen.into_iter().map(|(_, id)| id).collect();
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want);
    s.get("/v1/jobs?limit=500", KEY_A)
        .await
        .assert_error(400, "limit");
    s.get("/v1/jobs?cursor=bogus", KEY_A)
        .await
        .assert_error(400, "cursor");

    let cancel = |id: &str| {
        s.send(
            s.http
                .post(s.at(&format!("/v1/jobs/{id}/cancel")))
                .bearer_auth(KEY_A),
        )
    };
    let r = cancel(&ids[0]).await;
    assert_eq!(
        (r.status, r.json["status"].clone()),
        (200, json!("CANCELED"))
    );
    assert_eq!(cancel(&ids[0]).await.json["status"], "ALREADY_COMPLETED");
    let (lease, ..) = s.claim_one().await;
    let r = cancel(&lease.job_id.to_string()).await;
    assert_eq!(r.json["status"], "CANCELLATION_REQUESTED");
    let job = s.get(&format!("/v1/jobs/{}", ids[0]), KEY_A).await;
    assert_eq!(job.json["status"], "canceled");
}

#[tokio::test]
async fn prefer_wait_returns_the_finished_job() {
    let s = start(|_| {}).await;
    let worker = async {
        s.work_one().await;
    };
    let submit = s.send(
        s.http
            .post(s.at("/v1/jobs"))
            .bearer_auth(KEY_A)
            .header("prefer", "wait=15")
            .json(&json!({"prompt": "quick"})),
    );
    let (r, ()) = tokio::join!(submit, worker);
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["status"], "succeeded");
    assert!(r.json["result"]["url"].is_string());
    assert_eq!(r.headers["preference-applied"], "wait=15");

    // Nobody works on it: after the wait, a plain 202.
    let r = s
        .send(
            s.http
                .post(s.at("/v1/jobs"))
                .bearer_auth(KEY_A)
                .header("prefer", "wait=1")
                .json(&json!({"prompt": "slow"})),
        )
        .await;
    assert_eq!((r.status, r.json["status"].clone()), (202, json!("queued")));
}

#[tokio::test]
async fn events_stream_state_progress_then_the_final_job() {
    let s = start(|_| {}).await;
    let id = s.submit(KEY_A, json!({"prompt": "streamed"})).await;
    let resp = within(
        "open SSE",
        s.http
            .get(s.at(&format!("/v1/jobs/{id}/events")))
            .bearer_auth(KEY_A)
            .send(),
    )
    .await
    .expect("SSE opens");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("text/event-stream")
    );
    let reader = async {
        let mut text = String::new();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
        }
        text
    };
    let worker = async {
        s.work_one().await;
    };
    let (text, ()) = within("SSE to end", async { tokio::join!(reader, worker) }).await;
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(
        names,
        ["state", "state", "progress", "state", "job"],
        "{text}"
    );
    assert!(text.contains(r#""status":"succeeded""#), "{text}");
    assert!(
        text.contains("/v1/blobs/out/acme/"),
        "the final job carries the result URL"
    );
    // Resuming after the last state event gives only the final job.
    let last_id = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .next_back()
        .expect("event ids")
        .to_owned();
    let resumed = s
        .send(
            s.http
                .get(s.at(&format!("/v1/jobs/{id}/events")))
                .bearer_auth(KEY_A)
                .header("last-event-id", last_id),
        )
        .await;
    let resumed = String::from_utf8_lossy(&resumed.bytes).into_owned();
    assert_eq!(resumed.matches("event: ").count(), 1, "{resumed}");
    let bad = s
        .send(
            s.http
                .get(s.at(&format!("/v1/jobs/{id}/events")))
                .bearer_auth(KEY_A)
                .header("last-event-id", "x"),
        )
        .await;
    bad.assert_error(400, "Last-Event-ID");
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let s = start(|_| {}).await;
    let h = s.send(s.http.get(s.at("/healthz"))).await;
    assert_eq!((h.status, &h.bytes[..]), (200, &b"ok"[..]));
    assert_eq!(s.send(s.http.get(s.at("/readyz"))).await.status, 200);
    s.submit(KEY_A, json!({"prompt": "one", "priority": "high"}))
        .await;
    s.submit(KEY_A, json!({"prompt": "two"})).await;
    let id = s.work_one().await;
    // The notifier records the latency of the finished job; poll /metrics until it shows.
    let deadline = tokio::time::Instant::now() + STALL;
    let text = loop {
        let m = s.send(s.http.get(s.at("/metrics"))).await;
        assert_eq!(m.status, 200);
        let text = String::from_utf8_lossy(&m.bytes).into_owned();
        if text.contains("kontext_job_latency_seconds_count{status=\"succeeded\"} 1") {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "latency never recorded for {id}:\n{text}"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for line in [
        "kontext_queue_up 1",
        "kontext_queue_depth{class=\"hi\"} 0",
        "kontext_queue_depth{class=\"std\"} 1",
        "kontext_jobs_submitted_total{class=\"hi\"} 1",
        "kontext_jobs_submitted_total{class=\"std\"} 1",
        "kontext_dead_letters 0",
        "kontext_retries_total{reason=\"crash\"} 0",
        "kontext_http_requests_total{method=\"POST\",route=\"/v1/jobs\",status=\"202\"} 2",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(text.contains("kontext_queue_oldest_ready_age_seconds "));
}

#[tokio::test]
async fn unknown_routes_answer_json_404() {
    let s = start(|_| {}).await;
    s.get("/v2/nothing", KEY_A).await.assert_error(404, "path");
}

#[tokio::test]
async fn graceful_shutdown_ends_open_event_streams() {
    let s = start(|_| {}).await;
    let id = s.submit(KEY_A, json!({"prompt": "never worked on"})).await;
    let resp = within(
        "open SSE",
        s.http
            .get(s.at(&format!("/v1/jobs/{id}/events")))
            .bearer_auth(KEY_A)
            .send(),
    )
    .await
    .expect("SSE opens");
    let reader = tokio::spawn(async move {
        let mut body = resp.bytes_stream();
        let mut text = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text
    });
    s.shutdown().await;
    let text = within("SSE ends at shutdown", reader)
        .await
        .expect("reader");
    assert!(text.contains("event: state"), "{text}");
}
