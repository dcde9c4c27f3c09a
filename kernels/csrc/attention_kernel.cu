// lowbit decode attention: one query position per sequence against a 16-bit KV cache, split over the
// cache's columns (flash-decoding), for GQA laid out as the model does it:
//
//   y[b,h,r,:] = softmax_j( q[b,h,r,:]·k[b,h,j,:] / sqrt(D) + mask[b,j] ) · v[b,h,j,:]
//
// q (B, H, R, D): the R query heads that share KV head h are R rows of that head, so each cached
// K/V byte is read once for all of them.  Given rope_cos/rope_sin the kernel rotates q (RoPE) as it loads
// it; as kv16_decode_step_attention it also writes this step's k (rotated) and v into cache column
// *input_pos before any read of it, so a decode step hands it the qkv projection's output directly.
// mask (B, S) is the same for every head and row (one query
// position); a split's columns after its last visible one (mask != -inf) are not read beyond its first
// turn of loads; hidden columns before it are read and weigh zero (so a NaN or Inf stored in V there
// propagates, as in the reference; one stored in K there does not: its score is -inf before the dot
// product is looked at, where the reference's sum gives NaN).
//
// Why a kernel of our own: at batch 1 the fused attention behind F.scaled_dot_product_attention runs
// one CTA per (sequence, KV head) and Llama-3-8B has 8 KV heads, so 8 of 132 SMs pull the whole
// cache: 12.7 us per layer for 1.6 MB at S = 384 (H200, torch 2.11, cuDNN backend; BENCHMARKS.md
// "Decode attention"), where the bandwidth allows well under 1 us.
//
// ---------------------------------------------------------------------------
// Work split
// ---------------------------------------------------------------------------
// grid (splits, H, B); a CTA of 4 warps owns `chunk` consecutive columns of one (b, h).  Each warp
// takes every 4th column; per column the whole warp reads the K row and the V row (D 16-bit values:
// lane l holds D/32 consecutive ones, one 8- or 4-byte load), so a warp-wide load is one contiguous
// 256- or 128-byte row.  kUnroll columns are loaded before any is used, to keep loads in flight.
//
// Scores: each lane multiplies its D/32 elements for the N = kUnroll x RM (column, row) pairs of a turn,
// and one transposing butterfly sums them over the warp: at each of its steps a lane keeps half of its
// values and adds its partner's copy of them, so 31 shuffles (N = 32) leave lane L with the whole sum of
// pair L, where a shuffle per pair and step (5 x 32 = 160) left every lane with every sum.  Softmax
// online, in base 2 (q is pre-scaled by log2(e)/sqrt(D)), once per turn: per row a running maximum m
// (every lane), a sum l (each lane its pairs' share, summed over the warp after the loop) and output o
// (the lane's D/32 elements), all fp32; the probabilities stay fp32 (the fused kernels round them to 16
// bits before P·V) and reach every lane by one broadcast shuffle per pair.

// Combining: the four warps' (m, l, o) through shared memory in warp order; then, with one split, y.
// Otherwise the splits of one (b, h) are one thread-block cluster (sm_90+; at most 8 CTAs, the portable
// cluster size): each CTA leaves its partial (M, L, O) in its shared memory and, after a cluster barrier,
// combines one slice of the R x D outputs from all of them through distributed shared memory, in split
// order 0..splits-1 (deterministic whatever the arrival order; no global workspace, no counters, so two
// launches never share state).  Below sm_90 the host runs one split.  A split or warp that saw no visible
// column has l = 0 and weighs nothing; a row with no visible column at all gives 0/0 = NaN
// (kernels/attention.py).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <stdint.h>

#include "attention.h"
#include "launch.cuh"

