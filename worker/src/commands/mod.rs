//! Subcommands of the `kontext-worker` binary; binary code, so errors are `anyhow`.

pub mod bench_gpu;
pub mod check_weights;
pub mod run;
pub mod serve;
pub mod tiny;
pub mod write_gguf;
