//! `KontextEngine`: the whole FLUX.1 Kontext pipeline behind the `Engine` seam.
//!
//! text → (context image → Lanczos resize → VAE encode (mean) → pack, or an already packed latent)
//! → seeded noise or given initial latents → shifted schedule from the target token count → Euler
//! loop over `[target ‖ context]` → unpack → VAE decode → RGB8 (docs/engine.md §Pipeline).
//! Text-to-image when there is no context. Loaded once from a `ModelDir` (the tiny model goes
//! through the same loader); compute dtype and device are parameters. Position ids, RoPE and
//! softmax statistics stay f32; the VAE runs in `vae_dtype` (f32 by default, like BFL's encode).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::cache::{self, ByteLru};
use super::config::{FluxConfig, VaeConfig};
use super::flux::sampling::{self, Conditioning, ContextTokens};
use super::flux::{Flux, LinearPrecision};
use super::lora::{LORA_CACHE_BYTES, LoraState};
use super::model_settings::ModelSettings;
use super::noise::packed_noise;
use super::text::TextEncoders;
use super::vae::AutoEncoder;
use super::weights::{ModelDir, WeightsError};
use super::{
    Context, Engine, EngineError, EngineInfo, EngineOutput, EngineRequest, MAX_REFERENCES,
    References, StageTimings, StepControl, image_ops,
};

/// The references of one request may hold this many times `max_pixels` together.
pub const REFERENCE_BUDGET_FACTOR: u64 = 2;

/// Largest step count a request may ask for.
pub const MAX_STEPS: u32 = 200;
/// Default largest target (and context) area, 2 MP. The engine depends on no crate of ours, so
/// this is its own constant; the worker's tests check that it equals the coordinator's default
/// (`kontext_proto::resolution::DEFAULT_MAX_PIXELS`), so a job the API accepts with default
/// flags is never refused by a worker with default flags.
pub const DEFAULT_MAX_PIXELS: u64 = 2_048 * 1_024;

/// How to load a [`KontextEngine`].
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Compute dtype of the transformer and the text encoders (f32 on CPU, bf16 on CUDA).
    pub dtype: DType,
    /// dtype of the autoencoder (BFL encodes in f32).
    pub vae_dtype: DType,
    pub device: Device,
    /// Largest target or context area accepted, in pixels.
    pub max_pixels: u64,
    /// Storage and arithmetic of the transformer blocks' linear layers (flux/linear.rs).
    pub linear_precision: LinearPrecision,
}

impl EngineOptions {
    pub fn cpu() -> Self {
        Self {
            dtype: DType::F32,
            vae_dtype: DType::F32,
            device: Device::Cpu,
            max_pixels: DEFAULT_MAX_PIXELS,
            linear_precision: LinearPrecision::Native,
        }
    }
}

/// Budget of the text-embedding cache (T5 (1, 512, 4096) + CLIP pooled in bf16 is ~4 MiB per
/// prompt on the 12B model: a few dozen prompts).
pub const TEXT_CACHE_BYTES: usize = 128 << 20;
/// Budget of the context-latent cache (a 1024² context is 4096 × 64 values: 0.5–1 MiB).
pub const CONTEXT_CACHE_BYTES: usize = 256 << 20;

/// Bytes a tensor's data takes.
fn tensor_bytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

/// FLUX.1 Kontext \[dev\] (or the tiny model) resident on one device.
pub struct KontextEngine {
    model: String,
    flux: Flux,
    vae: AutoEncoder,
    text: TextEncoders,
    flux_cfg: FluxConfig,
    vae_cfg: VaeConfig,
    opts: EngineOptions,
    /// Text embeddings `(t5, pooled)` by `cache::prompt_key` (chain turns often repeat prompts).
    text_cache: ByteLru<(Tensor, Tensor)>,
    /// Packed context tokens by `cache::context_key` (the previous turn's frame, re-edited).
    context_cache: ByteLru<Tensor>,
    /// `kontext_model.json` of the directory (defaults for engines built from parts).
    settings: ModelSettings,
    /// Parsed LoRA files and the set applied to `flux` now.
    loras: LoraState,
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "other",
    }
}

fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}

