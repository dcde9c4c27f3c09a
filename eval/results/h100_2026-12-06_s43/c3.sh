#!/bin/bash
# session 43 call 3 (optional): where the batch-32 decode step goes on the H100 (int4-marlin, head quantized)
set -o pipefail
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR="$PWD/.torch_extensions"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
python kernels/build.py > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
el "$(tail -1 $OUT/build.log)"
for b in ${BATCHES:-32 1}; do
  timeout 200 python eval/decode_profile.py --model llama-3-8b --batch $b --quant int4-marlin --quant-output --top 14 \
    > "$OUT/prof_b$b.log" 2>&1; el "prof b$b rc=$?"; sed -n '/| kind/,/^$/p' "$OUT/prof_b$b.log"
done