namespace lowbit {
namespace {
namespace cg = cooperative_groups;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kUnroll = 8;  // columns per warp whose K/V loads are issued before the first is used
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }

// A lane's EPL consecutive 16-bit values as one aligned load: uint2 at D = 128, one word at D = 64.
template <int EPL> using Raw = typename std::conditional<EPL == 4, uint2, uint32_t>::type;
__device__ __forceinline__ uint32_t word(uint2 r, int i) { return i ? r.y : r.x; }
__device__ __forceinline__ uint32_t word(uint32_t r, int) { return r; }
__device__ __forceinline__ void set_word(uint2& r, int i, uint32_t w) { (i ? r.y : r.x) = w; }
__device__ __forceinline__ void set_word(uint32_t& r, int, uint32_t w) { r = w; }
__device__ __forceinline__ uint32_t bits16(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
__device__ __forceinline__ uint32_t bits16(__half v) { return __half_as_ushort(v); }
// Element e of the raw load, as float (little-endian: element 2i is the low half of word i).
template <typename T, class R> __device__ __forceinline__ float elem(R raw, int e) {
  const uint32_t w = word(raw, e >> 1);
  const uint16_t bits = (e & 1) ? (uint16_t)(w >> 16) : (uint16_t)(w & 0xFFFFu);
  if constexpr (std::is_same<T, __half>::value) return __half2float(__ushort_as_half(bits));
  else return __uint_as_float((uint32_t)bits << 16);  // bf16 is the top half of an fp32
}

// The transposing butterfly sum (see the header): t holds a lane's N partial sums; step O keeps the upper
// half in lanes with bit O set and the lower half elsewhere, each plus the partner's copy.  Afterwards
// lane L holds pair(L, i) for i < max(1, N / 32) (pair_of below); at N = 16 lanes L and L ^ 1 hold
// halves of the same pair, summed by the caller.
template <int N, int O = 16> __device__ __forceinline__ void transpose_sum(float* t, int lane) {
  if constexpr (N > 1 && O >= 1) {
    const bool up = lane & O;
#pragma unroll
    for (int i = 0; i < N / 2; ++i) {
      const float send = up ? t[i] : t[i + N / 2];
      const float keep = up ? t[i + N / 2] : t[i];
      t[i] = keep + __shfl_xor_sync(0xffffffffu, send, O);
    }
    transpose_sum<N / 2, O / 2>(t, lane);
  }
}

// RoPE of one interleaved pair: (x0 cos - x1 sin, x1 cos + x0 sin), each product rounded (no FMA), as model.py's
// apply_rope computes it in eager mode; the caller rounds the results to T.
__device__ __forceinline__ void rotate_pair(float& x0, float& x1, float c, float s) {
  const float y0 = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
  x1 = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s));
  x0 = y0;
}

template <typename T, int EPL, int RM>
__global__ void __launch_bounds__(kThreads) kv16_decode_attention_kernel(const AttnParams p) {
  constexpr int D = EPL * 32;
  using V = Raw<EPL>;
  const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int R = p.R;
  const int j0 = split * p.chunk, j1 = min(p.S, j0 + p.chunk);
  const size_t head = (size_t)b * p.H + h;
  // Column j of this head's K (V) is kh[32 j] (vh[32 j]) for this lane.
  const V* kh = reinterpret_cast<const V*>(static_cast<const T*>(p.k) + head * p.S * D) + lane;
  const V* vh = reinterpret_cast<const V*>(static_cast<const T*>(p.v) + head * p.S * D) + lane;
  const T* mrow = static_cast<const T*>(p.mask) + b * p.mask_sb;
  __shared__ int s_hi;
  if (threadIdx.x == 0) s_hi = -1;

  pdl_wait();  // q, this step's cache column and the mask come from the kernels just before

  // A turn's N = kUnroll x RM (column u, row r) pairs, pair = u * RM + r; after the transposing sum lane L
  // holds pair_of(L, i) for i < NV.  With kUnroll = 8 a lane's pairs share column u = L / 4, and the lanes of
  // one row are lane xor 4, 8 and 16 apart (at RM = 2 lanes L and L ^ 1 hold copies of the same pair).
  static_assert(kUnroll == 8, "the lane <-> (column, row) mapping below assumes 8 columns per turn");
  static_assert(RM == 2 || RM == 4 || RM == 8, "pair_of/lane_of cover 16, 32 and 64 pairs per turn (RM 1 is not)");
  constexpr int N = kUnroll * RM, NV = N >= 32 ? N / 32 : 1;
  auto pair_of = [&](int l, int i) { return N >= 32 ? l * NV + i : l >> 1; };
  auto lane_of = [&](int pr) { return N >= 32 ? pr / NV : 2 * pr; };  // the lane (value pr % NV) holding pair pr
  const int u_own = lane >> 2;

  // Loads of one turn: kUnroll columns c = j + 4u per warp, K row and V row, and the mask value of the
  // lane's own column u_own, addresses clamped to column `last` (so no branch stands between loads and
  // uses), columns past it weighing nothing.
  float mk;
  V kv[kUnroll], vv[kUnroll];
  auto load = [&](int j, int last, float& m_, V (&k_)[kUnroll], V (&v_)[kUnroll]) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = min(j + u * kWarps, last);
      k_[u] = kh[(size_t)c * 32];
      v_[u] = vh[(size_t)c * 32];
    }
    const int c = j + u_own * kWarps;
    m_ = c <= last ? to_float(mrow[min(c, last)]) : -INFINITY;  // the address clamped too: no load can stray
  };
  // 1. The first turn's loads, the scan of the chunk's mask for its last visible column and the q rows go
  // out together: one memory round trip before the math (the first turn's reads are wasted when the chunk
  // turns out to be all hidden).
  const int jf = j0 + warp;
  // kv16_decode_step_attention: this step's column cn gets k (rotated) and v from the CTA whose chunk holds it
  // (below); that CTA's first turn is loaded after the barriers when it would read cn, no other CTA reads cn.
  const int64_t cn64 = p.input_pos ? *p.input_pos : -1;
  if (p.input_pos && (cn64 < 0 || cn64 >= p.S)) __trap();  // as index_put's device assert: no silent stale cache
  const int cn = (int)cn64;
  const bool owner = cn >= j0 && cn < j1;
  const bool late = owner && cn < j0 + kWarps * kUnroll;  // the first turn's columns are j0 .. j0 + 31 (clamped)
  if (!late) load(jf, j1 - 1, mk, kv, vv);
  int hi = -1;
  for (int c = j0 + threadIdx.x; c < j1; c += kThreads)
    if (to_float(mrow[c]) != -INFINITY) hi = c;
  // RoPE of q (optional): the lane's EPL elements are EPL/2 interleaved pairs, pair i of the head at angle
  // lane * EPL/2 + i of row b (the same for all rows r); rotated in fp32 and rounded to T as model.py's
  // apply_rope does, then scaled.
  float rc[EPL / 2], rs[EPL / 2];
