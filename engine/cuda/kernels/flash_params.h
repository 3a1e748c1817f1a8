// The Flash_fwd_params fields that FlashAttention-2 and FlashAttention-3 share, filled for the
// one case Kontext runs (bf16, head dim 128, one K/V head per query head, no mask, no dropout,
// no paging or split KV). Each generation's headers define their own struct of that name with
// more members, so this is a template that each translation unit instantiates with its own; the
// caller sets the generation's other fields after it.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace kontext_flash_params {

inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

// Layout (b, seq, heads, 128) for q, k, v and o: strides in elements, last dimension contiguous.
template <typename Params>
void fill(Params &params, const void *q, const void *k, const void *v, void *o, float *lse,
          int64_t q_batch_stride, int64_t q_row_stride, int64_t q_head_stride,
          int64_t k_batch_stride, int64_t k_row_stride, int64_t k_head_stride,
          int64_t v_batch_stride, int64_t v_row_stride, int64_t v_head_stride,
          int64_t o_batch_stride, int64_t o_row_stride, int64_t o_head_stride, int b, int h,
          int seqlen_q, int seqlen_k, float softmax_scale) {
  std::memset(&params, 0, sizeof(params));
  params.q_ptr = const_cast<void *>(q);
  params.k_ptr = const_cast<void *>(k);
  params.v_ptr = const_cast<void *>(v);
  params.o_ptr = o;
  params.softmax_lse_ptr = lse;
  params.q_batch_stride = q_batch_stride;
  params.k_batch_stride = k_batch_stride;
  params.v_batch_stride = v_batch_stride;
  params.o_batch_stride = o_batch_stride;
  params.q_row_stride = q_row_stride;
  params.k_row_stride = k_row_stride;
  params.v_row_stride = v_row_stride;
  params.o_row_stride = o_row_stride;
  params.q_head_stride = q_head_stride;
  params.k_head_stride = k_head_stride;
  params.v_head_stride = v_head_stride;
  params.o_head_stride = o_head_stride;
  params.b = b;
  params.h = h;
  params.h_k = h;
  params.h_h_k_ratio = 1;
  params.seqlen_q = seqlen_q;
  params.seqlen_k = seqlen_k;
  params.seqlen_q_rounded = round_up(seqlen_q, 128);
  params.seqlen_k_rounded = round_up(seqlen_k, 128);
  params.total_q = b * seqlen_q;
  params.d = 128;
  params.d_rounded = 128;
  params.scale_softmax = softmax_scale;
  params.scale_softmax_log2 = softmax_scale * float(M_LOG2E);
  // No dropout: keep probability 1.
  params.p_dropout = 1.0f;
  params.p_dropout_in_uint8_t = 255;
  params.rp_dropout = 1.0f;
  params.scale_softmax_rp_dropout = softmax_scale;
  params.window_size_left = -1;
  params.window_size_right = -1;
  params.is_bf16 = true;
  params.is_causal = false;
  params.num_splits = 1;
  params.page_block_size = -1;
}

}  // namespace kontext_flash_params
