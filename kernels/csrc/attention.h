// Shared declarations between ops.cpp (host glue) and attention_kernel.cu (device code) for
// lowbit::kv16_decode_attention.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace lowbit {

constexpr int kAttnMaxRows = 8;     // query rows per KV head (GQA group size) the kernel holds in registers
constexpr int kAttnMaxSplits = 8;   // column splits of one (sequence, KV head): one cluster (portable size)

struct AttnParams {
  const void* q;      // (B, H, R, D), last dim contiguous; strides below, in elements
  const void* k;      // (B, H, S, D) contiguous KV cache
  const void* v;      // (B, H, S, D) contiguous
  const void* mask;   // (B, S) additive, last dim contiguous; -inf columns are skipped
  void* y;            // (B, H, R, D) contiguous output
  // Optional RoPE of q: (B, D/2) float32 cos and sin of row b's angles, last dim contiguous (nullptr: q is
  // used as given); q's interleaved pairs (2i, 2i+1) are rotated by angle i and rounded to q's dtype.
  const float* rope_cos;
  const float* rope_sin;
  // Optional write of this step's keys and values (kv16_decode_step_attention): k_new, v_new (B, H, D), last dim
  // contiguous, strides new_sb/new_sh (the same for both); k rotated like q (rope_cos/rope_sin required), both
  // stored at cache column *input_pos before any read of that column (nullptr: the cache is only read).
  const void* k_new;
  const void* v_new;
  const int64_t* input_pos;
  int64_t q_sb, q_sh, q_sr, mask_sb, rope_cos_sb, rope_sin_sb, new_sb, new_sh;
  int B, H, R, S;
  int splits, chunk;  // the S columns cut into `splits` runs of `chunk` (the last may be shorter)
  float scale_log2;   // log2(e) / sqrt(D)
};

// D = 64 or 128 (checked by the caller); splits > 1 only on sm_90+ (clusters); pdl as for the GEMM
// launchers (w4a16.h).
cudaError_t launch_decode_attention(const AttnParams& p, bool fp16, int D, cudaStream_t stream, bool pdl);

}  // namespace lowbit
