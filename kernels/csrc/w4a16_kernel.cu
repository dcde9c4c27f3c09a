// lowbit int4-weight / 16-bit-activation GEMM:  y[M,N] = x[M,K] · W[N,K]^T
//
//   W[n,k] = s[n,g]·q[n,k] + m[n,g]   (g = k / group_size, q in 0..15)
//   symmetric (no zeros tensor): m = -8·s, never loaded.
//
// One focused kernel file (layout, dequantization, pipeline, split-K reduction),
// plus a dequantize kernel used by the large-M (prefill) path.  ops.cpp holds the
// argument checks, the op registration and the path heuristic's caller.
//
// ---------------------------------------------------------------------------
// Packed weight layout (produced offline by kernels.reference.pack_w4)
// ---------------------------------------------------------------------------
// The matrix is cut into tiles of 64 output channels (n) x 16 reduction steps
// (k): exactly the B operands of eight mma.m16n8k16 instructions.  A tile is
// 512 bytes = 32 lanes x 16 bytes; lane l owns the 32 nibbles that its eight
// B fragments need, so one 16-byte load per lane per tile feeds the tensor core
// with no shuffles.  Tiles are stored n-tile major, k-tile minor, so a CTA that
// walks K for a fixed n-tile reads one contiguous stream.
//
// Inside lane l's four 32-bit words: word w holds n8 sub-tiles j = 2w, 2w+1.
// Nibble pair p (bits 4p..4p+3 = low half, bits 16+4p.. = high half) is
//   p=0: sub-tile 2w,   k = 2(l%4) + {0,1}      (mma register b0/b1)
//   p=1: sub-tile 2w,   k = 2(l%4) + 8 + {0,1}  (mma register b2/b3)
//   p=2,3: the same for sub-tile 2w+1
// with n = 64·tile + 8j + l/4.  So (word >> 4p) & 0x000F000F puts the two
// nibbles of one bf16x2/half2 B register into the low bits of each half.
//
// Scales (and zeros) are stored as [G][N] in the activation dtype, permuted
// inside each block of 64 columns: column 64t + 8i + j holds channel
// 64t + 8j + i.  Lane l then reads its eight per-sub-tile scales (i = l/4,
// j = 0..7) as one 16-byte vector.
//
// ---------------------------------------------------------------------------
// Dequantization (in registers, after the shared-memory load)
// ---------------------------------------------------------------------------
// bf16: OR-ing a nibble into the mantissa of 0x4300 (=128.0, ulp 1) gives the
// exact value 128+q; fp16 uses 0x6400 (=1024.0, ulp 1).  Subtracting the magic
// (or magic+8 in the symmetric case) is exact, then ONE fma with s and m (or
// one multiply by s) rounds once to the 16-bit weight.  We deliberately do not
// fold m - 128·s into a single 16-bit constant: that constant would be rounded
// and the error would be shared by every weight of the group.  The streaming
// kernel at M <= 16 does it differently (kPost there): no 16-bit weight at all,
// the scale and zero apply to fp32 sums, in fp32.
//
// ---------------------------------------------------------------------------
// CTA organisation
// ---------------------------------------------------------------------------
// 256 threads = 8 warps; a CTA owns 128 output channels (2 n-tiles) x 16·MT
// rows of x, and a contiguous range of 128-wide k-blocks (split-K).  Warp
// (wn, wk) = (w % 2, w / 2) computes n-tile wn over the k-tiles 2wk, 2wk+1 of
// every k-block, so all 8 warps share each staged x tile and each weight byte is
// read by exactly one warp.  The four k-partial accumulators of one n-tile are
// summed through shared memory in a fixed order at the end.
//
// Pipeline: STAGES-deep cp.async ring of (weights 8 KB, x 4·MT KB, scales,
// zeros); one __syncthreads per k-block.  All copies use the default L2 policy:
// an evict_first hint on the weight copies made ptxas (CUDA 13.0) emit an
// illegal instruction in this kernel (see copy_stage_weights, NOTES v11e).
//
// Parallelism at batch 1: N/128 CTAs are too few for 132 SMs (o_proj: 32), so
// K is split over gridDim.z CTAs.  Each writes fp32 partials to a workspace,
// then bumps a per-tile counter; the last CTA to arrive sums the partials in
// split order 0..S-1 (deterministic, independent of arrival order), writes y
// and resets the counter to 0 for the next launch.  One kernel per linear, no
// float atomics, no memset launches.
//
// Grid order: blockIdx.x = m-block (fastest), so CTAs that share a weight
// slice run together and the second m-block's weight reads hit L2.

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <type_traits>

#include "launch.cuh"
#include "w4a16.h"
#include "w4a16_device.cuh"

namespace lowbit {
namespace {

constexpr int kThreads = 256;
constexpr int kNBlk = kMmaNBlock;    // output channels per CTA
constexpr int kKBlk = kMmaKBlock;    // reduction depth per pipeline stage
constexpr int kStages = 4;           // cp.async ring depth

// ---- k-partial reduction and epilogue (both mma.sync GEMM kernels; split-K finish in w4a16_device.cuh) ----
// A CTA owns 128 output channels (2 n-tiles, warp wn) and four k-partials per
// n-tile (warp wk).  The partials are summed through shared memory in a fixed
// order, (w0 + w2) + (w1 + w3); then y is written (one split) or fp32 partials
// go to the workspace and the last CTA to arrive sums the splits in order
// 0..S-1, so the result does not depend on the order CTAs finish in.  `smem`
// must hold 2·2·MT·32·32 floats and no longer be in use by the main loop.  IN_FLIGHT: split_k_finish's.
template <typename T, int MT, int IN_FLIGHT>
__device__ __forceinline__ void reduce_and_store(float (&acc)[MT][8][4], uint8_t* smem, const GemmParams& p,
                                                 int tid, int lane, int wn, int wk, int mb, int nb, int split,
                                                 int row0, bool ntile_ok) {
  using Tr = Traits<T>;
  using T2 = typename Tr::T2;
  const int M = p.M, N = p.N;
  float* red = reinterpret_cast<float*>(smem);
  constexpr int kRegs = MT * 32;
  auto red_at = [&](int slot, int r) { return red + ((slot * 2 + wn) * kRegs + r) * 32 + lane; };
  if (wk >= 2) {
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) *red_at(wk - 2, (i * 8 + j) * 4 + r) = acc[i][j][r];
  }
  __syncthreads();
  if (wk < 2) {
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[i][j][r] += *red_at(wk, (i * 8 + j) * 4 + r);
  }
  __syncthreads();
  if (wk == 1) {
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) *red_at(0, (i * 8 + j) * 4 + r) = acc[i][j][r];
  }
  __syncthreads();

