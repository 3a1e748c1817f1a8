//! Requests refused before they reach a handler's logic: priority classes a key may not use,
//! browser-shaped requests in open (keyless) mode, metrics labels no request can multiply, and
//! clients that fail to authenticate too often.

mod common;

use common::*;
use serde_json::json;

/// A key limited to `standard+bulk` is refused `high` (422 naming the classes it may use), for
/// jobs and chains, before anything is stored; other keys keep all three.
#[tokio::test]
async fn keys_limited_to_priority_classes() {
    let s = start(|c| {
        c.auth = kontext_coordinator::auth::Auth::from_arg(
            &format!("{KEY_A}:acme:0:standard+bulk,{KEY_B}:globex"),
            0,
        )
        .expect("keys");
    })
    .await;
    let r = s
        .post_json(
            "/v1/jobs",
            KEY_A,
            &json!({"prompt": "x", "priority": "high"}),
        )
        .await;
    r.assert_error(422, "priority");
    let r = s
        .post_json(
            "/v1/chains",
            KEY_A,
            &json!({"prompt": "x", "turns": [{"prompt": "y"}], "priority": "high"}),
        )
        .await;
    r.assert_error(422, "priority");
    s.submit(KEY_A, json!({"prompt": "x", "priority": "bulk"}))
        .await;
    s.submit(KEY_B, json!({"prompt": "x", "priority": "high"}))
        .await;
}

/// Open (keyless) mode: a web page's simple cross-origin POST (text/plain JSON) gets 415, and a
/// DNS-rebound Host gets 421; the same request as application/json to 127.0.0.1 is accepted.
#[tokio::test]
async fn open_mode_refuses_browser_requests() {
    let s = start(|c| {
        c.auth = kontext_coordinator::auth::Auth::Open { max_in_flight: 0 };
    })
    .await;
    let body = json!({"prompt": "a red circle"}).to_string();
    let plain = s
        .send(
            s.http
                .post(s.at("/v1/jobs"))
                .header("content-type", "text/plain")
                .body(body.clone()),
        )
        .await;
    plain.assert_error(415, "Content-Type");
    let rebound = s
        .send(
            s.http
                .get(s.at("/v1/jobs"))
                .header("host", "attacker.example"),
        )
        .await;
    rebound.assert_error(421, "Host");
    let json_ok = s
        .send(
            s.http
                .post(s.at("/v1/jobs"))
                .header("content-type", "application/json")
                .body(body),
        )
        .await;
    assert_eq!(json_ok.status, 202);
}

/// Any token is a valid HTTP method, and /healthz needs no key: the request counter must not
/// create a label value per method (a loop of invented methods would grow /metrics without end).
#[tokio::test]
async fn invented_methods_share_one_metrics_label() {
    let s = start(|_| {}).await;
    for i in 0..40 {
        let method = reqwest::Method::from_bytes(format!("INVENTED{i}XYZ").as_bytes())
            .expect("a token is a method");
        let r = s.send(s.http.request(method, s.at("/healthz"))).await;
        assert_eq!(r.status, 405);
    }
    let m = s.send(s.http.get(s.at("/metrics"))).await;
    let text = String::from_utf8_lossy(&m.bytes).into_owned();
    assert!(!text.contains("INVENTED"), "{text}");
    let other: f64 = text
        .lines()
        .filter(|l| l.starts_with("kontext_http_requests_total{method=\"other\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(other, 40.0, "{text}");
}

/// A client guessing keys gets 401 for its burst, then 429 with Retry-After on every keyed
/// request — the right key included, so guessing on learns nothing.
#[tokio::test]
async fn failed_authentications_are_rate_limited_per_client() {
    let s = start(|c| {
        c.auth_failures = kontext_coordinator::auth_failures::AuthFailureLimits {
            burst: 5,
            per_minute: 1,
        };
    })
    .await;
    for i in 0..5 {
        let r = s.get("/v1/jobs", &format!("guess-{i:016}")).await;
        r.assert_error(401, "Authorization");
    }
    let r = s.get("/v1/jobs", "guess-0000000000000005").await;
    r.assert_error(429, "Authorization");
    let retry: u64 = r.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    // Now even the right key is not looked at.
    let r = s.get("/v1/jobs", KEY_A).await;
    r.assert_error(429, "Authorization");
    let metrics = s.send(s.http.get(s.at("/metrics"))).await;
    let text = String::from_utf8_lossy(&metrics.bytes);
    assert!(
        text.contains("kontext_auth_rejected_total{reason=\"unknown_key\"} 6"),
        "{text}"
    );
    assert!(
        text.contains("kontext_auth_rejected_total{reason=\"throttled\"} 1"),
        "{text}"
    );
}

/// Finished jobs count against the retained-jobs limit until retention passes them, so a
/// submit-then-cancel loop is refused with 429 naming the limit.
#[tokio::test]
async fn submit_then_cancel_loops_hit_the_retained_jobs_limit() {
    let s = start(|c| c.limits.retained.jobs = 3).await;
    for i in 0..3 {
        let id = s
            .submit(
                KEY_A,
                json!({"prompt": format!("job {i}"), "width": 64, "height": 64}),
            )
            .await;
        let c = s
            .post_json(&format!("/v1/jobs/{id}/cancel"), KEY_A, &json!({}))
            .await;
        assert_eq!(c.status, 200, "{}", c.json);
    }
    let r = s
        .post_json("/v1/jobs", KEY_A, &json!({"prompt": "one more"}))
        .await;
    r.assert_error(429, "max_retained_jobs");
    assert_eq!(r.json["error"]["limit"], "..=3 jobs");
}

/// With tenant keys and no admin keys the admin API is off: a bearer key gets 403 naming
/// `--admin-keys`; a request without `Authorization: Bearer` (the admin routes' one scheme) is
/// unauthenticated, 401, even with a valid tenant `x-key`.
#[tokio::test]
async fn the_admin_api_is_off_without_admin_keys() {
    let s = start(|c| c.admin = kontext_coordinator::admin_auth::AdminAuth::Disabled).await;
    let with_key = s.get("/v1/admin/queue", KEY_A).await;
    with_key.assert_error(403, "Authorization");
    let x_key_only = s
        .send(s.http.get(s.at("/v1/admin/jobs")).header("x-key", KEY_A))
        .await;
    x_key_only.assert_error(401, "Authorization");
    let none = s.send(s.http.post(s.at("/v1/admin/dead/requeue"))).await;
    none.assert_error(401, "Authorization");
}
