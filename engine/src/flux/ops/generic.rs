//! The candle compositions of the ops: any device and dtype (CUDA without the fused kernels,
//! bf16, or the CPU kernels switched off).

use candle_core::{D, DType, Result, Tensor};

use super::{LN_EPS, QkvStream, RMS_EPS};
use crate::flux::rope::{RopeTable, apply_rope};

pub fn modulated_layer_norm(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let h = x.dim(D::Minus1)?;
    let ones = Tensor::ones(h, x.dtype(), x.device())?;
    let zeros = Tensor::zeros(h, x.dtype(), x.device())?;
    let normed = candle_nn::ops::layer_norm(&x.contiguous()?, &ones, &zeros, LN_EPS)?;
    normed.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)
}

pub fn gated_residual(x: &Tensor, gate: &Tensor, y: &Tensor) -> Result<Tensor> {
    x + y.broadcast_mul(gate)?
}

pub fn cat_gelu(attn: &Tensor, mlp: &Tensor) -> Result<Tensor> {
    Tensor::cat(&[attn, &mlp.gelu()?], D::Minus1)
}

/// BFL `RMSNorm` on `(b, heads, seq_len, head_dim)`: normalise in f32, cast back, then
/// × scale in the compute dtype (layers.py:63-73).
pub fn qk_rms_norm(x: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?;
    let ms = x32.sqr()?.mean_keepdim(D::Minus1)?;
    let rrms = (ms + RMS_EPS)?.sqrt()?.recip()?;
    x32.broadcast_mul(&rrms)?
        .to_dtype(dtype)?
        .broadcast_mul(scale)
}

pub fn attention_inputs(
    streams: &[QkvStream<'_>],
    num_heads: usize,
    pe: &RopeTable,
) -> Result<(Tensor, Tensor, Tensor)> {
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
