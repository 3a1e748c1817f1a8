//! Traces across the fleet end to end (docs/tracing.md): this test process is the coordinator
//! (its spans exported with `kontext_telemetry::init`, as `kontext-coordinator` does) and an
//! `e2e-worker` process runs the jobs with `--otlp-endpoint` and `--json-logs`. Both export over
//! OTLP/HTTP to a receiver in this test, which decodes the protobuf requests (the OTLP spec's
//! messages from `opentelemetry-proto`), so the assertions read what a collector would get.
//!
//! A job submitted with a client's `traceparent` lands in the client's trace: the coordinator's
//! request span is the client span's child, the worker's `job` span the child of the
//! coordinator's `enqueue` span, and fetch, engine (with its stages), encode, upload and commit
//! are children of `job`. A chain submitted without one is a trace of its own that holds every
//! turn. The worker's JSON log lines of the job carry its trace id and job id.

mod e2e_support;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use e2e_support::{DEADLINE, Fleet, FleetOptions, KEY_ALPHA, http, note};
use kontext_coordinator::admin_auth::AdminAuth;
use kontext_proto::{ChainId, ChainStatus, JobId, JobQueue, JobStatus};
use kontext_telemetry::{LogArgs, LogStream, Service};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;
use serde_json::{Value, json};

const ADMIN_KEY: &str = "admin-key-of-the-trace-test-0123";

/// One span as a collector received it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    /// Empty for a root.
    parent: String,
    start_ns: u64,
    end_ns: u64,
    attributes: HashMap<String, String>,
}

#[derive(Default)]
struct Inbox {
    spans: Mutex<Vec<Received>>,
    arrived: tokio::sync::Notify,
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(list: &[KeyValue]) -> HashMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

/// `POST /v1/traces`: an OTLP/HTTP receiver (protobuf bodies).
async fn receive(State(inbox): State<Arc<Inbox>>, body: Bytes) -> Result<Vec<u8>, String> {
    let request = ExportTraceServiceRequest::decode(body).map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                got.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    start_ns: span.start_time_unix_nano,
                    end_ns: span.end_time_unix_nano,
                    attributes: attributes(&span.attributes),
                });
            }
        }
    }
    inbox.spans.lock().expect("inbox").extend(got);
    inbox.arrived.notify_waiters();
    Ok(ExportTraceServiceResponse::default().encode_to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Starts the receiver on a free loopback port; its base URL.
async fn start_receiver(inbox: Arc<Inbox>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let app = axum::Router::new()
        .route("/v1/traces", post(receive))
        .with_state(inbox);
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// Waits (on each export's arrival, within the deadline) until the spans of `trace` satisfy
/// `done`; those spans.
async fn wait_for(
    inbox: &Inbox,
    trace: &str,
    what: &str,
    done: impl Fn(&[Received]) -> bool,
) -> Vec<Received> {
    let until = Instant::now() + DEADLINE;
    loop {
        let arrived = inbox.arrived.notified();
        let spans: Vec<Received> = {
            let all = inbox.spans.lock().expect("inbox");
            all.iter()
                .filter(|s| s.trace_id == trace)
                .cloned()
                .collect()
        };
        if done(&spans) {
            return spans;
        }
        let left = until.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "trace {trace} never got {what}; it has {:?}",
            spans
                .iter()
                .map(|s| (&s.service, &s.name))
                .collect::<Vec<_>>()
        );
        let _ = tokio::time::timeout(left, arrived).await;
    }
}

/// `wait_for` a span of every `(service, name)` in `want`.
async fn wait_for_trace(inbox: &Inbox, trace: &str, want: &[(&str, &str)]) -> Vec<Received> {
    wait_for(inbox, trace, &format!("{want:?}"), |spans| {
        want.iter().all(|(service, name)| {
            spans
                .iter()
                .any(|s| s.service == *service && s.name == *name)
        })
    })
    .await
}

fn named<'a>(spans: &'a [Received], service: &str, name: &str) -> Vec<&'a Received> {
    spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect()
}

fn one<'a>(spans: &'a [Received], service: &str, name: &str) -> &'a Received {
    let found = named(spans, service, name);
    assert_eq!(found.len(), 1, "one {service} {name} span: {found:#?}");
    found[0]
}

