// The two kernels around the cuBLASLt FP8 GEMM of engine/cuda/src/fp8_gemm.rs:
//
// - kontext_quantize_rows_bf16_e4m3: dynamic per-token quantization of bf16 activations,
//   s[r] = max(max_c |x[r,c]| / 448, 1e-12), q[r,c] = e4m3(x[r,c] / s[r]) (round to nearest even,
//   saturating). The same arithmetic as the CPU reference `quantize_rows` in
//   engine/src/flux/linear.rs (f32 division, then the cast), so both sides see the same codes.
// - kontext_scale_rows_cols_bf16: y[r,c] = y[r,c] · s_x[r] · s_w[c] (+ bias[c]), in place — the
//   row/column scaling for when cuBLASLt cannot apply it itself (no outer-vector scale mode).
//
// Launchers return the cudaError_t of the launch (0 on success).

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace {

constexpr float kE4m3Max = 448.0f;  // OCP FP8 E4M3: S.1111.110
constexpr float kMinScale = 1e-12f;  // an all-zero row quantizes to zeros
constexpr int kThreads = 256;

// The maximum of `v` over the block (every thread gets it).
__device__ float block_max(float v) {
  __shared__ float warp_max[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) warp_max[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kThreads / 32 ? warp_max[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (lane == 0) warp_max[0] = v;
  }
  __syncthreads();
  return warp_max[0];
}

// One block per row of x (rows of `row_stride` elements); q is (rows, cols) contiguous.
__global__ void quantize_rows(const __nv_bfloat16* __restrict__ x, int64_t row_stride,
                              __nv_fp8_e4m3* __restrict__ q, float* __restrict__ scale, int cols) {
  const int64_t row = blockIdx.x;
  const __nv_bfloat16* xr = x + row * row_stride;
  float m = 0.0f;
  for (int c = threadIdx.x; c < cols; c += kThreads) m = fmaxf(m, fabsf(__bfloat162float(xr[c])));
  // __fdiv_rn: IEEE division even under --use_fast_math, as the CPU reference divides.
  const float s = fmaxf(__fdiv_rn(block_max(m), kE4m3Max), kMinScale);
  if (threadIdx.x == 0) scale[row] = s;
  __nv_fp8_e4m3* qr = q + row * cols;
  // The float constructor converts with __NV_SATFINITE, round to nearest even.
  for (int c = threadIdx.x; c < cols; c += kThreads) qr[c] = __nv_fp8_e4m3(__fdiv_rn(__bfloat162float(xr[c]), s));
}

__global__ void scale_rows_cols(__nv_bfloat16* __restrict__ y, const float* __restrict__ row_scale,
                                const float* __restrict__ col_scale,
                                const __nv_bfloat16* __restrict__ bias, int64_t rows, int cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / cols;
    const int c = (int)(i - r * cols);
    float v = __bfloat162float(y[i]) * row_scale[r] * col_scale[c];
    if (bias != nullptr) v += __bfloat162float(bias[c]);
    y[i] = __float2bfloat16_rn(v);
  }
}

}  // namespace

extern "C" int kontext_quantize_rows_bf16_e4m3(const void* x, int64_t row_stride, void* q,
                                               float* scale, int rows, int cols, void* stream) {
  if (rows <= 0 || cols <= 0) return 0;
  quantize_rows<<<rows, kThreads, 0, (cudaStream_t)stream>>>(
      (const __nv_bfloat16*)x, row_stride, (__nv_fp8_e4m3*)q, scale, cols);
  return (int)cudaGetLastError();
}

extern "C" int kontext_scale_rows_cols_bf16(void* y, const float* row_scale, const float* col_scale,
                                            const void* bias, int64_t rows, int cols, void* stream) {
  if (rows <= 0 || cols <= 0) return 0;
  const int64_t n = rows * cols;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  const int grid = (int)(blocks < 65535 * 8 ? blocks : 65535 * 8);
  scale_rows_cols<<<grid, kThreads, 0, (cudaStream_t)stream>>>(
      (__nv_bfloat16*)y, row_scale, col_scale, (const __nv_bfloat16*)bias, rows, cols);
  return (int)cudaGetLastError();
}

// E4M3 casts that candle 0.11.1 cannot do on CUDA (its cast kernels are looked up under other
// names than they are compiled with): q = e4m3(x / scale[row]) from f32, and
// out = float(q) · scale[row] into f32 (out_bf16 = 0) or bf16 (out_bf16 = 1).
namespace {

__global__ void quantize_with_scale(const float* __restrict__ x, const float* __restrict__ scale,
                                    __nv_fp8_e4m3* __restrict__ q, int64_t rows, int cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    q[i] = __nv_fp8_e4m3(__fdiv_rn(x[i], scale[i / cols]));
  }
}

template <typename T>
__global__ void dequantize_rows(const __nv_fp8_e4m3* __restrict__ q,
                                const float* __restrict__ scale, T* __restrict__ out, int64_t rows,
                                int cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float v = float(q[i]) * scale[i / cols];
    if constexpr (sizeof(T) == 2) {
      out[i] = __float2bfloat16_rn(v);
    } else {
      out[i] = v;
    }
  }
}

int grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return (int)(blocks < 65535 * 8 ? blocks : 65535 * 8);
}

}  // namespace

extern "C" int kontext_quantize_with_scale_f32_e4m3(const float* x, const float* scale, void* q,
                                                    int64_t rows, int cols, void* stream) {
  if (rows <= 0 || cols <= 0) return 0;
  quantize_with_scale<<<grid_for(rows * cols), kThreads, 0, (cudaStream_t)stream>>>(
      x, scale, (__nv_fp8_e4m3*)q, rows, cols);
  return (int)cudaGetLastError();
}

extern "C" int kontext_dequantize_rows_e4m3(const void* q, const float* scale, void* out,
                                            int out_bf16, int64_t rows, int cols, void* stream) {
  if (rows <= 0 || cols <= 0) return 0;
  if (out_bf16) {
    dequantize_rows<__nv_bfloat16><<<grid_for(rows * cols), kThreads, 0, (cudaStream_t)stream>>>(
        (const __nv_fp8_e4m3*)q, scale, (__nv_bfloat16*)out, rows, cols);
  } else {
    dequantize_rows<float><<<grid_for(rows * cols), kThreads, 0, (cudaStream_t)stream>>>(
        (const __nv_fp8_e4m3*)q, scale, (float*)out, rows, cols);
  }
  return (int)cudaGetLastError();
}
