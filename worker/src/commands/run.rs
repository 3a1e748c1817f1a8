//! `kontext-worker run`: one generation without a queue.

/// Arguments of `kontext-worker run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {}

pub fn run(_args: RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("`kontext-worker run` is being built")
}
