//! FP8 (E4M3) linear layers on Hopper through cuBLASLt: `y = (x8 · W8ᵀ) ⊙ (s_x s_wᵀ) + b`.
//!
//! - the weights are E4M3 `(out, in)` with one f32 scale per output channel, quantized once at
//!   load (engine/src/flux/linear.rs `quantize_rows`);
//! - the activations are quantized per token on every call by our kernel
//!   (kernels/fp8_gemm.cu `kontext_quantize_rows_bf16_e4m3`), with the CPU reference's arithmetic;
//! - `cublasLtMatmul` multiplies E4M3 × E4M3 with f32 accumulation ("fast accumulation", as
//!   torchao's float8 forward runs it) into bf16, in the "TN" layout Hopper's FP8 GEMMs require
//!   (A = W transposed, B = x not transposed, column-major);
//! - the scales: cuBLASLt's outer-vector scale mode (`CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F`,
//!   CUDA 12.9+: one f32 per row of op(A) and per column of op(B)) with the bias epilogue when the
//!   library offers an algorithm for it; otherwise unit scales and our epilogue kernel
//!   (`kontext_scale_rows_cols_bf16`). Which path ran is [`path`].
//!
//! cuBLASLt semantics: NVIDIA's cuBLAS documentation, §cublasLtMatmul and §"Scaling modes".

// FFI to cuBLASLt and to the nvcc-compiled kernels: unsafe by nature, confined here.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cublaslt::{result as lt, sys};
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut,
};
use candle_core::cuda_backend::{CudaDevice, CudaStorageSlice};
use candle_core::{CpuStorage, CudaStorage, DType, Layout, Result, Shape, Storage, Tensor};
use half::bf16;

unsafe extern "C" {
    fn kontext_quantize_rows_bf16_e4m3(
        x: *const c_void,
        row_stride: i64,
        q: *mut c_void,
        scale: *mut f32,
        rows: i32,
        cols: i32,
        stream: *mut c_void,
    ) -> i32;

    fn kontext_scale_rows_cols_bf16(
        y: *mut c_void,
        row_scale: *const f32,
        col_scale: *const f32,
        bias: *const c_void,
        rows: i64,
        cols: i32,
        stream: *mut c_void,
    ) -> i32;
}

/// cuBLASLt's recommended workspace on Hopper (32 MiB; "cublasLtMatmul" notes in its docs).
const WORKSPACE_BYTES: usize = 32 << 20;

/// How the scales are applied: decided at the first call, then kept for the process.
const PATH_UNTRIED: u8 = 0;
const PATH_OUTER_VEC: u8 = 1;
const PATH_EPILOGUE_KERNEL: u8 = 2;
const PATH_UNAVAILABLE: u8 = 3;
static PATH: AtomicU8 = AtomicU8::new(PATH_UNTRIED);

/// Which FP8 GEMM path this process uses: `"cublaslt outer-vector scales"`,
/// `"cublaslt + scale kernel"`, `"unavailable"` (cuBLASLt offered no FP8 algorithm: the engine
/// falls back to dequantized bf16 weights) or `"not used yet"`.
pub fn path() -> &'static str {
    match PATH.load(Ordering::Relaxed) {
        PATH_OUTER_VEC => "cublaslt outer-vector scales",
        PATH_EPILOGUE_KERNEL => "cublaslt + scale kernel",
        PATH_UNAVAILABLE => "unavailable",
        _ => "not used yet",
    }
}

pub(crate) fn err(what: &str, e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::msg(format!("fp8 gemm: {what}: {e:?}"))
}

fn i32_of(what: &str, x: usize) -> Result<i32> {
    i32::try_from(x).map_err(|_| candle_core::Error::msg(format!("fp8 gemm: {what} {x} too large")))
}

