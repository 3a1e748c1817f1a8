// Fused bf16 elementwise kernels for the FLUX transformer. Unfused, every elementwise op
// (modulation, LayerNorm, q/k RMSNorm, RoPE, head layout) is one more full pass over the
// activations in device memory, traffic the GEMMs themselves do not need; fusing removes those
// passes. Each kernel reproduces the roundings of the candle composition it replaces
// (engine/src/flux/ops/generic.rs), which are BFL's:
//
// qk_norm_rope: for one stream's fused projection qkv (b, L_s, 3·H·D) (rows may be a column
//   slice of a wider matrix), per (b, l, h):
//     q, k: RMSNorm in f32 (rrms = 1/sqrt(mean(x²) + 1e-6)), rounded to bf16, times the bf16
//           scale (rounded), then rotated pairwise in f32 by the f32 cos/sin table and rounded
//           (BFL layers.py:63-73 QKNorm, math.py:22-30 apply_rope);
//     v:    copied.
//   Written into q, k, v (b, H, L_total, D) at sequence offset l_off (joint txt‖img sequence).
//   Replaces ~15 passes (reshape copy, f32 casts, sqr, mean, mul, cast, mul, cat, cast, rope,
//   cast) with one read of qkv and one write of q, k, v.
//
// modulated_layer_norm: y = (1 + scale)·LN(x) + shift over the last dim (non-affine LayerNorm,
//   eps 1e-6, statistics in f32), with BFL's bf16 roundings: n = bf16(LN(x)), s = bf16(1 + scale),
//   y = bf16(bf16(n·s) + shift) (layers.py:192-193). One pass instead of four.

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace kontext_fused {

__device__ __forceinline__ float bf(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

constexpr int kWarpsPerBlock = 8;

// One warp per (b, l, h) row of D values; lane j handles the pairs j, j+32, ... (bf16x2 loads;
// the host checks that every offset is even).
__global__ void qk_norm_rope_kernel(const __nv_bfloat16 *__restrict__ qkv, int64_t qkv_batch_stride,
                                    int64_t qkv_row_stride, const __nv_bfloat16 *__restrict__ q_scale,
                                    const __nv_bfloat16 *__restrict__ k_scale,
                                    const float *__restrict__ cos_t, const float *__restrict__ sin_t,
                                    __nv_bfloat16 *__restrict__ q_out, __nv_bfloat16 *__restrict__ k_out,
                                    __nv_bfloat16 *__restrict__ v_out, int b, int l_s, int h, int d,
                                    int l_total, int l_off, float eps) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + warp;
  if (row >= int64_t(b) * l_s * h) return;
  const int hi = int(row % h);
  const int li = int((row / h) % l_s);
  const int bi = int(row / (int64_t(h) * l_s));
  const int half = d / 2;
  const __nv_bfloat16 *src = qkv + bi * qkv_batch_stride + li * qkv_row_stride;
  // "B L (K H D)": q at [0, H·D), k at [H·D, 2·H·D), v at [2·H·D, 3·H·D).
  const __nv_bfloat162 *q_in = reinterpret_cast<const __nv_bfloat162 *>(src + int64_t(hi) * d);
  const __nv_bfloat162 *k_in = reinterpret_cast<const __nv_bfloat162 *>(src + int64_t(h + hi) * d);
  const __nv_bfloat162 *v_in = reinterpret_cast<const __nv_bfloat162 *>(src + int64_t(2 * h + hi) * d);
  const __nv_bfloat162 *qs = reinterpret_cast<const __nv_bfloat162 *>(q_scale);
  const __nv_bfloat162 *ks = reinterpret_cast<const __nv_bfloat162 *>(k_scale);
  // RoPE table rows cover the joint sequence: (b, L_total, D/2).
  const int64_t trow = (int64_t(bi) * l_total + l_off + li) * half;
  // Output row in (b, H, L_total, D), in pairs.
  const int64_t orow = ((int64_t(bi) * h + hi) * l_total + l_off + li) * half;
  __nv_bfloat162 *qo = reinterpret_cast<__nv_bfloat162 *>(q_out) + orow;
  __nv_bfloat162 *ko = reinterpret_cast<__nv_bfloat162 *>(k_out) + orow;
  __nv_bfloat162 *vo = reinterpret_cast<__nv_bfloat162 *>(v_out) + orow;

  float ssq_q = 0.f, ssq_k = 0.f;
  for (int p = lane; p < half; p += 32) {
    const float2 q = __bfloat1622float2(q_in[p]);
    const float2 k = __bfloat1622float2(k_in[p]);
    ssq_q += q.x * q.x + q.y * q.y;
    ssq_k += k.x * k.x + k.y * k.y;
    vo[p] = v_in[p];
  }
  ssq_q = warp_sum(ssq_q);
  ssq_k = warp_sum(ssq_k);
  const float rq = 1.0f / sqrtf(ssq_q / float(d) + eps);
  const float rk = 1.0f / sqrtf(ssq_k / float(d) + eps);
  for (int p = lane; p < half; p += 32) {
    const float c = cos_t[trow + p], s = sin_t[trow + p];
    const float2 q = __bfloat1622float2(q_in[p]), k = __bfloat1622float2(k_in[p]);
    const float2 sq = __bfloat1622float2(qs[p]), sk = __bfloat1622float2(ks[p]);
    const float q0 = bf(bf(q.x * rq) * sq.x), q1 = bf(bf(q.y * rq) * sq.y);
    const float k0 = bf(bf(k.x * rk) * sk.x), k1 = bf(bf(k.y * rk) * sk.y);
    qo[p] = __floats2bfloat162_rn(c * q0 - s * q1, s * q0 + c * q1);
    ko[p] = __floats2bfloat162_rn(c * k0 - s * k1, s * k0 + c * k1);
  }
}

// One block of 256 threads per row of `n` values.
constexpr int kLnThreads = 256;

// Sum of `v` over the block (kLnThreads threads); every thread gets the total.
__device__ __forceinline__ float block_sum(float v, float *scratch) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < kLnThreads / 32 ? scratch[lane] : 0.f;
  return warp_sum(v);
}

