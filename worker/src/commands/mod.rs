//! Subcommands of the `kontext-worker` binary; binary code, so errors are `anyhow`.

pub mod run;
pub mod tiny;
