#!/bin/bash
# Session 49, call 1: path 5 instrumented (w4a16_wgmma_trace.patch: s48's clock64 per k-block, plus per traced
# n-block and split the globaltimer at start, loop end, partials stored and exit).  M = 32 with zeros, g128:
# gate_up, qkv and o at the plan's split count, o with one split (32 CTAs, one per SM); the fourth launch of each.
set -o pipefail
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR="$PWD/.torch_extensions/trace"
OUT=${OUT:-out}; mkdir -p "$OUT"
P=eval/results/h100_2026-12-07_s49/trace/w4a16_wgmma_trace.patch
git apply "$P" || exit 1
python kernels/build.py > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
tail -1 "$OUT/build.log"
P5_TRACE=1 timeout 90 python -c "
import sys, torch; sys.path.insert(0, 'tests')
import kernels; from test_kernels import make_problem
for name, N, K, sp in (('gate_up', 28672, 4096, -1), ('qkv', 6144, 4096, -1), ('o', 4096, 4096, -1), ('o_s1', 4096, 4096, 1)):
    x, q, s, z = make_problem(32, N, K, 128, False, torch.bfloat16, 'cuda', 0)
    pk = kernels.pack_w4(q, s, z, 128)
    for r in range(4):
        kernels.gemm_path(x, *pk, 128, 5, sp)
        torch.cuda.synchronize(); print('LAUNCH', name, r, flush=True)
" > "$OUT/trace.txt" 2>&1; echo "rc=$?"
python - "$OUT/trace.txt" <<'PY'
import sys, statistics as st
launch = {}; cur = []
for l in open(sys.argv[1]):
    w = l.split()
    if w[:1] == ["LAUNCH"]: launch[(w[1], int(w[2]))] = cur; cur = []
    elif w[:1] in (["TRH"], ["TRK"], ["TRE"]): cur.append(w)
g = lambda w, k: int(w[w.index(k) + 1])
f = lambda v: "%d/%d/%d" % (min(v), st.median(v), max(v)) if v else "-"
for name in ("gate_up", "qkv", "o", "o_s1"):
    rows = launch.get((name, 3), [])
    for h in [w for w in rows if w[0] == "TRH"]:
        cta = h[4]; nkb = int(h[8]); cyc, ns = int(h[10]), int(h[12])
        ks = [w for w in rows if w[0] == "TRK" and w[4] == cta]
        lat = [g(w, "wait1") - g(w, "issue") for w in ks]
        blk = [g(w, "wait1") - g(w, "wait0") for w in ks]
        per = [g(b, "it") - g(a, "it") for a, b in zip(ks, ks[1:])]
        print(f"{name} cta {cta} sm {h[6]} nkb {nkb}: loop {cyc} cyc {ns} ns ({cyc / max(ns, 1):.2f} GHz); first wait ends "
              f"{g(ks[0], 'wait1')} cyc; issue->ready min/med/max {f(lat[1:])}; blocked {f(blk[1:])}; iteration {f(per)}")
    ends = [w for w in rows if w[0] == "TRE"]
    if ends:
        t0 = min(g(w, "start") for w in ends)
        for w in ends:
            s = g(w, "start")
            print(f"  {name} c {w[2]} z {w[4]} sm {w[6]}: start +{s - t0} ns, loop {g(w, 'loop') - s}, stored "
                  f"{g(w, 'stored') - g(w, 'loop')}, exit {g(w, 'exit') - g(w, 'stored')} ns after")
PY
