//! Fused bf16 elementwise kernels (kernels/fused_bf16.cu) for the FLUX blocks on CUDA:
//! [`qk_norm_rope`] (QK RMSNorm + RoPE + the joint `(b, H, L, D)` layout, one pass instead of
//! ~15) and [`modulated_layer_norm`] (`(1 + scale)·LN(x) + shift`, one pass instead of four).
//! Both reproduce the bf16 roundings of the candle compositions they replace (BFL's), and return
//! `None` when an input is outside what the kernels handle, so callers fall back.

// FFI to the nvcc-compiled kernels and raw device pointers: unsafe by nature, confined here.
#![allow(unsafe_code)]

use std::ffi::c_void;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut};
use candle_core::{CpuStorage, CudaStorage, DType, Layout, Result, Shape, Storage, Tensor};
use half::bf16;

/// RMSNorm eps (BFL layers.py:63-73) and LayerNorm eps (layers.py:192).
const EPS: f32 = 1e-6;

unsafe extern "C" {
    fn kontext_qk_norm_rope_bf16(
        qkv: *const c_void,
        qkv_batch_stride: i64,
        qkv_row_stride: i64,
        q_scale: *const c_void,
        k_scale: *const c_void,
        cos: *const f32,
        sin: *const f32,
        q_out: *mut c_void,
        k_out: *mut c_void,
        v_out: *mut c_void,
        b: i32,
        l_s: i32,
        h: i32,
        d: i32,
        l_total: i32,
        l_off: i32,
        eps: f32,
        stream: *mut c_void,
    ) -> i32;

    fn kontext_modulated_layer_norm_bf16(
        x: *const c_void,
        shift: *const c_void,
        scale: *const c_void,
        y: *mut c_void,
        b: i32,
        rows_per_batch: i32,
        n: i32,
        mod_batch_stride: i64,
        eps: f32,
        stream: *mut c_void,
    ) -> i32;
}

fn i32_of(what: &str, x: usize) -> Result<i32> {
    i32::try_from(x)
        .map_err(|_| candle_core::Error::msg(format!("fused kernel: {what} {x} is too large")))
}

fn i64_of(x: usize) -> Result<i64> {
    i64::try_from(x).map_err(|_| candle_core::Error::msg("fused kernel: stride overflow"))
}

fn launched(what: &str, code: i32) -> Result<()> {
    if code != 0 {
        candle_core::bail!("{what}: kernel launch failed with cudaError_t {code}");
    }
    Ok(())
}

fn is_cuda_bf16(t: &Tensor) -> bool {
    t.device().is_cuda() && t.dtype() == DType::BF16
}

/// One stream's fused projection and its QK-norm scales.
#[derive(Debug, Clone)]
pub struct QkvStream {
    /// `(b, L_s, 3·H·D)`; rows may be a column slice of a wider matrix (last dim contiguous).
    pub qkv: Tensor,
    pub q_scale: Tensor,
    pub k_scale: Tensor,
}

/// q, k, v `(b, H, ΣL_s, D)` of the joint sequence of `streams` (in order), with QK RMSNorm and
/// RoPE (`cos`, `sin`: `(b, ΣL_s, D/2)` f32) applied to q and k. `None` when the kernels do not
/// apply (not CUDA bf16, odd offsets, non-contiguous scales or tables).
pub fn qk_norm_rope(
    streams: &[QkvStream],
    heads: usize,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    if streams.is_empty()
        || heads == 0
        || !cos.device().is_cuda()
        || cos.dtype() != DType::F32
        || sin.dtype() != DType::F32
    {
        return Ok(None);
    }
    let (b, l_total, half) = cos.dims3()?;
    let d = 2 * half;
    let mut total = 0;
    for s in streams {
        let (sb, l_s, width) = s.qkv.dims3()?;
        let strides = s.qkv.stride();
        let applies = is_cuda_bf16(&s.qkv)
            && is_cuda_bf16(&s.q_scale)
            && is_cuda_bf16(&s.k_scale)
            && sb == b
            && width == 3 * heads * d
            && strides[2] == 1
            && strides.iter().all(|x| x % 2 == 0 || *x == 1)
            && s.qkv.layout().start_offset() % 2 == 0
            && s.q_scale.is_contiguous()
            && s.k_scale.is_contiguous()
            && s.q_scale.elem_count() == d
            && s.k_scale.elem_count() == d;
        if !applies {
            return Ok(None);
        }
        total += l_s;
    }
    if total != l_total || !cos.is_contiguous() || !sin.is_contiguous() || sin.dims() != cos.dims()
    {
        return Ok(None);
    }
    let op = QkNormRope {
        streams: streams.to_vec(),
        sin: sin.clone(),
        heads,
        b,
        d,
        l_total,
    };
    let qkv = cos.apply_op1_no_bwd(&op)?; // (3, b, H, L, D)
    Ok(Some((qkv.get(0)?, qkv.get(1)?, qkv.get(2)?)))
}

