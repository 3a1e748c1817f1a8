//! The console's access rules with admin keys (docs/console.md §Access), over HTTP: pages
//! redirect to the login page, a wrong key is refused, an admin key sets an HttpOnly
//! SameSite=Strict session cookie that opens the pages and the admin API's reads but never its
//! actions; console actions need their own Origin and are audited as `console key:<digest>`; a
//! session ends when its key is no longer configured.

mod common;

use common::{KEY_A, Server, start};
use kontext_coordinator::admin_auth::AdminAuth;
use kontext_proto::clock::now_ms;
use kontext_proto::conformance::crash_until_dead;
use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, ORIGIN, SET_COOKIE};
use serde_json::{Value, json};

const ADMIN_KEY: &str = "console-admin-key-0123456789";

/// A client that shows redirects instead of following them.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

async fn with_admin_keys(keys: &str, secret_of: Option<&Server>) -> Server {
    let secret = secret_of.map(|s| s.state.config.url_signing_secret.clone());
    start(move |c| {
        c.admin = AdminAuth::from_arg(Some(keys), false).expect("admin keys");
        if let Some(secret) = secret {
            c.url_signing_secret = secret;
        }
    })
    .await
}

/// Signs in with `key`; the response.
async fn login(server: &Server, key: &str) -> reqwest::Response {
    browser()
        .post(server.at("/console/login"))
        .form(&[("key", key)])
        .send()
        .await
        .expect("POST /console/login")
}

async fn get(server: &Server, path: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut req = browser().get(server.at(path));
    if let Some(c) = cookie {
        req = req.header(COOKIE, c);
    }
    req.send().await.expect("GET")
}

/// A dead letter of tenant acme.
async fn dead_letter(server: &Server) -> String {
    let id = server.submit(KEY_A, json!({"prompt": "poison"})).await;
    let job_id = id.parse().expect("job id");
    crash_until_dead(server.queue.as_ref(), job_id, now_ms()).await;
    id
}

#[tokio::test]
async fn a_session_opens_the_console_and_admin_reads_never_admin_actions() {
    let server = with_admin_keys(ADMIN_KEY, None).await;

    // Without a session: the login page.
    let resp = get(&server, "/console", None).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "/console/login");
    assert_eq!(get(&server, "/console/login", None).await.status(), 200);

    // A tenant's key is not an admin key.
    let refused = login(&server, KEY_A).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(refused.headers().get(SET_COOKIE).is_none());

    let signed_in = login(&server, ADMIN_KEY).await;
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    let set = signed_in.headers()[SET_COOKIE]
        .to_str()
        .expect("cookie text")
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set.contains(attribute), "{attribute} missing: {set}");
    }
    assert!(
        !set.contains(ADMIN_KEY),
        "the cookie never holds the key: {set}"
    );
    let cookie = set.split(';').next().expect("name=value").to_owned();

    // The session opens the pages and the admin API's reads...
    assert_eq!(get(&server, "/console", Some(&cookie)).await.status(), 200);
    assert_eq!(
        get(&server, "/console/audit", Some(&cookie)).await.status(),
        200
    );
    let queue = get(&server, "/v1/admin/queue", Some(&cookie)).await;
    assert_eq!(queue.status(), 200);
    // ...never an admin action, which takes the key itself.
    let id = dead_letter(&server).await;
    let api_action = browser()
        .post(server.at(&format!("/v1/admin/dead/{id}/requeue")))
        .header(COOKIE, &cookie)
        .send()
        .await
        .expect("POST");
    assert_eq!(api_action.status(), StatusCode::UNAUTHORIZED);

    // A console action from another site is refused, even with the session.
    let dismiss = format!("/console/dead/{id}/dismiss");
    let cross_site = browser()
        .post(server.at(&dismiss))
        .header(COOKIE, &cookie)
        .header(ORIGIN, "https://elsewhere.example")
        .send()
        .await
        .expect("POST");
    assert_eq!(cross_site.status(), StatusCode::FORBIDDEN);

    // From the console's own page it runs, audited as the session's key via the console.
    let origin = server.url.clone();
    let own = browser()
        .post(server.at(&dismiss))
        .header(COOKIE, &cookie)
        .header(ORIGIN, origin)
        .send()
        .await
        .expect("POST");
    assert_eq!(own.status(), StatusCode::SEE_OTHER);
    assert_eq!(own.headers()[LOCATION], "/console/dead?done=dismissed");
    let audit = server.get("/v1/admin/audit?limit=1", ADMIN_KEY).await;
    assert_eq!(audit.status, 200, "{}", audit.json);
    let admin = AdminAuth::from_arg(Some(ADMIN_KEY), false).expect("admin key");
    let entry: &Value = &audit.json["entries"][0];
    assert_eq!(entry["action"], "dismiss_dead", "{entry}");
    assert_eq!(entry["target"], id.as_str(), "{entry}");
    assert_eq!(
        entry["actor"],
        format!("console {}", admin.actor(Some(ADMIN_KEY))),
        "{entry}"
    );

    // A coordinator that no longer has that key (same signing secret) ends the session.
    let rotated = with_admin_keys("another-admin-key-0123456789", Some(&server)).await;
    let resp = get(&rotated, "/console", Some(&cookie)).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "/console/login");
    // The same cookie still works where the key is configured: the secret was shared.
    assert_eq!(get(&server, "/console", Some(&cookie)).await.status(), 200);
}
