//! Kontext output and context sizes: preferred-resolution snapping, aspect-ratio sizes and the
//! keep-aspect mode. Pure arithmetic shared by the coordinator (which reports sizes at submit) and
//! the engine (which resizes the context image), so both always agree.

use serde::{Deserialize, Serialize};

/// BFL `src/flux/util.py` `PREFERED_KONTEXT_RESOLUTIONS` (BFL's spelling; the same values as
/// diffusers `pipeline_flux_kontext.py` `PREFERRED_KONTEXT_RESOLUTIONS`), as (width, height).
pub const PREFERRED_KONTEXT_RESOLUTIONS: [(u32, u32); 17] = [
    (672, 1568),
    (688, 1504),
    (720, 1456),
    (752, 1392),
    (800, 1328),
    (832, 1248),
    (880, 1184),
    (944, 1104),
    (1024, 1024),
    (1104, 944),
    (1184, 880),
    (1248, 832),
    (1328, 800),
    (1392, 752),
    (1456, 720),
    (1504, 688),
    (1568, 672),
];

/// Every output and context side is a multiple of this: 8× VAE downsampling, then 2×2 packing.
pub const SIDE_MULTIPLE: u32 = 16;

/// Default largest output (and context) area, in pixels: 2 MP, about twice the preferred Kontext
/// sizes. One constant for the coordinator's validation and the engine's own check, so a job the
/// API accepts is never refused by a worker with default flags.
pub const DEFAULT_MAX_PIXELS: u64 = 2_048 * 1_024;

/// How the context image of an edit is sized before VAE encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// Snap to the nearest of the 17 preferred resolutions (BFL's behaviour; the model was trained there).
    #[default]
    Snap,
    /// Keep the input's own aspect ratio: scale down to fit `max_pixels` if needed, then floor each
    /// side to a multiple of 16 (diffusers' behaviour with `_auto_resize=False`).
    Keep,
}

/// The preferred Kontext resolution nearest in aspect ratio to `width × height`.
pub fn snap_to_preferred(width: u32, height: u32) -> (u32, u32) {
    snap_to(width, height, &PREFERRED_KONTEXT_RESOLUTIONS)
}

/// The entry of `preferred` nearest in aspect ratio to `width × height` (`width × height` itself,
/// floored to 16, if the list is empty).
///
/// BFL `flux/sampling.py` `prepare_kontext`: `min((abs(ar - w/h), w, h) for w, h in PREFERRED)`
/// with `ar` from the raw image size; Python tuple ordering breaks ties by the smaller w, then the
/// smaller h. A model trained at other sizes (e.g. `models/shapes`) brings its own list.
pub fn snap_to(width: u32, height: u32, preferred: &[(u32, u32)]) -> (u32, u32) {
    let ar = f64::from(width) / f64::from(height.max(1));
    let mut best = (floor_to_multiple(width), floor_to_multiple(height));
    let mut best_key = (f64::INFINITY, u32::MAX, u32::MAX);
    for &(w, h) in preferred {
        let key = ((ar - f64::from(w) / f64::from(h.max(1))).abs(), w, h);
        if key.0 < best_key.0 || (key.0 == best_key.0 && (key.1, key.2) < (best_key.1, best_key.2))
        {
            best_key = key;
            best = (w, h);
        }
    }
    best
}

/// Keep the aspect ratio of `width × height`, shrink uniformly to at most `max_pixels`, then floor
/// each side to a multiple of 16 (never below 16).
pub fn keep_aspect(width: u32, height: u32, max_pixels: u64) -> (u32, u32) {
    let area = u64::from(width) * u64::from(height);
    let (w, h) = if area > max_pixels && area > 0 {
        let s = (max_pixels as f64 / area as f64).sqrt();
        (f64::from(width) * s, f64::from(height) * s)
    } else {
        (f64::from(width), f64::from(height))
    };
    (floor_to_multiple(w as u32), floor_to_multiple(h as u32))
}

/// The context size an edit's input image is resized to: snapped to one of the model's
/// `preferred` resolutions, or its own aspect ratio within `max_pixels`.
pub fn context_size(
    width: u32,
    height: u32,
    mode: ResizeMode,
    max_pixels: u64,
    preferred: &[(u32, u32)],
) -> (u32, u32) {
    match mode {
        ResizeMode::Snap => snap_to(width, height, preferred),
        ResizeMode::Keep => keep_aspect(width, height, max_pixels),
    }
}

/// BFL `util.py:637-643` `aspect_ratio_to_height_width`: `"a:b"` → a ~1 MP size floored to 16
/// (16:9 → 1360×768). Returns `None` for a malformed ratio.
pub fn aspect_ratio_size(ratio: &str, area: u64) -> Option<(u32, u32)> {
    let (a, b) = ratio.split_once(':')?;
    let a: f64 = a.trim().parse().ok()?;
    let b: f64 = b.trim().parse().ok()?;
    if !(a.is_finite() && b.is_finite() && a > 0.0 && b > 0.0) {
        return None;
    }
    let w = (area as f64 * a / b).sqrt().round();
    let h = (area as f64 * b / a).sqrt().round();
    Some((floor_to_multiple(w as u32), floor_to_multiple(h as u32)))
}

fn floor_to_multiple(v: u32) -> u32 {
    (v / SIDE_MULTIPLE * SIDE_MULTIPLE).max(SIDE_MULTIPLE)
}

/// Packed token count of an image of `width × height` pixels (one token per 16×16 pixels).
pub fn token_count(width: u32, height: u32) -> usize {
    (width / SIDE_MULTIPLE) as usize * (height / SIDE_MULTIPLE) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snaps_square_and_extremes() {
        assert_eq!(snap_to_preferred(512, 512), (1024, 1024));
        assert_eq!(snap_to_preferred(64, 48), (1184, 880));
        assert_eq!(snap_to_preferred(100, 1000), (672, 1568));
        assert_eq!(snap_to_preferred(4000, 100), (1568, 672));
    }

    #[test]
    fn snaps_to_a_model_list() {
        let shapes = [(96, 96), (128, 64), (64, 128)];
        assert_eq!(snap_to(300, 290, &shapes), (96, 96));
        assert_eq!(snap_to(400, 150, &shapes), (128, 64));
        assert_eq!(snap_to(10, 100, &shapes), (64, 128));
        assert_eq!(snap_to(100, 70, &[]), (96, 64));
    }

    #[test]
    fn every_preferred_entry_snaps_to_itself() {
        for &(w, h) in &PREFERRED_KONTEXT_RESOLUTIONS {
            assert_eq!(snap_to_preferred(w, h), (w, h));
            assert_eq!(w % SIDE_MULTIPLE, 0);
            assert_eq!(h % SIDE_MULTIPLE, 0);
        }
    }

    #[test]
    fn keep_aspect_floors_and_caps() {
        assert_eq!(keep_aspect(300, 200, 1 << 20), (288, 192));
        let (w, h) = keep_aspect(4000, 3000, 1024 * 1024);
        assert!(u64::from(w) * u64::from(h) <= 1024 * 1024);
        assert_eq!((w % 16, h % 16), (0, 0));
        assert_eq!((w, h), (1168, 880));
    }

    #[test]
    fn aspect_ratio_matches_bfl() {
        assert_eq!(aspect_ratio_size("16:9", 1024 * 1024), Some((1360, 768)));
        assert_eq!(aspect_ratio_size("1:1", 1024 * 1024), Some((1024, 1024)));
        assert_eq!(aspect_ratio_size("0:1", 1024 * 1024), None);
        assert_eq!(aspect_ratio_size("wide", 1024 * 1024), None);
    }
}
