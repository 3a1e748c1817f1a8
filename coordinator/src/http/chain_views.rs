//! What the chain routes send and receive (OpenAPI schemas), and the rendering of a chain record:
//! the chain's settings and, per turn, its state, seed, object keys and job (design.md §9:
//! chains return `id, status, turns: [job...]`).

use kontext_proto::validate_chain::{ChainRequest, TurnRequest};
use kontext_proto::{ChainRecord, ChainStatus, ChainTurn, JobStatus, TurnState};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::views::{JobView, rfc3339};

/// One turn of `POST /v1/chains` (and the body of `POST /v1/chains/{id}/turns`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(default)]
#[schema(example = json!({"prompt": "now it is raining", "seed": 7}))]
pub struct ChainTurnBody {
    /// The edit instruction of this turn.
    pub prompt: String,
    /// Absent: derived from the chain seed and the turn number (re-running a chain with the same
    /// chain seed reproduces every turn).
    pub seed: Option<u64>,
    /// Default: the chain's `guidance` (appended turns: the last turn's).
    pub guidance: Option<f32>,
    /// Default: the chain's `steps` (appended turns: the last turn's).
    pub steps: Option<u32>,
}

impl From<ChainTurnBody> for TurnRequest {
    fn from(t: ChainTurnBody) -> Self {
        Self {
            prompt: t.prompt,
            seed: t.seed,
            guidance: t.guidance,
            steps: t.steps,
        }
    }
}

/// `POST /v1/chains` body: a storyboard of edit turns, each editing the previous turn's output.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(default)]
#[schema(example = json!({"input_image": "<upload id>", "carry": "latent",
    "on_failure": "stop", "seed": 42, "steps": 28,
    "turns": [{"prompt": "give the cat a red scarf"}, {"prompt": "now it is snowing"}]}))]
pub struct CreateChain {
    /// The image turn 1 edits (same forms as a job's `input_image`). Absent: turn 1 is
    /// text-to-image.
    pub input_image: Option<String>,
    /// Without `input_image`: the prompt of a text-to-image turn 1, before `turns`. Without
    /// both, `turns[0]` is the text-to-image turn.
    pub prompt: Option<String>,
    /// 1 to 100 turns.
    pub turns: Vec<ChainTurnBody>,
    /// `image` (default): the next turn encodes this turn's PNG. `latent`: it uses this turn's
    /// packed output latent (stored beside the PNG), skipping VAE decode → encode.
    pub carry: Option<String>,
    /// `stop` (default): a failed turn ends the chain `failed`. `continue`: the next turn edits
    /// the last good frame.
    pub on_failure: Option<String>,
    /// Chain seed that turn seeds are derived from; absent: the server picks one.
    pub seed: Option<u64>,
    /// Size of a text-to-image turn 1 (every frame has turn 1's size).
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub aspect_ratio: Option<String>,
    /// How the input image is sized for turn 1: `snap` (default) or `keep`.
    pub resize: Option<String>,
    /// Defaults for every turn.
    pub steps: Option<u32>,
    pub guidance: Option<f32>,
    /// `high`, `standard` (default) or `bulk`, for every turn.
    pub priority: Option<String>,
    /// Called (Standard Webhooks signature) when each turn finishes.
    pub webhook_url: Option<String>,
}

impl From<CreateChain> for ChainRequest {
    fn from(c: CreateChain) -> Self {
        Self {
            input_image: c.input_image,
            prompt: c.prompt,
            turns: c.turns.into_iter().map(Into::into).collect(),
            carry: c.carry,
            on_failure: c.on_failure,
            seed: c.seed,
            width: c.width,
            height: c.height,
            aspect_ratio: c.aspect_ratio,
            resize: c.resize,
            steps: c.steps,
            guidance: c.guidance,
            priority: c.priority,
            webhook_url: c.webhook_url,
        }
    }
}

/// `POST /v1/chains/{id}/fork` body.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(default)]
#[schema(example = json!({"from_turn": 3, "turns": [{"prompt": "but at sunset"}]}))]
pub struct ForkChain {
    /// The new chain shares turns 1..=from_turn (the same jobs; nothing re-runs). It must have
    /// succeeded.
    pub from_turn: u32,
    /// Turns to append to the fork at once (optional; append more later).
    pub turns: Vec<ChainTurnBody>,
}

/// `202` reply to creating or forking a chain.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChainAccepted {
    pub id: String,
    pub status: ApiChainStatus,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApiChainStatus {
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl From<ChainStatus> for ApiChainStatus {
    fn from(s: ChainStatus) -> Self {
        match s {
            ChainStatus::Running => Self::Running,
            ChainStatus::Succeeded => Self::Succeeded,
            ChainStatus::Failed => Self::Failed,
            ChainStatus::Canceled => Self::Canceled,
        }
    }
}

/// Where a turn stands: `pending` (waits for the turns before it), `skipped` (the chain ended
/// before reaching it), or its job's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApiTurnState {
    Pending,
    Skipped,
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
    Dead,
}

impl From<TurnState> for ApiTurnState {
    fn from(s: TurnState) -> Self {
        match s {
            TurnState::Pending => Self::Pending,
            TurnState::Skipped => Self::Skipped,
            TurnState::Job(JobStatus::Queued) => Self::Queued,
            TurnState::Job(JobStatus::Running) => Self::Running,
            TurnState::Job(JobStatus::Succeeded) => Self::Succeeded,
            TurnState::Job(JobStatus::Failed) => Self::Failed,
            TurnState::Job(JobStatus::Canceled) => Self::Canceled,
            TurnState::Job(JobStatus::Dead) => Self::Dead,
        }
    }
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
    pub state: ApiTurnState,
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
    pub status: ApiChainStatus,
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
    pub status: super::views::ApiCancelOutcome,
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
        state: chain.turn_state(t).into(),
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
        status: chain.status.into(),
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
