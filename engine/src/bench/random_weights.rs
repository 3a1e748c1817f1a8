//! Engines built from random weights generated directly on the compute device: the GPU benchmark
//! times the real 12B configuration (and the real T5-XXL, CLIP-L and VAE sizes) without 24 GB of
//! files or host RAM. Timing does not depend on the values, only on them being ordinary finite
//! numbers, so weights are uniform with the variance of N(0, 1/fan_in) (activations stay O(1)
//! through the residual stacks) and norm scales are near 1.

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use candle_transformers::models::clip::text_model::{Activation, ClipTextConfig};
use candle_transformers::models::t5;

use crate::EngineError;
use crate::config::{FluxConfig, VaeConfig};
use crate::flux::Flux;
use crate::noise::SplitMix64;
use crate::pipeline::{EngineOptions, KontextEngine};
use crate::text::TextEncoders;
use crate::text::tokenize::PromptTokenizers;
use crate::vae::AutoEncoder;

/// A `SimpleBackend` that makes up every tensor it is asked for, on the requested device.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomBackend;

/// Whether `name` is a normalisation gain (RMSNorm `scale`, LayerNorm/GroupNorm `weight`).
fn is_norm_gain(name: &str, rank: usize) -> bool {
    rank == 1 && (name.ends_with(".scale") || (name.contains("norm") && name.ends_with(".weight")))
}

/// The uniform range `(lo, hi)` of the weight `name` with `dims`: norm gains near 1, biases
/// small, matrices ±√(3/fan_in) (variance 1/fan_in; fan_in = every dim after the first: Linear
/// (out, in), Conv (out, in, kh, kw), Embedding (vocab, dim)).
fn init_range(name: &str, dims: &[usize]) -> (f32, f32) {
    if is_norm_gain(name, dims.len()) {
        (0.9, 1.1)
    } else if dims.len() <= 1 {
        (-0.02, 0.02)
    } else {
        let fan_in: usize = dims[1..].iter().product();
        let a = (3.0 / fan_in.max(1) as f64).sqrt() as f32;
        (-a, a)
    }
}

/// One random tensor of `shape` for the weight `name`, generated on `dev` in f32 and cast.
pub fn random_tensor(name: &str, shape: &Shape, dtype: DType, dev: &Device) -> Result<Tensor> {
    let (lo, hi) = init_range(name, shape.dims());
    Tensor::rand(lo, hi, shape, dev)?.to_dtype(dtype)
}