/// `x (…, in)` bf16 · E4M3 `weight (out, in)` with `scale` (`out` f32) and `bias` (`out` bf16)
/// → `(…, out)` bf16. `None` when the GEMM does not apply (not CUDA bf16, widths not multiples
/// of 16, or cuBLASLt has no FP8 algorithm on this device): the caller falls back.
pub fn linear(
    x: &Tensor,
    weight: &Tensor,
    scale: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    if PATH.load(Ordering::Relaxed) == PATH_UNAVAILABLE
        || !x.device().is_cuda()
        || x.dtype() != DType::BF16
        || weight.dtype() != DType::F8E4M3
        || scale.dtype() != DType::F32
        || weight.rank() != 2
        || !weight.is_contiguous()
        || !scale.is_contiguous()
    {
        return Ok(None);
    }
    let (n, k) = weight.dims2()?;
    let in_dim = x.dims().last().copied().unwrap_or(0);
    // FP8 GEMMs need 16-byte aligned leading dimensions (cuBLAS docs, FP8 requirements).
    if in_dim != k || k % 16 != 0 || n % 16 != 0 || scale.elem_count() != n {
        return Ok(None);
    }
    if let Some(b) = bias
        && (b.dtype() != DType::BF16 || !b.is_contiguous() || b.elem_count() != n)
    {
        return Ok(None);
    }
    let mut out_dims = x.dims().to_vec();
    let rows = x.elem_count() / k;
    if rows == 0 {
        return Ok(None);
    }
    let x2 = x.contiguous()?.reshape((rows, k))?; // (…, in) → (rows, in)
    let op = Fp8Gemm {
        weight: weight.clone(),
        scale: Some(scale.clone()),
        bias: bias.cloned(),
        n,
        k,
    };
    let y = match x2.apply_op1_no_bwd(&op) {
        Ok(y) => y, // (rows, out)
        Err(e) if PATH.load(Ordering::Relaxed) == PATH_UNAVAILABLE => {
            // Decided during this call: no algorithm on this device.
            let _ = e;
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    if let Some(last) = out_dims.last_mut() {
        *last = n;
    }
    Ok(Some(y.reshape(out_dims)?)) // (rows, out) → (…, out)
}

/// One GEMM `y = x · Wᵀ (+ b)`: FP8 weights with their row scales (`scale`), or bf16 weights
/// (`scale` `None`).
pub(crate) struct Fp8Gemm {
    pub(crate) weight: Tensor,
    pub(crate) scale: Option<Tensor>,
    pub(crate) bias: Option<Tensor>,
    pub(crate) n: usize,
    pub(crate) k: usize,
}

/// One thread's cuBLASLt handle and workspace (the engine runs on one thread per device), and
/// the algorithms the heuristic chose per problem.
pub(crate) struct LtState {
    pub(crate) handle: sys::cublasLtHandle_t,
    pub(crate) workspace: CudaSlice<u8>,
    pub(crate) algos: HashMap<AlgoKey, sys::cublasLtMatmulAlgo_t>,
}

/// rows, out, in, bias in the epilogue, outer-vector scales (bit 0) | FP8 (bit 1), and the
/// alignments of A, B and D.
pub(crate) type AlgoKey = (usize, usize, usize, bool, u8, (u32, u32, u32));

impl Drop for LtState {
    fn drop(&mut self) {
        // SAFETY: the handle was created by `create_handle` and is destroyed once, here.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

thread_local! {
    pub(crate) static LT: RefCell<HashMap<candle_core::cuda_backend::DeviceId, LtState>> =
        RefCell::new(HashMap::new());
}

/// The device slice of type `T` behind a tensor's storage, from its layout's offset on.
pub(crate) fn cuda_view<'a, T: candle_core::cuda_backend::CudaDType>(
    storage: &'a Storage,
    layout: &Layout,
    what: &str,
) -> Result<CudaView<'a, T>> {
    match storage {
        Storage::Cuda(c) => Ok(c.as_cuda_slice::<T>()?.slice(layout.start_offset()..)),
        _ => candle_core::bail!("{what} is not on CUDA"),
    }
}

/// cuBLASLt works on the thread's current context: makes it `stream`'s.
pub(crate) fn bind_context(stream: &CudaStream) -> Result<()> {
    stream
        .context()
        .bind_to_thread()
        .map_err(|e| err("binding the CUDA context", e))
}

/// This thread's cuBLASLt state for `dev`, created on first use.
pub(crate) fn state_for<'a>(
    states: &'a mut HashMap<candle_core::cuda_backend::DeviceId, LtState>,
    dev: &CudaDevice,
) -> Result<&'a mut LtState> {
    Ok(match states.entry(dev.id()) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            let handle = lt::create_handle().map_err(|e| err("cublasLtCreate", e))?;
            // SAFETY: scratch space for cuBLASLt, never read by us.
            let workspace = unsafe { dev.alloc::<u8>(WORKSPACE_BYTES) }?;
            e.insert(LtState {
                handle,
                workspace,
                algos: HashMap::new(),
            })
        }
    })
}

/// Descriptors destroyed on every exit path.
struct Descriptors {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: Vec<sys::cublasLtMatrixLayout_t>,
    pref: Option<sys::cublasLtMatmulPreference_t>,
}

