//! `Client`: the native API of a coordinator over HTTP (reqwest), for the `kontext` commands and
//! anything else that wants to drive jobs from Rust (storyboards, benchmarks, tests).
//!
//! Wire types are the coordinator's own (`kontext_coordinator::http::views`), so client and
//! server cannot drift apart. Errors keep the server's `{"error": {type, field, message, limit}}`.

use std::time::Duration;

use futures::StreamExt;
use kontext_coordinator::http::admin::{AuditLog, UsageReport, WorkerList};
use kontext_coordinator::http::error::ErrorBody;
use kontext_coordinator::http::views::{CancelReply, JobAccepted, JobView, UploadReply};
use kontext_proto::JobEvent;
use kontext_proto::validate::JobRequest;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use reqwest::{RequestBuilder, Response, StatusCode};

use crate::sse::SseParser;

/// How often `follow` reconnects after the event stream broke before it gives up.
const MAX_RECONNECTS: u32 = 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error body.
    #[error("{status}: {message}{}", field.as_ref().map(|f| format!(" (field: {f})")).unwrap_or_default())]
    Api {
        status: StatusCode,
        kind: String,
        field: Option<String>,
        message: String,
    },
    #[error("unexpected answer from {url}: {detail}")]
    Protocol { url: String, detail: String },
    #[error("invalid --url {0:?}: use http://host:port")]
    BadUrl(String),
}

/// What `follow` reports while a job runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// A state change (queued, running, ...).
    State(kontext_proto::JobStatus),
    /// `step` of `total` denoising steps done.
    Step { step: u32, total: u32 },
}

/// A client of one coordinator.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) http: reqwest::Client,
    base: String,
}

