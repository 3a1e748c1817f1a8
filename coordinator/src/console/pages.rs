//! The console's pages, each rendered from the answers of admin API handlers.

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use kontext_proto::workers::WorkerInfo;
use maud::{Markup, PreEscaped, html};

use super::Operator;
use super::charts::{self, Bar};
use super::layout::{self, badge, duration_ms, time};
use crate::http::admin;
use crate::http::admin_media;
use crate::http::error::ApiError;
use crate::http::request::{query_pairs, query_param};
use crate::state::AppState;

/// An admin API error as a page with its status and message.
pub fn error_page(e: &ApiError) -> Response {
    let status = e.status();
    let body = html! {
        h1 { "Error " (status.as_u16()) }
        p.notice { (e.detail.message) }
        p { a href="/console" { "Back to the overview" } }
    };
    (status, layout::page("Error", "", body)).into_response()
}

/// What a `?done=` notice after an action says (only known codes; nothing is echoed as is).
fn notice(query: Option<&str>) -> Option<Markup> {
    let pairs = query_pairs(query);
    let done = query_param(&pairs, "done")?;
    let text = match done.split_once(':') {
        Some(("requeued", new)) if new.parse::<kontext_proto::JobId>().is_ok() => {
            return Some(html! {
                p.notice { "Re-queued as job " a href=(format!("/console/jobs/{new}")) { (new) } "." }
            });
        }
        _ => match done {
            "requeued" => "Re-queued.",
            "dismissed" => "Dismissed.",
            "drain_requested" => "Drain requested: the worker finishes its job and exits.",
            _ => return None,
        },
    };
    Some(html! { p.notice { (text) } })
}

/// The overview's script: polls the queue overview every 2 s, updates the cards and draws the
/// depth (ready + delayed + running) since the page opened.
const LIVE_SCRIPT: &str = r#"
(function () {
  const samples = [];
  const chart = document.getElementById('depth');
  const line = chart.querySelector('polyline');
  async function tick() {
    let q;
    try {
      const r = await fetch('/v1/admin/queue', { credentials: 'same-origin' });
      if (!r.ok) return;
      q = await r.json();
    } catch (e) { return; }
    for (const el of document.querySelectorAll('[data-field]')) {
      if (q[el.dataset.field] !== undefined) el.textContent = q[el.dataset.field];
    }
    samples.push(q.ready_high + q.ready_standard + q.ready_bulk + q.delayed + q.running);
    if (samples.length > 90) samples.shift();
    const max = Math.max(1, ...samples);
    const step = samples.length > 1 ? 640 / (samples.length - 1) : 0;
    line.setAttribute('points', samples
      .map((v, i) => (step * i).toFixed(1) + ',' + (160 - 156 * v / max).toFixed(1)).join(' '));
    chart.dataset.samples = String(samples.length);
  }
  tick();
  setInterval(tick, 2000);
})();
"#;

pub async fn overview(State(state): State<AppState>, Operator(admin): Operator) -> Response {
    let q = match admin::queue_overview(State(state), admin).await {
        Ok(q) => q.0,
        Err(e) => return error_page(&e),
    };
    let cards: [(&str, &str, String); 8] = [
        ("ready_high", "ready · high", q.ready_high.to_string()),
        (
            "ready_standard",
            "ready · standard",
            q.ready_standard.to_string(),
        ),
        ("ready_bulk", "ready · bulk", q.ready_bulk.to_string()),
        ("delayed", "delayed", q.delayed.to_string()),
        ("running", "running", q.running.to_string()),
        ("dead_letters", "dead letters", q.dead_letters.to_string()),
        ("workers", "live workers", q.workers.to_string()),
        (
            "oldest_ready_age_ms",
            "oldest ready (ms)",
            q.oldest_ready_age_ms.to_string(),
        ),
    ];
    // Minute labels HH:MM (UTC) from the minutes' starts.
    let label = |at: u64| time(at).get(11..16).unwrap_or("").to_owned();
    let throughput: Vec<Bar> = q
        .throughput
        .minutes
        .iter()
        .map(|m| Bar {
            label: label(m.minute_start),
            value: (m.succeeded + m.failed) as f64,
        })
        .collect();
    let latency: Vec<Bar> = q
        .throughput
        .minutes
        .iter()
        .map(|m| Bar {
            label: label(m.minute_start),
            value: m.p95_ms.unwrap_or(0) as f64,
        })
        .collect();
    let body = html! {
        h1 { "Overview" }
        div.cards {
            @for (field, name, value) in &cards {
                div.card { div.v data-field=(field) { (value) } div.k { (name) } }
            }
        }
        h2 { "Queue depth, live (ready + delayed + running, every 2 s)" }
        @let depth = q.ready_high + q.ready_standard + q.ready_bulk + q.delayed + q.running;
        (charts::live_line(
            "depth",
            "queue depth since this page opened",
            &charts::line_points(&[depth as f64]),
        ))
        script { (PreEscaped(LIVE_SCRIPT)) }
        h2 {
            "Jobs finished per minute, last hour (" (q.throughput.hour.succeeded) " succeeded, "
            (q.throughput.hour.failed) " failed)"
        }
        (charts::bar_chart("throughput", "jobs finished per minute", &throughput, "jobs"))
        h2 {
            "Latency p95 per minute, submit → result (hour: p50 "
            (q.throughput.hour.p50_ms.map_or_else(|| "—".to_owned(), duration_ms)) ", p95 "
            (q.throughput.hour.p95_ms.map_or_else(|| "—".to_owned(), duration_ms)) ", p99 "
            (q.throughput.hour.p99_ms.map_or_else(|| "—".to_owned(), duration_ms)) ")"
        }
        (charts::bar_chart("latency", "p95 latency per minute", &latency, "ms"))
    };
    layout::page("Overview", "/console", body)
}

