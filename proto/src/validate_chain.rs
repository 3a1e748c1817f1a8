//! Validation of chain requests (`ChainRequest`, `TurnRequest`) into planned turn specs, in the
//! same two steps as jobs: `check_chain` checks every field (before the coordinator touches the
//! input image), `ValidChainFields::resolve` completes the chain once the input is stored.
//!
//! Turn 1 is checked as a job (the chain's size, resize, priority and webhook with the turn's
//! prompt, steps and guidance), so turns obey exactly the limits of single jobs. Later turns are
//! `TurnTemplate`s: prompt, steps, guidance and seed. Errors about a turn's own fields name their
//! place in the request (`turns[2].steps`). The frame size is fixed by turn 1 (the edited
//! input's size, or the text-to-image size); every later turn is an edit of a frame of that
//! size (`TurnTemplate::spec`).

use serde::{Deserialize, Serialize};

use crate::chain::{FailurePolicy, turn_seed};
use crate::job::{Acceleration, Carry, InputImage, JobKind, OutputFormat, Priority, ValidJobSpec};
use crate::resolution::ResizeMode;
use crate::validate::{
    DEFAULT_GUIDANCE, DEFAULT_STEPS, JobRequest, Limits, ValidJobFields, ValidationErrors,
    WebhookUrl, check_job_fields,
};
use crate::validate_fields::{self as fields, Report, TurnFieldNames};

/// Most turns one chain request may plan (appending adds more, one at a time).
pub const MAX_TURNS: usize = 100;

/// One turn of `POST /v1/chains` (and the body of `POST /v1/chains/{id}/turns`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = ChainTurnBody,
    example = json!({"prompt": "now it is raining", "seed": 7})))]
#[serde(default)]
pub struct TurnRequest {
    /// The edit instruction of this turn: not blank, at most 2,000 characters.
    #[cfg_attr(
        feature = "openapi",
        schema(
            required = true,
            min_length = 1,
            max_length = 2000,
            pattern = "[^\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
        )
    )]
    pub prompt: String,
    /// Absent: derived from the chain seed and the turn number (re-running a chain with the same
    /// chain seed reproduces every turn).
    #[serde(deserialize_with = "crate::json_int::opt_u64")]
    #[cfg_attr(feature = "openapi", schema(maximum = 9007199254740991_u64))]
    pub seed: Option<u64>,
    /// 0 to 20. Default: the chain's `guidance` (appended turns: the last turn's).
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 20.0))]
    pub guidance: Option<f32>,
    /// 1 to 100. Default: the chain's `steps` (appended turns: the last turn's).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    #[serde(deserialize_with = "crate::json_int::opt_u32")]
    pub steps: Option<u32>,
}

/// `POST /v1/chains` body: a storyboard of edit turns, each editing the previous turn's output.
// Enumerated fields stay strings, as in `JobRequest`, so a bad value is a field-level error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = CreateChain,
    example = json!({"input_image": "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAFklEQVR42mM4Yd5AEmIY1TCqYfhqAADlZn8QYh/mJgAAAABJRU5ErkJggg==", "carry": "latent",
        "on_failure": "stop", "seed": 42, "steps": 28,
        "turns": [{"prompt": "give the cat a red scarf"}, {"prompt": "now it is snowing"}]})))]
