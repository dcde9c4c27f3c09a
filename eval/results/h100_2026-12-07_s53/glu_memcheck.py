"""Under compute-sanitizer: lowbit::w4a16_glu_gemm's fused launch at a small shape (N=32768, K=256; M 17, 32, 64),
checked against F.silu(gate) * up of w4a16_gemm's own output (exact).  Run from a tree with wip/glu's kernels:
    compute-sanitizer --tool memcheck python eval/results/h100_2026-12-07_s53/glu_memcheck.py"""
import torch
import torch.nn.functional as F

import kernels

N, K, GS = 32768, 256, 128
for M in (17, 32, 64):
    g = torch.Generator(device="cuda").manual_seed(M)
    q = torch.randint(0, 16, (N, K), generator=g, device="cuda", dtype=torch.uint8)
    s = (torch.rand(N, K // GS, generator=g, device="cuda") * 0.02 + 0.005).to(torch.bfloat16)
    z = (-(torch.rand(N, K // GS, generator=g, device="cuda") * 8 + 4) * s.float()).to(torch.bfloat16)
    x = torch.randn(M, K, generator=g, device="cuda").to(torch.bfloat16)
    pw, sp, zp = kernels.pack_w4(q, s, z, GS)
    fused = kernels.glu_fuses(M, N, K, torch.bfloat16, True, x.device)
    y = kernels.w4a16_gemm(x, pw, sp, zp, GS)
    got = kernels.w4a16_glu_gemm(x, pw, sp, zp, GS)
    torch.cuda.synchronize()
    want = F.silu(y[:, :N // 2]) * y[:, N // 2:]
    print(f"M={M} fused={fused} equal={torch.equal(got, want)} max|diff|={(got.float() - want.float()).abs().max():.3g}")
