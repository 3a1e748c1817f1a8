//! The transformer blocks with BFL key names (`modules/layers.py` @ 802fb47): modulation,
//! QK-norm self-attention projections, the MLP, the double-stream and single-stream blocks and the
//! final layer. Math per kontext-reference.md §4 "Block math".

use candle_core::{D, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::attention::attention;
use super::ops::{self, ModulationOut};
use super::rope::{RopeTable, apply_rope};
use crate::engine::config::FluxConfig;

/// BFL `Modulation` (layers.py:112-128): `lin(silu(vec))[:, None, :].chunk(k)`, k = 3 or 6.
#[derive(Debug, Clone)]
struct Modulation {
    lin: Linear,
    double: bool,
}

impl Modulation {
    fn new(dim: usize, double: bool, vb: VarBuilder<'_>) -> Result<Self> {
        let mult = if double { 6 } else { 3 };
        Ok(Self {
            lin: candle_nn::linear(dim, mult * dim, vb.pp("lin"))?,
            double,
        })
    }

    fn forward(&self, vec: &Tensor) -> Result<(ModulationOut, Option<ModulationOut>)> {
        let k = if self.double { 6 } else { 3 };
        let ys = vec
            .silu()?
            .apply(&self.lin)?
            .unsqueeze(1)?
            .chunk(k, D::Minus1)?; // k × (b, 1, dim)
        let triple = |i: usize| ModulationOut {
            shift: ys[i].clone(),
            scale: ys[i + 1].clone(),
            gate: ys[i + 2].clone(),
        };
        Ok((triple(0), self.double.then(|| triple(3))))
    }
}

/// BFL `QKNorm`: one RMSNorm scale for queries, one for keys (`norm.query_norm.scale`, ...).
#[derive(Debug, Clone)]
struct QkNorm {
    query_scale: Tensor,
    key_scale: Tensor,
}

impl QkNorm {
    fn new(head_dim: usize, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            query_scale: vb.get(head_dim, "query_norm.scale")?,
            key_scale: vb.get(head_dim, "key_norm.scale")?,
        })
    }
}

/// Splits fused `(b, L, 3·H·D)` projections into q, k, v `(b, H, L, D)` ("B L (K H D) -> K B H L D"),
/// applying the QK-norm to q and k.
fn split_qkv(qkv: &Tensor, num_heads: usize, norm: &QkNorm) -> Result<(Tensor, Tensor, Tensor)> {
    let (b_sz, seq_len, _) = qkv.dims3()?;
    let qkv = qkv.reshape((b_sz, seq_len, 3, num_heads, ()))?; // (b, L, 3, H, D)
    let part = |i: usize| qkv.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2); // (b, H, L, D)
    let q = ops::qk_rms_norm(&part(0)?, &norm.query_scale)?;
    let k = ops::qk_rms_norm(&part(1)?, &norm.key_scale)?;
    Ok((q, k, part(2)?))
}

/// RoPE on q and k, then joint attention; `(b, H, L, D)` in, `(b, L, H·D)` out (BFL `math.attention`).
fn rope_attention(q: &Tensor, k: &Tensor, v: &Tensor, pe: &RopeTable) -> Result<Tensor> {
    let q = apply_rope(q, pe)?;
    let k = apply_rope(k, pe)?;
    attention(&q, &k, v)
}

/// BFL `SelfAttention` weights: `qkv`, `norm`, `proj`.
#[derive(Debug, Clone)]
struct SelfAttention {
    qkv: Linear,
    norm: QkNorm,
    proj: Linear,
}

impl SelfAttention {
    fn new(cfg: &FluxConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            qkv: candle_nn::linear_b(h, 3 * h, cfg.qkv_bias, vb.pp("qkv"))?,
            norm: QkNorm::new(cfg.head_dim(), vb.pp("norm"))?,
            proj: candle_nn::linear(h, h, vb.pp("proj"))?,
        })
    }
}

