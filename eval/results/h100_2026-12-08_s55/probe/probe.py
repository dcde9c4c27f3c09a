"""Probe (s55, written 2026-12-08, not yet run): path 5 at 32 rows with zero points, g128, on Llama-3-8B's four
linears; the build patched by w4a16_wgmma_phases.patch prints, per warp, the cycles of each phase of its k-block
iterations (probe_sum.py sums them up).  Three eager launches per linear, each on another weight copy."""
import sys
import torch
import kernels
from eval.kernels import make_quant

gs = 128
for name, N, K in [("gate_up", 28672, 4096), ("down", 4096, 14336), ("qkv", 6144, 4096), ("o", 4096, 4096)]:
    q, s, m = make_quant(N, K, gs, "cuda", 0)
    pw = kernels.pack_w4(q, s, m, gs)
    copies = [tuple(t.clone() for t in pw) for _ in range(max(2, 4 * 62 * 2**20 // (N * K // 2) + 1))]
    x = torch.randn(32, K, device="cuda", dtype=torch.bfloat16)
    for i in range(3):
        print(f"=== {name} call {i}", flush=True)
        kernels.w4a16_gemm(x, *copies[i % len(copies)], gs)
        torch.cuda.synchronize()
        sys.stdout.flush()
    del copies
    torch.cuda.empty_cache()
