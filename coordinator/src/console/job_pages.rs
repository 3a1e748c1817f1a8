//! The console's job pages: jobs across tenants (filters as `GET /v1/admin/jobs` takes them) with
//! their thumbnails, and one job's history (`GET /v1/admin/jobs/{id}`).

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use kontext_proto::job_history::AttemptEnd;
use kontext_proto::{JobKind, JobStatus};
use maud::{Markup, html};

use super::Operator;
use super::layout::{self, badge, duration_ms, time};
use super::pages::error_page;
use crate::http::admin_history;
use crate::http::admin_jobs::{self, AdminJobView};
use crate::http::request::{query_pairs, query_param};
use crate::state::AppState;

/// The job's input thumbnail (when it has an input image) and its result (when it succeeded).
fn thumbnails(j: &AdminJobView) -> Markup {
    let id = &j.job.id;
    html! {
        @if j.job.input_image.is_some() {
            img.thumb src=(format!("/v1/admin/jobs/{id}/input")) alt="input" title="input";
            " "
        }
        @if j.job.status == JobStatus::Succeeded {
            img.thumb src=(format!("/v1/admin/jobs/{id}/result")) alt="result" title="result";
        }
    }
}

/// The filter form, pre-filled from the query.
fn filters(query: Option<&str>) -> Markup {
    let pairs = query_pairs(query);
    let status = query_param(&pairs, "status").unwrap_or("");
    let tenant = query_param(&pairs, "tenant").unwrap_or("");
    html! {
        form method="get" action="/console/jobs" {
            label { "status " select name="status" {
                option value="" selected[status.is_empty()] { "any" }
                @for s in JobStatus::ALL {
                    option value=(s.as_str()) selected[status == s.as_str()] { (s.as_str()) }
                }
            } }
            " "
            label { "tenant " input type="text" name="tenant" value=(tenant) size="16"; }
            " "
            button type="submit" { "Filter" }
        }
    }
}

