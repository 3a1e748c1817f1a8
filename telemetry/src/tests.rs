use std::time::{Duration, SystemTime};

use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt as _;

use super::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// A subscriber of this thread with an OpenTelemetry layer exporting into memory; `f` runs
/// under it, then every span is flushed and returned.
fn traced(f: impl FnOnce()) -> Vec<SpanData> {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer(TRACER_NAME)));
    tracing::subscriber::with_default(subscriber, f);
    provider.force_flush().expect("flush");
    exporter.get_finished_spans().expect("spans")
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
        panic!(
            "no span {name} in {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        )
    })
}

#[test]
fn a_span_continues_the_trace_of_a_traceparent() {
    let header = format!("00-{TRACE}-{PARENT}-01");
    let mut seen = (None, None);
    let spans = traced(|| {
        let job = tracing::info_span!("job", trace_id = tracing::field::Empty);
        continue_trace(&job, Some(&header), Some("vendor=abc"));
        record_trace_id(&job);
        job.in_scope(|| {
            let stage = tracing::info_span!("fetch");
            stage.in_scope(|| seen = (trace_id_of(&stage), traceparent_of(&stage)));
        });
    });
    let job = named(&spans, "job");
    let fetch = named(&spans, "fetch");
    assert_eq!(
        job.span_context.trace_id(),
        TraceId::from_hex(TRACE).expect("hex")
    );
    assert_eq!(job.parent_span_id, SpanId::from_hex(PARENT).expect("hex"));
    assert_eq!(job.span_context.trace_state().header(), "vendor=abc");
    assert_eq!(fetch.span_context.trace_id(), job.span_context.trace_id());
    assert_eq!(fetch.parent_span_id, job.span_context.span_id());
    assert_eq!(seen.0.as_deref(), Some(TRACE));
    let carried = seen.1.expect("a traceparent");
    assert_eq!(
        carried,
        format!("00-{TRACE}-{}-01", fetch.span_context.span_id())
    );
}

#[test]
fn a_traceparent_made_here_is_continued_elsewhere() {
    let mut carried = None;
    let first = traced(|| {
        let submit = tracing::info_span!("submit");
        carried = traceparent_of(&submit);
    });
    let carried = carried.expect("a traceparent");
    let submit = named(&first, "submit");
    assert_eq!(submit.parent_span_id, SpanId::INVALID, "a new root");
    let second = traced(|| {
        let job = tracing::info_span!("job");
        continue_trace(&job, Some(&carried), None);
        job.in_scope(|| {});
    });
    let job = named(&second, "job");
    assert_eq!(job.span_context.trace_id(), submit.span_context.trace_id());
    assert_eq!(job.parent_span_id, submit.span_context.span_id());
}

#[test]
fn a_malformed_traceparent_starts_a_new_trace() {
    for bad in [
        "",
        "garbage",
        // All-zero trace id and span id are invalid (W3C trace-context §3.2.2.3-4).
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        // Upper-case hex is not allowed.
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        // Version ff is invalid.
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ] {
        let spans = traced(|| {
            let job = tracing::info_span!("job");
            continue_trace(&job, Some(bad), None);
            job.in_scope(|| {});
        });
        let job = named(&spans, "job");
        assert_eq!(
            job.parent_span_id,
            SpanId::INVALID,
            "{bad:?} must start a new root"
        );
        assert!(job.span_context.is_valid());
    }
}

#[test]
fn without_an_opentelemetry_layer_there_is_no_trace() {
    let subscriber = tracing_subscriber::registry();
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("job");
        assert_eq!(traceparent_of(&span), None);
        assert_eq!(trace_id_of(&span), None);
    });
}

#[test]
fn past_spans_join_the_trace_they_name() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    // The only test that sets the global provider (record_past_span uses it).
    opentelemetry::global::set_tracer_provider(provider.clone());
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let end = start + Duration::from_millis(1500);
    let header = format!("00-{TRACE}-{PARENT}-01");
    record_past_span(
        "queued",
        Some(&header),
        start,
        end,
        vec![KeyValue::new("attempt", 1)],
    );
    record_past_span("queued", Some("not a traceparent"), start, end, Vec::new());
    record_past_span("queued", None, start, end, Vec::new());
    provider.force_flush().expect("flush");
    let spans = exporter.get_finished_spans().expect("spans");
    assert_eq!(
        spans.len(),
        1,
        "only the span with a valid parent: {spans:?}"
    );
    let queued = &spans[0];
    assert_eq!(
        queued.span_context.trace_id(),
        TraceId::from_hex(TRACE).expect("hex")
    );
    assert_eq!(
        queued.parent_span_id,
        SpanId::from_hex(PARENT).expect("hex")
    );
    assert_eq!((queued.start_time, queued.end_time), (start, end));
}

#[test]
fn otlp_endpoints_name_the_traces_path() {
    let ok = |s: &str| parse_otlp_endpoint(s).expect(s).to_string();
    assert_eq!(
        ok("http://collector:4318"),
        "http://collector:4318/v1/traces"
    );
    assert_eq!(
        ok("http://collector:4318/"),
        "http://collector:4318/v1/traces"
    );
    assert_eq!(
        ok("https://otel.example.com/ingest/v1/traces"),
        "https://otel.example.com/ingest/v1/traces"
    );
    assert_eq!(
        ok("https://otel.example.com/ingest"),
        "https://otel.example.com/ingest/v1/traces"
    );
    let grpc = parse_otlp_endpoint("grpc://collector:4317").expect_err("not http");
    assert!(grpc.contains("http://"), "{grpc}");
    assert!(parse_otlp_endpoint("collector:4318").is_err());
    assert!(parse_interval("5ms").is_err());
    assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
}
