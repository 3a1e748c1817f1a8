//! Validation of what clients POST (`JobRequest`) into what the queue stores (`ValidJobSpec`),
//! in two steps around the one thing that needs I/O, the input image:
//!
//! 1. `check_job`: every field on its own (prompt, size or aspect ratio, steps, guidance,
//!    enumerations, webhook URL) → `ValidJobFields`. The coordinator runs it before it fetches or
//!    stores anything, so a bad request stores nothing.
//! 2. `ValidJobFields::resolve`: with the input image stored and measured by the coordinator,
//!    checks its bounds and derives what depends on it (the context size; the output size when
//!    the request gave none) → `ValidJobSpec`.
//!
//! Every problem of a step is reported, not only the first, as a `FieldError` whose message
//! names the field and the limit it broke, so a 422 tells the client exactly what to change.
//! Defaults follow the Kontext references (docs/engine.md §Defaults): 28 steps, guidance 2.5, 1024²
//! for generate, the context size for edit, and a server-picked seed when none is given. This
//! module never fetches anything.

use serde::{Deserialize, Serialize};

use crate::job::{
    Acceleration, InputImage, JobKind, OutputFormat, Priority, ReferencePositions, ValidJobSpec,
};
use crate::loras::{self, LoraRequest, LoraSpec};
use crate::references;
use crate::resolution::{self, ResizeMode};
pub use crate::validate_fields::WebhookUrl;
use crate::validate_fields::{self as fields, Report, TurnFieldNames};

/// Default number of denoising steps.
pub const DEFAULT_STEPS: u32 = 28;
/// Default distilled guidance.
pub const DEFAULT_GUIDANCE: f32 = 2.5;

/// `POST /v1/jobs` body. Field names follow BFL and diffusers.
// Enumerated fields stay strings so that a bad value becomes a field-level error (a 422 naming
// the field and the allowed values) rather than a JSON parse failure.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = SubmitJob,
    example = json!({"prompt": "make the jacket red", "input_image": "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAFklEQVR42mM4Yd5AEmIY1TCqYfhqAADlZn8QYh/mJgAAAABJRU5ErkJggg==",
        "steps": 28, "guidance": 2.5, "seed": 42, "output_format": "png"})))]
