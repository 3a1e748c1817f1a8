//! E4M3 casts on CUDA with row scales, for the FP8 linears (engine/src/flux/linear.rs):
//! `q = e4m3(x / scale[row])` and `x' = q · scale[row]`. candle 0.11.1 cannot cast to or from
//! F8E4M3 on CUDA — it looks its cast kernels up as `cast_f32_f8e4m3` while candle-kernels
//! compiles them as `cast_f32_f8_e4m3` (CUDA_ERROR_NOT_FOUND, seen on an H200) — so these kernels
//! of ours (kernels/fp8_gemm.cu) do it, with the CPU reference's arithmetic.

// FFI to the nvcc-compiled kernels: unsafe by nature, confined here.
#![allow(unsafe_code)]

use std::ffi::c_void;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorageSlice;
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut};
use candle_core::{CpuStorage, CudaStorage, DType, Layout, Result, Shape, Tensor};
use half::bf16;

unsafe extern "C" {
    fn kontext_quantize_with_scale_f32_e4m3(
        x: *const f32,
        scale: *const f32,
        q: *mut c_void,
        rows: i64,
        cols: i32,
        stream: *mut c_void,
    ) -> i32;

    fn kontext_dequantize_rows_e4m3(
        q: *const c_void,
        scale: *const f32,
        out: *mut c_void,
        out_bf16: i32,
        rows: i64,
        cols: i32,
        stream: *mut c_void,
    ) -> i32;
}

fn launched(what: &str, code: i32) -> Result<()> {
    if code != 0 {
        candle_core::bail!("{what}: kernel launch failed with cudaError_t {code}");
    }
    Ok(())
}

/// Rows and columns of a 2-D tensor whose `scale` is one f32 per row (`(rows, 1)` or `(rows)`).
fn rows_cols(t: &Tensor, scale: &Tensor) -> Option<(usize, usize)> {
    let (rows, cols) = t.dims2().ok()?;
    let ok = t.device().is_cuda()
        && scale.device().is_cuda()
        && scale.dtype() == DType::F32
        && scale.elem_count() == rows
        && i32::try_from(cols).is_ok();
    ok.then_some((rows, cols))
}

/// `e4m3(x / scale[row])` for `x` `(rows, cols)` f32 on CUDA; `None` off CUDA or for other
/// shapes and dtypes.
pub fn quantize_with_scale(x: &Tensor, scale: &Tensor) -> Result<Option<Tensor>> {
    let Some((rows, cols)) = rows_cols(x, scale) else {
        return Ok(None);
    };
    if x.dtype() != DType::F32 {
        return Ok(None);
    }
    let op = Quantize { rows, cols };
    Ok(Some(
        x.contiguous()?
            .apply_op2_no_bwd(&scale.contiguous()?, &op)?,
    ))
}

/// `q · scale[row]` in `dtype` (f32 or bf16) for E4M3 `q` `(rows, cols)` on CUDA; `None` off
/// CUDA or for other shapes and dtypes.
pub fn dequantize(q: &Tensor, scale: &Tensor, dtype: DType) -> Result<Option<Tensor>> {
    let Some((rows, cols)) = rows_cols(q, scale) else {
        return Ok(None);
    };
    if q.dtype() != DType::F8E4M3 || !matches!(dtype, DType::F32 | DType::BF16) {
        return Ok(None);
    }
    let op = Dequantize { rows, cols, dtype };
    Ok(Some(
        q.contiguous()?
            .apply_op2_no_bwd(&scale.contiguous()?, &op)?,
    ))
}

struct Quantize {
    rows: usize,
    cols: usize,
}

impl candle_core::CustomOp2 for Quantize {
    fn name(&self) -> &'static str {
        "kontext-quantize-e4m3"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("the E4M3 quantize kernel runs only on CUDA")
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        x_l: &Layout,
        scale: &CudaStorage,
        s_l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = x.device().clone();
        let stream = dev.cuda_stream();
        let n = self.rows * self.cols;
        let x = x.as_cuda_slice::<f32>()?.slice(x_l.start_offset()..);
        let scale = scale.as_cuda_slice::<f32>()?.slice(s_l.start_offset()..);
        // SAFETY: every element is written by the kernel below.
        let mut q = unsafe { dev.alloc::<float8::F8E4M3>(n) }?;
        let code = {
            let (x_p, _g1) = x.device_ptr(&stream);
            let (s_p, _g2) = scale.device_ptr(&stream);
            let (q_p, _g3) = q.device_ptr_mut(&stream);
            // SAFETY: x (rows, cols) f32 and scale (rows) f32 contiguous from their offsets, q
            // (rows, cols) bytes; ordered on `stream`.
            unsafe {
                kontext_quantize_with_scale_f32_e4m3(
                    x_p as *const f32,
                    s_p as *const f32,
                    q_p as *mut c_void,
                    self.rows as i64,
                    self.cols as i32,
                    stream.cu_stream() as *mut c_void,
                )
            }
        };
        launched("e4m3 quantize", code)?;
        Ok((
            CudaStorage::wrap_cuda_slice(q, dev),
            Shape::from((self.rows, self.cols)),
        ))
    }
}

struct Dequantize {
    rows: usize,
    cols: usize,
    dtype: DType,
}

impl candle_core::CustomOp2 for Dequantize {
    fn name(&self) -> &'static str {
        "kontext-dequantize-e4m3"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("the E4M3 dequantize kernel runs only on CUDA")
    }

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        q_l: &Layout,
        scale: &CudaStorage,
        s_l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = q.device().clone();
        let stream = dev.cuda_stream();
        let n = self.rows * self.cols;
        let q = match &q.slice {
            CudaStorageSlice::F8E4M3(s) => s.slice(q_l.start_offset()..),
            _ => candle_core::bail!("e4m3 dequantize: input is not E4M3"),
        };
        let scale = scale.as_cuda_slice::<f32>()?.slice(s_l.start_offset()..);
        let shape = Shape::from((self.rows, self.cols));
        let cu_stream = stream.cu_stream() as *mut c_void;
        let (q_p, _g1) = q.device_ptr(&stream);
        let (s_p, _g2) = scale.device_ptr(&stream);
        let run = |out: u64, bf16_out: i32| {
            // SAFETY: q (rows, cols) E4M3 and scale (rows) f32 contiguous from their offsets;
            // out holds rows·cols elements of the output type; ordered on `stream`.
            let code = unsafe {
                kontext_dequantize_rows_e4m3(
                    q_p as *const c_void,
                    s_p as *const f32,
                    out as *mut c_void,
                    bf16_out,
                    self.rows as i64,
                    self.cols as i32,
                    cu_stream,
                )
            };
            launched("e4m3 dequantize", code)
        };
        if self.dtype == DType::BF16 {
            // SAFETY: every element is written by the kernel.
            let mut out = unsafe { dev.alloc::<bf16>(n) }?;
            {
                let (o_p, _g3) = out.device_ptr_mut(&stream);
                run(o_p, 1)?;
            }
            Ok((CudaStorage::wrap_cuda_slice(out, dev), shape))
        } else {
            // SAFETY: every element is written by the kernel.
            let mut out = unsafe { dev.alloc::<f32>(n) }?;
            {
                let (o_p, _g3) = out.device_ptr_mut(&stream);
                run(o_p, 0)?;
            }
            Ok((CudaStorage::wrap_cuda_slice(out, dev), shape))
        }
    }
}
