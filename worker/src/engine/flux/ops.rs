//! The transformer's non-GEMM building blocks, each with BFL's exact math and dtype handling
//! (kontext-reference.md §4 "Block math"). Every op is one function so a device-specific fast
//! path can replace the candle composition behind it without touching the block code.

use candle_core::{D, DType, Result, Tensor};

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

/// `(1 + scale)·LN(x) + shift` with a non-affine LayerNorm, eps 1e-6 (layers.py:192-193).
///
/// `ones`/`zeros` are `(hidden)` tensors in x's dtype; candle's fused layer_norm needs them.
pub fn modulated_layer_norm(
    x: &Tensor,
    shift: &Tensor,
    scale: &Tensor,
    ones: &Tensor,
    zeros: &Tensor,
) -> Result<Tensor> {
    let normed = candle_nn::ops::layer_norm(&x.contiguous()?, ones, zeros, LN_EPS)?;
    normed.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)
}

/// `x + gate·y` (BFL `img + img_mod1.gate * ...`).
pub fn gated_residual(x: &Tensor, gate: &Tensor, y: &Tensor) -> Result<Tensor> {
    x + y.broadcast_mul(gate)?
}

/// GELU with the tanh approximation (BFL `nn.GELU(approximate="tanh")`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    x.gelu()
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
