#!/bin/bash
# Session 48, call 8: path 5 instrumented (trace/w4a16_wgmma_trace.patch: clock64 per k-block of up to 8 CTAs -- when warp 0's
# lane 0 issues the stage, when thread 0 starts and ends its wait on the stage's mbarrier, when each iteration
# starts -- kept in a __device__ buffer and printed by a separate one-thread kernel after each launch when P5_TRACE
# is set).  Gate_up (28672 x 4096) and o (4096 x 4096) at M = 32 with zeros, g128, path 5; the fourth launch of each.
set -o pipefail
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR="$PWD/.torch_extensions/trace"
OUT=${OUT:-out}; mkdir -p "$OUT"
P=eval/results/h100_2026-12-07_s48/trace/w4a16_wgmma_trace.patch  # changes the tree's path 5 (lines marked TRACE)
git apply "$P" 2>/dev/null || patch -p1 < "$P" || exit 1
python kernels/build.py > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
tail -1 "$OUT/build.log"
P5_TRACE=1 timeout 60 python -c "
import sys, torch; sys.path.insert(0, 'tests')
import kernels; from test_kernels import make_problem
for N, K in ((28672, 4096), (4096, 4096)):
    x, q, s, z = make_problem(32, N, K, 128, False, torch.bfloat16, 'cuda', 0)
    pk = kernels.pack_w4(q, s, z, 128)
    for r in range(4):
        kernels.load_extension().gemm_path(x, *pk, 128, 5)
        torch.cuda.synchronize(); print('LAUNCH', N, r, flush=True)
" > "$OUT/trace.txt" 2>&1; echo "rc=$?"
python - "$OUT/trace.txt" <<'PY'
import sys, statistics as st
launch = {}; cur = []; hdr = {}
for l in open(sys.argv[1]):
    w = l.split()
    if w[:1] == ["LAUNCH"]: launch[(int(w[1]), int(w[2]))] = cur; cur = []
    elif w[:1] in (["TRH"], ["TRK"]): cur.append(w)
for N in (28672, 4096):
    rows = launch.get((N, 3), [])
    for h in [w for w in rows if w[0] == "TRH"]:
        cta = h[4]; nkb = int(h[8]); cyc, ns = int(h[10]), int(h[12])
        ks = [w for w in rows if w[0] == "TRK" and w[4] == cta]
        g = lambda w, k: int(w[w.index(k) + 1])
        lat = [g(w, "wait1") - g(w, "issue") for w in ks]
        blk = [g(w, "wait1") - g(w, "wait0") for w in ks]
        per = [g(b, "it") - g(a, "it") for a, b in zip(ks, ks[1:])]
        f = lambda v: "%d/%d" % (st.median(v), max(v)) if v else "-"
        print(f"N {N} cta {cta} sm {h[6]} nkb {nkb}: {cyc} cycles {ns} ns ({cyc / max(ns, 1):.2f} GHz); first wait ends "
              f"{g(ks[0], 'wait1')}; issue->ready med/max {f(lat[1:])}; blocked in wait {f(blk[1:])}; iteration {f(per)}")
PY