#pragma unroll
  for (int i = 0; i < EPL / 2; ++i) {
    rc[i] = p.rope_cos ? p.rope_cos[b * p.rope_cos_sb + lane * (EPL / 2) + i] : 1.f;
    rs[i] = p.rope_cos ? p.rope_sin[b * p.rope_sin_sb + lane * (EPL / 2) + i] : 0.f;
  }
  if (owner && warp < 2) {  // warp 0 stores k, warp 1 v; the barrier below orders the stores before any read
    const size_t off = (size_t)b * p.new_sb + (size_t)h * p.new_sh + lane * EPL;
    V raw = *reinterpret_cast<const V*>(static_cast<const T*>(warp ? p.v_new : p.k_new) + off);
    if (warp == 0) {
#pragma unroll
      for (int i = 0; i < EPL / 2; ++i) {
        float x0 = elem<T>(raw, 2 * i), x1 = elem<T>(raw, 2 * i + 1);
        rotate_pair(x0, x1, rc[i], rs[i]);
        set_word(raw, i, bits16(from_float<T>(x0)) | (bits16(from_float<T>(x1)) << 16));
      }
    }
    T* dst = const_cast<T*>(static_cast<const T*>(warp ? p.v : p.k)) + (head * p.S + cn) * D + lane * EPL;
    *reinterpret_cast<V*>(dst) = raw;
  }
  float q[RM][EPL];  // rows >= R are zero and never stored
#pragma unroll
  for (int r = 0; r < RM; ++r) {
    const int rr = min(r, R - 1);
    const V qv = *reinterpret_cast<const V*>(static_cast<const T*>(p.q) + b * p.q_sb + h * p.q_sh +
                                             rr * p.q_sr + lane * EPL);
#pragma unroll
    for (int i = 0; i < EPL / 2; ++i) {
      float x0 = elem<T>(qv, 2 * i), x1 = elem<T>(qv, 2 * i + 1);
      if (p.rope_cos) {  // CTA-uniform
        rotate_pair(x0, x1, rc[i], rs[i]);
        x0 = to_float(from_float<T>(x0));
        x1 = to_float(from_float<T>(x1));
      }
      q[r][2 * i] = r < R ? x0 * p.scale_log2 : 0.f;
      q[r][2 * i + 1] = r < R ? x1 * p.scale_log2 : 0.f;
    }
  }
  __syncthreads();  // s_hi initialised
  if (hi >= 0) atomicMax(&s_hi, hi);
  __syncthreads();
  hi = s_hi;  // columns past it are never read (decode: most of a young cache)
  if (late) load(jf, j1 - 1, mk, kv, vv);

  // m: every lane, every row; lsum: this lane's share of l for the rows of its pairs; o: the lane's elements.
  float m[RM], lsum[NV], o[RM][EPL];
