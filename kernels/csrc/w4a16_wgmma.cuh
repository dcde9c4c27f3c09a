// Shared by the two wgmma kernels, w4a16_wgmma.cu (path 5: every warp computes, lane 0 of 4-5 of them issues the
// copies) and w4a16_wgmma_ws.cu (path 6: a producer warp and the copy engine, 128-row m-blocks): the operand
// identity, x's shared-memory layout and the PTX wrappers.
//
// Operands: the weights are wgmma's A, from registers; x is its B, from shared memory.  wgmma.mma_async m64nNk16
// multiplies a 64 x 16 A by a 16 x N B for a warpgroup (4 warps); A may come from registers, where warp q holds
// rows 16q..16q+15 in exactly the layout of mma.m16n8k16's A fragment.  Our packed layout (w4a16_kernel.cu) gives
// each lane, per 64-channel x 16-k tile, four words; word w holds sub-tiles 2w and 2w+1 (16 channels), which is
// that A fragment for those 16 rows (path 4 uses the same identity): a0 = nibble pair 0 (rows 0-7, k 0-7 of the
// lane), a1 = pair 2 (rows 8-15), a2 = pair 1 (k 8-15), a3 = pair 3.  So the dequantized words feed the tensor core
// with no shuffle, and the batch is wgmma's N: N = 16, 32, 64 or 128 rows of x per m-block (NR), every dequantized
// weight used for all of them, while the mma.sync kernels re-dequantize per 32 rows and issue 8 mma per 16 rows.
//
// x in shared memory: the K-major layout with the 128-byte swizzle (CUTLASS's Swizzle<3,4,3>): each row's 64 k
// (128 bytes) of a stage's two halves (k 0-63, 64-127) contiguous, 16-byte chunk c of row r stored at chunk
// c ^ (r % 8), rows 128 bytes apart, 8-row atoms 1024 bytes apart (the descriptor's stride byte offset) and
// 1024-byte aligned, as the hardware un-swizzles by address bits; a k-tile's B starts 32 bytes further per k-tile
// within the half.  (The first version used the no-swizzle layout: 16-way bank conflicts, slower than path 3;
// NOTES.md v11.)  Rows past M and k past K are zeros.
//
// Dequantization and rounding are the fused mma kernel's: 128+q by the bit trick, minus 128 (136 symmetric), one
// fma with the group's scale and zero (one multiply): each weight rounded once to 16 bits, as the reference does.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cudaTypedefs.h>  // CUtensorMap, PFN_cuTensorMapEncodeTiled
#include <stdint.h>

#include "w4a16_device.cuh"

// wgmma exists in the sm_90a target only (kernels/build.py builds 9.0 as 9.0a).
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LOWBIT_HAS_WGMMA 1
#else
#define LOWBIT_HAS_WGMMA 0
#endif

namespace lowbit {
namespace {

constexpr int kStagesWg = 4;               // ring slots of 128-deep k-blocks
constexpr int kRedPitch = kMmaNBlock + 4;  // floats per row of the partial-sum buffer: the 4 lanes that share
                                           // a channel write rows 2 apart, 8 banks apart with the padding

#if LOWBIT_HAS_WGMMA
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Pins an accumulator at this point of the program: the compiler may not move its accesses across (the wgmma
// reads and writes it asynchronously between fence and wait).
__device__ __forceinline__ void reg_fence(float& r) { asm volatile("" : "+f"(r)::"memory"); }
// Orders this thread's generic-proxy shared-memory accesses before later async-proxy ones (the tensor core's reads,
// the copy engine's writes): the zero scales (and zeros) both paths store for groups past K.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// mbarrier and bulk-copy wrappers: both paths count all their copies on a "full" barrier per ring slot; path 6
// has an "empty" barrier per slot as well (path 5 meets at a CTA barrier instead).
__device__ __forceinline__ void mbar_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile("{\n.reg .pred p;\nWAIT_%=:\n"
               "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
               "@!p bra WAIT_%=;\n}\n" ::"r"(smem_addr(bar)), "r"(parity) : "memory");
}
// `bytes` contiguous bytes from global to shared memory by the copy engine, counted on bar
__device__ __forceinline__ void bulk_g2s(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
               ::"r"(smem_addr(dst)), "l"(src), "r"(bytes), "r"(smem_addr(bar)) : "memory");
}

// the box at (c0, c1) of a 2-d tensor map to shared memory (with the map's swizzle), counted on bar
__device__ __forceinline__ void tma_g2s_2d(void* dst, const CUtensorMap* map, int c0, int c1, uint64_t* bar) {
  asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
               " [%0], [%1, {%2, %3}], [%4];\n"
               ::"r"(smem_addr(dst)), "l"(map), "r"(c0), "r"(c1), "r"(smem_addr(bar)) : "memory");
}

