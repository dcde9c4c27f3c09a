// Host glue for lowbit::w4a16_gemm, lowbit::kv16_decode_attention and lowbit::add_rms_norm: argument checks,
// path choice, split sizing, workspace/counter management and the CUDA dispatcher registrations.
//
// The op's schema is defined from Python (kernels/__init__.py), not here:
// the CPU (reference) and fake implementations must exist on machines where
// this extension is never built, and a schema that lived only in this library
// would vanish there.  This file registers the CUDA kernel for that schema
// with TORCH_LIBRARY_IMPL, so torch.compile sees an ordinary dispatcher op and
// CUDA graphs capture the single kernel launch it makes.

#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdlib>
#include <mutex>
#include <tuple>
#include <string>
#include <vector>

#include "attention.h"
#include "norm.h"
#include "w4a16.h"

namespace lowbit {
namespace {

constexpr int64_t kCounterCapacity = 1 << 16;  // (m-block, n-block) tiles that may split K

// Path heuristic: the ONE place that decides which kernel runs.
// 0 = fused mma.sync kernel, 1 = dequantize to a 16-bit temporary + cuBLAS,
// 2 = the streaming kernel (w4a16_kernel.cu), 3 = the same with its weight ring in shared memory,
// 4 = path 2 with the weights as the mma's A operand (M <= 8), 5 = the wgmma kernel (w4a16_wgmma.cu: Hopper's
// warpgroup tensor cores, compute capability 9.0 only: picked for M = 17..64 there, see below), 6 = the wgmma
// kernel with a producer warp and 128-row m-blocks (w4a16_wgmma_ws.cu; 9.0 only: M = 65..512 there).
// Thresholds from the microbenchmark on an H200, torch 2.11 (BENCHMARKS.md, "Kernel microbenchmark";
// kernels/NOTES.md v5-v7): Llama-3-8B's four linears, g128 symmetric, sum in us.
//   streaming, register ring (2) vs shared-memory ring (3), one process each line:
//     2026-11-29 (v5): M=1 61.1 vs 65.2, M=8 62.1 vs 69.9, M=16 71.8 vs 77.7.  M=32 (MT=2): three runs
//     that day 112.1 / 111.7 / 112.1 vs 102.5 / 104.1 / 103.1 (gate_up 50.5 vs 44.9: at MT=2 path 2's
//     ring is 4 tiles deep and drains every turn, path 3 keeps 7 in flight); 2026-11-29 (this code):
//     M=1 60.6 vs 64.3, M=16 71.8 vs 77.3, M=32 111.6 vs 102.4 (the heuristic there: 102.7).
//   streaming vs fused mma (before v5): M=1 64.5 vs 105.6, M=16 76.1 vs 109.2, M=32 112.9 vs 129.2,
//                                       M=64 196.8 (path 3: 189.3) vs 189.7, M=128 345.2 vs 341.4
//   fused mma vs dequantize (v6) + cuBLAS, 2026-11-29: M=128 345.4 vs 285.5, M=256 614.8 vs 322.6,
//   M=1024 2318.7 vs 704.4 (cuBLAS on bf16 weights: 142.1, 184.6, 571.4).  M=64 to 127 not measured
//   against path 1; before v6 (scattered stores) the tie was at M=256.
//   M = 33..127, 2026-11-29 (session 7, H200, one process, eval/kernels.py --ms 48,64,96,128 with
//   ours_sym[mma/mt2], [smem/mt2], [mma/mt1]; BENCHMARKS.md "32-row m-blocks for M = 33-96"): the fused mma
//   kernel at its 64-row tiles (then the heuristic) 184.4 / 189.1 / 336.0 us at M = 48 / 64 / 96; the
//   same kernel at 32-row tiles 230.1 / 231.6 / 376.5, at 16-row ones 322.4 / 347.6 / 576.1; the
//   shared-memory streaming kernel at 32-row tiles (2-4 m-blocks per n-block, each reading the
//   n-block's weights) 160.0 / 164.1 / 242.4, and 308.0 at M=128 against path 1's 287.2.  Its time
//   steps with the m-blocks (ceil(M / 32)): in the next run (eval/kernels.py --ms ...,33,48,64,96,127,128
//   --tag _s7) 158.3 / 160.7 / 164.1 at M = 33 / 48 / 64 (two), 243.6 at 96 (three), 308.5 at 127 (four)
//   against path 1's 286.4 at 128, whose time hardly depends on M (the dequantize pass is half of it);
//   at the boundary (--ms 96,97,112,127,128 --tag _s7b, kernels/bench_h200_s7_threshold.md) shared ring vs
//   path 1: 243.3 vs 281.9 at M = 96, 299.6 vs 280.0 at 97, 303.2 vs 285.7 at 112: path 1 from the fourth
//   m-block, M = 97.
//   swapped operands (path 4) vs path 2 at M <= 8, 2026-11-29 (eighth session, one process, eval/kernels.py
//   --bandwidth --ms 1,2,4,8 --schemes "ours_sym[stream],ours_sym[swap],...", kernels/bench_h200_s8_swap.md):
//   M=1 50.2 vs 56.8, M=8 53.1 vs 58.3 (asym 52.1 vs 59.2, 54.3 vs 61.1); gate_up at M=1 22.24 vs 25.82 (read_int4:
//   22.51).  Half the mma per weight tile (4 + 1 instead of 8 + 1): the tensor pipe was what held path 2 at M <= 8.
//   Above 8 rows x needs two n8 fragments and the count is back at 8 + 2.
// The streaming kernel stages x once and never waits on a barrier, so it wins while the
// weights dominate: up to M = 96 at 32-row tiles (m_tiles_for), ahead of the fused kernel, which
// the heuristic no longer picks (forced paths and the benchmark keep it); from 97 rows cuBLAS on a
// dequantized copy wins despite writing and re-reading 2 bytes per weight (~140 us of the 285 at M=128).
// LOWBIT_W4A16_PATH=0..6 in the environment overrides it for every call of the process (end-to-end
// A/B runs of a path without a rebuild; read once); 4 only for calls of at most 8 rows (a prefill takes
// the rule below).
//   path 5 (wgmma) vs path 1 on an H100 (2026-12-05, session 14, torch 2.11.0+cu130, one process, eval/kernels.py
//   --ms 97,112,128,160,192,256,512,1024 --reps 10, BENCHMARKS.md "Path 5 on an H100"): 311.7 / 312.4 / 313.4 vs
//   367.5 / 369.6 / 371.7 us at M = 97 / 112 / 128 (cuBLAS bf16 178-195), then 492.0 vs 379.2 at 160 and 965.2
//   vs 490.6 at 512; path 3 at M = 96: 237.9 against path 5's 291.4.  So path 5 for M = 97..128 where it runs
//   (compute capability 9.0: `wgmma`), path 1 above and elsewhere; the H200 numbers above (path 1: 280-287 at
//   97-128) predate a working path 5 and were not re-taken against it.
//   path 5 v12 (loop-contained wgmma pipeline, 128-row m-blocks from M = 65; NOTES.md v12) on an H100 (2026-12-06,
//   session 18, torch 2.11.0+cu130, one process each, eval/kernels.py --reps 10, BENCHMARKS.md "Path 5 v12"):
//   sym, path 5 vs path 3: 150.7 vs 156.8 at M = 40, 157.1 vs 163.1 at 64, 218.3 vs 235.4 at 80, 223.2 vs 241.6 at
//   96; with zeros 172.7 vs 166.5 at 40, 181.9 vs 173.4 at 64, 234.4 vs 255.5 at 96.  Path 5 vs path 1: 226.3 vs
//   372.6 at 128 (sym), 380.4 vs 379.1 at 160, 388.0 vs 403.3 at 256, 626.5 vs 457.9 at 384; zeros 411.7 vs 382.1
//   at 160, 425.2 vs 407.0 at 256.  So path 5 for M = 65..128 (it wins both ways there), path 3 below (a tie:
//   +4 % sym, -5 % with zeros, the int4-marlin default), path 1 above.
//   path 5 v13 (40 % fewer instructions per k-block; NOTES.md v13) on an H100 (2026-12-06, second session, torch
//   2.11.0+cu130, one process per run, eval/kernels.py --reps 10, BENCHMARKS.md "Path 5 v13", raw files in
//   eval/results/h100_2026-12-06_s24 and _s25), sym / with zeros: path 5 vs path 3: 82.0 vs 95.5 / 85.9 vs 100.0 at
//   M = 17, 86.7 vs 102.9 / 92.4 vs 111.5 at 32, 106.3 vs 159.7 / 108.2 vs 167.4 at 48, 111.4 vs 163.4 / 115.2 vs
//   179.2 at 64; path 5 vs path 1: 163.9 vs 378.2 at 128, 264.9 vs 406.1 / 270.1 vs 406.3 at 256, 416.1 vs 460.8 /
//   417.3 vs 459.3 at 384, 451.8 vs 488.7 / 451.0 vs 490.3 at 512, 776.7 vs 633.0 / 769.8 vs 633.6 at 768.  At
//   M = 16 path 2 keeps it (H200: 70.1 vs 76.5).  So path 5 took M = 17..512 where it runs, path 1 above (until
//   path 6, next).
//   path 6 (path 5's "v15": a producer warp and the copy engine; NOTES.md v15) against path 5 v13 on an H100
//   (2026-12-06, third session, torch 2.11.0+cu130, each build in its own process, two alternating runs,
//   eval/kernels.py --reps 10, raw files eval/results/h100_2026-12-06_s27 and _s28), sym / with zeros, at the m-block
//   sizes path 5 picks (16-64 rows below 65, 128 from 65): 91.1 vs 82.5 / 99.6 vs 87.2 at M = 17, 94.5 vs 86.1 /
//   104.2 vs 91.4 at 32, 103.5 vs 106.6 / 112.5 vs 110.1 at 48, 107.2 vs 110.2 / 117.1 vs 114.5 at 64; 142.0 vs
//   161.0 / 147.3 vs 163.9 at 128, 223.5 vs 261.9 / 234.4 vs 267.9 at 256.  So path 5 for M = 17..64, path 6
//   (128-row m-blocks only) from 65.  One process of the final tree (same day, kernels_bench_F.md in
//   eval/results/h100_2026-12-06_s30), path 6 vs path 5 (sym): 144.0 vs 159.0 at M = 65, 136.0 vs 170.0 at 96;
//   path 6 vs path 1, sym / with zeros: 386.3 vs 492.7 at 512, 560.6 vs 573.2 / 591.2 vs 572.2 at 640, 649.4 vs
//   645.7 at 768, 745.3 vs 768.7 / 772.3 vs 768.9 at 1024: a tie from 640, so path 1 above 512 as before.
constexpr int64_t kSwapMaxM = 8;
constexpr int64_t kRegRingMaxM = 16;
constexpr int64_t kDequantMinM = 97;
constexpr int64_t kWgmmaMinM = 17;
constexpr int64_t kWgmmaMaxM = 512;
constexpr int64_t kWgmmaWsMinM = 65;
int64_t forced_path() {
  static const int64_t forced = [] {
    const char* env = std::getenv("LOWBIT_W4A16_PATH");
    if (env == nullptr || *env == '\0') return int64_t{-1};
    const std::string v(env);
    TORCH_CHECK(v.size() == 1 && v[0] >= '0' && v[0] <= '6',
                "LOWBIT_W4A16_PATH must be 0, 1, 2, 3, 4, 5 or 6 (or unset), got '", v, "'");
    return int64_t{v[0] - '0'};
  }();
  return forced;
}

int64_t choose_path(int64_t M, int64_t N, int64_t K, bool wgmma) {
  (void)N;
  (void)K;
  if (const int64_t forced = forced_path(); forced >= 0 && (forced != 4 || M <= kSwapMaxM)) return forced;
  if (M <= kSwapMaxM) return 4;
  if (M <= kRegRingMaxM) return 2;
  if (wgmma && M >= kWgmmaMinM && M <= kWgmmaMaxM) return M >= kWgmmaWsMinM ? 6 : 5;
  if (M < kDequantMinM) return 3;
  return 1;
}

// m16 tiles per CTA for a path that tiles M (0, 2, 3, 5, 6), the rows one CTA covers being 16 x that: the
// second half of the heuristic above (the same measurements), kept apart because forced paths need it too.
// The fused kernel and the wgmma kernel (path 5): mma_m_tiles (1, 2, then 4 from M = 33); path 5 takes 8 (one
// 128-row m-block) from M = 65 (H100, 2026-12-06, BENCHMARKS.md "Path 5 v12": 219.4 vs 268.5 us at M = 96, 222.0 vs
// 272.9 at 128 against 64-row m-blocks; 213.1 vs 152.2 at 64); path 6 only 8. The streaming kernels
// (is_streaming): at most 2, as
// their ring and registers are sized for (w4a16.h; 203-255 registers at 4, NOTES.md open issue 2),
// measured above: M = 33..96 runs as 32-row m-blocks.  At 64-row m-blocks (forced, H200, 2026-11-29, eighth
// session, kernels/bench_h200_s8_mt4.md) they lose: 172.8 / 184.0 / 327.0 us (shared ring) against 156.4 /
// 159.5 / 236.4 at M = 48 / 64 / 96.
// Paths 2, 3 and 4 run the streaming kernel (w4a16_kernel.cu); 0, 5 and 6 their own kernels, 1 cuBLAS.  The one
// place that says so: m_tiles_for and gemm_path both ask (writing the test twice once sent path 5 to the
// streaming launcher, kernels/NOTES.md v11c).
bool is_streaming(int64_t path) { return path >= 2 && path <= 4; }

int m_tiles_for(int64_t path, int64_t M) {
  const int mt = mma_m_tiles((int)M);
  if (path == 6 || (path == 5 && M > 64)) return 8;  // 128-row m-blocks: each weight dequantized once per 128 rows
  return is_streaming(path) ? std::min(mt, 2) : mt;
}

struct DeviceInfo {
  int sms = 0;
  int major = 0, minor = 0;
  int smem_per_sm = 0, smem_per_block = 0;  // bytes: per SM, and the opt-in maximum per CTA
};

const DeviceInfo& device_info(int dev) {
  static std::mutex mu;
  static std::vector<DeviceInfo> infos;
  std::lock_guard<std::mutex> lock(mu);
  if ((int)infos.size() <= dev) infos.resize(dev + 1);
  DeviceInfo& d = infos[dev];
  if (d.sms == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.minor, cudaDevAttrComputeCapabilityMinor, dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_per_block, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  }
  return d;
}

// Programmatic dependent launch (the kernels' pdl_wait / pdl_launch_dependents, w4a16_kernel.cu): our
// kernels start before the previous kernel in the stream has ended and read their first weights while it
// finishes.  sm_90+ only.  On by default: H200, torch 2.11, 2026-11-29 (BENCHMARKS.md "Programmatic
// dependent launch"): the four Llama-3-8B linears at M = 1 / 16 / 32 / 64 take 56.0 / 68.2 / 99.0 / 159.5 us
// with it and 60.8 / 71.5 / 101.3 / 162.1 without (our kernels back to back); end to end, int4-marlin with
// inductor's PDL too, 353.2 vs 346.7 tok/s at batch 1 with ours on vs off; with inductor's off, 328.9 vs
// 333.2 (-1.3%; -0.9% at batch 32: the kernels before ours must let it start early, and they do not).
// LOWBIT_W4A16_PDL=0 or 1 in the environment overrides it for every call of the process (read once:
// end-to-end A/B runs without a rebuild; generate.py --no-pdl sets 0).
constexpr bool kPdlDefault = true;
bool use_pdl(const DeviceInfo& d) {
  static const bool on = [] {
    const char* env = std::getenv("LOWBIT_W4A16_PDL");
    if (env == nullptr || *env == '\0') return kPdlDefault;
    const std::string v(env);
    TORCH_CHECK(v == "0" || v == "1", "LOWBIT_W4A16_PDL must be 0 or 1 (or unset), got '", v, "'");
    return v == "1";
  }();
  return on && d.major >= 9;  // kernels/build.py compiles for the GPU present: sm_90+ code has the wait
}

// Split-K arrival counters: allocated zeroed once per device and kept; every
// launch leaves them at zero again (the last CTA of a tile resets its
// counter).  Launches on one stream are ordered (under PDL a launch touches them only after
// griddepcontrol.wait, i.e. after the previous launch has finished), so reuse is safe; two
// concurrent launches on different streams of one device are NOT supported.
// They come from cudaMalloc, not from PyTorch's allocator: the first split-K
// call often runs inside torch.compile's CUDA-graph warm-up, where the caching
// allocator hands out memory from the graph's private pool, and a tensor kept
// from there outlives the graph's bookkeeping (cudagraph trees raised "1 tensor
// in the cudagraph pool not tracked as outputs" for `generate.py --quant
// int4-marlin --batch 32`, whose prefill never splits K).  Every call of the
// op (not only split-K ones) makes sure they exist, so any earlier eager call
// (a prefill through any path) allocates them; a very first call inside a
// capture is refused with a clear error.  The allocation runs in relaxed
// capture mode, so that a capture in another thread is not invalidated by
// cudaMalloc.  Never freed: 256 KB per device for the life of the process.
int* counters_for(const at::Tensor& like, cudaStream_t stream) {
  static std::mutex mu;
  static std::vector<int*> per_dev;
  std::lock_guard<std::mutex> lock(mu);
  const int dev = like.get_device();
  if ((int)per_dev.size() <= dev) per_dev.resize(dev + 1, nullptr);
  if (per_dev[dev] == nullptr) {
    cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capturing));
    TORCH_CHECK(capturing == cudaStreamCaptureStatusNone,
                "w4a16_gemm: the first call on a device allocates its split-K counters and cannot run "
                "inside CUDA graph capture: call the op once before capturing");
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;  // another thread may be capturing
    C10_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
    int* c = nullptr;
    cudaError_t err = cudaMalloc(&c, kCounterCapacity * sizeof(int));
    if (err == cudaSuccess) err = cudaMemsetAsync(c, 0, kCounterCapacity * sizeof(int), stream);
    if (err == cudaSuccess) err = cudaStreamSynchronize(stream);  // zeroed before any stream uses them
    C10_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
    C10_CUDA_CHECK(err);
    per_dev[dev] = c;
  }
  return per_dev[dev];
}

