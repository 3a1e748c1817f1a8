//! The HTTP client the OTLP exporter sends with: the workspace's reqwest 0.12 on a small runtime
//! of its own.
//!
//! opentelemetry-otlp's built-in clients pull a second reqwest (0.13) into the build, and its
//! batch span processor calls the exporter from a plain thread (`futures_executor::block_on`,
//! opentelemetry_sdk `trace/span_processor.rs`), where an async reqwest client finds no tokio
//! reactor. So requests are spawned onto one dedicated runtime thread, whatever thread or runtime
//! the caller is on, and the processor thread only awaits the join handle.

use std::time::Duration;

use bytes::Bytes;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};

/// Longest OTLP request, connect to last byte of the reply: a collector that hangs must not hold
/// the export thread (the processor drops the batch and goes on).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest collector reply read; OTLP replies are a few bytes (partial-success counts).
const MAX_REPLY_BYTES: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum OtlpClientError {
    #[error("starting the OTLP export runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("building the OTLP HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("the OTLP request task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    #[error("the collector's reply is over {MAX_REPLY_BYTES} bytes")]
    ReplyTooLarge,
}

#[derive(Debug)]
pub struct OtlpHttpClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl OtlpHttpClient {
    pub fn new() -> Result<Self, OtlpClientError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()
            .map_err(OtlpClientError::Runtime)?;
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(OtlpClientError::Client)?;
        Ok(Self { client, runtime })
    }
}

async fn send(
    client: reqwest::Client,
    request: Request<Bytes>,
) -> Result<Response<Bytes>, HttpError> {
    let request = reqwest::Request::try_from(request)?;
    let mut reply = client.execute(request).await?;
    let mut response = Response::builder().status(reply.status().as_u16());
    for (name, value) in reply.headers() {
        response = response.header(name.as_str(), value.as_bytes());
    }
    let mut body = Vec::new();
    while let Some(chunk) = reply.chunk().await? {
        if body.len() + chunk.len() > MAX_REPLY_BYTES {
            return Err(Box::new(OtlpClientError::ReplyTooLarge));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(response.body(Bytes::from(body))?)
}

#[async_trait::async_trait]
impl HttpClient for OtlpHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let task = self.runtime.spawn(send(self.client.clone(), request));
        task.await
            .map_err(|e| Box::new(OtlpClientError::Task(e)) as HttpError)?
    }
}