  // ---- epilogue -----------------------------------------------------------
  // C fragment: c0,c1 -> (row lane/4, cols 2(lane%4)+{0,1}); c2,c3 -> row + 8.
  const bool single = p.k_splits == 1;
  T* yg = reinterpret_cast<T*>(p.y);
  if (wk == 0 && ntile_ok) {
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        float c[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) c[r] = acc[i][j][r] + *red_at(0, (i * 8 + j) * 4 + r);
        const int col = nb * kNBlk + wn * 64 + j * 8 + (lane & 3) * 2;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = row0 + i * 16 + (lane >> 2) + h * 8;
          if (row >= M) continue;
          if (single) {
            *reinterpret_cast<T2*>(yg + (size_t)row * N + col) = Tr::from_floats(c[2 * h], c[2 * h + 1]);
          } else {
            *reinterpret_cast<float2*>(p.workspace + ((size_t)split * M + row) * N + col) =
                make_float2(c[2 * h], c[2 * h + 1]);
          }
        }
      }
  }
  if (single) return;
  split_k_finish<T, kThreads, IN_FLIGHT>(p, tid, mb, nb, row0, min(MT * 16, M - row0));
}

// ---- the GEMM kernel ------------------------------------------------------
// MT: number of m16 tiles per CTA (1, 2 or 4 -> 16, 32, 64 rows).
template <typename T, int MT, bool HAS_Z>
struct Smem {
  static constexpr int kXBytes = MT * 16 * kKBlk * 2;
  static constexpr int kStage = kWBytes + kXBytes + kSBytes + (HAS_Z ? kSBytes : 0);
  static constexpr int kPipe = kStages * kStage;
  // k-partial reduction buffer: 2 slots x 2 n-tiles x (MT*8 sub-tiles x 4 regs) x 32 lanes.
  static constexpr int kRed = 2 * 2 * MT * 32 * 32 * 4;
  static constexpr int kTotal = kPipe > kRed ? kPipe : kRed;
};

template <typename T, int MT, bool HAS_Z>
__global__ void __launch_bounds__(kThreads, MT <= 2 ? 2 : 1)
    w4a16_mma_kernel(GemmParams p) {
  using Tr = Traits<T>;
  using T2 = typename Tr::T2;
  using S = Smem<T, MT, HAS_Z>;
  extern __shared__ __align__(128) uint8_t smem[];

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int wn = warp & 1;   // n-tile inside the CTA
  const int wk = warp >> 1;  // k-tile pair inside each k-block
  const int mb = blockIdx.x, nb = blockIdx.y, split = blockIdx.z;
  const int K = p.K, N = p.N, M = p.M, gs = p.group_size;
  const int n_tiles = N >> 6;
  const int kb_begin = split * p.kb_per_split, nkb = split_k_blocks(p, split);
  const int row0 = mb * MT * 16;
  const bool ntile_ok = (nb * 2 + wn) < n_tiles;  // N % 128 == 64: last CTA has one n-tile

  const T* __restrict__ xg = reinterpret_cast<const T*>(p.x);
  auto stage_ptr = [&](int st) { return smem + st * S::kStage; };

  // Issue the copies of k-block kb into ring slot st.
  auto load_stage = [&](int st, int kb) {
    uint8_t* base = stage_ptr(st);
    copy_stage_weights<T, HAS_Z>(base, base + kWBytes + S::kXBytes, p, tid, nb, kb);
    // activations: 16·MT rows x 16 chunks; chunk index XOR-swizzled by row so
    // the 8 row addresses of every ldmatrix phase fall in distinct banks.
    uint8_t* xs = base + kWBytes;
#pragma unroll
    for (int i = 0; i < MT; ++i) {
      const int c = tid + i * kThreads;
      const int r = c >> 4, ch = c & 15;
      const int gr = row0 + r, gk = kb * kKBlk + ch * 8;
      const bool ok = gr < M && gk < K;
      const T* src = ok ? xg + (size_t)gr * K + gk : xg;
      cp_async16(xs + r * (kKBlk * 2) + ((ch ^ (r & 7)) << 4), src, ok);
    }
  };

  float acc[MT][8][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.f;

  const T2 magic = HAS_Z ? Tr::magic() : Tr::magic_sym();

  auto compute_stage = [&](int st, int kb) {
    const uint8_t* base = stage_ptr(st);
    const uint8_t* xs = base + kWBytes;
    const uint8_t* ss = xs + S::kXBytes;
    const int g0 = (kb * kKBlk) / gs;
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {
      const int kt = wk * 2 + kk;
      const int k = kb * kKBlk + kt * 16;
      if (k >= K) break;  // partial last k-block (K % 128 == 64); warp-uniform
      const int4 wv = *reinterpret_cast<const int4*>(base + ((wn * 8 + kt) * 32 + lane) * 16);
      const int gi = k / gs - g0;
      const int4 sv = *reinterpret_cast<const int4*>(ss + (gi * kNBlk + wn * 64 + (lane >> 2) * 8) * 2);
      int4 zv;
      if (HAS_Z) zv = *reinterpret_cast<const int4*>(ss + kSBytes + (gi * kNBlk + wn * 64 + (lane >> 2) * 8) * 2);
      uint32_t a[MT][4];
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        const int r = i * 16 + (lane & 15);
        const int ch = kt * 2 + (lane >> 4);
        ldmatrix_x4(a[i], xs + r * (kKBlk * 2) + ((ch ^ (r & 7)) << 4));
      }
      const uint32_t words[4] = {(uint32_t)wv.x, (uint32_t)wv.y, (uint32_t)wv.z, (uint32_t)wv.w};
      const uint32_t svals[4] = {(uint32_t)sv.x, (uint32_t)sv.y, (uint32_t)sv.z, (uint32_t)sv.w};
      uint32_t zvals[4];
      if (HAS_Z) {
        zvals[0] = zv.x; zvals[1] = zv.y; zvals[2] = zv.z; zvals[3] = zv.w;
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        // broadcast the scale of sub-tile j (element j of the 8 loaded) to both halves
        const uint32_t sh = (svals[j >> 1] >> ((j & 1) * 16)) & 0xFFFFu;
        const T2 s2 = as_t2<T2>(sh | (sh << 16));
        T2 z2;
        if (HAS_Z) {
          const uint32_t zh = (zvals[j >> 1] >> ((j & 1) * 16)) & 0xFFFFu;
          z2 = as_t2<T2>(zh | (zh << 16));
        }
        uint32_t b[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int pr = (j & 1) * 2 + h;
          const uint32_t v = ((words[j >> 1] >> (4 * pr)) & 0x000F000Fu) | Tr::kMagic;  // 128+q exactly
          const T2 t = __hsub2(as_t2<T2>(v), magic);                                   // q (or q-8), exact
          b[h] = HAS_Z ? as_u32(__hfma2(t, s2, z2)) : as_u32(__hmul2(t, s2));          // one rounding
        }
#pragma unroll
        for (int i = 0; i < MT; ++i) Tr::mma(acc[i][j], a[i], b[0], b[1]);
      }
    }
  };

  // ---- main pipeline ------------------------------------------------------
  pdl_wait();  // a stage copies x with the weights: nothing is read before the previous kernel ends
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nkb) load_stage(s, kb_begin + s);
    cp_async_commit();
  }
  for (int i = 0; i < nkb; ++i) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // stage i visible to all; slot (i-1)%S no longer read by anyone
    const int nxt = i + kStages - 1;
    if (nxt < nkb) load_stage(nxt % kStages, kb_begin + nxt);
    cp_async_commit();
    if (ntile_ok) compute_stage(i % kStages, kb_begin + i);
  }
  pdl_launch_dependents();
  cp_async_wait<0>();
  __syncthreads();

  // every warp is done with the pipeline's shared memory: reuse it for the reduction
  reduce_and_store<T, MT, kFinishWide>(acc, smem, p, tid, lane, wn, wk, mb, nb, split, row0, ntile_ok);
}

