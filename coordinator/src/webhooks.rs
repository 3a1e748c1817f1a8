//! The notifier: takes notifications of finished jobs from the queue (`take_notifications`),
//! records their latency, and delivers a signed webhook for jobs that asked for one.
//!
//! Deliveries follow Standard Webhooks: `POST` with headers `webhook-id: <job id>:<status>` (the
//! same on every retry, so receivers can drop duplicates), `webhook-timestamp` (Unix seconds) and
//! `webhook-signature: v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>`; the body is
//! `{"type": "job.<status>", "timestamp": ..., "data": <job view>}`. A delivery counts when the
//! receiver answers 2xx within `--webhook-timeout`; otherwise it is retried with backoff
//! (`retry_delay`) up to `--webhook-max-attempts`, then abandoned (logged and counted).
//!
//! Every coordinator runs a notifier. The queue leases each notification to one of them at a time
//! and a notification leaves the queue only when acknowledged, so delivery is at-least-once and
//! survives a coordinator crash (the lease runs out and another coordinator takes it).

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kontext_proto::{JobQueue, JobStatus, Millis, Notification};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use tracing::Instrument;

use crate::config::WebhookConfig;
use crate::fetch;
use crate::http::views::{JobView, rfc3339};
use crate::reaper::stopped;
use crate::signing::webhook_signature;
use crate::state::{AppState, now_ms};

/// Notifications taken per queue call.
const BATCH: usize = 100;
/// Deliveries in flight at once per coordinator.
const CONCURRENT_DELIVERIES: usize = 32;

/// A webhook's body.
#[derive(Debug, Serialize)]
pub struct WebhookPayload<'a> {
    /// `job.succeeded`, `job.failed`, `job.canceled` or `job.dead`.
    #[serde(rename = "type")]
    pub kind: String,
    /// RFC 3339.
    pub timestamp: String,
    pub data: &'a JobView,
}

/// Delay before the next attempt after `attempt` (1-based) failed: `first_retry · 4^(attempt-1)`,
/// capped at `max_retry`, minus under 20 % jitter (`jitter_fraction` in `[0, 1)`) so that
/// deliveries that failed together spread out.
pub fn retry_delay(cfg: &WebhookConfig, attempt: u32, jitter_fraction: f64) -> Duration {
    let first = cfg.first_retry.as_millis();
    let factor = 4u128.saturating_pow(attempt.saturating_sub(1).min(30));
    let delay = first.saturating_mul(factor).min(cfg.max_retry.as_millis());
    let off = delay as f64 * 0.2 * jitter_fraction.clamp(0.0, 1.0);
    Duration::from_millis(
        u64::try_from(delay)
            .unwrap_or(u64::MAX)
            .saturating_sub(off as u64),
    )
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attempt {
    /// Delivered, or nothing to deliver any more (the job is gone): acknowledge.
    Done,
    /// Try again later; the reason is logged.
    Failed(String),
}

/// Runs until shutdown begins.
pub async fn run(state: AppState) {
    let mut shutdown = state.shutdown_signal();
    let mut tick = tokio::time::interval(state.config.webhooks.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut shutdown) => return,
        }
        // Drain everything due, batch by batch.
        loop {
            match process_batch(&state).await {
                Ok(n) if n == BATCH && !*shutdown.borrow() => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "notifier: queue call failed; retrying next tick");
                    break;
                }
            }
        }
    }
}

/// Takes one batch, records latencies, delivers webhooks; returns how many were taken.
pub async fn process_batch(state: &AppState) -> Result<usize, kontext_proto::QueueError> {
    let cfg = &state.config.webhooks;
    // The lease must outlast a whole batch of deliveries, or a slow batch would be taken twice.
    let rounds = BATCH.div_ceil(CONCURRENT_DELIVERIES) as u32 + 1;
    let lease = cfg.lease.max(cfg.timeout * rounds);
    let batch = state
        .queue
        .take_notifications(now_ms(), lease, BATCH)
        .await?;
    let taken = batch.len();
    let mut done = Vec::new();
    let mut hooks = Vec::new();
    for n in batch {
        if n.attempt == 1
            && let Some(end) = n.finished_at
        {
            state.metrics.finished(
                n.status,
                Duration::from_millis(end.saturating_sub(n.created_at)),
            );
        }
        match n.webhook_url.clone() {
            None => done.push(n.job_id),
            Some(url) => hooks.push((n, url)),
        }
    }
    let outcomes: Vec<(Notification, Attempt)> = futures::stream::iter(hooks)
        .map(|(n, url)| async move {
            let attempt = deliver(state, &n, &url).await;
            (n, attempt)
        })
        .buffer_unordered(CONCURRENT_DELIVERIES)
        .collect()
        .await;
    for (n, attempt) in outcomes {
        match attempt {
            Attempt::Done => done.push(n.job_id),
            Attempt::Failed(reason) if n.attempt >= cfg.max_attempts => {
                tracing::warn!(job_id = %n.job_id, attempts = n.attempt, %reason,
                    "webhook abandoned after the last attempt");
                state.metrics.webhooks_abandoned.inc();
                done.push(n.job_id);
            }
            Attempt::Failed(reason) => {
                let delay = retry_delay(cfg, n.attempt, rand::random::<f64>());
                tracing::info!(job_id = %n.job_id, attempt = n.attempt, %reason,
                    retry_in = ?delay, "webhook delivery failed; will retry");
                let at = now_ms().saturating_add(kontext_proto::policy::millis(delay));
                state.queue.retry_notification(n.job_id, at).await?;
            }
        }
    }
    state.queue.ack_notifications(&done).await?;
    Ok(taken)
}

