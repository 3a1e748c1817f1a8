//! The FLUX autoencoder in candle, BFL structure and names (`flux/modules/autoencoder.py` @
//! 802fb47; docs/engine.md §VAE), with the GroupNorm group count taken from the config
//! (BFL hard-codes 32; the tiny model uses the same 32, other sizes need other counts).
//!
//! - `encode(x)`: x in [-1, 1], (b, 3, H, W) → scale·(mean − shift), (b, z, H/8, W/8). The
//!   posterior **mean** (BFL `DiagonalGaussian(sample=False)`, autoencoder.py:283), never a sample.
//! - `decode(z)`: takes what `encode` returns and computes decoder(z/scale + shift) itself.
//!
//! Runs in the dtype of its `VarBuilder`; GroupNorm statistics and the attention softmax are
//! computed in f32 whatever that dtype is (BFL decodes under bf16 autocast, which keeps
//! GroupNorm in fp32 and uses fused SDPA).

mod blocks;
mod conv;

use candle_core::{Module, Result, Tensor};
use candle_nn::{GroupNorm, VarBuilder};

use self::blocks::{AttnBlock, Downsample, ResnetBlock, Upsample, group_norm};
use self::conv::VaeConv;
use crate::config::VaeConfig;

/// One encoder level: `down.{i}.block.{j}` and, except on the last level, `down.{i}.downsample`.
#[derive(Debug, Clone)]
struct DownLevel {
    blocks: Vec<ResnetBlock>,
    downsample: Option<Downsample>,
}

/// BFL `Encoder` (autoencoder.py:121-191).
#[derive(Debug, Clone)]
pub struct Encoder {
    conv_in: VaeConv,
    down: Vec<DownLevel>,
    mid_block_1: ResnetBlock,
    mid_attn_1: AttnBlock,
    mid_block_2: ResnetBlock,
    norm_out: GroupNorm,
    conv_out: VaeConv,
}

impl Encoder {
    pub fn new(cfg: &VaeConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let groups = cfg.norm_groups;
        let chans = cfg.block_out_channels();
        let conv_in = VaeConv::new(cfg.in_channels, cfg.ch, 3, 1, 1, vb.pp("conv_in"))?;
        let mut block_in = cfg.ch;
        let mut down = Vec::with_capacity(chans.len());
        for (i, &block_out) in chans.iter().enumerate() {
            let vb_level = vb.pp("down").pp(i);
            let mut blocks = Vec::with_capacity(cfg.num_res_blocks);
            for j in 0..cfg.num_res_blocks {
                blocks.push(ResnetBlock::new(
                    block_in,
                    block_out,
                    groups,
                    vb_level.pp("block").pp(j),
                )?);
                block_in = block_out;
            }
            let downsample = if i + 1 != chans.len() {
                Some(Downsample::new(block_in, vb_level.pp("downsample"))?)
            } else {
                None
            };
            down.push(DownLevel { blocks, downsample });
        }
        let vb_mid = vb.pp("mid");
        Ok(Self {
            conv_in,
            down,
            mid_block_1: ResnetBlock::new(block_in, block_in, groups, vb_mid.pp("block_1"))?,
            mid_attn_1: AttnBlock::new(block_in, groups, vb_mid.pp("attn_1"))?,
            mid_block_2: ResnetBlock::new(block_in, block_in, groups, vb_mid.pp("block_2"))?,
            norm_out: group_norm(groups, block_in, vb.pp("norm_out"))?,
            conv_out: VaeConv::new(block_in, 2 * cfg.z_channels, 3, 1, 1, vb.pp("conv_out"))?,
        })
    }

    /// x (b, c_in, H, W) → moments (b, 2·z, H/2^(L−1), W/2^(L−1)): [mean ‖ logvar].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for level in &self.down {
            for block in &level.blocks {
                h = block.forward(&h)?;
            }
            if let Some(d) = &level.downsample {
                h = d.forward(&h)?;
            }
        }
        let h = self.mid_block_1.forward(&h)?;
        let h = self.mid_attn_1.forward(&h)?;
        let h = self.mid_block_2.forward(&h)?;
        let h = self.norm_out.forward(&h)?.silu()?;
        self.conv_out.forward(&h)
    }
}

/// One decoder level: `up.{i}.block.{j}` (num_res_blocks + 1 of them) and, except on level 0,
/// `up.{i}.upsample`.
#[derive(Debug, Clone)]
struct UpLevel {
    blocks: Vec<ResnetBlock>,
    upsample: Option<Upsample>,
}

/// BFL `Decoder` (autoencoder.py:194-270).
#[derive(Debug, Clone)]
pub struct Decoder {
    conv_in: VaeConv,
    mid_block_1: ResnetBlock,
    mid_attn_1: AttnBlock,
    mid_block_2: ResnetBlock,
    /// Indexed like BFL's `up`: `up[0]` is the shallowest level and runs last.
    up: Vec<UpLevel>,
    norm_out: GroupNorm,
    conv_out: VaeConv,
}