// ---- the streaming GEMM kernel (path 2) -------------------------------------
// Same packed layout, dequantisation, CTA shape (128 channels, warps 2(n) x
// 4(k)) and reduction as the kernel above; different weight transport.  The
// kernel above is bound by instruction issue at M <= 16 (NOTES.md, v1: ~300
// issued instructions per warp per 512-byte weight tile, against ~160 that
// 3 TB/s allows on 132 SMs): every 128-deep k-block costs a __syncthreads,
// fresh copy addresses and integer divisions by the group size.  Here:
//  * The CTA copies its x rows (its whole K range) and the scales/zeros of
//    that range into shared memory ONCE.  After one __syncthreads the warps
//    run without synchronising until the k-partial reduction.
//  * Each warp owns a contiguous run of `kt_per_warp` k-tiles of one n-tile
//    and streams it straight from global memory into a ring of D = 4 tiles
//    in registers (ld.global.nc, L1 no-allocate, L2 evict-first), each load
//    issued D tiles before its use, with no shared-memory round trip and no
//    cp.async bookkeeping.  (In the SASS the ring does not pipeline: see path
//    3, the shared-memory ring, below.  D was 8 at MT=1 until the scaled-sum
//    accumulators of v5 took those registers; the depth made no difference
//    to the times: 64.3 us at D=8 before v5, ~61 at D=4 after, NOTES.md v5.)
//  * The loop is unrolled in steps of 4 k-tiles (128 bytes of an x row = one
//    period of the XOR swizzle), so the four ldmatrix offsets are per-lane
//    constants plus an immediate.  The group index is a shift (group sizes
//    are powers of two, or one group per channel), and scales/zeros are
//    re-read from shared memory and broadcast with one prmt each only when a
//    tile starts a group.
//  * At MT=1 only the rows that exist (min(M, 16)) are staged; ldmatrix lanes
//    of the missing rows read the last real row instead (mma rows are
//    independent, and those accumulator rows are never stored), so a batch-1
//    call needs 128 bytes of shared memory per k-tile, not 16 x that.
// Per tile at MT=1 that leaves 16 x (shift, lop3) + 9 mma + 1 ldmatrix + 1
// load + the fold (kPost below): ~60 issued instructions per warp (~89 with a
// subtract and a scale per weight pair, as at MT >= 2).
__device__ __forceinline__ int4 ld_weights(const int4* ptr, uint64_t policy) {
  int4 v;
  asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.s32 {%0,%1,%2,%3}, [%4], %5;\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(ptr), "l"(policy));
  return v;
}

constexpr int kStreamDepth = 4;  // path 2's register ring, in tiles

// Path 3's weight transport. ptxas puts all D register loads of path 2 on ONE scoreboard and, since
// global loads may complete out of order, can only wait for all of them: the SASS of path 2 waits
// for every outstanding weight load at the top of each ring turn, right after issuing the last
// refill, so each turn of D tiles pays a whole memory latency (H200: ~3 us per turn fits all four
// Llama linears, NOTES.md v3). cp.async groups complete in order and `wait_group N` waits for the
// oldest only, so a ring in shared memory keeps R-1 tiles in flight through every tile.  Each lane
// copies and later reads back only its own 16 bytes of a tile, so no barrier is needed: only the
// wait, with a memory clobber so the compiler cannot hoist the read above it.
template <int N> __device__ __forceinline__ void cp_async_wait_own() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ int4 lds128(const uint8_t* ptr) {
  int4 v;
  asm volatile("ld.shared.v4.s32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(smem_addr(ptr))
               : "memory");
  return v;
}

