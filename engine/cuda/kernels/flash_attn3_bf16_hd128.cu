// Kontext's FlashAttention-3 entry point (Hopper, sm_90a): the warp-specialised TMA/WGMMA forward
// kernel, instantiated only for what the FLUX transformer runs: bf16, head dim 128, one K/V head
// per query head, no causal/local mask, fixed sequence lengths, no paged or split KV. The
// published candle-flash-attn-v3 crate compiles every head dim, dtype and GQA ratio behind
// runtime switches and fetches its CUTLASS with git; this is one unit with the two kernels the
// FLUX shapes reach (query tiles in an even or odd number: 2-CTA clusters need an even one).
//
// The FlashAttention-3 headers included below are not in this repository: scripts/build-cuda.sh
// downloads the pinned candle-flash-attn-v3 0.11.1 crate from crates.io, checks its SHA-256 and
// unpacks it, and build.rs puts its hkernel/ directory (KONTEXT_FLASH_ATTN3_DIR) on the include
// path. They are used unmodified, with the CUTLASS 3.5 headers of the nvidia-cutlass wheel
// (copy_paged_sm90_tma.hpp picks its CUTLASS 3.5 variant by CUTLASS_VERSION).
//
// Tile: 128 query rows (two consumer warpgroups) x 176 key rows, 2 pipeline stages, 12 warps -
// the configuration run_mha_fwd_hdim128 (flash_fwd_launch_template.h) picks for this case.

#include <cmath>
#include <cstdint>
#include <cstring>

#include <cuda_runtime.h>

#include "flash_fwd_launch_template.h"
#include "flash_params.h"

namespace kontext_flash3 {

template <bool UseCluster>
using Traits = Flash_fwd_kernel_traits<128, 128, 176, 12, 2, false, UseCluster ? 2 : 1,
                                       cutlass::bfloat16_t, false>;

template <bool UseCluster>
void run(Flash_fwd_params &params, cudaStream_t stream) {
  // <Kernel_traits, Is_causal, Is_local, Seqlen_traits (K), Seqlen_traits_Q>
  run_flash_fwd<Traits<UseCluster>, false, false, flash::FixedSeqLenTraits,
                flash::FixedSeqLenTraits>(params, stream);
}

}  // namespace kontext_flash3

// softmax(q·kᵀ·scale)·v per (batch, head), as kontext_flash_attn_bf16_hd128 (the FA2 entry point):
// layout (b, seq, heads, 128) for q, k, v and o, strides in elements, only the last dimension
// contiguous; `lse` receives the f32 log-sum-exp of every (b, head, query row). Needs a query
// length above 64 (one consumer warpgroup otherwise, a kernel not built here): returns
// cudaErrorInvalidValue for shorter ones, else the launch's cudaError_t (0 = launched).
extern "C" int kontext_flash_attn3_bf16_hd128(
    const void *q, const void *k, const void *v, void *o, float *lse,
    int64_t q_batch_stride, int64_t q_row_stride, int64_t q_head_stride,
    int64_t k_batch_stride, int64_t k_row_stride, int64_t k_head_stride,
    int64_t v_batch_stride, int64_t v_row_stride, int64_t v_head_stride,
    int64_t o_batch_stride, int64_t o_row_stride, int64_t o_head_stride,
    int b, int h, int seqlen_q, int seqlen_k, float softmax_scale, void *stream) {
  if (seqlen_q <= 64 || seqlen_k < 1) return int(cudaErrorInvalidValue);
  Flash_fwd_params params;
  kontext_flash_params::fill(params, q, k, v, o, lse, q_batch_stride, q_row_stride,
                             q_head_stride, k_batch_stride, k_row_stride, k_head_stride,
                             v_batch_stride, v_row_stride, v_head_stride, o_batch_stride,
                             o_row_stride, o_head_stride, b, h, seqlen_q, seqlen_k,
                             softmax_scale);
  params.b_k = b;
  params.total_k = uint32_t(seqlen_k) * uint32_t(b);
  auto s = static_cast<cudaStream_t>(stream);
  // 2-CTA clusters only over an even number of query tiles (run_mha_fwd_hdim128's rule).
  if ((seqlen_q + 127) / 128 % 2 == 0) {
    kontext_flash3::run<true>(params, s);
  } else {
    kontext_flash3::run<false>(params, s);
  }
  return int(cudaGetLastError());
}