/// BFL MLP `Sequential(Linear, GELU(tanh), Linear)`, keys `.0` and `.2`.
#[derive(Debug, Clone)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn new(cfg: &FluxConfig, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            fc1: candle_nn::linear(cfg.hidden_size, cfg.mlp_hidden(), vb.pp("0"))?,
            fc2: candle_nn::linear(cfg.mlp_hidden(), cfg.hidden_size, vb.pp("2"))?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        ops::gelu_tanh(&xs.apply(&self.fc1)?)?.apply(&self.fc2)
    }
}

/// Non-affine LayerNorm constants (`(hidden)` ones and zeros in the compute dtype).
#[derive(Debug, Clone)]
pub(crate) struct NormConsts {
    ones: Tensor,
    zeros: Tensor,
}

impl NormConsts {
    pub(crate) fn new(dim: usize, vb: &VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            ones: Tensor::ones(dim, vb.dtype(), vb.device())?,
            zeros: Tensor::zeros(dim, vb.dtype(), vb.device())?,
        })
    }

    fn modulate(&self, x: &Tensor, m: &ModulationOut) -> Result<Tensor> {
        self.shift_scale(x, &m.shift, &m.scale)
    }

    fn shift_scale(&self, x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
        ops::modulated_layer_norm(x, shift, scale, &self.ones, &self.zeros)
    }
}

/// One stream (img or txt) of a double block.
#[derive(Debug, Clone)]
struct Stream {
    modulation: Modulation,
    attn: SelfAttention,
    mlp: Mlp,
}

impl Stream {
    fn new(cfg: &FluxConfig, vb: &VarBuilder<'_>, prefix: &str) -> Result<Self> {
        Ok(Self {
            modulation: Modulation::new(cfg.hidden_size, true, vb.pp(format!("{prefix}_mod")))?,
            attn: SelfAttention::new(cfg, vb.pp(format!("{prefix}_attn")))?,
            mlp: Mlp::new(cfg, vb.pp(format!("{prefix}_mlp")))?,
        })
    }
}

/// BFL `DoubleStreamBlock` (layers.py:131-201): separate weights for txt and img, one joint attention.
#[derive(Debug, Clone)]
pub struct DoubleStreamBlock {
    img: Stream,
    txt: Stream,
    norm: NormConsts,
    num_heads: usize,
}

impl DoubleStreamBlock {
    pub fn new(cfg: &FluxConfig, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            img: Stream::new(cfg, &vb, "img")?,
            txt: Stream::new(cfg, &vb, "txt")?,
            norm: NormConsts::new(cfg.hidden_size, &vb)?,
            num_heads: cfg.num_heads,
        })
    }

    /// `img (b, L_img, h)`, `txt (b, L_txt, h)`, `vec (b, h)`; `pe` covers txt then img.
    pub fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        vec: &Tensor,
        pe: &RopeTable,
    ) -> Result<(Tensor, Tensor)> {
        let (img_mod1, img_mod2) = self.img.modulation.forward(vec)?;
        let (txt_mod1, txt_mod2) = self.txt.modulation.forward(vec)?;
        let (img_mod2, txt_mod2) = (
            img_mod2.expect("double modulation yields two triples; this is a bug"),
            txt_mod2.expect("double modulation yields two triples; this is a bug"),
        );

        let img_x = self.norm.modulate(img, &img_mod1)?;
        let (img_q, img_k, img_v) = split_qkv(
            &img_x.apply(&self.img.attn.qkv)?,
            self.num_heads,
            &self.img.attn.norm,
        )?;
        let txt_x = self.norm.modulate(txt, &txt_mod1)?;
        let (txt_q, txt_k, txt_v) = split_qkv(
            &txt_x.apply(&self.txt.attn.qkv)?,
            self.num_heads,
            &self.txt.attn.norm,
        )?;

        // Joint sequence, txt first (layers.py:175-177): (b, H, L_txt + L_img, D).
        let q = Tensor::cat(&[&txt_q, &img_q], 2)?;
        let k = Tensor::cat(&[&txt_k, &img_k], 2)?;
        let v = Tensor::cat(&[&txt_v, &img_v], 2)?;
        let attn = rope_attention(&q, &k, &v, pe)?; // (b, L, h)
        let n_txt = txt.dim(1)?;
        let txt_attn = attn.narrow(1, 0, n_txt)?;
        let img_attn = attn.narrow(1, n_txt, img.dim(1)?)?;

        let img = ops::gated_residual(img, &img_mod1.gate, &img_attn.apply(&self.img.attn.proj)?)?;
        let img_mlp = self
            .img
            .mlp
            .forward(&self.norm.modulate(&img, &img_mod2)?)?;
        let img = ops::gated_residual(&img, &img_mod2.gate, &img_mlp)?;

        let txt = ops::gated_residual(txt, &txt_mod1.gate, &txt_attn.apply(&self.txt.attn.proj)?)?;
        let txt_mlp = self
            .txt
            .mlp
            .forward(&self.norm.modulate(&txt, &txt_mod2)?)?;
        let txt = ops::gated_residual(&txt, &txt_mod2.gate, &txt_mlp)?;
        Ok((img, txt))
    }
}