/// One delivery attempt of `n`'s webhook to `url`.
async fn deliver(state: &AppState, n: &Notification, url: &str) -> Attempt {
    let cfg = &state.config.webhooks;
    let Some(secret) = &cfg.secret else {
        // Another coordinator accepted the job; this one cannot sign. Leave it for one that can.
        return Attempt::Failed("this coordinator has no --webhook-secret to sign with".into());
    };
    let job = match state.queue.get(n.job_id).await {
        Ok(Some(job)) => job,
        Ok(None) => return Attempt::Done,
        Err(e) => return Attempt::Failed(format!("reading the job: {e}")),
    };
    let view = match state.view(&job).await {
        Ok(view) => view,
        Err(e) => return Attempt::Failed(format!("rendering the job: {}", e.detail.message)),
    };
    let now = now_ms();
    let body = match serde_json::to_vec(&WebhookPayload {
        kind: format!("job.{}", job.status),
        timestamp: rfc3339(now),
        data: &view,
    }) {
        Ok(body) => body,
        Err(e) => return Attempt::Failed(format!("encoding the payload: {e}")),
    };
    let headers = match signed_headers(secret, n.job_id, job.status, now, &body) {
        Ok(h) => h,
        Err(e) => return Attempt::Failed(e),
    };
    let span = tracing::info_span!("webhook", job_id = %n.job_id, attempt = n.attempt);
    match fetch::post(
        url,
        headers,
        Bytes::from(body),
        cfg.timeout,
        state.config.allow_private_urls,
    )
    .instrument(span)
    .await
    {
        Ok(status) if status.is_success() => {
            state.metrics.webhooks_delivered.inc();
            Attempt::Done
        }
        Ok(status) => {
            state.metrics.webhook_attempts_failed.inc();
            Attempt::Failed(format!("receiver answered HTTP {status}"))
        }
        Err(e) => {
            state.metrics.webhook_attempts_failed.inc();
            Attempt::Failed(format!("webhook_url {e}"))
        }
    }
}

/// The Standard Webhooks headers for one delivery.
fn signed_headers(
    secret: &crate::signing::Secret,
    id: kontext_proto::JobId,
    status: JobStatus,
    now: Millis,
    body: &[u8],
) -> Result<HeaderMap, String> {
    let msg_id = format!("{id}:{status}");
    let ts = now / 1000;
    let signature = webhook_signature(secret, &msg_id, ts, body);
    let mut headers = HeaderMap::new();
    let value = |v: &str| HeaderValue::from_str(v).map_err(|e| format!("header value: {e}"));
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(HeaderName::from_static("webhook-id"), value(&msg_id)?);
    headers.insert(
        HeaderName::from_static("webhook-timestamp"),
        value(&ts.to_string())?,
    );
    headers.insert(
        HeaderName::from_static("webhook-signature"),
        value(&signature)?,
    );
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_by_four_and_cap() {
        let cfg = WebhookConfig::default();
        let secs: Vec<u64> = (1..=8)
            .map(|a| retry_delay(&cfg, a, 0.0).as_secs())
            .collect();
        assert_eq!(secs, [5, 20, 80, 320, 1280, 5120, 7200, 7200]);
        assert_eq!(retry_delay(&cfg, u32::MAX, 0.0), Duration::from_secs(7200));
        assert_eq!(retry_delay(&cfg, 1, 0.5), Duration::from_millis(4_500));
        assert_eq!(
            retry_delay(&cfg, 1, 0.999_999),
            Duration::from_millis(4_001)
        );
    }

    #[test]
    fn headers_carry_a_verifiable_signature() {
        let secret = crate::signing::Secret::from_bytes(b"0123456789abcdef".to_vec());
        let id: kontext_proto::JobId = "0b6a4f52-6f9e-4c55-9d0a-6f2f1b1e2c3d"
            .parse()
            .expect("uuid");
        let h = signed_headers(&secret, id, JobStatus::Succeeded, 1_614_265_330_999, b"{}")
            .expect("headers");
        assert_eq!(
            h["webhook-id"],
            "0b6a4f52-6f9e-4c55-9d0a-6f2f1b1e2c3d:succeeded"
        );
        assert_eq!(h["webhook-timestamp"], "1614265330");
        let expected = webhook_signature(
            &secret,
            "0b6a4f52-6f9e-4c55-9d0a-6f2f1b1e2c3d:succeeded",
            1_614_265_330,
            b"{}",
        );
        assert_eq!(h["webhook-signature"], expected.as_str());
    }
}
