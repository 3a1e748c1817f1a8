//! kontext-proto: the wire contract and queue protocol shared by coordinator and worker.
//!
//! - `job`: job types, states, records; `error`: error kinds that decide retries;
//! - `resolution`: Kontext size rules (preferred-resolution snapping, keep-aspect);
//! - `queue`: the `JobQueue` seam and its types.
//!
//! This crate never depends on candle; its default features pull in no async runtime.

pub mod error;
pub mod job;
pub mod queue;
pub mod resolution;

pub use error::{JobError, JobErrorKind};
pub use job::*;
pub use queue::*;