impl Drop for Descriptors {
    fn drop(&mut self) {
        // SAFETY: each was created once by the `lt::create_*` call that put it here.
        unsafe {
            let _ = lt::destroy_matmul_desc(self.desc);
            for l in &self.layouts {
                let _ = lt::destroy_matrix_layout(*l);
            }
            if let Some(p) = self.pref {
                let _ = lt::destroy_matmul_pref(p);
            }
        }
    }
}

/// Sets one attribute of a matmul descriptor from a plain value.
///
/// # Safety
/// `desc` is live and `T` is the attribute's documented type.
unsafe fn set_attr<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    value: &T,
) -> std::result::Result<(), lt::CublasError> {
    // SAFETY: `value` is a live `T` of `size_of::<T>()` bytes.
    unsafe {
        lt::set_matmul_desc_attribute(
            desc,
            attr,
            (value as *const T).cast(),
            std::mem::size_of::<T>(),
        )
    }
}

/// The device pointers one GEMM needs.
pub(crate) struct Pointers {
    pub(crate) w: u64,
    pub(crate) w_scale: u64,
    pub(crate) q: u64,
    pub(crate) x_scale: u64,
    pub(crate) y: u64,
    pub(crate) bias: Option<u64>,
    pub(crate) workspace: u64,
}

