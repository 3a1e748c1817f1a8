//! Start-up rules: open access only on loopback.

use kontext_coordinator::config::Config;

#[tokio::test]
async fn open_access_refuses_a_non_loopback_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::embedded(dir.path());
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let err = kontext_coordinator::run(listener, config, std::future::pending())
        .await
        .expect_err("open access on 0.0.0.0 must be refused");
    let text = err.to_string();
    assert!(
        text.contains("--api-keys") && text.contains("loopback"),
        "{text}"
    );
}
