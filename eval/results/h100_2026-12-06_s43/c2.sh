#!/bin/bash
# session 43 call 2: the v19 decode attention (branch wip/attn-transpose-sum, ef016b2) swapped into main's tree:
# GPU tests, microbenchmark (against call 1's att_main on the same machine), end to end at batch 16/32 with the
# kernel forced (KERNEL_MAX_BATCH_HEADS raised here only), sanitizers.
set -o pipefail
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR="$PWD/.torch_extensions"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
before() { [ $(( $(date +%s) - T0 )) -lt "$1" ] || { echo "skipped (time): ${*:2}"; return 1; }; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
cp .carry/attn_new/attention_kernel.cu kernels/csrc/attention_kernel.cu
python kernels/build.py > "$OUT/build_new.log" 2>&1 || { tail -30 "$OUT/build_new.log"; exit 1; }
el "$(tail -1 $OUT/build_new.log)"
timeout 150 python -m pytest -q tests/test_attention.py -k gpu > "$OUT/t_att_new.log" 2>&1
el "tests[attention new] rc=$? $(tail -1 "$OUT/t_att_new.log")"; grep -E "^E  |FAILED" "$OUT/t_att_new.log" | head -8
timeout 100 python eval/attention.py --batch 1,4,8,16,32,64 --seq 384,2048 --visible 0.67 --reps 10 --out "$OUT" --tag _new \
  > "$OUT/att_new.log" 2>&1; el "att[new] rc=$?"; tail -16 "$OUT/att_new.log"
if before 330 e2e; then
  sed -i 's/^KERNEL_MAX_BATCH_HEADS = 32$/KERNEL_MAX_BATCH_HEADS = 1 << 20/' kernels/attention.py
  grep -n "^KERNEL_MAX_BATCH_HEADS" kernels/attention.py
  timeout 200 python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3 --batch 16,32 \
    --quant int4-marlin --quant-output --decode-attention kernel --out "$OUT/e2e_forced" > "$OUT/e2e_forced.log" 2>&1
  el "e2e forced rc=$?"; grep -h " decode \|Decode attention" "$OUT/e2e_forced.log"
  git checkout kernels/attention.py
fi
for tool in memcheck racecheck; do
  before 520 $tool || continue
  timeout 70 compute-sanitizer --tool $tool --error-exitcode 9 python -m pytest -q -x tests/test_attention.py \
    -k "gpu_sweep or masks_as" > "$OUT/san_att_new_$tool.log" 2>&1
  el "sanitizer[$tool] rc=$? $(grep 'ERROR SUMMARY' "$OUT/san_att_new_$tool.log" | tail -1)"
done
