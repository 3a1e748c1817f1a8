//! Multi-reference edits: the request's reference images (`input_images`, BFL's
//! `input_image_2..4`) checked before anything is fetched, and the context size of each stored
//! reference under one shared pixel budget. The first reference is sized exactly like a
//! single-image edit's context (and gives the default output size); the others are sized the
//! same way, then shrunk at their own aspect ratio when the references together would exceed
//! `Limits::max_reference_pixels`: every reference's tokens join every attention call.

use crate::job::{InputImage, ReferenceImage, ReferencePositions};
use crate::resolution::{ResizeMode, SIDE_MULTIPLE, context_size, keep_aspect};
use crate::validate::Limits;
use crate::validate_fields::Report;

/// Most reference images per edit (BFL's `input_image` … `input_image_4`).
pub const MAX_REFERENCES: usize = 4;

/// The references of a request: `input_image` alone, or `input_images` (1 to 4), never both.
/// Pushes the errors into `r` and returns the raw values in order.
pub(crate) fn requested(
    r: &mut Report,
    input_image: Option<&String>,
    input_images: Option<&Vec<String>>,
) -> Vec<String> {
    match (input_image, input_images) {
        (Some(_), Some(_)) => {
            r.push(
                "input_images",
                "give input_image or input_images, not both".into(),
                None,
            );
            Vec::new()
        }
        (Some(one), None) => vec![one.clone()],
        (None, Some(list)) => {
            if list.is_empty() || list.len() > MAX_REFERENCES {
                r.push(
                    "input_images",
                    format!(
                        "input_images must hold 1 to {MAX_REFERENCES} images (got {})",
                        list.len()
                    ),
                    Some(format!("1..={MAX_REFERENCES}")),
                );
            }
            if list.iter().any(|v| v.trim().is_empty()) {
                r.push(
                    "input_images",
                    "input_images entries must not be empty".into(),
                    None,
                );
            }
            list.iter().take(MAX_REFERENCES).cloned().collect()
        }
        (None, None) => Vec::new(),
    }
}

/// `reference_positions`: `offset` (default) or `index`.
pub(crate) fn positions(r: &mut Report, raw: Option<&str>) -> ReferencePositions {
    match raw {
        None | Some("offset") => ReferencePositions::Offset,
        Some("index") => ReferencePositions::Index,
        Some(other) => {
            r.push(
                "reference_positions",
                format!("reference_positions must be \"offset\" or \"index\" (got {other:?})"),
                Some("offset|index".into()),
            );
            ReferencePositions::Offset
        }
    }
}

/// Context sizes of the references after the first (whose context is `first`), shrunk so that
/// all of them together stay within `limits.max_reference_pixels`.
pub(crate) fn sized(
    r: &mut Report,
    first: (u32, u32),
    more: Vec<InputImage>,
    resize: ResizeMode,
    limits: &Limits,
) -> Vec<ReferenceImage> {
    if more.is_empty() {
        return Vec::new();
    }
    let area = |(w, h): (u32, u32)| u64::from(w) * u64::from(h);
    let natural: Vec<(u32, u32)> = more
        .iter()
        .map(|img| {
            context_size(
                img.width,
                img.height,
                resize,
                limits.context_max_pixels,
                &limits.preferred_resolutions,
            )
        })
        .collect();
    let budget = limits.max_reference_pixels;
    let total: u64 = area(first) + natural.iter().map(|s| area(*s)).sum::<u64>();
    let sizes = if total <= budget {
        natural
    } else {
        // What the first reference leaves, shared evenly by the others.
        let each = budget.saturating_sub(area(first)) / more.len() as u64;
        more.iter()
            .map(|img| keep_aspect(img.width, img.height, each))
            .collect()
    };
    let total: u64 = area(first) + sizes.iter().map(|s| area(*s)).sum::<u64>();
    let smallest = u64::from(SIDE_MULTIPLE) * u64::from(SIDE_MULTIPLE);
    if total > budget || sizes.iter().any(|s| area(*s) < smallest) {
        r.push(
            "input_images",
            format!(
                "the reference images cannot share {budget} pixels: the first alone takes {} \
                 ({}x{}); send fewer or smaller references",
                area(first),
                first.0,
                first.1
            ),
            Some(format!("..={budget}")),
        );
    }
    more.into_iter()
        .zip(sizes)
        .map(|(image, (context_width, context_height))| ReferenceImage {
            image,
            context_width,
            context_height,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object_key::ObjectKey;

    fn img(w: u32, h: u32) -> InputImage {
        InputImage {
            key: ObjectKey::parse(&format!("in/t/{w}x{h}.png")).expect("key"),
            width: w,
            height: h,
        }
    }

    #[test]
    fn input_image_and_input_images_are_exclusive_and_bounded() {
        let mut r = Report::default();
        let one = "a".to_string();
        assert_eq!(requested(&mut r, Some(&one), None), vec!["a"]);
        assert!(r.finish(()).is_ok());
        let mut r = Report::default();
        requested(&mut r, Some(&one), Some(&vec!["b".into()]));
        assert!(r.finish(()).is_err());
        let mut r = Report::default();
        let five: Vec<String> = (0..5).map(|i| i.to_string()).collect();
        requested(&mut r, None, Some(&five));
        let err = r.finish(()).expect_err("five");
        assert!(format!("{err:?}").contains("1 to 4"), "{err:?}");
    }

    #[test]
    fn references_within_the_budget_keep_their_single_edit_size() {
        let limits = Limits::default();
        let mut r = Report::default();
        let first = context_size(
            1024,
            1024,
            ResizeMode::Snap,
            limits.context_max_pixels,
            &limits.preferred_resolutions,
        );
        let got = sized(
            &mut r,
            first,
            vec![img(800, 600), img(640, 640)],
            ResizeMode::Snap,
            &limits,
        );
        assert!(r.finish(()).is_ok());
        for (g, (w, h)) in got.iter().zip([(800, 600), (640, 640)]) {
            let alone = context_size(
                w,
                h,
                ResizeMode::Snap,
                limits.context_max_pixels,
                &limits.preferred_resolutions,
            );
            assert_eq!((g.context_width, g.context_height), alone);
        }
    }

    #[test]
    fn references_over_the_budget_shrink_to_share_it() {
        let limits = Limits {
            max_reference_pixels: 2 * 1024 * 1024,
            ..Limits::default()
        };
        let mut r = Report::default();
        let first = (1024, 1024);
        let more = vec![img(1024, 1024), img(2048, 1024), img(512, 1024)];
        let got = sized(&mut r, first, more, ResizeMode::Snap, &limits);
        assert!(r.finish(()).is_ok());
        let total: u64 = 1024 * 1024
            + got
                .iter()
                .map(|g| u64::from(g.context_width) * u64::from(g.context_height))
                .sum::<u64>();
        assert!(total <= limits.max_reference_pixels, "{total}");
        // Each keeps its aspect ratio (to within the 16-pixel grid).
        let (w, h) = (got[1].context_width, got[1].context_height);
        assert!((f64::from(w) / f64::from(h) - 2.0).abs() < 0.1, "{w}x{h}");
    }

    #[test]
    fn a_first_reference_that_leaves_nothing_is_refused_by_field() {
        let limits = Limits {
            max_reference_pixels: 1024 * 1024,
            ..Limits::default()
        };
        let mut r = Report::default();
        sized(
            &mut r,
            (1024, 1024),
            vec![img(512, 512)],
            ResizeMode::Snap,
            &limits,
        );
        let err = r.finish(()).expect_err("no room");
        assert!(format!("{err:?}").contains("input_images"), "{err:?}");
    }
}
