//! Chains (storyboards, docs/chains.md): an ordered list of turns, each one job, where turn k+1
//! edits turn k's output. The queue keeps a chain record (settings, one planned job id and one
//! spec template per turn) and creates turn k+1's job inside the same atomic step that ends turn
//! k, so a turn is never created twice, whatever redeliveries or crashes happen.
//!
//! Turns are numbered from 1. A turn's spec template is complete except for its context: the
//! queue fills `input` (and `input_latent_key` with `carry: latent`) from the frame it continues
//! from when it creates the job. Seeds are explicit or derived (`turn_seed`) from the chain seed
//! and the turn number before anything reaches the queue, so the queue never hashes.
//!
//! What ends a turn decides what follows (`FailurePolicy`): a succeeded turn starts the next one;
//! a failed, dead or canceled turn ends the chain `failed` (`stop`), or starts the next turn from
//! the last good frame (`continue`). The chain is `succeeded` when its last turn succeeded.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[cfg(any(feature = "memory", feature = "redis"))]
use crate::error::QueueError;
pub use crate::ids::ChainId;
use crate::job::{
    Carry, ChainRef, InputImage, JobId, JobRecord, JobStatus, Millis, TenantId, UnknownVariant,
    ValidJobSpec,
};
use crate::queue::RetainedLimits;

/// `running` until its last turn ends (or it is canceled); appending a turn to a `succeeded` or
/// `failed` chain makes it `running` again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = ApiChainStatus))]
#[serde(rename_all = "snake_case")]
pub enum ChainStatus {
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl ChainStatus {
    pub const ALL: [ChainStatus; 4] = [
        ChainStatus::Running,
        ChainStatus::Succeeded,
        ChainStatus::Failed,
        ChainStatus::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }
}

impl fmt::Display for ChainStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ChainStatus {
    type Err = UnknownVariant;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownVariant(s.to_owned()))
    }
}

/// What a turn that did not succeed does to its chain: `Stop` is BullMQ's `failParentOnFailure`
/// (<https://docs.bullmq.io/guide/flows/fail-parent>), `Continue` carries on from the last good
/// frame (docs/queue-protocol.md §Chains).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// The chain ends `failed`; later turns are never created.
    #[default]
    Stop,
    /// The next turn edits the last good frame (or the chain's input image).
    Continue,
}

impl FailurePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Continue => "continue",
        }
    }
}

impl FromStr for FailurePolicy {
    type Err = UnknownVariant;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stop" => Ok(Self::Stop),
            "continue" => Ok(Self::Continue),
            other => Err(UnknownVariant(other.to_owned())),
        }
    }
}

impl Carry {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Latent => "latent",
        }
    }
}

impl FromStr for Carry {
    type Err = UnknownVariant;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "image" => Ok(Self::Image),
            "latent" => Ok(Self::Latent),
            other => Err(UnknownVariant(other.to_owned())),
        }
    }
}

/// SplitMix64's output function (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of turn `turn` (1-based) of a chain seeded with `chain_seed`, for turns without an
/// explicit seed. Pure and portable, so re-running a chain with the same chain seed reproduces
/// every turn's seed; below 2^53 so JavaScript clients read it exactly.
pub fn turn_seed(chain_seed: u64, turn: u32) -> u64 {
    mix64(chain_seed ^ mix64(u64::from(turn))) >> 11
}

/// One planned turn of a chain: its job id (fixed at planning, so the queue needs no id
/// generator) and its spec. For turn 1 the spec is complete; for later turns `input` and
/// `input_latent_key` must be `None` (the queue fills them from the frame the turn edits).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedTurn {
    pub job_id: JobId,
    pub spec: ValidJobSpec,
}

/// A chain to create. Turn 1's job is created at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainSubmission {
    pub id: ChainId,
    pub tenant: TenantId,
    pub carry: Carry,
    pub on_failure: FailurePolicy,
    /// Seed the turns' derived seeds come from (`turn_seed`).
    pub seed: u64,
    /// The image turn 1 edits; `None` when turn 1 is text-to-image.
    pub input: Option<InputImage>,
    pub webhook_url: Option<String>,
    /// At least one.
    pub turns: Vec<PlannedTurn>,
    /// Refuse with `QueueError::TooManyInFlight` when the tenant already has this many
    /// non-terminal jobs (0 = no limit). Checked once, at creation; later turns replace the
    /// turn before them and are not checked.
    pub max_in_flight: u32,
    #[serde(default)]
    pub retained: RetainedLimits,
}

/// Most turns a chain may have, appended and forked ones included (a chain renders in one
/// response). Creation plans at most `validate_chain::MAX_TURNS`.
pub const MAX_CHAIN_TURNS: usize = 1_000;

