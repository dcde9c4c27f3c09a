#!/bin/bash
# Session 46 (2026-12-07), one device call, in priority order (each step only while the call's time allows):
#  1. the scale-pair change of paths 5 and 6 (working tree; main = HEAD's two .cu files in /tmp/m): both builds,
#     the GPU tests of the changed kernels (every path 5/6 test: forced sweeps, m-blocks, splits, rounding, graphs);
#  2. microbenchmark A/B, alternating processes main / branch / main / branch: Llama-3-8B's four linears, g128, sym
#     and with zeros, M = 17, 32, 64 (path 5), 128 (path 6);
#     then the M sweep through the heuristic, every forced path, opcheck;
#  3. the attention GPU tests on the merged tree (compile_ab's owed check: the compiled Generator with and without
#     compile-once, through the step op where torch takes it);
#  4. e2e batch 32 (int4-marlin, head quantized, default compile-once): branch then main.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
R="$PWD"; T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
before() { [ $(( $(date +%s) - T0 )) -lt "$1" ] || { echo "skipped (time): ${*:2}"; return 1; }; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
rm -rf /tmp/m && mkdir /tmp/m && tar --exclude=./.torch_extensions --exclude=./.git --exclude=./.carry -cf - . | tar -xf - -C /tmp/m
(cd .carry/s46/main && find . -type f) | while read f; do cp ".carry/s46/main/$f" "/tmp/m/$f"; done
(cd /tmp/m && TORCH_EXTENSIONS_DIR="$R/.torch_extensions/ab_main" python kernels/build.py > "$OUT/build_main.log" 2>&1) &
TORCH_EXTENSIONS_DIR="$R/.torch_extensions" python kernels/build.py > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
wait; el "builds: $(tail -1 $OUT/build.log) | main: $(tail -1 $OUT/build_main.log)"
export TORCH_EXTENSIONS_DIR="$R/.torch_extensions"
t() {  # name, timeout, pytest -k expression (tests/test_kernels.py)
  timeout "$2" python -m pytest -q tests/test_kernels.py -k "$3" > "$OUT/t_$1.log" 2>&1
  el "tests[$1] rc=$? $(tail -1 "$OUT/t_$1.log")"; grep -E "^E  |FAILED|Fatal" "$OUT/t_$1.log" | head -8; }
t wgmma 140 "gpu_wgmma"
KB="python eval/kernels.py --bandwidth --ms 17,32,64,128 --reps 8"
kb() { local n=$1 w=$2; shift 2
  before 420 "bench $n" || return
  if [ "$w" = main ]; then (cd /tmp/m && TORCH_EXTENSIONS_DIR="$R/.torch_extensions/ab_main" timeout 70 $KB --out "$OUT/kb_$n" "$@" > "$OUT/kb_$n.log" 2>&1)
  else timeout 70 $KB --out "$OUT/kb_$n" "$@" > "$OUT/kb_$n.log" 2>&1; fi
  el "bench $n rc=$?"; sed -n '/## Sum/,$p' "$OUT/kb_$n.log" | grep -E "^\|" | head -12; }
kb main1 main --schemes "ours_sym,ours_asym"
kb pair1 branch --schemes "ours_sym,ours_asym"
before 400 core && t core 120 "m_sweep or forced_paths or opcheck_cuda"
kb main2 main --schemes "ours_sym,ours_asym"
kb pair2 branch --schemes "ours_sym,ours_asym"
if before 450 attention; then
  timeout 120 python -m pytest -q tests/test_attention.py -k gpu > "$OUT/t_attention.log" 2>&1
  el "tests[attention] rc=$? $(tail -1 "$OUT/t_attention.log")"; grep -E "^E  |FAILED|Fatal" "$OUT/t_attention.log" | head -8
fi
B="python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3 --quant int4-marlin --quant-output --batch 32"
if before 430 e2e; then timeout 110 $B --out "$OUT/e2e_pair" > "$OUT/e2e_pair.log" 2>&1; el "e2e pair rc=$?"; grep -h " decode " "$OUT/e2e_pair.log"; fi
if before 520 e2e_main; then (cd /tmp/m && TORCH_EXTENSIONS_DIR="$R/.torch_extensions/ab_main" timeout 75 $B --out "$OUT/e2e_main" > "$OUT/e2e_main.log" 2>&1)
  el "e2e main rc=$?"; grep -h " decode " "$OUT/e2e_main.log"; fi
el done
