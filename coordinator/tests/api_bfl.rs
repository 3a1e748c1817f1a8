//! The BFL-compatible routes: what an unmodified BFL client sends and reads.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn a_bfl_client_flow_works_by_changing_the_base_url() {
    let s = start(|_| {}).await;
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, png(256, 256));
    let created = s
        .send(
            s.http
                .post(s.at("/v1/flux-kontext-pro"))
                .header("x-key", KEY_A)
                .json(&json!({
                    "prompt": "make it night", "input_image": b64, "seed": 42,
                    "aspect_ratio": "1:1", "output_format": "png",
                    "prompt_upsampling": false, "safety_tolerance": 2
                })),
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.json);
    let id = created.json["id"].as_str().expect("id").to_owned();
    let polling_url = created.json["polling_url"]
        .as_str()
        .expect("polling_url")
        .to_owned();
    assert_eq!(polling_url, s.at(&format!("/v1/get_result?id={id}")));

    let poll = || s.send(s.http.get(&polling_url).header("x-key", KEY_A));
    let pending = poll().await;
    assert_eq!(pending.status, 200);
    assert_eq!(pending.json["status"], "Pending");
    assert!(pending.json["result"].is_null());

    s.work_one().await;
    let ready = poll().await;
    assert_eq!(ready.json["status"], "Ready", "{}", ready.json);
    assert_eq!(
        ready.json["result"]["seed"], 7,
        "the seed the worker reported"
    );
    assert_eq!(ready.json["result"]["prompt"], "make it night");
    let sample = ready.json["result"]["sample"]
        .as_str()
        .expect("sample")
        .to_owned();
    // A plain HTTP client with no key can download the sample.
    let image = s.send(s.http.get(&sample)).await;
    assert_eq!(image.status, 200);
    assert_eq!(image.bytes, png(256, 256));
    // The same job is visible on the native API.
    let native = s.get(&format!("/v1/jobs/{id}"), KEY_A).await;
    assert_eq!(
        (native.json["status"].clone(), native.json["kind"].clone()),
        (json!("succeeded"), json!("edit"))
    );
}

#[tokio::test]
async fn bfl_status_words_and_errors() {
    let s = start(|_| {}).await;
    let unknown = s
        .send(
            s.http
                .get(s.at("/v1/get_result?id=0b6a4f52-6f9e-4c55-9d0a-6f2f1b1e2c3d"))
                .header("x-key", KEY_A),
        )
        .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json["status"], "Task not found");
    assert_eq!(unknown.json["error"]["field"], "id");
    s.send(s.http.get(s.at("/v1/get_result")).header("x-key", KEY_A))
        .await
        .assert_error(422, "id");

    let created = s
        .send(
            s.http
                .post(s.at("/v1/flux-kontext-dev"))
                .header("x-key", KEY_A)
                .json(&json!({"prompt": "generate", "aspect_ratio": "16:9"})),
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.json);
    let id = created.json["id"].as_str().expect("id").to_owned();
    let native = s.get(&format!("/v1/jobs/{id}"), KEY_A).await;
    assert_eq!(native.json["kind"], "generate");
    let (w, h) = (
        native.json["width"].as_u64(),
        native.json["height"].as_u64(),
    );
    assert!(w > h, "16:9 gives a landscape size: {w:?}x{h:?}");

    // A canceled task reads as Error with details.
    s.send(
        s.http
            .post(s.at(&format!("/v1/jobs/{id}/cancel")))
            .bearer_auth(KEY_A),
    )
    .await;
    let r = s
        .send(
            s.http
                .get(s.at(&format!("/v1/get_result?id={id}")))
                .header("x-key", KEY_A),
        )
        .await;
    assert_eq!(r.json["status"], "Error");
    assert_eq!(r.json["details"]["status"], "canceled");

    for (body, field) in [
        (
            json!({"prompt": "x", "aspect_ratio": "32:9"}),
            "aspect_ratio",
        ),
        (
            json!({"prompt": "x", "input_image_2": "abc"}),
            "input_image",
        ),
        (
            json!({"prompt": "x", "webhook_secret": "s"}),
            "webhook_secret",
        ),
        (
            json!({"prompt": "x", "output_format": "tiff"}),
            "output_format",
        ),
        (json!({"prompt": ""}), "prompt"),
    ] {
        let r = s
            .send(
                s.http
                    .post(s.at("/v1/flux-kontext-dev"))
                    .header("x-key", KEY_A)
                    .json(&body),
            )
            .await;
        r.assert_error(422, field);
    }
}