fn worker_row(w: &WorkerInfo) -> Markup {
    let device = match &w.gpu_name {
        Some(gpu) => format!("{} ({gpu})", w.device),
        None => w.device.clone(),
    };
    html! {
        tr data-worker=(w.id) {
            td { (w.id) br; span.muted { (w.host) } }
            td { (device) }
            td { (w.model) " · " (w.dtype) @if w.linear_precision != "native" { " · " (w.linear_precision) } }
            td {
                @if let Some(job) = &w.current_job {
                    a href=(format!("/console/jobs/{job}")) { (job.to_string()) }
                    br;
                    @let p = w.progress.unwrap_or(0.0).clamp(0.0, 1.0);
                    progress max="1" value=(format!("{p:.2}")) {}
                    " " (format!("{:.0} %", 100.0 * p))
                } @else { span.muted { "idle" } }
            }
            td.num { (w.jobs_succeeded) " / " (w.jobs_failed) }
            td {
                @for (cache, ratio) in &w.cache_hit_ratio {
                    (cache) " " (format!("{:.0} %", 100.0 * ratio)) br;
                }
            }
            td { (w.lora_set.as_deref().unwrap_or("—")) }
            td {
                @if w.draining { (badge("draining")) } @else {
                    form.inline method="post" action=(format!("/console/workers/{}/drain", w.id)) {
                        button.danger type="submit" { "Drain" }
                    }
                }
            }
        }
    }
}

pub async fn workers(
    State(state): State<AppState>,
    Operator(admin): Operator,
    RawQuery(query): RawQuery,
) -> Response {
    let list = match admin::list_workers(State(state), admin).await {
        Ok(l) => l.0.workers,
        Err(e) => return error_page(&e),
    };
    let body = html! {
        h1 { "Workers" }
        @if let Some(n) = notice(query.as_deref()) { (n) }
        @if list.is_empty() { p.muted { "No live worker." } } @else {
            table id="workers" {
                thead { tr {
                    th { "worker" } th { "device" } th { "model" } th { "current job" }
                    th.num { "done / failed" } th { "cache hits" } th { "LoRA set" } th {}
                } }
                tbody { @for w in &list { (worker_row(w)) } }
            }
        }
    };
    layout::page("Workers", "/console/workers", body)
}

