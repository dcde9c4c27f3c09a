#!/bin/bash
# session 43 call 4: the v19 decode attention on main with the new split rule and KERNEL_MAX_BATCH_HEADS 512:
# tests, microbenchmark (Llama-3-8B and Llama-2-7B shapes), end to end against SDPA in the same call, bf16 ratio.
set -o pipefail
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR="$PWD/.torch_extensions"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
before() { [ $(( $(date +%s) - T0 )) -lt "$1" ] || { echo "skipped (time): ${*:2}"; return 1; }; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
git log --oneline | head -1; git status --short | head
python kernels/build.py > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
el "$(tail -1 $OUT/build.log)"
timeout 120 python -m pytest -q tests/test_attention.py > "$OUT/t_att.log" 2>&1
el "tests[attention] rc=$? $(tail -1 "$OUT/t_att.log")"; grep -E "^E  |FAILED" "$OUT/t_att.log" | head -8
A="python eval/attention.py --seq 384,2048 --visible 0.67 --reps 10 --out $OUT"
timeout 60 $A --batch 1,4,8,16,32,64 --tag _l3 > "$OUT/att_l3.log" 2>&1; el "att[llama-3-8b] rc=$?"
timeout 60 $A --preset llama-2-7b --batch 1,4,16 --tag _l2 > "$OUT/att_l2.log" 2>&1; el "att[llama-2-7b] rc=$?"
B="python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3"
for a in kernel sdpa; do
  timeout 150 $B --batch 1,16,32 --quant int4-marlin --quant-output --decode-attention $a --out "$OUT/e2e_$a" \
    > "$OUT/e2e_$a.log" 2>&1; el "e2e[$a] rc=$?"; grep -h " decode \|Decode attention" "$OUT/e2e_$a.log"
done
before 420 bf16 && { timeout 100 $B --batch 32 --quant none --out "$OUT/e2e_bf16" > "$OUT/e2e_bf16.log" 2>&1
  el "bf16 rc=$?"; grep -h " decode \|Decode attention" "$OUT/e2e_bf16.log"; }
before 470 generate && { timeout 100 python generate.py --model llama-3-8b --random-weights --quant int4-marlin \
  --quant-output --batch 32 --max-new-tokens 256 > "$OUT/gen32.log" 2>&1; el "generate rc=$?"; }
before 500 racecheck && { timeout 80 compute-sanitizer --tool racecheck --error-exitcode 9 python -c "
import sys, torch; sys.path.insert(0, 'tests')
from test_attention import check_gpu
check_gpu(1, 8, 4, 300, 128, torch.bfloat16, 0)        # 8 splits in one cluster
check_gpu(32, 8, 4, 200, 128, torch.bfloat16, 1)       # one split (256 pairs)
check_gpu(2, 8, 2, 100, 64, torch.float16, 2, splits=3)
print('racecheck cases done')
" > "$OUT/san_race.log" 2>&1; el "racecheck rc=$? $(grep 'ERROR SUMMARY' "$OUT/san_race.log" | tail -1) $(grep -c done "$OUT/san_race.log")"; }
grep -E "^\| [0-9]" "$OUT/att_l3.log" "$OUT/att_l2.log" | sed 's/.*log://'
grep -iE "tokens/s total|first token" "$OUT/gen32.log" | head -3
