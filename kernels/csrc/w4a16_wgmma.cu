// lowbit int4-weight GEMM on Hopper's warpgroup tensor cores (path 5): y[M,N] = x[M,K] · W[N,K]^T in
// m-blocks of 16 to 128 rows, written for the M where the mma.sync kernels spend more time dequantizing and
// issuing instructions than reading weights (BENCHMARKS.md: 99 us at M = 32, 160 at 64 for Llama-3-8B's four
// linears, against a 28 us bandwidth bound).
//
// History (kernels/NOTES.md v11-v12): written 2026-12-05 without a GPU; its first runs were the streaming kernel
// (a routing bug in ops.cpp), then an illegal instruction that ptxas put into copy_stage_weights (v11e).  v12
// (2026-12-06) keeps every wgmma group inside its k-block iteration while the next k-block is dequantized, and
// adds 128-row m-blocks: on an H100, Llama-3-8B's four linears at M = 96 take 223 us (v11: 291; path 3: 242) and
// at M = 128 226 us (v11: 299; dequantize + cuBLAS: 373; cuBLAS bf16: 181).  v13 (2026-12-06): 40 % fewer
// instructions per k-block (NOTES.md v13).  v21 (2026-12-07): a k-tile pair's scales and zeros are loaded and
// broadcast once (335 instead of 360 issued instructions per k-block at 32 rows with zeros; NOTES.md v21).  v22
// (2026-12-07): the weights' and scales' copies by the copy engine (269 for the warps that do not issue them).  v23
// (2026-12-07): x through a tensor map too, no cp.async left (215 at every m-block size with zeros; on an H100
// 73 instead of 82 us at M = 32, 98 instead of 107 at 64; NOTES.md v22-v23).
// choose_path (csrc/ops.cpp) takes it for M = 17..64 on compute capability 9.0; from 65 rows path 6
// (w4a16_wgmma_ws.cu, a producer warp) is faster.
// LOWBIT_W4A16_PATH=5 or gemm_path(..., path=5) forces it at any M.
//
// Operands, x's swizzled shared-memory layout, dequantization and rounding: w4a16_wgmma.cuh (shared with path 6).
//
// A CTA owns 128 channels (2 n-tiles) like the fused mma kernel, whose stage layout (a 4-slot ring of 128-deep
// k-blocks), split-K plan and workspace it shares (ops.cpp), with 8 warps = 2 warpgroups: warpgroup g
// takes k-tiles 4g..4g+3 of every k-block (two k-partials, summed at the end in a fixed order).  Warp q
// of a warpgroup reads words 2(q%2), 2(q%2)+1 of n-tile q/2 (8 bytes per lane from shared memory) and
// issues two wgmma per k-tile, j = 0, 1: A rows of wgmma j from warp q are channels 32q + 16j + 0..15 of
// the CTA, so accumulator j of the warpgroup covers channels {32q + 16j + r}.
//
// Every byte of a stage arrives by the copy engine, issued by lane 0 of 4-5 warps: the weights and scales (zeros)
// as bulk copies (v22), x as two boxes of a 2-D tensor map whose 128-byte swizzle is the layout of
// w4a16_wgmma.cuh (v23; rows past M and k past K arrive as zeros).
//
// Per k-block, warp by warp: the 8 wgmma of the k-block (2 per k-tile) issue from A registers dequantized the
// iteration before, as one commit group; while the tensor core works, the warp dequantizes the next k-block
// (its 4 k-tiles x 2 words) into a second register set (an issuing lane first issues the copies 3 k-blocks
// ahead); then it waits for its group (main pipeline, below, for why a group never outlives its iteration).  The
// copies complete on the slot's mbarrier, whose wait makes them visible to the warp's shared-memory reads and to
// its wgmma.
//
// Accumulation fp32; the two warpgroups' partials are summed (g0 + g1) through shared memory, then y is written or,
// with split-K, fp32 partials and the last CTA's fixed-order sum (split_k_finish).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "launch.cuh"
#include "w4a16.h"
#include "w4a16_device.cuh"
#include "w4a16_wgmma.cuh"

