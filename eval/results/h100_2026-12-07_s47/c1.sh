#!/bin/bash
# Session 47 (2026-12-07, fourth session), call 1, in priority order (each step only while the call's time allows).
# Three builds of the extension: main (HEAD's three wgmma files, /tmp/m), v22 (the working tree: path 5's weights
# and scales by bulk copies, descriptors from one base) and v23 (/tmp/v23: v22 + x through a tensor map, no cp.async).
#  1. builds; path 5/6 GPU tests on v23 (on v22 only where v23 fails);
#  2. microbenchmark in alternating processes main / v23 / v22, main / v23 (M = 17, 32, 64: path 5);
#  3. end to end batch 32 (int4-marlin, head quantized, compile-once): v23, main; memcheck over path 5 on v23.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
R="$PWD"; T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
before() { [ $(( $(date +%s) - T0 )) -lt "$1" ] || { echo "skipped (time): ${*:2}"; return 1; }; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
python -c "import torch; print(torch.__version__)"
for v in main v23; do
  rm -rf /tmp/$v && mkdir /tmp/$v && tar --exclude=./.torch_extensions --exclude=./.git --exclude=./.carry -cf - . | tar -xf - -C /tmp/$v
  (cd .carry/s47/$v && find . -type f) | while read f; do cp ".carry/s47/$v/$f" "/tmp/$v/$f"; done
  (cd /tmp/$v && TORCH_EXTENSIONS_DIR="$R/.torch_extensions/ab_$v" python kernels/build.py > "$OUT/build_$v.log" 2>&1) &
done
TORCH_EXTENSIONS_DIR="$R/.torch_extensions" python kernels/build.py > "$OUT/build_v22.log" 2>&1 || { tail -30 "$OUT/build_v22.log"; exit 1; }
wait; el "builds: v22 $(tail -1 $OUT/build_v22.log) | main $(tail -1 $OUT/build_main.log) | v23 $(tail -1 $OUT/build_v23.log)"
in_v() {  # variant, command...: run in that variant's tree with its extension
  local v=$1; shift
  if [ "$v" = v22 ]; then (TORCH_EXTENSIONS_DIR="$R/.torch_extensions" "$@")
  else (cd /tmp/$v && TORCH_EXTENSIONS_DIR="$R/.torch_extensions/ab_$v" "$@"); fi; }
t() {  # variant, timeout, pytest -k expression (tests/test_kernels.py)
  in_v "$1" timeout "$2" python -m pytest -q tests/test_kernels.py -k "$3" > "$OUT/t_$1.log" 2>&1
  local rc=$?; el "tests[$1] rc=$rc $(tail -1 "$OUT/t_$1.log")"; grep -E "^E  |FAILED|Fatal" "$OUT/t_$1.log" | head -6; return $rc; }
SEL="gpu_wgmma or m_sweep or forced_paths or opcheck_cuda"
t v23 150 "$SEL"; ok23=$?
ok22=1; [ $ok23 = 0 ] || { t v22 150 "$SEL"; ok22=$?; }  # v22's tests only where v23 fails (device time)
KB="python eval/kernels.py --bandwidth --ms 17,32,64 --reps 8 --schemes ours_sym,ours_asym"
kb() { local v=$1 n=$2
  before 300 "bench $v$n" || return
  in_v "$v" timeout 60 $KB --out "$OUT/kb_$v$n" > "$OUT/kb_$v$n.log" 2>&1
  el "bench $v$n rc=$?"; sed -n '/## Sum/,$p' "$OUT/kb_$v$n.log" | grep -E "^\|" | head -8; }
kb main 1; [ $ok23 = 0 ] && kb v23 1; kb v22 1  # v22 untested unless v23 failed: its timings only
kb main 2; [ $ok23 = 0 ] && kb v23 2; [ $ok22 = 0 ] && kb v22 2
B="python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3 --quant int4-marlin --quant-output --batch 32"
e2e() { before "$2" "e2e $1" || return; in_v "$1" timeout 90 $B --out "$OUT/e2e_$1" > "$OUT/e2e_$1.log" 2>&1
  el "e2e $1 rc=$?"; grep -h " decode " "$OUT/e2e_$1.log"; }
[ $ok23 = 0 ] && e2e v23 400
e2e main 480
[ $ok22 = 0 ] && e2e v22 480
if [ $ok23 = 0 ] && before 500 memcheck; then
  in_v v23 timeout 70 compute-sanitizer --tool memcheck --error-exitcode 9 python -c "
import sys, torch; sys.path.insert(0, 'tests')
from test_kernels import check_gpu
for M, N, K, gs, sym in ((17, 192, 320, 64, False), (33, 128, 4096, 32, False), (40, 192, 576, 576, True)):
    check_gpu(M, N, K, gs, sym, torch.bfloat16, 5, 5)
" > "$OUT/san_memcheck_v23.log" 2>&1
  el "memcheck v23 rc=$? $(grep -E 'ERROR SUMMARY' "$OUT/san_memcheck_v23.log" | tail -1)"
fi
el done
