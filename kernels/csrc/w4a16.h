// Shared declarations between ops.cpp (host glue, compiled by the host
// compiler) and w4a16_kernel.cu (device code, compiled by nvcc).
#pragma once
#include <cuda_runtime.h>

namespace lowbit {

struct GemmParams {
  const void* x;      // (M, K) activations, row-major
  const void* w;      // packed int4 weights, see w4a16_kernel.cu
  const void* s;      // (G, N) permuted scales
  const void* z;      // (G, N) permuted zeros, or nullptr (symmetric)
  void* y;            // (M, N) output
  float* workspace;   // (k_splits, M, N) fp32 partials, only when k_splits > 1
  int* counters;      // one zero-initialised int per (m-block, n-block)
  int M, N, K, group_size;
  int group_shift;             // log2(group_size); 31 for one group per channel (k >> 31 == 0)
  int k_splits, kb_per_split;  // split-K: k-blocks of 128 per CTA (mma and wgmma kernels)
  // streaming kernel only (see w4a16_kernel.cu): k-tiles of 16 per warp (a multiple of 4; a CTA
  // covers 4x that), K / group_size, groups staged per CTA, and the byte offsets of the staged
  // scales and zeros in dynamic shared memory.
  int kt_per_warp, groups, groups_per_cta, s_off, z_off;
  int ring_off;  // path 3: byte offset of the per-warp weight rings in dynamic shared memory
};

// Path 3 (the streaming kernel with its weight ring in shared memory): k-tiles of 512 bytes in each
// warp's ring; 8 warps per CTA. Two CTAs per SM at MT 1 and 2 (registers), one at MT 4: 16 tiles
// keep ~60 KB or more in flight per SM at MT 1 and 4 (15 per warp), 8 tiles ~56 KB at MT 2.
constexpr int stream_ring_tiles(int mt) { return mt == 2 ? 8 : 16; }
// Bytes of a CTA's shared-memory rings (path 3): 8 warps x R tiles.
constexpr int stream_ring_bytes(int mt) { return 8 * stream_ring_tiles(mt) * 512; }

struct DequantParams {
  const void* w;
  const void* s;
  const void* z;
  void* out;          // (N, K) dequantized weights, row-major
  int N, K, group_size;
};

constexpr int kMmaNBlock = 128;  // output channels per CTA
constexpr int kMmaKBlock = 128;  // k per pipeline stage (split-K granule)

int mma_m_tiles(int M);                           // m16 tiles per CTA for this M
int mma_occupancy(bool fp16, bool has_z, int mt); // CTAs per SM
// pdl: launch with programmatic stream serialization (sm_90+; see pdl_wait in w4a16_kernel.cu).
cudaError_t launch_mma(const GemmParams& p, bool fp16, bool has_z, int mt, int m_blocks, int n_blocks,
                       cudaStream_t stream, bool pdl);
// The streaming kernel; smem_ring: weight ring in shared memory (path 3) instead of registers (path 2);
// swap: path 2 with the weights as the mma's A operand (path 4; mt = 1, M <= 8).
int stream_occupancy(bool fp16, bool has_z, int mt, bool smem_ring, bool swap);  // CTAs per SM, by registers
cudaError_t launch_stream(const GemmParams& p, bool fp16, bool has_z, int mt, bool smem_ring, bool swap,
                          int m_blocks, int n_blocks, int smem_bytes, cudaStream_t stream, bool pdl);
// Path 5, the wgmma kernel (w4a16_wgmma.cu; sm_90a only; choose_path: M = 17..64): as launch_mma, NR = 16 * mt rows per
// m-block.
int wgmma_occupancy(bool fp16, bool has_z, int mt);
cudaError_t launch_wgmma(const GemmParams& p, bool fp16, bool has_z, int mt, int m_blocks, int n_blocks,
                         cudaStream_t stream, bool pdl);
// Path 6, the wgmma kernel with a producer warp (w4a16_wgmma_ws.cu; sm_90a only; choose_path: M = 65..512): as
// launch_mma with 128 rows per m-block.
int wgmma_ws_occupancy(bool fp16, bool has_z);
cudaError_t launch_wgmma_ws(const GemmParams& p, bool fp16, bool has_z, int m_blocks, int n_blocks, cudaStream_t stream,
                            bool pdl);
cudaError_t launch_dequant(const DequantParams& p, bool fp16, bool has_z, cudaStream_t stream, bool pdl);

}  // namespace lowbit
