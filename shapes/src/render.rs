//! Exact rendering: every pixel is the background blended with each shape by its coverage,
//! measured with 4×4 supersampling. Shapes sit in distinct grid cells and never overlap, so the
//! image is a pure function of (scene, width, height), the same on every machine.

use image::RgbImage;

use crate::world::{Object, Position, Scene, Shape};

/// Subsamples per pixel side.
const SUPERSAMPLE: u32 = 4;

/// Centre and radius, in pixels, of an object in a `width × height` image.
pub fn placement(obj: &Object, width: u32, height: u32) -> (f64, f64, f64) {
    let (cx, cy) = cell_centre(obj.position, width, height);
    let cell = f64::from(width.min(height)) / 3.0;
    (cx, cy, obj.size.radius_in_cells() * cell)
}

/// Centre of a grid cell in pixels.
pub fn cell_centre(p: Position, width: u32, height: u32) -> (f64, f64) {
    let cw = f64::from(width) / 3.0;
    let ch = f64::from(height) / 3.0;
    (
        (f64::from(p.col()) + 0.5) * cw,
        (f64::from(p.row()) + 0.5) * ch,
    )
}

/// Pixel bounds `(x0, y0, x1, y1)` (exclusive ends) of a grid cell.
pub fn cell_bounds(p: Position, width: u32, height: u32) -> (u32, u32, u32, u32) {
    let x0 = u32::from(p.col()) * width / 3;
    let x1 = (u32::from(p.col()) + 1) * width / 3;
    let y0 = u32::from(p.row()) * height / 3;
    let y1 = (u32::from(p.row()) + 1) * height / 3;
    (x0, y0, x1, y1)
}

/// Whether the unit-radius shape contains the point `(x, y)` (y grows downwards).
pub fn contains(shape: Shape, x: f64, y: f64) -> bool {
    match shape {
        Shape::Circle => x * x + y * y <= 1.0,
        Shape::Square => x.abs() <= 0.88 && y.abs() <= 0.88,
        Shape::Triangle => in_polygon(&triangle(), x, y),
        Shape::Star => in_polygon(&star(), x, y),
    }
}

/// Upward equilateral triangle, circumradius 1.25, shifted so its bounding box is centred.
fn triangle() -> Vec<(f64, f64)> {
    let r = 1.25;
    let shift = r / 4.0;
    [-90.0_f64, 30.0, 150.0]
        .iter()
        .map(|deg| {
            let a = deg.to_radians();
            (r * a.cos(), r * a.sin() + shift)
        })
        .collect()
}

/// Five-pointed star, outer radius 1.2, inner 0.5, one point up, bounding box centred.
fn star() -> Vec<(f64, f64)> {
    let (outer, inner) = (1.2, 0.5);
    let shift = (outer - outer * 36.0_f64.to_radians().cos()) / 2.0;
    (0..10)
        .map(|i| {
            let r = if i % 2 == 0 { outer } else { inner };
            let a = (-90.0 + 36.0 * f64::from(i)).to_radians();
            (r * a.cos(), r * a.sin() + shift)
        })
        .collect()
}

