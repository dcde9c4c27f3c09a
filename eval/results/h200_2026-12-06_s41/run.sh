#!/bin/bash
set -o pipefail
export PYTHONUNBUFFERED=1
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
git apply kernels/experiments/v17_path5_copy_engine.patch || exit 1
( cd .carry/head && TORCH_EXTENSIONS_DIR=$PWD/.te python kernels/build.py > "$OUT/build_head.log" 2>&1 ) &
TORCH_EXTENSIONS_DIR=$PWD/.torch_extensions python kernels/build.py > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
wait; el "built"
export TORCH_EXTENSIONS_DIR=$PWD/.torch_extensions
timeout 120 python -c "
import sys, torch; sys.path.insert(0, 'tests')
from test_kernels import check_gpu
n = 0
for M, N, K, gs, sym in ((17, 4096, 4096, 128, True), (32, 192, 320, 64, False), (33, 128, 4096, 32, False),
                         (64, 28672, 4096, 128, False), (20, 320, 576, 576, True), (48, 4160, 4160, 32, True), (5, 256, 192, 64, False)):
    for dt in (torch.bfloat16, torch.float16):
        for sp in (-1, 1, 3):
            check_gpu(M, N, K, gs, sym, dt, 7, 5, sp if K >= 384 else -1); n += 1
print('smoke ok', n)
" > "$OUT/smoke.log" 2>&1; el "smoke rc=$? $(tail -2 $OUT/smoke.log | tr '\n' ' ')"
B="--ms 17,32,48,64,128 --reps 10 --schemes ours_sym,ours_asym"
for r in 1 2; do
  (cd .carry/head && TORCH_EXTENSIONS_DIR=$PWD/.te timeout 100 python eval/kernels.py $B --tag _head_$r --out "$OUT" > "$OUT/bench_head_$r.log" 2>&1); el "head $r rc=$?"
  timeout 100 python eval/kernels.py $B --tag _v17_$r --out "$OUT" > "$OUT/bench_v17_$r.log" 2>&1; el "v17 $r rc=$?"
done
for f in head_1 v17_1 head_2 v17_2; do echo "== $f"; sed -n '/## Sum/,$p' "$OUT/bench_$f.log" | grep -E "^\|" ; done
timeout 200 python -m pytest -q tests/test_kernels.py -k "wgmma or forced_path or forced_splits or m_sweep or opcheck_cuda or graph" -x > "$OUT/t_core.log" 2>&1
el "tests rc=$? $(tail -1 $OUT/t_core.log)"; grep -E "^E  |FAILED" "$OUT/t_core.log" | head -8
