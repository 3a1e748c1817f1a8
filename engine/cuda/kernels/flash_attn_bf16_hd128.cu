// Kontext's flash-attention entry point: the FlashAttention-2 forward kernel, instantiated only
// for what the FLUX transformer runs: bf16, head dim 128, one K/V head per query head, no
// causal/local mask, no dropout, no ALiBi, no softcap, no paged or split KV. candle-flash-attn
// compiles 53 translation units with every combination of those switches (1.5-2.5 h on 2 cores);
// this is one unit with two kernels (sequence lengths that are / are not multiples of the tile).
//
// The FlashAttention-2 headers included below are not in this repository: scripts/build-cuda.sh
// downloads the pinned candle-flash-attn 0.11.1 crate from crates.io, checks its SHA-256 and
// unpacks it, and build.rs puts its kernels/ directory (KONTEXT_FLASH_ATTN_DIR) on the include
// path. They are used unmodified.
//
// Tile: 128 query rows x 64 key rows, 4 warps - the configuration FlashAttention-2 picks for
// head dim 128 without dropout on sm80 and sm90 (flash_fwd_launch_template.h,
// run_mha_fwd_hdim128, "good for H100, A100").

#include <cmath>
#include <cstdint>
#include <cstring>

#include <cuda_runtime.h>

#include "flash.h"
#include "flash_fwd_kernel.h"
#include "flash_params.h"

// A named namespace: nvcc's host stubs cannot tell our anonymous namespace from CuTe's.
namespace kontext_flash {

using Traits = Flash_fwd_kernel_traits<128, 128, 64, 4, false, false, cutlass::bfloat16_t>;

template <bool Is_even_MN>
__global__ void kontext_flash_fwd(__grid_constant__ const Flash_fwd_params params) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  // <Traits, Is_dropout, Is_causal, Is_local, Has_alibi, Is_even_MN, Is_even_K, Is_softcap,
  //  Return_softmax>
  flash::compute_attn<Traits, false, false, false, false, Is_even_MN, true, false, false>(params);
#endif
}

template <bool Is_even_MN>
cudaError_t launch(const Flash_fwd_params &params, cudaStream_t stream) {
  constexpr size_t smem = Traits::kSmemSize;
  auto kernel = &kontext_flash_fwd<Is_even_MN>;
  if (smem >= 48 * 1024) {
    cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  dim3 grid((params.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM, params.b, params.h);
  kernel<<<grid, Traits::kNThreads, smem, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace kontext_flash

// softmax(q·kᵀ·scale)·v per (batch, head). Layout (b, seq, heads, 128) for q, k, v and o; strides
// are in elements and only the last dimension must be contiguous. `lse` receives the f32
// log-sum-exp of every (b, head, query row). Returns a cudaError_t (0 = launched).
extern "C" int kontext_flash_attn_bf16_hd128(
    const void *q, const void *k, const void *v, void *o, float *lse,
    int64_t q_batch_stride, int64_t q_row_stride, int64_t q_head_stride,
    int64_t k_batch_stride, int64_t k_row_stride, int64_t k_head_stride,
    int64_t v_batch_stride, int64_t v_row_stride, int64_t v_head_stride,
    int64_t o_batch_stride, int64_t o_row_stride, int64_t o_head_stride,
    int b, int h, int seqlen_q, int seqlen_k, float softmax_scale, void *stream) {
  Flash_fwd_params params;
  kontext_flash_params::fill(params, q, k, v, o, lse, q_batch_stride, q_row_stride,
                             q_head_stride, k_batch_stride, k_row_stride, k_head_stride,
                             v_batch_stride, v_row_stride, v_head_stride, o_batch_stride,
                             o_row_stride, o_head_stride, b, h, seqlen_q, seqlen_k,
                             softmax_scale);
  params.softcap = 0.0f;
  params.is_seqlens_k_cumulative = true;

  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  using kontext_flash::Traits;
  const bool even_mn = seqlen_q % Traits::kBlockM == 0 && seqlen_k % Traits::kBlockN == 0;
  return int(even_mn ? kontext_flash::launch<true>(params, s)
                     : kontext_flash::launch<false>(params, s));
}