/// Even-odd rule.
fn in_polygon(poly: &[(f64, f64)], x: f64, y: f64) -> bool {
    let mut inside = false;
    let mut j = poly.len() - 1;
    for i in 0..poly.len() {
        let (xi, yi) = poly[i];
        let (xj, yj) = poly[j];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Coverage in [0, 1] of one object per pixel, row-major `width × height`.
pub fn coverage(obj: &Object, width: u32, height: u32) -> Vec<f32> {
    let (cx, cy, r) = placement(obj, width, height);
    let mut out = vec![0.0_f32; (width * height) as usize];
    // Only the pixels of the bounding square can be covered.
    let reach = 1.3 * r;
    let x0 = ((cx - reach).floor().max(0.0)) as u32;
    let x1 = ((cx + reach).ceil() as u32).min(width);
    let y0 = ((cy - reach).floor().max(0.0)) as u32;
    let y1 = ((cy + reach).ceil() as u32).min(height);
    let n = SUPERSAMPLE;
    for py in y0..y1 {
        for px in x0..x1 {
            let mut hits = 0u32;
            for sy in 0..n {
                for sx in 0..n {
                    let x = f64::from(px) + (f64::from(sx) + 0.5) / f64::from(n);
                    let y = f64::from(py) + (f64::from(sy) + 0.5) / f64::from(n);
                    if contains(obj.shape, (x - cx) / r, (y - cy) / r) {
                        hits += 1;
                    }
                }
            }
            out[(py * width + px) as usize] = hits as f32 / (n * n) as f32;
        }
    }
    out
}

/// The scene as an RGB image.
pub fn render(scene: &Scene, width: u32, height: u32) -> RgbImage {
    let bg = scene.background.rgb().map(f32::from);
    let mut acc: Vec<[f32; 3]> = vec![bg; (width * height) as usize];
    for obj in &scene.objects {
        let col = obj.colour.rgb().map(f32::from);
        for (px, cov) in acc.iter_mut().zip(coverage(obj, width, height)) {
            if cov > 0.0 {
                for c in 0..3 {
                    px[c] += cov * (col[c] - bg[c]);
                }
            }
        }
    }
    let mut img = RgbImage::new(width, height);
    for (dst, src) in img.pixels_mut().zip(acc) {
        dst.0 = src.map(|v| v.round().clamp(0.0, 255.0) as u8);
    }
    img
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::world::{Background, Colour, Size};

    fn obj(shape: Shape, size: Size, pos: u8) -> Object {
        Object {
            shape,
            colour: Colour::Red,
            size,
            position: Position::try_from(pos).unwrap(),
        }
    }

    #[test]
    fn shapes_stay_inside_their_cell() {
        for shape in Shape::ALL {
            for pos in 0..9 {
                let o = obj(shape, Size::Large, pos);
                let cov = coverage(&o, 96, 96);
                let (x0, y0, x1, y1) = cell_bounds(o.position, 96, 96);
                for (i, c) in cov.iter().enumerate() {
                    let (x, y) = ((i % 96) as u32, (i / 96) as u32);
                    if *c > 0.0 {
                        assert!(x >= x0 && x < x1 && y >= y0 && y < y1, "{shape:?} leaks");
                    }
                }
            }
        }
    }

    #[test]
    fn large_shapes_cover_about_three_times_the_small_area() {
        for shape in Shape::ALL {
            let area = |s| coverage(&obj(shape, s, 4), 96, 96).iter().sum::<f32>();
            let ratio = area(Size::Large) / area(Size::Small);
            assert!((2.4..3.6).contains(&ratio), "{shape:?}: {ratio}");
        }
    }

    #[test]
    fn shapes_have_distinct_silhouettes() {
        let masks: Vec<Vec<f32>> = Shape::ALL
            .iter()
            .map(|s| coverage(&obj(*s, Size::Large, 4), 96, 96))
            .collect();
        for i in 0..4 {
            for j in i + 1..4 {
                let inter: f32 = masks[i].iter().zip(&masks[j]).map(|(a, b)| a.min(*b)).sum();
                let union: f32 = masks[i].iter().zip(&masks[j]).map(|(a, b)| a.max(*b)).sum();
                assert!(inter / union < 0.86, "{i} vs {j}: IoU {}", inter / union);
            }
        }
    }

    #[test]
    fn rendering_is_deterministic_and_blends_edges() {
        let scene = Scene {
            background: Background::White,
            objects: vec![obj(Shape::Circle, Size::Large, 0)],
        };
        let a = render(&scene, 64, 64);
        let b = render(&scene, 64, 64);
        assert_eq!(a, b);
        let bg = Background::White.rgb();
        let red = Colour::Red.rgb();
        let centre = a.get_pixel(10, 10).0;
        assert_eq!(centre, red);
        assert_eq!(a.get_pixel(40, 40).0, bg);
        let partial = a.pixels().filter(|p| p.0 != bg && p.0 != red).count();
        assert!(partial > 10, "anti-aliased edge pixels: {partial}");
    }
}
