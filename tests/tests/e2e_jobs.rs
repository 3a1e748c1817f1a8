//! End to end on real services: Redis, the S3 server, the coordinator and two `e2e-worker`
//! processes running the tiny model (shared by the tests of this file). Clients talk plain HTTP.

mod e2e_support;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use e2e_support::{
    DEADLINE, Fleet, FleetOptions, KEY_ALPHA, KEY_BETA, KEY_DELTA, KEY_GAMMA, MAX_BODY_BYTES,
    assert_png, http, json_of, png, png_header_only, read_sse,
};
use kontext_proto::{JobId, JobQueue, JobStatus};
use kontext_storage::{BlobStore, ObjectKey};
use serde_json::{Value, json};

fn fleet() -> &'static Fleet {
    static FLEET: OnceLock<Fleet> = OnceLock::new();
    FLEET.get_or_init(|| Fleet::start(FleetOptions::default()).expect("starting the fleet"))
}

async fn submit(client: &reqwest::Client, body: Value) -> String {
    let resp = client
        .post(format!("{}/v1/jobs", fleet().url))
        .json(&body)
        .send()
        .await
        .expect("POST /v1/jobs");
    let (status, value) = json_of(resp).await;
    assert_eq!(status, 202, "{value}");
    value["id"].as_str().expect("id").to_owned()
}

/// Waits (on the job's queue events, with a deadline) until the job is terminal, then returns
/// its view from `GET /v1/jobs/{id}`.
async fn wait_terminal(client: &reqwest::Client, id: &str) -> Value {
    let fleet = fleet();
    let queue = fleet.queue().await.expect("queue");
    let job_id: JobId = id.parse().expect("uuid");
    fleet
        .wait_record(&queue, job_id, "terminal", |j| j.status.is_terminal())
        .await
        .expect("terminal");
    let resp = client
        .get(format!("{}/v1/jobs/{id}", fleet.url))
        .send()
        .await
        .expect("GET job");
    let (status, job) = json_of(resp).await;
    assert_eq!(status, 200, "{job}");
    job
}

