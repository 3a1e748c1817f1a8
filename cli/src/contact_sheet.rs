//! A contact sheet: every frame of a storyboard, in order, left to right and top to bottom, on
//! one PNG, each cell scaled (never up) to fit `cell` pixels, with a gap between cells.

use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};

/// Gap between cells and around the sheet, in pixels.
const GAP: u32 = 8;
const BACKGROUND: Rgb<u8> = Rgb([32, 32, 32]);

/// Lays `frames` out in `columns` columns (at least 1) of cells at most `cell × cell` pixels.
pub fn contact_sheet(frames: &[RgbImage], columns: usize, cell: u32) -> RgbImage {
    let columns = columns.clamp(1, frames.len().max(1));
    let rows = frames.len().div_ceil(columns).max(1);
    let (cw, ch) = frames.iter().fold((1u32, 1u32), |(w, h), f| {
        let (fw, fh) = fitted(f.width(), f.height(), cell);
        (w.max(fw), h.max(fh))
    });
    let width = GAP + columns as u32 * (cw + GAP);
    let height = GAP + rows as u32 * (ch + GAP);
    let mut sheet = RgbImage::from_pixel(width, height, BACKGROUND);
    for (i, frame) in frames.iter().enumerate() {
        let (fw, fh) = fitted(frame.width(), frame.height(), cell);
        let thumb = if (fw, fh) == frame.dimensions() {
            frame.clone()
        } else {
            imageops::resize(frame, fw, fh, FilterType::Triangle)
        };
        let (col, row) = ((i % columns) as u32, (i / columns) as u32);
        // Centred in its cell.
        let x = GAP + col * (cw + GAP) + (cw - fw) / 2;
        let y = GAP + row * (ch + GAP) + (ch - fh) / 2;
        imageops::replace(&mut sheet, &thumb, i64::from(x), i64::from(y));
    }
    sheet
}

/// `w × h` scaled down (keeping the aspect ratio) to fit `cell × cell`; never scaled up.
fn fitted(w: u32, h: u32, cell: u32) -> (u32, u32) {
    let longest = w.max(h).max(1);
    if longest <= cell {
        return (w.max(1), h.max(1));
    }
    let scale = f64::from(cell) / f64::from(longest);
    let fit = |v: u32| ((f64::from(v) * scale).round() as u32).max(1);
    (fit(w), fit(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_laid_out_in_order() {
        let colors = [[255, 0, 0], [0, 255, 0], [0, 0, 255]];
        let frames: Vec<RgbImage> = colors
            .iter()
            .map(|c| RgbImage::from_pixel(64, 48, Rgb(*c)))
            .collect();
        let sheet = contact_sheet(&frames, 2, 256);
        assert_eq!(
            sheet.dimensions(),
            (GAP + 2 * (64 + GAP), GAP + 2 * (48 + GAP))
        );
        let at = |x: u32, y: u32| sheet.get_pixel(x, y).0;
        assert_eq!(at(GAP + 1, GAP + 1), [255, 0, 0]);
        assert_eq!(at(2 * GAP + 64 + 1, GAP + 1), [0, 255, 0]);
        assert_eq!(at(GAP + 1, 2 * GAP + 48 + 1), [0, 0, 255]);
        assert_eq!(
            at(2 * GAP + 64 + 1, 2 * GAP + 48 + 1),
            BACKGROUND.0,
            "empty cell"
        );
    }

    #[test]
    fn large_frames_are_scaled_to_the_cell() {
        let frames = vec![RgbImage::from_pixel(1024, 512, Rgb([9, 9, 9]))];
        let sheet = contact_sheet(&frames, 4, 256);
        assert_eq!(sheet.dimensions(), (256 + 2 * GAP, 128 + 2 * GAP));
        assert_eq!(fitted(10, 10, 256), (10, 10), "never scaled up");
    }
}
