// Shared declarations between ops.cpp (host glue) and norm_kernel.cu (device code) for lowbit::add_rms_norm.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace lowbit {

constexpr int kNormVec = 8;             // 16-bit values per 16-byte load
constexpr int kNormMaxThreads = 1024;   // one CTA per row: D/8 threads rounded up to a warp, at most this many
constexpr int kNormMaxVecs = 4;         // 16-byte loads per thread beyond 1024 threads, kept in registers
constexpr int64_t kNormMaxD = (int64_t)kNormVec * kNormMaxThreads * kNormMaxVecs;  // 32,768 (kernels/norm.py MAX_D)

struct NormParams {
  const void* x;       // (rows, D), row stride x_stride elements, last dim contiguous, 16-byte aligned rows
  const void* r;       // (rows, D), row stride r_stride
  const void* weight;  // (D,)
  void* h;             // (rows, D) contiguous: x + r
  void* y;             // (rows, D) contiguous: RMSNorm(h) * weight
  int64_t x_stride, r_stride;
  int D;               // a multiple of 8, at most kNormMaxD (checked by the caller)
  float eps;
};

// grid.x = rows (1 .. 2^31 - 1, checked by the caller); pdl: programmatic dependent launch (launch.cuh; the host
// sets it on sm_90+ only, ops.cpp use_pdl).
cudaError_t launch_add_rms_norm(const NormParams& p, int64_t rows, bool fp16, cudaStream_t stream, bool pdl);

}  // namespace lowbit
