//! The console's page shell (navigation, style) and the small formatters every page uses.

use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use kontext_proto::Millis;
use maud::{DOCTYPE, Markup, PreEscaped, html};

/// The pages in the navigation bar: path and name.
const NAV: &[(&str, &str)] = &[
    ("/console", "Overview"),
    ("/console/workers", "Workers"),
    ("/console/jobs", "Jobs"),
    ("/console/dead", "Dead letters"),
    ("/console/usage", "Usage"),
    ("/console/audit", "Audit"),
];

const STYLE: &str = r#"
:root { --fg:#1b1f24; --muted:#5b6570; --line:#d8dde3; --accent:#2f6fdb; --bad:#c0392b; --ok:#1e8449; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, sans-serif; color: var(--fg); margin: 0; background: #f6f7f9; }
header { background: #14213d; color: #fff; padding: 10px 24px; display: flex; gap: 24px; align-items: center; }
header a { color: #cfd8e3; text-decoration: none; }
header a.here { color: #fff; font-weight: 600; }
header .brand { font-weight: 700; color: #fff; margin-right: 12px; }
main { padding: 18px 24px; max-width: 1280px; }
h1 { font-size: 20px; margin: 4px 0 14px; }
h2 { font-size: 16px; margin: 22px 0 8px; }
table { border-collapse: collapse; background: #fff; width: 100%; }
th, td { border-bottom: 1px solid var(--line); padding: 6px 8px; text-align: left; vertical-align: middle; }
th { color: var(--muted); font-weight: 600; font-size: 12px; text-transform: uppercase; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; }
.card .v { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .k { color: var(--muted); font-size: 12px; }
.chart { width: 100%; max-width: 640px; height: 160px; background: #fff; border: 1px solid var(--line); }
.chart .bar { fill: var(--accent); } .chart .line { stroke: var(--accent); stroke-width: 2; }
.chart .axis { font-size: 10px; fill: var(--muted); } .chart .note { fill: var(--muted); }
.badge { display: inline-block; padding: 1px 7px; border-radius: 9px; font-size: 12px; background: #e8ecf1; }
.badge.succeeded { background: #d5f0de; color: var(--ok); } .badge.failed, .badge.dead { background: #f8d7d3; color: var(--bad); }
.badge.running { background: #dde8fb; color: var(--accent); } .badge.canceled, .badge.skipped { color: var(--muted); }
.thumb { width: 96px; height: 96px; object-fit: contain; background: #fff; border: 1px solid var(--line); image-rendering: pixelated; }
.film { display: flex; gap: 10px; overflow-x: auto; padding-bottom: 6px; }
.frame { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px; width: 176px; flex: none; }
.frame img { width: 160px; height: 160px; object-fit: contain; image-rendering: pixelated; }
.frame .empty { width: 160px; height: 160px; display: flex; align-items: center; justify-content: center; color: var(--muted); background: #f0f2f5; }
.frame .prompt { font-size: 12px; color: var(--muted); }
form.inline { display: inline; }
button { font: inherit; padding: 3px 10px; border: 1px solid var(--line); border-radius: 4px; background: #fff; cursor: pointer; }
button.danger { color: var(--bad); border-color: #e5b3ad; }
.notice { background: #fff8d6; border: 1px solid #eadb8a; padding: 8px 12px; border-radius: 4px; margin-bottom: 12px; }
.muted { color: var(--muted); }
progress { width: 120px; }
dl { display: grid; grid-template-columns: max-content auto; gap: 4px 16px; background: #fff; padding: 10px 14px; border: 1px solid var(--line); }
dt { color: var(--muted); } dd { margin: 0; }
"#;

/// A whole console page: `here` marks the navigation entry.
pub fn page(title: &str, here: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Kontext Fleet console" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    span.brand { "Kontext Fleet" }
                    @for (path, name) in NAV {
                        a href=(path) class=[(*path == here).then_some("here")] { (name) }
                    }
                }
                main { (body) }
            }
        }
    };
    let mut response = Html(markup.into_string()).into_response();
    // The console only ever runs its own inline script and loads its own images.
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data: https:; style-src 'unsafe-inline'; \
             script-src 'unsafe-inline' 'self'; frame-ancestors 'none'",
        ),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `1.2 s`, `340 ms`, `2 min 5 s`.
pub fn duration_ms(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1e3)
    } else {
        format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1_000)
    }
}

/// UTC time, seconds precision (the API's RFC 3339 without the milliseconds).
pub fn time(at: Millis) -> String {
    let full = crate::http::views::rfc3339(at); // YYYY-MM-DDTHH:MM:SS.mmmZ
    format!("{}Z", full.get(..19).unwrap_or(&full))
}

/// A status word as a coloured badge.
pub fn badge(word: &str) -> Markup {
    html! { span class=(format!("badge {word}")) { (word) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration_ms(340), "340 ms");
        assert_eq!(duration_ms(1_250), "1.2 s");
        assert_eq!(duration_ms(125_000), "2 min 5 s");
    }

    #[test]
    fn times_are_utc_rfc_3339() {
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
        assert_eq!(time(1_764_806_400_000), "2025-12-04T00:00:00Z");
    }
}
