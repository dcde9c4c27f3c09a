#!/bin/bash
# Eighth session, call 3: end to end at batch 32 after (a) the two-stage greedy argmax (generate.argmax_rows) and
# (b) q's RoPE inside kv16_decode_attention (layers compiled once on torch < 2.14.1: one generated kernel per layer
# fewer), and an inductor knob on the norms' reductions (32 rows of 4,096 columns: inductor loops over each row
# twice; persistent reductions stop at 1,024 columns; TORCHINDUCTOR_MULTI_KERNEL=2 forces them persistent up to 16,384).
# One build (the tree's); the variants are copies of the tree with older Python files (BASE = the commit before both):
#   the attention GPU tests (the new rope test, the compiled Generator) | base (model.py, generate.py of BASE) | tree
#   | tree + MULTI_KERNEL=2 | argmax (model.py of BASE) | profile of tree | base and tree again, as time allows.
# Separate processes, one after the other.
set -o pipefail; export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"; T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
before() { [ $(( $(date +%s) - T0 )) -lt "$1" ] || { echo "skipped (time): ${*:2}"; return 1; }; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader; python -c "import torch; print(torch.__version__)"
export TORCH_EXTENSIONS_DIR="$PWD/.torch_extensions"
python kernels/build.py > "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }; el "build $(tail -1 $OUT/build.log)"
for v in base argmax; do rm -rf /tmp/$v && mkdir /tmp/$v && git archive HEAD | tar -xf - -C /tmp/$v && git show "$BASE:model.py" > /tmp/$v/model.py; done
git show "$BASE:generate.py" > /tmp/base/generate.py
B="python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3 --quant int4-marlin --quant-output --batch 32"
e2e() { local n=$1 dir=$2 t=$3; shift 3; before "$t" "$n" || return
  (cd "$dir" && env "$@" timeout 100 $B --out "$OUT/e2e_$n" > "$OUT/e2e_$n.log" 2>&1)
  el "$n rc=$? $(grep -m1 "^| int4-marlin" "$OUT/e2e_$n/bench.md" 2>/dev/null)"; }
timeout 80 python -m pytest -q tests/test_attention.py -k "gpu_rope or gpu_generator or gpu_model_decode or gpu_step_kernel" > "$OUT/t_att.log" 2>&1
el "tests rc=$? $(tail -1 "$OUT/t_att.log")"; grep -E "^E  |FAILED" "$OUT/t_att.log" | head -5
e2e base /tmp/base 200 X=1; e2e tree "$PWD" 270 X=1; e2e tree_mk2 "$PWD" 330 TORCHINDUCTOR_MULTI_KERNEL=2
e2e argmax /tmp/argmax 400 X=1
before 400 profile && { timeout 70 python eval/decode_profile.py --model llama-3-8b --batch 32 --quant int4-marlin --quant-output \
  --steps 16 --top 12 --json "$OUT/prof32.json" > "$OUT/prof32.log" 2>&1; el "profile rc=$?"; sed -n '/^| kind/,/^$/p;/Top/,$p' "$OUT/prof32.log" | head -30; }
e2e base2 /tmp/base 480 X=1; e2e tree2 "$PWD" 540 X=1
el done
