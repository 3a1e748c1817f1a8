//! The judge: reads a generated image back into a scene (background, and per grid cell the
//! shape, colour and size it shows) and scores it against the exact answer of its case.
//!
//! Reading an image: the background is the per-channel median of all pixels (shapes cover at
//! most ~15 % of the frame); a pixel is foreground when it is further than `FOREGROUND_DISTANCE`
//! from that colour. In each cell, enough foreground makes an object; its colour is the nearest
//! named colour to the median foreground pixel, and its shape and size are the exactly rendered
//! template (4 shapes × 2 sizes, aligned on the centroid) with the highest mask IoU.

use image::RgbImage;
use serde::Serialize;

use crate::render::{cell_bounds, coverage};
use crate::tasks::{Case, Task};
use crate::world::{Background, Colour, Object, Position, Scene, Shape, Size};

/// RGB distance from the background above which a pixel is foreground: half the smallest
/// distance between a background and a shape colour (gray–purple, ≈ 96).
pub const FOREGROUND_DISTANCE: f32 = 48.0;

/// What the judge sees in one cell.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SeenObject {
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
    /// IoU of the foreground with the best template.
    pub template_iou: f32,
}

/// What the judge sees in an image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Seen {
    pub background: Background,
    pub cells: [Option<SeenObject>; 9],
    /// Per-pixel foreground mask, row-major.
    #[serde(skip)]
    pub foreground: Vec<bool>,
}

fn dist(a: [f32; 3], b: [f32; 3]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

fn rgb_f32(c: [u8; 3]) -> [f32; 3] {
    c.map(f32::from)
}

fn median(values: &mut [u8]) -> u8 {
    values.sort_unstable();
    values[values.len() / 2]
}

fn median_rgb(pixels: &[[u8; 3]]) -> [f32; 3] {
    let mut out = [0.0; 3];
    for (c, o) in out.iter_mut().enumerate() {
        let mut ch: Vec<u8> = pixels.iter().map(|p| p[c]).collect();
        *o = f32::from(median(&mut ch));
    }
    out
}

fn nearest<T: Copy>(rgb: [f32; 3], options: &[T], colour_of: impl Fn(T) -> [u8; 3]) -> T {
    let mut best = options[0];
    let mut best_d = f32::INFINITY;
    for o in options {
        let d = dist(rgb, rgb_f32(colour_of(*o)));
        if d < best_d {
            best_d = d;
            best = *o;
        }
    }
    best
}

/// Exactly rendered masks (coverage ≥ 0.5) of every shape and size, centred in `cell`.
fn template(shape: Shape, size: Size, cell: Position, width: u32, height: u32) -> Vec<bool> {
    let obj = Object {
        shape,
        colour: Colour::Red,
        size,
        position: cell,
    };
    coverage(&obj, width, height)
        .into_iter()
        .map(|c| c >= 0.5)
        .collect()
}

fn centroid(mask: &[bool], width: u32) -> Option<(f64, f64)> {
    let (mut sx, mut sy, mut n) = (0.0, 0.0, 0.0);
    for (i, m) in mask.iter().enumerate() {
        if *m {
            sx += (i as u32 % width) as f64;
            sy += (i as u32 / width) as f64;
            n += 1.0;
        }
    }
    (n > 0.0).then(|| (sx / n, sy / n))
}

/// IoU of `a` with `b` shifted by `(dx, dy)` pixels.
fn shifted_iou(a: &[bool], b: &[bool], width: u32, height: u32, dx: i64, dy: i64) -> f32 {
    let (mut inter, mut union) = (0u32, 0u32);
    for y in 0..i64::from(height) {
        for x in 0..i64::from(width) {
            let av = a[(y * i64::from(width) + x) as usize];
            let (bx, by) = (x - dx, y - dy);
            let bv = bx >= 0
                && by >= 0
                && bx < i64::from(width)
                && by < i64::from(height)
                && b[(by * i64::from(width) + bx) as usize];
            inter += u32::from(av && bv);
            union += u32::from(av || bv);
        }
    }
    if union == 0 {
        0.0
    } else {
        inter as f32 / union as f32
    }
}

/// Reads `img` back into a scene.
pub fn see(img: &RgbImage) -> Seen {
    let (width, height) = img.dimensions();
    let pixels: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    let bg_rgb = median_rgb(&pixels);
    let background = nearest(bg_rgb, &Background::ALL, Background::rgb);
    let mut foreground: Vec<bool> = pixels
        .iter()
        .map(|p| dist(rgb_f32(*p), bg_rgb) > FOREGROUND_DISTANCE)
        .collect();
    // A quarter of the smallest template's area: less is noise, not an object.
    let min_pixels = template(Shape::Star, Size::Small, Position::CENTER, width, height)
        .iter()
        .filter(|m| **m)
        .count()
        / 4;
    let mut cells = [None; 9];
    for cell in Position::all() {
        let (x0, y0, x1, y1) = cell_bounds(cell, width, height);
        let mut mask = vec![false; pixels.len()];
        let mut fg_pixels = Vec::new();
        for y in y0..y1 {
            for x in x0..x1 {
                let i = (y * width + x) as usize;
                if foreground[i] {
                    mask[i] = true;
                    fg_pixels.push(pixels[i]);
                }
            }
        }
        if fg_pixels.len() <= min_pixels.max(1) {
            continue;
        }
        let fg_rgb = median_rgb(&fg_pixels);
        let colour = nearest(fg_rgb, &Colour::ALL, Colour::rgb);
        // Second pass: half-way between background and this object's colour, i.e. coverage
        // ≥ 0.5, the rule the templates use.
        let half = dist(fg_rgb, bg_rgb).max(2.0 * FOREGROUND_DISTANCE) / 2.0;
        for y in y0..y1 {
            for x in x0..x1 {
                let i = (y * width + x) as usize;
                mask[i] = dist(rgb_f32(pixels[i]), bg_rgb) > half;
                foreground[i] = mask[i];
            }
        }
        let Some((mx, my)) = centroid(&mask, width) else {
            continue;
        };
        let mut best: Option<SeenObject> = None;
        for shape in Shape::ALL {
            for size in Size::ALL {
                let t = template(shape, size, cell, width, height);
                let Some((tx, ty)) = centroid(&t, width) else {
                    continue;
                };
                let (dx, dy) = ((mx - tx).round() as i64, (my - ty).round() as i64);
                let iou = shifted_iou(&mask, &t, width, height, dx, dy);
                if best.is_none_or(|b| iou > b.template_iou) {
                    best = Some(SeenObject {
                        shape,
                        colour,
                        size,
                        template_iou: iou,
                    });
                }
            }
        }
        cells[cell.index()] = best;
    }
    Seen {
        background,
        cells,
        foreground,
    }
}

/// The judge's verdict on one output.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub task: Task,
    /// Target objects with the right shape, colour and size in their cell.
    pub objects_correct: usize,
    pub objects_total: usize,
    pub colour_correct: usize,
    pub shape_correct: usize,
    /// Objects seen in cells the target leaves empty.
    pub spurious: usize,
    pub background_correct: bool,
    /// The edited cells (and, for a background change, the background) exactly as the target.
    pub edit_correct: bool,
    /// Mean IoU of the foreground with the target's masks over the target objects.
    pub mask_iou: f32,
    /// Against the exactly rendered target.
    pub psnr_target: f64,
    /// Against the input, over the pixels the edit must not touch; `None` for text-to-image.
    pub psnr_preserved: Option<f64>,
}

