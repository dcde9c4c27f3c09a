#!/bin/bash
# session 40: end-to-end rerun on the tree with the split-K sum change
set -o pipefail
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR="$PWD/.torch_extensions"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
python -c "import torch; print(torch.__version__)"
git log --oneline | head -1
python kernels/build.py > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
el "$(tail -1 $OUT/build.log)"
B="python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3"
timeout 280 $B --batch 1,32 --quant int4-marlin --quant-output --out "$OUT/e2e_int4" > "$OUT/e2e_int4.log" 2>&1
el "int4 rc=$?"
timeout 200 $B --batch 32 --quant none --out "$OUT/e2e_bf16" > "$OUT/e2e_bf16.log" 2>&1
el "bf16 rc=$?"
if [ $(( $(date +%s) - T0 )) -lt 430 ]; then
  timeout 150 python generate.py --model llama-3-8b --random-weights --quant int4-marlin --quant-output --batch 32 \
    --max-new-tokens 256 > "$OUT/gen32.log" 2>&1; el "generate rc=$?"; tail -25 "$OUT/gen32.log"
fi
grep -hE "^\|" "$OUT"/e2e_*/bench.md
