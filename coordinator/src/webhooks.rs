//! The notifier: takes notifications of finished jobs from the queue (`take_notifications`),
//! records their latency, and delivers a signed webhook for jobs that asked for one.
//!
//! Deliveries follow Standard Webhooks: `POST` with headers `webhook-id: <job id>:<status>` (the
//! same on every retry, so receivers can drop duplicates), `webhook-timestamp` (Unix seconds) and
//! `webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`, where `key` is
//! the job's tenant's own key, derived from `--webhook-secret` (`Secret::for_tenant`; a tenant
//! reads it from `GET /v1/webhook_secret`), so no tenant can forge another's deliveries; the body is
//! `{"type": "job.<status>", "timestamp": ..., "data": <job view>}`. A delivery counts when the
//! receiver answers 2xx within `--webhook-timeout`; otherwise it is retried with backoff
//! (`retry_delay`) up to `--webhook-max-attempts`, then abandoned (logged and counted).
//!
//! Every coordinator runs a notifier. The queue leases each notification to one of them at a time
//! and a notification leaves the queue only when acknowledged, so delivery is at-least-once and
//! survives a coordinator crash (the lease runs out and another coordinator takes it).
//!
//! Scheduling: up to `CONCURRENT_DELIVERIES` deliveries run at once per coordinator, each settled
//! on its own (no batch waits for its slowest member), and at most `PER_TENANT_DELIVERIES` per
//! tenant: a notification whose tenant has all its slots busy is deferred without spending an
//! attempt, so one slow receiver delays only its own tenant's webhooks.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use kontext_proto::{JobQueue, JobStatus, Millis, Notification, TenantId};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use tokio::task::JoinSet;
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
/// Deliveries in flight at once per tenant: a tenant whose receiver is slow holds at most these
/// slots, and the other tenants' deliveries go on in the rest.
pub const PER_TENANT_DELIVERIES: usize = 4;

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

/// Runs until shutdown begins, then lets the deliveries in flight finish (each is bounded by
/// `--webhook-timeout`).
pub async fn run(state: AppState) {
    let mut shutdown = state.shutdown_signal();
    let mut tick = tokio::time::interval(state.config.webhooks.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut deliveries = Deliveries::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(done) = deliveries.running.join_next_with_id() => {
                deliveries.finished(done);
                // A slot came free: fill it now rather than at the next tick.
            }
            _ = stopped(&mut shutdown) => break,
        }
        // Take what fits, batch by batch, until nothing more is due or every slot is busy.
        loop {
            let free = CONCURRENT_DELIVERIES.saturating_sub(deliveries.running.len());
            if free == 0 || *shutdown.borrow() {
                break;
            }
            let want = free.min(BATCH);
            match take_round(&state, &mut deliveries, want).await {
                Ok(taken) if taken == want => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "notifier: queue call failed; retrying next tick");
                    break;
                }
            }
        }
    }
    while let Some(done) = deliveries.running.join_next_with_id().await {
        deliveries.finished(done);
    }
}

/// The deliveries this coordinator has in flight, and how many belong to each tenant.
#[derive(Default)]
struct Deliveries {
    running: JoinSet<()>,
    tenant_of: HashMap<tokio::task::Id, TenantId>,
    per_tenant: HashMap<TenantId, usize>,
}

impl Deliveries {
    fn start(&mut self, tenant: TenantId, delivery: impl Future<Output = ()> + Send + 'static) {
        *self.per_tenant.entry(tenant.clone()).or_default() += 1;
        let handle = self.running.spawn(delivery);
        self.tenant_of.insert(handle.id(), tenant);
    }

    /// A delivery task ended (a panic included: the lease returns its notification).
    fn finished(&mut self, done: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let id = match done {
            Ok((id, ())) => id,
            Err(e) => {
                tracing::error!(error = %e, "webhook delivery task failed");
                e.id()
            }
        };
        let Some(tenant) = self.tenant_of.remove(&id) else {
            return;
        };
        if let Some(n) = self.per_tenant.get_mut(&tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_tenant.remove(&tenant);
            }
        }
    }
}

