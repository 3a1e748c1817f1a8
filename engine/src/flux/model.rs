//! The FLUX transformer (BFL `model.py` `Flux` @ 802fb47) with BFL key names, so a BFL checkpoint
//! (or the diffusers one, renamed by `weights`) loads as is.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::blocks::{DoubleStreamBlock, LastLayer, SingleStreamBlock};
use super::embed::{MlpEmbedder, timestep_embedding};
use super::linear::{BlockLinear, LinearPrecision, Operand};
use super::rope::RopeTable;
use crate::config::FluxConfig;

/// Inputs of one transformer forward (BFL `Flux.forward` arguments).
#[derive(Debug, Clone, Copy)]
pub struct FluxInputs<'a> {
    /// Packed image tokens `(b, n_img, in_channels)`: the target, then any context tokens.
    pub img: &'a Tensor,
    /// `(b, n_img, 3)` f32 position ids.
    pub img_ids: &'a Tensor,
    /// T5 hidden states `(b, n_txt, context_in_dim)`.
    pub txt: &'a Tensor,
    /// `(b, n_txt, 3)` f32 position ids (zeros).
    pub txt_ids: &'a Tensor,
    /// `(b)` flow time in [0, 1] (the model multiplies by 1000 itself).
    pub timesteps: &'a Tensor,
    /// Pooled CLIP `(b, vec_in_dim)`.
    pub y: &'a Tensor,
    /// `(b)` guidance strength (raw, e.g. 2.5); required when the model embeds guidance.
    pub guidance: Option<&'a Tensor>,
}

/// The two token streams and the modulation vector after the input embeddings.
#[derive(Debug, Clone)]
pub struct Streams {
    /// `(b, n_img, h)`.
    pub img: Tensor,
    /// `(b, n_txt, h)`.
    pub txt: Tensor,
    /// `(b, h)`.
    pub vec: Tensor,
}

/// The flow transformer. Compute dtype = the VarBuilder's dtype.
#[derive(Debug, Clone)]
pub struct Flux {
    cfg: FluxConfig,
    linear_precision: LinearPrecision,
    dtype: DType,
    /// dtype in which `1000·t` and `1000·guidance` are rounded before the sinusoid (embed.rs):
    /// the compute dtype, as in BFL and diffusers. Correctness checks that compare a bf16 run
    /// against f32 set both sides to the same value, so they measure kernels, not this rounding.
    conditioning_dtype: DType,
    img_in: BlockLinear,
    txt_in: BlockLinear,
    time_in: MlpEmbedder,
    vector_in: MlpEmbedder,
    guidance_in: Option<MlpEmbedder>,
    double_blocks: Vec<DoubleStreamBlock>,
    single_blocks: Vec<SingleStreamBlock>,
    final_layer: LastLayer,
}

impl Flux {
    /// Builds the model from BFL-named weights (model.py:29-78), all in the compute dtype.
    pub fn new(cfg: &FluxConfig, vb: VarBuilder<'_>) -> Result<Self> {
        Self::with_linear_precision(cfg, vb, LinearPrecision::Native)
    }

