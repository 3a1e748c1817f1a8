//! From a claimed job's spec to an `EngineRequest`: the context image (or a carried context
//! latent) and optional initial latents are read from the blob store and decoded here. Every
//! failure becomes a `JobError` whose kind decides whether the queue retries: a missing or
//! undecodable input is the job's fault (`InvalidInput`, never retried); any other storage failure
//! is the environment's (`Transient`, retried with backoff, possibly on another worker).

use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;
use kontext_engine::cache::{ByteLru, CacheCounters};
use kontext_engine::lora::LoraInput;
use kontext_proto::resolution::{PREFERRED_KONTEXT_RESOLUTIONS, context_size};
use kontext_proto::{JobError, JobErrorKind, ValidJobSpec};
use kontext_storage::{BlobStore, ObjectKey, StorageError};

use crate::latents;
use kontext_engine::{Context, EngineRequest, ReferencePositions, References};

/// Bytes of LoRA files kept between jobs, so a LoRA many jobs use is read from storage once.
const LORA_FILE_CACHE_BYTES: usize = 1 << 30;

static LORA_FILE_COUNTERS: CacheCounters = CacheCounters::new();

/// LoRA files by object key. The keys are content-addressed, so an entry is never stale.
static LORA_FILES: LazyLock<Mutex<ByteLru<Arc<[u8]>>>> =
    LazyLock::new(|| Mutex::new(ByteLru::new(LORA_FILE_CACHE_BYTES, &LORA_FILE_COUNTERS)));

/// The job's LoRA files, from the cache or the store.
async fn lora_inputs<S: BlobStore>(
    store: &S,
    spec: &ValidJobSpec,
) -> Result<Vec<LoraInput>, JobError> {
    let mut out = Vec::with_capacity(spec.loras.len());
    for (i, lora) in spec.loras.iter().enumerate() {
        let id = lora.key.as_str().to_owned();
        let cached = LORA_FILES
            .lock()
            .map_err(|_| JobError::new(JobErrorKind::Fatal, "LoRA file cache poisoned"))?
            .get(&id);
        let bytes = match cached {
            Some(bytes) => bytes,
            None => {
                let fetched = fetch(store, &lora.key, &format!("loras[{i}]")).await?;
                let bytes: Arc<[u8]> = Arc::from(fetched.as_ref());
                if let Ok(mut files) = LORA_FILES.lock() {
                    files.insert(id.clone(), bytes.clone(), bytes.len());
                }
                bytes
            }
        };
        out.push(LoraInput {
            id,
            bytes,
            scale: lora.scale,
        });
    }
    Ok(out)
}

/// Context area used when an old record lacks a resolved context size (`keep` mode only).
const FALLBACK_CONTEXT_PIXELS: u64 = 1024 * 1024;

/// The job error for a failed storage call about `what` (e.g. `input_image in/t/ab.png`).
pub fn storage_error(what: &str, e: &StorageError) -> JobError {
    let kind = if e.is_not_found() || matches!(e, StorageError::InvalidKey(_)) {
        JobErrorKind::InvalidInput
    } else {
        JobErrorKind::Transient
    };
    JobError::new(kind, format!("{what}: {e}"))
}

async fn fetch<S: BlobStore>(store: &S, key: &ObjectKey, field: &str) -> Result<Bytes, JobError> {
    let what = format!("{field} {key}");
    store
        .get(key)
        .await
        .map(|blob| blob.bytes)
        .map_err(|e| storage_error(&what, &e))
}

fn invalid(msg: String) -> JobError {
    JobError::new(JobErrorKind::InvalidInput, msg)
}

/// Decodes on a blocking thread: a large PNG takes long enough to stall the runtime.
async fn decode_image(bytes: Bytes, what: String) -> Result<image::RgbImage, JobError> {
    tokio::task::spawn_blocking(move || {
        image::load_from_memory(&bytes)
            .map(|img| img.to_rgb8())
            .map_err(|e| invalid(format!("{what}: cannot decode the image: {e}")))
    })
    .await
    .map_err(|e| JobError::new(JobErrorKind::Fatal, format!("image decode task: {e}")))?
}

