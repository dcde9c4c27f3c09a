#!/bin/bash
# session 43 call 1 (main, dd3164b): issue 4's end-to-end set on an H100, then main's decode attention microbenchmark
set -o pipefail
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR="$PWD/.torch_extensions"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
python -c "import torch; print(torch.__version__)"; git log --oneline | head -1
python kernels/build.py > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
el "$(tail -1 $OUT/build.log)"
B="python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3"
timeout 230 $B --batch 1,16,32 --quant int4-marlin --quant-output --out "$OUT/e2e_int4" > "$OUT/e2e_int4.log" 2>&1
el "int4 rc=$?"; grep -h " decode " "$OUT/e2e_int4.log"
timeout 150 $B --batch 32 --quant none --out "$OUT/e2e_bf16" > "$OUT/e2e_bf16.log" 2>&1
el "bf16 rc=$?"; grep -h " decode " "$OUT/e2e_bf16.log"
timeout 100 python eval/attention.py --batch 1,4,8,16,32,64 --seq 384,2048 --visible 0.67 --reps 10 --out "$OUT" --tag _main \
  > "$OUT/att_main.log" 2>&1; el "att[main] rc=$?"
if [ $(( $(date +%s) - T0 )) -lt 440 ]; then
  timeout 130 python generate.py --model llama-3-8b --random-weights --quant int4-marlin --quant-output --batch 32 \
    --max-new-tokens 256 > "$OUT/gen32.log" 2>&1; el "generate rc=$?"
fi
if [ $(( $(date +%s) - T0 )) -lt 500 ]; then
  timeout 80 compute-sanitizer --tool memcheck --error-exitcode 9 python -m pytest -q -x tests/test_attention.py \
    -k "gpu_sweep or masks_as" > "$OUT/san_att_main.log" 2>&1
  el "memcheck[main attention] rc=$? $(grep 'ERROR SUMMARY' "$OUT/san_att_main.log" | tail -1)"
fi
tail -16 "$OUT/att_main.log"
grep -iE "tokens/s|first token|peak" "$OUT/gen32.log" | head -6