/// The CUDA device's name (`NVIDIA H100 80GB HBM3`), when there is one.
fn gpu_name(device: &Device) -> Option<String> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        return kontext_cuda::memory::summary(d).ok().map(|s| s.name);
    }
    let _ = device;
    None
}

fn invalid(msg: impl Into<String>) -> EngineError {
    EngineError::InvalidInput(msg.into())
}

impl KontextEngine {
    /// Loads every component from an opened model directory. `model` is the name reported in
    /// [`EngineInfo`] (`tiny` or the directory).
    pub fn load(dir: &ModelDir, model: &str, opts: EngineOptions) -> Result<Self, EngineError> {
        let flux_cfg = dir.flux_config().clone();
        let vae_cfg = dir.vae_config().clone();
        if flux_cfg.in_channels != 4 * vae_cfg.z_channels {
            return Err(WeightsError::Config {
                file: "transformer/config.json, vae/config.json".into(),
                reason: format!(
                    "transformer in_channels {} must be 4 × VAE z_channels {}",
                    flux_cfg.in_channels, vae_cfg.z_channels
                ),
            }
            .into());
        }
        let flux = dir.flux(opts.dtype, &opts.device, opts.linear_precision)?;
        let vae = AutoEncoder::new(&vae_cfg, dir.vae_vb(opts.vae_dtype, &opts.device))?;
        // Text encoders in f32 on the CPU whatever the compute dtype: candle's CPU softmax
        // accumulates in the tensor's dtype, and T5's 512-wide bf16 softmax then drifts ~0.3
        // relative from f32 on the tiny model (PyTorch, which softmaxes in f32: 1.6e-2). CUDA
        // softmax accumulates in f32, so GPUs keep the compute dtype. Encoding runs once per
        // prompt (and is cached), so the f32 cost on the CPU is small.
        let text_dtype = if opts.device.is_cpu() {
            DType::F32
        } else {
            opts.dtype
        };
        let text = TextEncoders::load(dir, text_dtype, &opts.device)?;
        let loras = LoraState::new(&flux_cfg, opts.device.clone(), LORA_CACHE_BYTES);
        Ok(Self {
            model: model.to_string(),
            flux,
            vae,
            text,
            flux_cfg,
            vae_cfg,
            opts,
            text_cache: ByteLru::new(TEXT_CACHE_BYTES, &cache::TEXT),
            context_cache: ByteLru::new(CONTEXT_CACHE_BYTES, &cache::CONTEXT),
            settings: dir.settings().clone(),
            loras,
        })
    }

    /// Round timestep and guidance in `dtype` (see `Flux::set_conditioning_dtype`); the bf16
    /// correctness checks give their f32 reference the bf16 rounding.
    pub fn set_conditioning_dtype(&mut self, dtype: DType) {
        self.flux.set_conditioning_dtype(dtype);
    }

    /// An engine from parts built elsewhere (the GPU benchmark makes them from random weights
    /// generated on the device, `gpu::random_weights`).
    pub fn from_parts(
        model: &str,
        flux: Flux,
        vae: AutoEncoder,
        text: TextEncoders,
        vae_cfg: VaeConfig,
        opts: EngineOptions,
    ) -> Result<Self, EngineError> {
        let flux_cfg = flux.config().clone();
        if flux_cfg.in_channels != 4 * vae_cfg.z_channels {
            return Err(WeightsError::Config {
                file: "transformer/config.json, vae/config.json".into(),
                reason: format!(
                    "transformer in_channels {} must be 4 × VAE z_channels {}",
                    flux_cfg.in_channels, vae_cfg.z_channels
                ),
            }
            .into());
        }
        let loras = LoraState::new(&flux_cfg, opts.device.clone(), LORA_CACHE_BYTES);
        Ok(Self {
            model: model.to_string(),
            flux,
            vae,
            text,
            flux_cfg,
            vae_cfg,
            opts,
            text_cache: ByteLru::new(TEXT_CACHE_BYTES, &cache::TEXT),
            context_cache: ByteLru::new(CONTEXT_CACHE_BYTES, &cache::CONTEXT),
            settings: ModelSettings::default(),
            loras,
        })
    }

    /// Latent channels (16 for FLUX).
    fn latent_channels(&self) -> usize {
        self.vae_cfg.z_channels
    }