pub async fn dead_letters(
    State(state): State<AppState>,
    Operator(admin): Operator,
    RawQuery(query): RawQuery,
) -> Response {
    let list = match admin::dead_letters(State(state), admin, RawQuery(None)).await {
        Ok(l) => l.0.dead_letters,
        Err(e) => return error_page(&e),
    };
    let body = html! {
        h1 { "Dead letters" }
        @if let Some(n) = notice(query.as_deref()) { (n) }
        @if list.is_empty() { p.muted { "No dead letters." } } @else {
            table id="dead" {
                thead { tr {
                    th { "job" } th { "reason" } th.num { "crashes" } th.num { "attempts" }
                    th { "since" } th {}
                } }
                tbody {
                    @for d in &list {
                        @let id = d.job_id.to_string();
                        tr data-job=(id) {
                            td { a href=(format!("/console/jobs/{id}")) { (id) } }
                            td { (d.reason) }
                            td.num { (d.crashes) }
                            td.num { (d.attempts) }
                            td { (time(d.at)) }
                            td {
                                form.inline method="post" action=(format!("/console/dead/{id}/requeue")) {
                                    button type="submit" { "Re-queue" }
                                }
                                " "
                                form.inline method="post" action=(format!("/console/dead/{id}/dismiss")) {
                                    button.danger type="submit" { "Delete" }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout::page("Dead letters", "/console/dead", body)
}

/// The audit log: who drained, re-queued, dismissed or canceled what, newest first.
pub async fn audit(State(state): State<AppState>, Operator(admin): Operator) -> Response {
    let entries = match admin::audit(State(state), admin, RawQuery(None)).await {
        Ok(l) => l.0.entries,
        Err(e) => return error_page(&e),
    };
    let body = html! {
        h1 { "Audit log" }
        p.muted { "The newest 100 admin actions. Actors: key: and the first 12 hex digits of \
                   the admin key's SHA-256, open in open loopback mode, console for this \
                   console's buttons." }
        @if entries.is_empty() { p.muted { "No admin actions yet." } } @else {
            table id="audit" {
                thead { tr { th { "when" } th { "actor" } th { "action" } th { "target" } } }
                tbody {
                    @for e in &entries {
                        tr data-action=(e.action) {
                            td { (time(e.at)) }
                            td { code { (e.actor) } }
                            td { (e.action) }
                            td { code { (e.target) } }
                        }
                    }
                }
            }
        }
    };
    layout::page("Audit log", "/console/audit", body)
}

pub async fn usage(
    State(state): State<AppState>,
    Operator(admin): Operator,
    RawQuery(query): RawQuery,
) -> Response {
    let report = match admin::usage(State(state), admin, RawQuery(query)).await {
        Ok(r) => r.0,
        Err(e) => return error_page(&e),
    };
    // Engine seconds per tenant over the range, largest first.
    let mut per_tenant: Vec<Bar> = Vec::new();
    for row in &report.usage {
        match per_tenant.iter_mut().find(|b| b.label == row.tenant) {
            Some(b) => b.value += row.engine_ms as f64 / 1e3,
            None => per_tenant.push(Bar {
                label: row.tenant.clone(),
                value: row.engine_ms as f64 / 1e3,
            }),
        }
    }
    per_tenant.sort_by(|a, b| b.value.total_cmp(&a.value));
    let body = html! {
        h1 { "Usage " span.muted { (report.from) " – " (report.to) " (UTC)" } }
        h2 { "Engine seconds per tenant" }
        (charts::bar_chart("usage-chart", "engine seconds per tenant", &per_tenant, "s"))
        h2 { "Per day" }
        @if report.usage.is_empty() { p.muted { "No succeeded job in this range." } } @else {
            table id="usage" {
                thead { tr {
                    th { "day" } th { "tenant" } th.num { "engine time" } th.num { "images" }
                    th.num { "steps" }
                } }
                tbody {
                    @for r in &report.usage {
                        tr {
                            td { (r.day) } td { (r.tenant) } td.num { (duration_ms(r.engine_ms)) }
                            td.num { (r.images) } td.num { (r.steps) }
                        }
                    }
                }
            }
        }
    };
    layout::page("Usage", "/console/usage", body)
}

pub async fn chain(
    State(state): State<AppState>,
    Operator(admin): Operator,
    Path(id): Path<String>,
) -> Response {
    let chain = match admin_media::chain(State(state), admin, Path(id)).await {
        Ok(c) => c.0,
        Err(e) => return error_page(&e),
    };
    let body = html! {
        h1 { "Chain " (chain.id) " " (badge(&chain.status.to_string())) }
        p.muted {
            (chain.turns.len()) " turns · " (chain.width) "×" (chain.height) " · carry "
            (chain.carry) " · created " (chain.created_at)
        }
        div.film id="filmstrip" {
            @for t in &chain.turns {
                @let state_word = t.state.as_str();
                div.frame data-turn=(t.turn) data-state=(state_word) {
                    @if t.result_key.is_some() {
                        img src=(format!("/v1/admin/jobs/{}/result", t.job_id))
                            alt=(format!("turn {}", t.turn));
                    } @else {
                        div.empty { (state_word) }
                    }
                    div { "turn " (t.turn) " " (badge(state_word)) }
                    div.prompt { (t.prompt) }
                    a href=(format!("/console/jobs/{}", t.job_id)) { "job" }
                }
            }
        }
    };
    layout::page("Chain", "", body)
}
