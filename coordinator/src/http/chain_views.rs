//! What the chain routes send and receive (OpenAPI schemas; the chain request, turn and status
//! types are proto's own, with their schemas derived there), and the rendering of a chain record:
//! the chain's settings and, per turn, its state, seed, object keys and job (docs/chains.md
//! §API: a chain is returned as `id, status, turns: [job...]`).

use kontext_proto::validate_chain::TurnRequest;
use kontext_proto::{CancelOutcome, ChainRecord, ChainStatus, ChainTurn, JobStatus, TurnState};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::views::{JobView, rfc3339};

/// `POST /v1/chains/{id}/fork` body.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(default)]
#[schema(example = json!({"from_turn": 3, "turns": [{"prompt": "but at sunset"}]}))]
pub struct ForkChain {
    /// The new chain shares turns 1..=from_turn (the same jobs; nothing re-runs). It must have
    /// succeeded.
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "kontext_proto::json_int::u32")]
    pub from_turn: u32,
    /// Turns to append to the fork at once (optional; append more later). The fork is created
    /// with all of them or not at all; it may not pass 1,000 turns in all.
    #[schema(max_items = 999)]
    pub turns: Vec<TurnRequest>,
}

/// `202` reply to creating or forking a chain.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChainAccepted {
    pub id: String,
    pub status: ChainStatus,
    pub status_url: String,
    pub turns_url: String,
    pub cancel_url: String,
    /// Job id of each planned turn, in order.
    pub job_ids: Vec<String>,
}

/// `202` reply to appending a turn.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TurnAccepted {
    pub chain_id: String,
    /// Number of the new turn (1-based).
    pub turn: u32,
    pub job_id: String,
    /// True when it was queued at once (the chain had finished); false when it waits for the
    /// turns before it.
    pub started: bool,
    pub status_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ForkedFrom {
    pub chain_id: String,
    pub turn: u32,
}

/// One turn of `GET /v1/chains/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TurnView {
    /// 1-based.
    pub turn: u32,
    pub state: TurnState,
    pub job_id: String,
    pub prompt: String,
    pub seed: u64,
    pub steps: u32,
    pub guidance: f32,
    /// Object key of the frame this turn edited (the previous turn's output, or the chain's
    /// input); absent for a text-to-image turn and before the turn was created.
    pub input_key: Option<String>,
    /// Object key of the carried latent it used instead of encoding `input_key` (`carry: latent`).
    pub input_latent_key: Option<String>,
    /// Object key of this turn's output image, once it succeeded.
    pub result_key: Option<String>,
    /// Object key of this turn's packed output latent (safetensors), with `carry: latent`.
    pub result_latent_key: Option<String>,
    /// The turn's job (with its result URL), once created.
    pub job: Option<JobView>,
}

/// A chain as `GET /v1/chains/{id}` returns it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChainView {
    pub id: String,
    pub status: ChainStatus,
    pub carry: String,
    pub on_failure: String,
    pub seed: u64,
    /// Object key of the chain's input image.
    pub input_image: Option<String>,
    /// Frame size (every turn's output).
    pub width: u32,
    pub height: u32,
    pub created_at: String,
    pub finished_at: Option<String>,
    /// Last turn that succeeded (0 = none).
    pub last_good_turn: u32,
    pub forked_from: Option<ForkedFrom>,
    pub turns: Vec<TurnView>,
}

/// Reply to `POST /v1/chains/{id}/cancel`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChainCancelReply {
    pub id: String,
    pub status: CancelOutcome,
}

/// Renders a turn; `job` is its rendered job, when created.
pub fn turn_view(chain: &ChainRecord, t: &ChainTurn, job: Option<JobView>) -> TurnView {
    let spec = t.job.as_ref().map_or(&t.spec, |j| &j.spec);
    let result = t
        .job
        .as_ref()
        .filter(|j| j.status == JobStatus::Succeeded)
        .and_then(|j| j.result.as_ref());
    TurnView {
        turn: t.turn,
        state: chain.turn_state(t),
        job_id: t.job_id.to_string(),
        prompt: spec.prompt.clone(),
        seed: spec.seed,
        steps: spec.steps,
        guidance: spec.guidance,
        input_key: spec.input.as_ref().map(|i| i.key.to_string()),
        input_latent_key: spec.input_latent_key.as_ref().map(ToString::to_string),
        result_key: result.map(|r| r.key.to_string()),
        result_latent_key: result.and_then(|r| r.latent_key.as_ref().map(ToString::to_string)),
        job,
    }
}

/// Renders a chain; `jobs[i]` is turn i+1's rendered job.
pub fn chain_view(chain: &ChainRecord, jobs: Vec<Option<JobView>>) -> ChainView {
    let (width, height) = chain
        .turns
        .first()
        .map_or((0, 0), |t| (t.spec.width, t.spec.height));
    ChainView {
        id: chain.id.to_string(),
        status: chain.status,
        carry: chain.carry.as_str().to_owned(),
        on_failure: chain.on_failure.as_str().to_owned(),
        seed: chain.seed,
        input_image: chain.input.as_ref().map(|i| i.key.to_string()),
        width,
        height,
        created_at: rfc3339(chain.created_at),
        finished_at: chain.finished_at.map(rfc3339),
        last_good_turn: chain.last_good,
        forked_from: chain.forked_from.as_ref().map(|f| ForkedFrom {
            chain_id: f.chain_id.clone(),
            turn: f.turn,
        }),
        turns: chain
            .turns
            .iter()
            .zip(jobs)
            .map(|(t, job)| turn_view(chain, t, job))
            .collect(),
    }
}