#[serde(default)]
pub struct JobRequest {
    /// What to generate, or the edit instruction: not blank, at most 2,000 characters.
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
    /// Context image of an edit: an upload id (`POST /v1/uploads`), an object key of this
    /// tenant (`in/<tenant>/...` or `out/<tenant>/...`), base64 (optionally a `data:` URL) or an
    /// http(s) URL. Absent: a text-to-image job. Its sides must be 16 to 8,192 pixels.
    #[cfg_attr(feature = "openapi", schema(format = "kontext-image", min_length = 1))]
    pub input_image: Option<String>,
    /// Several reference images for one edit (1 to 4; not with `input_image`), each given as
    /// `input_image` is. The first sizes the output like a single-image edit; all of them
    /// together are resized to fit 4,194,304 pixels.
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<Vec<ImageRef>>, min_items = 1, max_items = 4)
    )]
    pub input_images: Option<Vec<String>>,
    /// How several references are placed: `offset` (default; tiled on one canvas) or `index`
    /// (each its own index). docs/engine.md §Multi-reference edits.
    #[cfg_attr(feature = "openapi", schema(pattern = "^(offset|index)$"))]
    pub reference_positions: Option<String>,
    /// Output width: a multiple of 16 from 256 to 2,048, with width x height at most 2,097,152
    /// pixels; give height too. Default: the snapped input size, or 1024 for generate.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 256, maximum = 2048, multiple_of = 16)
    )]
    #[serde(deserialize_with = "crate::json_int::opt_u32")]
    pub width: Option<u32>,
    /// Output height: as width.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 256, maximum = 2048, multiple_of = 16)
    )]
    #[serde(deserialize_with = "crate::json_int::opt_u32")]
    pub height: Option<u32>,
    /// `"w:h"`, e.g. `"16:9"` (about one megapixel), between 9:21 and 21:9; not with
    /// width/height.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^ *[0-9]+(\\.[0-9]+)? *: *[0-9]+(\\.[0-9]+)? *$")
    )]
    pub aspect_ratio: Option<String>,
    /// How an edit's input is sized: `snap` (Kontext's preferred resolutions, default) or `keep`.
    /// Only with `input_image` or `input_images`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^(snap|keep)$"))]
    pub resize: Option<String>,
    /// Denoising steps, 1 to 100 (default 28).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    #[serde(deserialize_with = "crate::json_int::opt_u32")]
    pub steps: Option<u32>,
    /// Distilled guidance, 0 to 20 (default 2.5).
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 20.0))]
    pub guidance: Option<f32>,
    /// Absent: the server picks one and reports it.
    #[serde(deserialize_with = "crate::json_int::opt_u64")]
    #[cfg_attr(feature = "openapi", schema(maximum = 9007199254740991_u64))]
    pub seed: Option<u64>,
    /// `png` (default) or `jpeg` (`jpg` is taken as `jpeg`).
    #[cfg_attr(feature = "openapi", schema(pattern = "^(png|jpeg|jpg)$"))]
    pub output_format: Option<String>,
    /// Step caching: `none` (default, every step in full), `regular` (First-Block-Cache: skips
    /// steps whose first block barely changed) or `high` (every third step in full, the others
    /// extrapolated: 10 of 28 transformer evaluations). docs/engine.md §Step caching has the
    /// measured cost.
    #[cfg_attr(feature = "openapi", schema(pattern = "^(none|regular|high)$"))]
    pub acceleration: Option<String>,
    /// `high`, `standard` (default) or `bulk` (keys may be limited to some).
    #[cfg_attr(feature = "openapi", schema(pattern = "^(high|standard|bulk)$"))]
    pub priority: Option<String>,
    /// Called (Standard Webhooks signature) when the job finishes: an http(s) URL, at most 2,048
    /// characters.
    #[cfg_attr(
        feature = "openapi",
        schema(format = "uri", pattern = "^https?://[!-~]+$", max_length = 2048)
    )]
    pub webhook_url: Option<String>,
    /// LoRAs to apply, 1 to 4, each `{"path", "scale"}` (docs/loras.md).
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 4))]
    pub loras: Option<Vec<LoraRequest>>,
}

/// One image as the API takes it (the schema of `input_images` entries): an upload id, an object
/// key of the caller, base64 or a data: URL, or an http(s) URL.
#[cfg(feature = "openapi")]
pub struct ImageRef;

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for ImageRef {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::Custom("kontext-image".into())))
            .min_length(Some(1))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for ImageRef {}

/// Bounds a deployment enforces. The defaults suit the 12B model on one GPU; tests of the tiny
/// model lower the sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_prompt_chars: usize,
    pub min_side: u32,
    pub max_side: u32,
    /// Bound on width × height of the output.
    pub max_pixels: u64,
    pub max_steps: u32,
    pub min_guidance: f32,
    pub max_guidance: f32,
    /// Bound on width × height of the input image as uploaded.
    pub max_input_pixels: u64,
    /// Context area all the references of one edit share (multi-reference edits).
    pub max_reference_pixels: u64,
    pub max_input_side: u32,
    /// Context area of the `keep` resize mode (diffusers' `max_area`).
    pub context_max_pixels: u64,
    /// Output size of a generate job without width/height/aspect_ratio.
    pub default_generate_size: (u32, u32),
    /// Area an `aspect_ratio` is turned into (BFL: about one megapixel).
    pub aspect_ratio_area: u64,
    /// Widest allowed `aspect_ratio`, as long side : short side (BFL: 21:9); its inverse is the
    /// tallest.
    pub max_aspect_ratio: (u32, u32),
    pub max_webhook_url_chars: usize,
    /// Sizes the `snap` resize mode chooses from: the model's training resolutions.
    pub preferred_resolutions: Vec<(u32, u32)>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_prompt_chars: 2_000,
            min_side: 256,
            max_side: 2_048,
            max_pixels: crate::resolution::DEFAULT_MAX_PIXELS,
            max_steps: 100,
            min_guidance: 0.0,
            max_guidance: 20.0,
            max_input_pixels: 4_096 * 4_096,
            // Four ~1 MP references; the worker's engine accepts twice its --engine-max-pixels.
            max_reference_pixels: 2 * crate::resolution::DEFAULT_MAX_PIXELS,
            max_input_side: 8_192,
            context_max_pixels: 1_024 * 1_024,
            default_generate_size: (1_024, 1_024),
            aspect_ratio_area: 1_024 * 1_024,
            max_aspect_ratio: (21, 9),
            max_webhook_url_chars: 2_048,
            preferred_resolutions: crate::resolution::PREFERRED_KONTEXT_RESOLUTIONS.to_vec(),
        }
    }
}