    fn check_size(&self, field: &str, width: u32, height: u32) -> Result<(), EngineError> {
        for (name, v) in [("width", width), ("height", height)] {
            if v == 0 || !v.is_multiple_of(16) {
                return Err(invalid(format!(
                    "{field} {name} {v} must be a positive multiple of 16"
                )));
            }
        }
        let area = u64::from(width) * u64::from(height);
        if area > self.opts.max_pixels {
            return Err(invalid(format!(
                "{field} size {width}x{height} = {area} pixels exceeds the limit of {} pixels",
                self.opts.max_pixels
            )));
        }
        Ok(())
    }

    fn validate(&self, req: &EngineRequest) -> Result<(), EngineError> {
        self.check_size("target", req.width, req.height)?;
        if req.steps == 0 || req.steps > MAX_STEPS {
            return Err(invalid(format!(
                "steps {} must be between 1 and {MAX_STEPS}",
                req.steps
            )));
        }
        if !req.guidance.is_finite() || req.guidance < 0.0 || req.guidance > 100.0 {
            return Err(invalid(format!(
                "guidance {} must be between 0 and 100",
                req.guidance
            )));
        }
        let features = 4 * self.latent_channels();
        if let Some(l) = &req.initial_latents {
            let want = sampling_tokens(req.width, req.height) * features;
            if l.len() != want {
                return Err(invalid(format!(
                    "initial_latents has {} values; a {}x{} target needs {want} ((w/16)·(h/16)·{features})",
                    l.len(),
                    req.width,
                    req.height
                )));
            }
        }
        let refs = &req.references.contexts;
        if refs.len() > MAX_REFERENCES {
            return Err(invalid(format!(
                "{} reference images; at most {MAX_REFERENCES}",
                refs.len()
            )));
        }
        let mut area = 0u64;
        for ctx in refs {
            match ctx {
                Context::Image {
                    image,
                    width,
                    height,
                    ..
                } => {
                    self.check_size("context", *width, *height)?;
                    if image.width() == 0 || image.height() == 0 {
                        return Err(invalid("context image is empty (0 pixels)"));
                    }
                    area += u64::from(*width) * u64::from(*height);
                }
                Context::PackedLatent {
                    data,
                    width,
                    height,
                } => {
                    self.check_size("context", *width, *height)?;
                    let want = sampling_tokens(*width, *height) * features;
                    if data.len() != want {
                        return Err(invalid(format!(
                            "context latent has {} values; a {width}x{height} context needs {want}",
                            data.len()
                        )));
                    }
                    area += u64::from(*width) * u64::from(*height);
                }
            }
        }
        // Several references share one budget, twice one context's (four ~1 MP references at
        // the 2 MP default): their tokens all join every attention call.
        let budget = REFERENCE_BUDGET_FACTOR * self.opts.max_pixels;
        if area > budget {
            return Err(invalid(format!(
                "the reference images total {area} pixels; at most {budget} together (resize them)"
            )));
        }
        Ok(())
    }

    /// Every reference's tokens concatenated in order, `(1, Σ n_k, 64)`, with their position ids
    /// placed by `sampling::reference_layout`; `None` for text-to-image.
    fn reference_tokens(
        &mut self,
        refs: &References,
    ) -> Result<Option<ContextTokens>, EngineError> {
        if refs.is_empty() {
            return Ok(None);
        }
        let encoded = refs
            .contexts
            .iter()
            .map(|ctx| self.context_tokens(ctx))
            .collect::<Result<Vec<_>, _>>()?;
        let sizes: Vec<(usize, usize)> = encoded
            .iter()
            .map(|(_, rows, cols)| (*rows, *cols))
            .collect();
        let placements = sampling::reference_layout(&sizes, refs.positions);
        let dev = self.opts.device.clone();
        let mut tokens = Vec::with_capacity(encoded.len());
        let mut ids = Vec::with_capacity(encoded.len());
        for ((t, rows, cols), at) in encoded.into_iter().zip(placements) {
            tokens.push(t);
            ids.push(sampling::offset_position_ids(1, rows, cols, at, &dev)?);
        }
        Ok(Some(ContextTokens {
            tokens: Tensor::cat(&tokens, 1)?, // (1, Σ n_k, 64)
            ids: Tensor::cat(&ids, 1)?,       // (1, Σ n_k, 3)
        }))
    }