/// Like [`random_tensor`], but reproducible: f32 on the CPU from a `SplitMix64` seeded by `seed`
/// and the name (the correctness checks compare fixed numbers run after run).
pub fn seeded_tensor(name: &str, shape: &Shape, seed: u64) -> Result<Tensor> {
    let (lo, hi) = init_range(name, shape.dims());
    let mut rng = SplitMix64::new(
        name.bytes()
            .fold(seed, |h, b| h.rotate_left(5) ^ u64::from(b))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let values: Vec<f32> = (0..shape.elem_count())
        .map(|_| lo + (hi - lo) * rng.next_f64() as f32)
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
}

impl SimpleBackend for RandomBackend {
    fn get(&self, s: Shape, name: &str, _h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        random_tensor(name, &s, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("random weights need a shape, but {name} was requested without one")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// A `VarBuilder` over [`RandomBackend`].
pub fn random_vb(dtype: DType, dev: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(RandomBackend), dtype, dev.clone())
}

/// google/t5-v1_1-xxl `config.json` (the encoder FLUX uses as `text_encoder_2`).
pub fn t5_xxl_config() -> t5::Config {
    const CONFIG: &str = r#"{"d_ff": 10240, "d_kv": 64, "d_model": 4096, "decoder_start_token_id": 0,
        "dropout_rate": 0.1, "eos_token_id": 1, "feed_forward_proj": "gated-gelu",
        "initializer_factor": 1.0, "is_encoder_decoder": true, "layer_norm_epsilon": 1e-06,
        "num_decoder_layers": 24, "num_heads": 64, "num_layers": 24, "pad_token_id": 0,
        "relative_attention_num_buckets": 32, "tie_word_embeddings": false, "vocab_size": 32128}"#;
    serde_json::from_str(CONFIG).expect("the embedded T5-XXL config parses; this is a bug")
}

/// openai/clip-vit-large-patch14 text model (FLUX's `text_encoder`).
pub fn clip_l_config() -> ClipTextConfig {
    ClipTextConfig {
        vocab_size: 49408,
        embed_dim: 768,
        activation: Activation::QuickGelu,
        intermediate_size: 3072,
        max_position_embeddings: 77,
        pad_with: None,
        num_hidden_layers: 12,
        num_attention_heads: 12,
        projection_dim: 768,
    }
}

/// The architecture of a randomly initialised engine.
#[derive(Debug, Clone)]
pub struct RandomEngineSpec {
    pub flux: FluxConfig,
    pub vae: VaeConfig,
    pub t5: t5::Config,
    pub clip: ClipTextConfig,
}

impl RandomEngineSpec {
    /// FLUX.1 Kontext \[dev\] at full size: 12B transformer, T5-XXL, CLIP-L, the 16-channel VAE.
    pub fn kontext_dev() -> Self {
        Self {
            flux: FluxConfig::kontext_dev(),
            vae: VaeConfig::kontext_dev(),
            t5: t5_xxl_config(),
            clip: clip_l_config(),
        }
    }

    /// Parameters of each part: (transformer, T5 encoder, CLIP text, VAE), counted on the CPU
    /// without allocating anything.
    pub fn parameter_counts(&self) -> Result<(usize, usize, usize, usize)> {
        let count = |build: &dyn Fn(VarBuilder<'static>) -> Result<()>| -> Result<usize> {
            let counter = ShapeCounter::default();
            let total = counter.total.clone();
            build(VarBuilder::from_backend(
                Box::new(counter),
                DType::F32,
                Device::Cpu,
            ))?;
            let n = *total
                .lock()
                .map_err(|_| candle_core::Error::msg("counter poisoned"))?;
            Ok(n)
        };
        Ok((
            count(&|vb| Flux::new(&self.flux, vb).map(drop))?,
            count(&|vb| t5::T5EncoderModel::load(vb, &self.t5).map(drop))?,
            count(&|vb| {
                candle_transformers::models::clip::text_model::ClipTextTransformer::new(
                    vb.pp("text_model"),
                    &self.clip,
                )
                .map(drop)
            })?,
            count(&|vb| AutoEncoder::new(&self.vae, vb).map(drop))?,
        ))
    }
}

/// Counts requested elements and hands out zero-strided views of a single zero (no memory).
#[derive(Debug, Default)]
struct ShapeCounter {
    total: std::sync::Arc<std::sync::Mutex<usize>>,
}

impl SimpleBackend for ShapeCounter {
    fn get(&self, s: Shape, _name: &str, _h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        if let Ok(mut t) = self.total.lock() {
            *t += s.elem_count();
        }
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("parameter count: {name} was requested without a shape")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// Seed of the device RNG before a random engine is built.
pub const RANDOM_ENGINE_SEED: u64 = 0x006b_6f6e_7465_7874;

/// Builds a whole engine of `spec` from random weights on `opts.device`, with the given
/// tokenizers (token values do not change the cost: T5 always runs 512 positions, CLIP 77).
pub fn build_engine(
    spec: &RandomEngineSpec,
    tokenizers: PromptTokenizers,
    opts: EngineOptions,
) -> std::result::Result<KontextEngine, EngineError> {
    let dev = opts.device.clone();
    // The same weights on every build (the GPU's RNG restarts from one seed; candle cannot seed
    // the CPU's), so engines that differ only in their linears' precision compute one model.
    if dev.is_cuda() {
        dev.set_seed(RANDOM_ENGINE_SEED)?;
    }
    let flux = Flux::with_linear_precision(
        &spec.flux,
        random_vb(opts.dtype, &dev),
        opts.linear_precision,
    )?;
    let vae = AutoEncoder::new(&spec.vae, random_vb(opts.vae_dtype, &dev))?;
    let text = TextEncoders::from_parts(
        tokenizers,
        random_vb(opts.dtype, &dev),
        &spec.t5,
        random_vb(opts.dtype, &dev),
        &spec.clip,
        &dev,
    )?;
    KontextEngine::from_parts(
        "random-kontext-dev",
        flux,
        vae,
        text,
        spec.vae.clone(),
        opts,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_sizes_have_the_published_parameter_counts() -> Result<()> {
        let (flux, t5, clip, vae) = RandomEngineSpec::kontext_dev().parameter_counts()?;
        // The published checkpoints (docs/engine.md §Model): about 11.9B transformer parameters
        // (flux1-kontext-dev.safetensors is 23.8 GB of bf16); T5-XXL encoder 4.76B
        // (incl. its 131M-entry embedding); CLIP-L text 123M; the AE about 84M.
        assert!(
            (11.8e9..12.0e9).contains(&(flux as f64)),
            "transformer {flux}"
        );
        assert!((4.7e9..4.8e9).contains(&(t5 as f64)), "t5 {t5}");
        assert!((1.2e8..1.26e8).contains(&(clip as f64)), "clip {clip}");
        assert!((8.0e7..8.8e7).contains(&(vae as f64)), "vae {vae}");
        Ok(())
    }

    #[test]
    fn random_tiny_transformer_runs_and_is_finite() -> Result<()> {
        let cfg = FluxConfig::tiny();
        let dev = Device::Cpu;
        let flux = Flux::new(&cfg, random_vb(DType::F32, &dev))?;
        let img = Tensor::randn(0f32, 1.0, (1, 12, cfg.in_channels), &dev)?;
        let img_ids = crate::flux::sampling::position_ids(1, 3, 4, 0.0, &dev)?;
        let txt = Tensor::randn(0f32, 1.0, (1, 5, cfg.context_in_dim), &dev)?;
        let txt_ids = crate::flux::sampling::text_ids(1, 5, &dev)?;
        let t = Tensor::new(&[0.5f32], &dev)?;
        let y = Tensor::randn(0f32, 1.0, (1, cfg.vec_in_dim), &dev)?;
        let g = Tensor::new(&[2.5f32], &dev)?;
        let out = flux.forward(&crate::flux::FluxInputs {
            img: &img,
            img_ids: &img_ids,
            txt: &txt,
            txt_ids: &txt_ids,
            timesteps: &t,
            y: &y,
            guidance: Some(&g),
        })?;
        assert_eq!(out.dims(), &[1, 12, cfg.in_channels]);
        let v = out.flatten_all()?.to_vec1::<f32>()?;
        assert!(v.iter().all(|x| x.is_finite()) && v.iter().any(|x| *x != 0.0));
        Ok(())
    }
}
