//! Input images, checked before anything is stored: byte size, then the dimensions read from the
//! header alone, then a full decode under `image::Limits`. So a PNG whose header claims
//! 50,000×50,000 is refused before a single pixel buffer is allocated (no decompression bombs), and
//! a truncated or corrupt file is refused here rather than crashing a worker later.
//!
//! PNG and JPEG are kept as sent (content-addressed by their bytes); WebP is re-encoded as PNG
//! (lossless), so workers only ever decode PNG and JPEG.

use std::io::Cursor;

use bytes::Bytes;
use image::{ImageFormat, ImageReader};

/// Bounds on one input image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    pub max_bytes: u64,
    pub max_pixels: u64,
    pub max_side: u32,
}

/// An image that passed every check, in a format workers decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedImage {
    pub bytes: Bytes,
    /// `png` or `jpeg`.
    pub extension: &'static str,
    pub content_type: &'static str,
    pub width: u32,
    pub height: u32,
}

/// Why an image was refused. Messages name the limit; the caller adds the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("is {bytes} bytes; the limit is {limit} bytes")]
    TooManyBytes { bytes: u64, limit: u64 },
    #[error("is not a PNG, JPEG or WebP image")]
    NotAnImage,
    #[error("is a {0} image; only PNG, JPEG and WebP are accepted")]
    Unsupported(String),
    #[error("is {width}x{height} = {pixels} pixels; the limit is {limit} pixels")]
    TooManyPixels {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    #[error("is {width}x{height}; the longest side may be {limit} pixels")]
    SideTooLong { width: u32, height: u32, limit: u32 },
    #[error("could not be decoded: {0}")]
    Corrupt(String),
}

impl ImageError {
    /// The broken bound in the `limit` field's notation, when there is one.
    pub fn limit(&self) -> Option<String> {
        match self {
            Self::TooManyBytes { limit, .. } => Some(format!("..={limit} bytes")),
            Self::TooManyPixels { limit, .. } => Some(format!("..={limit} pixels")),
            Self::SideTooLong { limit, .. } => Some(format!("..={limit} pixels per side")),
            Self::NotAnImage | Self::Unsupported(_) => Some("png|jpeg|webp".into()),
            Self::Corrupt(_) => None,
        }
    }
}

/// Run every check on `bytes`; CPU-bound (a full decode), so call it from `spawn_blocking`.
pub fn check_image(bytes: Bytes, limits: &ImageLimits) -> Result<CheckedImage, ImageError> {
    let len = bytes.len() as u64;
    if len > limits.max_bytes {
        return Err(ImageError::TooManyBytes {
            bytes: len,
            limit: limits.max_bytes,
        });
    }
    let format = sniff(&bytes)?;
    let (width, height) = dimensions(&bytes, format)?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(ImageError::TooManyPixels {
            width,
            height,
            pixels,
            limit: limits.max_pixels,
        });
    }
    if width > limits.max_side || height > limits.max_side {
        return Err(ImageError::SideTooLong {
            width,
            height,
            limit: limits.max_side,
        });
    }

    let mut decode_limits = image::Limits::default();
    decode_limits.max_image_width = Some(limits.max_side);
    decode_limits.max_image_height = Some(limits.max_side);
    // 16 bytes per pixel covers the widest buffer a decoder may use (RGBA, 32-bit float).
    decode_limits.max_alloc = Some(pixels.saturating_mul(16).saturating_add(1 << 20));
    let mut decoder = reader(&bytes, format);
    decoder.limits(decode_limits);
    let image = decoder
        .decode()
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;

    match format {
        ImageFormat::Png => Ok(checked(bytes, "png", "image/png", width, height)),
        ImageFormat::Jpeg => Ok(checked(bytes, "jpeg", "image/jpeg", width, height)),
        _ => {
            let mut png = Vec::new();
            image
                .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
                .map_err(|e| ImageError::Corrupt(format!("re-encoding as PNG failed: {e}")))?;
            Ok(checked(Bytes::from(png), "png", "image/png", width, height))
        }
    }
}

/// Dimensions from the header only (for objects already stored, which passed `check_image`).
pub fn header_dimensions(bytes: &[u8]) -> Result<(u32, u32), ImageError> {
    dimensions(bytes, sniff(bytes)?)
}

/// Width and height from the header. PNG's come straight from the IHDR chunk (the `png` crate
/// reads on to the first IDAT before it reports them, which a hostile header need not have).
fn dimensions(bytes: &[u8], format: ImageFormat) -> Result<(u32, u32), ImageError> {
    if format == ImageFormat::Png {
        return png_ihdr(bytes)
            .ok_or_else(|| ImageError::Corrupt("PNG does not start with an IHDR chunk".into()));
    }
    reader(bytes, format)
        .into_dimensions()
        .map_err(|e| ImageError::Corrupt(e.to_string()))
}

