//! `kontext up`: a coordinator and one worker in this process, on embedded defaults — in-process
//! queue, a local data directory, the tiny model on CPU — or on Redis, S3 and real weights when
//! the flags say so (the same flags as `kontext-coordinator` and `kontext-worker serve`). Without
//! --api-keys it serves on loopback only. Stops on SIGINT/SIGTERM after draining the worker.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use kontext::embedded::{Embedded, EmbeddedConfig};
use kontext_coordinator::config::{Config, QueueSource, ServeArgs};
use kontext_worker::config::{ConsumerArgs, ModelArgs};
use kontext_worker::drain::termination_signal;

/// How long `up` waits for the model to load and warm up before it gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(1800);

#[derive(Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
}

/// `$XDG_DATA_HOME/kontext`, `~/.local/share/kontext`, or `./kontext-data`.
fn default_data_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("kontext");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".local/share/kontext");
    }
    PathBuf::from("kontext-data")
}

pub async fn run(mut args: UpArgs) -> anyhow::Result<ExitCode> {
    if args.serve.storage.bucket.is_none() && args.serve.storage.data_dir.is_none() {
        args.serve.storage.data_dir = Some(default_data_dir());
    }
    let storage = match (&args.serve.storage.bucket, &args.serve.storage.data_dir) {
        (Some(bucket), _) => format!("bucket {bucket}"),
        (None, Some(dir)) => format!("directory {}", dir.display()),
        (None, None) => unreachable!("a data directory was just set"),
    };
    let config = Config::from_args(args.serve).context("invalid configuration")?;
    let worker = args.consumer.settings()?;
    kontext_coordinator::check_open_access(&config, config.listen)?;
    let queue = match config.queue {
        QueueSource::Memory => "in-process queue",
        QueueSource::Redis { .. } => "Redis queue",
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    tracing::info!(model = %args.model.model, device = %args.model.device, "loading the model");
    let model = format!("{} on {}", args.model.model, args.model.device);
    let mut embedded = Embedded::start(
        listener,
        EmbeddedConfig {
            coordinator: config,
            model: args.model,
            load_engine: Box::new(kontext_worker::config::load_engine),
            worker,
        },
    )
    .await?;
    let url = embedded.url().to_owned();
    tokio::select! {
        ready = embedded.wait_ready(READY_TIMEOUT) => ready?,
        () = termination_signal() => {
            embedded.shutdown().await?;
            return Ok(ExitCode::SUCCESS);
        }
    }
    println!("kontext up: serving {url} — model {model}, {queue}, results in {storage}");
    println!(
        "  try: kontext generate --url {url} \"a yellow star in the center on a black background\""
    );
    embedded.run_until(termination_signal()).await?;
    println!("kontext up: stopped");
    Ok(ExitCode::SUCCESS)
}