struct QkNormRope {
    streams: Vec<QkvStream>,
    sin: Tensor,
    heads: usize,
    b: usize,
    d: usize,
    l_total: usize,
}

/// The bf16 device slice behind a tensor, from `start_offset` on.
macro_rules! bf16_view {
    ($guard:ident, $layout:ident, $t:expr) => {
        let ($guard, $layout) = $t.storage_and_layout();
        let $guard = match &*$guard {
            Storage::Cuda(c) => c.as_cuda_slice::<bf16>()?.slice($layout.start_offset()..),
            _ => candle_core::bail!("fused kernel: expected a CUDA tensor"),
        };
    };
}

impl candle_core::CustomOp1 for QkNormRope {
    fn name(&self) -> &'static str {
        "kontext-qk-norm-rope"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("qk-norm-rope kernel runs only on CUDA")
    }

    fn cuda_fwd(&self, cos: &CudaStorage, cos_l: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = cos.device().clone();
        let stream = dev.cuda_stream();
        let (h, d, b, l_total) = (self.heads, self.d, self.b, self.l_total);
        let per = b * h * l_total * d;
        // SAFETY: every (b, h, l, d) element of the three outputs is written, since the streams
        // tile [0, l_total) (checked by the caller).
        let mut out = unsafe { dev.alloc::<bf16>(3 * per) }?;
        let cos = cos.as_cuda_slice::<f32>()?.slice(cos_l.start_offset()..);
        let (sin_s, sin_l) = self.sin.storage_and_layout();
        let sin = match &*sin_s {
            Storage::Cuda(c) => c.as_cuda_slice::<f32>()?.slice(sin_l.start_offset()..),
            _ => candle_core::bail!("qk-norm-rope: sin table is not on CUDA"),
        };
        let mut l_off = 0usize;
        for s in &self.streams {
            let (_, l_s, _) = s.qkv.dims3()?;
            let strides = s.qkv.stride().to_vec();
            bf16_view!(qkv, qkv_l, s.qkv);
            bf16_view!(qs, qs_l, s.q_scale);
            bf16_view!(ks, ks_l, s.k_scale);
            let _ = (qkv_l, qs_l, ks_l);
            let code = {
                let (qkv_p, _g1) = qkv.device_ptr(&stream);
                let (qs_p, _g2) = qs.device_ptr(&stream);
                let (ks_p, _g3) = ks.device_ptr(&stream);
                let (cos_p, _g4) = cos.device_ptr(&stream);
                let (sin_p, _g5) = sin.device_ptr(&stream);
                let (out_p, _g6) = out.device_ptr_mut(&stream);
                let elem = std::mem::size_of::<bf16>() as u64;
                // SAFETY: pointers to live buffers of the checked shapes; the outputs are the
                // three consecutive (b, H, L, D) blocks of `out`; the launch is ordered on
                // `stream` before any later use.
                unsafe {
                    kontext_qk_norm_rope_bf16(
                        qkv_p as *const c_void,
                        i64_of(strides[0])?,
                        i64_of(strides[1])?,
                        qs_p as *const c_void,
                        ks_p as *const c_void,
                        cos_p as *const f32,
                        sin_p as *const f32,
                        out_p as *mut c_void,
                        (out_p + per as u64 * elem) as *mut c_void,
                        (out_p + 2 * per as u64 * elem) as *mut c_void,
                        i32_of("batch", b)?,
                        i32_of("stream length", l_s)?,
                        i32_of("heads", h)?,
                        i32_of("head dim", d)?,
                        i32_of("sequence length", l_total)?,
                        i32_of("offset", l_off)?,
                        EPS,
                        stream.cu_stream() as *mut c_void,
                    )
                }
            };
            launched("qk-norm-rope", code)?;
            l_off += l_s;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((3, b, h, l_total, d)),
        ))
    }
}