impl Decoder {
    pub fn new(cfg: &VaeConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let groups = cfg.norm_groups;
        let chans = cfg.block_out_channels();
        let levels = chans.len();
        let mut block_in = chans[levels - 1];
        let conv_in = VaeConv::new(cfg.z_channels, block_in, 3, 1, 1, vb.pp("conv_in"))?;
        let vb_mid = vb.pp("mid");
        let mid_block_1 = ResnetBlock::new(block_in, block_in, groups, vb_mid.pp("block_1"))?;
        let mid_attn_1 = AttnBlock::new(block_in, groups, vb_mid.pp("attn_1"))?;
        let mid_block_2 = ResnetBlock::new(block_in, block_in, groups, vb_mid.pp("block_2"))?;
        let mut up = Vec::with_capacity(levels);
        for i in (0..levels).rev() {
            let vb_level = vb.pp("up").pp(i);
            let block_out = chans[i];
            let mut blocks = Vec::with_capacity(cfg.num_res_blocks + 1);
            for j in 0..=cfg.num_res_blocks {
                blocks.push(ResnetBlock::new(
                    block_in,
                    block_out,
                    groups,
                    vb_level.pp("block").pp(j),
                )?);
                block_in = block_out;
            }
            let upsample = if i != 0 {
                Some(Upsample::new(block_in, vb_level.pp("upsample"))?)
            } else {
                None
            };
            up.push(UpLevel { blocks, upsample });
        }
        up.reverse();
        Ok(Self {
            conv_in,
            mid_block_1,
            mid_attn_1,
            mid_block_2,
            up,
            norm_out: group_norm(groups, block_in, vb.pp("norm_out"))?,
            conv_out: VaeConv::new(block_in, cfg.out_channels, 3, 1, 1, vb.pp("conv_out"))?,
        })
    }

    /// z (b, z, h, w) (already un-scaled) → x (b, c_out, h·2^(L−1), w·2^(L−1)).
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let h = self.conv_in.forward(z)?;
        let h = self.mid_block_1.forward(&h)?;
        let h = self.mid_attn_1.forward(&h)?;
        let mut h = self.mid_block_2.forward(&h)?;
        for level in self.up.iter().rev() {
            for block in &level.blocks {
                h = block.forward(&h)?;
            }
            if let Some(u) = &level.upsample {
                h = u.forward(&h)?;
            }
        }
        let h = self.norm_out.forward(&h)?.silu()?;
        self.conv_out.forward(&h)
    }
}

/// BFL `AutoEncoder` with `sample_z=False` (autoencoder.py:273-313).
#[derive(Debug, Clone)]
pub struct AutoEncoder {
    encoder: Encoder,
    decoder: Decoder,
    z_channels: usize,
    scale_factor: f64,
    shift_factor: f64,
}

impl AutoEncoder {
    pub fn new(cfg: &VaeConfig, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            encoder: Encoder::new(cfg, vb.pp("encoder"))?,
            decoder: Decoder::new(cfg, vb.pp("decoder"))?,
            z_channels: cfg.z_channels,
            scale_factor: cfg.scale_factor,
            shift_factor: cfg.shift_factor,
        })
    }

    /// The raw encoder output [mean ‖ logvar], for tests and diagnostics.
    pub fn moments(&self, x: &Tensor) -> Result<Tensor> {
        self.encoder.forward(x)
    }

    /// x (b, 3, H, W) in [-1, 1] → scale·(mean − shift), (b, z, H/8, W/8), in the AE's dtype.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(self.dtype())?;
        let moments = self.encoder.forward(&x)?;
        // DiagonalGaussian.forward: mean, logvar = chunk(z, 2, dim=1); sample=False → mean.
        let mean = moments.narrow(1, 0, self.z_channels)?;
        // autoencoder.py:300: z = scale_factor * (z - shift_factor)
        (mean - self.shift_factor)? * self.scale_factor
    }

    /// z as `encode` returns it → x (b, 3, H, W), not clamped.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let z = z.to_dtype(self.dtype())?;
        // autoencoder.py:303: z = z / scale_factor + shift_factor
        let z = ((z / self.scale_factor)? + self.shift_factor)?;
        self.decoder.forward(&z)
    }

    /// The decoder alone on an already un-scaled latent (diffusers' `vae.decode` input).
    pub fn decoder_forward(&self, z: &Tensor) -> Result<Tensor> {
        self.decoder.forward(&z.to_dtype(self.dtype())?)
    }

    pub fn dtype(&self) -> candle_core::DType {
        self.encoder.conv_in.weight().dtype()
    }
}

#[cfg(test)]
mod tests;