/// IHDR width and height: signature (8 bytes), chunk length (4), "IHDR" (4), width, height.
fn png_ihdr(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.get(12..16)? != b"IHDR" {
        return None;
    }
    let be = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    Some((be(16)?, be(20)?))
}

fn checked(
    bytes: Bytes,
    extension: &'static str,
    content_type: &'static str,
    width: u32,
    height: u32,
) -> CheckedImage {
    CheckedImage {
        bytes,
        extension,
        content_type,
        width,
        height,
    }
}

/// The format from the magic bytes (never from a client's Content-Type).
fn sniff(bytes: &[u8]) -> Result<ImageFormat, ImageError> {
    match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP)) => Ok(f),
        Ok(other) => Err(ImageError::Unsupported(format!("{other:?}"))),
        Err(_) => Err(ImageError::NotAnImage),
    }
}

fn reader(bytes: &[u8], format: ImageFormat) -> ImageReader<Cursor<&[u8]>> {
    ImageReader::with_format(Cursor::new(bytes), format)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, RgbImage};

    const LIMITS: ImageLimits = ImageLimits {
        max_bytes: 1 << 20,
        max_pixels: 256 * 256,
        max_side: 512,
    };

    fn encode(width: u32, height: u32, format: ImageFormat) -> Bytes {
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([x as u8, y as u8, 7])
        }));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), format)
            .expect("encode test image");
        Bytes::from(out)
    }

    /// A PNG signature and an IHDR chunk (with a correct CRC) claiming `width`x`height`, and no
    /// pixel data at all.
    pub(crate) fn png_header_claiming(width: u32, height: u32) -> Vec<u8> {
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        out.extend_from_slice(&13u32.to_be_bytes());
        out.extend_from_slice(&ihdr);
        out.extend_from_slice(&crc32(&ihdr).to_be_bytes());
        out
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn png_and_jpeg_pass_unchanged() {
        for (format, ext) in [(ImageFormat::Png, "png"), (ImageFormat::Jpeg, "jpeg")] {
            let bytes = encode(64, 32, format);
            let checked = check_image(bytes.clone(), &LIMITS).expect("valid image");
            assert_eq!(
                (checked.width, checked.height, checked.extension),
                (64, 32, ext)
            );
            assert_eq!(checked.bytes, bytes);
        }
    }

    #[test]
    fn webp_is_stored_as_png() {
        let webp = encode(48, 16, ImageFormat::WebP);
        let checked = check_image(webp, &LIMITS).expect("valid image");
        assert_eq!(checked.extension, "png");
        assert_eq!(header_dimensions(&checked.bytes), Ok((48, 16)));
    }

    #[test]
    fn a_header_claiming_50000_squared_is_refused_before_decoding() {
        let bomb = png_header_claiming(50_000, 50_000);
        let err = check_image(Bytes::from(bomb), &LIMITS).expect_err("too many pixels");
        assert_eq!(
            err,
            ImageError::TooManyPixels {
                width: 50_000,
                height: 50_000,
                pixels: 2_500_000_000,
                limit: 256 * 256
            }
        );
        assert!(err.to_string().contains("65536 pixels"), "{err}");
    }

    #[test]
    fn long_sides_too_many_bytes_and_garbage_are_refused() {
        let long = encode(600, 8, ImageFormat::Png);
        assert!(matches!(
            check_image(long, &LIMITS),
            Err(ImageError::SideTooLong { limit: 512, .. })
        ));
        let big = Bytes::from(vec![0u8; (1 << 20) + 1]);
        assert!(matches!(
            check_image(big, &LIMITS),
            Err(ImageError::TooManyBytes { .. })
        ));
        assert_eq!(
            check_image(Bytes::from_static(b"hello"), &LIMITS),
            Err(ImageError::NotAnImage)
        );
        let gif = Bytes::from_static(b"GIF89a\x01\x00\x01\x00\x00\x00\x00");
        assert!(matches!(
            check_image(gif, &LIMITS),
            Err(ImageError::Unsupported(_))
        ));
    }

    #[test]
    fn truncated_images_are_refused() {
        let png = encode(64, 64, ImageFormat::Png);
        let cut = png.slice(..png.len() / 2);
        assert!(matches!(
            check_image(cut, &LIMITS),
            Err(ImageError::Corrupt(_))
        ));
        let claimed = png_header_claiming(16, 16);
        assert!(matches!(
            check_image(Bytes::from(claimed), &LIMITS),
            Err(ImageError::Corrupt(_))
        ));
    }
}