impl Limits {
    /// The defaults, with the sizes of a model trained at another resolution: its preferred
    /// list for snapping, its native size as the default output and the aspect-ratio area, and
    /// sides down to its smallest preferred side (the 12B defaults keep 256).
    pub fn for_model(profile: &crate::model_profile::ModelProfile) -> Self {
        let mut limits = Self::default();
        limits.adopt_model(profile);
        limits
    }

    /// Sets the fields that follow the model's sizes (see `for_model`), keeping the rest.
    pub fn adopt_model(&mut self, profile: &crate::model_profile::ModelProfile) {
        let (w, h) = profile.native_resolution;
        let native_area = u64::from(w) * u64::from(h);
        let smallest_side = profile
            .preferred_resolutions
            .iter()
            .flat_map(|&(w, h)| [w, h])
            .chain([w, h])
            .min()
            .unwrap_or(self.min_side);
        self.min_side = self.min_side.min(smallest_side);
        self.default_generate_size = (w, h);
        self.aspect_ratio_area = native_area;
        self.context_max_pixels = self.context_max_pixels.min(native_area.max(1));
        self.preferred_resolutions = profile.preferred_resolutions.clone();
    }
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    /// Names the field and the limit, e.g. "steps must be between 1 and 100 (got 150)".
    pub message: String,
    /// The bound that was broken, machine-readable, e.g. "1..=100".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

/// Everything wrong with a request (never empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("invalid job request: {}", .errors.iter().map(|e| e.message.as_str()).collect::<Vec<_>>().join("; "))]
pub struct ValidationErrors {
    pub errors: Vec<FieldError>,
}

impl ValidationErrors {
    /// Is `field` among the fields with errors?
    pub fn has(&self, field: &str) -> bool {
        self.errors.iter().any(|e| e.field == field)
    }
}

/// A job request whose fields passed their checks (`check_job`); what is left is the input
/// image, which the coordinator stores and measures only for a request that got this far.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidJobFields {
    prompt: String,
    /// The references as requested, in order (`input_image`, or `input_images`).
    references: Vec<String>,
    reference_positions: ReferencePositions,
    resize: ResizeMode,
    /// `None`: an edit without a size, which gets its context's size.
    size: Option<(u32, u32)>,
    steps: u32,
    guidance: f32,
    seed: Option<u64>,
    output_format: OutputFormat,
    priority: Priority,
    webhook_url: Option<WebhookUrl>,
    /// Store the output latent beside the image (chain turns with `carry: latent`).
    pub(crate) keep_latent: bool,
    pub(crate) acceleration: Acceleration,
    /// `(path, scale)` as requested.
    loras: Vec<(String, f64)>,
    /// The stored files of `loras`, once the coordinator resolved them.
    resolved_loras: Vec<LoraSpec>,
}

/// Checks every field of `req` that does not depend on the input image.
pub fn check_job(req: &JobRequest, limits: &Limits) -> Result<ValidJobFields, ValidationErrors> {
    check_job_fields(req, TurnFieldNames::default(), limits)
}

