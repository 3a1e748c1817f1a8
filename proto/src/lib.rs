//! kontext-proto: the wire contract and queue protocol shared by coordinator and worker.
//!
//! - `job`: job types, states, records; `chain`: chains of edit turns (storyboards); `error`: error kinds that decide retries;
//! - `validate`: client requests → `ValidJobSpec` with field-level errors (`validate_chain`:
//!   chain requests → planned turn specs);
//! - `clock`: the wall clock (`now_ms`) and the one duration syntax of every flag;
//! - `resolution`: Kontext size rules (preferred-resolution snapping, keep-aspect);
//! - `queue`: the `JobQueue` seam and its types; `policy`: retry/backoff, lease expiry and the
//!   poison rule as pure functions of `now`; `keys`: the Redis key layout;
//! - `memory` (feature "memory"): the embedded queue; `redis` (feature "redis"): the distributed
//!   one; `conformance` (feature "conformance"): the suite both pass.
//!
//! Job lifecycle: `queued → running → succeeded | failed | canceled`, plus `dead` for poison jobs.
//! A running job whose lease expires goes back to `queued` (a crash); a failed attempt with a
//! transient error goes back to `queued` after a backoff. Every claim and every re-queue bumps the
//! job's epoch, the fencing token a worker presents on every later call.
//!
//! This crate never depends on candle; its default features pull in no async runtime.

pub mod chain;
pub mod clock;
pub mod error;
pub mod job;
pub mod keys;
pub mod policy;
pub mod queue;
pub mod resolution;
pub mod validate;
pub mod validate_chain;

#[cfg(feature = "memory")]
pub mod memory;

#[cfg(feature = "redis")]
pub mod redis;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use chain::{
    AppendOutcome, ChainId, ChainRecord, ChainStatus, ChainSubmission, ChainTurn, FailurePolicy,
    PlannedTurn, TurnAppend, TurnState,
};
pub use error::{JobError, JobErrorKind};
pub use job::*;
pub use queue::*;
