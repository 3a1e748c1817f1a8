//! Joint scaled-dot-product attention, `softmax(q·kᵀ/√d)·v` over the whole joint sequence with no
//! mask (BFL `math.py:6-12`, `scaled_dot_product_attention`).
//!
//! Softmax statistics are always f32: logits are computed from f32 copies of q and k, so a bf16
//! model never rounds a logit to bf16 (candle-transformers' `models/flux/model.rs`
//! `scaled_dot_product_attention` does, computing logits in the compute dtype); the probabilities
//! are cast back to the compute dtype for the product with v, as fused SDPA does. Heads are
//! processed in groups so the materialised `(b, heads, L, L)` scores stay under a memory budget.
//!
//! With the `flash-attn` feature, CUDA bf16 attention with head dim 128 (the 12B model) runs the
//! FlashAttention-2 kernel of `kontext-cuda` instead (FlashAttention-3 on Hopper with
//! `flash-attn-v3`) and never materialises the scores; other shapes and dtypes (the tiny model,
//! f32) keep the path below.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{D, DType, Result, Tensor};

/// Largest score block materialised at once (f32 bytes).
const SCORE_BUDGET_BYTES: usize = 1 << 30;

static FLASH_ATTN: AtomicBool = AtomicBool::new(true);

/// Turns the flash-attention kernel (feature `flash-attn`) on or off process-wide (on by
/// default): the GPU benchmark's A/B against the materialising fallback.
pub fn set_flash_attn(on: bool) {
    FLASH_ATTN.store(on, Ordering::Relaxed);
}

/// Whether [`attention`] uses the flash kernel for `q` (CUDA, bf16, head dim 128, compiled in).
pub fn uses_flash_attn(q: &Tensor) -> bool {
    #[cfg(feature = "flash-attn")]
    {
        FLASH_ATTN.load(Ordering::Relaxed)
            && q.device().is_cuda()
            && kontext_cuda::flash_attn::supports(q.dtype(), q.dims().last().copied().unwrap_or(0))
    }
    #[cfg(not(feature = "flash-attn"))]
    {
        let _ = q;
        false
    }
}

/// Lets Hopper GPUs take FlashAttention-3 (feature `flash-attn-v3`; on by default) or keeps
/// them on FlashAttention-2: the GPU benchmark's A/B. Without the feature it does nothing.
pub fn set_flash_attn3(on: bool) {
    #[cfg(feature = "flash-attn")]
    kontext_cuda::flash_attn::set_flash_attn3(on);
    #[cfg(not(feature = "flash-attn"))]
    let _ = on;
}

/// Which FlashAttention generation [`attention`] runs for `q` `(b, heads, seq_len, head_dim)`:
/// 3 (Hopper with `flash-attn-v3`), 2, or `None` for the materialising fallback.
pub fn flash_attn_generation(q: &Tensor) -> Option<u8> {
    if !uses_flash_attn(q) {
        return None;
    }
    #[cfg(feature = "flash-attn")]
    if let (candle_core::Device::Cuda(dev), Ok((_, _, seq_len, _))) = (q.device(), q.dims4())
        && kontext_cuda::flash_attn::uses_flash_attn3(dev, seq_len)
    {
        return Some(3);
    }
    Some(2)
}

/// Attention over q, k, v `(b, heads, seq_len, head_dim)`; returns `(b, seq_len, heads·head_dim)`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "flash-attn")]
    if uses_flash_attn(q) {
        let (b_sz, _, seq_len, head_dim) = q.dims4()?;
        // (b, H, L, D) -> (b, L, H, D) as strided views: the kernel reads them in place and
        // keeps the (b, H, L, L) scores in on-chip tiles (f32 statistics).
        let out = kontext_cuda::flash_attn::flash_attn(
            &q.transpose(1, 2)?,
            &k.transpose(1, 2)?,
            &v.transpose(1, 2)?,
            1.0 / (head_dim as f32).sqrt(),
        )?; // (b, L, H, D), contiguous
        return out.reshape((b_sz, seq_len, ())); // (b, L, H·D)
    }
    let (b_sz, n_head, seq_len, head_dim) = q.dims4()?;
    let dtype = q.dtype();
    let scale = 1.0 / (head_dim as f64).sqrt();
    let per_head = b_sz * seq_len * seq_len * 4;
    let group = (SCORE_BUDGET_BYTES / per_head.max(1)).clamp(1, n_head);
    let mut outs = Vec::with_capacity(n_head.div_ceil(group));
    let mut h0 = 0;
    while h0 < n_head {
        let hn = group.min(n_head - h0);
        let q = q.narrow(1, h0, hn)?.to_dtype(DType::F32)?.contiguous()?;
        let k = k.narrow(1, h0, hn)?.to_dtype(DType::F32)?.contiguous()?;
        let v = v.narrow(1, h0, hn)?.contiguous()?;
        let logits = (q.matmul(&k.t()?)? * scale)?; // (b, hn, L, L) f32
        let probs = candle_nn::ops::softmax_last_dim(&logits)?.to_dtype(dtype)?;
        outs.push(probs.matmul(&v)?); // (b, hn, L, D)
        h0 += hn;
    }
    let out = if outs.len() == 1 {
        outs.remove(0)
    } else {
        Tensor::cat(&outs, 1)?
    };
    // (b, H, L, D) -> (b, L, H, D) -> (b, L, H·D)
    out.transpose(1, 2)?.flatten_from(D::Minus2)
}