/// `check_job`, naming the turn's own fields (prompt, steps, guidance) with `names`.
pub(crate) fn check_job_fields(
    req: &JobRequest,
    names: TurnFieldNames<'_>,
    limits: &Limits,
) -> Result<ValidJobFields, ValidationErrors> {
    let mut r = Report::default();
    let prompt = fields::prompt(&mut r, names, &req.prompt, limits);
    let resize = match req.resize.as_deref() {
        None | Some("snap") => ResizeMode::Snap,
        Some("keep") => ResizeMode::Keep,
        Some(other) => {
            r.push(
                "resize",
                format!("resize must be \"snap\" or \"keep\" (got {other:?})"),
                Some("snap|keep".into()),
            );
            ResizeMode::Snap
        }
    };
    let references =
        references::requested(&mut r, req.input_image.as_ref(), req.input_images.as_ref());
    let reference_positions = references::positions(&mut r, req.reference_positions.as_deref());
    if req.resize.is_some() && references.is_empty() {
        r.push(
            "resize",
            "resize applies only to edits (with input_image)".into(),
            None,
        );
    }
    let size = fields::requested_size(&mut r, req, limits);
    let steps = req.steps.unwrap_or(DEFAULT_STEPS);
    fields::steps(&mut r, names, steps, limits);
    let guidance = req.guidance.unwrap_or(DEFAULT_GUIDANCE);
    fields::guidance(&mut r, names, guidance, limits);
    fields::seed(&mut r, names, req.seed);

    let output_format = match req.output_format.as_deref() {
        None | Some("png") => OutputFormat::Png,
        Some("jpeg" | "jpg") => OutputFormat::Jpeg,
        Some(other) => {
            r.push(
                "output_format",
                format!("output_format must be \"png\" or \"jpeg\" (got {other:?})"),
                Some("png|jpeg".into()),
            );
            OutputFormat::Png
        }
    };
    let priority = match req.priority.as_deref() {
        None | Some("standard") => Priority::Standard,
        Some("high") => Priority::High,
        Some("bulk") => Priority::Bulk,
        Some(other) => {
            r.push(
                "priority",
                format!("priority must be \"high\", \"standard\" or \"bulk\" (got {other:?})"),
                Some("high|standard|bulk".into()),
            );
            Priority::Standard
        }
    };
    let webhook_url = req
        .webhook_url
        .as_deref()
        .and_then(|url| fields::webhook_url(&mut r, url, limits.max_webhook_url_chars));
    let acceleration = fields::acceleration(&mut r, req.acceleration.as_deref());
    let loras = loras::check(&mut r, req.loras.as_ref());
    r.finish(ValidJobFields {
        prompt,
        references,
        reference_positions,
        resize,
        size,
        steps,
        guidance,
        seed: req.seed,
        output_format,
        priority,
        webhook_url,
        keep_latent: false,
        acceleration,
        loras,
        resolved_loras: Vec::new(),
    })
}

impl ValidJobFields {
    /// The request's `input_image` (or first of `input_images`), for the coordinator to resolve
    /// into a stored image.
    pub fn input_image(&self) -> Option<&str> {
        self.references.first().map(String::as_str)
    }

    /// The references after the first (`input_images[1..]`), to resolve in order.
    pub fn more_input_images(&self) -> &[String] {
        self.references.get(1..).unwrap_or_default()
    }

    pub fn webhook_url(&self) -> Option<&WebhookUrl> {
        self.webhook_url.as_ref()
    }

    /// `(path, scale)` of the requested LoRAs, for the coordinator to resolve in order.
    pub fn requested_loras(&self) -> &[(String, f64)] {
        &self.loras
    }

    /// The stored LoRA files, one per requested LoRA in order (checked by `resolve`).
    pub fn set_resolved_loras(&mut self, loras: Vec<LoraSpec>) {
        self.resolved_loras = loras;
    }

