"""Under compute-sanitizer (memcheck, then racecheck and synccheck): path 5 forced through kernels.gemm_path on small
shapes that take every branch of v34's per-warpgroup copies: group 32, 64, 128 and one group per channel, with and
without zero points, N % 128 == 64 and K % 128 == 64 (warpgroup 1 without k-tiles in the last k-block), split-K;
each checked against the float reference (relative error under 1e-2, as eval/kernels.py checks).  Run from a tree
with the v34 patch (wip_wg_pipes.patch):
    compute-sanitizer --tool racecheck python wg_pipes_sanitize.py"""
import torch

import kernels
from eval.kernels import make_quant, rel_err

cases = [(20, 256, 512, 128, True, -1), (32, 192, 320, 64, False, -1), (17, 256, 384, 32, False, 2),
         (24, 192, 448, 32, True, -1), (40, 128, 576, -1, False, -1), (64, 256, 1024, 128, False, 4)]
for M, N, K, gs, sym, splits in cases:
    gsz = K if gs < 0 else gs  # -1: one group per channel
    q, s, m = make_quant(N, K, gsz, "cuda", M + N + K)
    z = None if sym else m
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    y = kernels.gemm_path(x, *kernels.pack_w4(q, s, z, gsz), gsz, 5, splits)
    err = rel_err(y, x.float() @ kernels.dequantize(q, s, z, gsz, dtype=torch.bfloat16).float().t())
    print(f"M={M} N={N} K={K} group={gs} {'sym' if sym else 'zeros'} splits={splits}: rel err {err:.1e} "
          f"{'ok' if err < 1e-2 else 'FAILED'}", flush=True)
