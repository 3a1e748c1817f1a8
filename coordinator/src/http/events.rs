//! `GET /v1/jobs/{id}/events`: server-sent events from the job's event stream. Each queue event is
//! one SSE event (`state` or `progress`, `id` = the queue cursor, so `Last-Event-ID` resumes);
//! after the terminal state a final `job` event carries the whole job view (with the result URL)
//! and the stream closes. A keep-alive comment goes out every 15 s (proxies drop idle streams).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use kontext_proto::{JobEvent, JobId, JobQueue, QueueError};
use tokio::sync::watch;

use super::error::{ApiError, ErrorBody};
use super::request::Caller;
use crate::state::AppState;

/// Keep-alive period (fal's choice).
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Longest single wait on the queue; after it the job is re-checked (it may have expired).
const POLL: Duration = Duration::from_secs(10);

/// Follow a job's state and progress as server-sent events.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(
        ("id" = String, Path, description = "Job id"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event (the \
            `id` of an event of this stream)", pattern = "^[0-9]{1,19}(-[0-9]{1,19})?$"),
    ),
    responses(
        (status = 200, description = "text/event-stream: `state` and `progress` events \
            (data = {\"type\":\"state\",\"status\":\"running\",\"at\":...} or \
            {\"type\":\"progress\",\"step\":3,\"total\":28,\"at\":...}), then one `job` event \
            with the final job view", content_type = "text/event-stream"),
        (status = 400, description = "Last-Event-ID not from this stream", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 404, description = "No such job for this tenant", body = ErrorBody),
    ),
    security(("bearer" = []), ("x_key" = []))
)]
pub async fn job_events(
    State(state): State<AppState>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let job = state.job_for(&id, &tenant).await?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // The first read happens here, so a bad Last-Event-ID is a 400 rather than a broken stream.
    let first = state
        .queue
        .events(job.id, after.as_deref(), Duration::ZERO)
        .await
        .map_err(|e| match e {
            QueueError::InvalidCursor(c) => ApiError::bad_request(
                "Last-Event-ID",
                format!("Last-Event-ID {c:?} is not an event id of this job"),
            ),
            other => other.into(),
        })?;
    let mut follower = Follower {
        shutdown: state.shutdown_signal(),
        state,
        id: job.id,
        cursor: after,
        pending: VecDeque::new(),
        done: false,
    };
    follower.take(first).await;
    // Resuming after the last event of a finished job: only the final view is left to send.
    if !follower.done && job.status.is_terminal() {
        follower.finish().await;
    }
    let mut response = Sse::new(follow(follower))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response();
    // Tell nginx-style proxies not to buffer the stream.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

struct Follower {
    state: AppState,
    id: JobId,
    cursor: Option<String>,
    pending: VecDeque<Event>,
    done: bool,
    shutdown: watch::Receiver<bool>,
}

impl Follower {
    /// Queue events → SSE events; after a terminal state, the final `job` event.
    async fn take(&mut self, events: Vec<(String, JobEvent)>) {
        let mut terminal = false;
        for (cursor, event) in events {
            let name = match &event {
                JobEvent::State { status, .. } => {
                    terminal |= status.is_terminal();
                    "state"
                }
                JobEvent::Progress { .. } => "progress",
            };
            match Event::default()
                .event(name)
                .id(cursor.clone())
                .json_data(&event)
            {
                Ok(e) => self.pending.push_back(e),
                Err(e) => tracing::error!(error = %e, "encoding an SSE event"),
            }
            self.cursor = Some(cursor);
        }
        if terminal {
            self.finish().await;
        }
    }

    /// Emit the job's final view and end the stream.
    async fn finish(&mut self) {
        self.done = true;
        let view = match self.state.queue.get(self.id).await {
            Ok(Some(job)) => self.state.view(&job).await.ok(),
            _ => None,
        };
        if let Some(view) = view
            && let Ok(e) = Event::default().event("job").json_data(&view)
        {
            self.pending.push_back(e);
        }
    }

    /// Wait for more events (or the job's disappearance, or shutdown).
    async fn poll(&mut self) {
        if *self.shutdown.borrow() {
            self.done = true;
            return;
        }
        let events = tokio::select! {
            events = self.state.queue.events(self.id, self.cursor.as_deref(), POLL) => events,
            _ = self.shutdown.changed() => {
                self.done = true;
                return;
            }
        };
        match events {
            Ok(events) if !events.is_empty() => self.take(events).await,
            Ok(_) => match self.state.queue.get(self.id).await {
                // Terminal without a terminal event left in the (trimmed) stream.
                Ok(Some(job)) if job.status.is_terminal() => self.finish().await,
                Ok(Some(_)) => {}
                _ => self.done = true,
            },
            Err(e @ QueueError::Saturated { .. }) => {
                // Every blocking connection is taken: end this stream; EventSource clients
                // reconnect after `retry` with Last-Event-ID and lose nothing.
                tracing::warn!(job_id = %self.id, error = %e, "event stream ended: followers at their limit");
                self.pending.push_back(
                    Event::default()
                        .event("error")
                        .retry(Duration::from_secs(2))
                        .data("too many event followers on this coordinator; reconnect with Last-Event-ID"),
                );
                self.done = true;
            }
            Err(e) => {
                tracing::warn!(job_id = %self.id, error = %e, "event stream ended by a queue error");
                self.pending
                    .push_back(Event::default().event("error").data("queue unavailable"));
                self.done = true;
            }
        }
    }
}

fn follow(follower: Follower) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(follower, |mut f| async move {
        loop {
            if let Some(event) = f.pending.pop_front() {
                return Some((Ok(event), f));
            }
            if f.done {
                return None;
            }
            f.poll().await;
        }
    })
}
