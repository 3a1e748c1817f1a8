//! One job's full history for operators (docs/security.md §Admin API): the job (any tenant), its
//! attempts — who claimed it when, under which epoch, and how each attempt ended — the raw
//! history entries they are read from (`kontext_proto::job_history`), and its event stream.
//!
//! Timings are what the queue sees: claim and end times per attempt and the engine time the
//! worker reported with its commit; the committing attempt's stages (fetch, engine, encode,
//! upload) are in the job's `result.stages`.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use kontext_proto::job_history::{Attempt, HistoryEntry, attempts_of};
use kontext_proto::{JobEvent, JobId, JobQueue, JobStatus, Millis};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::admin::Admin;
use super::admin_jobs::AdminJobView;
use super::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// Calls to the event stream one request makes (each returns up to 100 events; a job keeps
/// about 256).
const EVENT_READS: usize = 5;

/// One entry of a job's event stream.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AdminEventView {
    /// The stream cursor of this event (as `GET /v1/jobs/{id}/events` resumes after it).
    pub id: String,
    /// `state` or `progress`.
    #[serde(rename = "type")]
    pub kind: String,
    /// ms since the epoch.
    pub at: Millis,
    /// The new state (`state` events).
    pub status: Option<JobStatus>,
    /// Steps done and planned (`progress` events).
    pub step: Option<u32>,
    pub total: Option<u32>,
}

/// A job with everything the queue knows about its past.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AdminJobDetail {
    pub job: AdminJobView,
    /// Every claim (oldest first) and how it ended; the last has no end while it runs.
    pub attempts: Vec<Attempt>,
    /// The history entries the attempts come from, with cancels (oldest first, at most 100).
    pub history: Vec<HistoryEntry>,
    /// The job's events (oldest first; the stream keeps about the last 256).
    pub events: Vec<AdminEventView>,
    /// The trace the job belongs to (W3C trace id, 32 hex digits): the submitting request's,
    /// continued by every attempt's spans (docs/tracing.md). Absent for jobs submitted before
    /// traces existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

fn event_view(id: String, event: JobEvent) -> AdminEventView {
    match event {
        JobEvent::State { status, at } => AdminEventView {
            id,
            kind: "state".into(),
            at,
            status: Some(status),
            step: None,
            total: None,
        },
        JobEvent::Progress { step, total, at } => AdminEventView {
            id,
            kind: "progress".into(),
            at,
            status: None,
            step: Some(step),
            total: Some(total),
        },
    }
}

/// A job of any tenant with its attempts (claimed at, worker, epoch; released, lease lost,
/// failed with its error and retry, succeeded with its engine time), its history entries and
/// its events.
#[utoipa::path(
    get, path = "/v1/admin/jobs/{id}", tag = "admin",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job and its history", body = AdminJobDetail),
        (status = 404, description = "No such job (or past its retention)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn job_detail(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<AdminJobDetail>, ApiError> {
    let id: JobId = id.parse().map_err(|_| ApiError::not_found("id", "job"))?;
    let Some(found) = state.queue.job_history(id).await? else {
        return Err(ApiError::not_found("id", "job"));
    };
    let mut events = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..EVENT_READS {
        let batch = match state
            .queue
            .events(id, after.as_deref(), Duration::ZERO)
            .await
        {
            Ok(batch) => batch,
            // Its retention ended between the two reads: show what was read.
            Err(kontext_proto::QueueError::NotFound(_)) => break,
            Err(e) => return Err(e.into()),
        };
        let Some((last, _)) = batch.last() else {
            break;
        };
        after = Some(last.clone());
        events.extend(batch.into_iter().map(|(c, e)| event_view(c, e)));
    }
    Ok(Json(AdminJobDetail {
        job: AdminJobView::of(&state, &found.record).await?,
        attempts: attempts_of(&found.entries),
        trace_id: trace_id_of(found.record.spec.traceparent.as_deref()),
        history: found.entries,
        events,
    }))
}

/// The trace id field of a `traceparent` (`00-<trace id>-<span id>-<flags>`) the coordinator
/// stored; `None` for anything else.
fn trace_id_of(traceparent: Option<&str>) -> Option<String> {
    let id = traceparent?.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
}
