//! The operator console in a real browser: Debian's headless Chromium (`chromium-headless-shell`,
//! which `cargo xtask test` installs) against `kontext up` holding a finished job, a chain and a
//! dead-lettered job. Every page loads without console errors and shows its rows and images, the
//! live chart draws from the admin API, and re-queueing a dead letter works from its button.
//! Screenshots of every page go to `target/console-screenshots/` (the ones under docs/console/ are
//! copies of them; `KONTEXT_CONSOLE_SCREENSHOTS=docs/console` writes them there directly).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use headless_chrome::protocol::cdp::Log::LogEntryLevel;
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::protocol::cdp::Runtime::ConsoleAPICalledEventTypeOption;
use headless_chrome::protocol::cdp::types::Event;
use headless_chrome::{Browser, LaunchOptions, Tab};
use kontext::client::Client;
use kontext::embedded::{Embedded, EmbeddedConfig};
use kontext_coordinator::config::Config;
use kontext_proto::validate::JobRequest;
use kontext_proto::{JobId, JobQueue, JobStatus};
use kontext_worker::config::ModelArgs;
use kontext_worker::settings::WorkerSettings;
use serde_json::{Value, json};

/// The Chromium binary: `$KONTEXT_CHROMIUM`, else Debian's headless shell or browser on PATH.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("KONTEXT_CHROMIUM") {
        return PathBuf::from(p);
    }
    for name in ["chromium-headless-shell", "chromium"] {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "no Chromium: `cargo xtask test` installs Debian's chromium-headless-shell; or \
         `apt-get install chromium-headless-shell`, or set KONTEXT_CHROMIUM"
    );
}