namespace lowbit {
namespace {

constexpr int kWgThreads = 256;  // two warpgroups
constexpr int kAheadWg = kStagesWg - 2;  // copies issued this far ahead of the k-block dequantized (main pipeline)

template <int NR, bool HAS_Z>
struct WgSmem {
  static constexpr int kXBytes = NR * kMmaKBlock * 2;
  static constexpr int kStage = kWBytes + kXBytes + kSBytes + (HAS_Z ? kSBytes : 0);
  static constexpr int kPipe = kStagesWg * kStage;
  static constexpr int kRed = 2 * NR * kRedPitch * 4;  // both warpgroups' (NR x 128) fp32 partials
  // + 1 KB: the dynamic shared memory is re-based to a 1024-byte boundary (the swizzle atoms' alignment)
  static constexpr int kTotal = (kPipe > kRed ? kPipe : kRed) + 1024;
};

template <typename T, int NR, bool HAS_Z>
__global__ void __launch_bounds__(kWgThreads) w4a16_wgmma_kernel(const GemmParams p,
                                                                   const __grid_constant__ CUtensorMap x_map) {
#if LOWBIT_HAS_WGMMA
  using Tr = Traits<T>;
  using T2 = typename Tr::T2;
  using S = WgSmem<NR, HAS_Z>;
  constexpr int kNBlk = kMmaNBlock, kKBlk = kMmaKBlock;
  extern __shared__ __align__(128) uint8_t smem_raw[];
  uint8_t* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);  // swizzle atoms: 1024-aligned

  const int tid = threadIdx.x, lane = tid & 31;
  // The warp index as a broadcast, so that the compiler knows it is warp-uniform: the copy issue below then computes
  // its addresses in uniform registers (with tid >> 5 ptxas wrapped each bulk copy in a loop over distinct operands
  // that could run several times; now the loop ptxas still puts around each copy runs once).
  const int warp = __shfl_sync(0xffffffffu, tid >> 5, 0);
  const int wg = warp >> 2, q = warp & 3;      // warpgroup (k half of each k-block), warp in it
  const int tile = q >> 1, half = q & 1;       // the warp's n-tile in the CTA, and which word pair of it
  const int mb = blockIdx.x, nb = blockIdx.y, split = blockIdx.z;
  const int K = p.K, N = p.N, M = p.M, gsh = p.group_shift;  // group size 2^gsh (31: one group per channel)
  const int kb_begin = split * p.kb_per_split, nkb = split_k_blocks(p, split);
  const int row0 = mb * NR;
  auto stage_ptr = [&](int st) { return smem + st * S::kStage; };

