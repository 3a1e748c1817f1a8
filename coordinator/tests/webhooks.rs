//! Webhooks: Standard Webhooks signatures, one delivery per terminal state, retries after a
//! failed delivery, delivered from the queue's notifications.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use common::*;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio::sync::mpsc;

const SECRET_B64: &str = "c2VjcmV0LWZvci10aGUtd2ViaG9vay10ZXN0cw==";

struct Received {
    headers: HeaderMap,
    body: Bytes,
}

/// A receiver on loopback that answers 500 to the first `failures` deliveries, then 204.
async fn receiver(failures: u32) -> (String, mpsc::UnboundedReceiver<Received>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let seen = Arc::new(AtomicU32::new(0));
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            let seen = seen.clone();
            async move {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let _ = tx.send(Received { headers, body });
                if n < failures {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), rx)
}

async fn with_hooks() -> Server {
    start(|c| {
        c.allow_private_urls = true;
        c.webhooks.secret = Some(
            kontext_coordinator::signing::Secret::from_standard_webhooks(&format!(
                "whsec_{SECRET_B64}"
            ))
            .expect("secret"),
        );
        c.webhooks.first_retry = Duration::from_millis(30);
    })
    .await
}

/// The tenant's own signing key, as its receiver gets it: `GET /v1/webhook_secret`.
async fn tenant_key(s: &Server, api_key: &str) -> Vec<u8> {
    let r = s.get("/v1/webhook_secret", api_key).await;
    assert_eq!(r.status, 200, "{}", r.json);
    let secret = r.json["secret"].as_str().expect("secret");
    let b64 = secret.strip_prefix("whsec_").expect("whsec_ prefix");
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("b64")
}

/// Whether `r`'s signature verifies with `key`, computed as a Standard Webhooks receiver would
/// (independent of the server's code).
fn signed_with(r: &Received, key: &[u8]) -> bool {
    let id = r.headers["webhook-id"].to_str().expect("id");
    let ts = r.headers["webhook-timestamp"].to_str().expect("ts");
    let sig = r.headers["webhook-signature"].to_str().expect("sig");
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("key");
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&r.body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    sig == format!("v1,{expected}")
}

/// Checks `r` like its tenant's receiver would and returns its body.
fn verify(r: &Received, key: &[u8]) -> serde_json::Value {
    let ts = r.headers["webhook-timestamp"].to_str().expect("ts");
    assert!(signed_with(r, key), "signature must verify");
    let age = now() / 1000 - ts.parse::<u64>().expect("unix seconds");
    assert!(age < 60, "timestamp is current");
    serde_json::from_slice(&r.body).expect("JSON body")
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    within("a webhook delivery", rx.recv())
        .await
        .expect("receiver alive")
}

#[tokio::test]
async fn a_finished_job_is_delivered_once_with_a_valid_signature() {
    let s = with_hooks().await;
    let (url, mut rx) = receiver(0).await;
    let id = s
        .submit(KEY_A, json!({"prompt": "hooked", "webhook_url": url}))
        .await;
    s.work_one().await;
    let got = next(&mut rx).await;
    assert_eq!(got.headers["webhook-id"], format!("{id}:succeeded"));
    let body = verify(&got, &tenant_key(&s, KEY_A).await);
    assert_eq!(body["type"], "job.succeeded");
    assert_eq!(body["data"]["id"], id.as_str());
    assert!(body["data"]["result"]["url"].is_string());
    // Acknowledged: no second delivery even after more notifier passes.
    s.submit(KEY_A, json!({"prompt": "no hook"})).await;
    s.work_one().await;
    wait_for_metric(
        &s,
        "kontext_job_latency_seconds_count{status=\"succeeded\"} 2",
    )
    .await;
    assert!(rx.try_recv().is_err(), "delivered exactly once");
}

#[tokio::test]
async fn failed_deliveries_are_retried_with_the_same_webhook_id() {
    let s = with_hooks().await;
    let (url, mut rx) = receiver(2).await;
    let id = s
        .submit(
            KEY_A,
            json!({"prompt": "flaky receiver", "webhook_url": url}),
        )
        .await;
    let cancel = s
        .send(
            s.http
                .post(s.at(&format!("/v1/jobs/{id}/cancel")))
                .bearer_auth(KEY_A),
        )
        .await;
    assert_eq!(cancel.json["status"], "CANCELED");
    let mut ids = Vec::new();
    let key = tenant_key(&s, KEY_A).await;
    for _ in 0..3 {
        let got = next(&mut rx).await;
        assert_eq!(verify(&got, &key)["type"], "job.canceled");
        ids.push(got.headers["webhook-id"].to_str().expect("id").to_owned());
    }
    assert!(
        ids.iter().all(|i| *i == format!("{id}:canceled")),
        "{ids:?}"
    );
    wait_for_metric(
        &s,
        "kontext_webhook_deliveries_total{outcome=\"delivered\"} 1",
    )
    .await;
    let text = metrics(&s).await;
    assert!(
        text.contains("kontext_webhook_deliveries_total{outcome=\"failed_attempt\"} 2"),
        "{text}"
    );
}