    /// One reference's packed tokens `(1, n_c, 64)` in the compute dtype (from the cache when
    /// possible) and its token grid (rows, cols).
    fn context_tokens(&mut self, ctx: &Context) -> Result<(Tensor, usize, usize), EngineError> {
        let dev = self.opts.device.clone();
        let (tokens, width, height) = match ctx {
            Context::PackedLatent {
                data,
                width,
                height,
            } => {
                let n = sampling_tokens(*width, *height);
                let t = Tensor::from_slice(data, (1, n, 4 * self.latent_channels()), &dev)?;
                (t.to_dtype(self.opts.dtype)?, *width, *height)
            }
            Context::Image {
                image,
                width,
                height,
                cache_key,
            } => {
                let key = cache_key
                    .as_deref()
                    .map(|k| cache::context_key(k, *width, *height));
                let tokens = match key.as_deref().and_then(|k| self.context_cache.get(k)) {
                    Some(tokens) => tokens,
                    None => {
                        let tokens = self.encode_context(image, *width, *height)?;
                        if let Some(key) = key {
                            let bytes = tensor_bytes(&tokens);
                            self.context_cache.insert(key, tokens.clone(), bytes);
                        }
                        tokens
                    }
                };
                (tokens, *width, *height)
            }
        };
        Ok((tokens, (height / 16) as usize, (width / 16) as usize))
    }

    /// BFL `prepare_kontext` (sampling.py:229-254): resize with PIL-exact Lanczos, x/127.5 − 1,
    /// VAE encode (mean, scale·(z − shift)), pack 2×2, cast to the compute dtype.
    pub fn encode_context(
        &self,
        image: &image::RgbImage,
        width: u32,
        height: u32,
    ) -> Result<Tensor, EngineError> {
        let resized = if image.dimensions() == (width, height) {
            image.clone()
        } else {
            image_ops::resize_lanczos(image, width, height)
        };
        let x = image_ops::image_to_tensor(&resized, &self.opts.device)?
            .to_dtype(self.opts.vae_dtype)?;
        let z = self.vae.encode(&x)?; // (1, 16, h/8, w/8)
        Ok(sampling::pack(&z)?.to_dtype(self.opts.dtype)?)
    }

    /// The packed final latent → image: unpack, VAE decode (z/scale + shift inside), to RGB8.
    pub fn decode_latent(
        &self,
        x: &Tensor,
        width: u32,
        height: u32,
    ) -> Result<image::RgbImage, EngineError> {
        let z = sampling::unpack(x, (height / 8) as usize, (width / 8) as usize)?; // (1, 16, h/8, w/8)
        let img = self.vae.decode(&z.to_dtype(self.opts.vae_dtype)?)?; // (1, 3, h, w)
        Ok(image_ops::tensor_to_image(&img)?)
    }

    pub fn flux(&self) -> &Flux {
        &self.flux
    }

    pub fn text(&self) -> &TextEncoders {
        &self.text
    }

    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    pub fn flux_config(&self) -> &FluxConfig {
        &self.flux_cfg
    }
}

/// Packed tokens of a `width × height` image: 8× VAE downsampling, then 2×2 patches, one token
/// per 16×16 pixels (diffusers `FluxKontextPipeline.prepare_latents`).
fn sampling_tokens(width: u32, height: u32) -> usize {
    (width / 16) as usize * (height / 16) as usize
}

impl Engine for KontextEngine {
    fn info(&self) -> EngineInfo {
        EngineInfo {
            model: self.model.clone(),
            device: device_name(&self.opts.device),
            gpu_name: gpu_name(&self.opts.device),
            dtype: dtype_name(self.opts.dtype).into(),
            linear_precision: self.opts.linear_precision.as_str().into(),
            max_pixels: self.opts.max_pixels,
            settings: self.settings.clone(),
        }
    }

