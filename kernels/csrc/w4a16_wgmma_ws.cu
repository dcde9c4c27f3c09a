// lowbit int4-weight GEMM on Hopper's warpgroup tensor cores with a producer warp (path 6): y[M,N] = x[M,K] · W[N,K]^T
// in m-blocks of 128 rows, for the M where path 5 (w4a16_wgmma.cu) spends its issue slots on copies and barriers.
//
// History (kernels/NOTES.md v14-v15): written 2026-12-06 without device time as "v15" of path 5; its first run on an
// H100 the same day was correct and, at 128-row m-blocks, 12-16 % faster than path 5 (Llama-3-8B's four linears:
// 142.0 vs 161.0 us at M = 128, 223.5 vs 261.9 at 256); at 16-32 rows slower (91.1 vs 82.5 us at M = 17) and at
// 48-64 even, so it became path 6 with 128-row m-blocks only, and path 5 keeps the smaller ones.  v21 (2026-12-07): a
// k-tile pair's scales and zeros loaded and broadcast once (265 instead of 296 issued instructions per consumer warp
// and k-block with zeros; NOTES.md v21).
// LOWBIT_W4A16_PATH=6 or gemm_path(..., path=6) forces it at any M.
//
// Operands, x's swizzled shared-memory layout, dequantization and rounding: w4a16_wgmma.cuh (shared with path 5).
//
// A CTA owns 128 channels (2 n-tiles) like the fused mma kernel, whose stage layout (4-slot ring of 128-deep
// k-blocks), split-K plan and workspace it shares (ops.cpp), with 8 consumer warps = 2 warpgroups and a producer
// warp: warpgroup g owns n-tile g and every k-tile of it.  Warp q of a warpgroup reads word q of each k-tile (4
// bytes per lane from shared memory) and the warpgroup issues one wgmma per k-tile: A rows from warp q are
// channels 64g + 16q + 0..15.  (Path 5's warpgroups split each k-block instead, each with accumulators for all
// 128 channels, summed at the end: twice the accumulator registers, too many for a ninth warp at 128 rows.)
//
// x arrives through a tensor map whose SWIZZLE_128B writes exactly the layout the wgmma descriptor reads (as in
// path 5 since its v23), zeros outside M and K.
//
// Per k-block, warp by warp: the 8 wgmma of the k-block (1 per k-tile) issue from A registers dequantized the
// iteration before, as one commit group; while the tensor core works, the warp waits for the next k-block's bytes
// and dequantizes it (8 k-tiles x 1 word) into a second register set; then it waits for its group (main pipeline,
// below, for why a group never outlives its iteration) and releases the slot to the producer.
//
// Accumulation fp32, staged through shared memory for coalesced rows, then y is written or, with split-K, fp32
// partials and the last CTA's fixed-order sum (split_k_finish).

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

constexpr int kWgThreads = 256;               // two warpgroups: the consumers
constexpr int kCtaThreads = kWgThreads + 32;  // and a producer warp, whose lane 0 issues every copy
constexpr int kWsRows = 128;                  // rows of x per m-block (wgmma's N)

template <bool HAS_Z>
struct WsSmem {
  static constexpr int kXBytes = kWsRows * kMmaKBlock * 2;
  static constexpr int kStage = kWBytes + kXBytes + kSBytes + (HAS_Z ? kSBytes : 0);
  static constexpr int kPipe = kStagesWg * kStage;
  static constexpr int kRed = kWsRows * kRedPitch * 4;  // the CTA's (128 x 128) fp32 results
  // + 1 KB: the dynamic shared memory is re-based to a 1024-byte boundary (the swizzle atoms' alignment)
  static constexpr int kTotal = (kPipe > kRed ? kPipe : kRed) + 1024;
};

#if LOWBIT_HAS_WGMMA
#endif  // LOWBIT_HAS_WGMMA

