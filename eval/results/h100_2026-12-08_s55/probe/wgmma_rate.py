"""s55 probe (written 2026-12-08, not yet run): how many cycles 8 wgmma.m64nNk16 (A from registers, B from
128-byte-swizzled shared memory, bf16, fp32 accumulators: path 5's k-block of one warpgroup) take when nothing else
runs, 2 warpgroups per CTA, 1 or 2 CTAs per SM (grid = 1x or 2x the SMs).  "wait0": commit + wait<0> per group, as
path 5 does; "wait1": one group left in flight (the tensor core's throughput rather than a group's latency); "ss":
A from shared memory too (N = 32, wait<0>), against the register operand.  Peak (dense bf16, ~2,048 FMA per cycle
per SM) is 16 cycles per m64n32k16, so 8 of them 128 cycles for one warpgroup.
    python wgmma_rate.py        (in the repository root; builds its own small extension)"""
import os
import statistics
import torch
from torch.utils.cpp_extension import load_inline

here = os.path.dirname(os.path.abspath(__file__))
src = r'''
#include <torch/extension.h>
#include <cuda_bf16.h>
#include "w4a16_wgmma.cuh"
using namespace lowbit;
#if LOWBIT_HAS_WGMMA
// d (64 x 32 fp32) += A (64 x 16, shared memory, descriptor) * B (16 x 32, descriptor)
__device__ __forceinline__ void wgmma_ss32(float* d, uint64_t da, uint64_t db) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {"
               "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
               "%16, %17, p, 1, 1, 0, 0;\n}\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                 "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
               : "l"(da), "l"(db), "r"(1));
}
#endif
template <int NR, int MODE>  // MODE 0: wait<0> per group, 1: wait<1>, 2: A from shared memory (NR = 32), wait<0>
__global__ void __launch_bounds__(256) rate_kernel(long long* out, float* sink, int iters) {
#if LOWBIT_HAS_WGMMA
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  uint8_t* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  for (int i = threadIdx.x; i < 16384 / 16; i += 256) reinterpret_cast<uint4*>(smem)[i] = make_uint4(0x3f803f80u, 0, 0, 0x3f803f80u);
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncthreads();
  float acc[2][NR / 2];
  for (int j = 0; j < 2; ++j) for (int e = 0; e < NR / 2; ++e) acc[j][e] = 0.f;
  uint32_t a[4][2][4];
  for (int kk = 0; kk < 4; ++kk) for (int j = 0; j < 2; ++j) for (int r = 0; r < 4; ++r) a[kk][j][r] = 0x3c003c00u + threadIdx.x + kk;
  const int wg = threadIdx.x / 128;
  const uint64_t desc0 = kmajor_sw128_desc(smem_addr(smem) + wg * (NR * 128));
  const uint32_t lo0 = (uint32_t)desc0, hi = (uint32_t)(desc0 >> 32);
  __syncthreads();
  const long long t0 = clock64();
  for (int it = 0; it < iters; ++it) {
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const uint64_t desc = ((uint64_t)hi << 32) | (lo0 + kk * 2);
      if constexpr (MODE == 2 && NR == 32) {  // A: 64 rows x 128 bytes (8 KB) after x, both warpgroups
        const uint64_t da = kmajor_sw128_desc(smem_addr(smem) + 8192) + kk * 2;
        wgmma_ss32(acc[0], da, desc);
        wgmma_ss32(acc[1], da, desc);
      } else {
        wgmma_rs<__nv_bfloat16, NR>(acc[0], a[kk][0], desc);
        wgmma_rs<__nv_bfloat16, NR>(acc[1], a[kk][1], desc);
      }
    }
    wgmma_commit();
    if constexpr (MODE == 1) wgmma_wait<1>(); else wgmma_wait<0>();
  }
  wgmma_wait<0>();
  const long long t1 = clock64();
  float s = 0.f;
  for (int j = 0; j < 2; ++j) for (int e = 0; e < NR / 2; ++e) s += acc[j][e];
  sink[blockIdx.x * 256 + threadIdx.x] = s;
  if (threadIdx.x == 0) out[blockIdx.x] = t1 - t0;
#endif
}
torch::Tensor run(int64_t nr, int64_t mode, int64_t ctas, int64_t iters) {
  auto out = torch::zeros({ctas + 1}, torch::dtype(torch::kInt64).device(torch::kCUDA));  // + CTAs per SM that fit
  auto sink = torch::zeros({ctas * 256}, torch::dtype(torch::kFloat32).device(torch::kCUDA));
  const int smem = 20 * 1024 + 1024;
  auto go = [&](auto kern) {
    cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    int fit = 0;
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fit, kern, 256, smem);
    out[ctas].fill_(fit);
    kern<<<ctas, 256, smem>>>(reinterpret_cast<long long*>(out.data_ptr<int64_t>()), sink.data_ptr<float>(), (int)iters);
  };
  if (mode == 2) go(rate_kernel<32, 2>);
  else if (mode == 1) { if (nr == 16) go(rate_kernel<16, 1>); else if (nr == 32) go(rate_kernel<32, 1>); else go(rate_kernel<64, 1>); }
  else { if (nr == 16) go(rate_kernel<16, 0>); else if (nr == 32) go(rate_kernel<32, 0>); else go(rate_kernel<64, 0>); }
  TORCH_CHECK(cudaGetLastError() == cudaSuccess);
  return out;
}
'''
ext = load_inline("wgmma_rate", cpp_sources="torch::Tensor run(int64_t nr, int64_t mode, int64_t ctas, int64_t iters);",
                  cuda_sources=src, functions=["run"], extra_include_paths=[os.path.join(here, "kernels", "csrc")],
                  extra_cuda_cflags=["-O3", "-gencode=arch=compute_90a,code=sm_90a"], verbose=False)
sms = torch.cuda.get_device_properties(0).multi_processor_count
print(torch.cuda.get_device_name(), torch.__version__)
print("| N (rows) | mode | CTAs per SM | cycles per k-block (8 wgmma per warpgroup), median over CTAs (min, max) |")
print("|---:|---|---:|---:|")
for nr, mode in [(16, 0), (32, 0), (64, 0), (16, 1), (32, 1), (64, 1), (32, 2)]:
    for per_sm in (1, 2):
        ext.run(nr, mode, sms * per_sm, 64)
        torch.cuda.synchronize()
        *cyc, fit = ext.run(nr, mode, sms * per_sm, 2000).tolist()
        torch.cuda.synchronize()
        print(f"| {nr} | {['wait0', 'wait1', 'ss'][mode]} | {per_sm}{'' if fit >= per_sm else f' (only {fit} fit)'} | "
              f"{statistics.median(cyc) / 2000:.0f} ({min(cyc) / 2000:.0f}, {max(cyc) / 2000:.0f}) |", flush=True)
