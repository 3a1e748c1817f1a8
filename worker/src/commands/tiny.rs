//! `kontext-worker tiny`: write the deterministic tiny model to a directory.

/// Arguments of `kontext-worker tiny`.
#[derive(Debug, clap::Args)]
pub struct TinyArgs {}

pub fn run(_args: TinyArgs) -> anyhow::Result<()> {
    anyhow::bail!("`kontext-worker tiny` is being built")
}