// SMEM_RING: false = path 2 (ring of D tiles in registers), true = path 3 (ring of R tiles in
// shared memory, at p.ring_off, R = stream_ring_tiles(MT) per warp, filled by per-lane cp.async).
// SWAP (path 4, M <= 8, with MT = 1 and the register ring): the weights are the mma's A operand and x
// its B operand, y^T = W x^T.  A 16x16 A fragment of 16 channels is two of the B fragments this layout
// stores for 8 channels (sub-tiles 2i and 2i+1 sit in one packed word, see the layout above), so the
// packed weights serve unchanged, and x's n8 side holds up to 8 rows.  Per 64-channel tile that is 4 mma
// instead of 8 (x's m16 side carried 15 empty rows at M = 1), and half the accumulators.
template <typename T, int MT, bool HAS_Z, bool SMEM_RING, bool SWAP>
__global__ void __launch_bounds__(kThreads, MT <= 2 ? 2 : 1)
    w4a16_stream_kernel(GemmParams p) {
  static_assert(!SWAP || (MT == 1 && !SMEM_RING), "swapped operands: one m-tile, register ring");
  using Tr = Traits<T>;
  using T2 = typename Tr::T2;
  constexpr int D = kStreamDepth;
  constexpr int R = stream_ring_tiles(MT);
  static_assert(R % 4 == 0 && (R & (R - 1)) == 0, "ring slots are taken modulo R in steps of 4");
  extern __shared__ __align__(128) uint8_t smem[];

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int wn = warp & 1;   // n-tile inside the CTA
  const int wk = warp >> 1;  // which quarter of the CTA's k-tiles
  const int mb = blockIdx.x, nb = blockIdx.y, split = blockIdx.z;
  const int M = p.M, N = p.N, K = p.K;
  const int k_tiles = K >> 4, n_tiles = N >> 6;
  const int tw = p.kt_per_warp;            // multiple of 4 (host)
  const int cta_kt0 = split * 4 * tw;      // the CTA's first k-tile
  const int kx0 = cta_kt0 * 16;            // ... and first k
  const int row_bytes = tw * 4 * 16 * 2;   // one staged x row: 4·tw k-tiles of 16 elements
  const int row0 = mb * MT * 16;
  const int rows = MT == 1 ? min(M, 16) : MT * 16;  // staged x rows
  const int gt = nb * 2 + wn;              // this warp's global n-tile
  const bool ntile_ok = gt < n_tiles;      // N % 128 == 64: the last CTA has one n-tile
  const int wkt0 = wk * tw;                // this warp's first k-tile, CTA-local
  const int ntiles = ntile_ok ? max(0, min(tw, k_tiles - cta_kt0 - wkt0)) : 0;  // warp-uniform

  const uint64_t evict_first = evict_first_policy();

  // 1. path 2: the first D weight tiles of this warp's run, in flight while the previous kernel finishes
  //    (PDL) and x is staged
  const int4* wp = reinterpret_cast<const int4*>(p.w) + ((size_t)gt * k_tiles + cta_kt0 + wkt0) * 32 + lane;
  int4 wbuf[SMEM_RING ? 1 : D];
  if constexpr (!SMEM_RING) {
#pragma unroll
    for (int d = 0; d < D; ++d)
      if (d < ntiles) wbuf[d] = ld_weights(wp + d * 32, evict_first);
  }

  // 2. the scales/zeros of the CTA's groups, then (after pdl_wait) its x rows, once, as one cp.async
  //    group; x swizzled: 16-byte chunk c of row r sits at chunk c ^ (r & 7)
  const int gshift = p.group_shift;
  const int g0 = kx0 >> gshift;
  uint8_t* ss = smem + p.s_off;
  uint8_t* zs = smem + p.z_off;
  for (int c = tid; c < p.groups_per_cta * 16; c += kThreads) {  // 16 chunks = 128 channels per group
    const int gi = c >> 4, col = nb * kNBlk + (c & 15) * 8;
    const bool ok = g0 + gi < p.groups && col < N;
    const size_t off = ok ? (size_t)(g0 + gi) * N + col : 0;
    cp_async16(ss + c * 16, reinterpret_cast<const T*>(p.s) + off, ok);
    if (HAS_Z) cp_async16(zs + c * 16, reinterpret_cast<const T*>(p.z) + off, ok);
  }
  pdl_wait();
  const T* xg = reinterpret_cast<const T*>(p.x);
#pragma unroll
  for (int rr = 0; rr < 2 * MT; ++rr) {  // 16·MT rows over 8 warps
    const int r = warp * 2 * MT + rr;
    if (r >= rows) break;                // warp-uniform
    const int gr = row0 + r;
    uint8_t* dst = smem + r * row_bytes;
    for (int ch = lane; ch < row_bytes / 16; ch += 32) {
      const int gk = kx0 + ch * 8;
      const bool ok = gr < M && gk < K;  // K % 64 == 0: a chunk is wholly in or out
      cp_async16(dst + ((ch ^ (r & 7)) << 4), ok ? xg + (size_t)gr * K + gk : xg, ok);
    }
  }
  cp_async_commit();

  // 3. path 3: the first R weight tiles, one cp.async group per tile (committed even when empty, so
  //    that group i is always tile i - 1: the x group above is group 0)
  uint8_t* ring = smem + p.ring_off + warp * (R * 512) + lane * 16;  // this lane's 16 bytes of slot 0
  if constexpr (SMEM_RING) {
#pragma unroll
    for (int d = 0; d < R; ++d) {
      if (d < ntiles) cp_async16_evict_first(ring + d * 512, wp + d * 32, evict_first);
      cp_async_commit();
    }
  }

  float acc[MT][8][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.f;

  // ldmatrix.x4 of m-tile i at CTA-local k-tile kt: lane reads row i·16 + (lane & 15), chunk
  // 2·kt + (lane >> 4).  wkt0 and every unrolled step start at kt ≡ 0 (mod 4), where the chunk's
  // low three bits are 2·(kt % 4) + (lane >> 4): four per-lane offsets cover every tile.
  // SWAP: ldmatrix.x2 of x as the B operand, lanes 0-7 give rows 0-7 at k 0..7 of the tile, lanes 8-15
  // the same rows at k 8..15 (lanes 16-31 compute addresses that .x2 ignores).
  const int ar = SWAP ? min(lane & 7, rows - 1) : MT == 1 ? min(lane & 15, rows - 1) : (lane & 15);
  const int a_half = SWAP ? (lane >> 3) & 1 : lane >> 4;
  const uint32_t a_base = smem_addr(smem) + ar * row_bytes + wkt0 * 32;
  uint32_t a_off[4];
#pragma unroll
  for (int q = 0; q < 4; ++q) a_off[q] = ((2 * q + a_half) ^ (ar & 7)) << 4;

  const T2 magic = HAS_Z ? Tr::magic() : Tr::magic_sym();
  const uint32_t gmask = (1u << gshift) - 1;
  const int sv_off = (wn * 8 + (lane >> 2)) * 16;  // this lane's eight permuted scales in a group row
  T2 s2[8], z2[8];
  // kPost (MT = 1): the tensor core takes the exact integers 16+q (a nibble moved into the top four
  // mantissa bits of 16.0: one shift and one lop3 per pair, where 128+q needs a subtract and the
  // scale one more instruction) and the group's scale is applied to fp32 partial sums, not to every
  // weight.  Per group and output channel, with A = sum_k x_k (16+q_k) (8 mma per tile into `ga`)
  // and X = sum_k x_k (one more mma per tile with B = 1, into `gx`):
  //   sym:   sum_k x_k s (q-8)   = s (A - 24 X)
  //   zeros: sum_k x_k (s q + z) = s A + (z - 16 s) X
  // 24 of the ~89 issued instructions per tile go (ncu, H200: ~0.5 issued per cycle per scheduler
  // at 16 warps per SM; NOTES.md v5); the fold costs ~2 FFMA per accumulator per group (half when
  // M <= 8: rows 8..15 are never stored).  Precision: the tensor core adds in fp32 but truncates
  // the aligned terms, and A - 24 X cancels: 128+q (c = 128) failed the per-channel tests (K = 4096
  // in one sum; 1 element in 1e5 off by 10x the bf16 tolerance), 16+q keeps the cancellation ~5x
  // and a fold every <= 128 k (8 mma) bounds the chain.  At MT >= 2 the second accumulator set
  // would not fit two CTAs per SM, and the dequantisation is shared by MT m-tiles anyway: those
  // keep scaling the weights (s2, z2) before the mma.
  constexpr bool kPost = MT == 1;
  const uint32_t fmask = min(gmask, 127u);  // fold at every group start and at least every 128 k
  float ga[8][4], gx[4];  // unused (and allocated no registers) unless kPost
  int fold_ofs = 0;  // the current group's scale row (byte offset in ss/zs) + this lane's 32 bytes
  const int fv_off = wn * 128 + (lane & 3) * 32;  // channels 8j + 2(lane%4) + h sit at 16h + 2j
  // acc += this group's scaled sums; rows lane/4 (r = 0, 1) and, when staged, lane/4 + 8 (r = 2, 3).
  auto fold = [&](auto rows_c) {
    constexpr int RN = decltype(rows_c)::value;
    const int4 sa = *reinterpret_cast<const int4*>(ss + fold_ofs);
    const int4 sb = *reinterpret_cast<const int4*>(ss + fold_ofs + 16);
    const uint32_t sw[2][4] = {{(uint32_t)sa.x, (uint32_t)sa.y, (uint32_t)sa.z, (uint32_t)sa.w},
                               {(uint32_t)sb.x, (uint32_t)sb.y, (uint32_t)sb.z, (uint32_t)sb.w}};
    uint32_t zw[2][4] = {};
    if (HAS_Z) {
      const int4 za = *reinterpret_cast<const int4*>(zs + fold_ofs);
      const int4 zb = *reinterpret_cast<const int4*>(zs + fold_ofs + 16);
      const uint32_t v[2][4] = {{(uint32_t)za.x, (uint32_t)za.y, (uint32_t)za.z, (uint32_t)za.w},
                                {(uint32_t)zb.x, (uint32_t)zb.y, (uint32_t)zb.z, (uint32_t)zb.w}};
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int w = 0; w < 4; ++w) zw[h][w] = v[h][w];
    }
    float xs[RN];  // sym: -24 X, added before the one fma below
#pragma unroll
    for (int r = 0; r < RN; ++r) xs[r] = HAS_Z ? gx[r] : -24.f * gx[r];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const T2 sp = as_t2<T2>(sw[h][j >> 1]);
        const float sc = (j & 1) ? __high2float(sp) : __low2float(sp);
        float zc = 0.f;
        if (HAS_Z) {
          const T2 zp = as_t2<T2>(zw[h][j >> 1]);
          zc = fmaf(-16.f, sc, (j & 1) ? __high2float(zp) : __low2float(zp));  // z - 16 s
        }
#pragma unroll
        for (int r = h; r < RN; r += 2) {
          if (HAS_Z) {
            acc[0][j][r] = fmaf(zc, xs[r], fmaf(sc, ga[j][r], acc[0][j][r]));
          } else {
            acc[0][j][r] = fmaf(sc, ga[j][r] + xs[r], acc[0][j][r]);
          }
        }
      }
    }
  };
  // SWAP: the accumulators are C = W x^T fragments, kept in acc[0][i][r] for i < 4: channel 16i + lane/4
  // (+8 for r = 2, 3: sub-tile 2i + r/2), x row 2(lane%4) + r%2; the lane's eight scales (channels
  // 8j + lane/4) are one 16-byte vector, as at MT >= 2 (fold_ofs then includes sv_off).
  auto fold_swap = [&] {
    const int4 sv = *reinterpret_cast<const int4*>(ss + fold_ofs);
    const uint32_t sw[4] = {(uint32_t)sv.x, (uint32_t)sv.y, (uint32_t)sv.z, (uint32_t)sv.w};
    uint32_t zw[4] = {};
    if (HAS_Z) {
      const int4 zv = *reinterpret_cast<const int4*>(zs + fold_ofs);
      zw[0] = zv.x; zw[1] = zv.y; zw[2] = zv.z; zw[3] = zv.w;
    }
    const float xs[2] = {HAS_Z ? gx[0] : -24.f * gx[0], HAS_Z ? gx[1] : -24.f * gx[1]};
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const T2 sp = as_t2<T2>(sw[j >> 1]);
      const float sc = (j & 1) ? __high2float(sp) : __low2float(sp);
      float zc = 0.f;
      if (HAS_Z) {
        const T2 zp = as_t2<T2>(zw[j >> 1]);
        zc = fmaf(-16.f, sc, (j & 1) ? __high2float(zp) : __low2float(zp));  // z - 16 s
      }
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        float& a = acc[0][j >> 1][(j & 1) * 2 + c];
        const float g = ga[j >> 1][(j & 1) * 2 + c];
        a = HAS_Z ? fmaf(zc, xs[c], fmaf(sc, g, a)) : fmaf(sc, g + xs[c], a);
      }
    }
  };
  auto fold_rows = [&] {  // warp-uniform: rows 8..15 exist only when M > 8
    if constexpr (SWAP) {
      fold_swap();
    } else {
      if (rows > 8) fold(std::integral_constant<int, 4>{}); else fold(std::integral_constant<int, 2>{});
    }
  };

  if constexpr (SMEM_RING) {
    cp_async_wait_own<R>();  // the x and scale group; the R weight groups may still be in flight
  } else {
    cp_async_wait<0>();
  }
  __syncthreads();

  // Tile t0 + d (d is a compile-time constant at every call): path 2 takes it from register slot d;
  // path 3 from shared slot (t0 + d) mod R once its group has landed (t0 is a multiple of 4).
  auto tile = [&](const int d, const int t0) {
    const int t = t0 + d;
    const int slot = ((t0 & (R - 1)) + d) * 512;
    int4 wv;
    if constexpr (SMEM_RING) {
      cp_async_wait_own<R - 1>();  // groups are tiles in order: at most R-1 younger than tile t pending
      wv = lds128(ring + slot);
    } else {
      wv = wbuf[d];
    }
    const uint32_t kl = (uint32_t)(wkt0 + t) << 4;  // CTA-local k of this tile
    // Groups span an even number of tiles and t0, wkt0 are multiples of 4, so only even d can start
    // one; skipping odd d saves the (predicated, hence always issued) check on half the tiles.
    const bool gstart = (d & 1) == 0 && (t == 0 || (kl & (kPost ? fmask : gmask)) == 0);  // warp-uniform
    if (kPost && gstart) {  // fold the finished group, if any, then start this one
      if (t > 0) fold_rows();
      fold_ofs = (int)(kl >> gshift) * (kNBlk * 2) + (SWAP ? sv_off : fv_off);
    }
    if (!kPost && gstart) {  // a new group: broadcast its scales (and zeros)
      const int gofs = (int)(kl >> gshift) * (kNBlk * 2) + sv_off;
      const int4 sv = *reinterpret_cast<const int4*>(ss + gofs);
      const uint32_t sw[4] = {(uint32_t)sv.x, (uint32_t)sv.y, (uint32_t)sv.z, (uint32_t)sv.w};
#pragma unroll
      for (int j = 0; j < 8; ++j) s2[j] = as_t2<T2>(__byte_perm(sw[j >> 1], 0, (j & 1) ? 0x3232 : 0x1010));
      if (HAS_Z) {
        const int4 zv = *reinterpret_cast<const int4*>(zs + gofs);
        const uint32_t zw[4] = {(uint32_t)zv.x, (uint32_t)zv.y, (uint32_t)zv.z, (uint32_t)zv.w};
#pragma unroll
        for (int j = 0; j < 8; ++j) z2[j] = as_t2<T2>(__byte_perm(zw[j >> 1], 0, (j & 1) ? 0x3232 : 0x1010));
      }
    }
    uint32_t a[MT][4];
    const uint32_t aa = a_base + (t0 + (d & ~3)) * 32 + a_off[d & 3];
    if constexpr (SWAP) {
      ldmatrix_x2(a[0], aa);  // x as the B fragment (rows = n, k 0..7 and 8..15)
    } else {
#pragma unroll
      for (int i = 0; i < MT; ++i) ldmatrix_x4(a[i], aa + i * 16 * row_bytes);
    }
    const uint32_t words[4] = {(uint32_t)wv.x, (uint32_t)wv.y, (uint32_t)wv.z, (uint32_t)wv.w};
    if constexpr (kPost) {
      uint32_t b[8][2];  // 16+q exactly
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int sh = Tr::kTop - 4 * ((j & 1) * 2 + h);  // nibble pair (j & 1)·2 + h to the top bits
          const uint32_t w = words[j >> 1];
          b[j][h] = and_or<Tr::kTopMask, Tr::kMagic16>(sh >= 0 ? w << sh : w >> -sh);
        }
      if constexpr (SWAP) {  // A = sub-tiles 2i and 2i+1 of the weights, B = x; X from A = ones
        const uint32_t ones[4] = {Tr::kOne2, Tr::kOne2, Tr::kOne2, Tr::kOne2};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const uint32_t wa[4] = {b[2 * i][0], b[2 * i + 1][0], b[2 * i][1], b[2 * i + 1][1]};
          if (gstart) Tr::mma_zc(ga[i], wa, a[0][0], a[0][1]); else Tr::mma(ga[i], wa, a[0][0], a[0][1]);
        }
        if (gstart) Tr::mma_zc(gx, ones, a[0][0], a[0][1]); else Tr::mma(gx, ones, a[0][0], a[0][1]);
      } else if (gstart) {  // a group's first tile starts its sums from zero
#pragma unroll
        for (int j = 0; j < 8; ++j) Tr::mma_zc(ga[j], a[0], b[j][0], b[j][1]);
        Tr::mma_zc(gx, a[0], Tr::kOne2, Tr::kOne2);
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) Tr::mma(ga[j], a[0], b[j][0], b[j][1]);
        Tr::mma(gx, a[0], Tr::kOne2, Tr::kOne2);
      }
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        uint32_t b[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int pr = (j & 1) * 2 + h;
          const uint32_t v = and_or<0x000F000Fu, Tr::kMagic>(words[j >> 1] >> (4 * pr));  // 128+q exactly
          const T2 tq = __hsub2(as_t2<T2>(v), magic);                                    // q (or q-8), exact
          b[h] = HAS_Z ? as_u32(__hfma2(tq, s2[j], z2[j])) : as_u32(__hmul2(tq, s2[j]));  // one rounding
        }
