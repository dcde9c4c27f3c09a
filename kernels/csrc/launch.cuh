// Launch helpers shared by the kernel files (w4a16_kernel.cu, attention_kernel.cu): programmatic
// dependent launch on the device side, and the launcher that sets its attribute on the host side.
#pragma once
#include <cuda_runtime.h>

#include <type_traits>

namespace lowbit {

// Programmatic dependent launch (sm_90+; the host sets the launch attribute, see ops.cpp `use_pdl`).
// A kernel launched with it may start while the kernel before it in the stream is still running, as
// soon as that kernel's CTAs have all called launch_dependents (or exited).  Until pdl_wait() returns
// (the previous kernel finished and its writes are visible), a kernel may only read model constants:
// the GEMM reads its packed weights, scales and zeros (which the kernel just before the op must not
// write: the contract in kernels.w4a16_gemm's docstring), the decode attention nothing.  Inputs, the
// workspace, the counters and outputs come after it.  Without the attribute both instructions are
// no-ops.  The host sets it on sm_90+ GPUs only, and kernels/build.py always compiles for the GPU
// present, so code with the attribute always has the instructions (a build for an older target with
// PTX, JIT-compiled on Hopper, would have neither the wait nor any guard).
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
// Lets the next kernel (if launched with the attribute) start its own pre-wait part: called once a
// CTA has issued all its big reads.  The next kernel still waits for this one to finish before it
// touches anything this one writes.
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Compile-time values as arguments of generic lambdas (the launchers' dispatch to kernel templates).
template <typename T> struct Type { using type = T; };
template <int V> using Int = std::integral_constant<int, V>;

// kern<<<grid, block, smem, stream>>>(args...), with programmatic stream serialization when `pdl` (the
// host decides: sm_90+ only, see use_pdl in ops.cpp and pdl_wait above).
template <class Kern, class... Args>
cudaError_t launch(Kern kern, dim3 grid, int block, int smem, cudaStream_t stream, bool pdl, const Args&... args) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(block);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = &attr;
  cfg.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kern, args...);
}

}  // namespace lowbit
