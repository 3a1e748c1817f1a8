//! kontext-engine: FLUX.1 Kontext in candle behind the `Engine` seam.
//!
//! The engine is synchronous and owned by exactly one thread (`thread::EngineThread`); callers
//! talk to it through an async handle. One generic sampling path serves the tiny CPU model, the
//! trained `shapes` model and the 12B CUDA model; only the configuration, dtype and device differ.
//!
//! This crate depends on no crate of ours: the worker maps `EngineError` to the queue's retry
//! semantics, and sizes arrive resolved (multiples of 16) with the limits as configuration.
//!
//! - `pipeline`: `KontextEngine`, the whole pipeline (text → context → Euler loop → decode);
//! - `flux`, `vae`, `text`: the three models; `weights`: model directories in both layouts;
//! - `tiny`: the toy-size model written from a seed; `loader`: a model by name on a device;
//! - `thread`: `EngineThread`, the one thread that owns an engine; `cache`: its LRU caches;
//! - `bench`: the GPU benchmark and bf16 correctness checks (`kontext-worker bench-gpu`).

pub mod bench;
pub mod cache;
pub mod config;
pub mod flux;
pub mod image_ops;
pub mod loader;
pub mod lora;
pub mod model_settings;
pub mod noise;
pub mod pipeline;
pub mod text;
pub mod thread;
pub mod tiny;
pub mod vae;
pub mod weights;

use std::time::Duration;

pub use tiny::TinyError;
pub use weights::WeightsError;

/// What one generation needs. Sizes are resolved (multiples of 16) before they get here.
#[derive(Debug, Clone)]
pub struct EngineRequest {
    pub prompt: String,
    /// The reference images of an edit; none = text-to-image.
    pub references: References,
    /// Target size in pixels.
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub guidance: f32,
    pub seed: u64,
    /// Packed initial noise, `(width/16)·(height/16)` rows of 64 values (diffusers' `latents=`);
    /// `None` draws it from `seed`.
    pub initial_latents: Option<Vec<f32>>,
    /// Also return the packed output latent (chains with `carry: latent`).
    pub want_latent: bool,
    /// Step caching (`flux::step_cache`); `StepCaching::Off` runs every step in full.
    pub caching: flux::StepCaching,
    /// LoRAs to apply for this request (`lora`), at most `lora::MAX_LORAS`.
    pub loras: Vec<lora::LoraInput>,
}

/// Most reference images one request may carry (BFL's `input_image` … `input_image_4`).
pub const MAX_REFERENCES: usize = 4;

/// The reference images of an edit and how their tokens are placed (`flux::sampling::
/// reference_layout`). One reference is the plain Kontext edit, whatever `positions` says.
#[derive(Debug, Clone, Default)]
pub struct References {
    pub contexts: Vec<Context>,
    pub positions: ReferencePositions,
}

impl References {
    /// Text-to-image.
    pub fn none() -> Self {
        Self::default()
    }

    /// One reference: the Kontext edit.
    pub fn one(context: Context) -> Self {
        Self {
            contexts: vec![context],
            positions: ReferencePositions::default(),
        }
    }

    pub fn from_option(context: Option<Context>) -> Self {
        context.map_or_else(Self::none, Self::one)
    }

    pub fn is_empty(&self) -> bool {
        self.contexts.is_empty()
    }
}

/// How several references get RoPE positions; ComfyUI's two methods for Kontext
/// (`reference_latents_method`). With one reference both give index 1 and no offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReferencePositions {
    /// Every reference at index 1, each placed to the right of or below the ones before it
    /// (row/column offsets), as if the references were one collage.
    #[default]
    Offset,
    /// Reference k (1-based) at index k, all at row and column 0.
    Index,
}