#pragma unroll
        for (int i = 0; i < MT; ++i) Tr::mma(acc[i][j], a[i], b[0], b[1]);
      }
    }
    // Refill this ring slot only now: wv is dead, so the load reuses its registers (issued at the
    // top of the body, both would be live and every tile would end with register moves). Path 3:
    // the slot's bytes are in registers (wv was used above), so the copy may overwrite them.
    if constexpr (SMEM_RING) {
      if (t + R < ntiles) cp_async16_evict_first(ring + slot, wp + (t + R) * 32, evict_first);
      cp_async_commit();
    } else {
      if (t + D < ntiles) wbuf[d] = ld_weights(wp + (t + D) * 32, evict_first);
    }
  };
  // ntiles is a multiple of 4 (tw is, and K % 64 == 0), and so is D.
  static_assert(kStreamDepth == 4, "path 2's loop steps by whole ring turns of 4 tiles");
  for (int t0 = 0; t0 < ntiles; t0 += 4) {
#pragma unroll
    for (int d = 0; d < 4; ++d) tile(d, t0);
  }
  pdl_launch_dependents();
  if constexpr (SMEM_RING) cp_async_wait_own<0>();  // nothing is left in flight, but be exact
  if (kPost && ntiles > 0) fold_rows();  // the last group
  if constexpr (SWAP) {
    // Back to the C = x W^T fragment layout that the reduction expects: lane L holds row L/4 and channels
    // 8j + 2(L%4) + e, which lane 4(2(L%4) + e) + L/8 holds as register 2(j%2) + (L/4)%2 of block j/2.
    float c[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int r = 0; r < 4; ++r) c[i][r] = acc[0][i][r];
    const bool odd_row = (lane >> 2) & 1;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int src = 4 * (2 * (lane & 3) + e) + (lane >> 3);
        const float v0 = __shfl_sync(0xffffffffu, c[j >> 1][(j & 1) * 2], src);
        const float v1 = __shfl_sync(0xffffffffu, c[j >> 1][(j & 1) * 2 + 1], src);
        acc[0][j][e] = odd_row ? v1 : v0;
      }
      acc[0][j][2] = acc[0][j][3] = 0.f;  // rows 8..15: M <= 8
    }
  }
  __syncthreads();  // every warp is done reading x: reuse shared memory for the reduction
  reduce_and_store<T, MT, kFinishNarrow>(acc, smem, p, tid, lane, wn, wk, mb, nb, split, row0, ntile_ok);
}

