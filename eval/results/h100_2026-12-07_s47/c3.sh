#!/bin/bash
# Session 47 (2026-12-07, fifth session), call 3: the tree with v23 (path 5: weights, scales, zeros and x by bulk copies
# and a tensor map, no cp.async) checked and timed in full for BENCHMARKS.md.
#  1. build; every test in tests/test_kernels.py on the GPU (the streaming kernel's and the plan's included);
#  2. the full microbenchmark (default M list and schemes: cuBLAS bf16, tinygemm, ours sym/zeros);
#  3. end to end: int4-marlin batch 1 (head quantized), bf16 batch 32 (the 2.3x ratio's denominator).
set -o pipefail
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR="$PWD/.torch_extensions"
OUT=${OUT:-out}; mkdir -p "$OUT"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
before() { [ $(( $(date +%s) - T0 )) -lt "$1" ] || { echo "skipped (time): ${*:2}"; return 1; }; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
python -c "import torch; print(torch.__version__)"
python kernels/build.py > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
el "$(tail -1 "$OUT/build.log")"
timeout 240 python -m pytest -q tests/test_kernels.py > "$OUT/t_kernels.log" 2>&1
el "tests/test_kernels.py rc=$? $(tail -1 "$OUT/t_kernels.log")"; grep -E "^E  |FAILED|Fatal" "$OUT/t_kernels.log" | head -8
if before 330 microbench; then
  timeout 150 python eval/kernels.py --bandwidth --reps 8 --out "$OUT/kb_full" > "$OUT/kb_full.log" 2>&1
  el "microbench rc=$?"; sed -n '/## Sum/,$p' "$OUT/kb_full.log" | grep -E "^\|" | head -14
fi
B="python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3"
e2e() { local tag=$1 gate=$2; shift 2; before "$gate" "e2e $tag" || return
  timeout 90 $B "$@" --out "$OUT/e2e_$tag" > "$OUT/e2e_$tag.log" 2>&1; el "e2e $tag rc=$?"; grep -h " decode " "$OUT/e2e_$tag.log"; }
e2e int4_b1 420 --quant int4-marlin --quant-output --batch 1
e2e bf16_b32 500 --quant none --batch 32
el done