#[serde(default)]
pub struct ChainRequest {
    /// The image turn 1 edits (same forms as a job's `input_image`). Absent: turn 1 is
    /// text-to-image.
    #[cfg_attr(feature = "openapi", schema(format = "kontext-image", min_length = 1))]
    pub input_image: Option<String>,
    /// Without `input_image`: the prompt of a text-to-image turn 1, before `turns` (not with
    /// `input_image`). Without both, `turns[0]` is the text-to-image turn.
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 2000,
            pattern = "[^\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
        )
    )]
    pub prompt: Option<String>,
    /// 1 to 100 turns (99 with `prompt`).
    #[cfg_attr(
        feature = "openapi",
        schema(required = true, min_items = 1, max_items = 100)
    )]
    pub turns: Vec<TurnRequest>,
    /// `image` (default): the next turn encodes this turn's PNG. `latent`: it uses this turn's
    /// packed output latent (stored beside the PNG), skipping VAE decode → encode.
    #[cfg_attr(feature = "openapi", schema(pattern = "^(image|latent)$"))]
    pub carry: Option<String>,
    /// `stop` (default): a failed turn ends the chain `failed`. `continue`: the next turn edits
    /// the last good frame.
    #[cfg_attr(feature = "openapi", schema(pattern = "^(stop|continue)$"))]
    pub on_failure: Option<String>,
    /// Chain seed that turn seeds are derived from; absent: the server picks one.
    #[serde(deserialize_with = "crate::json_int::opt_u64")]
    #[cfg_attr(feature = "openapi", schema(maximum = 9007199254740991_u64))]
    pub seed: Option<u64>,
    /// Size of a text-to-image turn 1 (every frame has turn 1's size): as a job's width.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 256, maximum = 2048, multiple_of = 16)
    )]
    #[serde(deserialize_with = "crate::json_int::opt_u32")]
    pub width: Option<u32>,
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 256, maximum = 2048, multiple_of = 16)
    )]
    #[serde(deserialize_with = "crate::json_int::opt_u32")]
    pub height: Option<u32>,
    /// As a job's `aspect_ratio`.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^ *[0-9]+(\\.[0-9]+)? *: *[0-9]+(\\.[0-9]+)? *$")
    )]
    pub aspect_ratio: Option<String>,
    /// How the input image is sized for turn 1: `snap` (default) or `keep`; only with
    /// `input_image`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^(snap|keep)$"))]
    pub resize: Option<String>,
    /// Defaults for every turn: steps 1 to 100, guidance 0 to 20.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    #[serde(deserialize_with = "crate::json_int::opt_u32")]
    pub steps: Option<u32>,
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 20.0))]
    pub guidance: Option<f32>,
    /// Step caching of every turn, as a job's `acceleration`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^(none|regular|high)$"))]
    pub acceleration: Option<String>,
    /// `high`, `standard` (default) or `bulk`, for every turn.
    #[cfg_attr(feature = "openapi", schema(pattern = "^(high|standard|bulk)$"))]
    pub priority: Option<String>,
    /// LoRAs applied to every turn (a character or style kept through the storyboard), as a
    /// job's `loras`.
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 4))]
    pub loras: Option<Vec<crate::loras::LoraRequest>>,
    /// Called (Standard Webhooks signature) when each turn finishes.
    // The payload names the job; its chain is in `GET /v1/jobs/{id}`'s record.
    #[cfg_attr(
        feature = "openapi",
        schema(format = "uri", pattern = "^https?://[!-~]+$", max_length = 2048)
    )]
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

/// A turn after the first, checked: what it asks for. Its context (the frame of the turn before
/// it) is the queue's to fill in when it creates the turn's job.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnTemplate {
    pub prompt: String,
    pub steps: u32,
    pub guidance: f32,
    /// `None`: derived from the chain seed and the turn's number (`chain::turn_seed`).
    pub seed: Option<u64>,
}

/// What the turns after the first share with the chain: the frame (turn 1's output size),
/// priority, webhook and whether output latents are kept.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnSettings {
    pub frame: (u32, u32),
    pub priority: Priority,
    pub webhook_url: Option<String>,
    pub keep_latent: bool,
    pub acceleration: Acceleration,
    pub loras: Vec<crate::loras::LoraSpec>,
}

impl TurnSettings {
    /// The settings of a chain whose turns are like `spec` (any of its turns: they share them).
    pub fn of(spec: &ValidJobSpec, carry: Carry) -> Self {
        Self {
            frame: (spec.width, spec.height),
            priority: spec.priority,
            webhook_url: spec.webhook_url.clone(),
            keep_latent: carry == Carry::Latent,
            acceleration: spec.acceleration,
            loras: spec.loras.clone(),
        }
    }
}

impl TurnTemplate {
    /// The spec the queue stores for this turn: an edit of a frame-sized context at the frame's
    /// size, context-free (`input` is `None`). The frame already is a valid Kontext size, so the
    /// context is not snapped (which could change it), and with `carry: latent` the carried
    /// latent fits exactly.
    pub fn spec(&self, settings: &TurnSettings, seed: u64) -> ValidJobSpec {
        let (width, height) = settings.frame;
        ValidJobSpec {
            kind: JobKind::Edit,
            prompt: self.prompt.clone(),
            input: None,
            input_latent_key: None,
            resize: ResizeMode::Keep,
            context_width: Some(width),
            context_height: Some(height),
            width,
            height,
            steps: self.steps,
            guidance: self.guidance,
            seed,
            output_format: OutputFormat::Png,
            priority: settings.priority,
            webhook_url: settings.webhook_url.clone(),
            initial_latents_key: None,
            keep_latent: settings.keep_latent,
            acceleration: settings.acceleration,
            more_references: Vec::new(),
            reference_positions: Default::default(),
            loras: settings.loras.clone(),
            traceparent: None,
        }
    }
}

