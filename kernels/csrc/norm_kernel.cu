// lowbit add_rms_norm: a transformer layer's residual add and the RMSNorm after it, in one pass over the row:
//
//   h = x + r                                   (float32 add, rounded to T)
//   y = T( T(h * rsqrt(mean(h^2) + eps)) * w )  (model.py's RMSNorm; kernels/norm.py is the reference)
//
// Why a kernel of our own: in Llama-3-8B's decode step at batch 32 (torch.compile, CUDA graphs, one layer compiled
// once) inductor makes the two "add + RMSNorm" of each layer looped reductions that read each 4,096-column row
// twice (it keeps a row in registers, one persistent pass, only up to 1,024 columns): 2.7 and 2.4 us per layer in a
// profile of that step on an H100.  Each row is 8 KB of x, of r, of h and of y (1 MB in all at 32 rows): little
// enough that every load of a row can be in flight at once.
//
// ---------------------------------------------------------------------------
// Work split
// ---------------------------------------------------------------------------
// One CTA per row (grid.x = rows, any count from 1: a decode step has the batch's rows, a prefill thousands).
// A row's D values are D/8 16-byte vectors (8 bf16/fp16 each; D % 8 == 0, checked by the host); thread t owns
// vectors t, t + blockDim, ..., so a warp's load is 512 contiguous bytes.  blockDim = D/8 rounded up to a warp,
// at most 1,024 (Llama-3-8B: 512 threads, one vector each); beyond 8,192 columns each thread owns V <= 4
// vectors (a template parameter, so they stay in registers: D <= 32,768).  Every load of the row (x, r and the
// weight) is issued before the first is used, so the CTA waits for one memory round trip; then nothing of the
// row is read again: h is computed in registers, stored, and reused for y.  Splitting a row over several CTAs
// would put more SMs on its loads, but one CTA already has all of them in flight at once (24 KB of x, r and
// weight at D = 4,096), so the time is one round trip either way, and the row's sum would have to cross CTAs
// (a cluster, or a second kernel).
//
// ---------------------------------------------------------------------------
// Arithmetic (h exact; t within one 16-bit ulp of the reference's)
// ---------------------------------------------------------------------------
// h: float(x) + float(r) rounded once to T, what torch's 16-bit add does: bit for bit.
// Sum of squares of the rounded h in float32, each thread its own vectors in a fixed order (fma), then a
// xor-butterfly over the warp, the warps' sums through shared memory, and a second butterfly over them that every
// warp runs on the same 32 values.  At each butterfly step partners add the same two values in swapped order
// (float addition commutes), so every lane of every warp ends with the same bits: one total per row, the same
// run after run, without a second barrier or a broadcast.  The order differs from torch's, so the total differs
// from the reference's in the last float32 bits; mean = sum / D, rs = rsqrtf(mean + eps) (the approximate
// reciprocal square root, what torch.rsqrt and inductor use on CUDA; within 2 float32 ulp).  Then
// t = T(h * rs) is the reference's t or one 16-bit ulp from it where h * rs sits next to a rounding boundary, and
// y = T(float(t) * float(w)) exactly as torch multiplies two 16-bit tensors (the float32 product of two 16-bit
// values is exact, so y is rounded once).  Products and sums use the _rn intrinsics, so no contraction to fma
// changes a rounding.
//
// ---------------------------------------------------------------------------
// Programmatic dependent launch
// ---------------------------------------------------------------------------
// x and r come from the kernels just before (the attention's or the feed-forward's output projection): nothing
// is read before pdl_wait().  The weight is read after it too: issued with x and r it adds no round trip of its
// own; reading it before the wait would help only where its load outlasts theirs (not measured) and would put on
// this op the w4a16 GEMM's contract that the kernel before it must not write the weight.  Once a CTA has issued
// its loads it calls pdl_launch_dependents(): the next kernel (our w4a16 GEMM for qkv or gate/up, which reads y
// only after its own pdl_wait, i.e. after this grid has finished) may start streaming its weights while the rows
// finish here.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "launch.cuh"
#include "norm.h"

namespace lowbit {
namespace {

// Eight 16-bit values stay packed in a uint4 (one 16-byte load or store, 4 registers; an array of 8 bf16 took a
// register per value and spilled at 3 vectors per thread) and are taken apart a 32-bit word at a time: element 2i
// is the low half of word i (little-endian), 2i + 1 the high half.
__device__ __forceinline__ uint32_t& word(uint4& v, int i) { return (&v.x)[i]; }
template <typename T> __device__ __forceinline__ float half_to_float(uint32_t w, int hi);
template <> __device__ __forceinline__ float half_to_float<__nv_bfloat16>(uint32_t w, int hi) {
  return __uint_as_float(hi ? w & 0xFFFF0000u : w << 16);  // bf16 is the top half of a float32
}
template <> __device__ __forceinline__ float half_to_float<__half>(uint32_t w, int hi) {
  return __half2float(__ushort_as_half((unsigned short)(hi ? w >> 16 : w & 0xFFFFu)));
}
// a, b rounded to nearest even, as the low and high half of one word.
template <typename T> __device__ __forceinline__ uint32_t pack(float a, float b);
template <> __device__ __forceinline__ uint32_t pack<__nv_bfloat16>(float a, float b) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(a)) |
         ((uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(b)) << 16);
}
template <> __device__ __forceinline__ uint32_t pack<__half>(float a, float b) {
  return __half_as_ushort(__float2half_rn(a)) | ((uint32_t)__half_as_ushort(__float2half_rn(b)) << 16);
}
// A value rounded to T and back to float32.
template <typename T> __device__ __forceinline__ float round_to(float v) {
  return half_to_float<T>(pack<T>(v, 0.f), 0);
}

