//! e2e-worker: `kontext-worker serve` for the end-to-end tests and benchmarks, which need worker
//! *processes* they can SIGKILL and SIGTERM (`env!("CARGO_BIN_EXE_e2e-worker")`). Same flags and
//! the same library entry (`kontext_worker::service::serve`) as the real binary, plus two
//! harness options:
//!
//! - `--min-step-ms N`: every denoising step of the (real, tiny) engine takes at least N ms, so a
//!   job lasts long enough to be observed, canceled or killed half-way, as a 12B step would. The
//!   pause emulates compute; nothing synchronizes on it.
//! - `--stdin-guard`: also stop (draining) when stdin closes, so workers never outlive the test
//!   process that spawned them, even when it is killed.

use std::io::Read;
use std::time::{Duration, Instant};

use clap::Parser;
use kontext_engine::{Engine, EngineError, EngineInfo, EngineOutput, EngineRequest, StepControl};
use kontext_worker::config::{ModelArgs, ServeArgs};
use kontext_worker::drain::termination_signal;

#[derive(Parser)]
#[command(
    name = "e2e-worker",
    about = "kontext-worker serve, for end-to-end tests"
)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
    /// Shortest duration of one denoising step, in milliseconds (0: as fast as the engine goes).
    #[arg(long, env = "KONTEXT_E2E_MIN_STEP_MS", default_value_t = 0)]
    min_step_ms: u64,
    /// Stop when stdin reaches end-of-file.
    #[arg(long, env = "KONTEXT_E2E_STDIN_GUARD")]
    stdin_guard: bool,
}

/// The real engine with a floor on each step's duration.
struct PacedEngine {
    inner: Box<dyn Engine>,
    min_step: Duration,
}

impl Engine for PacedEngine {
    fn info(&self) -> EngineInfo {
        self.inner.info()
    }

    fn warmup(&mut self) -> Result<(), EngineError> {
        self.inner.warmup()
    }

    fn generate(
        &mut self,
        req: &EngineRequest,
        on_step: &mut dyn FnMut(u32, u32) -> StepControl,
    ) -> Result<EngineOutput, EngineError> {
        let min_step = self.min_step;
        let mut step_started = Instant::now();
        self.inner.generate(req, &mut |done, total| {
            if done > 0 {
                let took = step_started.elapsed();
                if took < min_step {
                    std::thread::sleep(min_step - took);
                }
            }
            step_started = Instant::now();
            on_step(done, total)
        })
    }
}

async fn stdin_closed() {
    let closed = tokio::task::spawn_blocking(|| {
        let mut buf = [0u8; 256];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
    });
    let _ = closed.await;
    tracing::info!("stdin closed: draining");
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let service = kontext_telemetry::Service {
        name: "kontext-worker",
        instance: args.serve.consumer.worker_id.clone(),
    };
    let telemetry = kontext_telemetry::init(
        &service,
        &args.serve.logs,
        "info",
        kontext_telemetry::LogStream::Stderr,
    )?;
    let min_step = Duration::from_millis(args.min_step_ms);
    let stdin_guard = args.stdin_guard;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let served = runtime.block_on(async move {
        let shutdown = async move {
            if stdin_guard {
                tokio::select! {
                    () = termination_signal() => {}
                    () = stdin_closed() => {}
                }
            } else {
                termination_signal().await;
            }
        };
        let load = move |model: &ModelArgs| -> Result<Box<dyn Engine>, EngineError> {
            let inner = kontext_worker::config::load_engine(model)?;
            Ok(if min_step.is_zero() {
                inner
            } else {
                Box::new(PacedEngine { inner, min_step })
            })
        };
        kontext_worker::service::serve(args.serve, load, shutdown).await
    });
    // The stdin reader may still block in read(); don't wait for it.
    runtime.shutdown_background();
    telemetry.shutdown();
    served?;
    Ok(())
}
