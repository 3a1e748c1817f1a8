//! A finished generation → stored objects: the image encoded as PNG or JPEG and, when the job
//! asks for it, the packed output latent as safetensors, each under this attempt's own key
//! (`out/<tenant>/<job>/<epoch>.<ext>`), so an attempt never overwrites another attempt's output
//! and the queue's commit alone decides which attempt is the result.

use std::time::{Duration, Instant};

use bytes::Bytes;
use image::ImageEncoder;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use kontext_proto::{JobError, JobErrorKind, JobId, OutputFormat};
use kontext_storage::keys::{output_key, output_latent_key};
use kontext_storage::{BlobStore, ObjectKey};

use crate::inputs::storage_error;
use crate::latents;

/// JPEG quality of `output_format: jpeg` results.
const JPEG_QUALITY: u8 = 92;
/// Content type of stored latents.
const LATENT_CONTENT_TYPE: &str = "application/octet-stream";

fn fatal(msg: String) -> JobError {
    JobError::new(JobErrorKind::Fatal, msg)
}

/// Encodes `image` in `format`.
pub fn encode_image(image: &image::RgbImage, format: OutputFormat) -> Result<Vec<u8>, JobError> {
    let (w, h) = image.dimensions();
    let mut buf = Vec::with_capacity(image.as_raw().len() / 2);
    let written =
        match format {
            // Fast deflate: still lossless, and several times quicker than the default level, which
            // matters for the per-job overhead at small sizes.
            OutputFormat::Png => {
                PngEncoder::new_with_quality(&mut buf, CompressionType::Fast, FilterType::Adaptive)
                    .write_image(image.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            }
            OutputFormat::Jpeg => JpegEncoder::new_with_quality(&mut buf, JPEG_QUALITY)
                .write_image(image.as_raw(), w, h, image::ExtendedColorType::Rgb8),
        };
    written.map_err(|e| fatal(format!("encoding the {} result: {e}", format.extension())))?;
    Ok(buf)
}

/// The objects one attempt produced, ready to upload.
pub struct Outputs {
    pub image_key: ObjectKey,
    pub image: Bytes,
    pub format: OutputFormat,
    pub latent: Option<(ObjectKey, Bytes)>,
}

impl Outputs {
    /// Encodes the image (and latent) for attempt `epoch` of `job` on a blocking thread.
    pub async fn encode(
        tenant: &str,
        job: JobId,
        epoch: u64,
        format: OutputFormat,
        image: image::RgbImage,
        packed_latent: Option<(Vec<f32>, usize)>,
    ) -> Result<Self, JobError> {
        let key_error = |e: kontext_storage::KeyError| fatal(format!("result key: {e}"));
        let image_key = output_key(tenant, job, epoch, format).map_err(key_error)?;
        let latent_key = match &packed_latent {
            Some(_) => Some(output_latent_key(tenant, job, epoch).map_err(key_error)?),
            None => None,
        };
        let (image, latent) = tokio::task::spawn_blocking(move || {
            let image = encode_image(&image, format)?;
            let latent = match packed_latent {
                Some((data, features)) => Some(
                    latents::encode(&data, features)
                        .map_err(|e| fatal(format!("encoding the output latent: {e}")))?,
                ),
                None => None,
            };
            Ok::<_, JobError>((image, latent))
        })
        .await
        .map_err(|e| fatal(format!("encode task: {e}")))??;
        Ok(Self {
            image_key,
            image: Bytes::from(image),
            format,
            latent: latent_key.zip(latent.map(Bytes::from)),
        })
    }

    /// Stores every object, retrying transient failures for up to `UPLOAD_PATIENCE`; a failure
    /// is transient unless the key itself is refused.
    pub async fn upload<S: BlobStore>(&self, store: &S) -> Result<(), JobError> {
        put_patiently(
            store,
            &self.image_key,
            &self.image,
            self.format.content_type(),
        )
        .await?;
        if let Some((key, bytes)) = &self.latent {
            put_patiently(store, key, bytes, LATENT_CONTENT_TYPE).await?;
        }
        Ok(())
    }

    /// Removes what `upload` stored (the commit found the lease stale: nobody will point at it).
    pub async fn delete<S: BlobStore>(&self, store: &S) -> usize {
        let mut deleted = 0;
        let latent = self.latent.as_ref().map(|(k, _)| k);
        for key in std::iter::once(&self.image_key).chain(latent) {
            match store.delete(key).await {
                Ok(()) => deleted += 1,
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "could not delete an orphan result")
                }
            }
        }
        deleted
    }

    pub fn latent_key(&self) -> Option<ObjectKey> {
        self.latent.as_ref().map(|(k, _)| k.clone())
    }
}

/// How long an upload keeps retrying a store that fails transiently (an S3 outage, a restart):
/// the image is already rendered, and rendering it again costs far more GPU time than waiting.
/// The lease is renewed meanwhile; a lease lost during the wait ends in a refused commit.
pub const UPLOAD_PATIENCE: Duration = Duration::from_secs(60);
/// First pause between upload tries; doubles up to `UPLOAD_RETRY_CAP`.
const UPLOAD_RETRY: Duration = Duration::from_millis(200);
const UPLOAD_RETRY_CAP: Duration = Duration::from_secs(5);

async fn put_patiently<S: BlobStore>(
    store: &S,
    key: &ObjectKey,
    bytes: &Bytes,
    content_type: &str,
) -> Result<(), JobError> {
    let started = Instant::now();
    let mut pause = UPLOAD_RETRY;
    loop {
        let e = match store.put(key, bytes.clone(), content_type).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let err = upload_error(key, &e);
        if err.kind != JobErrorKind::Transient || started.elapsed() + pause > UPLOAD_PATIENCE {
            return Err(err);
        }
        tracing::warn!(key = %key, error = %e, retry_in = ?pause, "upload failed; retrying");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(UPLOAD_RETRY_CAP);
    }
}

fn upload_error(key: &ObjectKey, e: &kontext_storage::StorageError) -> JobError {
    let mut err = storage_error(&format!("uploading {key}"), e);
    // A missing object cannot be the cause of a failed put; whatever it was, retry elsewhere.
    if err.kind == JobErrorKind::InvalidInput
        && !matches!(e, kontext_storage::StorageError::InvalidKey(_))
    {
        err.kind = JobErrorKind::Transient;
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_and_jpeg_decode_back_to_the_size() {
        let img =
            image::RgbImage::from_fn(48, 32, |x, y| image::Rgb([x as u8 * 5, y as u8 * 7, 90]));
        let png = encode_image(&img, OutputFormat::Png).expect("png");
        let back = image::load_from_memory(&png).expect("decodable").to_rgb8();
        assert_eq!(back, img, "PNG is lossless");
        let jpeg = encode_image(&img, OutputFormat::Jpeg).expect("jpeg");
        assert_eq!(
            image::guess_format(&jpeg).expect("known format"),
            image::ImageFormat::Jpeg
        );
        assert_eq!(
            image::load_from_memory(&jpeg).expect("decodable").width(),
            48
        );
    }
}