    /// Builds the model with the blocks' linear weights in `precision` (linear.rs); under `Fp8`
    /// each weight is quantized as it is read, so the full-precision copy never exists whole.
    pub fn with_linear_precision(
        cfg: &FluxConfig,
        vb: VarBuilder<'_>,
        precision: LinearPrecision,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        if !h.is_multiple_of(cfg.num_heads) {
            candle_core::bail!(
                "hidden_size {h} is not divisible by num_heads {}",
                cfg.num_heads
            );
        }
        let pe_dim: usize = cfg.axes_dim.iter().sum();
        if pe_dim != cfg.head_dim() {
            candle_core::bail!(
                "sum(axes_dim {:?}) = {pe_dim} must equal the head dim {}",
                cfg.axes_dim,
                cfg.head_dim()
            );
        }
        let double_blocks = (0..cfg.depth)
            .map(|i| DoubleStreamBlock::new(cfg, vb.pp("double_blocks").pp(i), precision))
            .collect::<Result<Vec<_>>>()?;
        let single_blocks = (0..cfg.depth_single_blocks)
            .map(|i| SingleStreamBlock::new(cfg, vb.pp("single_blocks").pp(i), precision))
            .collect::<Result<Vec<_>>>()?;
        let guidance_in = if cfg.guidance_embed {
            Some(MlpEmbedder::new(256, h, vb.pp("guidance_in"))?)
        } else {
            None
        };
        Ok(Self {
            cfg: cfg.clone(),
            linear_precision: precision,
            dtype: vb.dtype(),
            conditioning_dtype: vb.dtype(),
            img_in: BlockLinear::load(
                cfg.in_channels,
                h,
                true,
                vb.pp("img_in"),
                LinearPrecision::Native,
                Operand::Tokens,
            )?,
            txt_in: BlockLinear::load(
                cfg.context_in_dim,
                h,
                true,
                vb.pp("txt_in"),
                LinearPrecision::Native,
                Operand::Tokens,
            )?,
            time_in: MlpEmbedder::new(256, h, vb.pp("time_in"))?,
            vector_in: MlpEmbedder::new(cfg.vec_in_dim, h, vb.pp("vector_in"))?,
            guidance_in,
            double_blocks,
            single_blocks,
            final_layer: LastLayer::new(cfg, vb.pp("final_layer"))?,
        })
    }

    pub fn config(&self) -> &FluxConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn linear_precision(&self) -> LinearPrecision {
        self.linear_precision
    }

    /// Bytes of the blocks' linear weights, scales and biases (the share `Fp8` shrinks: ~95 % of
    /// the transformer's parameters at the 12B configuration).
    pub fn block_linear_bytes(&self) -> usize {
        let double = self.double_blocks.iter().flat_map(|b| b.linears());
        let single = self.single_blocks.iter().flat_map(|b| b.linears());
        double.chain(single).map(BlockLinear::resident_bytes).sum()
    }

    /// Round the timestep and guidance scalars in `dtype` instead of the compute dtype.
    /// Every linear layer by its canonical (BFL) name, `img_in` … `final_layer.linear`: where a
    /// job's LoRAs are applied (`crate::lora`).
    pub fn named_linears_mut(&mut self) -> Vec<(String, &mut BlockLinear)> {
        let mut out = vec![
            ("img_in".to_string(), &mut self.img_in),
            ("txt_in".to_string(), &mut self.txt_in),
        ];
        out.extend(self.time_in.named_linears_mut("time_in"));
        out.extend(self.vector_in.named_linears_mut("vector_in"));
        if let Some(g) = &mut self.guidance_in {
            out.extend(g.named_linears_mut("guidance_in"));
        }
        for (i, b) in self.double_blocks.iter_mut().enumerate() {
            out.extend(b.named_linears_mut(&format!("double_blocks.{i}")));
        }
        for (i, b) in self.single_blocks.iter_mut().enumerate() {
            out.extend(b.named_linears_mut(&format!("single_blocks.{i}")));
        }
        out.extend(self.final_layer.named_linears_mut());
        out
    }

    pub fn set_conditioning_dtype(&mut self, dtype: DType) {
        self.conditioning_dtype = dtype;
    }

    /// RoPE tables for the joint sequence `cat(txt_ids, img_ids)` (model.py:107-108), on the
    /// device of `img_ids`. Constant over a denoising run, so the sampler builds it once.
    pub fn rope(&self, txt_ids: &Tensor, img_ids: &Tensor) -> Result<RopeTable> {
        let ids = Tensor::cat(&[txt_ids, img_ids], 1)?; // (b, n_txt + n_img, 3)
        RopeTable::new(&ids, &self.cfg.axes_dim, self.cfg.theta, img_ids.device())
    }