impl Client {
    /// `base_url` like `http://127.0.0.1:8080`; `api_key` is sent as `Authorization: Bearer`.
    pub fn new(base_url: &str, api_key: Option<&str>) -> Result<Self, ClientError> {
        let base = base_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::BadUrl(base_url.to_owned()));
        }
        let mut headers = HeaderMap::new();
        if let Some(key) = api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                ClientError::BadUrl("the API key has characters a header cannot carry".into())
            })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|source| ClientError::Http {
                url: base.clone(),
                source,
            })?;
        Ok(Self { http, base })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) async fn send(
        &self,
        url: &str,
        req: RequestBuilder,
    ) -> Result<Response, ClientError> {
        let resp = req.send().await.map_err(|source| ClientError::Http {
            url: url.to_owned(),
            source,
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => ClientError::Api {
                status,
                kind: body.error.kind.as_str().to_owned(),
                field: body.error.field,
                message: body.error.message,
            },
            Err(_) => ClientError::Api {
                status,
                kind: "http".into(),
                field: None,
                message: text.chars().take(500).collect(),
            },
        })
    }

    pub(crate) async fn json<T: serde::de::DeserializeOwned>(
        url: &str,
        resp: Response,
    ) -> Result<T, ClientError> {
        let bytes = resp.bytes().await.map_err(|source| ClientError::Http {
            url: url.to_owned(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            url: url.to_owned(),
            detail: format!(
                "{e}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
            ),
        })
    }

    /// `POST /v1/jobs`.
    pub async fn submit(
        &self,
        job: &JobRequest,
        idempotency_key: Option<&str>,
    ) -> Result<JobAccepted, ClientError> {
        let url = self.url("/v1/jobs");
        let mut req = self.http.post(&url).json(job);
        if let Some(key) = idempotency_key {
            req = req.header("Idempotency-Key", key);
        }
        let resp = self.send(&url, req).await?;
        Self::json(&url, resp).await
    }

    /// `POST /v1/uploads` with the image bytes; the reply's `id` is an `input_image`.
    pub async fn upload(
        &self,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> Result<UploadReply, ClientError> {
        let url = self.url("/v1/uploads");
        let req = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(bytes);
        let resp = self.send(&url, req).await?;
        Self::json(&url, resp).await
    }

    /// `GET /v1/jobs/{id}`.
    pub async fn job(&self, id: &str) -> Result<JobView, ClientError> {
        let url = self.url(&format!("/v1/jobs/{id}"));
        let resp = self.send(&url, self.http.get(&url)).await?;
        Self::json(&url, resp).await
    }

    /// `GET /v1/admin/usage` (an admin key): usage per tenant and day over `from..=to`
    /// (`YYYY-MM-DD`; the coordinator's defaults when absent).
    pub async fn usage(
        &self,
        from: Option<&str>,
        to: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<UsageReport, ClientError> {
        let base = self.url("/v1/admin/usage");
        let mut url = reqwest::Url::parse(&base).map_err(|_| ClientError::BadUrl(base.clone()))?;
        for (name, value) in [("from", from), ("to", to), ("tenant", tenant)] {
            if let Some(v) = value {
                url.query_pairs_mut().append_pair(name, v);
            }
        }
        let url = url.to_string();
        let resp = self.send(&url, self.http.get(&url)).await?;
        Self::json(&url, resp).await
    }

    /// `GET /v1/admin/workers` (an admin key): the live workers.
    pub async fn workers(&self) -> Result<WorkerList, ClientError> {
        let url = self.url("/v1/admin/workers");
        let resp = self.send(&url, self.http.get(&url)).await?;
        Self::json(&url, resp).await
    }

    /// `GET /v1/admin/audit?limit=` (an admin key): the newest admin actions.
    pub async fn audit(&self, limit: u32) -> Result<AuditLog, ClientError> {
        let url = self.url(&format!("/v1/admin/audit?limit={limit}"));
        let resp = self.send(&url, self.http.get(&url)).await?;
        Self::json(&url, resp).await
    }

    /// `POST /v1/jobs/{id}/cancel`.
    pub async fn cancel(&self, id: &str) -> Result<CancelReply, ClientError> {
        let url = self.url(&format!("/v1/jobs/{id}/cancel"));
        let resp = self.send(&url, self.http.post(&url)).await?;
        Self::json(&url, resp).await
    }

    /// The result bytes (`GET /v1/jobs/{id}/result`, following a redirect to S3).
    pub async fn result(&self, id: &str) -> Result<bytes::Bytes, ClientError> {
        let url = self.url(&format!("/v1/jobs/{id}/result"));
        let resp = self.send(&url, self.http.get(&url)).await?;
        resp.bytes()
            .await
            .map_err(|source| ClientError::Http { url, source })
    }

    /// Follows the job's event stream (`GET /v1/jobs/{id}/events`), calling `on_progress` for
    /// every state and step event, until the job is terminal; returns the final job. A broken
    /// stream is resumed from the last event id.
    pub async fn follow(
        &self,
        id: &str,
        mut on_progress: impl FnMut(&Progress),
    ) -> Result<JobView, ClientError> {
        let url = self.url(&format!("/v1/jobs/{id}/events"));
        let mut last_id: Option<String> = None;
        let mut reconnects = 0;
        loop {
            let mut req = self.http.get(&url).header("Accept", "text/event-stream");
            if let Some(last) = &last_id {
                req = req.header("Last-Event-ID", last);
            }
            let resp = self.send(&url, req).await?;
            let mut body = resp.bytes_stream();
            let mut parser = SseParser::new();
            while let Some(chunk) = body.next().await {
                let Ok(chunk) = chunk else { break };
                for event in parser.feed(&chunk) {
                    if let Some(eid) = &event.id {
                        last_id = Some(eid.clone());
                    }
                    match event.event.as_str() {
                        "job" => {
                            return serde_json::from_str(&event.data).map_err(|e| {
                                ClientError::Protocol {
                                    url: url.clone(),
                                    detail: format!("job event: {e}"),
                                }
                            });
                        }
                        "state" | "progress" => match serde_json::from_str::<JobEvent>(&event.data)
                        {
                            Ok(JobEvent::State { status, .. }) => {
                                on_progress(&Progress::State(status))
                            }
                            Ok(JobEvent::Progress { step, total, .. }) => {
                                on_progress(&Progress::Step { step, total });
                            }
                            Err(e) => tracing::debug!(error = %e, "unreadable event"),
                        },
                        _ => {}
                    }
                }
            }
            // The stream ended without the final job (server restart, proxy timeout): the job may
            // be done already; otherwise resume after the last event seen.
            let job = self.job(id).await?;
            if is_terminal(&job) {
                return Ok(job);
            }
            reconnects += 1;
            if reconnects > MAX_RECONNECTS {
                return Err(ClientError::Protocol {
                    url,
                    detail: "the event stream kept closing before the job finished".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200) * reconnects.min(10)).await;
        }
    }
}

/// Whether the job's status is final.
pub fn is_terminal(job: &JobView) -> bool {
    job.status.is_terminal()
}