/// Checks a turn after the first. `default_steps` and `default_guidance` apply where the turn
/// sets none (the chain's, or for an appended turn the last turn's). Errors name the fields
/// `<field_prefix>.<field>` (just `<field>` when the prefix is empty).
pub fn check_turn(
    turn: &TurnRequest,
    field_prefix: &str,
    (default_steps, default_guidance): (u32, f32),
    limits: &Limits,
) -> Result<TurnTemplate, ValidationErrors> {
    let names = TurnFieldNames::under(field_prefix);
    let mut r = Report::default();
    let prompt = fields::prompt(&mut r, names, &turn.prompt, limits);
    let steps = turn.steps.unwrap_or(default_steps);
    fields::steps(&mut r, names, steps, limits);
    let guidance = turn.guidance.unwrap_or(default_guidance);
    fields::guidance(&mut r, names, guidance, limits);
    fields::seed(&mut r, names, turn.seed);
    r.finish(TurnTemplate {
        prompt,
        steps,
        guidance,
        seed: turn.seed,
    })
}

/// A chain request whose fields passed their checks (`check_chain`); what is left is the input
/// image of turn 1, which fixes the frame size of every turn.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidChainFields {
    carry: Carry,
    on_failure: FailurePolicy,
    seed: Option<u64>,
    /// Turn 1's seed when it has its own.
    first_seed: Option<u64>,
    first: ValidJobFields,
    rest: Vec<TurnTemplate>,
}

/// Checks every field of a chain request that does not depend on the input image: the chain's
/// settings, turn 1 (the chain's size, resize, priority and webhook, with its own prompt, steps
/// and guidance) and every later turn.
pub fn check_chain(
    req: &ChainRequest,
    limits: &Limits,
) -> Result<ValidChainFields, ValidationErrors> {
    let mut r = Report::default();
    let carry = match req.carry.as_deref() {
        None => Carry::Image,
        Some(s) => s.parse().unwrap_or_else(|_| {
            r.push(
                "carry",
                format!("carry must be \"image\" or \"latent\" (got {s:?})"),
                Some("image|latent".into()),
            );
            Carry::Image
        }),
    };
    let on_failure = match req.on_failure.as_deref() {
        None => FailurePolicy::Stop,
        Some(s) => s.parse().unwrap_or_else(|_| {
            r.push(
                "on_failure",
                format!("on_failure must be \"stop\" or \"continue\" (got {s:?})"),
                Some("stop|continue".into()),
            );
            FailurePolicy::Stop
        }),
    };
    if req.input_image.is_some() && req.prompt.is_some() {
        r.push(
            "prompt",
            "prompt is the text-to-image first turn of a chain without input_image; with an \
             input_image, put every instruction in turns"
                .into(),
            None,
        );
    }
    fields::seed(&mut r, TurnFieldNames::default(), req.seed);
    let planned = req.turns.len() + usize::from(req.prompt.is_some());
    if req.turns.is_empty() || planned > MAX_TURNS {
        r.push(
            "turns",
            format!(
                "turns must have 1 to {MAX_TURNS} entries (got {})",
                req.turns.len()
            ),
            Some(format!("1..={MAX_TURNS}")),
        );
    }
    // The turns are checked only in a chain whose shape is right.
    r.finish(())?;

    // Turn 1 comes from the chain's `prompt`, else from `turns[0]` (its fields named so).
    let (first, first_names, rest) = match &req.prompt {
        Some(p) => {
            let t = TurnRequest {
                prompt: p.clone(),
                ..TurnRequest::default()
            };
            (t, TurnFieldNames::default(), &req.turns[..])
        }
        None => (
            req.turns[0].clone(),
            TurnFieldNames::under("turns[0]"),
            &req.turns[1..],
        ),
    };
    let first_req = JobRequest {
        prompt: first.prompt.clone(),
        input_image: req.input_image.clone(),
        input_images: None,
        reference_positions: None,
        width: req.width,
        height: req.height,
        aspect_ratio: req.aspect_ratio.clone(),
        resize: req.resize.clone(),
        steps: first.steps.or(req.steps),
        guidance: first.guidance.or(req.guidance),
        seed: None,
        output_format: None,
        priority: req.priority.clone(),
        webhook_url: req.webhook_url.clone(),
        acceleration: req.acceleration.clone(),
        loras: req.loras.clone(),
    };
    let mut errors = Vec::new();
    let mut first_seed = Report::default();
    fields::seed(&mut first_seed, first_names, first.seed);
    if let Err(e) = first_seed.finish(()) {
        errors.extend(e.errors);
    }
    let first_fields = check_job_fields(&first_req, first_names, limits)
        .map_err(|e| errors.extend(e.errors))
        .ok();
    let defaults = (
        req.steps.unwrap_or(DEFAULT_STEPS),
        req.guidance.unwrap_or(DEFAULT_GUIDANCE),
    );
    let offset = usize::from(req.prompt.is_none());
    let mut templates = Vec::with_capacity(rest.len());
    for (i, t) in rest.iter().enumerate() {
        match check_turn(t, &format!("turns[{}]", i + offset), defaults, limits) {
            Ok(template) => templates.push(template),
            Err(e) => errors.extend(e.errors),
        }
    }
    match first_fields {
        Some(mut first_fields) if errors.is_empty() => {
            first_fields.keep_latent = carry == Carry::Latent;
            Ok(ValidChainFields {
                carry,
                on_failure,
                seed: req.seed,
                first_seed: first.seed,
                first: first_fields,
                rest: templates,
            })
        }
        _ => Err(ValidationErrors { errors }),
    }
}

