//! CPU f32 fast paths for the transformer's ops (phase-2 performance work).
//!
//! candle's CPU backend allocates a fresh buffer for every op, evaluates `exp`/`tanh` with scalar
//! libm calls and materialises `(b, heads, L, L)` attention scores. These kernels fuse the
//! elementwise chains (modulate + LayerNorm, QK-norm + RoPE + head layout, GELU, gated residual),
//! run attention blocked per query tile without materialising the scores, evaluate `exp` with
//! vectorisable polynomials (`math`), and fold the bias into the GEMM (`gemm`).
//!
//! They implement exactly the math of `ops` (same formulas, f32 throughout); `ops` calls them only
//! for contiguous-enough f32 tensors on the CPU and falls back to the candle composition otherwise
//! (CUDA, bf16). `set_enabled(false)` forces the fallback everywhere (A/B checks, benchmarks).

pub mod attention;
pub mod elementwise;
pub mod gemm;
pub mod linear;
pub mod math;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{CpuStorage, DType, Device, Layout, Result, Storage, Tensor};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the CPU kernels on or off process-wide (on by default).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether the fast path applies to `t`: kernels on, CPU device, f32.
pub fn applies(t: &Tensor) -> bool {
    enabled() && matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32
}

/// Runs `f` on the f32 storage and layout of a CPU tensor.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32], &Layout) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => f(v, layout),
        _ => candle_core::bail!(
            "CPU kernel expects a CPU f32 tensor, got {:?} on {:?}",
            t.dtype(),
            t.device()
        ),
    }
}

/// A copy of a small tensor's values (modulation vectors, norm scales).
pub(crate) fn to_vec_f32(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()
}

/// Row view of a tensor whose last dim is contiguous: `(rows, cols, row_stride, offset)` where
/// all leading dims merge into rows. `None` when the leading dims do not merge with one stride.
pub(crate) fn row_view(layout: &Layout) -> Option<(usize, usize, usize, usize)> {
    let dims = layout.dims();
    let strides = layout.stride();
    let n = dims.len();
    if n < 2 || (dims[n - 1] > 1 && strides[n - 1] != 1) {
        return None;
    }
    let row_stride = strides[n - 2];
    let mut rows = dims[n - 2];
    let mut expected = row_stride * dims[n - 2];
    for i in (0..n - 2).rev() {
        if dims[i] != 1 && strides[i] != expected {
            return None;
        }
        rows *= dims[i];
        expected *= dims[i];
    }
    Some((rows, dims[n - 1], row_stride, layout.start_offset()))
}

/// Runs `f` compiled for the best SIMD instruction set this CPU has (AVX-512, AVX2+FMA, …, via
/// `pulp`'s runtime dispatch). Pass an `#[inline(always)]` closure: only code inlined into the
/// dispatched function is compiled with the wider instructions (and `mul_add` becomes an FMA
/// instead of a libm call).
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    struct Op<F>(F);
    impl<R, F: FnOnce() -> R> pulp::WithSimd for Op<F> {
        type Output = R;
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _simd: S) -> R {
            (self.0)()
        }
    }
    pulp::Arch::new().dispatch(Op(f))
}

/// Number of threads candle (and the `gemm` crate) use.
pub(crate) fn threads() -> usize {
    candle_core::utils::get_num_threads()
}
