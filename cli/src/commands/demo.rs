//! `kontext demo`, the README quickstart in one command: `kontext up` on a free loopback port
//! (in-process queue, a temporary data directory, the shapes model on CPU), then the real HTTP
//! client flow — a text-to-image job, then an edit of its result — with progress bars, both PNGs
//! written to --out, and a clean shutdown. The shapes model is small (96x96, 8M parameters), so it takes seconds on a CPU.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use kontext::client::Client;
use kontext::embedded::{Embedded, EmbeddedConfig};
use kontext::progress::JobBar;
use kontext_coordinator::config::Config;
use kontext_proto::JobStatus;
use kontext_proto::validate::JobRequest;
use kontext_worker::config::ModelArgs;
use kontext_worker::settings::WorkerSettings;

use super::jobs::{describe, follow_and_fetch};

// Prompts of the shapes world (`models/shapes`, the default model), so the two images show
// whether the model did what it was asked.
const GENERATE_PROMPT: &str =
    "a red circle at the top left and a blue square at the bottom right on a white background";
const EDIT_PROMPT: &str = "make the red circle green";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory the two PNGs are written to.
    #[arg(
        long,
        short = 'o',
        env = "KONTEXT_DEMO_OUT",
        default_value = "kontext-demo"
    )]
    pub out: PathBuf,
    /// Width and height of the generated image (a multiple of 16). Default: the model's native
    /// size (96 for shapes, 1024 for FLUX.1-Kontext-dev and tiny).
    #[arg(long, env = "KONTEXT_DEMO_SIZE")]
    pub size: Option<u32>,
    /// Denoising steps of each job (default 28).
    #[arg(long, env = "KONTEXT_DEMO_STEPS")]
    pub steps: Option<u32>,
    /// Seed of the first job (the edit uses seed + 1).
    #[arg(long, env = "KONTEXT_SEED", default_value_t = 42)]
    pub seed: u64,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let data = tempfile::Builder::new()
        .prefix("kontext-demo-data-")
        .tempdir()
        .context("creating a temporary data directory")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a free loopback port")?;
    let mut worker = WorkerSettings::new("demo-worker");
    // Short claim waits make the final shutdown quick.
    worker.claim_wait = Duration::from_millis(250);
    let model = format!("{} on {}", args.model.model, args.model.device);
    let loading = JobBar::task(&format!("starting kontext up (model {model})"));
    let mut embedded = Embedded::start(
        listener,
        EmbeddedConfig {
            coordinator: Config::embedded(data.path()),
            model: args.model,
            load_engine: Box::new(kontext_worker::config::load_engine),
            worker,
        },
    )
    .await?;
    embedded.wait_ready(Duration::from_secs(300)).await?;
    loading.finish_and_clear();
    let url = embedded.url().to_owned();
    println!(
        "kontext up on {url}: coordinator + 1 worker in this process (in-process queue, local storage, model {model}), ready in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let outcome = client_flow(&url, &args.out, args.size, args.steps, args.seed).await;
    embedded.shutdown().await?;
    let paths = outcome?;
    println!("wrote {}", paths.0.display());
    println!("wrote {}", paths.1.display());
    println!(
        "done in {:.1}s; stopped cleanly",
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// Generate, then edit the result, over HTTP like any client.
async fn client_flow(
    url: &str,
    out: &std::path::Path,
    size: Option<u32>,
    steps: Option<u32>,
    seed: u64,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let client = Client::new(url, None)?;
    let generate = JobRequest {
        prompt: GENERATE_PROMPT.into(),
        width: size,
        height: size,
        steps,
        seed: Some(seed),
        ..JobRequest::default()
    };
    let t = Instant::now();
    let accepted = client
        .submit(&generate, None)
        .await
        .context("submitting the generate job")?;
    let (job, path) = follow_and_fetch(
        &client,
        &accepted.id,
        "generate",
        Some(&out.join("generate.png")),
        true,
    )
    .await?;
    println!("{} in {:.1}s", describe(&job), t.elapsed().as_secs_f64());
    let (Some(generated), Some(result)) = (path, job.result.as_ref()) else {
        bail!("the generate job did not succeed: {}", describe(&job));
    };

    // The edit names the first result by its object key: no download and re-upload needed.
    let edit = JobRequest {
        prompt: EDIT_PROMPT.into(),
        input_image: Some(result.key.clone()),
        steps,
        seed: Some(seed + 1),
        ..JobRequest::default()
    };
    let t = Instant::now();
    let accepted = client
        .submit(&edit, None)
        .await
        .context("submitting the edit job")?;
    let (job, path) = follow_and_fetch(
        &client,
        &accepted.id,
        "edit",
        Some(&out.join("edit.png")),
        true,
    )
    .await?;
    println!("{} in {:.1}s", describe(&job), t.elapsed().as_secs_f64());
    match (job.status, path) {
        (JobStatus::Succeeded, Some(edited)) => Ok((absolute(generated), absolute(edited))),
        _ => bail!("the edit job did not succeed: {}", describe(&job)),
    }
}

fn absolute(p: PathBuf) -> PathBuf {
    std::path::absolute(&p).unwrap_or(p)
}