fn screenshot_dir() -> PathBuf {
    let dir = std::env::var_os("KONTEXT_CONSOLE_SCREENSHOTS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// Error-level console messages, uncaught exceptions and failed loads the page reported.
fn collect_errors(tab: &Tab) -> Arc<Mutex<Vec<String>>> {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&errors);
    tab.enable_log().expect("Log domain");
    tab.enable_runtime().expect("Runtime domain");
    tab.add_event_listener(Arc::new(move |event: &Event| {
        let message = match event {
            Event::LogEntryAdded(e) if e.params.entry.level == LogEntryLevel::Error => Some(
                format!("log: {} ({:?})", e.params.entry.text, e.params.entry.url),
            ),
            Event::RuntimeExceptionThrown(e) => {
                Some(format!("exception: {}", e.params.exception_details.text))
            }
            Event::RuntimeConsoleAPICalled(e)
                if e.params.Type == ConsoleAPICalledEventTypeOption::Error =>
            {
                Some(format!("console.error: {:?}", e.params.args))
            }
            _ => None,
        };
        if let Some(m) = message {
            sink.lock().expect("errors lock").push(m);
        }
    }))
    .expect("listener");
    errors
}

/// Opens `path`, waits for `ready` (a CSS selector), checks every image decoded, saves
/// `<name>.png`, and returns the page's text.
fn visit(tab: &Tab, base: &str, path: &str, ready: &str, name: &str) -> String {
    tab.navigate_to(&format!("{base}{path}"))
        .and_then(|t| t.wait_until_navigated())
        .unwrap_or_else(|e| panic!("open {path}: {e}"));
    tab.wait_for_element_with_custom_timeout(ready, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{path}: no {ready:?}: {e}"));
    let images = tab
        .evaluate(
            "Promise.all(Array.from(document.images).map(i => i.decode().then(() => \
             i.naturalWidth > 0, () => false))).then(r => r.every(x => x) ? r.length : -1)",
            true,
        )
        .expect("images");
    let decoded = images.value.and_then(|v| v.as_i64()).unwrap_or(-1);
    assert!(decoded >= 0, "{path}: an image failed to load");
    let png = tab
        .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
        .expect("screenshot");
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).expect("write screenshot");
    tab.find_element("body")
        .and_then(|b| b.get_inner_text())
        .expect("page text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_fleet_and_requeues_from_its_button() {
    // The subscriber `kontext up` installs: spans get trace ids, so jobs carry their trace.
    let _telemetry = kontext_telemetry::init_plain("kontext", "warn").expect("telemetry");
    let data = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut worker = WorkerSettings::new("console-test");
    worker.claim_wait = Duration::from_millis(200);
    let mut embedded = Embedded::start(
        listener,
        EmbeddedConfig {
            coordinator: Config::embedded(data.path()),
            // The trained shapes model: real pictures in the screenshots, 96x96 and quick.
            model: ModelArgs {
                model: "shapes".into(),
                ..ModelArgs::default()
            },
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
    let base = embedded.url().to_owned();
    let client = Client::new(&base, None).expect("client");
    let http = reqwest::Client::new();

    // A finished job and a two-turn chain, run by the embedded worker.
    let job = JobRequest {
        prompt: "a red circle at the top left and a blue square at the bottom right on a white \
                 background"
            .into(),
        steps: Some(12),
        seed: Some(1),
        ..JobRequest::default()
    };
    let accepted = client.submit(&job, None).await.expect("submit");
    let done = client.follow(&accepted.id, |_| {}).await.expect("follow");
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    let chain: Value = http
        .post(format!("{base}/v1/chains"))
        .json(
            &json!({"prompt": "a red circle at the top left and a blue square at the bottom \
                right on a white background", "steps": 12, "seed": 5,
                "turns": [{"prompt": "make the red circle green"}]}),
        )
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("create chain")
        .json()
        .await
        .expect("chain json");
    let chain_id = chain["id"].as_str().expect("chain id").to_owned();
    // Turn 2's job is created when turn 1 commits (in the same script), so follow them in order.
    for i in 0..2 {
        let turn_job = chain["job_ids"][i].as_str().expect("turn job").to_owned();
        let turn = client.follow(&turn_job, |_| {}).await.expect("follow turn");
        assert_eq!(
            turn.status,
            JobStatus::Succeeded,
            "turn {}: {turn:?}",
            i + 1
        );
    }

    // A dead letter: the worker drains (through the admin API) and exits; then a job is claimed
    // by workers that never finish, reaped each time, until the reaper gives up on it.
    http.post(format!("{base}/v1/admin/workers/console-test/drain"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("drain");
    tokio::time::timeout(Duration::from_secs(60), embedded.worker_ended())
        .await
        .expect("the drained worker exits");
    let poison = client
        .submit(
            &JobRequest {
                prompt: "poison".into(),
                steps: Some(2),
                seed: Some(3),
                ..JobRequest::default()
            },
            None,
        )
        .await
        .expect("submit poison");
    let poison_id: JobId = poison.id.parse().expect("job id");
    let queue = embedded.queue();
    // Leases of 1 ms reaped 2 ms later: the death lands in the real clock's current minute
    // (give or take 6 ms), which the overview's last hour must include when it is read.
    let mut t = kontext_proto::clock::now_ms();
    for crash in 0..kontext_proto::policy::MAX_CRASHES {
        let claimed = queue
            .claim(
                &format!("doomed-{crash}"),
                Duration::from_millis(1),
                t,
                Duration::ZERO,
            )
            .await
            .expect("claim")
            .expect("the poison job is claimable");
        assert_eq!(claimed.job.id, poison_id);
        t = (t + 2).max(kontext_proto::clock::now_ms());
        queue.reap(t).await.expect("reap");
    }

    let (base2, job_id, poison_s) = (base.clone(), accepted.id.clone(), poison_id.to_string());
    let chain_for_browser = chain_id.clone();
    let requeued = tokio::task::spawn_blocking(move || {
        let options = LaunchOptions::default_builder()
            .path(Some(chromium()))
            .sandbox(false)
            .window_size(Some((1280, 900)))
            .idle_browser_timeout(Duration::from_secs(300))
            .build()
            .expect("launch options");
        let browser = Browser::new(options).expect("start Chromium");
        let tab = browser.new_tab().expect("tab");
        let errors = collect_errors(&tab);

        // Workers first: the drained worker's record lives a lease TTL (30 s) after its last beat.
        let text = visit(
            &tab,
            &base2,
            "/console/workers",
            "tr[data-worker='console-test']",
            "workers",
        );
        assert!(text.contains("draining"), "{text}");
        // Overview: the live chart has drawn at least two samples from /v1/admin/queue.
        let text = visit(
            &tab,
            &base2,
            "/console",
            "#depth[data-samples='2']",
            "overview",
        );
        assert!(text.contains("dead letters"), "{text}");
        // The hour's throughput: the job and the chain's two turns succeeded, the poison job
        // died (a failure), one bar per minute.
        assert!(text.contains("3 succeeded, 1 failed"), "{text}");
        assert_eq!(
            tab.find_elements("#throughput rect").expect("bars").len(),
            60
        );
        // Jobs across tenants, with the finished job's result thumbnail.
        let text = visit(
            &tab,
            &base2,
            "/console/jobs",
            &format!("tr[data-job='{job_id}'] img[alt='result']"),
            "jobs",
        );
        assert!(text.contains("poison") && text.contains("dead"), "{text}");
        // The finished job's page: where its attempt's time went, stage by stage.
        let text = visit(
            &tab,
            &base2,
            &format!("/console/jobs/{job_id}"),
            "#stages",
            "job-succeeded",
        );
        assert!(
            text.contains("fetch ") && text.contains("· engine "),
            "{text}"
        );
        // ... and the trace it belongs to (docs/tracing.md).
        let trace = tab
            .find_element("#trace")
            .and_then(|e| e.get_inner_text())
            .expect("the job page names its trace");
        let trace = trace.trim();
        assert!(
            trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()),
            "{trace:?}"
        );
        // The poison job's history: three claims, each ended by a lost lease.
        let text = visit(
            &tab,
            &base2,
            &format!("/console/jobs/{poison_s}"),
            "#attempts tbody tr",
            "job",
        );
        assert_eq!(text.matches("lease lost").count(), 3, "{text}");
        // Usage: tenant default with the job's and the chain's images.
        let text = visit(&tab, &base2, "/console/usage", "#usage-chart rect", "usage");
        assert!(text.contains("default"), "{text}");
        // The chain as a filmstrip: two succeeded frames with images.
        let text = visit(
            &tab,
            &base2,
            &format!("/console/chains/{chain_for_browser}"),
            "#filmstrip .frame[data-turn='2'] img",
            "chain",
        );
        assert!(text.contains("make the red circle green"), "{text}");
        assert_eq!(
            tab.find_elements("#filmstrip .frame[data-state='succeeded'] img")
                .expect("frames")
                .len(),
            2
        );
        // Dead letters: the poison job, re-queued from its button.
        let text = visit(
            &tab,
            &base2,
            "/console/dead",
            &format!("tr[data-job='{poison_s}']"),
            "dead-letters",
        );
        assert!(text.contains("crashed"), "{text}");
        let button = tab
            .find_element(&format!(
                "tr[data-job='{poison_s}'] form[action$='/requeue'] button"
            ))
            .expect("the re-queue button");
        button.click().expect("click re-queue");
        tab.wait_until_navigated().expect("after re-queue");
        let notice = tab
            .wait_for_element_with_custom_timeout("p.notice a", Duration::from_secs(20))
            .and_then(|a| a.get_inner_text())
            .expect("re-queue notice");
        // The audit log: the button's re-queue, then the API's drain, each with its actor.
        let text = visit(
            &tab,
            &base2,
            "/console/audit",
            "#audit tr[data-action='requeue_dead']",
            "audit",
        );
        // Each row's cells: when, actor, action, target.
        let rows: Vec<Vec<String>> = tab
            .find_elements("#audit tbody tr")
            .expect("audit rows")
            .iter()
            .map(|row| {
                row.find_elements("td")
                    .expect("cells")
                    .iter()
                    .map(|td| td.get_inner_text().expect("cell text"))
                    .collect()
            })
            .collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert_eq!(rows[0][1..3], ["console open", "requeue_dead"], "{rows:?}");
        assert!(rows[0][3].starts_with(&poison_s), "{rows:?}");
        assert_eq!(
            rows[1][1..],
            ["open", "drain_worker", "console-test"],
            "{rows:?}"
        );
        let errors = errors.lock().expect("errors lock").clone();
        assert!(errors.is_empty(), "console errors: {errors:#?}");
        notice
    })
    .await
    .expect("browser thread");

    // The new job exists for its tenant, queued (no worker is left to run it).
    let view = client.job(&requeued).await.expect("the re-queued job");
    assert_eq!(view.status, JobStatus::Queued, "{view:?}");
    // The audit log tells the button (in open loopback mode) from a script's call.
    let audit: serde_json::Value = http
        .get(format!("{base}/v1/admin/audit?limit=1"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("audit")
        .json()
        .await
        .expect("audit JSON");
    assert_eq!(audit["entries"][0]["action"], "requeue_dead", "{audit}");
    assert_eq!(audit["entries"][0]["actor"], "console open", "{audit}");
    // `kontext audit` prints the same two actions, newest first.
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kontext"))
            .args(["audit", "--url", base.as_str()])
            .output()
            .expect("run kontext audit")
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert_eq!(rows[0][1..4], ["console", "open", "requeue_dead"], "{text}");
    assert_eq!(
        rows[1][1..4],
        ["open", "drain_worker", "console-test"],
        "{text}"
    );
    embedded.shutdown().await.expect("clean shutdown");
}
