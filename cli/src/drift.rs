//! Frame-to-frame drift measures for `kontext drift`: PSNR over RGB and SSIM over luminance.
//!
//! SSIM follows Wang, Bovik, Sheikh & Simoncelli (2004) as in their reference `ssim_index.m`:
//! luminance Y = 0.299 R + 0.587 G + 0.114 B (BT.601) in 0..255, an 11×11 Gaussian window with
//! σ = 1.5 (normalised), K1 = 0.01, K2 = 0.03, L = 255, local statistics over every window that
//! fits entirely inside the image ("valid"), and the mean of the SSIM map. Images smaller than
//! the window are compared with a window clipped to the image.

use image::RgbImage;

const WINDOW: usize = 11;
const SIGMA: f64 = 1.5;
const K1: f64 = 0.01;
const K2: f64 = 0.03;
const L: f64 = 255.0;

#[derive(Debug, thiserror::Error)]
#[error("frames differ in size: {a:?} vs {b:?}")]
pub struct SizeMismatch {
    pub a: (u32, u32),
    pub b: (u32, u32),
}

fn same_size(a: &RgbImage, b: &RgbImage) -> Result<(), SizeMismatch> {
    if a.dimensions() != b.dimensions() {
        return Err(SizeMismatch {
            a: a.dimensions(),
            b: b.dimensions(),
        });
    }
    Ok(())
}

/// Peak signal-to-noise ratio in dB over all RGB samples; `f64::INFINITY` for identical images.
pub fn psnr(a: &RgbImage, b: &RgbImage) -> Result<f64, SizeMismatch> {
    same_size(a, b)?;
    let n = a.as_raw().len().max(1) as f64;
    let se: f64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    let mse = se / n;
    Ok(if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (L * L / mse).log10()
    })
}

/// BT.601 luma of every pixel, row-major.
fn luma(img: &RgbImage) -> Vec<f64> {
    img.pixels()
        .map(|p| 0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2]))
        .collect()
}

/// Normalised 1-D Gaussian taps of length `len`.
fn gaussian(len: usize) -> Vec<f64> {
    let c = (len as f64 - 1.0) / 2.0;
    let taps: Vec<f64> = (0..len)
        .map(|i| (-((i as f64 - c).powi(2)) / (2.0 * SIGMA * SIGMA)).exp())
        .collect();
    let sum: f64 = taps.iter().sum();
    taps.into_iter().map(|t| t / sum).collect()
}

/// Separable "valid" filtering of a `w × h` plane with `taps` (horizontal, then vertical); the
/// output is `(w - k + 1) × (h - k + 1)`.
fn filter_valid(plane: &[f64], w: usize, h: usize, taps: &[f64]) -> Vec<f64> {
    let k = taps.len();
    let (ow, oh) = (w + 1 - k, h + 1 - k);
    let mut rows = vec![0.0; ow * h];
    for y in 0..h {
        for x in 0..ow {
            rows[y * ow + x] = (0..k).map(|i| taps[i] * plane[y * w + x + i]).sum();
        }
    }
    let mut out = vec![0.0; ow * oh];
    for y in 0..oh {
        for x in 0..ow {
            out[y * ow + x] = (0..k).map(|i| taps[i] * rows[(y + i) * ow + x]).sum();
        }
    }
    out
}

