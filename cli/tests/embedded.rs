//! The embedded mode: the Quickstart's `kontext demo` binary end to end, and `kontext up`'s
//! in-process coordinator + worker serving a job and one `/metrics` with both sides.

use std::process::Command;
use std::time::Duration;

use kontext::client::Client;
use kontext::embedded::{Embedded, EmbeddedConfig};
use kontext_coordinator::config::Config;
use kontext_proto::JobStatus;
use kontext_proto::validate::JobRequest;
use kontext_worker::config::ModelArgs;
use kontext_worker::settings::WorkerSettings;

#[test]
fn demo_writes_a_generated_and_an_edited_png() {
    let out = tempfile::tempdir().expect("tempdir");
    let run = Command::new(env!("CARGO_BIN_EXE_kontext"))
        .args(["demo", "--steps", "2", "--out"])
        .arg(out.path())
        .output()
        .expect("run kontext demo");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "kontext demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("stopped cleanly"), "{stdout}");
    let generated = image::open(out.path().join("generate.png")).expect("generate.png decodes");
    let edited = image::open(out.path().join("edit.png")).expect("edit.png decodes");
    // The default model is `shapes`: its native size, which is also the one size edits snap to
    // (models/shapes/kontext_model.json), so `kontext up` validated with the model's profile.
    assert_eq!((generated.width(), generated.height()), (96, 96));
    assert_eq!((edited.width(), edited.height()), (96, 96));
    assert_ne!(
        generated.as_bytes(),
        edited.as_bytes(),
        "the edit must change the image"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_a_job_and_the_workers_metrics() {
    let data = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut worker = WorkerSettings::new("embedded-test");
    worker.claim_wait = Duration::from_millis(200);
    let mut embedded = Embedded::start(
        listener,
        EmbeddedConfig {
            coordinator: Config::embedded(data.path()),
            model: ModelArgs::default(),
            load_engine: Box::new(kontext_worker::config::load_engine),
            worker,
        },
    )
    .await
    .expect("start");
    embedded
        .wait_ready(Duration::from_secs(120))
        .await
        .expect("ready");

    let client = Client::new(embedded.url(), None).expect("client");
    let job = JobRequest {
        prompt: "a lighthouse".into(),
        width: Some(256),
        height: Some(256),
        steps: Some(2),
        seed: Some(1),
        ..JobRequest::default()
    };
    let accepted = client.submit(&job, None).await.expect("submit");
    let done = client.follow(&accepted.id, |_| {}).await.expect("follow");
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    let png = client.result(&accepted.id).await.expect("result");
    let img = image::load_from_memory(&png).expect("decodable PNG");
    assert_eq!((img.width(), img.height()), (256, 256));

    let metrics = reqwest::get(format!("{}/metrics", embedded.url()))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    for family in [
        "kontext_queue_depth",
        "kontext_worker_claims_total 1",
        "kontext_worker_stage_seconds_total",
        "kontext_worker_tenant_images_total{tenant=\"default\"} 1",
        "kontext_worker_tenant_steps_total{tenant=\"default\"} 2",
    ] {
        assert!(metrics.contains(family), "no {family:?} in:\n{metrics}");
    }

    // The operators' commands over the admin API (open, as the rest of an open `kontext up`).
    let kontext = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kontext"))
            .args(args)
            .args(["--url", embedded.url()])
            .output()
            .expect("run kontext");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "kontext {args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let usage = tokio::task::block_in_place(|| kontext(&["usage"]));
    let row = usage
        .lines()
        .find(|l| l.contains(" default "))
        .unwrap_or_else(|| panic!("no row of tenant default in:\n{usage}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    // day, tenant, engine s, images, steps
    assert_eq!(cells.len(), 5, "{row}");
    assert_eq!((cells[3], cells[4]), ("1", "2"), "{usage}");
    assert!(cells[2].parse::<f64>().is_ok_and(|s| s > 0.0), "{usage}");
    let workers = tokio::task::block_in_place(|| kontext(&["workers"]));
    assert!(
        workers
            .lines()
            .any(|l| l.starts_with("embedded-test ") && l.contains(" cpu ")),
        "{workers}"
    );
    embedded.shutdown().await.expect("clean shutdown");
}