/// The trace as an indented tree (service, name, duration, job id), for the test output.
fn render(spans: &[Received]) -> String {
    fn walk(spans: &[Received], parent: &str, depth: usize, out: &mut String) {
        let mut children: Vec<_> = spans.iter().filter(|s| s.parent == parent).collect();
        children.sort_by_key(|s| s.start_ns);
        for s in children {
            let ms = s.end_ns.saturating_sub(s.start_ns) as f64 / 1e6;
            let job = s.attributes.get("job_id").map_or("", String::as_str);
            let _ = writeln!(
                out,
                "{:indent$}{} [{}] {ms:.1} ms {job}",
                "",
                s.name,
                s.service,
                indent = depth * 2
            );
            walk(spans, &s.span_id, depth + 1, out);
        }
    }
    let ids: Vec<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut out = String::new();
    // Roots: spans whose parent is not in this trace (the client's span, or none).
    let mut roots: Vec<&str> = spans
        .iter()
        .filter(|s| !ids.contains(&s.parent.as_str()))
        .map(|s| s.parent.as_str())
        .collect();
    roots.sort_unstable();
    roots.dedup();
    for root in roots {
        let _ = writeln!(out, "{}", if root.is_empty() { "(root)" } else { root });
        walk(spans, root, 1, &mut out);
    }
    out
}