impl ValidChainFields {
    /// The request's `input_image` (turn 1's context), for the coordinator to resolve.
    pub fn input_image(&self) -> Option<&str> {
        self.first.input_image()
    }

    pub fn webhook_url(&self) -> Option<&WebhookUrl> {
        self.first.webhook_url()
    }

    /// `(path, scale)` of the chain's LoRAs (every turn's), for the coordinator to resolve.
    pub fn requested_loras(&self) -> &[(String, f64)] {
        self.first.requested_loras()
    }

    /// The stored LoRA files, in the order of `requested_loras`.
    pub fn set_resolved_loras(&mut self, loras: Vec<crate::loras::LoraSpec>) {
        self.first.set_resolved_loras(loras);
    }

    /// The priority class of every turn.
    pub fn priority(&self) -> Priority {
        self.first.priority()
    }

    /// The chain, given its stored input image: turn 1 complete, later turns context-free
    /// edits of turn 1's frame. `pick_seed` is called only when no chain seed was given.
    pub fn resolve(
        self,
        input: Option<InputImage>,
        limits: &Limits,
        pick_seed: impl FnOnce() -> u64,
    ) -> Result<ValidChain, ValidationErrors> {
        let seed = self.seed.unwrap_or_else(pick_seed);
        let first_seed = self.first_seed.unwrap_or_else(|| turn_seed(seed, 1));
        let webhook_url = self.webhook_url().map(|url| url.as_str().to_owned());
        let first = self.first.resolve(input.clone(), limits, || first_seed)?;
        let settings = TurnSettings::of(&first, self.carry);
        let mut turns = Vec::with_capacity(1 + self.rest.len());
        turns.push(first);
        for (number, t) in (2..).zip(&self.rest) {
            let seed = t.seed.unwrap_or_else(|| turn_seed(seed, number));
            turns.push(t.spec(&settings, seed));
        }
        Ok(ValidChain {
            carry: self.carry,
            on_failure: self.on_failure,
            seed,
            input,
            webhook_url,
            turns,
        })
    }
}

/// Both steps at once: `check_chain`, then `resolve` with `input` (the stored image when the
/// request has an `input_image`). `pick_seed` is called only when no chain seed was given.
pub fn validate_chain(
    req: &ChainRequest,
    input: Option<InputImage>,
    limits: &Limits,
    pick_seed: impl FnOnce() -> u64,
) -> Result<ValidChain, ValidationErrors> {
    check_chain(req, limits)?.resolve(input, limits, pick_seed)
}

#[cfg(test)]
#[path = "validate_chain_tests.rs"]
mod tests;