/// BFL `SingleStreamBlock` (layers.py:204-254): fused `linear1` → [q, k, v | mlp], `linear2` over
/// `cat(attn, gelu(mlp))`.
#[derive(Debug, Clone)]
pub struct SingleStreamBlock {
    linear1: Linear,
    linear2: Linear,
    norm: QkNorm,
    modulation: Modulation,
    ln: NormConsts,
    hidden: usize,
    mlp_hidden: usize,
    num_heads: usize,
}

impl SingleStreamBlock {
    pub fn new(cfg: &FluxConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let (h, m) = (cfg.hidden_size, cfg.mlp_hidden());
        Ok(Self {
            linear1: candle_nn::linear(h, 3 * h + m, vb.pp("linear1"))?,
            linear2: candle_nn::linear(h + m, h, vb.pp("linear2"))?,
            norm: QkNorm::new(cfg.head_dim(), vb.pp("norm"))?,
            modulation: Modulation::new(h, false, vb.pp("modulation"))?,
            ln: NormConsts::new(h, &vb)?,
            hidden: h,
            mlp_hidden: m,
            num_heads: cfg.num_heads,
        })
    }

    /// `x (b, L, h)` is the joint txt+img sequence.
    pub fn forward(&self, x: &Tensor, vec: &Tensor, pe: &RopeTable) -> Result<Tensor> {
        let (m, _) = self.modulation.forward(vec)?;
        let x_mod = self.ln.modulate(x, &m)?;
        let lin1 = x_mod.apply(&self.linear1)?; // (b, L, 3h + mlp)
        let qkv = lin1.narrow(D::Minus1, 0, 3 * self.hidden)?;
        let mlp = lin1.narrow(D::Minus1, 3 * self.hidden, self.mlp_hidden)?;
        let (q, k, v) = split_qkv(&qkv, self.num_heads, &self.norm)?;
        let attn = rope_attention(&q, &k, &v, pe)?; // (b, L, h)
        let mlp = ops::gelu_tanh(&mlp)?;
        let out = Tensor::cat(&[&attn, &mlp], D::Minus1)?.apply(&self.linear2)?; // (b, L, h + mlp) -> (b, L, h)
        ops::gated_residual(x, &m.gate, &out)
    }
}

/// BFL `LastLayer` (layers.py:257-270): `adaLN_modulation.1(silu(vec))` chunked (shift, scale),
/// then `linear`.
#[derive(Debug, Clone)]
pub struct LastLayer {
    linear: Linear,
    ada_ln: Linear,
    ln: NormConsts,
}

impl LastLayer {
    pub fn new(cfg: &FluxConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            linear: candle_nn::linear(h, cfg.in_channels, vb.pp("linear"))?,
            ada_ln: candle_nn::linear(h, 2 * h, vb.pp("adaLN_modulation.1"))?,
            ln: NormConsts::new(h, &vb)?,
        })
    }

    pub fn forward(&self, x: &Tensor, vec: &Tensor) -> Result<Tensor> {
        let chunks = vec
            .silu()?
            .apply(&self.ada_ln)?
            .unsqueeze(1)?
            .chunk(2, D::Minus1)?; // 2 × (b, 1, h)
        let (shift, scale) = (&chunks[0], &chunks[1]);
        self.ln.shift_scale(x, shift, scale)?.apply(&self.linear)
    }
}
