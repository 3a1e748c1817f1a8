//! Logs and traces of Kontext Fleet's binaries (docs/tracing.md).
//!
//! [`init`] installs one subscriber per process: text or JSON log lines (filtered by `RUST_LOG`)
//! and an OpenTelemetry layer that gives every `kontext*` span at INFO a trace and span id,
//! whatever `RUST_LOG` says. With `--otlp-endpoint` the spans are exported over OTLP/HTTP
//! (protobuf) in batches; without it they still carry ids, so a job's `traceparent` and the
//! `trace_id` of its log lines join the coordinator's and the worker's logs.

use std::time::Duration;

use clap::builder::BoolishValueParser;
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, fmt};
use url::Url;

mod otlp_client;
pub mod trace_context;

pub use otlp_client::{OtlpClientError, OtlpHttpClient};
pub use trace_context::{
    TRACEPARENT, TRACESTATE, continue_trace, record_past_span, record_trace_id, trace_id_of,
    traceparent_of,
};

/// Instrumentation scope of every span this project makes.
pub const TRACER_NAME: &str = "kontext";
/// The OTLP/HTTP path of traces, appended to an endpoint that does not name it.
pub const TRACES_PATH: &str = "/v1/traces";
/// Spans of these crates are traced (at INFO and above) regardless of the log filter.
const TRACED_TARGETS: &[&str] = &["kontext", "e2e_worker"];

/// The logging and tracing flags every long-running binary takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Log as JSON lines instead of text (filter with RUST_LOG). Lines inside a job carry its
    /// `job_id` and `trace_id`.
    #[arg(long, env = "KONTEXT_JSON_LOGS", value_parser = BoolishValueParser::new())]
    pub json_logs: bool,

    /// Export traces over OTLP/HTTP (protobuf) to this collector, e.g.
    /// http://otel-collector:4318 (`/v1/traces` is appended unless the path ends with it).
    /// Unset: nothing is exported; trace ids still go into jobs and log lines.
    #[arg(long, env = "KONTEXT_OTLP_ENDPOINT", value_parser = parse_otlp_endpoint)]
    pub otlp_endpoint: Option<Url>,

    /// How often finished spans are sent to the collector (at most 512 per request; up to 2,048
    /// wait, more are dropped and counted by the exporter).
    #[arg(long, env = "KONTEXT_OTLP_EXPORT_INTERVAL", default_value = "5s",
          value_parser = parse_interval)]
    pub otlp_export_interval: Duration,
}

/// `--otlp-endpoint`: an http(s) URL, with `/v1/traces` as its path.
pub fn parse_otlp_endpoint(text: &str) -> Result<Url, String> {
    let mut url = Url::parse(text).map_err(|e| {
        format!("expected a collector URL such as http://otel-collector:4318 ({e})")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the OTLP endpoint must be an http:// or https:// URL (OTLP/HTTP), not {}://",
            url.scheme()
        ));
    }
    if !url.path().ends_with(TRACES_PATH) {
        let path = format!("{}{TRACES_PATH}", url.path().trim_end_matches('/'));
        url.set_path(&path);
    }
    Ok(url)
}

/// `--otlp-export-interval`: a duration as every flag of the fleet reads it.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let d = kontext_proto::clock::parse_duration(text).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(10) || d > Duration::from_secs(600) {
        return Err(format!("must be between 10ms and 10m (got {text})"));
    }
    Ok(d)
}

/// Who is logging: `service.name` and `service.instance.id` of the exported spans.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: &'static str,
    pub instance: Option<String>,
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(transparent)]
    Client(#[from] OtlpClientError),
    #[error("setting up the OTLP exporter for {endpoint}: {source}")]
    Exporter {
        endpoint: Url,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("a tracing subscriber is already installed in this process: {0}")]
    AlreadyInstalled(#[source] tracing_subscriber::util::TryInitError),
}

/// Owns the span pipeline; [`Telemetry::shutdown`] sends what is still buffered.
#[must_use = "call shutdown() before the process exits, or the last spans are lost"]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Exports every finished span still buffered and stops the exporter. Blocks for up to the
    /// exporter's timeout; from async code call it in `spawn_blocking`.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "exporting the last spans failed");
        }
    }
}

/// The span pipeline alone: a provider, exporting to `args.otlp_endpoint` when set.
pub fn tracer_provider(
    service: &Service,
    args: &LogArgs,
) -> Result<SdkTracerProvider, TelemetryError> {
    let mut resource = Resource::builder()
        .with_service_name(service.name)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if let Some(instance) = &service.instance {
        resource = resource.with_attribute(KeyValue::new("service.instance.id", instance.clone()));
    }
    let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
    if let Some(endpoint) = &args.otlp_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(OtlpHttpClient::new()?)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint.as_str())
            .with_timeout(otlp_client::REQUEST_TIMEOUT)
            .build()
            .map_err(|source| TelemetryError::Exporter {
                endpoint: endpoint.clone(),
                source,
            })?;
        let config = BatchConfigBuilder::default()
            .with_scheduled_delay(args.otlp_export_interval)
            .build();
        builder = builder.with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(config)
                .build(),
        );
    }
    Ok(builder.build())
}

/// Installs this process's subscriber: log lines on `stream` filtered by `RUST_LOG` (else
/// `default_filter`), and spans of this project's crates traced at INFO.
pub fn init(
    service: &Service,
    args: &LogArgs,
    default_filter: &str,
    stream: LogStream,
) -> Result<Telemetry, TelemetryError> {
    let provider = tracer_provider(service, args)?;
    opentelemetry::global::set_tracer_provider(provider.clone());
    let traced = TRACED_TARGETS.iter().fold(Targets::new(), |t, target| {
        t.with_target(*target, tracing::Level::INFO)
    });
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(TRACER_NAME))
        .with_filter(traced);
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let writer = move || -> Box<dyn std::io::Write> {
        match stream {
            LogStream::Stdout => Box::new(std::io::stdout()),
            LogStream::Stderr => Box::new(std::io::stderr()),
        }
    };
    let lines = if args.json_logs {
        fmt::layer()
            .json()
            .with_writer(writer)
            .with_filter(filter)
            .boxed()
    } else {
        fmt::layer().with_writer(writer).with_filter(filter).boxed()
    };
    tracing_subscriber::registry()
        .with(spans)
        .with(lines)
        .try_init()
        .map_err(TelemetryError::AlreadyInstalled)?;
    Ok(Telemetry { provider })
}

/// `init` for a process without the logging flags (tests, benchmarks): text lines on stderr,
/// spans with ids, nothing exported.
pub fn init_plain(
    service: &'static str,
    default_filter: &str,
) -> Result<Telemetry, TelemetryError> {
    let service = Service {
        name: service,
        instance: None,
    };
    init(
        &service,
        &LogArgs::default(),
        default_filter,
        LogStream::Stderr,
    )
}

#[cfg(test)]
mod tests;
