//! `kontext-worker`: the GPU worker binary. Thin: parse arguments, init logging, dispatch.

mod commands;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "kontext-worker", version, about = "FLUX.1 Kontext worker: one-shot runs, tiny weights, and the queue worker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate or edit one image, without a queue.
    Run(commands::run::RunArgs),
    /// Write the deterministic tiny model (weights, configs, tokenizers) in either layout.
    Tiny(commands::tiny::TinyArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run(args) => commands::run::run(args),
        Command::Tiny(args) => commands::tiny::run(args),
    }
}