    /// One forward; returns `(b, n_img, in_channels)` in the compute dtype.
    pub fn forward(&self, inp: &FluxInputs<'_>) -> Result<Tensor> {
        let pe = self.rope(inp.txt_ids, inp.img_ids)?;
        self.forward_with_rope(inp, &pe)
    }

    /// [`Flux::forward`] with precomputed RoPE tables (`inp.*_ids` are then not read).
    pub fn forward_with_rope(&self, inp: &FluxInputs<'_>, pe: &RopeTable) -> Result<Tensor> {
        let streams = self.embed(inp, pe)?;
        let (img, txt) = self.first_block(&streams, pe)?;
        let img = self.remaining_blocks(&img, &txt, &streams.vec, pe)?;
        self.head(&img, &streams.vec)
    }

    /// The input embeddings: image and text streams and the modulation vector.
    pub fn embed(&self, inp: &FluxInputs<'_>, pe: &RopeTable) -> Result<Streams> {
        if inp.img.rank() != 3 || inp.txt.rank() != 3 {
            candle_core::bail!(
                "img and txt must be (b, n, features), got {:?} and {:?}",
                inp.img.shape(),
                inp.txt.shape()
            );
        }
        let n_txt = inp.txt.dim(1)?;
        if pe.seq_len() != n_txt + inp.img.dim(1)? {
            candle_core::bail!(
                "RoPE table covers {} tokens but txt + img have {}",
                pe.seq_len(),
                n_txt + inp.img.dim(1)?
            );
        }
        let img = inp.img.to_dtype(self.dtype)?.apply(&self.img_in)?;
        // model.py:98-104: vec = time_in(emb(t)) [+ guidance_in(emb(g))] + vector_in(y).
        let mut vec = self.time_in.forward(
            &timestep_embedding(inp.timesteps, 256, self.conditioning_dtype)?
                .to_dtype(self.dtype)?,
        )?;
        if let Some(g_in) = &self.guidance_in {
            let Some(g) = inp.guidance else {
                candle_core::bail!("this model embeds guidance; a guidance value is required")
            };
            vec = (vec
                + g_in.forward(
                    &timestep_embedding(g, 256, self.conditioning_dtype)?.to_dtype(self.dtype)?,
                )?)?;
        }
        let vec = (vec + self.vector_in.forward(&inp.y.to_dtype(self.dtype)?)?)?;
        let txt = inp.txt.to_dtype(self.dtype)?.apply(&self.txt_in)?;
        Ok(Streams { img, txt, vec })
    }

    /// The first double block: `(img, txt)` after it (the input of step caching's comparison).
    pub fn first_block(&self, s: &Streams, pe: &RopeTable) -> Result<(Tensor, Tensor)> {
        match self.double_blocks.first() {
            Some(block) => block.forward(&s.img, &s.txt, &s.vec, pe),
            None => Ok((s.img.clone(), s.txt.clone())),
        }
    }

    /// Every block after the first; returns the image tokens' hidden states `(b, n_img, h)`.
    pub fn remaining_blocks(
        &self,
        img: &Tensor,
        txt: &Tensor,
        vec: &Tensor,
        pe: &RopeTable,
    ) -> Result<Tensor> {
        let (mut img, mut txt) = (img.clone(), txt.clone());
        for block in self.double_blocks.iter().skip(1) {
            (img, txt) = block.forward(&img, &txt, vec, pe)?;
        }
        let n_txt = txt.dim(1)?;
        let mut x = Tensor::cat(&[&txt, &img], 1)?; // (b, n_txt + n_img, h)
        for block in &self.single_blocks {
            x = block.forward(&x, vec, pe)?;
        }
        x.narrow(1, n_txt, x.dim(1)? - n_txt) // (b, n_img, h)
    }

    /// The final layer: image hidden states → `(b, n_img, in_channels)` predictions.
    pub fn head(&self, img: &Tensor, vec: &Tensor) -> Result<Tensor> {
        self.final_layer.forward(img, vec)
    }
}
