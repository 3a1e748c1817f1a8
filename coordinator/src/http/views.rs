//! What the API sends (the OpenAPI schemas): the job view of `GET /v1/jobs/{id}` (see
//! coordinator/README.md and docs/openapi.json), submit and list replies, uploads, cancel.
//! Request bodies and statuses are proto's own types (`JobRequest`, `JobStatus`, ...), which
//! derive their schemas there. Conversions from the queue's records live here too, so every
//! route renders a job the same way.

use kontext_proto::{CancelOutcome, JobErrorKind, JobKind, JobRecord, JobStatus, Millis};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `202` reply to a submit: where to follow the job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"id": "0b6a4f52-6f9e-4c55-9d0a-6f2f1b1e2c3d", "status": "queued",
    "status_url": "http://127.0.0.1:8080/v1/jobs/0b6a4f52-6f9e-4c55-9d0a-6f2f1b1e2c3d",
    "events_url": "http://127.0.0.1:8080/v1/jobs/0b6a4f52-6f9e-4c55-9d0a-6f2f1b1e2c3d/events",
    "cancel_url": "http://127.0.0.1:8080/v1/jobs/0b6a4f52-6f9e-4c55-9d0a-6f2f1b1e2c3d/cancel",
    "result_url": "http://127.0.0.1:8080/v1/jobs/0b6a4f52-6f9e-4c55-9d0a-6f2f1b1e2c3d/result"}))]
pub struct JobAccepted {
    pub id: String,
    pub status: JobStatus,
    pub status_url: String,
    /// Server-sent events: state and progress, then the final job.
    pub events_url: String,
    pub cancel_url: String,
    /// The image once the job succeeded.
    pub result_url: String,
}

/// A job as `GET /v1/jobs/{id}` returns it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"id": "0b6a4f52-6f9e-4c55-9d0a-6f2f1b1e2c3d", "kind": "edit",
    "status": "succeeded", "progress": 1.0, "prompt": "make the jacket red", "seed": 42,
    "width": 1024, "height": 1024, "steps": 28, "guidance": 2.5, "output_format": "png",
    "priority": "standard", "input_image": "in/acme/9f86d0...a08.png",
    "created_at": "2026-11-26T13:00:00.000Z", "started_at": "2026-11-26T13:00:00.120Z",
    "finished_at": "2026-11-26T13:00:04.870Z", "attempts": 1,
    "result": {"url": "https://s3.example.com/results/out/acme/0b6a.../1.png?X-Amz-Signature=...",
        "key": "out/acme/0b6a4f52-6f9e-4c55-9d0a-6f2f1b1e2c3d/1.png", "width": 1024,
        "height": 1024, "format": "png"},
    "error": null}))]
pub struct JobView {
    pub id: String,
    pub kind: JobKind,
    pub status: JobStatus,
    /// Share of the denoising steps done, 0..1.
    pub progress: f32,
    pub prompt: String,
    /// Always set: the server picks one when the request had none.
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub guidance: f32,
    pub output_format: String,
    pub priority: String,
    /// Step caching level: none, regular or high.
    pub acceleration: String,
    /// Object key of the stored context image (edits).
    pub input_image: Option<String>,
    /// Object keys of every reference image of a multi-reference edit, in order (the first is
    /// `input_image`); absent for single-image edits and generations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_images: Option<Vec<String>>,
    /// How those references were placed: offset or index (multi-reference edits only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_positions: Option<String>,
    /// The job's LoRAs (stored keys and scales).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<kontext_proto::loras::LoraSpec>,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Claims that counted (a worker's graceful release does not).
    pub attempts: u32,
    pub result: Option<ResultView>,
    pub error: Option<JobErrorView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResultView {
    /// Presigned (S3) or signed (local storage) URL: GET it without credentials until it expires.
    pub url: String,
    pub key: String,
    pub width: u32,
    pub height: u32,
    pub format: String,
    /// Full transformer evaluations the engine ran: the steps, or fewer with `acceleration`.
    pub full_evaluations: Option<u32>,
    /// The LoRAs the engine applied (format, layers changed, text-encoder parts skipped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<kontext_proto::loras::AppliedLora>,
    /// The worker's milliseconds per stage of the attempt that produced this result (fetching
    /// inputs, engine, encoding, upload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<kontext_proto::StageTimings>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobErrorView {
    /// invalid_input, transient, fatal or canceled.
    pub kind: String,
    pub message: String,
}

/// A page of the caller's jobs, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Reply to `POST /v1/jobs/{id}/cancel` (fal's vocabulary).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"id": "0b6a4f52-6f9e-4c55-9d0a-6f2f1b1e2c3d",
    "status": "CANCELLATION_REQUESTED"}))]