/// A turn to append to an existing chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnAppend {
    pub job_id: JobId,
    /// Context-free template (`input`/`input_latent_key` `None`); its `seed` is replaced by
    /// `seed`, or by `turn_seed(chain seed, new turn number)` when `seed` is `None`.
    pub spec: ValidJobSpec,
    pub seed: Option<u64>,
    /// Checked against the tenant's retained turns.
    #[serde(default)]
    pub retained: RetainedLimits,
}

/// A fork (`JobQueue::fork_chain`): a new chain sharing turns `1..=from_turn` of another, then
/// `turns` appended, all in one step — it exists whole or not at all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainFork {
    pub new_id: ChainId,
    pub from_turn: u32,
    /// Appended after the shared turns; the first starts at once from `from_turn`'s frame. Their
    /// `retained` fields are ignored (the fork's own count).
    pub turns: Vec<TurnAppend>,
    pub retained: RetainedLimits,
}

/// What `append_turn` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Number of the new turn.
    pub turn: u32,
    /// True when its job was created at once (the chain had finished); false when it waits for
    /// the turns before it.
    pub started: bool,
}

/// One turn as `get_chain` returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainTurn {
    /// 1-based.
    pub turn: u32,
    pub job_id: JobId,
    /// The template as planned (the job's spec, with its context, is in `job`).
    pub spec: ValidJobSpec,
    /// `None` while the turn waits for the turns before it, or when it was skipped (the chain
    /// ended first), or after the job passed its retention.
    pub job: Option<JobRecord>,
}

/// Where a turn stands: `pending` (waits for the turns before it), `skipped` (the chain ended
/// before reaching it), or its job's status.
// On the wire it is one word (`as_str`), so clients see a flat enumeration, not the nesting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum TurnState {
    /// Waits for the turns before it.
    Pending,
    /// Never created: the chain ended (failed or canceled) before reaching it.
    Skipped,
    /// Created: the job's status.
    Job(JobStatus),
}

impl TurnState {
    pub const ALL: [TurnState; 8] = [
        TurnState::Pending,
        TurnState::Skipped,
        TurnState::Job(JobStatus::Queued),
        TurnState::Job(JobStatus::Running),
        TurnState::Job(JobStatus::Succeeded),
        TurnState::Job(JobStatus::Failed),
        TurnState::Job(JobStatus::Canceled),
        TurnState::Job(JobStatus::Dead),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Skipped => "skipped",
            Self::Job(status) => status.as_str(),
        }
    }
}

impl fmt::Display for TurnState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<TurnState> for &'static str {
    fn from(state: TurnState) -> Self {
        state.as_str()
    }
}

impl FromStr for TurnState {
    type Err = UnknownVariant;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownVariant(s.to_owned()))
    }
}

impl TryFrom<String> for TurnState {
    type Error = UnknownVariant;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// The schema of the one-word form (a derive would describe the nested enum).
#[cfg(feature = "openapi")]
mod turn_state_schema {
    use std::borrow::Cow;

    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

    use super::TurnState;

    impl utoipa::PartialSchema for TurnState {
        fn schema() -> RefOr<Schema> {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(
                    "Where a turn stands: `pending` (waits for the turns before it), `skipped` \
                     (the chain ended\nbefore reaching it), or its job's status.",
                ))
                .enum_values(Some(TurnState::ALL.map(TurnState::as_str)))
                .into()
        }
    }

    impl utoipa::ToSchema for TurnState {
        fn name() -> Cow<'static, str> {
            Cow::Borrowed("ApiTurnState")
        }
    }
}

/// The queue's view of a chain.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainRecord {
    pub id: ChainId,
    pub tenant: TenantId,
    pub status: ChainStatus,
    pub carry: Carry,
    pub on_failure: FailurePolicy,
    pub seed: u64,
    pub input: Option<InputImage>,
    pub webhook_url: Option<String>,
    pub created_at: Millis,
    pub finished_at: Option<Millis>,
    /// The turn whose job is live (running chain) or ended last.
    pub current: u32,
    /// Last turn that succeeded (0 = none).
    pub last_good: u32,
    /// The chain and turn this one was forked from.
    pub forked_from: Option<ChainRef>,
    pub turns: Vec<ChainTurn>,
}

impl ChainRecord {
    /// Where `turn` stands. A created job reports its status; an uncreated turn is `pending`
    /// while the chain runs and `skipped` once it ended.
    pub fn turn_state(&self, turn: &ChainTurn) -> TurnState {
        match &turn.job {
            Some(job) => TurnState::Job(job.status),
            None if self.status == ChainStatus::Running && turn.turn > self.current => {
                TurnState::Pending
            }
            // Never reached, or created once and gone now (past retention).
            None => TurnState::Skipped,
        }
    }
}