/// Deliveries are signed with the tenant's own key (derived from the master secret): they verify
/// with it, not with another tenant's key nor with the master secret itself.
#[tokio::test]
async fn each_tenant_verifies_only_its_own_deliveries() {
    let s = with_hooks().await;
    let (url, mut rx) = receiver(0).await;
    s.submit(KEY_A, json!({"prompt": "acme's", "webhook_url": url}))
        .await;
    s.work_one().await;
    let got = next(&mut rx).await;
    let acme = tenant_key(&s, KEY_A).await;
    let globex = tenant_key(&s, KEY_B).await;
    assert_ne!(acme, globex);
    verify(&got, &acme);
    assert!(!signed_with(&got, &globex), "globex cannot verify acme's");
    let master = base64::engine::general_purpose::STANDARD
        .decode(SECRET_B64)
        .expect("b64");
    assert!(!signed_with(&got, &master));
    let off = start(|_| {}).await;
    off.get("/v1/webhook_secret", KEY_A)
        .await
        .assert_error(409, "webhook_url");
}

/// A receiver that never answers holds at most its tenant's delivery slots: another tenant's
/// webhook is delivered while 40 of the first tenant's hang (before: the first 32 took every
/// slot until their timeout).
#[tokio::test]
async fn a_slow_receiver_delays_only_its_own_tenant() {
    let s = start(|c| {
        c.allow_private_urls = true;
        c.webhooks.secret = Some(
            kontext_coordinator::signing::Secret::from_standard_webhooks(&format!(
                "whsec_{SECRET_B64}"
            ))
            .expect("secret"),
        );
        c.webhooks.timeout = Duration::from_secs(120);
        c.auth =
            kontext_coordinator::auth::Auth::from_arg(&format!("{KEY_A}:acme,{KEY_B}:globex"), 0)
                .expect("keys");
    })
    .await;
    // acme's receiver accepts requests and never answers; it counts how many it holds at once.
    let holding = Arc::new(AtomicU32::new(0));
    let most = Arc::new(AtomicU32::new(0));
    let (h, m) = (holding.clone(), most.clone());
    let app = Router::new().route(
        "/stuck",
        post(move || {
            let (h, m) = (h.clone(), m.clone());
            async move {
                let now = h.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                std::future::pending::<StatusCode>().await
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let stuck = format!("http://{}/stuck", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    for i in 0..40 {
        s.submit(
            KEY_A,
            json!({"prompt": format!("acme {i}"), "webhook_url": stuck}),
        )
        .await;
        s.work_one().await;
    }
    let (url, mut rx) = receiver(0).await;
    s.submit(KEY_B, json!({"prompt": "globex's", "webhook_url": url}))
        .await;
    s.work_one().await;
    let got = next(&mut rx).await;
    verify(&got, &tenant_key(&s, KEY_B).await);
    let held = most.load(Ordering::SeqCst);
    assert!(
        (1..=4).contains(&held),
        "acme held {held} deliveries at once; its limit is 4"
    );
    let text = metrics(&s).await;
    let deferred: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("kontext_webhook_deliveries_total{outcome=\"deferred\"} "))
        .and_then(|v| v.parse().ok())
        .expect("the deferred counter");
    assert!(
        deferred >= 36,
        "acme's other deliveries were deferred: {deferred}"
    );
}

#[tokio::test]
async fn webhook_urls_to_private_addresses_are_refused_without_the_flag() {
    let s = start(|c| {
        c.webhooks.secret = Some(kontext_coordinator::signing::Secret::from_bytes(
            b"0123456789abcdef".to_vec(),
        ));
    })
    .await;
    s.post_json(
        "/v1/jobs",
        KEY_A,
        &json!({"prompt": "x", "webhook_url": "http://10.0.0.5/h"}),
    )
    .await
    .assert_error(422, "webhook_url");
    s.submit(
        KEY_A,
        json!({"prompt": "x", "webhook_url": "https://hooks.example.com/h"}),
    )
    .await;
}

async fn metrics(s: &Server) -> String {
    String::from_utf8_lossy(&s.send(s.http.get(s.at("/metrics"))).await.bytes).into_owned()
}

/// Polls /metrics until `line` shows (with a deadline).
async fn wait_for_metric(s: &Server, line: &str) {
    let deadline = tokio::time::Instant::now() + STALL;
    loop {
        let text = metrics(s).await;
        if text.contains(line) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw {line:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