/// Mean structural similarity of the luminance of two same-sized images, in -1..=1.
pub fn ssim(a: &RgbImage, b: &RgbImage) -> Result<f64, SizeMismatch> {
    same_size(a, b)?;
    let (w, h) = (a.width() as usize, a.height() as usize);
    if w == 0 || h == 0 {
        return Ok(1.0);
    }
    let k = WINDOW.min(w).min(h);
    let taps = gaussian(k);
    let (x, y) = (luma(a), luma(b));
    let prod = |p: &[f64], q: &[f64]| p.iter().zip(q).map(|(u, v)| u * v).collect::<Vec<_>>();
    let mu_x = filter_valid(&x, w, h, &taps);
    let mu_y = filter_valid(&y, w, h, &taps);
    let xx = filter_valid(&prod(&x, &x), w, h, &taps);
    let yy = filter_valid(&prod(&y, &y), w, h, &taps);
    let xy = filter_valid(&prod(&x, &y), w, h, &taps);
    let (c1, c2) = ((K1 * L).powi(2), (K2 * L).powi(2));
    let map = (0..mu_x.len()).map(|i| {
        let (mx, my) = (mu_x[i], mu_y[i]);
        let (vx, vy, cxy) = (xx[i] - mx * mx, yy[i] - my * my, xy[i] - mx * my);
        ((2.0 * mx * my + c1) * (2.0 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    });
    Ok(map.sum::<f64>() / mu_x.len() as f64)
}

/// Drift of one frame: against the frame before it and against the first frame.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct FrameDrift {
    pub psnr_prev: f64,
    pub ssim_prev: f64,
    pub psnr_first: f64,
    pub ssim_first: f64,
}

/// Drift of `frames[i]` for i ≥ 1 (the first frame has nothing to drift from).
pub fn drift(frames: &[RgbImage]) -> Result<Vec<FrameDrift>, SizeMismatch> {
    let Some(first) = frames.first() else {
        return Ok(Vec::new());
    };
    frames
        .windows(2)
        .map(|w| {
            Ok(FrameDrift {
                psnr_prev: psnr(&w[0], &w[1])?,
                ssim_prev: ssim(&w[0], &w[1])?,
                psnr_first: psnr(first, &w[1])?,
                ssim_first: ssim(first, &w[1])?,
            })
        })
        .collect()
}

/// Pixels that differ between two same-sized frames (any channel by more than `tolerance`),
/// grown by `grow` pixels in every direction: the region an edit was meant to change, from two
/// consecutive reference frames (grown so anti-aliased edges and a slightly misplaced shape
/// count as edited, not as damage).
pub fn changed_region(
    a: &RgbImage,
    b: &RgbImage,
    tolerance: u8,
    grow: u32,
) -> Result<Vec<bool>, SizeMismatch> {
    same_size(a, b)?;
    let (w, h) = a.dimensions();
    let changed: Vec<bool> = a
        .pixels()
        .zip(b.pixels())
        .map(|(p, q)| p.0.iter().zip(q.0).any(|(&x, y)| x.abs_diff(y) > tolerance))
        .collect();
    let g = grow as i64;
    let mut grown = vec![false; changed.len()];
    for y in 0..i64::from(h) {
        for x in 0..i64::from(w) {
            if !changed[(y * i64::from(w) + x) as usize] {
                continue;
            }
            for yy in (y - g).max(0)..=(y + g).min(i64::from(h) - 1) {
                for xx in (x - g).max(0)..=(x + g).min(i64::from(w) - 1) {
                    grown[(yy * i64::from(w) + xx) as usize] = true;
                }
            }
        }
    }
    Ok(grown)
}

/// PSNR in dB over the RGB samples of the pixels outside `region` (one flag per pixel,
/// row-major); `None` when the region covers the whole frame.
pub fn psnr_outside(
    a: &RgbImage,
    b: &RgbImage,
    region: &[bool],
) -> Result<Option<f64>, SizeMismatch> {
    same_size(a, b)?;
    let (mut se, mut n) = (0.0f64, 0usize);
    for ((p, q), &inside) in a.pixels().zip(b.pixels()).zip(region) {
        if inside {
            continue;
        }
        for (&x, &y) in p.0.iter().zip(&q.0) {
            se += (f64::from(x) - f64::from(y)).powi(2);
            n += 1;
        }
    }
    Ok(match n {
        0 => None,
        _ if se == 0.0 => Some(f64::INFINITY),
        _ => Some(10.0 * (L * L / (se / n as f64)).log10()),
    })
}

/// One turn measured against a storyboard's reference frames.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ReferenceDrift {
    /// Output vs the exact frame this turn should produce.
    pub psnr_reference: f64,
    /// Output vs the previous output (the turn's input), outside the region the turn's
    /// instruction changes: what the edit damaged that it should have left alone.
    pub psnr_preserved: Option<f64>,
    /// Share of the frame inside that region.
    pub edited_share: f64,
}