/// The checks both queues make before storing a chain: at least one turn, distinct job ids, turn
/// 1 edits the chain's input (or nothing), later turns are context-free templates.
#[cfg(any(feature = "memory", feature = "redis"))]
pub(crate) fn check_submission(chain: &ChainSubmission) -> Result<(), QueueError> {
    let first = chain
        .turns
        .first()
        .ok_or_else(|| QueueError::ChainConflict("a chain needs at least one turn".into()))?;
    if first.spec.input != chain.input {
        return Err(QueueError::ChainConflict(
            "turn 1 must edit the chain's input image (or be text-to-image without one)".into(),
        ));
    }
    let mut ids: Vec<JobId> = chain.turns.iter().map(|t| t.job_id).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() != chain.turns.len() {
        return Err(QueueError::ChainConflict(
            "every turn needs its own job id".into(),
        ));
    }
    for (i, t) in chain.turns.iter().enumerate().skip(1) {
        check_template(&t.spec, i + 1)?;
    }
    Ok(())
}

/// A turn after the first carries no context of its own: the queue splices it in.
#[cfg(any(feature = "memory", feature = "redis"))]
pub(crate) fn check_template(spec: &ValidJobSpec, turn: usize) -> Result<(), QueueError> {
    if spec.input.is_some() || spec.input_latent_key.is_some() {
        return Err(QueueError::ChainConflict(format!(
            "turn {turn}: a chain turn's context comes from the turn before it; its template \
             must not name one"
        )));
    }
    Ok(())
}

/// The refusals both queues give, worded once.
#[cfg(any(feature = "memory", feature = "redis"))]
pub(crate) mod refusal {
    use super::ChainId;
    use crate::error::QueueError;

    pub(crate) fn exists(id: ChainId) -> QueueError {
        QueueError::ChainConflict(format!("chain {id} already exists"))
    }

    pub(crate) fn canceled(id: ChainId) -> QueueError {
        QueueError::ChainConflict(format!(
            "chain {id} was canceled; it cannot be extended (fork it instead)"
        ))
    }

    pub(crate) fn no_frame(id: ChainId) -> QueueError {
        QueueError::ChainConflict(format!(
            "chain {id} has no succeeded turn and no input image to continue from"
        ))
    }

    pub(crate) fn too_long(from_turn: u32, appended: usize) -> QueueError {
        QueueError::ChainConflict(format!(
            "a chain has at most {} turns; forking at turn {from_turn} leaves room for {} more \
             (got {appended})",
            super::MAX_CHAIN_TURNS,
            super::MAX_CHAIN_TURNS.saturating_sub(from_turn as usize)
        ))
    }

    pub(crate) fn out_of_range(turns: &str, from_turn: u32) -> QueueError {
        QueueError::ChainConflict(format!(
            "from_turn must be between 1 and {turns} (got {from_turn})"
        ))
    }

    /// `state` is the turn job's status, or `None` when it was never created or has expired.
    pub(crate) fn not_succeeded(from_turn: u32, state: Option<&str>) -> QueueError {
        let state = state.unwrap_or("not created (or past retention)");
        QueueError::ChainConflict(format!(
            "turn {from_turn} is {state}; fork from a succeeded turn"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_seeds_are_stable_distinct_and_js_safe() {
        // Pinned values: a change here changes every re-run chain's frames.
        assert_eq!(turn_seed(0, 1), turn_seed(0, 1));
        let seeds: Vec<u64> = (1..=1_000).map(|t| turn_seed(42, t)).collect();
        let mut unique = seeds.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), seeds.len(), "turn seeds must differ per turn");
        assert!(seeds.iter().all(|s| *s < (1u64 << 53)));
        assert_ne!(turn_seed(42, 1), turn_seed(43, 1));
        assert_eq!(
            mix64(0),
            0xE220_A839_7B1D_CDAF,
            "SplitMix64 reference output for seed 0"
        );
    }

    #[test]
    fn turn_states_are_one_word_on_the_wire() {
        for s in TurnState::ALL {
            let json = serde_json::to_string(&s).expect("serialises");
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<TurnState>(&json).expect("parses"), s);
        }
        assert_eq!(
            serde_json::to_string(&TurnState::Job(JobStatus::Dead)).expect("serialises"),
            "\"dead\""
        );
        assert!(serde_json::from_str::<TurnState>("\"job\"").is_err());
    }

    #[test]
    fn enums_round_trip_through_their_names() {
        for s in ChainStatus::ALL {
            assert_eq!(s.as_str().parse::<ChainStatus>().expect("parse"), s);
        }
        assert_eq!(
            "continue".parse::<FailurePolicy>().expect("parse"),
            FailurePolicy::Continue
        );
        assert_eq!("latent".parse::<Carry>().expect("parse"), Carry::Latent);
        assert!("sideways".parse::<Carry>().is_err());
    }
}