    /// The priority class asked for (standard when the request names none).
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// The spec, given the stored input image (`Some` exactly when the request has an
    /// `input_image`): checks the image's bounds and derives the context size, and the output
    /// size when the request gave none. `pick_seed` is called only when no seed was given.
    pub fn resolve(
        self,
        input: Option<InputImage>,
        limits: &Limits,
        pick_seed: impl FnOnce() -> u64,
    ) -> Result<ValidJobSpec, ValidationErrors> {
        self.resolve_references(input, Vec::new(), limits, pick_seed)
    }

    /// [`Self::resolve`] for a multi-reference edit: `more` are the stored references after
    /// the first, in the order of `more_input_images`.
    pub fn resolve_references(
        self,
        input: Option<InputImage>,
        more: Vec<InputImage>,
        limits: &Limits,
        pick_seed: impl FnOnce() -> u64,
    ) -> Result<ValidJobSpec, ValidationErrors> {
        let mut r = Report::default();
        if self.resolved_loras.len() != self.loras.len() {
            r.push(
                "loras",
                format!(
                    "{} LoRAs were requested, {} resolved",
                    self.loras.len(),
                    self.resolved_loras.len()
                ),
                None,
            );
        }
        if more.len() != self.more_input_images().len() {
            r.push(
                "input_images",
                format!(
                    "{} more references were requested, {} resolved",
                    self.more_input_images().len(),
                    more.len()
                ),
                None,
            );
        }
        for img in &more {
            fields::input_image(&mut r, img, limits);
        }
        match (self.input_image(), &input) {
            (Some(_), None) => r.push(
                "input_image",
                "input_image was given but not resolved to a stored image".into(),
                None,
            ),
            (None, Some(_)) => r.push(
                "input_image",
                "a resolved input image needs an input_image in the request".into(),
                None,
            ),
            _ => {}
        }
        if let Some(img) = &input {
            fields::input_image(&mut r, img, limits);
        }
        let context = input.as_ref().map(|img| {
            resolution::context_size(
                img.width,
                img.height,
                self.resize,
                limits.context_max_pixels,
                &limits.preferred_resolutions,
            )
        });
        let (width, height) = match (self.size, context) {
            (Some(size), _) => size,
            (None, Some(size)) => {
                fields::output_size(&mut r, size, Some("input_image"), limits);
                size
            }
            // Only with the "not resolved" error above.
            (None, None) => limits.default_generate_size,
        };
        let more_references = match context {
            Some(first) => references::sized(&mut r, first, more, self.resize, limits),
            None => Vec::new(),
        };
        let kind = if input.is_some() {
            JobKind::Edit
        } else {
            JobKind::Generate
        };
        r.finish(())?;
        Ok(ValidJobSpec {
            kind,
            prompt: self.prompt,
            input,
            input_latent_key: None,
            resize: self.resize,
            context_width: context.map(|c| c.0),
            context_height: context.map(|c| c.1),
            width,
            height,
            steps: self.steps,
            guidance: self.guidance,
            seed: self.seed.unwrap_or_else(pick_seed),
            output_format: self.output_format,
            priority: self.priority,
            webhook_url: self.webhook_url.map(|url| url.as_str().to_owned()),
            initial_latents_key: None,
            keep_latent: self.keep_latent,
            acceleration: self.acceleration,
            more_references,
            reference_positions: self.reference_positions,
            loras: self.resolved_loras,
            traceparent: None,
        })
    }
}

/// Both steps at once: `check_job`, then `resolve` with `input` (the stored context image when
/// the request has an `input_image`). With bad fields the input image is not looked at, as in
/// the coordinator, which fetches nothing for such a request.
pub fn validate(
    req: &JobRequest,
    input: Option<InputImage>,
    limits: &Limits,
    pick_seed: impl FnOnce() -> u64,
) -> Result<ValidJobSpec, ValidationErrors> {
    check_job(req, limits)?.resolve(input, limits, pick_seed)
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