pub struct CancelReply {
    pub id: String,
    // Never `NOT_FOUND`: an unknown job is a 404.
    pub status: CancelOutcome,
}

/// Reply to `POST /v1/uploads`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"id": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08.png",
    "key": "in/acme/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08.png",
    "width": 1024, "height": 768, "content_type": "image/png"}))]
pub struct UploadReply {
    /// Use as `input_image`.
    pub id: String,
    pub key: String,
    pub width: u32,
    pub height: u32,
    /// How it is stored (WebP uploads are stored as PNG).
    pub content_type: String,
}

/// Reply of `POST /v1/loras`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoraUploadReply {
    /// Use as `loras[].path`.
    pub id: String,
    pub key: String,
    pub bytes: u64,
    /// Tensors in the file.
    pub tensors: usize,
}

/// Builds a `JobView`; `result_url` is the signed URL of the result, when there is one.
pub fn job_view(job: &JobRecord, result_url: Option<String>) -> JobView {
    let spec = &job.spec;
    JobView {
        id: job.id.to_string(),
        kind: spec.kind,
        status: job.status,
        progress: job.progress,
        prompt: spec.prompt.clone(),
        seed: job.result.as_ref().map_or(spec.seed, |r| r.seed),
        width: spec.width,
        height: spec.height,
        steps: spec.steps,
        guidance: spec.guidance,
        output_format: spec.output_format.extension().to_owned(),
        priority: match spec.priority {
            kontext_proto::Priority::High => "high",
            kontext_proto::Priority::Standard => "standard",
            kontext_proto::Priority::Bulk => "bulk",
        }
        .to_owned(),
        acceleration: spec.acceleration.as_str().to_owned(),
        input_image: spec.input.as_ref().map(|i| i.key.to_string()),
        input_images: (!spec.more_references.is_empty()).then(|| {
            spec.input
                .iter()
                .chain(spec.more_references.iter().map(|r| &r.image))
                .map(|i| i.key.to_string())
                .collect()
        }),
        reference_positions: (!spec.more_references.is_empty()).then(|| {
            match spec.reference_positions {
                kontext_proto::job::ReferencePositions::Offset => "offset",
                kontext_proto::job::ReferencePositions::Index => "index",
            }
            .to_owned()
        }),
        loras: spec.loras.clone(),
        created_at: rfc3339(job.created_at),
        started_at: job.started_at.map(rfc3339),
        finished_at: job.finished_at.map(rfc3339),
        attempts: job.attempts,
        result: job
            .result
            .as_ref()
            .zip(result_url)
            .map(|(r, url)| ResultView {
                url,
                key: r.key.to_string(),
                width: r.width,
                height: r.height,
                format: r.format.extension().to_owned(),
                full_evaluations: r.full_evaluations,
                loras: r.loras.clone(),
                stages: r.stages,
            }),
        error: job.error.as_ref().map(|e| JobErrorView {
            kind: error_kind(e.kind).to_owned(),
            message: e.message.clone(),
        }),
    }
}

fn error_kind(kind: JobErrorKind) -> &'static str {
    kind.as_str()
}

/// `ms` since the Unix epoch as RFC 3339 UTC with milliseconds, e.g. `2026-11-26T13:00:00.123Z`.
pub fn rfc3339(ms: Millis) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`, restricted to dates after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_render_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_698_000_123), "2026-11-26T13:00:00.123Z");
        assert_eq!(rfc3339(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }
}
