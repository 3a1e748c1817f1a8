//! The transformer's building blocks as functions, each with BFL's exact math and dtype handling
//! (BFL `src/flux/modules/layers.py`; docs/engine.md §Transformer blocks). The block code calls
//! only these. Each op dispatches to the fused CPU kernel (`cpu`) for f32 CPU tensors, then to the
//! fused CUDA kernels (`cuda`) where they apply, and otherwise runs the candle composition in
//! `generic` (CUDA, bf16, or `cpu::set_enabled(false)`); both compute the same formulas. Each op is
//! timed under its op class for the benchmark (`profile`).
//!
//! The children implement the ops and take their constants and types from here: `cpu` (fused
//! f32 CPU kernels), `cuda` (the fused bf16 CUDA kernels, feature `fused-kernels`), `generic`
//! (the candle compositions).

pub mod cpu;
pub mod cuda;
pub(crate) mod generic;

use candle_core::{Module, Result, Tensor};
use candle_nn::Linear;

use super::profile::{OpClass, scope};
use super::rope::RopeTable;

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

/// The fused q/k/v projection of one stream and its QK-norm scales.
#[derive(Debug, Clone, Copy)]
pub struct QkvStream<'a> {
    /// `(b, L_i, 3·H·D)` ("B L (K H D)"); may be a column slice of a wider output.
    pub qkv: &'a Tensor,
    pub q_scale: &'a Tensor,
    pub k_scale: &'a Tensor,
}

/// `x·Wᵀ + b` against a weight (a GEMM). With `cuda::set_lt_gemm(true)` in a `fp8-gemm` build,
/// bf16 token GEMMs go through cuBLASLt with the bias in its epilogue
/// (`kontext_cuda::lt_bf16::bf16_linear`): an experiment, off by default (docs/gpu.md §5).
pub fn linear(x: &Tensor, l: &Linear) -> Result<Tensor> {
    let _t = scope(OpClass::Matmul);
    if cpu::applies(x) && cpu::applies(l.weight()) {
        return cpu::linear::linear(x, l.weight(), l.bias());
    }
    #[cfg(feature = "fp8-gemm")]
    if cuda::lt_gemm_enabled()
        && let Some(y) = kontext_cuda::lt_bf16::bf16_linear(x, l.weight(), l.bias())?
    {
        return Ok(y);
    }
    l.forward(x)
}

/// `(1 + scale)·LN(x) + shift` with a non-affine LayerNorm, eps 1e-6 (layers.py:192-193).
/// `shift`/`scale` are `(b, 1, hidden)`.
pub fn modulated_layer_norm(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let _t = scope(OpClass::Elementwise);
    if cpu::applies(x) {
        return cpu::elementwise::modulated_layer_norm(x, shift, scale);
    }
    if let Some(y) = cuda::modulated_layer_norm(x, shift, scale)? {
        return Ok(y);
    }
    generic::modulated_layer_norm(x, shift, scale)
}

/// `x + gate·y` (BFL `img + img_mod1.gate * ...`), `gate (b, 1, hidden)`. Takes `y` by value:
/// the CPU path reuses its buffer.
pub fn gated_residual(x: &Tensor, gate: &Tensor, y: Tensor) -> Result<Tensor> {
    let _t = scope(OpClass::Elementwise);
    if cpu::applies(x) && cpu::applies(&y) {
        return cpu::elementwise::gated_residual(x, gate, y);
    }
    generic::gated_residual(x, gate, &y)
}

/// GELU with the tanh approximation (BFL `nn.GELU(approximate="tanh")`). Takes `x` by value: the
/// CPU path works in place.
pub fn gelu_tanh(x: Tensor) -> Result<Tensor> {
    let _t = scope(OpClass::Elementwise);
    if cpu::applies(&x) {
        return cpu::elementwise::gelu_tanh_in_place(x);
    }
    x.gelu()
}

/// `cat(attn, gelu(mlp))` along the feature axis (the single block's `linear2` input).
pub fn cat_gelu(attn: &Tensor, mlp: &Tensor) -> Result<Tensor> {
    let _t = scope(OpClass::Elementwise);
    if cpu::applies(attn) && cpu::applies(mlp) {
        return cpu::elementwise::cat_gelu(attn, mlp);
    }
    generic::cat_gelu(attn, mlp)
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
    if streams.iter().all(|s| cpu::applies(s.qkv)) {
        let fast: Vec<_> = streams
            .iter()
            .map(|s| {
                Ok(cpu::elementwise::Stream {
                    qkv: s.qkv,
                    q_scale: cpu::to_vec_f32(s.q_scale)?,
                    k_scale: cpu::to_vec_f32(s.k_scale)?,
                })
            })
            .collect::<Result<_>>()?;
        let qkv = cpu::elementwise::attention_inputs(&fast, num_heads, pe)?; // (3, b, H, L, D)
        return Ok((qkv.get(0)?, qkv.get(1)?, qkv.get(2)?));
    }
    if let Some(qkv) = cuda::attention_inputs(streams, num_heads, pe)? {
        return Ok(qkv);
    }
    generic::attention_inputs(streams, num_heads, pe)
}

/// Joint attention, `(b, H, L, D)` in, `(b, L, H·D)` out.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let _t = scope(OpClass::Attention);
    if cpu::applies(q) {
        return cpu::attention::attention(q, k, v);
    }
    super::attention::attention(q, k, v)
}