async fn upload(client: &reqwest::Client, bytes: Vec<u8>, content_type: &str) -> (u16, Value) {
    let resp = client
        .post(format!("{}/v1/uploads", fleet().url))
        .header("content-type", content_type)
        .body(bytes)
        .send()
        .await
        .expect("POST /v1/uploads");
    json_of(resp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_mixed_jobs_succeed_with_pngs_of_the_requested_sizes_in_s3() {
    let fleet = fleet();
    let client = http(KEY_ALPHA);
    let (status, uploaded) = upload(&client, png(200, 150), "image/png").await;
    assert_eq!(status, 201, "{uploaded}");
    let input = uploaded["id"].as_str().expect("upload id").to_owned();

    let sizes = [(64, 64), (128, 64), (64, 128), (96, 160), (160, 96)];
    let mut expected = Vec::new();
    for i in 0..20u32 {
        let (w, h) = sizes[i as usize % sizes.len()];
        let body = if i % 2 == 0 {
            json!({"prompt": format!("a lighthouse number {i}"), "width": w, "height": h,
                   "steps": 3, "seed": i})
        } else {
            json!({"prompt": format!("make it blue, take {i}"), "input_image": input,
                   "resize": "keep", "width": w, "height": h, "steps": 3, "seed": i})
        };
        expected.push((submit(&client, body).await, w, h));
    }
    let store = fleet.store().await.expect("store");
    for (id, w, h) in &expected {
        let job = wait_terminal(&client, id).await;
        assert_eq!(job["status"], "succeeded", "{job}\n{}", fleet.logs());
        assert_eq!(
            (job["width"].as_u64(), job["height"].as_u64()),
            (Some(u64::from(*w)), Some(u64::from(*h)))
        );
        let result = &job["result"];
        assert_eq!(
            (result["width"].as_u64(), result["height"].as_u64()),
            (Some(u64::from(*w)), Some(u64::from(*h)))
        );
        let key = result["key"].as_str().expect("result key");
        assert!(key.starts_with(&format!("out/alpha/{id}/")), "{key}");
        let blob = store
            .get(&ObjectKey::parse(key).expect("key"))
            .await
            .expect("result object in S3");
        assert_eq!(blob.content_type, "image/png");
        assert_png(&blob.bytes, *w, *h, key);
        // The presigned URL in the job view serves the same bytes to a client without a key.
        let url = result["url"].as_str().expect("url");
        let fetched = reqwest::get(url)
            .await
            .expect("GET presigned")
            .bytes()
            .await
            .expect("bytes");
        assert_eq!(fetched, blob.bytes, "presigned URL of {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_shows_progress_then_success() {
    let fleet = fleet();
    let client = http(KEY_ALPHA);
    let id = submit(
        &client,
        json!({"prompt": "a slow sunrise", "width": 64, "height": 64, "steps": 40, "seed": 1}),
    )
    .await;
    let resp = client
        .get(format!("{}/v1/jobs/{id}/events", fleet.url))
        .send()
        .await
        .expect("GET events");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/event-stream")
    );
    let events = read_sse(resp).await.expect("event stream");
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    let first_progress = names
        .iter()
        .position(|n| *n == "progress")
        .unwrap_or_else(|| panic!("no progress event: {names:?}\n{}", fleet.logs()));
    let success = events
        .iter()
        .position(|(e, d)| e == "state" && d.contains("\"succeeded\""))
        .unwrap_or_else(|| panic!("no succeeded state: {events:?}"));
    assert!(
        first_progress < success,
        "progress before success: {names:?}"
    );
    let running = events
        .iter()
        .position(|(e, d)| e == "state" && d.contains("\"running\""))
        .expect("a running state");
    assert!(running < first_progress, "{names:?}");
    let (last_name, last_data) = events.last().expect("events");
    assert_eq!(
        last_name, "job",
        "the stream ends with the final job view: {names:?}"
    );
    let job: Value = serde_json::from_str(last_data).expect("job JSON");
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["progress"], 1.0);
    // Progress events are throttled by the worker to one per 500 ms (measured when the step
    // arrives; `at` is stamped when the queue call runs, so allow some jitter).
    let steps: Vec<u64> = events
        .iter()
        .filter(|(e, _)| e == "progress")
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).expect("progress JSON")["at"]
                .as_u64()
                .expect("at")
        })
        .collect();
    for pair in steps.windows(2) {
        assert!(
            pair[1] - pair[0] >= 400,
            "progress {} ms apart",
            pair[1] - pair[0]
        );
    }
    let url = job["result"]["url"].as_str().expect("url");
    let bytes = reqwest::get(url)
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("bytes");
    assert_png(&bytes, 64, 64, "SSE job result");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_running_job() {
    let fleet = fleet();
    let client = http(KEY_ALPHA);
    // 100 steps of at least 30 ms: about 3 s of denoising.
    let id = submit(
        &client,
        json!({"prompt": "a long job", "width": 64, "height": 64, "steps": 100, "seed": 2}),
    )
    .await;
    let queue = fleet.queue().await.expect("queue");
    let job_id: JobId = id.parse().expect("uuid");
    fleet
        .wait_record(&queue, job_id, "running with progress", |j| {
            j.status == JobStatus::Running && j.progress > 0.0
        })
        .await
        .expect("running");
    let resp = client
        .post(format!("{}/v1/jobs/{id}/cancel", fleet.url))
        .send()
        .await
        .expect("cancel");
    let (status, reply) = json_of(resp).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["status"], "CANCELLATION_REQUESTED");
    let job = wait_terminal(&client, &id).await;
    assert_eq!(job["status"], "canceled", "{job}");
    assert_eq!(job["error"]["kind"], "canceled");
    assert!(job["result"].is_null());
    let record = queue.get(job_id).await.expect("get").expect("record");
    assert!(
        record.progress < 1.0,
        "stopped before the last step: {}",
        record.progress
    );
    assert!(
        fleet.object_keys(&format!("out/alpha/{id}")).is_empty(),
        "a canceled job stores nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_name_the_field_and_store_nothing() {
    let fleet = fleet();
    let gamma = http(KEY_GAMMA);
    let url = &fleet.url;

    // Not an image.
    let (status, body) = upload(&gamma, b"hello, I am text".to_vec(), "image/png").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "image", "{body}");

    // A PNG header claiming 50,000 × 50,000: refused from the header, never decoded.
    let bomb = png_header_only(50_000, 50_000);
    let (status, body) = upload(&gamma, bomb.clone(), "image/png").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "image", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("50000"),
        "{body}"
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bomb);
    let resp = gamma
        .post(format!("{url}/v1/jobs"))
        .json(&json!({"prompt": "edit", "input_image": b64}))
        .send()
        .await
        .expect("POST");
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "input_image", "{body}");

    // A body over the limit.
    let huge = format!(
        "{{\"prompt\": \"{}\"}}",
        "x".repeat(usize::try_from(MAX_BODY_BYTES).unwrap_or(1 << 20) + 10)
    );
    let resp = gamma
        .post(format!("{url}/v1/jobs"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .expect("POST");
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["field"], "body", "{body}");

    // Out-of-range sizes and steps.
    for (req, field) in [
        (json!({"prompt": "x", "width": 100, "height": 64}), "width"),
        (
            json!({"prompt": "x", "width": 64, "height": 4096}),
            "height",
        ),
        (
            json!({"prompt": "x", "width": 64, "height": 64, "steps": 1000}),
            "steps",
        ),
        (
            json!({"prompt": "x", "width": 64, "height": 64, "steps": 0}),
            "steps",
        ),
    ] {
        let resp = gamma
            .post(format!("{url}/v1/jobs"))
            .json(&req)
            .send()
            .await
            .expect("POST");
        let (status, body) = json_of(resp).await;
        assert_eq!(status, 422, "{req} → {body}");
        let named = body["error"]["field"] == field
            || body["error"]["errors"]
                .as_array()
                .is_some_and(|errs| errs.iter().any(|e| e["field"] == field));
        assert!(named, "{req} → {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(field),
            "{body}"
        );
    }

    // Nothing was stored or queued for gamma.
    assert!(
        fleet.object_keys("in/gamma").is_empty(),
        "{:?}",
        fleet.object_keys("in/gamma")
    );
    let resp = gamma
        .get(format!("{url}/v1/jobs"))
        .send()
        .await
        .expect("list");
    let (status, list) = json_of(resp).await;
    assert_eq!(status, 200);
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(0), "{list}");

    // Another tenant's job id is not found (and says which field).
    let alpha = http(KEY_ALPHA);
    let id = submit(
        &alpha,
        json!({"prompt": "mine", "width": 64, "height": 64, "steps": 1}),
    )
    .await;
    let beta = http(KEY_BETA);
    for path in [
        format!("/v1/jobs/{id}"),
        format!("/v1/jobs/{id}/result"),
        format!("/v1/jobs/{id}/events"),
    ] {
        let resp = beta.get(format!("{url}{path}")).send().await.expect("GET");
        let (status, body) = json_of(resp).await;
        assert_eq!(status, 404, "{path} → {body}");
        assert_eq!(body["error"]["field"], "id", "{body}");
    }
    let resp = beta
        .post(format!("{url}/v1/jobs/{id}/cancel"))
        .send()
        .await
        .expect("cancel");
    assert_eq!(resp.status(), 404);
    let job = wait_terminal(&alpha, &id).await;
    assert_eq!(
        job["status"], "succeeded",
        "beta's cancel did not touch alpha's job: {job}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bfl_flow_with_a_plain_http_client() {
    let fleet = fleet();
    // BFL clients send `x-key` and poll `polling_url`; no Bearer header here.
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/v1/flux-kontext-dev", fleet.url))
        .header("x-key", KEY_BETA)
        .json(
            &json!({"prompt": "a cat in a hat", "aspect_ratio": "1:1", "seed": 42,
                      "output_format": "png", "steps": 4}),
        )
        .send()
        .await
        .expect("POST flux-kontext-dev");
    let (status, submitted) = json_of(resp).await;
    assert_eq!(status, 200, "{submitted}");
    let id = submitted["id"].as_str().expect("id").to_owned();
    let polling_url = submitted["polling_url"]
        .as_str()
        .expect("polling_url")
        .to_owned();
    assert!(polling_url.contains(&id));
    let until = Instant::now() + DEADLINE;
    let result = loop {
        let resp = client
            .get(&polling_url)
            .header("x-key", KEY_BETA)
            .send()
            .await
            .expect("GET get_result");
        let (status, body) = json_of(resp).await;
        assert_eq!(status, 200, "{body}");
        match body["status"].as_str() {
            Some("Ready") => break body,
            Some("Pending") => {}
            other => panic!("unexpected status {other:?}: {body}"),
        }
        assert!(
            Instant::now() < until,
            "BFL job never ready: {body}\n{}",
            fleet.logs()
        );
        let queue = fleet.queue().await.expect("queue");
        let _ = queue
            .events(id.parse().expect("uuid"), None, Duration::from_millis(300))
            .await;
    };
    assert_eq!(result["result"]["seed"], 42);
    let sample = result["result"]["sample"].as_str().expect("sample URL");
    let bytes = client
        .get(sample)
        .send()
        .await
        .expect("GET sample")
        .bytes()
        .await
        .expect("bytes");
    // aspect_ratio 1:1 over the test coordinator's 128² area.
    assert_png(&bytes, 128, 128, "BFL sample");
}