    fn warmup(&mut self) -> Result<(), EngineError> {
        // One small edit exercises every component (text, encode, denoise, decode).
        let req = EngineRequest {
            prompt: "warm-up".into(),
            references: References::one(Context::Image {
                image: image::RgbImage::from_pixel(64, 64, image::Rgb([128, 64, 32])),
                width: 64,
                height: 64,
                cache_key: None,
            }),
            width: 64,
            height: 64,
            steps: 1,
            guidance: 2.5,
            seed: 0,
            initial_latents: None,
            want_latent: false,
            caching: crate::flux::StepCaching::Off,
            loras: Vec::new(),
        };
        self.generate(&req, &mut |_, _| StepControl::Continue)
            .map(|_| ())
    }

    fn generate(
        &mut self,
        req: &EngineRequest,
        on_step: &mut dyn FnMut(u32, u32) -> StepControl,
    ) -> Result<EngineOutput, EngineError> {
        self.validate(req)?;
        let dev = self.opts.device.clone();
        let dtype = self.opts.dtype;
        let mut timings = StageTimings::default();

        // Each stage in a span of the caller's trace (the engine thread enters the job's span).
        let stage = tracing::info_span!("engine.loras", count = req.loras.len()).entered();
        let started = Instant::now();
        let loras = self
            .loras
            .apply(&mut self.flux, &req.loras)
            .map_err(|(index, source)| match source {
                super::lora::LoraError::Weights { source } => EngineError::Candle(source),
                source => EngineError::Lora { index, source },
            })?;
        timings.lora = started.elapsed();
        drop(stage);

        let stage = tracing::info_span!("engine.text", cache_hit = tracing::field::Empty).entered();
        let started = Instant::now();
        let key = cache::prompt_key(&req.prompt);
        // (1, 512, d_t5), (1, d_clip)
        let cached = self.text_cache.get(&key);
        stage.record("cache_hit", cached.is_some());
        let (txt, y) = match cached {
            Some(hit) => hit,
            None => {
                let encoded = self.text.encode(&req.prompt)?;
                let bytes = tensor_bytes(&encoded.0) + tensor_bytes(&encoded.1);
                self.text_cache.insert(key, encoded.clone(), bytes);
                encoded
            }
        };
        timings.text = started.elapsed();
        drop(stage);

        let stage =
            tracing::info_span!("engine.context", references = req.references.contexts.len());
        let started = Instant::now();
        let context = stage.in_scope(|| self.reference_tokens(&req.references))?;
        timings.context_encode = started.elapsed();

        let (rows, cols) = ((req.height / 16) as usize, (req.width / 16) as usize);
        let features = 4 * self.latent_channels();
        let x = match &req.initial_latents {
            Some(l) => Tensor::from_slice(l, (1, rows * cols, features), &dev)?.to_dtype(dtype)?,
            None => packed_noise(
                req.seed,
                req.width,
                req.height,
                self.latent_channels(),
                dtype,
                &dev,
            )?,
        };
        let cond = Conditioning {
            txt,
            y,
            target_ids: sampling::position_ids(1, rows, cols, 0.0, &dev)?,
            context,
            guidance: req.guidance,
        };
        let timesteps = sampling::schedule(req.steps as usize, rows * cols);

        let stage = tracing::info_span!(
            "engine.denoise",
            steps = req.steps,
            full_evaluations = tracing::field::Empty
        )
        .entered();
        let started = Instant::now();
        let mut last = Instant::now();
        let mut step_times = Vec::with_capacity(req.steps as usize);
        let mut timed_step = |done: u32, total: u32| {
            if done > 0 {
                step_times.push(last.elapsed());
            }
            last = Instant::now();
            on_step(done, total)
        };
        let (x, full_evaluations) = sampling::denoise_flux_cached(
            &self.flux,
            &cond,
            x,
            &timesteps,
            req.caching,
            &mut timed_step,
        )?;
        timings.denoise = started.elapsed();
        timings.steps = step_times;
        stage.record("full_evaluations", full_evaluations);
        drop(stage);

        let started = Instant::now();
        let image = tracing::info_span!("engine.decode")
            .in_scope(|| self.decode_latent(&x, req.width, req.height))?;
        timings.decode = started.elapsed();

        let packed_latent = if req.want_latent {
            Some(x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
        } else {
            None
        };
        Ok(EngineOutput {
            image,
            packed_latent,
            seed: req.seed,
            timings,
            full_evaluations,
            loras,
        })
    }
}