template <typename T, bool HAS_Z>
__global__ void __launch_bounds__(kCtaThreads) w4a16_wgmma_ws_kernel(const GemmParams p,
                                                                      const __grid_constant__ CUtensorMap x_map) {
#if LOWBIT_HAS_WGMMA
  using Tr = Traits<T>;
  using T2 = typename Tr::T2;
  using S = WsSmem<HAS_Z>;
  constexpr int NR = kWsRows, kNBlk = kMmaNBlock, kKBlk = kMmaKBlock;
  extern __shared__ __align__(128) uint8_t smem_raw[];
  uint8_t* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);  // swizzle atoms: 1024-aligned

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wg = warp >> 2, q = warp & 3;  // warpgroup (the CTA's n-tile it owns), warp in it (the word it reads)
  const int mb = blockIdx.x, nb = blockIdx.y, split = blockIdx.z;
  const int K = p.K, N = p.N, M = p.M, gsh = p.group_shift;  // group size 2^gsh (31: one group per channel)
  const int kb_begin = split * p.kb_per_split, nkb = split_k_blocks(p, split);
  const int row0 = mb * NR;
  auto stage_ptr = [&](int st) { return smem + st * S::kStage; };

  // The copies of k-block kb into ring slot st, all issued by lane 0 of the producer warp (warp 8) to the copy
  // engine: the weights of each n-tile (8 k-tiles, 4 KB contiguous in global memory) and each group's scales (and
  // zeros) for the CTA's channels (256 contiguous bytes) by bulk copies, x through the tensor map (the 128-byte
  // swizzle wgmma reads; rows past M and k past K arrive as zeros).  Groups past K in the partial last k-block get
  // zero scales, stored by the producer itself, so its missing k-tiles dequantize to exact zeros whatever their
  // weight slots hold; weight tiles that do not exist are not copied (any bits dequantize to finite values, which
  // meet zero x or reach no stored output).  (In path 5 lane 0 of 4-5 warps issues the copies, x's through the
  // same kind of tensor map, and the CTA meets at a barrier every k-block.)
  // mbarriers (w4a16_wgmma.cuh): per ring slot, "full" completes when the copy engine's bytes have landed, "empty"
  // when every consumer thread is done with the slot.  Every thread arrives on "empty" itself (256 arrivals): with
  // one lane per warp arriving after __syncwarp, compute-sanitizer's racecheck reported the copy engine's refill
  // racing the other lanes' reads (the ordering through the warp barrier is not one it tracks; NOTES.md v15); the
  // per-thread arrival cost 0-1.4 % in an A/B.
  __shared__ alignas(8) uint64_t full[kStagesWg], empty[kStagesWg];
  const int k_tiles = K >> 4, n_groups = gsh >= 31 ? 1 : K >> gsh, cols = min(kNBlk, N - nb * kNBlk);
  const int groups_per_kb = gsh >= 7 ? 1 : kKBlk >> gsh;
  auto load_stage = [&](int st, int kb) {
    uint8_t* base = stage_ptr(st);
    const int kts = min(8, k_tiles - kb * 8), g = (kb * kKBlk) >> gsh;
    const int n_tiles_here = cols > 64 ? 2 : 1, g_here = min(groups_per_kb, n_groups - g);
    // the zero scales first: the arrival below releases them to the consumers with the copies' bytes (and the
    // proxy fence orders them before the copy engine's later writes to the same bytes)
    if (g_here < groups_per_kb) {
      for (int z = 0; z < (HAS_Z ? 2 : 1); ++z)
        for (int gi = g_here; gi < groups_per_kb; ++gi)
          for (int c = 0; c < kNBlk * 2; c += 16)
            *reinterpret_cast<uint4*>(base + kWBytes + S::kXBytes + z * kSBytes + gi * kNBlk * 2 + c) = uint4{};
      fence_proxy_async();
    }
    mbar_arrive_expect_tx(&full[st], n_tiles_here * kts * 512 + g_here * cols * 2 * (HAS_Z ? 2 : 1) + NR * 256);
    for (int nt = 0; nt < n_tiles_here; ++nt)
      bulk_g2s(base + nt * 4096, w_kblock_src(p, nb, nt, k_tiles, kb), kts * 512, &full[st]);
    for (int z = 0; z < (HAS_Z ? 2 : 1); ++z) {
      const T* src = reinterpret_cast<const T*>(z ? p.z : p.s) + nb * kNBlk;
      for (int gi = 0; gi < g_here; ++gi)
        bulk_g2s(base + kWBytes + S::kXBytes + z * kSBytes + gi * kNBlk * 2, src + (size_t)(g + gi) * N, cols * 2,
                 &full[st]);
    }
    x_kblock_g2s(base, &x_map, kb, row0, NR, &full[st]);
  };

  float acc[NR / 2];  // element 4i + 2v + u: channel 64 wg + 16q + lane/4 + 8v, row 8i + 2(lane%4) + u