void check_inputs(const at::Tensor& x, const at::Tensor& w, const at::Tensor& s,
                  const std::optional<at::Tensor>& z, int64_t gs) {
  TORCH_CHECK(x.is_cuda(), "w4a16_gemm: x must be a CUDA tensor, got device ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
              "w4a16_gemm: x must be bfloat16 or float16, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 2, "w4a16_gemm: x must be 2-D (M, K), got ", x.dim(), " dims");
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kInt,
              "w4a16_gemm: packed_w must be a 2-D int32 tensor (N, K/8) from pack_w4, got ", w.scalar_type(),
              " with ", w.dim(), " dims");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  TORCH_CHECK(M >= 1, "w4a16_gemm: M must be >= 1, got ", M);
  TORCH_CHECK(w.size(1) * 8 == K, "w4a16_gemm: K mismatch: x has K=", K, " but packed_w (", N, ", ", w.size(1),
              ") holds K=", w.size(1) * 8);
  TORCH_CHECK(N % 64 == 0, "w4a16_gemm: N must be a multiple of 64, got N=", N);
  TORCH_CHECK(K % 64 == 0, "w4a16_gemm: K must be a multiple of 64, got K=", K);
  TORCH_CHECK(gs == 32 || gs == 64 || gs == 128 || gs == K,
              "w4a16_gemm: group_size must be 32, 64, 128 or K (=", K, "), got ", gs);
  TORCH_CHECK(K % gs == 0, "w4a16_gemm: K=", K, " is not a multiple of group_size=", gs);
  const int64_t G = K / gs;
  TORCH_CHECK(s.dim() == 2 && s.size(0) == G && s.size(1) == N, "w4a16_gemm: scales must have shape (K/group_size, N) = (",
              G, ", ", N, ") as returned by pack_w4, got ", s.sizes());
  TORCH_CHECK(s.scalar_type() == x.scalar_type(), "w4a16_gemm: scales dtype ", s.scalar_type(),
              " must match x dtype ", x.scalar_type());
  std::vector<const at::Tensor*> all = {&x, &w, &s};
  if (z.has_value()) {
    TORCH_CHECK(z->dim() == 2 && z->size(0) == G && z->size(1) == N,
                "w4a16_gemm: zeros must have shape (K/group_size, N) = (", G, ", ", N, "), got ", z->sizes());
    TORCH_CHECK(z->scalar_type() == x.scalar_type(), "w4a16_gemm: zeros dtype ", z->scalar_type(),
                " must match x dtype ", x.scalar_type());
    all.push_back(&*z);
  }
  const char* names[] = {"x", "packed_w", "scales", "zeros"};
  for (size_t i = 0; i < all.size(); ++i) {
    TORCH_CHECK(all[i]->device() == x.device(), "w4a16_gemm: ", names[i], " is on ", all[i]->device(),
                " but x is on ", x.device());
    TORCH_CHECK(all[i]->is_contiguous(), "w4a16_gemm: ", names[i], " must be contiguous (strides ",
                all[i]->strides(), ")");
    TORCH_CHECK(reinterpret_cast<uintptr_t>(all[i]->data_ptr()) % 16 == 0, "w4a16_gemm: ", names[i],
                " must be 16-byte aligned (the kernel uses 16-byte loads)");
  }
  const DeviceInfo& d = device_info(x.get_device());
  TORCH_CHECK(d.major >= 8, "w4a16_gemm: unsupported GPU with compute capability ", d.major, ".", d.minor,
              " (needs >= 8.0 for bf16 mma.sync and cp.async)");
}