  // The copies of k-block kb into ring slot st, all by the copy engine and counted on the slot's "full" mbarrier,
  // each issued by lane 0 of one warp: warp w < 2 n-tile w's 8 k-tiles (4 KB contiguous in global memory), warp 2
  // each group's scales for the CTA's 128 channels (256 bytes), warp 3 its zeros, warp 4 x's two halves through the
  // tensor map (NR rows x 64 k each, in the 128-byte swizzle wgmma reads; rows past M and k past K arrive as
  // zeros).  The other threads compute no address.  (Until v22 every thread issued 11-15 cp.async per k-block, and
  // ptxas recomputed their 64-bit addresses and predicates every k-block at the 128-register cap: ~100 of the 335
  // issued instructions per warp at 32 rows.  v17 had the copy engine too, issued by a rotating warp after "empty"
  // barriers instead of the CTA barrier, and lost: NOTES.md v17; the CTA barrier stays here.)
  __shared__ alignas(8) uint64_t full[kStagesWg];
  constexpr int kIssuers = HAS_Z ? 5 : 4;  // warps whose lane 0 arrives on "full" (with its bytes) every k-block
  constexpr int kXWarp = 4;
  const bool issuer_warp = warp < (HAS_Z ? 4 : 3) || warp == kXWarp;
  const int k_tiles = K >> 4, n_groups = gsh >= 31 ? 1 : K >> gsh, cols = min(kNBlk, N - nb * kNBlk);
  const int groups_per_kb = gsh >= 7 ? 1 : kKBlk >> gsh;
  auto load_stage = [&](int st, int kb) {  // lane 0 of an issuer warp
    uint8_t* base = stage_ptr(st);
    if (warp < 2) {
      // N % 128 == 64: n-tile 1 does not exist (what its slot holds reaches no stored output); the partial last
      // k-block (K % 128 == 64) has 4 k-tiles, and its missing ones dequantize to finite values that meet zero x.
      const uint32_t bytes = warp * 64 < cols ? min(8, k_tiles - kb * 8) * 512 : 0;
      mbar_arrive_expect_tx(&full[st], bytes);
      if (bytes)
        bulk_g2s(base + warp * 4096, w_kblock_src(p, nb, warp, k_tiles, kb), bytes, &full[st]);
    } else if (warp == kXWarp) {
      mbar_arrive_expect_tx(&full[st], NR * 256);
      x_kblock_g2s(base, &x_map, kb, row0, NR, &full[st]);
    } else {
      const int g = (kb * kKBlk) >> gsh, g_here = min(groups_per_kb, n_groups - g);
      uint8_t* dst = base + kWBytes + S::kXBytes + (warp - 2) * kSBytes;
      // Groups past K (the partial last k-block at group 32 or 64) get zero scales (and zeros), so its missing
      // k-tiles dequantize to exact zeros; stored before the arrival that releases them with the copies' bytes.
      // (With one group per k-block or per channel there are none: the missing k-tiles dequantize whatever the slot
      // holds to finite values, and x past K, which the tensor map fills with zeros, cancels them.)
      if (g_here < groups_per_kb) {
        for (int c = g_here * kNBlk * 2; c < groups_per_kb * kNBlk * 2; c += 16)
          *reinterpret_cast<uint4*>(dst + c) = uint4{};
        fence_proxy_async();
      }
      mbar_arrive_expect_tx(&full[st], g_here * cols * 2);
      const T* src = reinterpret_cast<const T*>(warp == 2 ? p.s : p.z) + (size_t)g * N + nb * kNBlk;
#pragma unroll
      for (int gi = 0; gi < kKBlk / 32; ++gi)  // up to 4 groups (of 32) per k-block, 1 from group size 128
        if (gi < g_here) bulk_g2s(dst + gi * kNBlk * 2, src + (size_t)gi * N, cols * 2, &full[st]);
    }
  };

  float acc[2][NR / 2];  // wgmma j = 0, 1; element 4i + 2v + u: channel 32q + 16j + lane/4 + 8v, row 8i + 2(lane%4) + u
#pragma unroll
  for (int j = 0; j < 2; ++j)
#pragma unroll
    for (int e = 0; e < NR / 2; ++e) acc[j][e] = 0.f;
  auto fence_accumulators = [&] {
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int e = 0; e < NR / 2; ++e) reg_fence(acc[j][e]);
  };
  using AFrags = uint32_t[4][2][4];  // the warp's A registers of one k-block: [k-tile kk][wgmma j][a0..a3]
  const T2 magic = HAS_Z ? Tr::magic() : Tr::magic_sym();
  constexpr int kReg[4] = {0, 2, 1, 3};  // nibble pair -> A register (w4a16_wgmma.cuh)

