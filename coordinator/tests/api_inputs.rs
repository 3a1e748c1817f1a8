//! Input images: uploads (decoded with limits, content-addressed), and every form of
//! `input_image` (upload id, object key, base64, data URL, http(s) URL behind the SSRF guard).

mod common;

use axum::Router;
use axum::routing::get;
use base64::Engine as _;
use common::*;
use serde_json::json;

async fn upload(s: &Server, key: &str, content_type: &str, body: Vec<u8>) -> Reply {
    s.send(
        s.http
            .post(s.at("/v1/uploads"))
            .bearer_auth(key)
            .header("content-type", content_type)
            .body(body),
    )
    .await
}

#[tokio::test]
async fn uploads_are_checked_stored_once_and_usable() {
    let s = start(|_| {}).await;
    let bytes = png(320, 200).to_vec();
    let r = upload(&s, KEY_A, "image/png", bytes.clone()).await;
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(
        (r.json["width"].clone(), r.json["height"].clone()),
        (json!(320), json!(200))
    );
    let id = r.json["id"].as_str().expect("id").to_owned();
    assert!(
        r.json["key"]
            .as_str()
            .is_some_and(|k| k == format!("in/acme/{id}"))
    );
    // Content-addressed: the same bytes give the same id and one stored object.
    let again = upload(&s, KEY_A, "image/png", bytes).await;
    assert_eq!(again.json["id"], id.as_str());
    assert_eq!(s.stored_inputs().len(), 1, "{:?}", s.stored_inputs());

    let job = s
        .submit(KEY_A, json!({"prompt": "edit it", "input_image": id}))
        .await;
    let view = s.get(&format!("/v1/jobs/{job}"), KEY_A).await;
    assert_eq!(view.json["kind"], "edit");
    assert_eq!(view.json["input_image"], format!("in/acme/{id}"));
    // The upload id is per tenant: globex cannot use acme's.
    s.post_json(
        "/v1/jobs",
        KEY_B,
        &json!({"prompt": "x", "input_image": id}),
    )
    .await
    .assert_error(422, "input_image");
}

#[tokio::test]
async fn webp_uploads_are_stored_as_png() {
    let s = start(|_| {}).await;
    let r = upload(
        &s,
        KEY_A,
        "image/webp",
        encode(64, 48, image::ImageFormat::WebP).to_vec(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(r.json["content_type"], "image/png");
    assert!(r.json["id"].as_str().is_some_and(|id| id.ends_with(".png")));
}

#[tokio::test]
async fn a_png_claiming_50000_squared_is_refused_and_nothing_is_stored() {
    let s = start(|_| {}).await;
    let bomb = png_header_claiming(50_000, 50_000);
    let r = upload(&s, KEY_A, "image/png", bomb.clone()).await;
    r.assert_error(422, "image");
    assert_eq!(r.json["error"]["limit"], "..=262144 pixels");
    assert!(
        r.json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("50000x50000"))
    );
    // The same bomb as base64 input_image.
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bomb);
    let r = s
        .post_json(
            "/v1/jobs",
            KEY_A,
            &json!({"prompt": "x", "input_image": b64}),
        )
        .await;
    r.assert_error(422, "input_image");
    assert!(s.stored_inputs().is_empty(), "{:?}", s.stored_inputs());
}

#[tokio::test]
async fn bad_uploads_name_the_field_and_the_limit() {
    let s = start(|_| {}).await;
    upload(&s, KEY_A, "image/png", b"definitely not an image".to_vec())
        .await
        .assert_error(422, "image");
    let r = upload(&s, KEY_A, "text/plain", png(16, 16).to_vec()).await;
    r.assert_error(415, "Content-Type");
    let big = vec![0u8; (256 << 10) + 1];
    let r = upload(&s, KEY_A, "image/png", big).await;
    r.assert_error(413, "image");
    assert_eq!(r.json["error"]["limit"], format!("..={} bytes", 256 << 10));
    let cut = png(128, 128);
    upload(&s, KEY_A, "image/png", cut[..cut.len() / 2].to_vec())
        .await
        .assert_error(422, "image");
    let wide = upload(&s, KEY_A, "image/png", png(1100, 16).to_vec()).await;
    wide.assert_error(422, "image");
    assert!(s.stored_inputs().is_empty(), "{:?}", s.stored_inputs());
    upload(
        &s,
        "nobody-0123456789abcdef",
        "image/png",
        png(16, 16).to_vec(),
    )
    .await
    .assert_error(401, "Authorization");
}

