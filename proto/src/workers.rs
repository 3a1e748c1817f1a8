//! The worker registry: every worker heartbeats a record of itself into the queue with a TTL
//! (`JobQueue::register_worker`), and the coordinator lists the live ones for operators
//! (`GET /v1/admin/workers`). A worker that stops heartbeating drops out when its TTL passes;
//! nothing has to clean up after it. docs/queue-protocol.md §Worker registry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::{JobId, Millis};

/// Longest worker id the registry stores (ids are host names plus a suffix).
pub const MAX_WORKER_ID_CHARS: usize = 200;

/// What a worker says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerInfo {
    /// The worker's id (`--worker-id`), as leases and events name it.
    pub id: String,
    pub host: String,
    /// `cpu`, `cuda:0`, …
    pub device: String,
    /// The GPU's name, when the device is one and the driver tells.
    pub gpu_name: Option<String>,
    /// `shapes`, `tiny` or the model directory.
    pub model: String,
    /// Compute dtype (`f32`, `bf16`).
    pub dtype: String,
    /// The linear layers' storage (`native`, `fp8`).
    pub linear_precision: String,
    /// `kontext-worker`'s version.
    pub version: String,
    /// When the worker started (ms since the epoch).
    pub started_at: Millis,
    /// When this record was written (ms since the epoch).
    pub seen_at: Millis,
    /// The job the engine runs now, and how far (0–1).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub current_job: Option<JobId>,
    pub progress: Option<f32>,
    /// Jobs this worker committed, and jobs it ended as failed (retried or not), since it started.
    pub jobs_succeeded: u64,
    pub jobs_failed: u64,
    /// Hit ratio per engine cache (`text`, `context`, `lora`), where it had lookups.
    pub cache_hit_ratio: BTreeMap<String, f64>,
    /// The LoRA set its engine holds (`loras::lora_set_id`), if any.
    pub lora_set: Option<String>,
    /// True once it was told to stop: it finishes (or releases) its job and claims no more.
    pub draining: bool,
}

/// What the queue answers a registry heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Beat {
    /// An operator asked this worker to drain (`JobQueue::request_drain`): finish or release its
    /// job, claim no more, exit.
    pub drain_requested: bool,
}

/// How a drain request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Recorded; the worker sees it at its next heartbeat.
    Requested,
    /// No live worker has that id.
    NotFound,
}

/// One admin action, as the audit stream keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// When it was done (ms since the epoch).
    pub at: Millis,
    /// `drain_worker`, …
    pub action: String,
    /// What it acted on (a worker id, …).
    pub target: String,
    /// Who did it, as the coordinator names the caller: `key:<first 12 hex digits of the admin
    /// key's SHA-256>` (never the key), `open` in open loopback mode, with `console ` in front
    /// for the console's buttons; `unknown` for entries written before actors were recorded.
    pub actor: String,
}

/// The actor of audit entries that were written before actors were recorded.
pub const UNKNOWN_ACTOR: &str = "unknown";

/// Entries the audit stream keeps (older ones are trimmed).
pub const AUDIT_MAXLEN: usize = 10_000;
/// How long a drain request waits for its worker's next heartbeat.
pub const DRAIN_REQUEST_TTL_S: u64 = 3_600;
