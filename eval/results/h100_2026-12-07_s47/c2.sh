#!/bin/bash
# Session 47, call 2 (same warm machine as call 1: its three extension builds are kept): the variant W (v22 or v23)
# checked further, then the end-to-end A/B in the other order.
#  1. every GPU kernel test but the streaming kernel's and the plan's (own process each), on W;
#  2. compute-sanitizer memcheck and racecheck over path 5 on W (odd N and K, groups 32/64/128, sym and zeros);
#  3. end to end batch 32: main, then W (call 1 ran W first); then batch 64 (path 5 at M = 64): W, main.
set -o pipefail
export PYTHONUNBUFFERED=1
W=${W:?v22 or v23}
OUT=${OUT:-out}; mkdir -p "$OUT"
R="$PWD"; T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
before() { [ $(( $(date +%s) - T0 )) -lt "$1" ] || { echo "skipped (time): ${*:2}"; return 1; }; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
in_v() {  # variant, command...: run in that variant's tree with its extension
  local v=$1; shift
  if [ "$v" = v22 ]; then (TORCH_EXTENSIONS_DIR="$R/.torch_extensions" "$@")
  else (cd /tmp/$v && TORCH_EXTENSIONS_DIR="$R/.torch_extensions/ab_$v" "$@"); fi; }
for v in main $W; do [ $v = v22 ] || [ -d /tmp/$v ] || { echo "no /tmp/$v: not the machine of call 1"; exit 1; }; done
in_v $W python kernels/build.py 2>&1 | tail -1
in_v $W timeout 150 python -m pytest -q tests/test_kernels.py -k "gpu and not stream_kernel and not plan" > "$OUT/t_all.log" 2>&1
el "tests[all $W] rc=$? $(tail -1 "$OUT/t_all.log")"; grep -E "^E  |FAILED|Fatal" "$OUT/t_all.log" | head -6
san() {  # tool
  in_v $W timeout 150 compute-sanitizer --tool "$1" --error-exitcode 9 python -c "
import sys, torch; sys.path.insert(0, 'tests')
from test_kernels import check_gpu
for M, N, K, gs, sym in ((17, 192, 320, 64, False), (33, 128, 4096, 32, False), (40, 192, 576, 576, True),
                         (64, 256, 320, 32, True), (20, 4096, 4096, 128, False)):
    check_gpu(M, N, K, gs, sym, torch.bfloat16, 5, 5)
" > "$OUT/san_$1.log" 2>&1
  el "sanitizer[$1] rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/san_$1.log" | tail -1)"; }
before 200 memcheck && san memcheck
before 260 racecheck && san racecheck
B="python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3 --quant int4-marlin --quant-output"
e2e() { before "$3" "e2e $1 $2" || return; in_v "$1" timeout 90 $B --batch $2 --out "$OUT/e2e_$1_$2" > "$OUT/e2e_$1_$2.log" 2>&1
  el "e2e $1 batch $2 rc=$?"; grep -h " decode " "$OUT/e2e_$1_$2.log"; }
e2e main 32 330
e2e $W 32 420
e2e $W 64 470
e2e main 64 500
el done