/// Worker log lines (JSON) inside the job `id` that carry `trace`.
fn json_lines_of(log: &str, id: &str, trace: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["spans"].as_array().is_some_and(|spans| {
                spans
                    .iter()
                    .any(|s| s["job_id"] == id && s["trace_id"] == trace)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_a_job_from_the_request_through_the_worker() {
    let inbox = Arc::new(Inbox::default());
    let receiver = start_receiver(Arc::clone(&inbox)).await;
    let logs = LogArgs {
        json_logs: false,
        otlp_endpoint: Some(kontext_telemetry::parse_otlp_endpoint(&receiver).expect("url")),
        otlp_export_interval: Duration::from_millis(100),
    };
    let service = Service {
        name: "kontext-coordinator",
        instance: None,
    };
    let telemetry =
        kontext_telemetry::init(&service, &logs, "warn", LogStream::Stderr).expect("telemetry");
    let fleet = Fleet::start_with(
        FleetOptions {
            workers: 0,
            min_step_ms: 0,
            ..FleetOptions::default()
        },
        |c| c.admin = AdminAuth::from_arg(Some(ADMIN_KEY), false).expect("admin key"),
    )
    .expect("fleet");
    fleet
        .spawn_worker_with(
            "w0",
            &[
                "--otlp-endpoint",
                &receiver,
                "--otlp-export-interval",
                "100ms",
                "--json-logs",
            ],
        )
        .expect("worker");
    let queue = fleet.queue().await.expect("queue");

    // A job in the client's trace.
    let trace = format!("{:032x}", rand::random::<u128>() | 1);
    let client_span = format!("{:016x}", rand::random::<u64>() | 1);
    let resp = http(KEY_ALPHA)
        .post(format!("{}/v1/jobs", fleet.url))
        .header("traceparent", format!("00-{trace}-{client_span}-01"))
        .json(&json!({"prompt": "a traced fox", "width": 64, "height": 64, "steps": 3}))
        .send()
        .await
        .expect("POST /v1/jobs");
    assert_eq!(resp.status(), 202);
    let v: Value = resp.json().await.expect("JSON");
    let id: JobId = v["id"].as_str().expect("id").parse().expect("job id");
    let job = fleet
        .wait_record(&queue, id, "succeeded", |j| j.status.is_terminal())
        .await
        .expect("job");
    assert_eq!(job.status, JobStatus::Succeeded, "{job:#?}");
    let coordinator = "kontext-coordinator";
    let worker = "kontext-worker";
    let spans = wait_for_trace(
        &inbox,
        &trace,
        &[
            (coordinator, "POST /v1/jobs"),
            (coordinator, "enqueue"),
            (worker, "queued"),
            (worker, "job"),
            (worker, "fetch"),
            (worker, "engine"),
            (worker, "engine.text"),
            (worker, "engine.denoise"),
            (worker, "engine.decode"),
            (worker, "encode"),
            (worker, "upload"),
            (worker, "commit"),
        ],
    )
    .await;
    let tree = render(&spans);
    note(&format!("trace {trace} of job {id}:\n{tree}"));
    let request = one(&spans, coordinator, "POST /v1/jobs");
    assert_eq!(
        request.parent, client_span,
        "the request continues the client's span"
    );
    assert_eq!(request.attributes["http.response.status_code"], "202");
    let enqueue = one(&spans, coordinator, "enqueue");
    assert_eq!(enqueue.parent, request.span_id);
    assert_eq!(enqueue.attributes["job_id"], id.to_string());
    let queued = one(&spans, worker, "queued");
    assert_eq!(
        queued.parent, enqueue.span_id,
        "the queue wait follows the enqueue"
    );
    let job_span = one(&spans, worker, "job");
    assert_eq!(
        job_span.parent, enqueue.span_id,
        "the worker continues the stored context"
    );
    assert_eq!(job_span.attributes["job_id"], id.to_string());
    assert_eq!(job_span.attributes["outcome"], "succeeded");
    assert!(
        queued.end_ns <= job_span.start_ns + 1_000_000,
        "queued ends at the claim"
    );
    for stage in ["fetch", "engine", "encode", "upload", "commit"] {
        let s = one(&spans, worker, stage);
        assert_eq!(s.parent, job_span.span_id, "{stage} is a stage of the job");
        assert!(
            s.start_ns >= job_span.start_ns && s.end_ns <= job_span.end_ns,
            "{stage} lies inside the job"
        );
    }
    let engine = one(&spans, worker, "engine");
    for stage in [
        "engine.loras",
        "engine.text",
        "engine.context",
        "engine.denoise",
        "engine.decode",
    ] {
        assert_eq!(one(&spans, worker, stage).parent, engine.span_id, "{stage}");
    }
    assert_eq!(
        one(&spans, worker, "engine.denoise").attributes["steps"],
        "3"
    );
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("trace-of-one-job.txt"),
        &tree,
    )
    .expect("writing the trace");

    // The admin API names the job's trace.
    let detail: Value = http(ADMIN_KEY)
        .get(format!("{}/v1/admin/jobs/{id}", fleet.url))
        .send()
        .await
        .expect("GET /v1/admin/jobs/{id}")
        .json()
        .await
        .expect("JSON");
    assert_eq!(detail["trace_id"], trace.as_str(), "{detail}");

    // The worker's JSON log lines of the job carry its ids.
    let log = fleet.with_worker("w0", |w| w.log_text());
    let lines = json_lines_of(&log, &id.to_string(), &trace);
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "job committed"),
        "no JSON line \"job committed\" with job_id {id} and trace_id {trace}:\n{log}"
    );

    // A chain without a client trace: one new trace, rooted at the coordinator, holds every turn.
    let v = fleet
        .post_accepted(
            "/v1/chains",
            json!({"prompt": "a fox", "turns": [{"prompt": "the fox sits"}],
                   "width": 64, "height": 64, "steps": 2}),
        )
        .await;
    let chain_id: ChainId = v["id"].as_str().expect("id").parse().expect("chain id");
    let until = Instant::now() + DEADLINE;
    let mut watched: Option<(JobId, Option<String>)> = None;
    let chain = loop {
        let c = queue
            .get_chain(chain_id)
            .await
            .expect("get")
            .expect("chain");
        if c.status != ChainStatus::Running {
            break c;
        }
        assert!(Instant::now() < until, "the chain never finished: {c:#?}");
        // Wake on the live turn's next event rather than polling.
        let live = c.turns[c.current as usize - 1].job_id;
        if watched.as_ref().is_none_or(|(id, _)| *id != live) {
            watched = Some((live, None));
        }
        if let Some((id, cursor)) = watched.as_mut() {
            let events = queue
                .events(*id, cursor.as_deref(), Duration::from_millis(250))
                .await
                .expect("events");
            if let Some((c, _)) = events.last() {
                *cursor = Some(c.clone());
            }
        }
    };
    assert_eq!(chain.status, ChainStatus::Succeeded, "{chain:#?}");
    let turn_jobs: Vec<String> = chain.turns.iter().map(|t| t.job_id.to_string()).collect();
    let carried = chain.turns[1]
        .spec
        .traceparent
        .clone()
        .expect("turns carry the traceparent of the request that planned them");
    let chain_trace = carried.split('-').nth(1).expect("trace id").to_owned();
    assert_ne!(chain_trace, trace);
    let planned = wait_for_trace(
        &inbox,
        &chain_trace,
        &[(coordinator, "POST /v1/chains"), (coordinator, "enqueue")],
    )
    .await;
    let request = one(&planned, coordinator, "POST /v1/chains");
    assert_eq!(
        request.parent, "",
        "no client trace: the request is the root"
    );
    let enqueue = one(&planned, coordinator, "enqueue");
    assert_eq!(enqueue.parent, request.span_id);
    let spans = wait_for(&inbox, &chain_trace, "a job span per turn", |spans| {
        named(spans, worker, "job").len() == turn_jobs.len()
    })
    .await;
    let turn_spans = named(&spans, worker, "job");
    let mut traced_jobs: Vec<&str> = turn_spans
        .iter()
        .map(|s| s.attributes["job_id"].as_str())
        .collect();
    traced_jobs.sort_unstable();
    let mut expected: Vec<&str> = turn_jobs.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(traced_jobs, expected, "every turn is in the chain's trace");
    assert!(
        turn_spans.iter().all(|s| s.parent == enqueue.span_id),
        "every turn continues the chain's enqueue span"
    );

    drop(fleet);
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
}