/// The context of an edit.
#[derive(Debug, Clone)]
pub enum Context {
    /// An image, resized (Lanczos) to `width × height` then VAE-encoded.
    Image {
        image: image::RgbImage,
        width: u32,
        height: u32,
        /// Stable identity of the image (object key) for the context-latent cache.
        cache_key: Option<String>,
    },
    /// Already packed context latents for a `width × height` image (skips the VAE encode).
    PackedLatent {
        data: Vec<f32>,
        width: u32,
        height: u32,
    },
}

/// What one generation produced.
#[derive(Debug, Clone)]
pub struct EngineOutput {
    pub image: image::RgbImage,
    /// Packed final latent, when `want_latent`.
    pub packed_latent: Option<Vec<f32>>,
    pub seed: u64,
    pub timings: StageTimings,
    /// Full transformer evaluations (the steps, unless step caching skipped some).
    pub full_evaluations: u32,
    /// The LoRAs the request applied, in its order.
    pub loras: Vec<lora::AppliedLora>,
}

/// Wall time per pipeline stage.
#[derive(Debug, Clone, Default)]
pub struct StageTimings {
    /// Parsing (on a cache miss) and applying the request's LoRAs.
    pub lora: Duration,
    pub text: Duration,
    pub context_encode: Duration,
    pub denoise: Duration,
    pub decode: Duration,
    pub steps: Vec<Duration>,
}

/// Whether to go on after a denoising step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepControl {
    Continue,
    Cancel,
}

/// Static facts about a loaded engine.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    /// `tiny` or the weights directory.
    pub model: String,
    pub device: String,
    /// The GPU's name (CUDA builds on a CUDA device), for the worker registry.
    pub gpu_name: Option<String>,
    pub dtype: String,
    /// `native` or `fp8`: how the transformer blocks' linear weights are stored.
    pub linear_precision: String,
    /// Largest target area the engine accepts, in pixels.
    pub max_pixels: u64,
    /// How the model wants to be driven (text length, native and preferred sizes).
    pub settings: model_settings::ModelSettings,
}

/// Why a device string could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("not one of cpu, cuda, cuda:N")]
    Unknown,
    #[error(transparent)]
    Open(candle_core::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request cannot be run as given (too large, bad image); never worth a retry.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// `loras[index]` cannot be applied (a malformed or mismatched file, a bad scale).
    #[error("loras[{index}]: {source}")]
    Lora {
        index: usize,
        #[source]
        source: lora::LoraError,
    },
    #[error("canceled")]
    Canceled,
    #[error("weights: {0}")]
    Weights(#[from] WeightsError),
    /// The model directory failed `check-weights` (the whole report, every problem in it).
    #[error(
        "the model directory failed its check (run `kontext-worker check-weights` on it):\n{0}"
    )]
    WeightsCheck(Box<weights::check::CheckReport>),
    #[error("tiny model: {0}")]
    Tiny(#[from] TinyError),
    #[error("--device {spec}: {source}")]
    Device {
        spec: String,
        #[source]
        source: DeviceError,
    },
    #[error("device out of memory: {0}")]
    OutOfMemory(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("engine thread stopped")]
    Stopped,
    /// The engine panicked while running this request (caught on the engine thread).
    #[error("engine panicked: {0}")]
    Panicked(String),
    /// The warm-up generation failed (or panicked): the engine never became ready.
    #[error("warm-up failed: {0}")]
    WarmUp(#[source] Box<EngineError>),
}

/// A resident text-to-image / edit model. Synchronous; owned by one thread.
pub trait Engine: Send + 'static {
    fn info(&self) -> EngineInfo;
    /// One small generation; readiness flips only after this succeeds.
    fn warmup(&mut self) -> Result<(), EngineError>;
    /// Run one request. `on_step(done, total)` is called once before the first denoising step
    /// (done = 0) and after every step, and may cancel.
    fn generate(
        &mut self,
        req: &EngineRequest,
        on_step: &mut dyn FnMut(u32, u32) -> StepControl,
    ) -> Result<EngineOutput, EngineError>;
}