/// `(1 + scale)·LN(x) + shift` (non-affine LayerNorm, eps 1e-6) for x `(b, L, n)` and shift,
/// scale `(b, 1, n)` (views of the modulation output are fine). `None` when the kernel does not
/// apply.
pub fn modulated_layer_norm(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Option<Tensor>> {
    if !(is_cuda_bf16(x) && is_cuda_bf16(shift) && is_cuda_bf16(scale)) || x.rank() != 3 {
        return Ok(None);
    }
    let (b, _, n) = x.dims3()?;
    for m in [shift, scale] {
        let ok = m.rank() == 3
            && m.dims()[0] == b
            && m.dims()[1] == 1
            && m.dims()[2] == n
            && m.stride()[2] == 1;
        if !ok {
            return Ok(None);
        }
    }
    if shift.stride()[0] != scale.stride()[0] {
        return Ok(None);
    }
    let x = x.contiguous()?;
    Ok(Some(x.apply_op3_no_bwd(
        shift,
        scale,
        &ModulatedLayerNorm,
    )?))
}

struct ModulatedLayerNorm;

impl candle_core::CustomOp3 for ModulatedLayerNorm {
    fn name(&self) -> &'static str {
        "kontext-modulated-layer-norm"
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
        candle_core::bail!("modulated-layer-norm kernel runs only on CUDA")
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        x_l: &Layout,
        shift: &CudaStorage,
        shift_l: &Layout,
        scale: &CudaStorage,
        scale_l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = x.device().clone();
        let stream = dev.cuda_stream();
        let (b, rows, n) = x_l.shape().dims3()?;
        if !x_l.is_contiguous() {
            candle_core::bail!("modulated-layer-norm: x must be contiguous");
        }
        let x = x.as_cuda_slice::<bf16>()?.slice(x_l.start_offset()..);
        let shift = shift
            .as_cuda_slice::<bf16>()?
            .slice(shift_l.start_offset()..);
        let scale = scale
            .as_cuda_slice::<bf16>()?
            .slice(scale_l.start_offset()..);
        // SAFETY: the kernel writes every element (one block per row covers the row).
        let mut y = unsafe { dev.alloc::<bf16>(b * rows * n) }?;
        let code = {
            let (x_p, _g1) = x.device_ptr(&stream);
            let (sh_p, _g2) = shift.device_ptr(&stream);
            let (sc_p, _g3) = scale.device_ptr(&stream);
            let (y_p, _g4) = y.device_ptr_mut(&stream);
            // SAFETY: live buffers of the checked shapes, ordered on `stream`.
            unsafe {
                kontext_modulated_layer_norm_bf16(
                    x_p as *const c_void,
                    sh_p as *const c_void,
                    sc_p as *const c_void,
                    y_p as *mut c_void,
                    i32_of("batch", b)?,
                    i32_of("rows", rows)?,
                    i32_of("width", n)?,
                    i64_of(shift_l.stride()[0])?,
                    EPS,
                    stream.cu_stream() as *mut c_void,
                )
            }
        };
        launched("modulated-layer-norm", code)?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev), x_l.shape().clone()))
    }
}
