//! kontext-proto: the wire contract and queue protocol shared by coordinator and worker.
//!
//! - `job`: job types, states, records; `chain`: chains of edit turns (storyboards); `ids`: job
//!   and chain ids; `error`: error kinds that decide retries, and `QueueError`;
//! - `validate`: client requests → `ValidJobSpec` with field-level errors (`validate_chain`:
//!   chain requests → planned turn specs);
//! - `clock`: the wall clock (`now_ms`) and the one duration syntax of every flag;
//! - `resolution`: Kontext size rules (preferred-resolution snapping, keep-aspect);
//! - `queue`: the `JobQueue` seam and its types; `policy`: retry/backoff, lease expiry and the
//!   poison rule as pure functions of `now`; `keys`: the Redis key layout; `object_key`: the
//!   validated blob-store key that jobs, results and chains carry;
//! - `memory` (feature "memory"): the embedded queue; `redis` (feature "redis"): the distributed
//!   one; `any` (both features): `AnyQueue`, the one chosen at run time; `conformance` (feature
//!   "conformance"): the suite both pass.
//! - feature "openapi": the wire types (requests, statuses) derive their OpenAPI schemas.
//!
//! Job lifecycle: `queued → running → succeeded | failed | canceled`, plus `dead` for poison jobs.
//! A running job whose lease expires goes back to `queued` (a crash); a failed attempt with a
//! transient error goes back to `queued` after a backoff. Every claim and every re-queue bumps the
//! job's epoch, the fencing token a worker presents on every later call.
//!
//! This crate never depends on candle; its default features pull in no async runtime.

pub mod admin_jobs;
pub mod chain;
pub mod clock;
pub mod dead_letters;
pub mod error;
pub mod ids;
pub mod job;
pub mod job_history;
pub mod json_int;
pub mod keys;
pub mod loras;
pub mod model_profile;
pub mod object_key;
pub mod policy;
pub mod queue;
pub mod references;
pub mod resolution;
pub mod throughput;
pub mod usage;
pub mod validate;
pub mod validate_chain;
mod validate_fields;
pub mod workers;

#[cfg(feature = "memory")]
pub mod memory;

#[cfg(feature = "redis")]
pub mod redis;

#[cfg(feature = "conformance")]
pub mod conformance;

#[cfg(all(feature = "memory", feature = "redis"))]
pub mod any;
#[cfg(all(feature = "memory", feature = "redis"))]
pub use any::AnyQueue;

pub use chain::{
    AppendOutcome, ChainFork, ChainId, ChainRecord, ChainStatus, ChainSubmission, ChainTurn,
    FailurePolicy, MAX_CHAIN_TURNS, PlannedTurn, TurnAppend, TurnState,
};
pub use error::{BoxError, JobError, JobErrorKind, QueueError};
pub use job::*;
pub use object_key::ObjectKey;
pub use queue::*;
