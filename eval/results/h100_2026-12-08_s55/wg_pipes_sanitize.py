"""Under compute-sanitizer (memcheck, then racecheck and synccheck): path 5 forced through kernels.gemm_path on small
shapes that take every branch of v34's per-warpgroup copies: group 32, 64, 128 and one group per channel, with and
without zero points, N % 128 == 64 and K % 128 == 64 (warpgroup 1 without k-tiles in the last k-block), split-K;
each checked against the float reference (relative error under 1e-2, as eval/kernels.py checks).  Run from a tree
with the v34 patch (wip_wg_pipes.patch):
    compute-sanitizer --tool racecheck python wg_pipes_sanitize.py"""
import torch

import kernels

cases = [(20, 256, 512, 128, True, -1), (32, 192, 320, 64, False, -1), (17, 256, 384, 32, False, 2),
         (24, 192, 448, 32, True, -1), (40, 128, 576, -1, False, -1), (64, 256, 1024, 128, False, 4)]
for M, N, K, gs, sym, splits in cases:
    g = torch.Generator(device="cuda").manual_seed(M + N + K)
    groups = 1 if gs < 0 else K // gs
    q = torch.randint(0, 16, (N, K), generator=g, device="cuda", dtype=torch.uint8)
    s = (torch.rand(N, groups, generator=g, device="cuda") * 0.02 + 0.005).to(torch.bfloat16)
    z = None if sym else (-(torch.rand(N, groups, generator=g, device="cuda") * 8 + 4) * s.float()).to(torch.bfloat16)
    x = torch.randn(M, K, generator=g, device="cuda").to(torch.bfloat16)
    gsz = K if gs < 0 else gs
    pw, sp, zp = kernels.pack_w4(q, s, z, gsz)
    y = kernels.gemm_path(x, pw, sp, zp, gsz, 5, splits)
    w = kernels.dequantize(q, s, z, gsz, dtype=torch.bfloat16).float()
    ref = x.float() @ w.t()
    err = ((y.float() - ref).norm() / ref.norm()).item()
    print(f"M={M} N={N} K={K} group={gs} {'sym' if sym else 'zeros'} splits={splits}: rel err {err:.1e} "
          f"{'ok' if err < 1e-2 else 'FAILED'}", flush=True)
