//! kontext-worker: the job loop that claims work from the queue, runs it on the engine
//! (`kontext-engine`, resident on its own thread), uploads results and commits.
//!
//! - `consumer`: `Worker`, the job loop over any `JobQueue` + `BlobStore` (embeddable: `kontext
//!   up` runs one beside the coordinator); `attempt`: one claimed job from inputs to commit;
//!   `inputs` / `output` / `latents`: objects in and out; `lease`: heartbeat and the stop flag;
//!   `progress`: throttled progress events; `drain`: what SIGTERM does to the running job;
//! - `metrics` + `health`: readiness, liveness and Prometheus metrics on `--metrics-listen`;
//! - `config`: the flags; `service`: `kontext-worker serve` wired from flags.

pub mod attempt;
pub mod clock;
pub mod config;
pub mod consumer;
pub mod drain;
pub mod health;
pub mod inputs;
pub mod latents;
pub mod lease;
pub mod metrics;
pub mod output;
pub mod progress;
pub mod service;