impl Fp8Gemm {
    /// Runs `y = x8 · W8ᵀ` with the scales and bias applied by cuBLASLt (`outer_vec`) or not at
    /// all (the caller scales). `Err(NOT_SUPPORTED)` when the heuristic has no algorithm.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn matmul(
        &self,
        handle: sys::cublasLtHandle_t,
        algos: &mut HashMap<AlgoKey, sys::cublasLtMatmulAlgo_t>,
        rows: usize,
        outer_vec: bool,
        p: &Pointers,
        stream: sys::cudaStream_t,
    ) -> std::result::Result<(), lt::CublasError> {
        let fp8 = self.scale.is_some();
        use sys::cublasLtMatmulDescAttributes_t as A;
        let (n, k) = (self.n as u64, self.k as u64);
        let m = rows as u64;
        let mut d = Descriptors {
            desc: lt::create_matmul_desc(
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cudaDataType::CUDA_R_32F,
            )?,
            layouts: Vec::with_capacity(3),
            pref: None,
        };
        // Column-major view: Yᵀ (n × m) = op(A) (n × k) · B (k × m), with A = W stored (k × n)
        // ld k and transposed, B = x stored (k × m) ld k, C = D = Yᵀ (n × m) ld n. The inputs
        // are E4M3 for the FP8 GEMM and bf16 for `lt_bf16` (declaring bf16 inputs E4M3 made
        // cuBLASLt read each bf16 value as two FP8 bytes: the non-finite outputs of that
        // experiment's H200 runs).
        let input = if fp8 {
            sys::cudaDataType::CUDA_R_8F_E4M3
        } else {
            sys::cudaDataType::CUDA_R_16BF
        };
        d.layouts
            .push(lt::create_matrix_layout(input, k, n, k as i64)?); // A: W (out, in) row-major
        d.layouts
            .push(lt::create_matrix_layout(input, k, m, k as i64)?); // B: x (rows, in) row-major
        d.layouts.push(lt::create_matrix_layout(
            sys::cudaDataType::CUDA_R_16BF,
            n,
            m,
            n as i64,
        )?); // C, D: y (rows, out) row-major
        // FP8 without outer-vector scales adds the bias in our scale kernel.
        let bias = p.bias.filter(|_| outer_vec || !fp8);
        // SAFETY: `d.desc` is live; each value has its attribute's documented type (int32 for
        // transposes and scale modes, int8 for fast accumulation, uint32 for the epilogue,
        // pointers for scale and bias pointers, int32 cudaDataType for the bias type).
        unsafe {
            set_attr(d.desc, A::CUBLASLT_MATMUL_DESC_TRANSA, &1i32)?; // CUBLAS_OP_T
            set_attr(d.desc, A::CUBLASLT_MATMUL_DESC_TRANSB, &0i32)?; // CUBLAS_OP_N
            if fp8 {
                set_attr(d.desc, A::CUBLASLT_MATMUL_DESC_FAST_ACCUM, &1i8)?;
            }
            if fp8 && outer_vec {
                let mode =
                    sys::cublasLtMatmulMatrixScale_t::CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F
                        as i32;
                set_attr(d.desc, A::CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode)?;
                set_attr(d.desc, A::CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode)?;
                set_attr(
                    d.desc,
                    A::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                    &(p.w_scale as *const c_void),
                )?;
                set_attr(
                    d.desc,
                    A::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                    &(p.x_scale as *const c_void),
                )?;
            }
            if let Some(b) = bias {
                let epilogue = sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS as u32;
                set_attr(d.desc, A::CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue)?;
                set_attr(
                    d.desc,
                    A::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &(b as *const c_void),
                )?;
                let bf16_type = sys::cudaDataType::CUDA_R_16BF as i32;
                set_attr(d.desc, A::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bf16_type)?;
            }
        }
        // cuBLASLt's heuristic assumes 256-byte aligned buffers unless told otherwise (the
        // MIN_ALIGNMENT preferences); candle's views can start anywhere, so say what they are.
        let align = |p: u64| -> u32 { 1u32 << p.trailing_zeros().min(8) };
        let (align_a, align_b, align_d) = (align(p.w), align(p.q), align(p.y));
        let key = (
            rows,
            self.n,
            self.k,
            bias.is_some(),
            u8::from(outer_vec) | (u8::from(fp8) << 1),
            (align_a, align_b, align_d),
        );
        let algo = match algos.get(&key) {
            Some(a) => *a,
            None => {
                let pref = lt::create_matmul_pref()?;
                d.pref = Some(pref);
                let ws = WORKSPACE_BYTES as u64;
                use sys::cublasLtMatmulPreferenceAttributes_t as P;
                // SAFETY: `pref` is live; the workspace size is a uint64, alignments uint32.
                unsafe {
                    lt::set_matmul_pref_attribute(
                        pref,
                        P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                        (&ws as *const u64).cast(),
                        8,
                    )?;
                    for (attr, bytes) in [
                        (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_a),
                        (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_b),
                        (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_d),
                        (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_d),
                    ] {
                        lt::set_matmul_pref_attribute(
                            pref,
                            attr,
                            (&bytes as *const u32).cast(),
                            4,
                        )?;
                    }
                }
                let (a, b, c) = (d.layouts[0], d.layouts[1], d.layouts[2]);
                // SAFETY: every descriptor is live.
                let h = unsafe { lt::get_matmul_algo_heuristic(handle, d.desc, a, b, c, c, pref)? };
                algos.insert(key, h.algo);
                h.algo
            }
        };
        let (alpha, beta) = (1f32, 0f32);
        let (a, b, c) = (d.layouts[0], d.layouts[1], d.layouts[2]);
        // SAFETY: the pointers are live device buffers of the shapes the layouts describe,
        // ordered on `stream` (candle's stream for this device); alpha/beta are host f32 (the
        // default pointer mode); the workspace is WORKSPACE_BYTES long.
        unsafe {
            lt::matmul(
                handle,
                d.desc,
                (&alpha as *const f32).cast(),
                (&beta as *const f32).cast(),
                p.w as *const c_void,
                a,
                p.q as *const c_void,
                b,
                p.y as *const c_void,
                c,
                p.y as *mut c_void,
                c,
                &algo,
                p.workspace as *mut c_void,
                WORKSPACE_BYTES,
                stream,
            )
        }
    }
}

