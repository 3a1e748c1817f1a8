//! `kontext-worker serve`: the queue worker. Claims jobs from Redis, runs them on the resident
//! engine, stores results in S3 (or a directory), until SIGTERM/SIGINT, then drains.

use anyhow::Context;
use kontext_worker::config::ServeArgs;
use kontext_worker::config::load_engine;
use kontext_worker::drain::termination_signal;

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime
        .block_on(kontext_worker::service::serve(
            args,
            load_engine,
            termination_signal(),
        ))
        .context("kontext-worker serve")?;
    Ok(())
}
