//! Validation of chain requests (`ChainRequest`, `TurnRequest`) into planned turn specs.
//!
//! Every turn goes through `validate::validate`, so turns obey exactly the limits of single jobs;
//! errors about a turn's own fields are renamed to their place in the request
//! (`turns[2].steps`). The frame size is fixed by turn 1 (the edited input's size, or the
//! text-to-image size); later turns edit a frame of that size, so their context is that size
//! as is (already a valid Kontext size — no snapping, which would change it), and with
//! `carry: latent` the carried latent fits the next turn exactly.

use serde::{Deserialize, Serialize};

use crate::chain::{FailurePolicy, turn_seed};
use crate::job::{Carry, InputImage, JobKind, OutputFormat, Priority, ValidJobSpec};
use crate::resolution::ResizeMode;
use crate::validate::{
    DEFAULT_GUIDANCE, DEFAULT_STEPS, FieldError, JobRequest, Limits, ValidationErrors, validate,
};

/// Most turns one chain request may plan (appending adds more, one at a time).
pub const MAX_TURNS: usize = 100;

/// One turn as a client writes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TurnRequest {
    pub prompt: String,
    /// Absent: derived from the chain seed and the turn number (`chain::turn_seed`).
    pub seed: Option<u64>,
    pub guidance: Option<f32>,
    pub steps: Option<u32>,
}

/// A chain as a client submits it (`POST /v1/chains`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChainRequest {
    /// The image turn 1 edits (resolved by the coordinator like a job's `input_image`).
    pub input_image: Option<String>,
    /// Without `input_image`: the prompt of a text-to-image turn 1, before `turns`. Without
    /// both, `turns[0]` is the text-to-image turn.
    pub prompt: Option<String>,
    pub turns: Vec<TurnRequest>,
    /// `"image"` (default) or `"latent"`.
    pub carry: Option<String>,
    /// `"stop"` (default) or `"continue"`.
    pub on_failure: Option<String>,
    /// Chain seed; absent: the server picks one.
    pub seed: Option<u64>,
    /// Size of a text-to-image turn 1 (or of turn 1's output, like a job's width/height).
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub aspect_ratio: Option<String>,
    /// How the input image is sized for turn 1: `"snap"` (default) or `"keep"`.
    pub resize: Option<String>,
    /// Defaults of every turn.
    pub steps: Option<u32>,
    pub guidance: Option<f32>,
    pub priority: Option<String>,
    /// Called when each turn finishes (the payload names the job; its chain is in
    /// `GET /v1/jobs/{id}`'s record).
    pub webhook_url: Option<String>,
}

/// A validated chain: everything `ChainSubmission` needs except ids and tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidChain {
    pub carry: Carry,
    pub on_failure: FailurePolicy,
    pub seed: u64,
    pub input: Option<InputImage>,
    pub webhook_url: Option<String>,
    /// Turn 1 complete; later turns context-free templates (`input` = `None`).
    pub turns: Vec<ValidJobSpec>,
}

/// Stands in for a turn 1 that did not validate, so later turns can still be checked.
fn placeholder_spec(frame: (u32, u32)) -> ValidJobSpec {
    ValidJobSpec {
        kind: JobKind::Generate,
        prompt: String::new(),
        input: None,
        input_latent_key: None,
        resize: ResizeMode::Keep,
        context_width: None,
        context_height: None,
        width: frame.0,
        height: frame.1,
        steps: DEFAULT_STEPS,
        guidance: DEFAULT_GUIDANCE,
        seed: 0,
        output_format: OutputFormat::Png,
        priority: Priority::Standard,
        webhook_url: None,
        initial_latents_key: None,
        keep_latent: false,
    }
}

/// The fields of a turn request; errors about them are renamed to `<prefix>.<field>`.
const TURN_FIELDS: [&str; 4] = ["prompt", "seed", "guidance", "steps"];

fn rename_turn_fields(mut errors: ValidationErrors, prefix: &str) -> ValidationErrors {
    if prefix.is_empty() {
        return errors;
    }
    for e in &mut errors.errors {
        if TURN_FIELDS.contains(&e.field.as_str()) {
            let old = std::mem::take(&mut e.field);
            e.message = format!("{prefix}.{}", e.message);
            e.field = format!("{prefix}.{old}");
        }
    }
    errors
}

fn field_error(field: &str, message: String, limit: Option<String>) -> FieldError {
    FieldError {
        field: field.to_owned(),
        message,
        limit,
    }
}

/// The spec of a turn after the first: an edit of a `frame`-sized image, context-free.
/// `defaults` gives steps and guidance the turn does not set; `seed` is the turn's final seed.
/// Errors about the turn's own fields are named `<field_prefix>.<field>` (just `<field>` when
/// the prefix is empty).
pub fn turn_template(
    turn: &TurnRequest,
    field_prefix: &str,
    frame: (u32, u32),
    defaults: &ValidJobSpec,
    carry: Carry,
    seed: u64,
    limits: &Limits,
) -> Result<ValidJobSpec, ValidationErrors> {
    let req = JobRequest {
        prompt: turn.prompt.clone(),
        width: Some(frame.0),
        height: Some(frame.1),
        steps: Some(turn.steps.unwrap_or(defaults.steps)),
        guidance: Some(turn.guidance.unwrap_or(defaults.guidance)),
        seed: Some(seed),
        ..JobRequest::default()
    };
    let mut spec =
        validate(&req, None, limits, || seed).map_err(|e| rename_turn_fields(e, field_prefix))?;
    spec.kind = JobKind::Edit;
    spec.resize = ResizeMode::Keep;
    spec.context_width = Some(frame.0);
    spec.context_height = Some(frame.1);
    spec.priority = defaults.priority;
    spec.webhook_url = defaults.webhook_url.clone();
    spec.keep_latent = carry == Carry::Latent;
    Ok(spec)
}