#pragma unroll
  for (int e = 0; e < NR / 2; ++e) acc[e] = 0.f;
  auto fence_accumulators = [&] {
#pragma unroll
    for (int e = 0; e < NR / 2; ++e) reg_fence(acc[e]);
  };
  using AFrags = uint32_t[8][4];  // the warp's A registers of one k-block: [k-tile][a0..a3]
  const T2 magic = HAS_Z ? Tr::magic() : Tr::magic_sym();
  constexpr int kReg[4] = {0, 2, 1, 3};  // nibble pair -> A register (w4a16_wgmma.cuh)

  // The warp's A fragments of the k-block in ring slot st: word q of n-tile wg in each of its 8 k-tiles; per word
  // pair one shift, one lop3, one subtract and one multiply (fma with zeros).
  const int w_lane = (wg * 8 * 32 + lane) * 16 + q * 4;
  // the scales of sub-tiles 2q, 2q + 1 of n-tile wg (channels 16q + lane/4 and 16q + 8 + lane/4) in a group's row
  const int s_lane = kWBytes + S::kXBytes + (wg * 64 + (lane >> 2) * 8 + 2 * q) * 2;
  // The partial last k-block (K % 128 == 64) has no k-tiles 4-7; they are dequantized all the same (from whatever
  // the slot's weights hold: finite values) with zero scales (and zeros) where groups end at K, or the channel's
  // own scale with one group per channel, and meet zero-filled x either way; so there is no branch here, nor
  // between the wgmma (a branch there makes ptxas serialize every wgmma of the kernel: warning C7520).
  auto dequantize = [&](int st, AFrags& a) {
    const uint8_t* base = stage_ptr(st);
    T2 s2[2], z2[2];  // sub-tile 2q, 2q + 1 of the k-tile pair being dequantized
#pragma unroll
    for (int kt = 0; kt < 8; ++kt) {
      // N % 128 == 64: the CTA's second n-tile does not exist and its slot was never filled; warpgroup 1 still
      // runs, and what it reads only reaches accumulator rows (channels) that are never stored.
      const uint32_t word = *reinterpret_cast<const uint32_t*>(base + w_lane + kt * 512);
      if (kt % 2 == 0) {
        // The group of k-tiles kt and kt + 1: a group spans 32 k (two k-tiles) or more and k-blocks start on a
        // group boundary, so a k-tile pair shares one (0 from group size 128); loaded and broadcast once per pair.
        const int soff = s_lane + ((((kt * 16) >> gsh) * kNBlk) * 2);
        const uint32_t sv = *reinterpret_cast<const uint32_t*>(base + soff);
        const uint32_t zv = HAS_Z ? *reinterpret_cast<const uint32_t*>(base + kSBytes + soff) : 0u;
        // sub-tile 2q (A rows 0-7) and 2q+1 (rows 8-15): the low and high half of the pair, broadcast by one prmt
        s2[0] = as_t2<T2>(__byte_perm(sv, 0, 0x1010));
        s2[1] = as_t2<T2>(__byte_perm(sv, 0, 0x3232));
        z2[0] = as_t2<T2>(__byte_perm(zv, 0, 0x1010));
        z2[1] = as_t2<T2>(__byte_perm(zv, 0, 0x3232));
      }
#pragma unroll
      for (int pr = 0; pr < 4; ++pr) {
        const uint32_t v = and_or<0x000F000Fu, Tr::kMagic>(word >> (4 * pr));  // 128+q exactly
        const T2 t = __hsub2(as_t2<T2>(v), magic);                             // q (or q-8), exact
        a[kt][kReg[pr]] = HAS_Z ? as_u32(__hfma2(t, s2[pr >> 1], z2[pr >> 1]))  // one rounding
                                : as_u32(__hmul2(t, s2[pr >> 1]));
      }
    }
  };

  // The warpgroup's 8 wgmma of a k-block (one per k-tile), one commit group; no branch between them (a branch
  // there makes ptxas serialize every wgmma of the kernel: warning C7520).
  auto multiply = [&](int st, AFrags& a) {
    const uint32_t xs = smem_addr(stage_ptr(st) + kWBytes);
    fence_accumulators();  // keep the compiler from moving accumulator accesses into the asynchronous window
    wgmma_fence();         // the A registers (and the accumulators) are ready for the tensor core
#pragma unroll
    for (int kt = 0; kt < 8; ++kt)
      wgmma_rs<T, NR>(acc, a[kt], kmajor_sw128_desc(xs + (kt >> 2) * (NR * 128) + (kt & 3) * 32));
    wgmma_commit();
  };

  // ---- main pipeline ------------------------------------------------------------
  // The producer refills a slot as soon as all 256 consumer threads have released it: up to 4 k-blocks in flight.  A
  // consumer warp's iteration i: the wgmma of k-block i are issued from the A registers dequantized in iteration
  // i - 1; while the tensor core works, the warp waits for k-block i + 1's bytes and dequantizes it into the other
  // register set; then it waits for its wgmma and releases slot i.  Every wgmma group ends in the iteration that
  // issued it (ptxas serializes wgmma whose input registers other code may redefine while a group is pending
  // across a loop's back edge: warning C7513).  No CTA-wide barrier in the loop: a warp waits only for bytes.
  auto step = [&](int i, AFrags& cur, AFrags& nxt) {
    multiply(i % kStagesWg, cur);
    if (i + 1 < nkb) {
      mbar_wait(&full[(i + 1) % kStagesWg], ((i + 1) / kStagesWg) & 1);
      dequantize((i + 1) % kStagesWg, nxt);
    }
    wgmma_wait<0>();
    fence_accumulators();
    mbar_arrive(&empty[i % kStagesWg]);  // this thread's reads of slot i are done
  };
  if (tid == 0) {
    for (int s = 0; s < kStagesWg; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], kWgThreads);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  pdl_wait();  // a stage copies x with the weights: nothing is read before the previous kernel ends
  const bool producer = warp == kWgThreads / 32;
  if (producer) {
    if (lane == 0)
      for (int ld = 0; ld < nkb; ++ld) {
        if (ld >= kStagesWg) mbar_wait(&empty[ld % kStagesWg], ((ld - kStagesWg) / kStagesWg) & 1);
        load_stage(ld % kStagesWg, kb_begin + ld);
      }
  } else {
    AFrags a0, a1;
    mbar_wait(&full[0], 0);
    dequantize(0, a0);
    for (int i = 0; i < nkb; i += 2) {  // two iterations per trip: the register sets swap roles at compile time
      step(i, a0, a1);
      if (i + 1 < nkb) step(i + 1, a1, a0);
    }
  }
  // The producer warp's idle lanes 1-31 get here at once, so each CTA lets the next kernel launch from its start
  // (not after its big reads, launch.cuh's rule; correct either way, that kernel waits for this one before reading
  // what it writes); a trigger after lane 0's last copy measured the same within 1 % (kernels/NOTES.md v16).
  pdl_launch_dependents();
  __syncthreads();  // every warp's wgmma and shared reads are done: the ring is reused for the partial sums
  // ---- y or the split's workspace slice, through shared memory for coalesced rows ----
  float* red = reinterpret_cast<float*>(smem);  // [row of the m-block][channel of the CTA]
  if (!producer) {
#pragma unroll
    for (int e = 0; e < NR / 2; ++e) {
      const int i = e >> 2, v = (e >> 1) & 1, u = e & 1;
      const int row = 8 * i + 2 * (lane & 3) + u, ch = 64 * wg + 16 * q + (lane >> 2) + 8 * v;
      red[row * kRedPitch + ch] = acc[e];
    }
  }
  __syncthreads();
  const int rows = min(NR, M - row0);  // and `cols` channels (above)
  for (int e = tid; e < rows * (kNBlk / 4); e += kCtaThreads) {
    const int r = e / (kNBlk / 4), c4 = (e % (kNBlk / 4)) * 4;
    if (c4 >= cols) continue;
    const float4 sum = *reinterpret_cast<const float4*>(red + r * kRedPitch + c4);
    store4<T>(p, split, (size_t)(row0 + r) * N + nb * kNBlk + c4, sum);
  }
  if (p.k_splits == 1) return;
  split_k_finish<T, kCtaThreads, kFinishWide>(p, tid, mb, nb, row0, rows);
