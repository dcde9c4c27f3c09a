#!/bin/bash
# on branch wip/attn-qrope, carry .carry/s44 and .carry/qrope_main: both builds at once (branch here, main's six
# files in a copy at /tmp/m), GPU tests of the branch, then end to end branch vs main one process after another,
# then memcheck, the --step microbench and a batch-1 profile as time allows.
set -o pipefail
export PYTHONUNBUFFERED=1
R="$PWD"; T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
before() { [ $(( $(date +%s) - T0 )) -lt "$1" ] || { echo "skipped (time): ${*:2}"; return 1; }; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
rm -rf /tmp/m && mkdir /tmp/m && tar --exclude=./.torch_extensions --exclude=./.git -cf - . | tar -xf - -C /tmp/m
for f in model.py kernels/__init__.py kernels/attention.py kernels/csrc/ops.cpp kernels/csrc/attention.h kernels/csrc/attention_kernel.cu; do
  cp ".carry/qrope_main/$f" "/tmp/m/$f"; done
(cd /tmp/m && TORCH_EXTENSIONS_DIR="$R/.torch_extensions/ab_main" python kernels/build.py > "$OUT/build_main.log" 2>&1) &
TORCH_EXTENSIONS_DIR="$R/.torch_extensions" python kernels/build.py > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
wait; el "builds: $(tail -1 $OUT/build.log) | main: $(tail -1 $OUT/build_main.log)"
export TORCH_EXTENSIONS_DIR="$R/.torch_extensions"
timeout 120 python -m pytest -q tests/test_attention.py -k "gpu" > "$OUT/t_att.log" 2>&1
el "tests[attention] rc=$? $(tail -1 "$OUT/t_att.log")"; grep -E "^E  |FAILED" "$OUT/t_att.log" | head -8
B="python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3 --quant int4-marlin --quant-output --batch 1,32"
timeout 130 $B --out "$OUT/e2e_qrope" > "$OUT/e2e_qrope.log" 2>&1; el "e2e qrope rc=$?"; grep -h " decode " "$OUT/e2e_qrope.log"
(cd /tmp/m && TORCH_EXTENSIONS_DIR="$R/.torch_extensions/ab_main" timeout 130 $B --out "$OUT/e2e_main" > "$OUT/e2e_main.log" 2>&1); el "e2e main rc=$?"; grep -h " decode " "$OUT/e2e_main.log"
before 430 memcheck && { timeout 70 compute-sanitizer --tool memcheck --error-exitcode 9 python -m pytest -q -x tests/test_attention.py \
  -k "step_kernel or step_opcheck" > "$OUT/san_rope.log" 2>&1; el "memcheck rc=$? $(grep 'ERROR SUMMARY' "$OUT/san_rope.log" | tail -1)"; }
before 500 attstep && { timeout 50 python eval/attention.py --batch 1,4,32 --seq 384,2048 --visible 0.67 --step --reps 10 --out "$OUT" \
  --tag _step > "$OUT/att_step.log" 2>&1; el "att step rc=$?"; grep -E "^\| [0-9]" "$OUT/att_step.log"; }
before 520 prof && { timeout 60 python eval/decode_profile.py --model llama-3-8b --batch 1 --quant int4-marlin --quant-output --top 10 \
  > "$OUT/prof_b1.log" 2>&1; el "prof rc=$?"; sed -n '/| kind/,/^$/p' "$OUT/prof_b1.log"; }
