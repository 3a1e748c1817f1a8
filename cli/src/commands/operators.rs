//! Operators' commands over the admin API (an admin key: `--api-key` takes it): `kontext usage`
//! (engine time, images and steps per tenant per day), `kontext workers` (the live workers) and
//! `kontext audit` (who drained, re-queued, dismissed or canceled what).

use std::process::ExitCode;

use clap::Args;

use super::jobs::ServerArgs;

#[derive(Debug, Args)]
pub struct UsageArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// First UTC day, YYYY-MM-DD (default: 29 days before --to).
    #[arg(long, env = "KONTEXT_USAGE_FROM")]
    pub from: Option<String>,
    /// Last UTC day, YYYY-MM-DD (default: today).
    #[arg(long, env = "KONTEXT_USAGE_TO")]
    pub to: Option<String>,
    /// Only this tenant.
    #[arg(long, env = "KONTEXT_USAGE_TENANT")]
    pub tenant: Option<String>,
    /// Print the report as JSON.
    #[arg(long, env = "KONTEXT_JSON")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct WorkersArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print the list as JSON.
    #[arg(long, env = "KONTEXT_JSON")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// How many of the newest entries, 1 to 1000.
    #[arg(long, env = "KONTEXT_AUDIT_LIMIT", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Print the entries as JSON.
    #[arg(long, env = "KONTEXT_JSON")]
    pub json: bool,
}

pub async fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let log = args.server.client()?.audit(args.limit).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&log)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<22} {:<14} target",
        "when (UTC)", "actor", "action"
    );
    for e in &log.entries {
        println!(
            "{:<24} {:<22} {:<14} {}",
            kontext_coordinator::http::views::rfc3339(e.at),
            e.actor,
            e.action,
            e.target
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn usage(args: UsageArgs) -> anyhow::Result<ExitCode> {
    let report = args
        .server
        .client()?
        .usage(
            args.from.as_deref(),
            args.to.as_deref(),
            args.tenant.as_deref(),
        )
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("usage {} .. {} (UTC days)", report.from, report.to);
    println!(
        "{:<10}  {:<24} {:>14} {:>8} {:>10}",
        "day", "tenant", "engine s", "images", "steps"
    );
    let (mut ms, mut images, mut steps) = (0u64, 0u64, 0u64);
    for r in &report.usage {
        println!(
            "{:<10}  {:<24} {:>14.3} {:>8} {:>10}",
            r.day,
            r.tenant,
            r.engine_ms as f64 / 1e3,
            r.images,
            r.steps
        );
        ms += r.engine_ms;
        images += r.images;
        steps += r.steps;
    }
    println!(
        "{:<10}  {:<24} {:>14.3} {:>8} {:>10}",
        "total",
        "",
        ms as f64 / 1e3,
        images,
        steps
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn workers(args: WorkersArgs) -> anyhow::Result<ExitCode> {
    let list = args.server.client()?.workers().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<28} {:<10} {:<8} {:<12} {:>6} {:>6}  now",
        "worker", "device", "dtype", "model", "ok", "failed"
    );
    for w in &list.workers {
        let now = match (&w.current_job, w.progress) {
            (Some(job), Some(p)) => format!("{job} {:.0}%", p * 100.0),
            (Some(job), None) => job.to_string(),
            _ if w.draining => "draining".to_owned(),
            _ => "idle".to_owned(),
        };
        let model = w.model.rsplit('/').next().unwrap_or(&w.model);
        println!(
            "{:<28} {:<10} {:<8} {:<12} {:>6} {:>6}  {}",
            w.id, w.device, w.dtype, model, w.jobs_succeeded, w.jobs_failed, now
        );
    }
    Ok(ExitCode::SUCCESS)
}