// The stage copies both wgmma kernels make, counted on bar (the caller announces the bytes).  The packed weights of
// the CTA's n-tile nt (n-block nb) in k-block kb: its 8 k-tiles of 512 bytes, contiguous in global memory.
__device__ __forceinline__ const int4* w_kblock_src(const GemmParams& p, int nb, int nt, int k_tiles, int kb) {
  return reinterpret_cast<const int4*>(p.w) + ((size_t)(nb * 2 + nt) * k_tiles + kb * 8) * 32;
}
// x's k-block kb for the m-block at row0 into a stage (x after the stage's weights): its halves k 0-63 and 64-127,
// nr rows x 128 bytes each (nr * 256 bytes in all), through the tensor map of encode_x_map.
__device__ __forceinline__ void x_kblock_g2s(uint8_t* stage, const CUtensorMap* map, int kb, int row0, int nr,
                                             uint64_t* bar) {
  for (int h = 0; h < 2; ++h) tma_g2s_2d(stage + kWBytes + h * (nr * 128), map, kb * kMmaKBlock + h * 64, row0, bar);
}
// Shared-memory matrix descriptor of a K-major operand with the 128-byte swizzle: start address >> 4, leading
// byte offset unused (1 by convention), stride byte offset 1024 (between 8-row atoms) >> 4, swizzle mode 1
// (128 B) in bits 62-63; base offset 0 (the atoms are 1024-byte aligned).
__device__ __forceinline__ uint64_t kmajor_sw128_desc(uint32_t saddr) {
  return (uint64_t)((saddr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) |
         ((uint64_t)1 << 62);
}

// d (64 x NR fp32, NR/2 per thread) += a (64 x 16, registers) * B (16 x NR, descriptor), T = bf16 or fp16.
template <typename T, int NR> __device__ __forceinline__ void wgmma_rs(float* d, const uint32_t* a, uint64_t desc);
#define LOWBIT_WGMMA_N16(CTYPE, TY)                                                                         \
  template <>                                                                                               \
  __device__ __forceinline__ void wgmma_rs<CTYPE, 16>(float* d, const uint32_t* a, uint64_t desc) {         \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"                                               \
                 "wgmma.mma_async.sync.aligned.m64n16k16.f32." TY "." TY " {"                               \
                 "%0, %1, %2, %3, %4, %5, %6, %7}, "                                                        \
                 "{%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"                                                \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]),                                          \
                   "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])                                           \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));                          \
  }
#define LOWBIT_WGMMA_N32(CTYPE, TY)                                                                         \
  template <>                                                                                               \
  __device__ __forceinline__ void wgmma_rs<CTYPE, 32>(float* d, const uint32_t* a, uint64_t desc) {         \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"                                               \
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32." TY "." TY " {"                               \
                 "%0, %1, %2, %3, %4, %5, %6, %7,"                                                          \
                 "%8, %9, %10, %11, %12, %13, %14, %15}, "                                                  \
                 "{%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"                                              \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]),                                          \
                   "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),                                          \
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),                                        \
                   "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])                                       \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));                          \
  }
#define LOWBIT_WGMMA_N64(CTYPE, TY)                                                                         \
  template <>                                                                                               \
  __device__ __forceinline__ void wgmma_rs<CTYPE, 64>(float* d, const uint32_t* a, uint64_t desc) {         \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                               \
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " {"                               \
                 "%0, %1, %2, %3, %4, %5, %6, %7,"                                                          \
                 "%8, %9, %10, %11, %12, %13, %14, %15,"                                                    \
                 "%16, %17, %18, %19, %20, %21, %22, %23,"                                                  \
                 "%24, %25, %26, %27, %28, %29, %30, %31}, "                                                \
                 "{%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"                                              \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]),                                          \
                   "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),                                          \
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),                                        \
                   "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),                                      \
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),                                      \
                   "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),                                      \
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),                                      \
                   "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])                                       \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));                          \
  }
