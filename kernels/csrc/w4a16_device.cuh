// Device helpers and host dispatch shared by the GEMM kernel files (w4a16_kernel.cu: the mma.sync kernels and
// the dequantize pass; w4a16_wgmma.cu, w4a16_wgmma_ws.cu: the Hopper wgmma kernels): the 16-bit types'
// tensor-core products and dequantization constants, cp.async and ldmatrix, the split-K finish, and the host-side
// dispatch of runtime (dtype, zeros, m-tiles) to template arguments.  Everything lives in an anonymous
// namespace: each kernel file has its own copy.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <type_traits>

#include "launch.cuh"
#include "w4a16.h"

namespace lowbit {
namespace {

// ---- dtype traits ---------------------------------------------------------
// m16n8k16 tensor-core products with fp32 accumulators for the 16-bit type TY ("bf16" or "f16"):
// mma: c += a·b; mma_zc: c = a·b (the accumulator input is zero).
#define LOWBIT_MMA16(TY)                                                                              \
  static __device__ __forceinline__ void mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {   \
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." TY "." TY ".f32 "                             \
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"                              \
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                       \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));                       \
  }                                                                                                    \
  static __device__ __forceinline__ void mma_zc(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {\
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." TY "." TY ".f32 "                             \
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%10,%10,%10};\n"                          \
                 : "=f"(c[0]), "=f"(c[1]), "=f"(c[2]), "=f"(c[3])                                       \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(0.f));             \
  }

template <typename T> struct Traits;
template <> struct Traits<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  static constexpr uint32_t kMagic = 0x43004300u;  // 128.0 in both halves
  static constexpr uint32_t kOne2 = 0x3F803F80u;   // 1.0 in both halves
  // The streaming kernel at MT = 1: a nibble in the top four mantissa bits (3..6) of 16.0 gives
  // 16 + q exactly; kTop = the shift that moves bit 0 of a nibble there.
  static constexpr uint32_t kMagic16 = 0x41804180u, kTopMask = 0x00780078u;
  static constexpr int kTop = 3;
  static __device__ __forceinline__ T2 magic_sym() {  // 136 = 128 + 8
    return __floats2bfloat162_rn(136.f, 136.f);
  }
  static __device__ __forceinline__ T2 magic() { return __floats2bfloat162_rn(128.f, 128.f); }
  static __device__ __forceinline__ T2 from_floats(float a, float b) { return __floats2bfloat162_rn(a, b); }
  LOWBIT_MMA16("bf16")
};
template <> struct Traits<__half> {
  using T2 = __half2;
  static constexpr uint32_t kMagic = 0x64006400u;  // 1024.0 in both halves
  static constexpr uint32_t kOne2 = 0x3C003C00u;   // 1.0 in both halves
  static constexpr uint32_t kMagic16 = 0x4C004C00u, kTopMask = 0x03C003C0u;  // mantissa bits 6..9
  static constexpr int kTop = 6;
  static __device__ __forceinline__ T2 magic_sym() { return __floats2half2_rn(1032.f, 1032.f); }
  static __device__ __forceinline__ T2 magic() { return __floats2half2_rn(1024.f, 1024.f); }
  static __device__ __forceinline__ T2 from_floats(float a, float b) { return __floats2half2_rn(a, b); }
  LOWBIT_MMA16("f16")
};
#undef LOWBIT_MMA16

template <typename T2> __device__ __forceinline__ uint32_t as_u32(T2 v) {
  return *reinterpret_cast<uint32_t*>(&v);
}
template <typename T2> __device__ __forceinline__ T2 as_t2(uint32_t v) {
  return *reinterpret_cast<T2*>(&v);
}

// (a & b) | c as ONE lop3: left to itself the compiler emits two LOP3s for the mask and the magic (seen in
// the SASS of the streaming and the wgmma kernels), one extra per weight pair.
template <uint32_t B, uint32_t C>
__device__ __forceinline__ uint32_t and_or(uint32_t a) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(d) : "r"(a), "n"(B), "n"(C));
  return d;
}

// ---- cp.async helpers -----------------------------------------------------
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16-byte async copy; when !pred the destination is zero-filled and global
// memory is not read (src-size 0), the pointer is still a valid address.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool pred) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(pred ? 16 : 0));
}
// Weights: streamed once, so mark them evict_first in L2 to keep x and the
// scales (re-read by every n-block) resident.
__device__ __forceinline__ void cp_async16_evict_first(void* dst, const void* src, uint64_t policy) {
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)),
               "l"(src), "l"(policy));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, uint32_t saddr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(saddr));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* p) { ldmatrix_x4(r, smem_addr(p)); }
__device__ __forceinline__ void ldmatrix_x2(uint32_t* r, uint32_t saddr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(saddr));
}

// ---- one pipeline stage's weights, scales and zeros (the fused mma kernel; the wgmma kernel plans the same
// layout once per CTA) ----
constexpr int kMaxGroupsPerBlk = kMmaKBlock / 32;                   // smallest group size is 32
constexpr int kWBytes = (kMmaNBlock / 64) * (kMmaKBlock / 16) * 512;  // 8 KB of weights per stage
constexpr int kSBytes = kMaxGroupsPerBlk * kMmaNBlock * 2;          // 1 KB of scales (zeros) per stage