#else
  __trap();  // built for another target: the host never launches it there (gemm_path checks the GPU)
#endif
}

// Calls f(Type<T>{}, Bool<HAS_Z>{}).
template <class F>
auto dispatch_ws(bool fp16, bool has_z, F&& f) {
  if (fp16) return has_z ? f(Type<__half>{}, Bool<true>{}) : f(Type<__half>{}, Bool<false>{});
  return has_z ? f(Type<__nv_bfloat16>{}, Bool<true>{}) : f(Type<__nv_bfloat16>{}, Bool<false>{});
}

}  // namespace

int wgmma_ws_occupancy(bool fp16, bool has_z) {
  static int cache[2][2][9] = {};  // the cache helper's shape (by m-tiles); only [8] is used
  return cached(cache, fp16, has_z, kWsRows / 16, [&] {
    return dispatch_ws(fp16, has_z, [](auto t, auto z) {
      using T = typename decltype(t)::type;
      constexpr bool HZ = decltype(z)::value;
      return occupancy(w4a16_wgmma_ws_kernel<T, HZ>, kCtaThreads, WsSmem<HZ>::kTotal);
    });
  });
}

cudaError_t launch_wgmma_ws(const GemmParams& p, bool fp16, bool has_z, int m_blocks, int n_blocks, cudaStream_t stream,
                            bool pdl) {
  return dispatch_ws(fp16, has_z, [&](auto t, auto z) {
    using T = typename decltype(t)::type;
    constexpr bool HZ = decltype(z)::value;
    CUtensorMap x_map;  // boxes of the kernel's 128 rows
    if (const cudaError_t e = encode_x_map(&x_map, p, fp16, kWsRows); e != cudaSuccess) return e;
    auto kern = w4a16_wgmma_ws_kernel<T, HZ>;
    const cudaError_t attr =
        cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, WsSmem<HZ>::kTotal);
    if (attr != cudaSuccess) return attr;
    return launch(kern, dim3(m_blocks, n_blocks, p.k_splits), kCtaThreads, WsSmem<HZ>::kTotal, stream, pdl, p, x_map);
  });
}

}  // namespace lowbit