// Streaming kernel launch plan: split K until one wave of resident CTAs is
// (nearly) full, like the mma path, with two extra constraints: a warp's run
// is a multiple of 4 k-tiles (the kernel's unroll step), and the CTA's staged
// x rows + scales/zeros must fit in shared memory without lowering the
// register-limited occupancy.
// `error` says why no plan fits (kPlanFits when one does) as a number: gemm_path raises it with a
// message, the test binding returns it.  No string and no C++ exception crosses pybind11 in the plan
// tests: on the torch 2.11 GPU machine both an exception and a returned error string from this binding
// crashed the process (kernels/NOTES.md, open issue 3).
enum PlanError : int64_t { kPlanFits = 0, kPlanSmem = 1, kPlanSplitCtas = 2 };
struct StreamPlan {
  int64_t splits, kt_per_warp, groups_per_cta, s_off, z_off, ring_off, smem;
  PlanError error;
};

// smem_ring: path 3, whose per-warp weight rings (stream_ring_bytes(mt) in all) follow
// the staged scales and zeros. want_splits > 0 replaces the one-wave rule (benchmarks sweep it; see
// gemm_path's `splits`).
StreamPlan plan_stream(int64_t M, int64_t K, int64_t gs, bool has_z, int mt, bool smem_ring, int64_t ctas,
                       int occupancy, const DeviceInfo& d, int64_t want_splits = -1) {
  const int64_t k_tiles = K / 16;
  const int64_t rows = mt == 1 ? std::min<int64_t>(M, 16) : 16 * mt;  // staged x rows (see the kernel)
  const int64_t red = 2 * 2 * mt * 32 * 32 * 4;                          // k-partial reduction buffer
  // Per CTA the SM also holds 1 KB reserved by the driver and the kernel's 128 bytes of static shared
  // memory (s_last, padded to the 128-byte alignment of the dynamic array).
  const int64_t smem_cap = std::min<int64_t>(d.smem_per_block - 128, d.smem_per_sm / occupancy - 1024 - 128);
  const int64_t slots = (int64_t)d.sms * occupancy;
  int64_t want = 1;
  if (ctas < slots && ctas <= kCounterCapacity) want = std::max<int64_t>(1, slots / ctas);
  if (want_splits > 0) want = want_splits;
  for (int64_t splits = want;; ++splits) {
    const int64_t tw = ((k_tiles + 4 * splits - 1) / (4 * splits) + 3) / 4 * 4;
    StreamPlan pl{};
    pl.kt_per_warp = tw;
    pl.splits = (k_tiles + 4 * tw - 1) / (4 * tw);  // no empty splits
    pl.groups_per_cta = gs == K ? 1 : (64 * tw + gs - 1) / gs;
    pl.s_off = rows * tw * 128;
    pl.z_off = pl.s_off + pl.groups_per_cta * 256;
    pl.ring_off = pl.z_off + (has_z ? pl.groups_per_cta * 256 : 0);
    pl.smem = std::max(pl.ring_off + (smem_ring ? stream_ring_bytes(mt) : 0), red);
    if (pl.smem <= smem_cap || tw == 4) {
      pl.error = pl.smem > d.smem_per_block - 128               ? kPlanSmem
                 : pl.splits > 1 && ctas > kCounterCapacity ? kPlanSplitCtas
                                                            : kPlanFits;
      return pl;
    }
  }
}