/// Per turn i: `outputs[i]` against `references[i]`, and against `previous[i]` outside the region
/// where `references[i]` differs from the reference before it (`start` for the first turn: the
/// storyboard's input, or the first reference when the chain starts from text).
pub fn reference_drift(
    start: &RgbImage,
    references: &[RgbImage],
    outputs: &[RgbImage],
) -> Result<Vec<ReferenceDrift>, SizeMismatch> {
    let mut out = Vec::with_capacity(outputs.len());
    for (i, (output, reference)) in outputs.iter().zip(references).enumerate() {
        let (ref_before, prev_output) = match i {
            0 => (start, start),
            _ => (&references[i - 1], &outputs[i - 1]),
        };
        let region = changed_region(ref_before, reference, 24, 2)?;
        let edited = region.iter().filter(|&&r| r).count();
        out.push(ReferenceDrift {
            psnr_reference: psnr(output, reference)?,
            psnr_preserved: psnr_outside(output, prev_output, &region)?,
            edited_share: edited as f64 / region.len().max(1) as f64,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic textured image (an LCG), so SSIM sees structure.
    fn texture(w: u32, h: u32, seed: u32) -> RgbImage {
        let mut s = seed;
        RgbImage::from_fn(w, h, |_, _| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let v = (s >> 24) as u8;
            image::Rgb([v, v / 2, 255 - v])
        })
    }

    fn with_noise(img: &RgbImage, amount: i32, seed: u32) -> RgbImage {
        let mut s = seed;
        let mut out = img.clone();
        for p in out.pixels_mut() {
            for c in p.0.iter_mut() {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let d = (s >> 16) as i32 % (2 * amount + 1) - amount;
                *c = (i32::from(*c) + d).clamp(0, 255) as u8;
            }
        }
        out
    }

    #[test]
    fn psnr_of_a_known_error() {
        let a = RgbImage::from_pixel(8, 8, image::Rgb([100, 100, 100]));
        let b = RgbImage::from_pixel(8, 8, image::Rgb([110, 110, 110]));
        // MSE 100 → 10·log10(255²/100) = 28.1308 dB.
        assert!((psnr(&a, &b).expect("psnr") - 28.130_803_6).abs() < 1e-6);
        assert_eq!(psnr(&a, &a).expect("psnr"), f64::INFINITY);
    }

    #[test]
    fn ssim_is_one_for_identical_images_and_falls_with_noise() {
        let a = texture(48, 40, 1);
        assert!((ssim(&a, &a).expect("ssim") - 1.0).abs() < 1e-12);
        let light = with_noise(&a, 8, 2);
        let heavy = with_noise(&a, 64, 3);
        let (s_light, s_heavy) = (
            ssim(&a, &light).expect("ssim"),
            ssim(&a, &heavy).expect("ssim"),
        );
        assert!(s_light < 1.0 && s_heavy < s_light, "{s_light} {s_heavy}");
        assert!(
            (ssim(&light, &a).expect("ssim") - s_light).abs() < 1e-12,
            "symmetric"
        );
        let unrelated = ssim(&a, &texture(48, 40, 9)).expect("ssim");
        assert!(unrelated.abs() < 0.2, "{unrelated}");
    }

    #[test]
    fn ssim_of_a_flat_shift_is_the_luminance_term() {
        // Flat images: no variance, so SSIM = (2·μx·μy + C1) / (μx² + μy² + C1).
        let a = RgbImage::from_pixel(16, 16, image::Rgb([100, 100, 100]));
        let b = RgbImage::from_pixel(16, 16, image::Rgb([120, 120, 120]));
        let c1 = (0.01f64 * 255.0).powi(2);
        let want = (2.0 * 100.0 * 120.0 + c1) / (100.0f64.powi(2) + 120.0f64.powi(2) + c1);
        assert!((ssim(&a, &b).expect("ssim") - want).abs() < 1e-9);
    }

    #[test]
    fn drift_compares_each_frame_with_the_previous_and_the_first() {
        let f0 = texture(32, 32, 1);
        let f1 = with_noise(&f0, 10, 2);
        let f2 = with_noise(&f1, 10, 3);
        let d = drift(&[f0.clone(), f1.clone(), f2.clone()]).expect("drift");
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].psnr_prev, d[0].psnr_first);
        assert!(d[1].ssim_first < d[1].ssim_prev, "{d:?}");
        assert!(drift(&[f0, texture(16, 16, 1)]).is_err());
    }

    #[test]
    fn reference_drift_separates_the_edit_from_the_damage() {
        let white = RgbImage::from_pixel(16, 16, image::Rgb([255, 255, 255]));
        // The reference turns a 4x4 block red; the output does that and also darkens a far
        // corner pixel (damage outside the edit).
        let mut reference = white.clone();
        for y in 4..8 {
            for x in 4..8 {
                reference.put_pixel(x, y, image::Rgb([255, 0, 0]));
            }
        }
        let region = changed_region(&white, &reference, 24, 2).expect("same size");
        assert_eq!(
            region.iter().filter(|&&r| r).count(),
            8 * 8,
            "4x4 grown by 2"
        );
        let mut output = reference.clone();
        output.put_pixel(15, 15, image::Rgb([245, 255, 255]));
        let d = reference_drift(&white, std::slice::from_ref(&reference), &[output])
            .expect("same size");
        // One sample off by 10 among (256 - 64) * 3 preserved samples.
        let want = 10.0 * (255.0f64 * 255.0 / (100.0 / (192.0 * 3.0))).log10();
        let preserved = d[0].psnr_preserved.expect("some pixels are outside");
        assert!((preserved - want).abs() < 1e-9, "{preserved} vs {want}");
        assert!((d[0].edited_share - 0.25).abs() < 1e-12);
        let exact = 10.0 * (255.0f64 * 255.0 / (100.0 / (256.0 * 3.0))).log10();
        assert!((d[0].psnr_reference - exact).abs() < 1e-9);
    }
}