/// Takes up to `want` notifications: records latencies, acknowledges those without a webhook,
/// defers those whose tenant has `PER_TENANT_DELIVERIES` in flight, and starts a delivery task
/// for each of the rest. Returns how many were taken.
async fn take_round(
    state: &AppState,
    deliveries: &mut Deliveries,
    want: usize,
) -> Result<usize, kontext_proto::QueueError> {
    let cfg = &state.config.webhooks;
    // Each taken notification is delivered at once or deferred, so the lease needs to outlast
    // one delivery, not a batch.
    let lease = cfg.lease.max(cfg.timeout * 2);
    let batch = state
        .queue
        .take_notifications(now_ms(), lease, want)
        .await?;
    let taken = batch.len();
    let mut done = Vec::new();
    for n in batch {
        let Some(url) = n.webhook_url.clone() else {
            record_latency(state, &n);
            done.push(n.job_id);
            continue;
        };
        let busy = deliveries.per_tenant.get(&n.tenant).copied().unwrap_or(0);
        if busy >= PER_TENANT_DELIVERIES {
            // This tenant's receiver has all its slots: come back later, without spending an
            // attempt, so a slow receiver delays only its own tenant's deliveries.
            let delay = defer_delay(cfg, rand::random::<f64>());
            let at = now_ms().saturating_add(kontext_proto::policy::millis(delay));
            state.queue.defer_notification(n.job_id, at).await?;
            state.metrics.webhooks_deferred.inc();
            continue;
        }
        record_latency(state, &n);
        let task_state = state.clone();
        deliveries.start(n.tenant.clone(), async move {
            settle(&task_state, n, &url).await;
        });
    }
    state.queue.ack_notifications(&done).await?;
    Ok(taken)
}

/// The first take of a notification records its job's latency.
fn record_latency(state: &AppState, n: &Notification) {
    if n.attempt == 1
        && let Some(end) = n.finished_at
    {
        state.metrics.finished(
            n.status,
            Duration::from_millis(end.saturating_sub(n.created_at)),
        );
    }
}

/// How long a deferred notification waits: half a delivery timeout (a busy slot frees within
/// one), spread by up to half again (`jitter_fraction` in `[0, 1)`).
pub fn defer_delay(cfg: &WebhookConfig, jitter_fraction: f64) -> Duration {
    let half = cfg.timeout / 2;
    half + half.mul_f64(0.5 * jitter_fraction.clamp(0.0, 1.0))
}

/// Delivers `n` once and settles it: acknowledged when delivered (or abandoned after the last
/// attempt), rescheduled with backoff otherwise.
async fn settle(state: &AppState, n: Notification, url: &str) {
    let cfg = &state.config.webhooks;
    let outcome = match deliver(state, &n, url).await {
        Attempt::Done => state.queue.ack_notifications(&[n.job_id]).await,
        Attempt::Failed(reason) if n.attempt >= cfg.max_attempts => {
            tracing::warn!(job_id = %n.job_id, attempts = n.attempt, %reason,
                "webhook abandoned after the last attempt");
            state.metrics.webhooks_abandoned.inc();
            state.queue.ack_notifications(&[n.job_id]).await
        }
        Attempt::Failed(reason) => {
            let delay = retry_delay(cfg, n.attempt, rand::random::<f64>());
            tracing::info!(job_id = %n.job_id, attempt = n.attempt, %reason,
                retry_in = ?delay, "webhook delivery failed; will retry");
            let at = now_ms().saturating_add(kontext_proto::policy::millis(delay));
            state.queue.retry_notification(n.job_id, at).await
        }
    };
    if let Err(e) = outcome {
        // The lease runs out and the notification comes back: at-least-once still holds.
        tracing::warn!(job_id = %n.job_id, error = %e, "settling a webhook delivery failed");
    }
}

/// One delivery attempt of `n`'s webhook to `url`.
async fn deliver(state: &AppState, n: &Notification, url: &str) -> Attempt {
    let cfg = &state.config.webhooks;
    let Some(master) = &cfg.secret else {
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
    // Signed with the tenant's own key, so no tenant can forge another tenant's deliveries.
    let secret = master.for_tenant(&job.tenant);
    let headers = match signed_headers(&secret, n.job_id, job.status, now, &body) {
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