// path: -1 = heuristic, 0 = fused mma kernel, 1 = dequantize + cuBLAS, 2 = streaming kernel,
// 3 = streaming kernel with its weight ring in shared memory, 4 = path 2 with swapped operands (M <= 8),
// 5 = the wgmma kernel (sm_90 GPUs; its m-blocks and split-K as path 0's), 6 = the wgmma kernel with a producer
// warp (sm_90 GPUs; 128-row m-blocks only, split-K as path 0's).
// splits: -1 = the launch plan's split-K count; > 0 asks for that many (paths 0, 2, 3, 4, 5, 6; the count
// actually run can differ: no split may be empty). A benchmark knob (eval/kernels.py "[stream/s4]").
// m_tiles: -1 = m_tiles_for(path, M); 1, 2 or 4 m16 tiles per CTA instead (paths 0, 2, 3, 5; path 5 also 8, path 6
// only 8;
// path 4 takes only 1, and at most 8 rows; more m-blocks when fewer): the benchmark knob (eval/kernels.py
// "[mma/mt2]") that measured the M = 33..96 rule above.
// The streaming kernel at one m-tile keeps its exact-weight arithmetic for any M.
at::Tensor gemm_path(const at::Tensor& x, const at::Tensor& w, const at::Tensor& s,
                     const std::optional<at::Tensor>& z, int64_t gs, int64_t path, int64_t want_splits,
                     int64_t want_m_tiles) {
  check_inputs(x, w, s, z, gs);
  c10::cuda::CUDAGuard guard(x.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  const bool fp16 = x.scalar_type() == at::kHalf;
  const bool has_z = z.has_value();
  const DeviceInfo& d = device_info(x.get_device());
  if (path < 0) path = choose_path(M, N, K, d.major == 9 && d.minor == 0);
  TORCH_CHECK(path == 6 ? want_m_tiles == -1 || want_m_tiles == 8
                        : want_m_tiles == -1 || want_m_tiles == 1 || want_m_tiles == 2 || want_m_tiles == 4 ||
                              (want_m_tiles == 8 && path == 5),
              "w4a16_gemm: m_tiles must be -1 (by M), 1, 2, 4 or (path 5 only) 8, and path 6 takes only -1 or 8, got ",
              want_m_tiles, " for path ", path);
  int* counters = counters_for(x, stream);  // on every call, whatever the path: see counters_for
  const bool pdl = use_pdl(d);

  if (path == 1) {
    at::Tensor w16 = at::empty({N, K}, x.options());
    DequantParams dp{w.data_ptr(), s.data_ptr(), has_z ? z->data_ptr() : nullptr, w16.data_ptr(),
                     (int)N, (int)K, (int)gs};
    C10_CUDA_CHECK(launch_dequant(dp, fp16, has_z, stream, pdl));
    return at::mm(x, w16.t());
  }

  TORCH_CHECK(path >= 0 && path <= 6, "w4a16_gemm: path must be -1 (heuristic), 0, 1, 2, 3, 4, 5 or 6, got ", path);
  TORCH_CHECK(path < 5 || (d.major == 9 && d.minor == 0), "w4a16_gemm: path ", path,
              " (wgmma) runs on compute capability 9.0 (H100, H200) only, this GPU has ", d.major, ".", d.minor);
  TORCH_CHECK(path != 4 || (M <= 8 && (want_m_tiles == -1 || want_m_tiles == 1)),
              "w4a16_gemm: path 4 (swapped operands) takes M <= 8 and one m-tile, got M=", M, ", m_tiles=", want_m_tiles);
  at::Tensor y = at::empty({M, N}, x.options());
  const int mt = want_m_tiles > 0 ? (int)want_m_tiles : m_tiles_for(path, M);
  const int64_t m_blocks = (M + 16 * mt - 1) / (16 * mt);
  const int64_t n_blocks = (N + kMmaNBlock - 1) / kMmaNBlock;
  const int64_t kb_total = (K + kMmaKBlock - 1) / kMmaKBlock;
  TORCH_CHECK(M <= INT32_MAX && N * K <= ((int64_t)1 << 40), "w4a16_gemm: problem too large: M=", M, " N=", N,
              " K=", K);

  const int64_t ctas = m_blocks * n_blocks;
  int64_t splits = 1, kb_per_split = kb_total;
  StreamPlan plan{};
  const bool streaming = is_streaming(path), smem_ring = path == 3, swap = path == 4;
  if (streaming) {
    plan = plan_stream(M, K, gs, has_z, mt, smem_ring, ctas, stream_occupancy(fp16, has_z, mt, smem_ring, swap), d,
                       want_splits);
    TORCH_CHECK(plan.error != kPlanSmem, "w4a16_gemm: the streaming kernel needs ", plan.smem,
                " bytes of shared memory for M=", M, ", K=", K, "; this GPU allows ", d.smem_per_block);
    TORCH_CHECK(plan.error != kPlanSplitCtas, "w4a16_gemm: M=", M, " is too large for split-K in the streaming kernel");
    splits = plan.splits;
  } else {
    // Split K until one wave of resident CTAs is (nearly) full: memory-bound
    // decode needs every SM streaming weights.  Never more splits than k-blocks.
    const int occupancy = path == 6   ? wgmma_ws_occupancy(fp16, has_z)
                          : path == 5 ? wgmma_occupancy(fp16, has_z, mt)
                                      : mma_occupancy(fp16, has_z, mt);
    const int64_t slots = (int64_t)d.sms * occupancy;
    if (ctas < slots && ctas <= kCounterCapacity) splits = std::min<int64_t>(kb_total, slots / ctas);
    if (want_splits > 0) {
      TORCH_CHECK(want_splits == 1 || ctas <= kCounterCapacity, "w4a16_gemm: M=", M,
                  " is too large for split-K in the mma kernel");
      splits = std::min<int64_t>(kb_total, want_splits);
    }
    kb_per_split = (kb_total + splits - 1) / splits;
    splits = (kb_total + kb_per_split - 1) / kb_per_split;  // no empty splits
  }

  at::Tensor ws;
  if (splits > 1) ws = at::empty({splits, M, N}, x.options().dtype(at::kFloat));
  GemmParams p{};
  p.x = x.data_ptr();
  p.w = w.data_ptr();
  p.s = s.data_ptr();
  p.z = has_z ? z->data_ptr() : nullptr;
  p.y = y.data_ptr();
  p.workspace = splits > 1 ? ws.data_ptr<float>() : nullptr;
  p.counters = splits > 1 ? counters : nullptr;
  p.M = (int)M;
  p.N = (int)N;
  p.K = (int)K;
  p.group_size = (int)gs;
  p.group_shift = gs == K ? 31 : __builtin_ctzll((unsigned long long)gs);  // gs in {32, 64, 128}
  p.k_splits = (int)splits;
  p.kb_per_split = (int)kb_per_split;
  if (streaming) {
    p.kt_per_warp = (int)plan.kt_per_warp;
    p.groups = (int)(K / gs);
    p.groups_per_cta = (int)plan.groups_per_cta;
    p.s_off = (int)plan.s_off;
    p.z_off = (int)plan.z_off;
    p.ring_off = (int)plan.ring_off;
    C10_CUDA_CHECK(launch_stream(p, fp16, has_z, mt, smem_ring, swap, (int)m_blocks, (int)n_blocks, (int)plan.smem,
                                 stream, pdl));
  } else if (path == 5) {
    C10_CUDA_CHECK(launch_wgmma(p, fp16, has_z, mt, (int)m_blocks, (int)n_blocks, stream, pdl));
  } else if (path == 6) {
    C10_CUDA_CHECK(launch_wgmma_ws(p, fp16, has_z, (int)m_blocks, (int)n_blocks, stream, pdl));
  } else {
    C10_CUDA_CHECK(launch_mma(p, fp16, has_z, mt, (int)m_blocks, (int)n_blocks, stream, pdl));
  }
  return y;
}

at::Tensor w4a16_gemm_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& s,
                           const std::optional<at::Tensor>& z, int64_t gs) {
  return gemm_path(x, w, s, z, gs, -1, -1, -1);
}