impl candle_core::CustomOp1 for Fp8Gemm {
    fn name(&self) -> &'static str {
        "kontext-fp8-gemm"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("the FP8 GEMM runs only on CUDA")
    }

    fn cuda_fwd(&self, x: &CudaStorage, x_l: &Layout) -> Result<(CudaStorage, Shape)> {
        let Some(scale) = &self.scale else {
            return self.bf16_fwd(x, x_l);
        };
        let dev: CudaDevice = x.device().clone();
        let stream = dev.cuda_stream();
        let (rows, k) = x_l.shape().dims2()?;
        let n = self.n;
        let x = x.as_cuda_slice::<bf16>()?.slice(x_l.start_offset()..);
        // SAFETY: every element of q, x_scale and y is written below before it is read.
        let mut q = unsafe { dev.alloc::<u8>(rows * k) }?;
        let mut x_scale = unsafe { dev.alloc::<f32>(rows) }?;
        let mut y = unsafe { dev.alloc::<bf16>(rows * n) }?;
        let (w_s, w_l) = self.weight.storage_and_layout();
        let w = match &*w_s {
            Storage::Cuda(c) => match &c.slice {
                CudaStorageSlice::F8E4M3(s) => s.slice(w_l.start_offset()..),
                _ => candle_core::bail!("fp8 gemm: weight is not E4M3"),
            },
            _ => candle_core::bail!("fp8 gemm: weight is not on CUDA"),
        };
        let (s_s, s_l) = scale.storage_and_layout();
        let w_scale = cuda_view::<f32>(&s_s, s_l, "fp8 gemm: weight scales")?;
        let bias_storage = self.bias.as_ref().map(|b| b.storage_and_layout());
        let bias = match &bias_storage {
            None => None,
            Some((g, l)) => Some(cuda_view::<bf16>(g, l, "fp8 gemm: bias")?),
        };
        bind_context(&stream)?;
        LT.with(|cell| -> Result<()> {
            let mut states = cell.borrow_mut();
            let st = state_for(&mut states, &dev)?;
            let (x_p, _g1) = x.device_ptr(&stream);
            let (q_p, _g2) = q.device_ptr_mut(&stream);
            let (xs_p, _g3) = x_scale.device_ptr_mut(&stream);
            let (y_p, _g4) = y.device_ptr_mut(&stream);
            let (w_p, _g5) = w.device_ptr(&stream);
            let (ws_p, _g6) = w_scale.device_ptr(&stream);
            let bias_p = bias.as_ref().map(|b| b.device_ptr(&stream));
            let (work_p, _g7) = st.workspace.device_ptr_mut(&stream);
            let cu_stream = stream.cu_stream() as *mut c_void;
            // SAFETY: x is (rows, k) bf16 contiguous from its offset, q (rows, k) bytes and
            // x_scale (rows) f32 were allocated above; the launch is ordered on `stream`.
            let code = unsafe {
                kontext_quantize_rows_bf16_e4m3(
                    x_p as *const c_void,
                    k as i64,
                    q_p as *mut c_void,
                    xs_p as *mut f32,
                    i32_of("rows", rows)?,
                    i32_of("in", k)?,
                    cu_stream,
                )
            };
            if code != 0 {
                candle_core::bail!("fp8 gemm: quantize launch failed with cudaError_t {code}");
            }
            let ptrs = Pointers {
                w: w_p,
                w_scale: ws_p,
                q: q_p,
                x_scale: xs_p,
                y: y_p,
                bias: bias_p.as_ref().map(|(p, _)| *p),
                workspace: work_p,
            };
            let lt_stream = cu_stream as sys::cudaStream_t;
            let mut path = PATH.load(Ordering::Relaxed);
            if path == PATH_UNTRIED || path == PATH_OUTER_VEC {
                match self.matmul(st.handle, &mut st.algos, rows, true, &ptrs, lt_stream) {
                    Ok(()) => {
                        PATH.store(PATH_OUTER_VEC, Ordering::Relaxed);
                        return Ok(());
                    }
                    Err(e) if path == PATH_OUTER_VEC => return Err(err("cublasLtMatmul", e)),
                    Err(_) => {
                        // No outer-vector scaling on this library/device: scale ourselves.
                        path = PATH_EPILOGUE_KERNEL;
                    }
                }
            }
            if path == PATH_EPILOGUE_KERNEL || path == PATH_UNTRIED {
                if let Err(e) = self.matmul(st.handle, &mut st.algos, rows, false, &ptrs, lt_stream)
                {
                    if PATH.load(Ordering::Relaxed) == PATH_UNTRIED {
                        PATH.store(PATH_UNAVAILABLE, Ordering::Relaxed);
                    }
                    return Err(err("cublasLtMatmul (unit scales)", e));
                }
                PATH.store(PATH_EPILOGUE_KERNEL, Ordering::Relaxed);
                // SAFETY: y (rows, n) bf16 written by the GEMM above on the same stream; the
                // scales are rows / n f32; bias n bf16 or null.
                let code = unsafe {
                    kontext_scale_rows_cols_bf16(
                        y_p as *mut c_void,
                        xs_p as *const f32,
                        ws_p as *const f32,
                        ptrs.bias.map_or(std::ptr::null(), |b| b as *const c_void),
                        rows as i64,
                        i32_of("out", n)?,
                        cu_stream,
                    )
                };
                if code != 0 {
                    candle_core::bail!("fp8 gemm: scale launch failed with cudaError_t {code}");
                }
            }
            Ok(())
        })?;
        drop(q);
        drop(x_scale);
        Ok((CudaStorage::wrap_cuda_slice(y, dev), Shape::from((rows, n))))
    }
}
