//! `kontext-worker`: the GPU worker binary. Thin: parse arguments, init logging, dispatch.

mod commands;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kontext-worker",
    version,
    about = "FLUX.1 Kontext worker: one-shot runs, tiny weights, and the queue worker"
)]
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
    /// The queue worker: claim jobs from Redis, run them, store results, until SIGTERM (then drain).
    Serve(Box<kontext_worker::config::ServeArgs>),
    /// GPU benchmark and correctness check: 12B random weights on the device, 1024²/512² edits,
    /// bf16 vs CPU f32 (docs/gpu.md; scripts/gpu-bench.sh).
    BenchGpu(Box<commands::bench_gpu::BenchGpuArgs>),
    /// Validate a model directory from its file headers (names, shapes, dtypes, shards) in a
    /// second, without reading the weights; prints the memory it would take.
    CheckWeights(commands::check_weights::CheckWeightsArgs),
    /// Convert a model directory's transformer to a GGUF file (Q8_0 … Q4_K, BFL names), linking
    /// the other components.
    WriteGguf(commands::write_gguf::WriteGgufArgs),
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    let (logs, instance) = match &cli.command {
        Command::Serve(args) => (args.logs.clone(), args.consumer.worker_id.clone()),
        _ => (kontext_telemetry::LogArgs::default(), None),
    };
    let service = kontext_telemetry::Service {
        name: "kontext-worker",
        instance,
    };
    let telemetry = kontext_telemetry::init(
        &service,
        &logs,
        "info",
        kontext_telemetry::LogStream::Stderr,
    )?;
    let done = |r: anyhow::Result<()>| r.map(|()| std::process::ExitCode::SUCCESS);
    let ended = match cli.command {
        Command::Run(args) => done(commands::run::run(args)),
        Command::Tiny(args) => done(commands::tiny::run(args)),
        Command::Serve(args) => done(commands::serve::run(*args)),
        Command::BenchGpu(args) => done(commands::bench_gpu::run(*args)),
        Command::CheckWeights(args) => commands::check_weights::run(args),
        Command::WriteGguf(args) => done(commands::write_gguf::run(args)),
    };
    telemetry.shutdown();
    ended
}