// Column splits of the decode attention (attention_kernel.cu): none once the (b, h) pairs alone give 3/4
// of the SMs a CTA; otherwise as many as give every SM two CTAs, but at most one cluster's worth (8) and
// never runs of fewer than 32 columns.  Why the first rule (H100, 2026-12-06, eval/attention.py --splits,
// Llama-3-8B, 2/3 of the cache visible; BENCHMARKS.md "Decode attention at batch 8-64"): at 128 and 256
// pairs one split took 13.8 and 19.4 us at S = 384 (46.1 and 70.8 at 2,048) against 21.7 and 29.4 (62.7,
// 99.5) for the 3 and 2 of the two-per-SM rule: a split's fixed cost (q, the cluster combine) outweighs the
// SMs it fills once most of them have a pair.
// The 3/4 is a guess between the 64 and 128 pairs measured (batch 8 and 16).
int64_t decode_attention_splits(int64_t heads, int64_t S, int sms) {
  if (heads <= 0 || 4 * heads >= 3 * (int64_t)sms) return 1;
  const int64_t want = (2 * (int64_t)sms + heads - 1) / heads;
  return std::max<int64_t>(1, std::min<int64_t>({want, (S + 31) / 32, (int64_t)kAttnMaxSplits}));
}

// splits: -1 = decode_attention_splits; > 0 asks for that many (the count run can be lower: at most
// kAttnMaxSplits, one below sm_90, and no split may be empty). A benchmark knob (eval/attention.py).
// This step's keys and values for kv16_decode_step_attention (kernels/attention.py): rotated (RoPE, as q) and
// written into the cache at column *input_pos by the kernel before it reads that column.
struct StepArgs {
  const at::Tensor& k_new;  // (B, H, D), last dim contiguous
  const at::Tensor& v_new;
  const at::Tensor& input_pos;  // (1,) int64
};

