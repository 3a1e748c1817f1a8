//! Validation of what clients POST (`JobRequest`) into what the queue stores (`ValidJobSpec`).
//!
//! Every problem is reported, not only the first, as a `FieldError` whose message names the field
//! and the limit it broke, so a 422 tells the client exactly what to change. Defaults follow the
//! Kontext reference (design.md §4): 28 steps, guidance 2.5, 1024² for generate, the context size
//! for edit, and a server-picked seed when none is given. The input image arrives already resolved
//! (stored and measured) by the coordinator; this module never fetches anything.

use serde::{Deserialize, Serialize};

use crate::job::{InputImage, JobKind, OutputFormat, Priority, ValidJobSpec};
use crate::resolution::{self, ResizeMode, SIDE_MULTIPLE};

/// Default number of denoising steps.
pub const DEFAULT_STEPS: u32 = 28;
/// Default distilled guidance.
pub const DEFAULT_GUIDANCE: f32 = 2.5;

/// A job as a client submits it (BFL field names). Enumerated fields stay strings here so that a
/// bad value becomes a field-level error rather than a JSON parse failure.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobRequest {
    pub prompt: String,
    /// Upload reference, object key or URL; opaque here (the coordinator resolves it).
    pub input_image: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// `"w:h"`, e.g. `"16:9"`; exclusive with width/height.
    pub aspect_ratio: Option<String>,
    /// `"snap"` (default) or `"keep"`; edits only.
    pub resize: Option<String>,
    pub steps: Option<u32>,
    pub guidance: Option<f32>,
    pub seed: Option<u64>,
    /// `"png"` (default) or `"jpeg"`.
    pub output_format: Option<String>,
    /// `"high"`, `"standard"` (default) or `"bulk"`.
    pub priority: Option<String>,
    pub webhook_url: Option<String>,
}

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
            max_input_side: 8_192,
            context_max_pixels: 1_024 * 1_024,
            default_generate_size: (1_024, 1_024),
            aspect_ratio_area: 1_024 * 1_024,
            max_aspect_ratio: (21, 9),
            max_webhook_url_chars: 2_048,
        }
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

#[derive(Default)]
struct Report(Vec<FieldError>);

impl Report {
    fn push(&mut self, field: &str, message: String, limit: Option<String>) {
        self.0.push(FieldError {
            field: field.to_owned(),
            message,
            limit,
        });
    }
}

/// Validate `req` into a spec. `input` is the stored context image when the request has an
/// `input_image` (resolved by the coordinator); `pick_seed` is called only when no seed was given.
pub fn validate(
    req: &JobRequest,
    input: Option<InputImage>,
    limits: &Limits,
    pick_seed: impl FnOnce() -> u64,
) -> Result<ValidJobSpec, ValidationErrors> {
    let mut r = Report::default();

    let prompt = req.prompt.trim();
    let prompt_chars = prompt.chars().count();
    if prompt.is_empty() {
        r.push(
            "prompt",
            "prompt is required and must not be blank".into(),
            Some("1..".into()),
        );
    } else if prompt_chars > limits.max_prompt_chars {
        let max = limits.max_prompt_chars;
        r.push(
            "prompt",
            format!("prompt must be at most {max} characters (got {prompt_chars})"),
            Some(format!("..={max}")),
        );
    }

    match (&req.input_image, &input) {
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
        check_input(&mut r, img, limits);
    }
    let kind = if input.is_some() {
        JobKind::Edit
    } else {
        JobKind::Generate
    };

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
    if req.resize.is_some() && kind == JobKind::Generate {
        r.push(
            "resize",
            "resize applies only to edits (with input_image)".into(),
            None,
        );
    }
    let context = input.as_ref().map(|img| {
        resolution::context_size(img.width, img.height, resize, limits.context_max_pixels)
    });

    let (width, height) = target_size(&mut r, req, context, limits);

    let steps = req.steps.unwrap_or(DEFAULT_STEPS);
    if !(1..=limits.max_steps).contains(&steps) {
        let max = limits.max_steps;
        r.push(
            "steps",
            format!("steps must be between 1 and {max} (got {steps})"),
            Some(format!("1..={max}")),
        );
    }

    let guidance = req.guidance.unwrap_or(DEFAULT_GUIDANCE);
    let (gmin, gmax) = (limits.min_guidance, limits.max_guidance);
    if !guidance.is_finite() || guidance < gmin || guidance > gmax {
        r.push(
            "guidance",
            format!("guidance must be between {gmin} and {gmax} (got {guidance})"),
            Some(format!("{gmin}..={gmax}")),
        );
    }

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

    if let Some(url) = &req.webhook_url {
        check_webhook_url(&mut r, url, limits.max_webhook_url_chars);
    }

    if !r.0.is_empty() {
        return Err(ValidationErrors { errors: r.0 });
    }
    Ok(ValidJobSpec {
        kind,
        prompt: prompt.to_owned(),
        input,
        input_latent_key: None,
        resize,
        context_width: context.map(|c| c.0),
        context_height: context.map(|c| c.1),
        width,
        height,
        steps,
        guidance,
        seed: req.seed.unwrap_or_else(pick_seed),
        output_format,
        priority,
        webhook_url: req.webhook_url.clone(),
        initial_latents_key: None,
        keep_latent: false,
    })
}

