//! The checks of single fields that job and chain validation share, and the `Report` they
//! write to. Every message starts with the field's name as the client wrote it, so a chain
//! turn's errors read `turns[2].steps must be ...` without renaming anything afterwards.

use std::net::IpAddr;

use crate::job::InputImage;
use crate::resolution::{self, SIDE_MULTIPLE};
use crate::validate::{FieldError, JobRequest, Limits, ValidationErrors};

/// The problems found so far.
#[derive(Default)]
pub(crate) struct Report(Vec<FieldError>);

impl Report {
    pub(crate) fn push(&mut self, field: &str, message: String, limit: Option<String>) {
        self.0.push(FieldError {
            field: field.to_owned(),
            message,
            limit,
        });
    }

    /// `Ok(value)` when nothing was reported.
    pub(crate) fn finish<T>(self, value: T) -> Result<T, ValidationErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ValidationErrors { errors: self.0 })
        }
    }
}

/// How a turn's own fields (prompt, seed, steps, guidance) are named: as they are in a job
/// (`steps`), or by their place in a chain request (`turns[2].steps`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TurnFieldNames<'a> {
    prefix: Option<&'a str>,
}

impl<'a> TurnFieldNames<'a> {
    /// An empty prefix names the fields as they are.
    pub(crate) fn under(prefix: &'a str) -> Self {
        Self {
            prefix: Some(prefix).filter(|p| !p.is_empty()),
        }
    }

    pub(crate) fn name(self, field: &str) -> String {
        match self.prefix {
            Some(prefix) => format!("{prefix}.{field}"),
            None => field.to_owned(),
        }
    }
}

/// The prompt, trimmed.
pub(crate) fn prompt(
    r: &mut Report,
    names: TurnFieldNames<'_>,
    prompt: &str,
    limits: &Limits,
) -> String {
    let field = names.name("prompt");
    // Counted as sent, surrounding whitespace included, as the schema's maxLength counts.
    let chars = prompt.chars().count();
    let prompt = prompt.trim();
    if prompt.is_empty() {
        r.push(
            &field,
            format!("{field} is required and must not be blank"),
            Some("1..".into()),
        );
    } else if chars > limits.max_prompt_chars {
        let max = limits.max_prompt_chars;
        r.push(
            &field,
            format!("{field} must be at most {max} characters (got {chars})"),
            Some(format!("..={max}")),
        );
    }
    prompt.to_owned()
}

pub(crate) fn steps(r: &mut Report, names: TurnFieldNames<'_>, steps: u32, limits: &Limits) {
    if !(1..=limits.max_steps).contains(&steps) {
        let field = names.name("steps");
        let max = limits.max_steps;
        r.push(
            &field,
            format!("{field} must be between 1 and {max} (got {steps})"),
            Some(format!("1..={max}")),
        );
    }
}

/// `none` (default), `regular` or `high`.
pub(crate) fn acceleration(r: &mut Report, value: Option<&str>) -> crate::job::Acceleration {
    use crate::job::Acceleration;
    match value {
        None | Some("none") => Acceleration::None,
        Some("regular") => Acceleration::Regular,
        Some("high") => Acceleration::High,
        Some(other) => {
            r.push(
                "acceleration",
                format!("acceleration must be \"none\", \"regular\" or \"high\" (got {other:?})"),
                Some("none|regular|high".into()),
            );
            Acceleration::None
        }
    }
}

/// Largest seed a client may give: 2^53 - 1, so that every seed reads back exactly in
/// JavaScript (server-picked seeds stay below it too).
pub const MAX_SEED: u64 = (1 << 53) - 1;

pub(crate) fn seed(r: &mut Report, names: TurnFieldNames<'_>, seed: Option<u64>) {
    if let Some(s) = seed.filter(|s| *s > MAX_SEED) {
        let field = names.name("seed");
        r.push(
            &field,
            format!("{field} must be between 0 and {MAX_SEED} (2^53 - 1) (got {s})"),
            Some(format!("0..={MAX_SEED}")),
        );
    }
}

pub(crate) fn guidance(r: &mut Report, names: TurnFieldNames<'_>, guidance: f32, limits: &Limits) {
    let (gmin, gmax) = (limits.min_guidance, limits.max_guidance);
    if !guidance.is_finite() || guidance < gmin || guidance > gmax {
        let field = names.name("guidance");
        r.push(
            &field,
            format!("{field} must be between {gmin} and {gmax} (got {guidance})"),
            Some(format!("{gmin}..={gmax}")),
        );
    }
}