/// Validate a chain request. `input` is the stored image when the request has an
/// `input_image`; `pick_seed` is called only when no chain seed was given.
pub fn validate_chain(
    req: &ChainRequest,
    input: Option<InputImage>,
    limits: &Limits,
    pick_seed: impl FnOnce() -> u64,
) -> Result<ValidChain, ValidationErrors> {
    let mut errors = Vec::new();
    let carry = match req.carry.as_deref() {
        None => Carry::Image,
        Some(s) => s.parse().unwrap_or_else(|_| {
            errors.push(field_error(
                "carry",
                format!("carry must be \"image\" or \"latent\" (got {s:?})"),
                Some("image|latent".into()),
            ));
            Carry::Image
        }),
    };
    let on_failure = match req.on_failure.as_deref() {
        None => FailurePolicy::Stop,
        Some(s) => s.parse().unwrap_or_else(|_| {
            errors.push(field_error(
                "on_failure",
                format!("on_failure must be \"stop\" or \"continue\" (got {s:?})"),
                Some("stop|continue".into()),
            ));
            FailurePolicy::Stop
        }),
    };
    if req.input_image.is_some() && req.prompt.is_some() {
        errors.push(field_error(
            "prompt",
            "prompt is the text-to-image first turn of a chain without input_image; with an \
             input_image, put every instruction in turns"
                .into(),
            None,
        ));
    }
    let planned = req.turns.len() + usize::from(req.prompt.is_some());
    if req.turns.is_empty() || planned > MAX_TURNS {
        errors.push(field_error(
            "turns",
            format!(
                "turns must have 1 to {MAX_TURNS} entries (got {})",
                req.turns.len()
            ),
            Some(format!("1..={MAX_TURNS}")),
        ));
    }
    if !errors.is_empty() {
        return Err(ValidationErrors { errors });
    }

    let seed = req.seed.unwrap_or_else(pick_seed);
    // Turn 1's request, and the prefix its own fields' errors get.
    let (first, first_prefix, rest) = match &req.prompt {
        Some(p) => {
            let t = TurnRequest {
                prompt: p.clone(),
                ..TurnRequest::default()
            };
            (t, None, &req.turns[..])
        }
        None => (req.turns[0].clone(), Some("turns[0]"), &req.turns[1..]),
    };
    let first_req = JobRequest {
        prompt: first.prompt.clone(),
        input_image: req.input_image.clone(),
        width: req.width,
        height: req.height,
        aspect_ratio: req.aspect_ratio.clone(),
        resize: req.resize.clone(),
        steps: first.steps.or(req.steps),
        guidance: first.guidance.or(req.guidance),
        seed: Some(first.seed.unwrap_or_else(|| turn_seed(seed, 1))),
        output_format: None,
        priority: req.priority.clone(),
        webhook_url: req.webhook_url.clone(),
    };
    let mut all_errors = Vec::new();
    let first_spec =
        validate(&first_req, input.clone(), limits, || 0).map_err(|e| match first_prefix {
            Some(prefix) => rename_turn_fields(e, prefix),
            None => e,
        });
    // A broken turn 1 still lets the other turns be checked, against a stand-in frame.
    let (frame, priority, webhook_url) = match &first_spec {
        Ok(s) => ((s.width, s.height), s.priority, s.webhook_url.clone()),
        Err(e) => {
            all_errors.extend(e.errors.iter().cloned());
            (limits.default_generate_size, Priority::Standard, None)
        }
    };
    let defaults = ValidJobSpec {
        steps: req.steps.unwrap_or(DEFAULT_STEPS),
        guidance: req.guidance.unwrap_or(DEFAULT_GUIDANCE),
        priority,
        webhook_url,
        ..first_spec
            .clone()
            .unwrap_or_else(|_| placeholder_spec(frame))
    };
    let offset = usize::from(req.prompt.is_none());
    let mut turns = Vec::with_capacity(planned);
    if let Ok(mut s) = first_spec {
        s.keep_latent = carry == Carry::Latent;
        turns.push(s);
    }
    for (i, t) in rest.iter().enumerate() {
        let number = (i + 2) as u32;
        let prefix = format!("turns[{}]", i + offset);
        let seed = t.seed.unwrap_or_else(|| turn_seed(seed, number));
        match turn_template(t, &prefix, frame, &defaults, carry, seed, limits) {
            Ok(spec) => turns.push(spec),
            Err(e) => all_errors.extend(e.errors),
        }
    }
    if !all_errors.is_empty() {
        return Err(ValidationErrors { errors: all_errors });
    }
    Ok(ValidChain {
        carry,
        on_failure,
        seed,
        input,
        webhook_url: req.webhook_url.clone(),
        turns,
    })
}

#[cfg(test)]
#[path = "validate_chain_tests.rs"]
mod tests;