#pragma unroll
  for (int r = 0; r < RM; ++r) {
    m[r] = -INFINITY;
#pragma unroll
    for (int e = 0; e < EPL; ++e) o[r][e] = 0.f;
  }
#pragma unroll
  for (int i = 0; i < NV; ++i) lsum[i] = 0.f;

  // 2. Turn by turn, the next turn's loads in flight while this one's math runs.
  for (int j = jf; j <= hi; j += kWarps * kUnroll) {
    float nmk;  // left unset on the last turn, whose copy below is then never used
    V nkv[kUnroll], nvv[kUnroll];
    if (j + kWarps * kUnroll <= hi) load(j + kWarps * kUnroll, hi, nmk, nkv, nvv);
    // a. This lane's D/32-element share of every pair's score, then the transposing sum.
    float t[N];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float kf[EPL];
#pragma unroll
      for (int e = 0; e < EPL; ++e) kf[e] = elem<T>(kv[u], e);
#pragma unroll
      for (int r = 0; r < RM; ++r) {
        float acc = 0.f;
#pragma unroll
        for (int e = 0; e < EPL; ++e) acc = fmaf(q[r][e], kf[e], acc);
        t[u * RM + r] = acc;
      }
    }
    transpose_sum<N>(t, lane);
    if constexpr (N < 32) t[0] += __shfl_xor_sync(0xffffffffu, t[0], 1);
    // b. The lane's pairs' scores (a finite mask as low as -3.4e38 must not overflow to -inf when scaled by
    // log2(e): clamp it first) and each row's maximum over the turn's columns.
    float sc[NV], mx[NV];
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      sc[i] = mk == -INFINITY ? -INFINITY : fmaf(fmaxf(mk, -1e37f), kLog2e, t[i]);
      mx[i] = sc[i];
#pragma unroll
      for (int off = 4; off < 32; off <<= 1) mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], off));
    }
    // c. New maxima for every row in every lane; the rescale a of the old sums; this lane's probabilities.
    float base[RM], a[RM];
#pragma unroll
    for (int r = 0; r < RM; ++r) {
      const float mn = fmaxf(m[r], __shfl_sync(0xffffffffu, mx[r % NV], lane_of(r)));
      base[r] = mn == -INFINITY ? 0.f : mn;  // nothing visible yet: keep 0 * ... = 0, not NaN
      a[r] = exp2f(m[r] - base[r]);
      m[r] = mn;
    }
    float pe[NV];
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int r_own = pair_of(lane, i) % RM;
      float b_own = 0.f, a_own = 0.f;  // base[r_own], a[r_own] without a run-time index into registers
#pragma unroll
      for (int r = 0; r < RM; ++r) b_own = r == r_own ? base[r] : b_own, a_own = r == r_own ? a[r] : a_own;
      pe[i] = exp2f(sc[i] - b_own);
      lsum[i] = fmaf(lsum[i], a_own, pe[i]);
    }
    // d. o = o * a + sum over the turn's columns of p * V, each p broadcast from the lane that holds it.
#pragma unroll
    for (int r = 0; r < RM; ++r)
#pragma unroll
      for (int e = 0; e < EPL; ++e) o[r][e] *= a[r];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float vf[EPL];
#pragma unroll
      for (int e = 0; e < EPL; ++e) vf[e] = elem<T>(vv[u], e);
#pragma unroll
      for (int r = 0; r < RM; ++r) {
        const int pr = u * RM + r;
        const float pv = __shfl_sync(0xffffffffu, pe[pr % NV], lane_of(pr));
#pragma unroll
        for (int e = 0; e < EPL; ++e) o[r][e] = fmaf(pv, vf[e], o[r][e]);
      }
    }
    mk = nmk;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) kv[u] = nkv[u], vv[u] = nvv[u];
  }
  // l per row: the lanes' shares summed over the lanes of that row (fixed order), then read from the lane
  // that holds the row's column-0 pair.
  float l[RM];
#pragma unroll
  for (int i = 0; i < NV; ++i)
#pragma unroll
    for (int off = 4; off < 32; off <<= 1) lsum[i] += __shfl_xor_sync(0xffffffffu, lsum[i], off);
#pragma unroll
  for (int r = 0; r < RM; ++r) l[r] = __shfl_sync(0xffffffffu, lsum[r % NV], lane_of(r));
  pdl_launch_dependents();  // all cache reads done: the next kernel may start its own prologue

  // 3. The four warps' (m, l, o) combined in warp order into this CTA's partial (M, L, O).
  __shared__ float s_m[kWarps][RM], s_l[kWarps][RM];
  __shared__ float s_o[kWarps][RM][D];
  __shared__ float s_M[RM], s_L[RM], s_O[RM][D];