/// PSNR in dB over the pixels where `region` holds (all when `None`); 99 dB when identical.
pub fn psnr(a: &RgbImage, b: &RgbImage, region: Option<&[bool]>) -> f64 {
    let (mut se, mut n) = (0.0_f64, 0u64);
    for (i, (pa, pb)) in a.pixels().zip(b.pixels()).enumerate() {
        if region.is_some_and(|r| !r[i]) {
            continue;
        }
        for c in 0..3 {
            se += (f64::from(pa.0[c]) - f64::from(pb.0[c])).powi(2);
            n += 1;
        }
    }
    if n == 0 || se == 0.0 {
        return 99.0;
    }
    10.0 * (255.0_f64.powi(2) / (se / n as f64)).log10()
}

/// Pixels an edit must leave as they were: the cells outside `edited_cells`; for a background
/// change (all cells edited), the interiors of the input's shapes.
pub fn preserved_region(case: &Case, width: u32, height: u32) -> Option<Vec<bool>> {
    let input = case.input.as_ref()?;
    let mut region = vec![false; (width * height) as usize];
    if case.task == Task::Background {
        for obj in &input.objects {
            for (r, c) in region.iter_mut().zip(coverage(obj, width, height)) {
                *r |= c >= 1.0;
            }
        }
        return Some(region);
    }
    for cell in Position::all().filter(|p| !case.edited_cells.contains(p)) {
        let (x0, y0, x1, y1) = cell_bounds(cell, width, height);
        for y in y0..y1 {
            for x in x0..x1 {
                region[(y * width + x) as usize] = true;
            }
        }
    }
    Some(region)
}