#[tokio::test]
async fn base64_and_data_urls_are_stored_content_addressed() {
    let s = start(|_| {}).await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(png(300, 300));
    let a = s
        .submit(
            KEY_A,
            json!({"prompt": "bfl style", "input_image": b64, "width": 256, "height": 256}),
        )
        .await;
    let data_url = format!("data:image/png;base64,{b64}");
    let b = s
        .submit(
            KEY_A,
            json!({"prompt": "data url", "input_image": data_url}),
        )
        .await;
    let key_a = s.get(&format!("/v1/jobs/{a}"), KEY_A).await.json["input_image"].clone();
    let key_b = s.get(&format!("/v1/jobs/{b}"), KEY_A).await.json["input_image"].clone();
    assert_eq!(key_a, key_b, "same bytes, same key");
    assert_eq!(s.stored_inputs().len(), 1);
    s.post_json(
        "/v1/jobs",
        KEY_A,
        &json!({"prompt": "x", "input_image": "!!not base64!!"}),
    )
    .await
    .assert_error(422, "input_image");
    // An earlier result (an object key of this tenant) can be edited.
    s.work_one().await;
    let done = s.get(&format!("/v1/jobs/{a}"), KEY_A).await;
    let out = done.json["result"]["key"]
        .as_str()
        .expect("result key")
        .to_owned();
    let c = s
        .submit(KEY_A, json!({"prompt": "again", "input_image": out}))
        .await;
    assert_eq!(
        s.get(&format!("/v1/jobs/{c}"), KEY_A).await.json["input_image"],
        out.as_str()
    );
}

#[tokio::test]
async fn invalid_fields_are_refused_before_the_image_is_stored() {
    let s = start(|_| {}).await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(png(300, 300));
    s.post_json(
        "/v1/jobs",
        KEY_A,
        &json!({"prompt": "x", "input_image": b64, "steps": 1000}),
    )
    .await
    .assert_error(422, "steps");
    assert!(s.stored_inputs().is_empty(), "{:?}", s.stored_inputs());
}

#[tokio::test]
async fn urls_to_private_and_loopback_addresses_are_refused() {
    let s = start(|_| {}).await;
    for url in [
        "http://127.0.0.1:9/x.png",
        "http://10.1.2.3/x.png",
        "http://[::1]:9/x.png",
        "http://169.254.169.254/latest/meta-data",
        "http://localhost:9/x.png",
    ] {
        let r = s
            .post_json(
                "/v1/jobs",
                KEY_A,
                &json!({"prompt": "x", "input_image": url}),
            )
            .await;
        r.assert_error(422, "input_image");
        let msg = r.json["error"]["message"].as_str().expect("message");
        assert!(msg.contains("refused"), "{url}: {msg}");
    }
    assert!(s.stored_inputs().is_empty());
}

#[tokio::test]
async fn urls_are_fetched_with_limits_when_private_addresses_are_allowed() {
    // A tiny image server on loopback (allowed by the flag in this test only).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = Router::new()
        .route("/ok.png", get(|| async { png(200, 100).to_vec() }))
        .route("/big.png", get(|| async { vec![0u8; 300 << 10] }))
        .route(
            "/missing.png",
            get(|| async { (axum::http::StatusCode::NOT_FOUND, "no") }),
        )
        .route(
            "/redirect",
            get(|| async { axum::response::Redirect::temporary("/ok.png") }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let s = start(|c| c.allow_private_urls = true).await;

    let ok = s
        .submit(
            KEY_A,
            json!({"prompt": "x", "input_image": format!("http://{addr}/ok.png")}),
        )
        .await;
    let view = s.get(&format!("/v1/jobs/{ok}"), KEY_A).await;
    assert_eq!(view.json["kind"], "edit");
    let via = s
        .submit(
            KEY_A,
            json!({"prompt": "y", "input_image": format!("http://{addr}/redirect")}),
        )
        .await;
    assert_eq!(
        s.get(&format!("/v1/jobs/{via}"), KEY_A).await.json["input_image"],
        view.json["input_image"]
    );
    let big = s
        .post_json(
            "/v1/jobs",
            KEY_A,
            &json!({"prompt": "x", "input_image": format!("http://{addr}/big.png")}),
        )
        .await;
    big.assert_error(413, "input_image");
    let missing = s
        .post_json(
            "/v1/jobs",
            KEY_A,
            &json!({"prompt": "x", "input_image": format!("http://{addr}/missing.png")}),
        )
        .await;
    missing.assert_error(422, "input_image");
    assert!(
        missing.json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("404"))
    );
}
