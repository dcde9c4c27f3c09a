#!/bin/bash
# The next session's first call (written in the evening session of 2026-12-07): issue 4's standing table on main
# after v28 + v29 (919dae7 and later), one machine, each line its own process, one after the other:
#   int4-marlin (head quantized) at batch 32 twice, bf16 at 32 (the 2.3x ratio's denominator; v28 and v29 speed it
#   too), int4-marlin at batch 1 and 64, batch 32 with the whole model compiled (--no-compile-once: the step op takes
#   k's RoPE and the cache write too on torch 2.11), then the full kernel microbenchmark (default M list).
# All but the microbenchmark ran inside ../h100_2026-12-07_s54/call1.sh (2026-12-08).
# Guards sized for one 600-second call.
set -o pipefail; export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR="$PWD/.torch_extensions/main"
OUT=${OUT:-out}; mkdir -p "$OUT"; T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
before() { [ $(( $(date +%s) - T0 )) -lt "$1" ] || { echo "skipped (time): ${*:2}"; return 1; }; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader; python -c "import torch; print(torch.__version__)"
git log --oneline -1 | cat
python kernels/build.py > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }; el "$(tail -1 "$OUT/build.log")"
B="python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3"
e2e() { local n=$1 t=$2; shift 2; before "$t" "$n" || return
  timeout 110 $B "$@" --out "$OUT/e2e_$n" > "$OUT/e2e_$n.log" 2>&1
  el "$n rc=$? $(grep -m1 -E "^\| (int4-marlin|none|bf16)" "$OUT/e2e_$n/bench.md" 2>/dev/null)"; }
Q="--quant int4-marlin --quant-output"
e2e int4_b32a 100 $Q --batch 32; e2e bf16_b32 160 --quant none --batch 32; e2e int4_b32b 230 $Q --batch 32
e2e int4_b1 290 $Q --batch 1; e2e int4_b64 340 $Q --batch 64; e2e int4_b32_whole 400 $Q --no-compile-once --batch 32
if before 450 microbench; then
  timeout 140 python eval/kernels.py --bandwidth --reps 8 --out "$OUT/kb_full" > "$OUT/kb_full.log" 2>&1
  el "microbench rc=$?"; sed -n '/## Sum/,$p' "$OUT/kb_full.log" | grep -E "^\|" | head -14
fi
el done