__global__ void modulated_layer_norm_kernel(const __nv_bfloat16 *__restrict__ x,
                                            const __nv_bfloat16 *__restrict__ shift,
                                            const __nv_bfloat16 *__restrict__ scale,
                                            __nv_bfloat16 *__restrict__ y, int rows_per_batch, int n,
                                            int64_t mod_batch_stride, float eps) {
  __shared__ float scratch[kLnThreads / 32];
  const int64_t row = blockIdx.x;
  const int bi = int(row / rows_per_batch);
  const __nv_bfloat16 *xr = x + row * n;
  // Two passes (mean, then squared deviations; the row stays in cache) so a large mean does not
  // cancel the variance away.
  float sum = 0.f;
  for (int i = threadIdx.x; i < n; i += kLnThreads) sum += __bfloat162float(xr[i]);
  const float mean = block_sum(sum, scratch) / float(n);
  float ssd = 0.f;
  for (int i = threadIdx.x; i < n; i += kLnThreads) {
    const float dv = __bfloat162float(xr[i]) - mean;
    ssd += dv * dv;
  }
  const float rstd = 1.0f / sqrtf(block_sum(ssd, scratch) / float(n) + eps);
  const __nv_bfloat16 *sh = shift + bi * mod_batch_stride;
  const __nv_bfloat16 *sc = scale + bi * mod_batch_stride;
  __nv_bfloat16 *yr = y + row * n;
  for (int i = threadIdx.x; i < n; i += kLnThreads) {
    const float normed = bf((__bfloat162float(xr[i]) - mean) * rstd);
    const float s1 = bf(1.0f + __bfloat162float(sc[i]));
    yr[i] = __float2bfloat16_rn(bf(normed * s1) + __bfloat162float(sh[i]));
  }
}

}  // namespace kontext_fused

// See the header comment. Returns a cudaError_t (0 = launched).
extern "C" int kontext_qk_norm_rope_bf16(const void *qkv, int64_t qkv_batch_stride,
                                         int64_t qkv_row_stride, const void *q_scale,
                                         const void *k_scale, const float *cos_t, const float *sin_t,
                                         void *q_out, void *k_out, void *v_out, int b, int l_s, int h,
                                         int d, int l_total, int l_off, float eps, void *stream) {
  using namespace kontext_fused;
  const int64_t rows = int64_t(b) * l_s * h;
  if (rows == 0) return 0;
  const unsigned blocks = unsigned((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  qk_norm_rope_kernel<<<blocks, kWarpsPerBlock * 32, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      static_cast<const __nv_bfloat16 *>(qkv), qkv_batch_stride, qkv_row_stride,
      static_cast<const __nv_bfloat16 *>(q_scale), static_cast<const __nv_bfloat16 *>(k_scale), cos_t,
      sin_t, static_cast<__nv_bfloat16 *>(q_out), static_cast<__nv_bfloat16 *>(k_out),
      static_cast<__nv_bfloat16 *>(v_out), b, l_s, h, d, l_total, l_off, eps);
  return int(cudaGetLastError());
}

// x, y: (b, rows_per_batch, n) contiguous; shift, scale: (b, 1, n) with batch stride
// mod_batch_stride and a contiguous last dim.
extern "C" int kontext_modulated_layer_norm_bf16(const void *x, const void *shift, const void *scale,
                                                 void *y, int b, int rows_per_batch, int n,
                                                 int64_t mod_batch_stride, float eps, void *stream) {
  using namespace kontext_fused;
  const int64_t rows = int64_t(b) * rows_per_batch;
  if (rows == 0) return 0;
  modulated_layer_norm_kernel<<<unsigned(rows), kLnThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      static_cast<const __nv_bfloat16 *>(x), static_cast<const __nv_bfloat16 *>(shift),
      static_cast<const __nv_bfloat16 *>(scale), static_cast<__nv_bfloat16 *>(y), rows_per_batch, n,
      mod_batch_stride, eps);
  return int(cudaGetLastError());
}
