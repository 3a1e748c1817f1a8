//! bf16 token linears through the same cuBLASLt call as the FP8 GEMM (`fp8_gemm`), with the
//! bias in the epilogue: an experiment, off unless the engine switches it on
//! (`flux::ops::cuda::set_lt_gemm`). On an H200 it ran the 1024² step in 0.344 s instead of
//! candle's 0.633 s with outputs that were not finite (docs/gpu.md §5). The cause, found by
//! reading the code after those runs: `Fp8Gemm::matmul` declared the inputs E4M3 in the bf16
//! case too, so that 0.344 s was an FP8 GEMM over misread bytes. Fixed, not yet rerun.

// FFI to cuBLASLt: unsafe by nature, confined here and in `fp8_gemm`.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaDevice;
use candle_core::cuda_backend::cudarc::cublaslt::sys;
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut};
use candle_core::{CudaStorage, DType, Layout, Result, Shape, Tensor};
use half::bf16;

use crate::fp8_gemm::{Fp8Gemm, LT, Pointers, bind_context, cuda_view, err, state_for};

/// `x (…, in)` bf16 · bf16 `weight (out, in)` `+ bias` → `(…, out)` bf16 through the same
/// cuBLASLt call (bias in the epilogue). `None` when it does not apply or cuBLASLt has no
/// algorithm: the caller falls back to candle's matmul.
pub fn bf16_linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Option<Tensor>> {
    if BF16_UNAVAILABLE.load(Ordering::Relaxed)
        || !x.device().is_cuda()
        || x.dtype() != DType::BF16
        || weight.dtype() != DType::BF16
        || weight.rank() != 2
        || !weight.is_contiguous()
    {
        return Ok(None);
    }
    let (n, k) = weight.dims2()?;
    let in_dim = x.dims().last().copied().unwrap_or(0);
    if in_dim != k || k % 8 != 0 || n % 8 != 0 {
        return Ok(None);
    }
    if let Some(b) = bias
        && (b.dtype() != DType::BF16 || !b.is_contiguous() || b.elem_count() != n)
    {
        return Ok(None);
    }
    let rows = x.elem_count() / k;
    // Token GEMMs only: the modulation layers' one row per image stays with candle.
    if rows < MIN_BF16_ROWS {
        return Ok(None);
    }
    let mut out_dims = x.dims().to_vec();
    let x2 = x.contiguous()?.reshape((rows, k))?; // (…, in) → (rows, in)
    let op = Fp8Gemm {
        weight: weight.clone(),
        scale: None,
        bias: bias.cloned(),
        n,
        k,
    };
    let y = match x2.apply_op1_no_bwd(&op) {
        Ok(y) => y, // (rows, out)
        Err(_) if BF16_UNAVAILABLE.load(Ordering::Relaxed) => return Ok(None),
        Err(e) => return Err(e),
    };
    if let Some(last) = out_dims.last_mut() {
        *last = n;
    }
    Ok(Some(y.reshape(out_dims)?)) // (rows, out) → (…, out)
}

/// Fewest rows the bf16 GEMM takes.
const MIN_BF16_ROWS: usize = 16;

/// Set when cuBLASLt offered no bf16 algorithm: every later call falls back at once.
static BF16_UNAVAILABLE: AtomicBool = AtomicBool::new(false);

impl Fp8Gemm {
    /// The bf16 GEMM: `y = x · Wᵀ + b` with the bias in cuBLASLt's epilogue.
    pub(crate) fn bf16_fwd(&self, x: &CudaStorage, x_l: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev: CudaDevice = x.device().clone();
        let stream = dev.cuda_stream();
        let (rows, _k) = x_l.shape().dims2()?;
        let n = self.n;
        let x = x.as_cuda_slice::<bf16>()?.slice(x_l.start_offset()..);
        // SAFETY: every element of y is written by the GEMM.
        let mut y = unsafe { dev.alloc::<bf16>(rows * n) }?;
        let (w_s, w_l) = self.weight.storage_and_layout();
        let w = cuda_view::<bf16>(&w_s, w_l, "bf16 gemm: weight")?;
        let bias_storage = self.bias.as_ref().map(|b| b.storage_and_layout());
        let bias = match &bias_storage {
            None => None,
            Some((g, l)) => Some(cuda_view::<bf16>(g, l, "bf16 gemm: bias")?),
        };
        bind_context(&stream)?;
        LT.with(|cell| -> Result<()> {
            let mut states = cell.borrow_mut();
            let st = state_for(&mut states, &dev)?;
            let (x_p, _g1) = x.device_ptr(&stream);
            let (y_p, _g2) = y.device_ptr_mut(&stream);
            let (w_p, _g3) = w.device_ptr(&stream);
            let bias_p = bias.as_ref().map(|b| b.device_ptr(&stream));
            let (work_p, _g4) = st.workspace.device_ptr_mut(&stream);
            let ptrs = Pointers {
                w: w_p,
                w_scale: 0,
                q: x_p,
                x_scale: 0,
                y: y_p,
                bias: bias_p.as_ref().map(|(p, _)| *p),
                workspace: work_p,
            };
            let lt_stream = stream.cu_stream() as sys::cudaStream_t;
            self.matmul(st.handle, &mut st.algos, rows, false, &ptrs, lt_stream)
                .map_err(|e| {
                    BF16_UNAVAILABLE.store(true, Ordering::Relaxed);
                    err("cublasLtMatmul (bf16)", e)
                })
        })?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev), Shape::from((rows, n))))
    }
}