// ---- dequantize kernel (large-M path: W16 = dequant(W4), then cuBLAS) --------
// Memory bound: 0.5 B read + 2 B written per weight, so the stores decide its
// speed.  A lane's 32 values of a tile land in 8 rows (n) and 2 four-byte
// pieces each: written straight to global memory that is 16 scattered 4-byte
// stores per lane (v1: ~1.4 TB/s, ~390 of the 959 us at M=1024, NOTES.md).  So
// a CTA of 4 warps dequantizes 4 consecutive k-tiles of one n-tile (64 x 64
// weights) into shared memory, then writes each of the 64 rows as 128
// contiguous bytes with 16-byte stores.  Shared rows are padded to 144 bytes:
// 36 words, so the 32 lanes' 4-byte writes of one (j, h) step (rows 8j + l/4,
// word l%4) fall in 32 different banks.  Values: the same single rounding as
// everywhere (hfma2/hmul2 of the exact q or q-8).
constexpr int kDqRow = 72;  // shared row: 64 k + 8 pad, in elements

template <typename T, bool HAS_Z>
__global__ void __launch_bounds__(128) w4_dequant_kernel(DequantParams p) {
  using Tr = Traits<T>;
  using T2 = typename Tr::T2;
  __shared__ __align__(16) T tile[64 * kDqRow];
  const int K = p.K, N = p.N;
  const int k_tiles = K >> 4;
  const int nt = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int kt = blockIdx.x * 4 + warp;  // K % 64 == 0: all four k-tiles exist
  const int4 wv = reinterpret_cast<const int4*>(p.w)[((size_t)nt * k_tiles + kt) * 32 + lane];
  const int g = (kt * 16) / p.group_size;
  const size_t soff = (size_t)g * N + nt * 64 + (lane >> 2) * 8;  // this lane's 8 permuted scales
  const int4 sv = *reinterpret_cast<const int4*>(reinterpret_cast<const T*>(p.s) + soff);
  int4 zv = make_int4(0, 0, 0, 0);
  if (HAS_Z) zv = *reinterpret_cast<const int4*>(reinterpret_cast<const T*>(p.z) + soff);
  const uint32_t words[4] = {(uint32_t)wv.x, (uint32_t)wv.y, (uint32_t)wv.z, (uint32_t)wv.w};
  const uint32_t svals[4] = {(uint32_t)sv.x, (uint32_t)sv.y, (uint32_t)sv.z, (uint32_t)sv.w};
  const uint32_t zvals[4] = {(uint32_t)zv.x, (uint32_t)zv.y, (uint32_t)zv.z, (uint32_t)zv.w};
  const T2 magic = HAS_Z ? Tr::magic() : Tr::magic_sym();
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const uint32_t sh = (svals[j >> 1] >> ((j & 1) * 16)) & 0xFFFFu;
    const uint32_t zh = (zvals[j >> 1] >> ((j & 1) * 16)) & 0xFFFFu;
    const T2 s2 = as_t2<T2>(sh | (sh << 16)), z2 = as_t2<T2>(zh | (zh << 16));
    const int n = j * 8 + (lane >> 2);  // row in the CTA's n-tile
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int pr = (j & 1) * 2 + h;
      const uint32_t v = ((words[j >> 1] >> (4 * pr)) & 0x000F000Fu) | Tr::kMagic;
      const T2 tq = __hsub2(as_t2<T2>(v), magic);
      const T2 w = HAS_Z ? __hfma2(tq, s2, z2) : __hmul2(tq, s2);
      const int k = warp * 16 + (lane & 3) * 2 + h * 8;  // column in the CTA's 64
      *reinterpret_cast<T2*>(tile + n * kDqRow + k) = w;
    }
  }
  __syncthreads();
  pdl_wait();  // the output may reuse memory that the previous kernel still reads
  T* out = reinterpret_cast<T*>(p.out) + (size_t)nt * 64 * K + blockIdx.x * 64;