fn check_input(r: &mut Report, img: &InputImage, limits: &Limits) {
    let (w, h) = (img.width, img.height);
    let max_side = limits.max_input_side;
    if w < SIDE_MULTIPLE || h < SIDE_MULTIPLE || w > max_side || h > max_side {
        r.push(
            "input_image",
            format!(
                "input_image sides must be between {SIDE_MULTIPLE} and {max_side} pixels (got {w}x{h})"
            ),
            Some(format!("{SIDE_MULTIPLE}..={max_side}")),
        );
    }
    let pixels = u64::from(w) * u64::from(h);
    if pixels > limits.max_input_pixels {
        let max = limits.max_input_pixels;
        r.push(
            "input_image",
            format!("input_image must have at most {max} pixels (got {w}x{h} = {pixels})"),
            Some(format!("..={max}")),
        );
    }
}

/// The output size: explicit width/height, else aspect_ratio, else the context size (edit) or the
/// default generate size. Returns a size even when invalid so that every field gets checked.
fn target_size(
    r: &mut Report,
    req: &JobRequest,
    context: Option<(u32, u32)>,
    limits: &Limits,
) -> (u32, u32) {
    let (size, origin) = match (req.width, req.height, req.aspect_ratio.as_deref()) {
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            r.push(
                "aspect_ratio",
                "aspect_ratio cannot be combined with width/height".into(),
                None,
            );
            return limits.default_generate_size;
        }
        (Some(w), Some(h), None) => ((w, h), None),
        (Some(_), None, None) => {
            r.push(
                "height",
                "height is required when width is given".into(),
                None,
            );
            return limits.default_generate_size;
        }
        (None, Some(_), None) => {
            r.push(
                "width",
                "width is required when height is given".into(),
                None,
            );
            return limits.default_generate_size;
        }
        (None, None, Some(ratio)) => match aspect_ratio(r, ratio, limits) {
            Some(size) => (size, Some("aspect_ratio")),
            None => return limits.default_generate_size,
        },
        (None, None, None) => match context {
            Some(c) => (c, Some("input_image")),
            None => (limits.default_generate_size, None),
        },
    };
    let (w, h) = size;
    let derived = |field: &str| match origin {
        Some(from) => format!("{field} (derived from {from})"),
        None => field.to_owned(),
    };
    for (field, v) in [("width", w), ("height", h)] {
        let (min, max) = (limits.min_side, limits.max_side);
        if v % SIDE_MULTIPLE != 0 {
            r.push(
                field,
                format!(
                    "{} must be a multiple of {SIDE_MULTIPLE} (got {v})",
                    derived(field)
                ),
                Some(format!("multiple of {SIDE_MULTIPLE}")),
            );
        }
        if v < min || v > max {
            r.push(
                field,
                format!(
                    "{} must be between {min} and {max} (got {v})",
                    derived(field)
                ),
                Some(format!("{min}..={max}")),
            );
        }
    }
    let pixels = u64::from(w) * u64::from(h);
    if pixels > limits.max_pixels {
        let max = limits.max_pixels;
        r.push(
            "width",
            format!("width x height must be at most {max} pixels (got {w}x{h} = {pixels})"),
            Some(format!("..={max}")),
        );
    }
    size
}

fn aspect_ratio(r: &mut Report, ratio: &str, limits: &Limits) -> Option<(u32, u32)> {
    let (long, short) = limits.max_aspect_ratio;
    let max = f64::from(long) / f64::from(short.max(1));
    let parsed = ratio.split_once(':').and_then(|(a, b)| {
        let a: f64 = a.trim().parse().ok()?;
        let b: f64 = b.trim().parse().ok()?;
        (a.is_finite() && b.is_finite() && a > 0.0 && b > 0.0).then_some(a / b)
    });
    let Some(value) = parsed else {
        r.push(
            "aspect_ratio",
            format!("aspect_ratio must look like \"16:9\" (got {ratio:?})"),
            Some("w:h".into()),
        );
        return None;
    };
    if value > max || value < 1.0 / max {
        r.push(
            "aspect_ratio",
            format!("aspect_ratio must be between {short}:{long} and {long}:{short} (got {ratio})"),
            Some(format!("{short}:{long}..={long}:{short}")),
        );
        return None;
    }
    resolution::aspect_ratio_size(ratio, limits.aspect_ratio_area)
}

fn check_webhook_url(r: &mut Report, url: &str, max_chars: usize) {
    let chars = url.chars().count();
    if chars > max_chars {
        r.push(
            "webhook_url",
            format!("webhook_url must be at most {max_chars} characters (got {chars})"),
            Some(format!("..={max_chars}")),
        );
    }
    let host = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let host_ok = host.is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
    if !host_ok || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        r.push(
            "webhook_url",
            "webhook_url must be an http:// or https:// URL with a host and no spaces".into(),
            Some("http(s)://host/...".into()),
        );
    }
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