  // The warp's A fragments of the k-block in ring slot st: its 4 k-tiles (4 wg .. 4 wg + 3), 2 words each; per word
  // pair one shift, one lop3, one subtract and one multiply (fma with zeros).
  const int w_lane = ((tile * 8 + wg * 4) * 32 + lane) * 16 + half * 8;
  // the scales of sub-tiles 4 half .. 4 half + 3 of the n-tile (channels 8 j + lane/4) in a group's row
  const int s_lane = kWBytes + S::kXBytes + (tile * 64 + (lane >> 2) * 8 + half * 4) * 2;
  // The partial last k-block (K % 128 == 64) has no k-tiles for warpgroup 1; it dequantizes them all the same to
  // finite values (zeros where groups past K got zero scales, load_stage) that meet zero-filled x, so there is no
  // branch here, nor between the wgmma (a branch there makes ptxas serialize every wgmma of the kernel: C7520).
  auto dequantize = [&](int st, AFrags& a) {
    const uint8_t* base = stage_ptr(st);
    T2 s2[2][2], z2[2][2];  // [j][sub-tile 2w or 2w+1] of the k-tile pair being dequantized
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      // N % 128 == 64: the CTA's second n-tile does not exist and its slot was never filled; warps 2-3 still take
      // part in the warpgroup's wgmma, and what they read only reaches accumulator rows that are never stored.
      const uint2 wv = *reinterpret_cast<const uint2*>(base + w_lane + kk * 512);
      if (kk % 2 == 0) {
        // The group of k-tiles 4 wg + kk and + kk + 1: a group spans 32 k (two k-tiles) or more and k-blocks start
        // on a group boundary, so a k-tile pair shares one (0 from group size 128).  Loaded and broadcast once per
        // pair: per k-tile, that was 2 of its 3 shared loads and its 8 prmt (with zeros).
        const int soff = s_lane + ((((wg * 4 + kk) * 16) >> gsh) * kNBlk) * 2;
        const uint2 sv = *reinterpret_cast<const uint2*>(base + soff);
        uint2 zv = make_uint2(0, 0);
        if (HAS_Z) zv = *reinterpret_cast<const uint2*>(base + kSBytes + soff);
        const uint32_t svals[2] = {sv.x, sv.y}, zvals[2] = {zv.x, zv.y};
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          // sub-tile 2w (rows 0-7) and 2w+1 (rows 8-15): the low and high half of the word, broadcast by one prmt
          s2[j][0] = as_t2<T2>(__byte_perm(svals[j], 0, 0x1010));
          s2[j][1] = as_t2<T2>(__byte_perm(svals[j], 0, 0x3232));
          z2[j][0] = as_t2<T2>(__byte_perm(zvals[j], 0, 0x1010));
          z2[j][1] = as_t2<T2>(__byte_perm(zvals[j], 0, 0x3232));
        }
      }
      const uint32_t words[2] = {wv.x, wv.y};
#pragma unroll
      for (int j = 0; j < 2; ++j) {
#pragma unroll
        for (int pr = 0; pr < 4; ++pr) {
          const uint32_t v = and_or<0x000F000Fu, Tr::kMagic>(words[j] >> (4 * pr));  // 128+q exactly
          const T2 t = __hsub2(as_t2<T2>(v), magic);                                 // q (or q-8), exact
          a[kk][j][kReg[pr]] = HAS_Z ? as_u32(__hfma2(t, s2[j][pr >> 1], z2[j][pr >> 1]))  // one rounding
                                     : as_u32(__hmul2(t, s2[j][pr >> 1]));
        }
      }
    }
  };

  // The warpgroup's 8 wgmma of k-block kb (2 per k-tile), one commit group; no branch between them (a branch there
  // makes ptxas serialize every wgmma of the kernel: warning C7520).
  auto multiply = [&](int st, AFrags& a) {
    // The warpgroup's 4 k-tiles are 32 bytes apart in one half of the stage's x: their descriptors are one base's
    // plus offset / 16 in the low word (the 14-bit start-address field takes no carry: shared addresses stay under
    // 256 KB), rather than 4 descriptors built from scratch (8 fewer issued instructions per k-block at 32 rows).
    const uint64_t desc0 = kmajor_sw128_desc(smem_addr(stage_ptr(st) + kWBytes) + wg * (NR * 128));
    const uint32_t lo0 = (uint32_t)desc0, hi = (uint32_t)(desc0 >> 32);
    fence_accumulators();  // keep the compiler from moving accumulator accesses into the asynchronous window
    wgmma_fence();         // the A registers (and the accumulators) are ready for the tensor core
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const uint64_t desc = ((uint64_t)hi << 32) | (lo0 + kk * (32 >> 4));
      wgmma_rs<T, NR>(acc[0], a[kk][0], desc);
      wgmma_rs<T, NR>(acc[1], a[kk][1], desc);
    }
    wgmma_commit();
  };

  // ---- main pipeline ------------------------------------------------------------
  // Iteration i: the wgmma of k-block i are issued from the A registers dequantized in iteration i - 1; while
  // the tensor core works, the warp passes the barrier, its issuing lane (if any) issues the copies of k-block
  // i + 3, it waits for all of k-block i + 1's bytes (its slot's "full" barrier completes once per fill, so local
  // k-block j is phase j / 4) and dequantizes them into the other register set; then it waits for its wgmma.  Every
  // wgmma group ends in the iteration that issued it (ptxas serializes wgmma whose input registers other code
  // may redefine while a group is pending across a loop's back edge: warning C7513), and the slot refilled at
  // iteration i last held k-block i - 1, done before every warp's barrier of iteration i.  So S = 4 slots hold
  // k-blocks i (tensor core), i + 1 (dequantized), i + 2 and i + 3 (in flight).  (The first version waited for
  // the previous k-tile's group after every k-tile and dequantized between the waits: NOTES.md v12.)
  auto step = [&](int i, AFrags& cur, AFrags& nxt) {
    multiply(i % kStagesWg, cur);
    if (i + 1 < nkb) {
      __syncthreads();  // k-block i - 1's slot no longer read by anyone (its wgmma waited for, its dequantization done)
      const int ld = i + 1 + kAheadWg;
      if (ld < nkb && issuer_warp && lane == 0) load_stage(ld % kStagesWg, kb_begin + ld);
      mbar_wait(&full[(i + 1) % kStagesWg], ((i + 1) / kStagesWg) & 1);
      dequantize((i + 1) % kStagesWg, nxt);
    }
    wgmma_wait<0>();
    fence_accumulators();
  };
  if (tid == 0) {
    for (int s = 0; s < kStagesWg; ++s) mbar_init(&full[s], kIssuers);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  // The first stages' weights and scales are copied while the previous kernel in the stream may still run: they are
  // constants to the op (kernels/__init__.py, w4a16_gemm; the streaming kernels read theirs early too).  x only after
  // pdl_wait: that kernel may be the one writing it.
  if (issuer_warp && lane == 0 && warp != kXWarp)
    for (int s = 0; s <= kAheadWg && s < nkb; ++s) load_stage(s, kb_begin + s);
  pdl_wait();
  if (warp == kXWarp && lane == 0)
    for (int s = 0; s <= kAheadWg && s < nkb; ++s) load_stage(s, kb_begin + s);
  AFrags a0, a1;
  mbar_wait(&full[0], 0);  // nkb >= 1: ops.cpp never launches an empty split (else this wait would never complete)
  dequantize(0, a0);
  for (int i = 0; i < nkb; i += 2) {  // two iterations per trip: the register sets swap roles at compile time
    step(i, a0, a1);
    if (i + 1 < nkb) step(i + 1, a1, a0);
  }
  pdl_launch_dependents();
  __syncthreads();  // every warp's wgmma and shared reads are done: the ring is reused for the partial sums
  // ---- the two warpgroups' partials, summed in a fixed order; y or the split's workspace slice ----
  float* red = reinterpret_cast<float*>(smem);  // [warpgroup][row of the m-block][channel of the CTA]
#pragma unroll
  for (int j = 0; j < 2; ++j)
#pragma unroll
    for (int e = 0; e < NR / 2; ++e) {
      const int i = e >> 2, v = (e >> 1) & 1, u = e & 1;
      const int row = 8 * i + 2 * (lane & 3) + u, ch = 32 * q + 16 * j + (lane >> 2) + 8 * v;
      red[(wg * NR + row) * kRedPitch + ch] = acc[j][e];
    }
  __syncthreads();
  const int rows = min(NR, M - row0);
  for (int e = tid; e < rows * (kNBlk / 4); e += kWgThreads) {
    const int r = e / (kNBlk / 4), c4 = (e % (kNBlk / 4)) * 4;
    if (c4 >= cols) continue;
    const float4 p0 = *reinterpret_cast<const float4*>(red + r * kRedPitch + c4);
    const float4 p1 = *reinterpret_cast<const float4*>(red + (NR + r) * kRedPitch + c4);
    const float4 sum = make_float4(p0.x + p1.x, p0.y + p1.y, p0.z + p1.z, p0.w + p1.w);
    store4<T>(p, split, (size_t)(row0 + r) * N + nb * kNBlk + c4, sum);
  }
  if (p.k_splits == 1) return;
  split_k_finish<T, kWgThreads, kFinishWide>(p, tid, mb, nb, row0, rows);
#else
  __trap();  // built for another target: the host never launches it there (gemm_path checks the GPU)
#endif
}