// Sum over the warp; every lane gets the same bits (header).
__device__ __forceinline__ float warp_sum(float s) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) s = __fadd_rn(s, __shfl_xor_sync(0xffffffffu, s, off));
  return s;
}

template <typename T, int V>
__global__ void __launch_bounds__(kNormMaxThreads) add_rms_norm_kernel(const NormParams p) {
  const int64_t row = blockIdx.x;
  const int nvec = p.D / kNormVec;
  const uint4* xr = reinterpret_cast<const uint4*>(static_cast<const T*>(p.x) + row * p.x_stride);
  const uint4* rr = reinterpret_cast<const uint4*>(static_cast<const T*>(p.r) + row * p.r_stride);
  const uint4* wr = static_cast<const uint4*>(p.weight);
  uint4* hr = reinterpret_cast<uint4*>(static_cast<T*>(p.h) + row * p.D);
  uint4* yr = reinterpret_cast<uint4*>(static_cast<T*>(p.y) + row * p.D);

  pdl_wait();  // x and r are the previous kernels' outputs
  uint4 hv[V], rv[V], wv[V];  // hv holds x until h overwrites it
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const int j = threadIdx.x + i * blockDim.x;
    if (j < nvec) hv[i] = xr[j], rv[i] = rr[j], wv[i] = wr[j];
  }
  pdl_launch_dependents();  // every load of this CTA is out

  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const int j = threadIdx.x + i * blockDim.x;
    if (j < nvec) {
#pragma unroll
      for (int k = 0; k < kNormVec / 2; ++k) {
        const uint32_t xw = word(hv[i], k), rw = word(rv[i], k);
        word(hv[i], k) = pack<T>(__fadd_rn(half_to_float<T>(xw, 0), half_to_float<T>(rw, 0)),
                                 __fadd_rn(half_to_float<T>(xw, 1), half_to_float<T>(rw, 1)));
        const float h0 = half_to_float<T>(word(hv[i], k), 0), h1 = half_to_float<T>(word(hv[i], k), 1);
        ss = __fmaf_rn(h1, h1, __fmaf_rn(h0, h0, ss));
      }
      hr[j] = hv[i];
    }
  }

  // The row's sum: warps, then the warps' sums (at most 32) summed by every warp alike.
  __shared__ float s_warp[kNormMaxThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  ss = warp_sum(ss);
  if (lane == 0) s_warp[warp] = ss;
  __syncthreads();
  ss = warp_sum(lane < (int)(blockDim.x >> 5) ? s_warp[lane] : 0.f);
  const float rs = rsqrtf(__fadd_rn(__fdiv_rn(ss, (float)p.D), p.eps));

#pragma unroll
  for (int i = 0; i < V; ++i) {
    const int j = threadIdx.x + i * blockDim.x;
    if (j < nvec) {
      uint4 out;
#pragma unroll
      for (int k = 0; k < kNormVec / 2; ++k) {
        const uint32_t hw = word(hv[i], k), ww = word(wv[i], k);
        const float t0 = round_to<T>(__fmul_rn(half_to_float<T>(hw, 0), rs));
        const float t1 = round_to<T>(__fmul_rn(half_to_float<T>(hw, 1), rs));
        word(out, k) = pack<T>(__fmul_rn(t0, half_to_float<T>(ww, 0)), __fmul_rn(t1, half_to_float<T>(ww, 1)));
      }
      yr[j] = out;
    }
  }
}

}  // namespace

cudaError_t launch_add_rms_norm(const NormParams& p, int64_t rows, bool fp16, cudaStream_t stream, bool pdl) {
  const int nvec = p.D / kNormVec;
  const int threads = ((nvec + 31) / 32) * 32 < kNormMaxThreads ? ((nvec + 31) / 32) * 32 : kNormMaxThreads;
  const int vecs = (nvec + threads - 1) / threads;  // 1 up to 8,192 columns; at most kNormMaxVecs (host check)
  const dim3 grid((unsigned)rows);
  auto go = [&](auto t, auto v) {
    using T = typename decltype(t)::type;
    return launch(add_rms_norm_kernel<T, decltype(v)::value>, grid, threads, 0, stream, pdl, p);
  };
  auto by_vecs = [&](auto t) {
    static_assert(kNormMaxVecs == 4, "one instance per vector count");
    switch (vecs) {
      case 1: return go(t, Int<1>{});
      case 2: return go(t, Int<2>{});
      case 3: return go(t, Int<3>{});
      default: return go(t, Int<4>{});
    }
  };
  return fp16 ? by_vecs(Type<__half>{}) : by_vecs(Type<__nv_bfloat16>{});
}

}  // namespace lowbit