fn cell_matches(expected: Option<&Object>, seen: Option<&SeenObject>) -> bool {
    match (expected, seen) {
        (None, None) => true,
        (Some(e), Some(s)) => e.shape == s.shape && e.colour == s.colour && e.size == s.size,
        _ => false,
    }
}

/// Scores `output` for `case`; `input_image` is the rendered input of an edit.
pub fn judge(case: &Case, output: &RgbImage, input_image: Option<&RgbImage>) -> Verdict {
    let (width, height) = output.dimensions();
    let seen = see(output);
    let target: &Scene = &case.target;
    let mut v = Verdict {
        task: case.task,
        objects_correct: 0,
        objects_total: target.objects.len(),
        colour_correct: 0,
        shape_correct: 0,
        spurious: 0,
        background_correct: seen.background == target.background,
        edit_correct: true,
        mask_iou: 0.0,
        psnr_target: psnr(output, &crate::render::render(target, width, height), None),
        psnr_preserved: None,
    };
    let mut iou_sum = 0.0;
    for obj in &target.objects {
        let s = seen.cells[obj.position.index()];
        if let Some(s) = s {
            v.colour_correct += usize::from(s.colour == obj.colour);
            v.shape_correct += usize::from(s.shape == obj.shape);
        }
        v.objects_correct += usize::from(cell_matches(Some(obj), s.as_ref()));
        let expected: Vec<bool> = coverage(obj, width, height)
            .into_iter()
            .map(|c| c >= 0.5)
            .collect();
        let (x0, y0, x1, y1) = cell_bounds(obj.position, width, height);
        let (mut inter, mut union) = (0u32, 0u32);
        for y in y0..y1 {
            for x in x0..x1 {
                let i = (y * width + x) as usize;
                inter += u32::from(expected[i] && seen.foreground[i]);
                union += u32::from(expected[i] || seen.foreground[i]);
            }
        }
        iou_sum += if union == 0 {
            0.0
        } else {
            inter as f32 / union as f32
        };
    }
    if !target.objects.is_empty() {
        v.mask_iou = iou_sum / target.objects.len() as f32;
    }
    for cell in Position::all() {
        if target.object_at(cell).is_none() && seen.cells[cell.index()].is_some() {
            v.spurious += 1;
        }
    }
    v.edit_correct = match case.task {
        Task::Background => v.background_correct,
        Task::TextToImage => {
            v.background_correct && v.objects_correct == v.objects_total && v.spurious == 0
        }
        _ => case
            .edited_cells
            .iter()
            .all(|p| cell_matches(target.object_at(*p), seen.cells[p.index()].as_ref())),
    };
    if let (Some(input), Some(region)) = (input_image, preserved_region(case, width, height)) {
        v.psnr_preserved = Some(psnr(output, input, Some(&region)));
    }
    v
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::render::render;
    use crate::tasks::{Split, case};

    #[test]
    fn the_exact_answer_is_judged_correct_at_every_size() {
        for size in [64, 96, 128] {
            for task in Task::ALL {
                for i in 0..40 {
                    let c = case(11, Split::HeldOut, task, i);
                    let out = render(&c.target, size, size);
                    let input = c.input.as_ref().map(|s| render(s, size, size));
                    let v = judge(&c, &out, input.as_ref());
                    assert!(v.edit_correct, "{size} {c:?} {v:?}");
                    assert_eq!(v.objects_correct, v.objects_total, "{size} {c:?}");
                    assert_eq!(v.spurious, 0);
                    assert!(v.mask_iou > 0.75, "{size} {:?} {}", c.target, v.mask_iou);
                    assert_eq!(v.psnr_target, 99.0);
                    if let Some(p) = v.psnr_preserved {
                        assert!(p > 40.0, "{task:?} preserved {p}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_wrong_answer_is_judged_wrong() {
        for task in Task::EDITS {
            for i in 0..40 {
                let c = case(12, Split::HeldOut, task, i);
                let input = render(c.input.as_ref().unwrap(), 64, 64);
                // Returning the input unchanged must fail every edit.
                let v = judge(&c, &input, Some(&input));
                assert!(!v.edit_correct, "{c:?}");
            }
        }
    }

    #[test]
    fn noise_is_not_a_scene() {
        let c = case(13, Split::HeldOut, Task::TextToImage, 0);
        let mut img = RgbImage::new(64, 64);
        for (i, p) in img.pixels_mut().enumerate() {
            let v = (i * 2_654_435_761 % 251) as u8;
            p.0 = [v, v.wrapping_mul(3), v.wrapping_mul(7)];
        }
        assert!(!judge(&c, &img, None).edit_correct);
    }
}