// Calls f(Type<T>{}, Bool<HAS_Z>{}, Int<NR>{}) for NR = 16 * mt, mt in {1, 2, 4, 8}.
template <class F>
auto dispatch_wg(bool fp16, bool has_z, int mt, F&& f) {
  auto rows = [&](auto nr) {
    if (fp16) return has_z ? f(Type<__half>{}, Bool<true>{}, nr) : f(Type<__half>{}, Bool<false>{}, nr);
    return has_z ? f(Type<__nv_bfloat16>{}, Bool<true>{}, nr) : f(Type<__nv_bfloat16>{}, Bool<false>{}, nr);
  };
  switch (mt) {
    case 1: return rows(Int<16>{});
    case 2: return rows(Int<32>{});
    case 4: return rows(Int<64>{});
    default: return rows(Int<128>{});
  }
}

}  // namespace

int wgmma_occupancy(bool fp16, bool has_z, int mt) {
  static int cache[2][2][9] = {};  // by mt
  return cached(cache, fp16, has_z, mt, [&] {
    return dispatch_wg(fp16, has_z, mt, [](auto t, auto z, auto nr) {
      using T = typename decltype(t)::type;
      constexpr int NR = decltype(nr)::value;
      constexpr bool HZ = decltype(z)::value;
      return occupancy(w4a16_wgmma_kernel<T, NR, HZ>, kWgThreads, WgSmem<NR, HZ>::kTotal);
    });
  });
}

cudaError_t launch_wgmma(const GemmParams& p, bool fp16, bool has_z, int mt, int m_blocks, int n_blocks,
                         cudaStream_t stream, bool pdl) {
  return dispatch_wg(fp16, has_z, mt, [&](auto t, auto z, auto nr) {
    using T = typename decltype(t)::type;
    constexpr int NR = decltype(nr)::value;
    constexpr bool HZ = decltype(z)::value;
    auto kern = w4a16_wgmma_kernel<T, NR, HZ>;
    CUtensorMap x_map;  // boxes of the kernel's NR rows
    if (const cudaError_t e = encode_x_map(&x_map, p, fp16, NR); e != cudaSuccess) return e;
    cudaError_t attr = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, WgSmem<NR, HZ>::kTotal);
    if (attr != cudaSuccess) return attr;
    return launch(kern, dim3(m_blocks, n_blocks, p.k_splits), kWgThreads, WgSmem<NR, HZ>::kTotal, stream, pdl, p,
                  x_map);
  });
}

}  // namespace lowbit
