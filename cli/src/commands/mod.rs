//! The subcommands; binary code, so errors are `anyhow`. Each returns the process exit code
//! (a job that ended failed or canceled is a non-zero exit).

pub mod demo;
pub mod eval;
pub mod jobs;
pub mod operators;
pub mod speed;
pub mod storyboard;
pub mod up;