/// `acceleration` reaches the worker's sampler: the same request with `high` runs fewer full
/// transformer evaluations (reported on the result) and gives a different image than `none`;
/// an unknown level is refused naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acceleration_reaches_the_sampler_and_is_reported() {
    let client = http(KEY_DELTA);
    let body = |level: &str| {
        json!({"prompt": "a red circle", "width": 64, "height": 64, "steps": 8, "seed": 21,
               "acceleration": level})
    };
    let none = submit(&client, body("none")).await;
    let high = submit(&client, body("high")).await;
    let none = wait_terminal(&client, &none).await;
    let high = wait_terminal(&client, &high).await;
    assert_eq!(
        (none["status"].as_str(), high["status"].as_str()),
        (Some("succeeded"), Some("succeeded"))
    );
    assert_eq!(none["acceleration"], "none");
    assert_eq!(high["acceleration"], "high");
    assert_eq!(none["result"]["full_evaluations"], 8);
    // Steps 0, 3, 6 and the last in full; 1 and 2 reuse step 0, 4 and 5 extrapolate.
    assert_eq!(high["result"]["full_evaluations"], 4, "{high}");
    let bytes = |v: &Value| {
        let url = v["result"]["url"].as_str().expect("url").to_owned();
        async move {
            reqwest::get(url)
                .await
                .expect("GET")
                .bytes()
                .await
                .expect("bytes")
        }
    };
    assert_ne!(
        bytes(&none).await,
        bytes(&high).await,
        "extrapolated steps change the image"
    );
    let resp = client
        .post(format!("{}/v1/jobs", fleet().url))
        .json(&body("ludicrous"))
        .send()
        .await
        .expect("POST");
    let (status, value) = json_of(resp).await;
    assert_eq!(
        (status, value["error"]["field"].as_str()),
        (422, Some("acceleration")),
        "{value}"
    );
}

