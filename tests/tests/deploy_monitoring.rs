//! The monitoring files in `deploy/`: the Prometheus alerting rules pass `promtool check rules`
//! and their unit tests (`promtool test rules deploy/prometheus/alerts.test.yaml`: every rule
//! fires on the series it exists for and stays quiet on a healthy fleet), and every query of the
//! rules and of the Grafana dashboard is valid PromQL (checked by promtool as recording rules)
//! naming only metrics the coordinator and the worker export. promtool is Debian's `prometheus`
//! package, which the test command installs when it is missing (xtask `ensure_promtool`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use kontext_coordinator::metrics::Metrics;
use kontext_proto::{Priority, QueueStats};
use kontext_worker::metrics::WorkerStatus;
use serde_json::Value;

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(rel)
}

fn promtool() -> Result<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    candidates
        .into_iter()
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file())
        .context(
            "promtool is missing: run the suite with `cargo xtask test`, which installs Debian's \
             prometheus package (or `apt-get install prometheus`)",
        )
}

fn run_promtool(args: &[&str], dir: &Path) -> Result<String> {
    let out = Command::new(promtool()?)
        .args(args)
        .current_dir(dir)
        .output()
        .context("running promtool")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("promtool {args:?} failed:\n{text}");
    }
    Ok(text)
}

/// Every metric name the binaries export (histograms with their series suffixes).
fn exported_metrics() -> BTreeSet<String> {
    let metrics = Metrics::default();
    // Label sets created on first use: one request, so the family is in the text.
    metrics.http_request("GET", "/healthz", 200);
    let coordinator = metrics.render(Some(&QueueStats {
        ready: vec![(Priority::Standard, 1)],
        ..QueueStats::default()
    }));
    let worker = WorkerStatus::new("w").render();
    let mut names = BTreeSet::new();
    for line in coordinator.lines().chain(worker.lines()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                names.insert(name.to_owned());
                if kind == "histogram" || kind == "summary" {
                    for suffix in ["_bucket", "_count", "_sum"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
            }
        }
    }
    names
}

/// The `kontext_*` metric names a PromQL expression uses.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("kontext_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        names.insert(expr[start..end].to_owned());
        i = end;
    }
    names
}

fn rule_exprs() -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(deploy("prometheus/alerts.yaml"))?;
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)?;
    let mut out = Vec::new();
    for group in doc["groups"].as_sequence().context("groups")? {
        for rule in group["rules"].as_sequence().context("rules")? {
            let name = rule["alert"].as_str().context("alert")?.to_owned();
            out.push((name, rule["expr"].as_str().context("expr")?.to_owned()));
        }
    }
    Ok(out)
}

fn dashboard_exprs() -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(deploy("grafana/kontext-fleet.json"))?;
    let doc: Value = serde_json::from_str(&text).context("the dashboard is not JSON")?;
    let mut out = Vec::new();
    for panel in doc["panels"].as_array().context("panels")? {
        let title = panel["title"].as_str().context("title")?;
        for target in panel["targets"].as_array().context("targets")? {
            out.push((
                title.to_owned(),
                target["expr"].as_str().context("expr")?.to_owned(),
            ));
        }
    }
    ensure!(!out.is_empty(), "the dashboard has no queries");
    Ok(out)
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() -> Result<()> {
    let dir = deploy("prometheus");
    let checked = run_promtool(&["check", "rules", "alerts.yaml"], &dir)?;
    assert!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    let tested = run_promtool(&["test", "rules", "alerts.test.yaml"], &dir)?;
    assert!(tested.contains("SUCCESS"), "{tested}");
    Ok(())
}

#[test]
fn every_query_is_valid_promql_over_exported_metrics() -> Result<()> {
    let exported = exported_metrics();
    assert!(exported.contains("kontext_queue_depth"), "{exported:?}");
    assert!(exported.contains("kontext_worker_ready"), "{exported:?}");
    let queries: Vec<(String, String)> = rule_exprs()?
        .into_iter()
        .chain(dashboard_exprs()?)
        .collect();
    for (what, expr) in &queries {
        let unknown: Vec<String> = metric_names(expr)
            .into_iter()
            .filter(|n| !exported.contains(n))
            .collect();
        assert!(
            unknown.is_empty(),
            "{what}: {unknown:?} are not exported ({expr})"
        );
    }
    // promtool parses every query as a recording rule.
    let dir = tempfile::tempdir()?;
    let rules: Vec<serde_json::Value> = queries
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| serde_json::json!({"record": format!("kontext:check:{i}"), "expr": expr}))
        .collect();
    let file = serde_json::json!({"groups": [{"name": "queries", "rules": rules}]});
    std::fs::write(
        dir.path().join("queries.yaml"),
        serde_json::to_string(&file)?,
    )?;
    let checked = run_promtool(&["check", "rules", "queries.yaml"], dir.path())?;
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{checked}"
    );
    Ok(())
}
