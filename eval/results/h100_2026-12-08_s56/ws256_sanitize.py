"""Under compute-sanitizer (memcheck, racecheck, synccheck): path 6 forced through kernels.gemm_path at 256-row
m-blocks (m_tiles=16, v35) on small shapes that take its branches: groups 32, 64, 128 and one per channel, with and
without zero points, N % 128 == 64 and K % 128 == 64, a partial last m-block, split-K (the consumers' own named
barrier in split_k_finish); then two 128-row cases (v35 moved their epilogue to the consumer threads too).  Each
checked against the float reference (relative error under 1e-2, as eval/kernels.py checks).  Run from a tree with
the v35 patch (wip_ws256.patch):
    compute-sanitizer --tool racecheck python ws256_sanitize.py"""
import torch

import kernels
from eval.kernels import make_quant, rel_err

cases = [(300, 192, 320, 64, False, -1, 16), (257, 256, 512, 128, True, 3, 16), (40, 128, 576, -1, False, -1, 16),
         (513, 256, 384, 32, False, -1, 16), (256, 128, 1024, 128, False, 4, 16),
         (100, 192, 320, 64, False, 2, 8), (129, 256, 1024, 128, True, -1, 8)]
for M, N, K, gs, sym, splits, mt in cases:
    gsz = K if gs < 0 else gs  # -1: one group per channel
    q, s, m = make_quant(N, K, gsz, "cuda", M + N + K)
    z = None if sym else m
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    y = kernels.gemm_path(x, *kernels.pack_w4(q, s, z, gsz), gsz, 6, splits, mt)
    err = rel_err(y, x.float() @ kernels.dequantize(q, s, z, gsz, dtype=torch.bfloat16).float().t())
    print(f"M={M} N={N} K={K} group={gs} {'sym' if sym else 'zeros'} splits={splits} m_tiles={mt}: rel err {err:.1e} "
          f"{'ok' if err < 1e-2 else 'FAILED'}", flush=True)