// The L2 policy for weight reads (see cp_async16_evict_first).
__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}

// Issues the copies of k-block kb of n-block nb (kMmaNBlock channels) by the CTA's 256 threads: its weights,
// 2 n-tiles x 8 k-tiles x 32 chunks of 16 bytes (2 per thread; each n-tile's 8 k-tiles are 4 KB contiguous in
// global memory), to w_dst in that order, so k-tile kt of n-tile nt is at ((nt * 8 + kt) * 32 + lane) * 16; and
// the scales (then, with HAS_Z, the zeros kSBytes further) of the groups the k-block touches, 16 chunks of 8
// channels per group, group gi of the block at s_dst + gi * kMmaNBlock * 2.  Tiles past N or K are not copied.
template <typename T, bool HAS_Z>
__device__ __forceinline__ void copy_stage_weights(uint8_t* w_dst, uint8_t* s_dst, const GemmParams& p, int tid,
                                                   int nb, int kb) {
  constexpr int kNBlk = kMmaNBlock, kKBlk = kMmaKBlock, kCopyThreads = 256;
  const int K = p.K, N = p.N, gsh = p.group_shift;
  const int k_tiles = K >> 4, n_tiles = N >> 6;
  const int4* __restrict__ wq = reinterpret_cast<const int4*>(p.w);
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int c = tid + i * kCopyThreads;
    const int nt = c >> 8, rem = c & 255;
    const int gnt = nb * 2 + nt, gkt = kb * 8 + (rem >> 5);
    if (gnt < n_tiles && gkt < k_tiles)
      // No L2 evict_first hint here, unlike the streaming kernels: with one, ptxas (CUDA 13.0) emitted in the
      // main loop of both fused kernels an LDGSTS whose memory descriptor is the odd, never-written uniform
      // register UR1 ("desc[UR1]"), an illegal instruction on the H100 (kernels/NOTES.md v11e).
      cp_async16(w_dst + c * 16, wq + ((size_t)gnt * k_tiles + kb * 8) * 32 + rem, true);
  }
  const T* __restrict__ sg = reinterpret_cast<const T*>(p.s);
  const T* __restrict__ zg = reinterpret_cast<const T*>(p.z);
  const int k0 = kb * kKBlk;
  const int g0 = k0 >> gsh;
  const int ng = ((min(k0 + kKBlk, K) - 1) >> gsh) - g0 + 1;
  if (tid < kMaxGroupsPerBlk * 16) {
    const int gi = tid >> 4, ch = tid & 15;
    const int col = nb * kNBlk + ch * 8;
    if (gi < ng && col < N) cp_async16(s_dst + tid * 16, sg + (size_t)(g0 + gi) * N + col, true);
  } else if (HAS_Z && tid < 2 * kMaxGroupsPerBlk * 16) {
    const int t = tid - kMaxGroupsPerBlk * 16;
    const int gi = t >> 4, ch = t & 15;
    const int col = nb * kNBlk + ch * 8;
    if (gi < ng && col < N) cp_async16(s_dst + kSBytes + t * 16, zg + (size_t)(g0 + gi) * N + col, true);
  }
}

// The 128-deep k-blocks of split `split` (the fused mma and wgmma kernels' split-K): k_blocks_per_split from
// split * kb_per_split, fewer in the last split.
__device__ __forceinline__ int split_k_blocks(const GemmParams& p, int split) {
  const int kb_total = (p.K + kMmaKBlock - 1) / kMmaKBlock;
  return min(p.kb_per_split, kb_total - split * p.kb_per_split);
}