// rope_cos, rope_sin: both or neither, (B, D/2) float32 with a contiguous last dim (q's RoPE; the step op's k_new
// too).  step: nullptr for kv16_decode_attention (the cache is only read).
at::Tensor decode_attention_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                                 const std::optional<at::Tensor>& rope_cos, const std::optional<at::Tensor>& rope_sin,
                                 int64_t want_splits, const StepArgs* step) {
  const char* op = step ? "kv16_decode_step_attention" : "kv16_decode_attention";
  TORCH_CHECK(q.is_cuda() && k.device() == q.device() && v.device() == q.device() && mask.device() == q.device(),
              op, ": q, k_cache, v_cache and mask must be on one CUDA device, got ", q.device(), ", ", k.device(),
              ", ", v.device(), ", ", mask.device());
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf, op,
              ": q must be bfloat16 or float16, got ", q.scalar_type());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type() &&
                  mask.scalar_type() == q.scalar_type(),
              op, ": k_cache, v_cache and mask must have q's dtype ", q.scalar_type(), ", got ", k.scalar_type(), ", ",
              v.scalar_type(), ", ", mask.scalar_type());
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && mask.dim() == 2, op,
              ": q (B, H, R, D), k_cache and v_cache (B, H, S, D), mask (B, S) expected, got ", q.dim(), ", ",
              k.dim(), " and ", mask.dim(), " dims");
  const int64_t B = q.size(0), H = q.size(1), R = q.size(2), D = q.size(3), S = k.size(2);
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == B && k.size(1) == H && k.size(3) == D &&
                  mask.size(0) == B && mask.size(1) == S,
              op, ": shapes disagree: q ", q.sizes(), ", k_cache ", k.sizes(), ", v_cache ", v.sizes(), ", mask ",
              mask.sizes());
  TORCH_CHECK(D == 64 || D == 128, op, ": head_dim must be 64 or 128, got ", D);
  TORCH_CHECK(R >= 1 && R <= kAttnMaxRows, op, ": 1 to ", kAttnMaxRows, " query rows per KV head, got ", R);
  TORCH_CHECK(B >= 1 && H >= 1 && S >= 1, op, ": empty problem: B=", B, " H=", H, " S=", S);
  TORCH_CHECK(k.is_contiguous() && v.is_contiguous(), op, ": k_cache and v_cache must be contiguous");
  const int64_t epl = D / 32;  // 16-bit values per lane and load
  TORCH_CHECK(q.stride(3) == 1 && q.stride(0) % epl == 0 && q.stride(1) % epl == 0 && q.stride(2) % epl == 0 &&
                  reinterpret_cast<uintptr_t>(q.data_ptr()) % (2 * epl) == 0,
              op, ": q needs a contiguous last dim and strides that are multiples of ", epl, ", got ", q.strides());
  TORCH_CHECK(reinterpret_cast<uintptr_t>(k.data_ptr()) % (2 * epl) == 0 &&
                  reinterpret_cast<uintptr_t>(v.data_ptr()) % (2 * epl) == 0,
              op, ": k_cache and v_cache must be ", 2 * epl, "-byte aligned (the kernel loads ", epl, " values at once)");
  TORCH_CHECK(mask.stride(1) == 1, op, ": mask needs a contiguous last dim, got strides ", mask.strides());
  TORCH_CHECK(B * H * S <= INT32_MAX, op, ": problem too large: B=", B, " H=", H, " S=", S);
  TORCH_CHECK(rope_cos.has_value() == rope_sin.has_value() && (rope_cos.has_value() || !step), op,
              step ? ": rope_cos and rope_sin are required" : ": rope_cos and rope_sin come together, got only one");
  for (const std::optional<at::Tensor>* o : {&rope_cos, &rope_sin}) {
    if (!o->has_value()) continue;
    const at::Tensor& t = o->value();
    TORCH_CHECK(t.device() == q.device() && t.scalar_type() == at::kFloat && t.dim() == 2 && t.size(0) == B &&
                    t.size(1) == D / 2 && t.stride(1) == 1,
                op, ": rope_cos and rope_sin must be float32 (B, D/2) = (", B, ", ", D / 2,
                ") on q's device with a contiguous last dim, got ", t.scalar_type(), " ", t.sizes(), " strides ",
                t.strides(), " on ", t.device());
  }
  if (step) {
    for (const at::Tensor* t : {&step->k_new, &step->v_new}) {
      TORCH_CHECK(t->device() == q.device() && t->scalar_type() == q.scalar_type() && t->dim() == 3 &&
                      t->size(0) == B && t->size(1) == H && t->size(2) == D && t->stride(2) == 1 &&
                      t->stride(0) % epl == 0 && t->stride(1) % epl == 0 &&
                      reinterpret_cast<uintptr_t>(t->data_ptr()) % (2 * epl) == 0,
                  op, ": k_new and v_new must be (B, H, D) = (", B, ", ", H, ", ", D, ") in q's dtype on its device, ",
                  "last dim contiguous, strides multiples of ", epl, ", ", 2 * epl, "-byte aligned, got ", t->sizes(),
                  " strides ", t->strides(), " at ", t->data_ptr());
    }
    TORCH_CHECK(step->k_new.strides() == step->v_new.strides(), op, ": k_new and v_new need the same strides, got ",
                step->k_new.strides(), " and ", step->v_new.strides());
    TORCH_CHECK(step->input_pos.device() == q.device() && step->input_pos.scalar_type() == at::kLong &&
                    step->input_pos.dim() == 1 && step->input_pos.size(0) == 1,
                op, ": input_pos must be one int64 cache column (shape (1,)) on q's device, got ",
                step->input_pos.sizes(), " ", step->input_pos.scalar_type());
  }
  c10::cuda::CUDAGuard guard(q.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const DeviceInfo& d = device_info(q.get_device());
  int64_t splits = want_splits > 0 ? want_splits : decode_attention_splits(B * H, S, d.sms);
  splits = d.major < 9 ? 1 : std::min({splits, S, (int64_t)kAttnMaxSplits});  // splits meet in a cluster: sm_90+
  const int64_t chunk = (S + splits - 1) / splits;
  splits = (S + chunk - 1) / chunk;  // no empty splits
  TORCH_CHECK(B <= 65535 && H <= 65535, op, ": B=", B, " and H=", H, " must be at most 65535 (grid)");

  at::Tensor y = at::empty({B, H, R, D}, q.options());
  AttnParams p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.mask = mask.data_ptr();
  p.y = y.data_ptr();
  p.q_sb = q.stride(0);
  p.q_sh = q.stride(1);
  p.q_sr = q.stride(2);
  p.mask_sb = mask.stride(0);
  if (rope_cos.has_value()) {
    p.rope_cos = rope_cos->data_ptr<float>();
    p.rope_sin = rope_sin->data_ptr<float>();
    p.rope_cos_sb = rope_cos->stride(0);
    p.rope_sin_sb = rope_sin->stride(0);
  }
  if (step) {
    p.k_new = step->k_new.data_ptr();
    p.v_new = step->v_new.data_ptr();
    p.new_sb = step->k_new.stride(0);
    p.new_sh = step->k_new.stride(1);
    p.input_pos = step->input_pos.data_ptr<int64_t>();
  }
  p.B = (int)B;
  p.H = (int)H;
  p.R = (int)R;
  p.S = (int)S;
  p.splits = (int)splits;
  p.chunk = (int)chunk;
  p.scale_log2 = (float)(1.4426950408889634 / std::sqrt((double)D));
  C10_CUDA_CHECK(launch_decode_attention(p, q.scalar_type() == at::kHalf, (int)D, stream, use_pdl(d)));
  return y;
}

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                            const std::optional<at::Tensor>& rope_cos, const std::optional<at::Tensor>& rope_sin,
                            int64_t want_splits) {
  return decode_attention_impl(q, k, v, mask, rope_cos, rope_sin, want_splits, nullptr);
}

