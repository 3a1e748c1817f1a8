//! `kontext-coordinator`: parse flags, set up logging, bind, and run the library's server until
//! SIGINT/SIGTERM. `kontext-coordinator print-openapi` prints the OpenAPI document.

use anyhow::Context;
use clap::Parser;
use kontext_coordinator::config::{Cli, Command, Config, QueueSource};
use kontext_telemetry::{LogStream, Service};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::PrintOpenapi) = cli.command {
        print!("{}", kontext_coordinator::openapi_json());
        return Ok(());
    }
    let service = Service {
        name: "kontext-coordinator",
        instance: None,
    };
    let telemetry = kontext_telemetry::init(&service, &cli.serve.logs, "info", LogStream::Stdout)?;
    let config = Config::from_args(cli.serve).context("invalid configuration")?;
    if config.queue == QueueSource::Memory {
        tracing::warn!(
            "no --redis-url: jobs go to an in-process queue that no separate worker can reach \
             (use `kontext up` for one-process mode, or --redis-url for workers)"
        );
    }
    kontext_coordinator::check_open_access(&config, config.listen)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let served = kontext_coordinator::run(listener, config, shutdown_signal()).await;
    // The last spans go out even when serving failed.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    served?;
    Ok(())
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