pub async fn jobs(
    State(state): State<AppState>,
    Operator(admin): Operator,
    RawQuery(query): RawQuery,
) -> Response {
    let list = match admin_jobs::list_jobs(State(state), admin, RawQuery(query.clone())).await {
        Ok(l) => l.0,
        Err(e) => return error_page(&e),
    };
    // The next page keeps the filters and follows the cursor.
    let next = list.next_cursor.as_ref().map(|cursor| {
        let mut pairs: Vec<(String, String)> = query_pairs(query.as_deref())
            .into_iter()
            .filter(|(k, _)| k != "cursor")
            .collect();
        pairs.push(("cursor".into(), cursor.clone()));
        let encoded: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
            .collect();
        format!("/console/jobs?{}", encoded.join("&"))
    });
    let body = html! {
        h1 { "Jobs" }
        (filters(query.as_deref()))
        @if list.jobs.is_empty() { p.muted { "No job on this page." } } @else {
            table id="jobs" {
                thead { tr {
                    th { "images" } th { "job" } th { "tenant" } th { "status" } th { "kind" }
                    th { "size · steps" } th { "created" } th { "worker" } th { "chain" }
                } }
                tbody {
                    @for j in &list.jobs {
                        tr data-job=(j.job.id) {
                            td { (thumbnails(j)) }
                            td { a href=(format!("/console/jobs/{}", j.job.id)) { (j.job.id) }
                                br; span.muted { (j.job.prompt) } }
                            td { (j.tenant) }
                            td { (badge(j.job.status.as_str())) }
                            td { (kind_word(j.job.kind)) }
                            td { (j.job.width) "×" (j.job.height) " · " (j.job.steps) }
                            td { (time(j.created_at_ms)) }
                            td { (j.worker.as_deref().unwrap_or("—")) }
                            td {
                                @if let Some(chain) = &j.chain_id {
                                    a href=(format!("/console/chains/{chain}")) {
                                        "turn " (j.turn.unwrap_or(0))
                                    }
                                } @else { "—" }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(next) = next { p { a href=(next) { "Next page →" } } }
    };
    layout::page("Jobs", "/console/jobs", body)
}

fn kind_word(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Generate => "generate",
        JobKind::Edit => "edit",
    }
}

fn end_word(end: AttemptEnd) -> &'static str {
    match end {
        AttemptEnd::Released => "released",
        AttemptEnd::LeaseLost => "lease lost",
        AttemptEnd::Failed => "failed",
        AttemptEnd::Succeeded => "succeeded",
    }
}

/// Percent-encodes a query component.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn job(
    State(state): State<AppState>,
    Operator(admin): Operator,
    Path(id): Path<String>,
) -> Response {
    let detail = match admin_history::job_detail(State(state), admin, Path(id)).await {
        Ok(d) => d.0,
        Err(e) => return error_page(&e),
    };
    let j = &detail.job;
    let body = html! {
        h1 { "Job " (j.job.id) " " (badge(j.job.status.as_str())) }
        p { (thumbnails(j)) }
        dl {
            dt { "tenant" } dd { (j.tenant) }
            dt { "prompt" } dd { (j.job.prompt) }
            dt { "kind" } dd { (kind_word(j.job.kind)) }
            dt { "size · steps · seed" } dd {
                (j.job.width) "×" (j.job.height) " · " (j.job.steps) " · " (j.job.seed)
            }
            dt { "created" } dd { (j.job.created_at) }
            @if let Some(st) = j.job.result.as_ref().and_then(|r| r.stages) {
                dt { "stages" } dd id="stages" {
                    "fetch " (duration_ms(st.fetch_ms)) " · engine " (duration_ms(st.engine_ms))
                    " · encode " (duration_ms(st.encode_ms)) " · upload "
                    (duration_ms(st.upload_ms))
                }
            }
            dt { "finished" } dd { (j.job.finished_at.as_deref().unwrap_or("—")) }
            @if let Some(trace) = &detail.trace_id { dt { "trace" } dd id="trace" { code { (trace) } } }
            @if let Some(e) = &j.job.error { dt { "error" } dd { (e.kind) ": " (e.message) } }
            @if let Some(chain) = &j.chain_id {
                dt { "chain" } dd { a href=(format!("/console/chains/{chain}")) {
                    (chain) " turn " (j.turn.unwrap_or(0)) } }
            }
        }
        h2 { "Attempts" }
        @if detail.attempts.is_empty() { p.muted { "Never claimed." } } @else {
            table id="attempts" {
                thead { tr {
                    th.num { "#" } th { "worker" } th { "claimed" } th { "ended" }
                    th { "how" } th.num { "wall" } th.num { "engine" } th { "error" }
                } }
                tbody {
                    @for a in &detail.attempts {
                        tr {
                            td.num { (a.attempt.map_or_else(|| "—".to_owned(), |n| n.to_string())) }
                            td { (a.worker) }
                            td { (a.claimed_at.map_or_else(|| "—".to_owned(), time)) }
                            td { (a.ended_at.map_or_else(|| "—".to_owned(), time)) }
                            td { (a.ended.map_or("running", end_word)) }
                            td.num { (a.wall_ms.map_or_else(|| "—".to_owned(), duration_ms)) }
                            td.num { (a.engine_ms.map_or_else(|| "—".to_owned(), duration_ms)) }
                            td { (a.error.as_ref().map_or_else(String::new, |e| e.message.clone())) }
                        }
                    }
                }
            }
        }
        h2 { "Events" }
        table id="events" {
            thead { tr { th { "at" } th { "event" } th { "detail" } } }
            tbody {
                @for e in &detail.events {
                    tr {
                        td { (time(e.at)) }
                        td { (e.kind) }
                        td {
                            @if let Some(s) = e.status { (s.as_str()) }
                            @if let (Some(step), Some(total)) = (e.step, e.total) {
                                "step " (step) "/" (total)
                            }
                        }
                    }
                }
            }
        }
    };
    layout::page("Job", "/console/jobs", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_components_are_percent_encoded() {
        assert_eq!(urlencode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(urlencode("Az09-_.~"), "Az09-_.~");
    }
}