#pragma unroll
  for (int r = 0; r < RM; ++r) {
    if (lane == 0) s_m[warp][r] = m[r], s_l[warp][r] = l[r];
#pragma unroll
    for (int e = 0; e < EPL; ++e) s_o[warp][r][lane * EPL + e] = o[r][e];
  }
  __syncthreads();
  T* y = static_cast<T*>(p.y) + head * R * D;  // (R, D) of this (b, h)
  const int RD = R * D;
  for (int i = threadIdx.x; i < RD; i += kThreads) {
    const int r = i / D, d = i % D;
    float M = -INFINITY, L = 0.f, O = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, s_m[w][r]);
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float c = s_l[w][r] == 0.f ? 0.f : exp2f(s_m[w][r] - M);
      L = fmaf(s_l[w][r], c, L);
      O = fmaf(s_o[w][r][d], c, O);
    }
    if (p.splits == 1) {
      y[i] = from_float<T>(O / L);
    } else {
      s_O[r][d] = O;
      if (d == 0) s_M[r] = M, s_L[r] = L;
    }
  }
  if (p.splits == 1) return;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900  // clusters: sm_90+ (the host runs one split below it)

  // 4. The splits of this (b, h) form one cluster: CTA k combines slice k of the R x D outputs from every
  // CTA's partial in distributed shared memory, in split order 0..splits-1 (no global workspace, no
  // counters, deterministic); the second barrier keeps each partial alive until all have read it.
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();
  const int per = (RD + p.splits - 1) / p.splits;
  const int i0 = split * per, i1 = min(RD, i0 + per);
  for (int i = i0 + threadIdx.x; i < i1; i += kThreads) {
    const int r = i / D, d = i % D;
    float M = -INFINITY;
    for (int k = 0; k < p.splits; ++k) M = fmaxf(M, *cluster.map_shared_rank(&s_M[r], k));
    float L = 0.f, O = 0.f;
    for (int k = 0; k < p.splits; ++k) {
      const float lk = *cluster.map_shared_rank(&s_L[r], k);
      const float c = lk == 0.f ? 0.f : exp2f(*cluster.map_shared_rank(&s_M[r], k) - M);
      L = fmaf(lk, c, L);
      O = fmaf(*cluster.map_shared_rank(&s_O[r][d], k), c, O);
    }
    y[i] = from_float<T>(O / L);
  }
  cluster.sync();
#else
  __trap();  // splits > 1 needs clusters: the host runs one split below sm_90 (ops.cpp decode_attention)
#endif
}

}  // namespace

cudaError_t launch_decode_attention(const AttnParams& p, bool fp16, int D, cudaStream_t stream, bool pdl) {
  // grid (splits, H, B) in clusters of (splits, 1, 1): the splits of one (b, h) (at most 8, a portable size).
  cudaLaunchAttribute attrs[2] = {};
  int n = 0;
  if (p.splits > 1) {
    attrs[n].id = cudaLaunchAttributeClusterDimension;
    attrs[n++].val.clusterDim = {(unsigned)p.splits, 1, 1};
  }
  if (pdl) {
    attrs[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(p.splits, p.H, p.B);
  cfg.blockDim = dim3(kThreads);
  cfg.stream = stream;
  cfg.attrs = attrs;
  cfg.numAttrs = n;
  // Rows per KV head rounded up to 2, 4 or 8 (the registers and shuffles the kernel spends per row).
  auto rows = [&](auto t, auto epl) {
    using T = typename decltype(t)::type;
    constexpr int EPL = decltype(epl)::value;
    if (p.R <= 2) return cudaLaunchKernelEx(&cfg, kv16_decode_attention_kernel<T, EPL, 2>, p);
    if (p.R <= 4) return cudaLaunchKernelEx(&cfg, kv16_decode_attention_kernel<T, EPL, 4>, p);
    return cudaLaunchKernelEx(&cfg, kv16_decode_attention_kernel<T, EPL, kAttnMaxRows>, p);
  };
  auto dims = [&](auto t) { return D == 64 ? rows(t, Int<2>{}) : rows(t, Int<4>{}); };
  return fp16 ? dims(Type<__half>{}) : dims(Type<__nv_bfloat16>{});
}

}  // namespace lowbit