#define LOWBIT_WGMMA_N128(CTYPE, TY)                                                                        \
  template <>                                                                                               \
  __device__ __forceinline__ void wgmma_rs<CTYPE, 128>(float* d, const uint32_t* a, uint64_t desc) {        \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                               \
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " {"                              \
                 "%0, %1, %2, %3, %4, %5, %6, %7,"                                                         \
                 "%8, %9, %10, %11, %12, %13, %14, %15,"                                                   \
                 "%16, %17, %18, %19, %20, %21, %22, %23,"                                                 \
                 "%24, %25, %26, %27, %28, %29, %30, %31,"                                                 \
                 "%32, %33, %34, %35, %36, %37, %38, %39,"                                                 \
                 "%40, %41, %42, %43, %44, %45, %46, %47,"                                                 \
                 "%48, %49, %50, %51, %52, %53, %54, %55,"                                                 \
                 "%56, %57, %58, %59, %60, %61, %62, %63"                                                  \
                 "}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"                                      \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]),  \
                   "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),  \
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),  \
                   "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),  \
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),  \
                   "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),  \
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),  \
                   "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),  \
                   "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),  \
                   "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),  \
                   "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]),  \
                   "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),  \
                   "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]),  \
                   "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),  \
                   "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),  \
                   "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])  \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));                          \
  }
LOWBIT_WGMMA_N16(__nv_bfloat16, "bf16")
LOWBIT_WGMMA_N16(__half, "f16")
LOWBIT_WGMMA_N32(__nv_bfloat16, "bf16")
LOWBIT_WGMMA_N32(__half, "f16")
LOWBIT_WGMMA_N64(__nv_bfloat16, "bf16")
LOWBIT_WGMMA_N64(__half, "f16")
LOWBIT_WGMMA_N128(__nv_bfloat16, "bf16")
LOWBIT_WGMMA_N128(__half, "f16")
#undef LOWBIT_WGMMA_N16
#undef LOWBIT_WGMMA_N32
#undef LOWBIT_WGMMA_N64
#undef LOWBIT_WGMMA_N128

// The epilogue's store of four consecutive fp32 results at element `off` of y (M x N): rounded to T into y when K
// is not split, else into this split's slice of the fp32 workspace (split_k_finish sums the slices).
template <typename T>
__device__ __forceinline__ void store4(const GemmParams& p, int split, size_t off, float4 v) {
  if (p.k_splits == 1) {
    auto* dst = reinterpret_cast<typename Traits<T>::T2*>(reinterpret_cast<T*>(p.y) + off);
    dst[0] = Traits<T>::from_floats(v.x, v.y);
    dst[1] = Traits<T>::from_floats(v.z, v.w);
  } else {
    *reinterpret_cast<float4*>(p.workspace + (size_t)split * p.M * p.N + off) = v;
  }
}
#endif  // LOWBIT_HAS_WGMMA

// x (M, K) as a 2-d tensor map for the wgmma kernels' copies: boxes of 64 k x nr rows (an m-block; 128 bytes per
// row, the 128-byte swizzle wgmma's descriptor expects), zeros outside the tensor.  Encoded on the host at every
// launch (a CUDA graph keeps the encoded map: it is a kernel argument).
inline cudaError_t encode_x_map(CUtensorMap* map, const GemmParams& p, bool fp16, int nr) {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) !=
            cudaSuccess || found != cudaDriverEntryPointSuccess)
      fn = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  if (encode == nullptr) return cudaErrorNotSupported;
  const cuuint64_t dims[2] = {(cuuint64_t)p.K, (cuuint64_t)p.M};
  const cuuint64_t strides[1] = {(cuuint64_t)p.K * 2};  // bytes between rows
  const cuuint32_t box[2] = {64, (cuuint32_t)nr}, elem_strides[2] = {1, 1};
  const CUresult r = encode(map, fp16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2,
                            const_cast<void*>(p.x), dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                            CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

}  // namespace
}  // namespace lowbit
