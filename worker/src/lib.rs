//! kontext-worker: the job loop that claims work from the queue, runs it on the engine
//! (`kontext-engine`, resident on its own thread), uploads results and commits.
//!
//! - `job_loop`: `Worker`, the job loop over any `JobQueue` + `BlobStore`; `service`:
//!   `spawn_worker` (engine thread + job loop, used by `kontext-worker serve` and `kontext up`)
//!   and `serve`, the worker wired from its flags;
//! - `job_context`: what one claimed job's tasks share (queue, lease, settings, the stop flag,
//!   the step clock, status); `attempt`: one claimed job from inputs to commit; `lease`: the
//!   heartbeat; `progress`: throttled progress events; `drain`: what SIGTERM does to the running
//!   job; `inputs` / `output` / `latents`: objects in and out;
//! - `metrics` + `health`: readiness, liveness and Prometheus metrics on `--metrics-listen`;
//! - `settings`: `WorkerSettings` and its defaults; `config`: the flags.

pub mod attempt;
pub mod config;
pub mod drain;
pub mod health;
pub mod inputs;
pub mod job_context;
pub mod job_loop;
pub mod latents;
pub mod lease;
pub mod metrics;
pub mod output;
pub mod progress;
pub mod registry;
pub mod service;
pub mod settings;