#pragma unroll
  for (int i = 0; i < 4; ++i) {  // 64 rows x 8 chunks of 16 bytes: 8 consecutive threads write one row
    const int c = threadIdx.x + 128 * i, row = c >> 3, ch = c & 7;
    *reinterpret_cast<int4*>(out + (size_t)row * K + ch * 8) = *reinterpret_cast<const int4*>(tile + row * kDqRow + ch * 8);
  }
}

}  // namespace

int mma_m_tiles(int M) { return M <= 16 ? 1 : (M <= 32 ? 2 : 4); }

int mma_occupancy(bool fp16, bool has_z, int mt) {
  static int cache[2][2][5] = {};
  return cached(cache, fp16, has_z, mt, [&] {
    return dispatch(fp16, has_z, mt, [](auto t, auto z, auto m) {
      using T = typename decltype(t)::type;
      return occupancy(w4a16_mma_kernel<T, decltype(m)::value, decltype(z)::value>, kThreads,
                       Smem<T, decltype(m)::value, decltype(z)::value>::kTotal);
    });
  });
}

cudaError_t launch_mma(const GemmParams& p, bool fp16, bool has_z, int mt, int m_blocks, int n_blocks,
                       cudaStream_t stream, bool pdl) {
  return dispatch(fp16, has_z, mt, [&](auto t, auto z, auto m) {
    using T = typename decltype(t)::type;
    using S = Smem<T, decltype(m)::value, decltype(z)::value>;
    auto kern = w4a16_mma_kernel<T, decltype(m)::value, decltype(z)::value>;
    // Raising the dynamic shared-memory limit is a host-side attribute of the
    // current device: cheap and capture-safe, so set it on every launch.
    cudaError_t attr = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, S::kTotal);
    if (attr != cudaSuccess) return attr;
    return launch(kern, dim3(m_blocks, n_blocks, p.k_splits), kThreads, S::kTotal, stream, pdl, p);
  });
}