// kv_cache (2, B, H, S, D) contiguous: keys kv_cache[0], values kv_cache[1], written in place.
at::Tensor decode_step_attention(const at::Tensor& q, const at::Tensor& k_new, const at::Tensor& v_new,
                                 const at::Tensor& kv_cache, const at::Tensor& mask, const at::Tensor& rope_cos,
                                 const at::Tensor& rope_sin, const at::Tensor& input_pos, int64_t want_splits) {
  TORCH_CHECK(kv_cache.dim() == 5 && kv_cache.size(0) == 2 && kv_cache.is_contiguous(),
              "kv16_decode_step_attention: kv_cache must be a contiguous (2, B, H, S, D), got ", kv_cache.sizes());
  const StepArgs step{k_new, v_new, input_pos};
  return decode_attention_impl(q, kv_cache[0], kv_cache[1], mask, rope_cos, rope_sin, want_splits, &step);
}

at::Tensor kv16_decode_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const at::Tensor& mask, const std::optional<at::Tensor>& rope_cos,
                                      const std::optional<at::Tensor>& rope_sin) {
  return decode_attention(q, k, v, mask, rope_cos, rope_sin, -1);
}

at::Tensor kv16_decode_step_attention_cuda(const at::Tensor& q, const at::Tensor& k_new, const at::Tensor& v_new,
                                           const at::Tensor& kv_cache, const at::Tensor& mask,
                                           const at::Tensor& rope_cos, const at::Tensor& rope_sin,
                                           const at::Tensor& input_pos) {
  return decode_step_attention(q, k_new, v_new, kv_cache, mask, rope_cos, rope_sin, input_pos, -1);
}

