//! Dispatch to the fused bf16 CUDA kernels of `kontext-cuda` (worker feature `fused-kernels`):
//! QK RMSNorm + RoPE + the joint head layout in one pass, and the modulated LayerNorm. The ops
//! (`super`) ask these first for CUDA tensors; `None` (feature off, switched off, CPU, f32, unusual
//! strides) means "use the candle composition". The kernels reproduce that composition's bf16
//! roundings (kernels/fused_bf16.cu), so both paths compute the same function.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Result, Tensor};

use super::QkvStream;
use crate::flux::rope::RopeTable;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the fused kernels on or off process-wide (on by default; A/B checks and benchmarks).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

static LT_GEMM: AtomicBool = AtomicBool::new(false);

/// Turns the cuBLASLt bf16 GEMM of the token linears (feature `fp8-gemm`) on or off
/// process-wide. **Off by default**: on an H200 it ran the 1024² step in 0.344 s instead of
/// 0.633 s, but its outputs were not finite (docs/gpu.md §5, "cuBLASLt bf16 linears"), so it is
/// an experiment until that is found.
pub fn set_lt_gemm(on: bool) {
    LT_GEMM.store(on, Ordering::Relaxed);
}

/// Whether this build has the cuBLASLt GEMM and it is switched on.
pub fn lt_gemm_enabled() -> bool {
    kontext_cuda::HAS_FP8_GEMM && LT_GEMM.load(Ordering::Relaxed)
}

/// Whether this build has the fused kernels and they are switched on.
pub fn enabled() -> bool {
    kontext_cuda::HAS_FUSED && ENABLED.load(Ordering::Relaxed)
}

/// q, k, v `(b, H, ΣL_i, D)` for the joint sequence of `streams`, or `None` to fall back.
pub fn attention_inputs(
    streams: &[QkvStream<'_>],
    num_heads: usize,
    pe: &RopeTable,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    #[cfg(feature = "fused-kernels")]
    if enabled() && pe.cos.device().is_cuda() {
        let streams: Vec<_> = streams
            .iter()
            .map(|s| kontext_cuda::fused::QkvStream {
                qkv: s.qkv.clone(),
                q_scale: s.q_scale.clone(),
                k_scale: s.k_scale.clone(),
            })
            .collect();
        return kontext_cuda::fused::qk_norm_rope(&streams, num_heads, &pe.cos, &pe.sin);
    }
    let _ = (streams, num_heads, pe);
    Ok(None)
}

/// `(1 + scale)·LN(x) + shift`, or `None` to fall back.
pub fn modulated_layer_norm(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Option<Tensor>> {
    #[cfg(feature = "fused-kernels")]
    if enabled() && x.device().is_cuda() {
        return kontext_cuda::fused::modulated_layer_norm(x, shift, scale);
    }
    let _ = (x, shift, scale);
    Ok(None)
}