fn decode_latents(bytes: &[u8], what: &str) -> Result<Vec<f32>, JobError> {
    latents::decode(bytes).map_err(|e| invalid(format!("{what}: {e}")))
}

/// Everything the engine needs for `spec`, with inputs fetched from `store`.
pub async fn engine_request<S: BlobStore>(
    store: &S,
    spec: &ValidJobSpec,
) -> Result<EngineRequest, JobError> {
    let context = match (&spec.input_latent_key, &spec.input) {
        (Some(key), input) => {
            let bytes = fetch(store, key, "input_latent").await?;
            let data = decode_latents(&bytes, &format!("input_latent {key}"))?;
            let (width, height) = match (spec.context_width, spec.context_height, input) {
                (Some(w), Some(h), _) => (w, h),
                (_, _, Some(img)) => (img.width, img.height),
                _ => {
                    return Err(invalid(
                        "input_latent needs a context size (context_width/context_height)".into(),
                    ));
                }
            };
            Some(Context::PackedLatent {
                data,
                width,
                height,
            })
        }
        (None, Some(input)) => {
            let bytes = fetch(store, &input.key, "input_image").await?;
            let image = decode_image(bytes, format!("input_image {}", input.key)).await?;
            let (width, height) = match (spec.context_width, spec.context_height) {
                (Some(w), Some(h)) => (w, h),
                _ => context_size(
                    image.width(),
                    image.height(),
                    spec.resize,
                    FALLBACK_CONTEXT_PIXELS,
                    &PREFERRED_KONTEXT_RESOLUTIONS,
                ),
            };
            Some(Context::Image {
                image,
                width,
                height,
                // Content-addressed keys: the same key is the same image, so the engine may reuse
                // its encoded context latents (multi-turn edits of one image).
                cache_key: Some(input.key.as_str().to_owned()),
            })
        }
        (None, None) => None,
    };
    let mut contexts: Vec<Context> = context.into_iter().collect();
    for (i, reference) in spec.more_references.iter().enumerate() {
        let what = format!("input_images[{}] {}", i + 1, reference.image.key);
        let bytes = fetch(store, &reference.image.key, "input_images").await?;
        let image = decode_image(bytes, what).await?;
        contexts.push(Context::Image {
            image,
            width: reference.context_width,
            height: reference.context_height,
            // Each reference has its own cache entry: content-addressed keys again.
            cache_key: Some(reference.image.key.as_str().to_owned()),
        });
    }
    let initial_latents = match &spec.initial_latents_key {
        Some(key) => {
            let bytes = fetch(store, key, "initial_latents").await?;
            Some(decode_latents(&bytes, &format!("initial_latents {key}"))?)
        }
        None => None,
    };
    Ok(EngineRequest {
        prompt: spec.prompt.clone(),
        references: References {
            contexts,
            positions: match spec.reference_positions {
                kontext_proto::job::ReferencePositions::Offset => ReferencePositions::Offset,
                kontext_proto::job::ReferencePositions::Index => ReferencePositions::Index,
            },
        },
        width: spec.width,
        height: spec.height,
        steps: spec.steps,
        guidance: spec.guidance,
        seed: spec.seed,
        initial_latents,
        want_latent: spec.keep_latent,
        caching: step_caching(spec.acceleration),
        loras: lora_inputs(store, spec).await?,
    })
}

/// The engine's step caching for a job's `acceleration` (the engine does not know proto's types).
pub fn step_caching(level: kontext_proto::Acceleration) -> kontext_engine::flux::StepCaching {
    use kontext_engine::flux::Acceleration as Engine;
    let level = match level {
        kontext_proto::Acceleration::None => Engine::None,
        kontext_proto::Acceleration::Regular => Engine::Regular,
        kontext_proto::Acceleration::High => Engine::High,
    };
    level.caching()
}
