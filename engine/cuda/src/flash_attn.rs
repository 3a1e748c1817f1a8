//! FlashAttention-2 forward (kernels/flash_attn_bf16_hd128.cu) as a candle `CustomOp3`, and on
//! Hopper (compute capability 9.x) FlashAttention-3 (kernels/flash_attn3_bf16_hd128.cu, feature
//! `flash-attn-v3`) behind the same op: same layouts, same f32 statistics; query lengths of 64
//! or less keep FlashAttention-2 (FA3's one-warpgroup kernel is not built).
//!
//! Only bf16 with head dim 128 and as many K/V heads as query heads is compiled in (the FLUX
//! transformer's attention); [`supports`] says whether a call can take this path, and callers
//! fall back to their own attention otherwise. Softmax statistics are f32 inside the kernel, so
//! logits are never rounded to bf16 (docs/engine.md §Attention), like PyTorch's fused SDPA.

// FFI to the nvcc-compiled kernel and raw device pointers: unsafe by nature, confined here.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut};
use candle_core::{CpuStorage, CudaStorage, DType, Layout, Result, Shape, Tensor};
use half::bf16;

/// The head dim the kernel is compiled for.
pub const HEAD_DIM: usize = 128;

/// Both entry points (kernels/flash_attn_bf16_hd128.cu and flash_attn3_bf16_hd128.cu) share one
/// C signature: q, k, v, o, lse, then (batch, row, head) strides of q, k, v and o, then b, h,
/// seqlen_q, seqlen_k, softmax_scale and the stream; they return a cudaError_t.
macro_rules! flash_entry_points {
    ($($(#[$attr:meta])* fn $name:ident;)*) => {
        $(
            $(#[$attr])*
            unsafe extern "C" {
                fn $name(
                    q: *const c_void,
                    k: *const c_void,
                    v: *const c_void,
                    o: *mut c_void,
                    lse: *mut f32,
                    q_batch_stride: i64,
                    q_row_stride: i64,
                    q_head_stride: i64,
                    k_batch_stride: i64,
                    k_row_stride: i64,
                    k_head_stride: i64,
                    v_batch_stride: i64,
                    v_row_stride: i64,
                    v_head_stride: i64,
                    o_batch_stride: i64,
                    o_row_stride: i64,
                    o_head_stride: i64,
                    b: i32,
                    h: i32,
                    seqlen_q: i32,
                    seqlen_k: i32,
                    softmax_scale: f32,
                    stream: *mut c_void,
                ) -> i32;
            }
        )*
    };
}

flash_entry_points! {
    fn kontext_flash_attn_bf16_hd128;
    #[cfg(feature = "flash-attn-v3")]
    fn kontext_flash_attn3_bf16_hd128;
}

static FLASH_ATTN3: AtomicBool = AtomicBool::new(true);

/// Lets Hopper GPUs take FlashAttention-3 (on by default when compiled in) or keeps them on
/// FlashAttention-2: the GPU benchmark's A/B.
pub fn set_flash_attn3(on: bool) {
    FLASH_ATTN3.store(on, Ordering::Relaxed);
}

/// Whether a call on `dev` with `seqlen_q` query rows takes FlashAttention-3.
pub fn uses_flash_attn3(dev: &candle_core::CudaDevice, seqlen_q: usize) -> bool {
    use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute as A;
    crate::HAS_FLASH_ATTN3
        && FLASH_ATTN3.load(Ordering::Relaxed)
        && seqlen_q > 64
        && dev
            .cuda_stream()
            .context()
            .attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
            .is_ok_and(|major| major == 9)
}

/// Whether [`flash_attn`] handles tensors of this dtype and head dim.
pub fn supports(dtype: DType, head_dim: usize) -> bool {
    dtype == DType::BF16 && head_dim == HEAD_DIM
}

/// `softmax(q·kᵀ·scale)·v` for q `(b, L_q, H, 128)`, k and v `(b, L_k, H, 128)`, bf16 on CUDA.
/// Any strides work as long as the last dim is contiguous (e.g. a `(b, H, L, D)` tensor
/// transposed to `(b, L, H, D)` needs no copy). Returns a contiguous `(b, L_q, H, 128)`.
pub fn flash_attn(q: &Tensor, k: &Tensor, v: &Tensor, softmax_scale: f32) -> Result<Tensor> {
    q.apply_op3_no_bwd(k, v, &FlashAttn { softmax_scale })
}

struct FlashAttn {
    softmax_scale: f32,
}

/// The C signature both kernels share.
type KernelFn = unsafe extern "C" fn(
    *const c_void,
    *const c_void,
    *const c_void,
    *mut c_void,
    *mut f32,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i32,
    i32,
    i32,
    i32,
    f32,
    *mut c_void,
) -> i32;

#[cfg(feature = "flash-attn-v3")]
fn flash_attn3_kernel() -> KernelFn {
    kontext_flash_attn3_bf16_hd128
}

/// Never called: [`uses_flash_attn3`] is false without the feature.
#[cfg(not(feature = "flash-attn-v3"))]
fn flash_attn3_kernel() -> KernelFn {
    kontext_flash_attn_bf16_hd128
}

/// Strides `(batch, row, head)` of a rank-4 `(b, L, H, D)` layout whose last dim is contiguous.
fn strides(name: &str, l: &Layout) -> Result<(i64, i64, i64)> {
    let s = l.stride();
    if s.len() != 4 {
        candle_core::bail!(
            "flash-attn: {name} must be (b, seq, heads, head_dim), got {:?}",
            l.shape()
        );
    }
    if s[3] != 1 {
        candle_core::bail!("flash-attn: the last dim of {name} must be contiguous, strides {s:?}");
    }
    let as_i64 =
        |x: usize| i64::try_from(x).map_err(|_| candle_core::Error::msg("stride overflow"));
    Ok((as_i64(s[0])?, as_i64(s[1])?, as_i64(s[2])?))
}

fn as_i32(name: &str, x: usize) -> Result<i32> {
    i32::try_from(x)
        .map_err(|_| candle_core::Error::msg(format!("flash-attn: {name} {x} is too large")))
}

impl candle_core::CustomOp3 for FlashAttn {
    fn name(&self) -> &'static str {
        "kontext-flash-attn"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("flash-attn runs only on CUDA; use the fallback attention on the CPU")
    }

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        q_l: &Layout,
        k: &CudaStorage,
        k_l: &Layout,
        v: &CudaStorage,
        v_l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        for (name, s) in [("q", q), ("k", k), ("v", v)] {
            if s.dtype() != DType::BF16 {
                candle_core::bail!(
                    "flash-attn: {name} is {:?}; only bf16 is compiled in",
                    s.dtype()
                );
            }
        }
        let (b, seqlen_q, heads, head_dim) = q_l.shape().dims4()?;
        let (kb, seqlen_k, k_heads, k_dim) = k_l.shape().dims4()?;
        if head_dim != HEAD_DIM {
            candle_core::bail!("flash-attn: head dim {head_dim}; only {HEAD_DIM} is compiled in");
        }
        if (kb, k_heads, k_dim) != (b, heads, head_dim) || v_l.shape() != k_l.shape() {
            candle_core::bail!(
                "flash-attn: shapes q {:?}, k {:?}, v {:?} do not match (b, L, H, D)",
                q_l.shape(),
                k_l.shape(),
                v_l.shape()
            );
        }
        let (qb, qr, qh) = strides("q", q_l)?;
        let (kbs, kr, kh) = strides("k", k_l)?;
        let (vb, vr, vh) = strides("v", v_l)?;

        let dev = q.device().clone();
        let stream = dev.cuda_stream();
        let q = q.as_cuda_slice::<bf16>()?.slice(q_l.start_offset()..);
        let k = k.as_cuda_slice::<bf16>()?.slice(k_l.start_offset()..);
        let v = v.as_cuda_slice::<bf16>()?.slice(v_l.start_offset()..);
        let out_shape = q_l.shape().clone();
        let o_l = Layout::contiguous(&out_shape);
        let (ob, or, oh) = strides("out", &o_l)?;
        // SAFETY: every element of `dst` is written by the kernel (one tile per query block
        // covers all (b, row, head) positions).
        let mut dst = unsafe { dev.alloc::<bf16>(out_shape.elem_count()) }?;
        let mut lse = dev.alloc_zeros::<f32>(b * heads * seqlen_q)?;
        let code = {
            let (q_ptr, _gq) = q.device_ptr(&stream);
            let (k_ptr, _gk) = k.device_ptr(&stream);
            let (v_ptr, _gv) = v.device_ptr(&stream);
            let (o_ptr, _go) = dst.device_ptr_mut(&stream);
            let (lse_ptr, _gl) = lse.device_ptr_mut(&stream);
            let kernel: KernelFn = if uses_flash_attn3(&dev, seqlen_q) {
                flash_attn3_kernel()
            } else {
                kontext_flash_attn_bf16_hd128
            };
            // SAFETY: the pointers are live device buffers of the checked shapes and strides,
            // held by the guards until the launch is queued on `stream`, which orders every later
            // use of them; both kernels write every element of `dst` and `lse`.
            unsafe {
                kernel(
                    q_ptr as *const c_void,
                    k_ptr as *const c_void,
                    v_ptr as *const c_void,
                    o_ptr as *mut c_void,
                    lse_ptr as *mut f32,
                    qb,
                    qr,
                    qh,
                    kbs,
                    kr,
                    kh,
                    vb,
                    vr,
                    vh,
                    ob,
                    or,
                    oh,
                    as_i32("batch", b)?,
                    as_i32("heads", heads)?,
                    as_i32("query length", seqlen_q)?,
                    as_i32("key length", seqlen_k)?,
                    self.softmax_scale,
                    stream.cu_stream() as *mut c_void,
                )
            }
        };
        if code != 0 {
            candle_core::bail!("flash-attn: kernel launch failed with cudaError_t {code}");
        }
        drop(lse);
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), out_shape))
    }
}