/// The output size the request gives: explicit width/height, else aspect_ratio, else the default
/// generate size; `None` for an edit without any (its size comes from the context, known once
/// the input image is). Returns a size even when invalid so that every field gets checked.
pub(crate) fn requested_size(
    r: &mut Report,
    req: &JobRequest,
    limits: &Limits,
) -> Option<(u32, u32)> {
    let (size, origin) = match (req.width, req.height, req.aspect_ratio.as_deref()) {
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            r.push(
                "aspect_ratio",
                "aspect_ratio cannot be combined with width/height".into(),
                None,
            );
            return Some(limits.default_generate_size);
        }
        (Some(w), Some(h), None) => ((w, h), None),
        (Some(_), None, None) => {
            r.push(
                "height",
                "height is required when width is given".into(),
                None,
            );
            return Some(limits.default_generate_size);
        }
        (None, Some(_), None) => {
            r.push(
                "width",
                "width is required when height is given".into(),
                None,
            );
            return Some(limits.default_generate_size);
        }
        (None, None, Some(ratio)) => match aspect_ratio(r, ratio, limits) {
            Some(size) => (size, Some("aspect_ratio")),
            None => return Some(limits.default_generate_size),
        },
        (None, None, None) if req.input_image.is_some() => return None,
        (None, None, None) => (limits.default_generate_size, None),
    };
    output_size(r, size, origin, limits);
    Some(size)
}

/// Checks an output size; `origin` names the field it was derived from, if any.
pub(crate) fn output_size(
    r: &mut Report,
    (w, h): (u32, u32),
    origin: Option<&str>,
    limits: &Limits,
) {
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
}

fn aspect_ratio(r: &mut Report, ratio: &str, limits: &Limits) -> Option<(u32, u32)> {
    let (long, short) = limits.max_aspect_ratio;
    let max = f64::from(long) / f64::from(short.max(1));
    let parsed = ratio.split_once(':').and_then(|(a, b)| {
        let (a, b) = (plain_decimal(a.trim())?, plain_decimal(b.trim())?);
        (a > 0.0 && b > 0.0).then_some(a / b)
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

/// `12` or `1.5`: digits with at most one inner decimal point (the schema's pattern), no signs,
/// exponents or words such as `inf`.
fn plain_decimal(s: &str) -> Option<f64> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || frac.is_some_and(|f| !digits(f)) {
        return None;
    }
    s.parse().ok().filter(|v: &f64| v.is_finite())
}

/// The stored input image's own bounds.
pub(crate) fn input_image(r: &mut Report, img: &InputImage, limits: &Limits) {
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

/// A webhook URL that passed its checks: an http:// or https:// URL with a host, no whitespace,
/// within the length limit. Checked once, here; the coordinator applies its address policy to
/// `ip` (the host as the URL parser reads it, when it is an IP literal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    raw: String,
    ip: Option<IpAddr>,
}

impl WebhookUrl {
    /// The URL as the client sent it (what deliveries go to).
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The host when it is an IP literal (`http://10.0.0.5/`, `http://[::1]/`, also the
    /// shorthand forms a URL parser accepts, such as `http://2130706433/`).
    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }
}

pub(crate) fn webhook_url(r: &mut Report, raw: &str, max_chars: usize) -> Option<WebhookUrl> {
    let chars = raw.chars().count();
    let mut ok = true;
    if chars > max_chars {
        ok = false;
        r.push(
            "webhook_url",
            format!("webhook_url must be at most {max_chars} characters (got {chars})"),
            Some(format!("..={max_chars}")),
        );
    }
    let rest = raw
        .strip_prefix("https://")
        .or_else(|| raw.strip_prefix("http://"));
    let host_given = rest.is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
    // A URI (RFC 3986): printable ASCII only; an IRI's non-ASCII host or path is refused.
    let clean = raw.bytes().all(|b| b.is_ascii_graphic());
    let parsed = url::Url::parse(raw).ok().filter(|u| u.host().is_some());
    let Some(parsed) = parsed.filter(|_| host_given && clean) else {
        r.push(
            "webhook_url",
            "webhook_url must be an http:// or https:// URL with a host, in printable ASCII without \
             spaces"
                .into(),
            Some("http(s)://host/...".into()),
        );
        return None;
    };
    let ip = match parsed.host() {
        Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
        Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
        _ => None,
    };
    ok.then(|| WebhookUrl {
        raw: raw.to_owned(),
        ip,
    })
}
