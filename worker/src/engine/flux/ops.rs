//! The transformer's building blocks as functions, each with BFL's exact math and dtype handling
//! (kontext-reference.md §4 "Block math"). The block code calls only these, so a device-specific
//! fast path can replace the candle composition behind one without touching the blocks. Each is
//! timed under its op class for the benchmark (`profile`).

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::Linear;

use super::attention;
use super::profile::{OpClass, scope};
use super::rope::{RopeTable, apply_rope};

/// LayerNorm eps (BFL `nn.LayerNorm(..., elementwise_affine=False, eps=1e-6)`).
pub const LN_EPS: f32 = 1e-6;
/// QK RMSNorm eps (BFL `RMSNorm`, layers.py:63-73).
pub const RMS_EPS: f64 = 1e-6;

/// One modulation triple, each `(b, 1, hidden)` (BFL `ModulationOut`, chunk order shift, scale, gate).
#[derive(Debug, Clone)]
pub struct ModulationOut {
    pub shift: Tensor,
    pub scale: Tensor,
    pub gate: Tensor,
}

/// `x·Wᵀ + b` against a weight (a GEMM).
pub fn linear(x: &Tensor, l: &Linear) -> Result<Tensor> {
    let _t = scope(OpClass::Matmul);
    l.forward(x)
}

/// `(1 + scale)·LN(x) + shift` with a non-affine LayerNorm, eps 1e-6 (layers.py:192-193).
/// `shift`/`scale` are `(b, 1, hidden)`.
pub fn modulated_layer_norm(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let _t = scope(OpClass::Elementwise);
    let h = x.dim(D::Minus1)?;
    let ones = Tensor::ones(h, x.dtype(), x.device())?;
    let zeros = Tensor::zeros(h, x.dtype(), x.device())?;
    let normed = candle_nn::ops::layer_norm(&x.contiguous()?, &ones, &zeros, LN_EPS)?;
    normed.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)
}

/// `x + gate·y` (BFL `img + img_mod1.gate * ...`), `gate (b, 1, hidden)`.
pub fn gated_residual(x: &Tensor, gate: &Tensor, y: &Tensor) -> Result<Tensor> {
    let _t = scope(OpClass::Elementwise);
    x + y.broadcast_mul(gate)?
}

/// GELU with the tanh approximation (BFL `nn.GELU(approximate="tanh")`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    let _t = scope(OpClass::Elementwise);
    x.gelu()
}

/// `cat(a, b)` along the feature axis (the single block's `linear2` input).
pub fn cat_features(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let _t = scope(OpClass::Elementwise);
    Tensor::cat(&[a, b], D::Minus1)
}

/// BFL `RMSNorm` on `(b, heads, seq_len, head_dim)`: normalise in f32, cast back, then × scale
/// in the compute dtype (layers.py:63-73).
pub fn qk_rms_norm(x: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?;
    let ms = x32.sqr()?.mean_keepdim(D::Minus1)?;
    let rrms = (ms + RMS_EPS)?.sqrt()?.recip()?;
    x32.broadcast_mul(&rrms)?
        .to_dtype(dtype)?
        .broadcast_mul(scale)
}

/// The fused q/k/v projection of one stream and its QK-norm scales.
#[derive(Debug, Clone, Copy)]
pub struct QkvStream<'a> {
    /// `(b, L_i, 3·H·D)` ("B L (K H D)"); may be a column slice of a wider output.
    pub qkv: &'a Tensor,
    pub q_scale: &'a Tensor,
    pub k_scale: &'a Tensor,
}

/// Attention inputs for the joint sequence of `streams` (in order, e.g. txt then img):
/// "B L (K H D) -> K B H L D", QK-norm per stream, concatenation along L, RoPE on q and k.
/// Returns q, k, v `(b, H, ΣL_i, D)`.
pub fn attention_inputs(
    streams: &[QkvStream<'_>],
    num_heads: usize,
    pe: &RopeTable,
) -> Result<(Tensor, Tensor, Tensor)> {
    let _t = scope(OpClass::Elementwise);
    let mut qs = Vec::with_capacity(streams.len());
    let mut ks = Vec::with_capacity(streams.len());
    let mut vs = Vec::with_capacity(streams.len());
    for s in streams {
        let (b_sz, seq_len, _) = s.qkv.dims3()?;
        let qkv = s.qkv.reshape((b_sz, seq_len, 3, num_heads, ()))?; // (b, L, 3, H, D)
        let part = |i: usize| qkv.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2); // (b, H, L, D)
        qs.push(qk_rms_norm(&part(0)?, s.q_scale)?);
        ks.push(qk_rms_norm(&part(1)?, s.k_scale)?);
        vs.push(part(2)?);
    }
    let q = Tensor::cat(&qs, 2)?; // (b, H, ΣL, D)
    let k = Tensor::cat(&ks, 2)?;
    let v = Tensor::cat(&vs, 2)?.contiguous()?;
    Ok((apply_rope(&q, pe)?, apply_rope(&k, pe)?, v))
}

/// Joint attention, `(b, H, L, D)` in, `(b, L, H·D)` out.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let _t = scope(OpClass::Attention);
    attention::attention(q, k, v)
}