/// A multi-reference edit through the whole fleet: two uploaded images as `input_images`, the
/// job records both keys and the position method, and the worker renders it; more than four
/// references, or `input_image` with `input_images`, are refused naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reference_images_make_one_edit() {
    let client = http(KEY_DELTA);
    let mut ids = Vec::new();
    for (w, h) in [(128, 96), (96, 128)] {
        let (status, uploaded) = upload(&client, png(w, h), "image/png").await;
        assert_eq!(status, 201, "{uploaded}");
        ids.push(uploaded["id"].as_str().expect("upload id").to_owned());
    }
    let id = submit(
        &client,
        json!({"prompt": "put the object of the second image into the first", "steps": 3,
               "width": 64, "height": 64, "input_images": ids, "reference_positions": "index"}),
    )
    .await;
    let job = wait_terminal(&client, &id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["kind"], "edit", "{job}");
    assert_eq!(job["reference_positions"], "index", "{job}");
    let keys = job["input_images"].as_array().expect("input_images");
    assert_eq!(keys.len(), 2, "{job}");
    assert_eq!(keys[0], job["input_image"], "{job}");
    let url = job["result"]["url"].as_str().expect("url");
    let bytes = reqwest::get(url)
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("bytes");
    assert_png(&bytes, 64, 64, "the multi-reference result");

    for (body, field) in [
        (
            json!({"prompt": "x", "input_images": [ids[0], ids[1], ids[0], ids[1], ids[0]]}),
            "input_images",
        ),
        (
            json!({"prompt": "x", "input_image": ids[0], "input_images": [ids[1]]}),
            "input_images",
        ),
    ] {
        let resp = client
            .post(format!("{}/v1/jobs", fleet().url))
            .json(&body)
            .send()
            .await
            .expect("POST");
        let (status, value) = json_of(resp).await;
        assert_eq!(
            (status, value["error"]["field"].as_str()),
            (422, Some(field)),
            "{body} -> {value}"
        );
    }
}
