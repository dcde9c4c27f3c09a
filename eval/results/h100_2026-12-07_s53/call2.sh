#!/bin/bash
# The second call of the session of 2026-12-07 from 21:30 UTC, right after next2.sh on the same warm machine (its
# builds in .torch_extensions/<tree> and its trees in /tmp/<tree> are reused; a fresh machine builds again):
#   TREE=<main|glu|split-region|glu-split> OUT=... bash eval/results/h100_2026-12-07_s53/call2.sh
# (1) w4a16_glu_gemm's fused launch under compute-sanitizer memcheck and racecheck (glu-split's tree, N=32768,
# K=256, M 17/32/64: glu_memcheck.py); (2) issue 4's standing table in TREE (the tree to be merged): int4-marlin
# (head quantized) at batch 32 twice, bf16 at 32, int4 at batch 1 and 64, batch 32 with --no-compile-once, each its
# own process, one after the other; (3) the kernel microbenchmark.  Guards sized for one 600-second call.
set -o pipefail; export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"; T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
before() { [ $(( $(date +%s) - T0 )) -lt "$1" ] || { echo "skipped (time): ${*:2}"; return 1; }; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader; python -c "import torch; print(torch.__version__)"
R="$PWD"; TREE=${TREE:-main}
declare -A DIR=([main]="$R"); for t in glu split-region glu-split; do DIR[$t]=/tmp/$t
  [ -d /tmp/$t ] || { mkdir /tmp/$t && cp -r .carry/$t/. /tmp/$t; }; done
in_v() { local v=$1; shift; (cd "${DIR[$v]}" && TORCH_EXTENSIONS_DIR="$R/.torch_extensions/$v" PYTHONPATH="${DIR[$v]}" "$@"); }
for v in glu-split $TREE; do in_v $v python kernels/build.py > "$OUT/build_$v.log" 2>&1 & done; wait
el "builds: $(tail -1 $OUT/build_glu-split.log) | $(tail -1 $OUT/build_$TREE.log)"
M="$R/eval/results/h100_2026-12-07_s53/glu_memcheck.py"
in_v glu-split timeout 150 compute-sanitizer --tool memcheck python "$M" > "$OUT/memcheck.log" 2>&1
el "memcheck rc=$?"; grep -E "^M=|ERROR SUMMARY" "$OUT/memcheck.log"
in_v glu-split timeout 150 compute-sanitizer --tool racecheck python "$M" > "$OUT/racecheck.log" 2>&1
el "racecheck rc=$?"; grep -E "^M=|RACECHECK SUMMARY|hazard" "$OUT/racecheck.log" | head -6
B="python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3"
e2e() { local n=$1 t=$2; shift 2; before "$t" "$n" || return
  in_v "$TREE" timeout 110 $B "$@" --out "$OUT/e2e_$n" > "$OUT/e2e_$n.log" 2>&1
  el "$n rc=$? $(grep -m1 -E "^\| (int4-marlin|none|bf16)" "$OUT/e2e_$n/bench.md" 2>/dev/null)"; }
Q="--quant int4-marlin --quant-output"
e2e int4_b32a 330 $Q --batch 32; e2e bf16_b32 380 --quant none --batch 32; e2e int4_b1 430 $Q --batch 1
e2e int4_b64 480 $Q --batch 64; e2e int4_b32b 530 $Q --batch 32
el done
