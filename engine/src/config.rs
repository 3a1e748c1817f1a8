//! Architecture hyper-parameters of the Kontext pipeline's two candle-native parts (the flow
//! transformer and the autoencoder). The text encoders read their HF `config.json`.
//!
//! `kontext_dev()` is BFL `src/flux/util.py` `configs["flux-dev-kontext"]` (docs/engine.md §Model);
//! `tiny()` is the same architecture at toy size (docs/engine.md §Parity), used by tests and the
//! embedded demo.

/// The flow transformer (BFL `FluxParams`).
#[derive(Debug, Clone, PartialEq)]
pub struct FluxConfig {
    /// Packed latent features per token: 4 × VAE latent channels.
    pub in_channels: usize,
    /// CLIP pooled width.
    pub vec_in_dim: usize,
    /// T5 width.
    pub context_in_dim: usize,
    pub hidden_size: usize,
    pub mlp_ratio: f64,
    pub num_heads: usize,
    /// Double-stream blocks.
    pub depth: usize,
    /// Single-stream blocks.
    pub depth_single_blocks: usize,
    /// RoPE dims per position axis (index, row, col); sums to the head dim, each even.
    pub axes_dim: Vec<usize>,
    pub theta: f64,
    pub qkv_bias: bool,
    pub guidance_embed: bool,
}

impl FluxConfig {
    pub fn kontext_dev() -> Self {
        Self {
            in_channels: 64,
            vec_in_dim: 768,
            context_in_dim: 4096,
            hidden_size: 3072,
            mlp_ratio: 4.0,
            num_heads: 24,
            depth: 19,
            depth_single_blocks: 38,
            axes_dim: vec![16, 56, 56],
            theta: 10_000.0,
            qkv_bias: true,
            guidance_embed: true,
        }
    }

    pub fn tiny() -> Self {
        Self {
            in_channels: 64,
            vec_in_dim: 32,
            context_in_dim: 32,
            hidden_size: 32,
            mlp_ratio: 4.0,
            num_heads: 2,
            depth: 1,
            depth_single_blocks: 2,
            axes_dim: vec![4, 6, 6],
            theta: 10_000.0,
            qkv_bias: true,
            guidance_embed: true,
        }
    }

    /// The CPU benchmark's mid-size configuration (docs/engine.md §Parity; its PyTorch twin is
    /// `tests/parity/make_fixtures.py --bench`).
    pub fn bench_mid() -> Self {
        Self {
            in_channels: 64,
            vec_in_dim: 768,
            context_in_dim: 1024,
            hidden_size: 1024,
            mlp_ratio: 4.0,
            num_heads: 16,
            depth: 4,
            depth_single_blocks: 8,
            axes_dim: vec![8, 28, 28],
            theta: 10_000.0,
            qkv_bias: true,
            guidance_embed: true,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    pub fn mlp_hidden(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio) as usize
    }
}

/// The autoencoder (BFL `AutoEncoderParams`).
#[derive(Debug, Clone, PartialEq)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Base channel count; level i has `ch * ch_mult[i]` channels.
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    pub z_channels: usize,
    /// GroupNorm groups (BFL hard-codes 32).
    pub norm_groups: usize,
    pub scale_factor: f64,
    pub shift_factor: f64,
}

impl VaeConfig {
    pub fn kontext_dev() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            ch: 128,
            ch_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            z_channels: 16,
            norm_groups: 32,
            scale_factor: 0.3611,
            shift_factor: 0.1159,
        }
    }

    pub fn tiny() -> Self {
        Self {
            ch: 32,
            ch_mult: vec![1, 1, 2, 2],
            ..Self::kontext_dev()
        }
    }

    /// Channels of each level (diffusers' `block_out_channels`).
    pub fn block_out_channels(&self) -> Vec<usize> {
        self.ch_mult.iter().map(|m| m * self.ch).collect()
    }
}