// ---- split-K finish (every GEMM kernel) ------------------------------------
// Called by all THREADS threads of a CTA after it wrote its fp32 partial of the (m-block mb, n-block nb)
// tile, `rows` rows from row0 x kMmaNBlock channels, to workspace slice `split`: the last CTA of the tile
// to arrive sums the k_splits partials in split order 0..S-1 (the result does not depend on the order
// CTAs finish in), writes y and resets the tile's counter for the next launch on this stream.
// The sum is a chain of L2 round trips on the launch's critical path (the last CTA starts it when every other
// CTA of the tile is done).  Each thread sums IN_FLIGHT float4 results at once: 4 in paths 0, 5 and 6 (up to 16
// loads in flight; one result per thread had 4, from the compiler's unrolling of the split loop by 4), 1 in the
// streaming kernels (their tiles have 1-16 rows, so most threads have one result or none, and with 4 the split loop
// is no longer unrolled: M = 1 lost 1.3 us).  The per-element sum is in split order either way (NOTES.md v16).
constexpr int kFinishWide = 4, kFinishNarrow = 1;  // IN_FLIGHT of paths 0, 5 and 6, and of the streaming kernels
template <typename T, int THREADS, int IN_FLIGHT>
__device__ __forceinline__ void split_k_finish(const GemmParams& p, int tid, int mb, int nb, int row0, int rows) {
  using Tr = Traits<T>;
  using T2 = typename Tr::T2;
  constexpr int kNBlk = kMmaNBlock;
  const int M = p.M, N = p.N;
  __shared__ int s_last;
  __threadfence();  // make this CTA's partials visible device-wide before counting
  __syncthreads();
  int* counter = p.counters + (size_t)mb * gridDim.y + nb;
  if (tid == 0) s_last = atomicAdd(counter, 1) == p.k_splits - 1;
  __syncthreads();
  if (!s_last) return;
  __threadfence();  // acquire side: order the partial reads after the counter
  const int cols = min(kNBlk, N - nb * kNBlk), total = rows * (kNBlk / 4);
  T* yg = reinterpret_cast<T*>(p.y);
  auto store = [&](size_t off, const float4& sum) {
    T2* dst = reinterpret_cast<T2*>(yg + off);
    dst[0] = Tr::from_floats(sum.x, sum.y);
    dst[1] = Tr::from_floats(sum.z, sum.w);
  };
  if constexpr (IN_FLIGHT == 1) {
    for (int e = tid; e < total; e += THREADS) {
      const int r = e / (kNBlk / 4), c4 = (e % (kNBlk / 4)) * 4;
      if (c4 >= cols) continue;
      const size_t off = (size_t)(row0 + r) * N + nb * kNBlk + c4;
      float4 sum = __ldcg(reinterpret_cast<const float4*>(p.workspace + off));
      for (int s = 1; s < p.k_splits; ++s) {
        const float4 v = __ldcg(reinterpret_cast<const float4*>(p.workspace + (size_t)s * M * N + off));
        sum.x += v.x; sum.y += v.y; sum.z += v.z; sum.w += v.w;
      }
      store(off, sum);
    }
  } else {
    for (int e0 = tid; e0 < total; e0 += THREADS * IN_FLIGHT) {
      size_t off[IN_FLIGHT];
      bool ok[IN_FLIGHT];
      float4 sum[IN_FLIGHT];
#pragma unroll
      for (int i = 0; i < IN_FLIGHT; ++i) {  // result i: float4 c4 / 4 of row r of the tile
        const int e = e0 + i * THREADS, r = e / (kNBlk / 4), c4 = (e % (kNBlk / 4)) * 4;
        ok[i] = e < total && c4 < cols;
        off[i] = (size_t)(row0 + r) * N + nb * kNBlk + c4;
        sum[i] = ok[i] ? __ldcg(reinterpret_cast<const float4*>(p.workspace + off[i])) : make_float4(0.f, 0.f, 0.f, 0.f);
      }
      for (int s = 1; s < p.k_splits; ++s) {
        const float* slice = p.workspace + (size_t)s * M * N;
#pragma unroll
        for (int i = 0; i < IN_FLIGHT; ++i) {
          if (!ok[i]) continue;
          const float4 v = __ldcg(reinterpret_cast<const float4*>(slice + off[i]));
          sum[i].x += v.x; sum[i].y += v.y; sum[i].z += v.z; sum[i].w += v.w;
        }
      }
#pragma unroll
      for (int i = 0; i < IN_FLIGHT; ++i)
        if (ok[i]) store(off[i], sum[i]);
    }
  }
  if (tid == 0) *counter = 0;  // ready for the next launch on this stream
}

// ---- host-side dispatch -----------------------------------------------------
// The kernels are templates over (activation dtype, zeros present, m16 tiles);
// `dispatch` turns the runtime triple into those template arguments once, for
// every launcher and occupancy query.
template <bool V> using Bool = std::integral_constant<bool, V>;

template <class F>
auto dispatch_mt(int mt, F&& f) {
  switch (mt) {
    case 1: return f(Int<1>{});
    case 2: return f(Int<2>{});
    default: return f(Int<4>{});
  }
}

// Calls f(Type<T>{}, Bool<HAS_Z>{}, Int<MT>{}).
template <class F>
auto dispatch(bool fp16, bool has_z, int mt, F&& f) {
  return dispatch_mt(mt, [&](auto m) {
    if (fp16) return has_z ? f(Type<__half>{}, Bool<true>{}, m) : f(Type<__half>{}, Bool<false>{}, m);
    return has_z ? f(Type<__nv_bfloat16>{}, Bool<true>{}, m) : f(Type<__nv_bfloat16>{}, Bool<false>{}, m);
  });
}

// CTAs per SM for a kernel at `smem` bytes of dynamic shared memory (raising the limit first).
template <class K>
int occupancy(K kern, int threads, int smem) {
  if (smem > 0) cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kern, threads, smem) != cudaSuccess) return 1;
  return n > 0 ? n : 1;
}

// One cached entry per (dtype, zeros, MT).
template <int MTS, class F>
int cached(int (&cache)[2][2][MTS], bool fp16, bool has_z, int mt, F&& compute) {
  int& c = cache[fp16][has_z][mt];
  if (c == 0) c = compute();
  return c;
}

}  // namespace
}  // namespace lowbit