// lowbit::add_rms_norm (kernels/norm.py, csrc/norm_kernel.cu): h = x + r and y = RMSNorm(h) * weight, new
// contiguous tensors of x's shape.
std::tuple<at::Tensor, at::Tensor> add_rms_norm_cuda(const at::Tensor& x, const at::Tensor& r,
                                                     const at::Tensor& weight, double eps) {
  const char* op = "add_rms_norm";
  TORCH_CHECK(x.is_cuda() && r.device() == x.device() && weight.device() == x.device(), op,
              ": x, r and weight must be on one CUDA device, got ", x.device(), ", ", r.device(), ", ",
              weight.device());
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf, op,
              ": x must be bfloat16 or float16, got ", x.scalar_type());
  TORCH_CHECK(r.scalar_type() == x.scalar_type() && weight.scalar_type() == x.scalar_type(), op,
              ": r and weight must have x's dtype ", x.scalar_type(), ", got ", r.scalar_type(), " and ",
              weight.scalar_type());
  TORCH_CHECK(x.dim() >= 1 && r.sizes() == x.sizes(), op, ": x and r must have one shape (..., D), got ", x.sizes(),
              " and ", r.sizes());
  const int64_t D = x.size(-1);
  TORCH_CHECK(D >= kNormVec && D % kNormVec == 0 && D <= kNormMaxD, op, ": D must be a multiple of ", kNormVec,
              " up to ", kNormMaxD, ", got ", D);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == D && weight.stride(0) == 1, op, ": weight must be (D,) = (", D,
              ") with stride 1, got ", weight.sizes(), " strides ", weight.strides());
  TORCH_CHECK(x.stride(-1) == 1 && r.stride(-1) == 1, op, ": x and r need a contiguous last dim, got strides ",
              x.strides(), " and ", r.strides());
  const int64_t rows = x.numel() / D;
  TORCH_CHECK(rows <= INT32_MAX, op, ": at most ", INT32_MAX, " rows (grid.x), got ", rows);
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor h = at::empty(x.sizes(), x.options());
  at::Tensor y = at::empty(x.sizes(), x.options());
  if (rows == 0) return {h, y};
  // (rows, D) views where the leading dims collapse into one stride (model.py's tensors and slices), else copies.
  const at::Tensor x2 = x.reshape({rows, D}), r2 = r.reshape({rows, D});
  const int64_t xs = rows > 1 ? x2.stride(0) : D, rs = rows > 1 ? r2.stride(0) : D;
  auto aligned = [](const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; };
  TORCH_CHECK(xs % kNormVec == 0 && rs % kNormVec == 0 && aligned(x2) && aligned(r2) && aligned(weight), op,
              ": x, r and weight must be 16-byte aligned with row strides that are multiples of ", kNormVec,
              ", got row strides ", xs, " and ", rs, " at ", x2.data_ptr(), ", ", r2.data_ptr(), ", ",
              weight.data_ptr());
  NormParams p{};
  p.x = x2.data_ptr();
  p.r = r2.data_ptr();
  p.weight = weight.data_ptr();
  p.h = h.data_ptr();
  p.y = y.data_ptr();
  p.x_stride = xs;
  p.r_stride = rs;
  p.D = (int)D;
  p.eps = (float)eps;
  const DeviceInfo& d = device_info(x.get_device());
  C10_CUDA_CHECK(launch_add_rms_norm(p, rows, x.scalar_type() == at::kHalf, c10::cuda::getCurrentCUDAStream(),
                                     use_pdl(d)));
  return {h, y};
}

}  // namespace
}  // namespace lowbit

TORCH_LIBRARY_IMPL(lowbit, CUDA, m) {
  m.impl("w4a16_gemm", &lowbit::w4a16_gemm_cuda);
  m.impl("kv16_decode_attention", &lowbit::kv16_decode_attention_cuda);
  m.impl("kv16_decode_step_attention", &lowbit::kv16_decode_step_attention_cuda);
  m.impl("add_rms_norm", &lowbit::add_rms_norm_cuda);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gemm_path", &lowbit::gemm_path,
        "w4a16 GEMM with a forced path (-1 auto, 0 mma, 1 dequant+cuBLAS, 2 streaming, 3 streaming with a "
        "shared-memory ring, 4 streaming with swapped operands, M <= 8, 5 wgmma, 6 wgmma with a producer warp, both "
        "compute capability 9.0) and optionally a split-K count and m16 tiles per CTA (1, 2 or 4; 8 for paths 5, 6)",
        py::arg("x"), py::arg("packed_w"), py::arg("scales"), py::arg("zeros"), py::arg("group_size"),
        py::arg("path"), py::arg("splits") = -1, py::arg("m_tiles") = -1);
  m.def(
      "plan_stream",
      [](int64_t M, int64_t K, int64_t gs, bool has_z, int mt, int64_t ctas, int occupancy, int sms,
         int smem_per_sm, int smem_per_block, int64_t splits, bool smem_ring) {
        lowbit::DeviceInfo d;
        d.sms = sms;
        d.smem_per_sm = smem_per_sm;
        d.smem_per_block = smem_per_block;
        const lowbit::StreamPlan pl =
            lowbit::plan_stream(M, K, gs, has_z, mt, smem_ring, ctas, occupancy, d, splits);
        return std::vector<int64_t>{pl.splits, pl.kt_per_warp, pl.groups_per_cta, pl.s_off,
                                    pl.z_off,  pl.smem,        pl.ring_off,        pl.error};
      },
      "the streaming kernel's launch plan for a device description (tests): [splits, kt_per_warp, "
      "groups_per_cta, s_off, z_off, smem, ring_off, error] with error 0 = fits, 1 = shared memory too "
      "small (smem: what the shortest runs need), 2 = too many CTAs for split-K",
      py::arg("M"), py::arg("K"), py::arg("group_size"), py::arg("has_zeros"), py::arg("m_tiles"), py::arg("ctas"),
      py::arg("occupancy"), py::arg("sms"), py::arg("smem_per_sm"), py::arg("smem_per_block"),
      py::arg("splits") = -1, py::arg("smem_ring") = false);
  m.def("choose_path", &lowbit::choose_path,
        "0 = fused mma kernel, 1 = dequantize + cuBLAS, 2 = streaming, 3 = streaming with a shared-memory ring, "
        "4 = streaming with swapped operands, 5 = wgmma, 6 = wgmma with a producer warp (5 and 6 on compute capability "
        "9.0 only: `wgmma` says the GPU is one)",
        py::arg("M"), py::arg("N"), py::arg("K"), py::arg("wgmma") = false);
  m.def("decode_attention", &lowbit::decode_attention,
        "kv16_decode_attention with a forced number of column splits (-1: decode_attention_splits)",
        py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("mask"), py::arg("rope_cos") = py::none(),
        py::arg("rope_sin") = py::none(), py::arg("splits") = -1);
  m.def("decode_step_attention", &lowbit::decode_step_attention,
        "kv16_decode_step_attention with a forced number of column splits (-1: decode_attention_splits)",
        py::arg("q"), py::arg("k_new"), py::arg("v_new"), py::arg("kv_cache"), py::arg("mask"), py::arg("rope_cos"),
        py::arg("rope_sin"), py::arg("input_pos"), py::arg("splits") = -1);
  m.def("decode_attention_splits", &lowbit::decode_attention_splits,
        "the decode attention's column splits for heads = B * H_kv, S cache columns and a GPU of `sms` SMs",
        py::arg("heads"), py::arg("S"), py::arg("sms"));
}