// The streaming kernel for (dtype, zeros, MT) and the variant chosen at run time: ring in shared memory
// (path 3) or registers (path 2), the latter with swapped operands (path 4, MT = 1 only).
template <class F>
auto dispatch_stream(bool fp16, bool has_z, int mt, bool smem_ring, bool swap, F&& f) {
  return dispatch(fp16, has_z, mt, [&](auto t, auto z, auto m) {
    using T = typename decltype(t)::type;
    constexpr int MT = decltype(m)::value;
    constexpr bool HAS_Z = decltype(z)::value;
    if constexpr (MT == 1) {
      if (swap) return f(w4a16_stream_kernel<T, 1, HAS_Z, false, true>);
    }
    return smem_ring ? f(w4a16_stream_kernel<T, MT, HAS_Z, true, false>)
                     : f(w4a16_stream_kernel<T, MT, HAS_Z, false, false>);
  });
}

int stream_occupancy(bool fp16, bool has_z, int mt, bool smem_ring, bool swap) {
  static int cache[3][2][2][5] = {};
  return cached(cache[swap ? 2 : smem_ring], fp16, has_z, mt, [&] {
    return dispatch_stream(fp16, has_z, mt, smem_ring, swap, [](auto kern) { return occupancy(kern, kThreads, 0); });
  });
}

cudaError_t launch_stream(const GemmParams& p, bool fp16, bool has_z, int mt, bool smem_ring, bool swap,
                          int m_blocks, int n_blocks, int smem_bytes, cudaStream_t stream, bool pdl) {
  return dispatch_stream(fp16, has_z, mt, smem_ring, swap, [&](auto kern) {
    cudaError_t attr = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
    if (attr != cudaSuccess) return attr;
    return launch(kern, dim3(m_blocks, n_blocks, p.k_splits), kThreads, smem_bytes, stream, pdl, p);
  });
}

cudaError_t launch_dequant(const DequantParams& p, bool fp16, bool has_z, cudaStream_t stream, bool pdl) {
  const dim3 grid(p.K / 64, p.N / 64);  // (64-wide k-blocks, n-tiles); N, K % 64 == 0 (checked by the op)
  return dispatch(fp16, has_z, 1, [&](auto t, auto z, auto) {
    return launch(w4_dequant_kernel<typename decltype(t)::type, decltype(z)::value>, grid, 128, 0, stream, pdl, p);
  });
}

}  // namespace lowbit
