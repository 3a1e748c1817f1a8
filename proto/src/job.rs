//! Jobs as they travel between coordinator, queue and worker.
//!
//! A request from a client (`JobRequest`) is validated into a `ValidJobSpec` (see `validate`), which
//! is what the queue stores and the worker runs. The queue keeps a `JobRecord` per job: the spec
//! plus lifecycle fields. Field names follow the BFL API's where those exist (`prompt`,
//! `input_image`, `seed`, `aspect_ratio`, `output_format`, `webhook_url`; see
//! coordinator/src/http/bfl.rs).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::JobError;
pub use crate::ids::JobId;
use crate::object_key::ObjectKey;
use crate::resolution::ResizeMode;

/// Milliseconds since the Unix epoch. Every time-dependent call takes `now` as one of these, so
/// policy and state transitions are testable without clocks or sleeps.
pub type Millis = u64;

/// Tenant a job belongs to (from the API key). A tenant never sees another tenant's jobs.
pub type TenantId = String;

/// Generate (text only) or edit (one context image).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = ApiJobKind))]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Generate,
    Edit,
}

/// Lifecycle: `queued → running → succeeded | failed | canceled`, plus `dead` (gave up after
/// crashes or retries). A running job whose lease expires goes back to `queued`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = ApiJobStatus))]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
    Dead,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Canceled,
        JobStatus::Dead,
    ];

    /// Terminal states never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Canceled | Self::Dead
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Dead => "dead",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = UnknownVariant;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownVariant(s.to_owned()))
    }
}

/// A string that names no variant of the enum it was parsed as.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown value {0:?}")]
pub struct UnknownVariant(pub String);

/// Priority class. Workers always take `high` before `standard` before `bulk`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    High,
    #[default]
    Standard,
    Bulk,
}

impl Priority {
    /// Claim order.
    pub const ORDER: [Priority; 3] = [Priority::High, Priority::Standard, Priority::Bulk];

    /// Short name used in Redis keys and metrics labels.
    pub fn class(self) -> &'static str {
        match self {
            Self::High => "hi",
            Self::Standard => "std",
            Self::Bulk => "bulk",
        }
    }
}

/// Encoding of the output image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    #[default]
    Png,
    Jpeg,
}

impl OutputFormat {
    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpeg",
        }
    }
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
        }
    }
}

/// The context image of an edit, already stored (content-addressed) by the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputImage {
    pub key: ObjectKey,
    /// Size of the stored image as decoded.
    pub width: u32,
    pub height: u32,
}

/// One more reference image of a multi-reference edit, with the size it is resized to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceImage {
    pub image: InputImage,
    /// Multiples of 16.
    pub context_width: u32,
    pub context_height: u32,
}

/// How several reference images get their positions (the engine's `ReferencePositions`):
/// `offset` tiles them on one canvas at index 1, `index` gives reference k index k.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferencePositions {
    #[default]
    Offset,
    Index,
}

/// What a turn of a chain carries into the next turn (docs/chains.md); plain jobs carry nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Carry {
    /// The next turn re-encodes this turn's PNG.
    #[default]
    Image,
    /// The next turn uses this turn's packed output latent (skips VAE decode → encode).
    Latent,
}

/// A validated job: what the queue stores and the worker runs. Every size is resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidJobSpec {
    pub kind: JobKind,
    pub prompt: String,
    /// Present exactly when `kind == Edit`.
    pub input: Option<InputImage>,
    /// Packed latent of the context (safetensors key), used instead of `input` when a chain
    /// carries latents. The image in `input` is still kept for users and forks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_latent_key: Option<ObjectKey>,
    /// How the context is sized (edit only).
    #[serde(default)]
    pub resize: ResizeMode,
    /// Context size after resize (edit only), multiples of 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_height: Option<u32>,
    /// Target size, multiples of 16.
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub guidance: f32,
    /// Always set: the server picks one when the client gave none, and reports it.
    pub seed: u64,
    pub output_format: OutputFormat,
    pub priority: Priority,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Packed initial latents (safetensors object key), like diffusers' `latents=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_latents_key: Option<ObjectKey>,
    /// Store the packed output latent beside the image (chains with `carry: latent`).
    #[serde(default)]
    pub keep_latent: bool,
    /// Step caching level.
    #[serde(default)]
    pub acceleration: Acceleration,
    /// References after `input` (multi-reference edits), each with its context size.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_references: Vec<ReferenceImage>,
    #[serde(default)]
    pub reference_positions: ReferencePositions,
    /// LoRAs to apply (docs/loras.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<crate::loras::LoraSpec>,
    /// W3C `traceparent` of the span that submitted the job (the coordinator's), which the
    /// worker's spans continue (docs/tracing.md). Set by the coordinator, never by a client's
    /// body; chain turns carry the one of the request that planned them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// How many denoising steps skip the transformer (fal's `acceleration` levels): `none` runs every
/// step in full; `regular` reuses the late blocks when the first block's output barely changed
/// (First-Block-Cache); `high` runs every third step in full and extrapolates the others
/// (docs/engine.md §Step caching).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Acceleration {
    #[default]
    None,
    Regular,
    High,
}

impl Acceleration {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Regular => "regular",
            Self::High => "high",
        }
    }
}

/// What a worker reports when it commits a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// The output image (attempt-scoped).
    pub key: ObjectKey,
    pub width: u32,
    pub height: u32,
    pub format: OutputFormat,
    pub seed: u64,
    /// The packed output latent, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latent_key: Option<ObjectKey>,
    /// Engine time in milliseconds (for metrics and the overhead benchmark).
    #[serde(default)]
    pub engine_ms: u64,
    /// Full transformer evaluations the engine ran (fewer than the steps with `acceleration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_evaluations: Option<u32>,
    /// The LoRAs the engine applied, as it read them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<crate::loras::AppliedLora>,
    /// Where the attempt's time went, stage by stage (workers before this field reported none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<StageTimings>,
}

/// The worker's time per stage of the attempt that committed, in milliseconds: reading the
/// inputs from storage, the engine (text, encode, denoise, decode), encoding the outputs, and
/// uploading them. The commit itself follows them, so it is not here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StageTimings {
    pub fetch_ms: u64,
    pub engine_ms: u64,
    pub encode_ms: u64,
    pub upload_ms: u64,
}

/// Reference from a job to the chain turn it runs (docs/chains.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainRef {
    pub chain_id: String,
    pub turn: u32,
}

/// The queue's view of one job, as `GET /v1/jobs/{id}` reports it (plus internal fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub tenant: TenantId,
    pub status: JobStatus,
    pub spec: ValidJobSpec,
    /// 0..=1.
    pub progress: f32,
    /// Claims that counted (a graceful release does not count).
    pub attempts: u32,
    /// Times a worker lost the lease (presumed crashed).
    pub crashes: u32,
    /// Fencing token: bumped on every claim and on every re-queue.
    pub epoch: u64,
    pub cancel_requested: bool,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub worker: Option<String>,
    pub result: Option<JobResult>,
    pub error: Option<JobError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<ChainRef>,
}
