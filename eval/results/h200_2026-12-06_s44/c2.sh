#!/bin/bash
# next session, one H100 call (~7 min + start): (1) the attention's split counts at 64-96 pairs (the 3/4 rule's
# untimed range), (2) inductor's combo kernels A/B end to end (int4-marlin head quantized, batch 1 and 32), two
# processes on one machine, (3) batch 64 end to end, int4 and bf16 (our attention now runs there), (4) the GPU
# output code of SmolLM2's decode step (what each generated kernel of a layer does).
set -o pipefail
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR="$PWD/.torch_extensions"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
before() { [ $(( $(date +%s) - T0 )) -lt "$1" ] || { echo "skipped (time): ${*:2}"; return 1; }; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
python kernels/build.py > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
el "$(tail -1 $OUT/build.log)"
timeout 60 python eval/attention.py --batch 8,10,12,14 --seq 384,2048 --visible 0.67 --splits auto,1,2,3,4,5 --reps 10 \
  --out "$OUT" --tag _splits > "$OUT/att_splits.log" 2>&1; el "att splits rc=$?"
for combo in True False; do
  timeout 140 python -c "
import runpy, sys
import torch._inductor.config as c
c.combo_kernels = $combo
sys.argv = ['eval/bench.py', '--model', 'llama-3-8b', '--prompt-len', '128', '--max-new-tokens', '256', '--repeats', '3',
            '--quant', 'int4-marlin', '--quant-output', '--batch', '1,32', '--out', '$OUT/e2e_combo_$combo']
runpy.run_path('eval/bench.py', run_name='__main__')
" > "$OUT/e2e_combo_$combo.log" 2>&1; el "combo=$combo rc=$?"
  grep -h " decode \|Error" "$OUT/e2e_combo_$combo.log" | head -4
done
B="python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3 --batch 64"
before 420 e2e64 && { timeout 120 $B --quant int4-marlin --quant-output --out "$OUT/e2e64_int4" > "$OUT/e2e64_int4.log" 2>&1
  el "e2e64 int4 rc=$?"; grep -h " decode " "$OUT/e2e64_int4.log"; }
before 480 e2e64bf16 && { timeout 90 $B --quant none --out "$OUT/e2e64_bf16" > "$OUT/e2e64_bf16.log" 2>&1
  el "e2e64 bf16 rc=$?"; grep -h " decode " "$OUT/e2e64_bf16.log"; }
before 540 oc && { TORCH_LOGS=output_code timeout 55 python generate.py --model smollm2-135m --random-weights --quant int4-marlin \
  --batch 1 --max-new-tokens 8 --prompt-len 16 > "$OUT/oc.log" 2>&1; el "output code rc=$?"; }
grep -E "^\| [0-9]" "$OUT/att_splits.log"
