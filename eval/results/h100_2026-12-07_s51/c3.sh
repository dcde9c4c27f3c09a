#!/bin/bash
# Eighth session, call 3: end to end at batch 32 after the two-stage greedy argmax (generate.argmax_rows), and two
# inductor knobs on the norms' reductions (32 rows of 4,096: inductor loops over each row twice; persistent reductions
# stop at 1,024 columns).  One tree, one build; "base" is the tree with generate.py from before the argmax change.
#   base | argmax | argmax + TORCHINDUCTOR_MULTI_KERNEL=2 (reductions up to 16,384 columns forced persistent)
#   | argmax + TORCHINDUCTOR_COOPERATIVE_REDUCTIONS=1 (small outputs split over CTAs); the decode step's profile with
# the argmax change; then base and argmax again; the compiled Generator's GPU tests as time allows.  Separate processes, one after the other.
set -o pipefail; export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"; T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
before() { [ $(( $(date +%s) - T0 )) -lt "$1" ] || { echo "skipped (time): ${*:2}"; return 1; }; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader; python -c "import torch; print(torch.__version__)"
export TORCH_EXTENSIONS_DIR="$PWD/.torch_extensions"
python kernels/build.py > "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }; el "build $(tail -1 $OUT/build.log)"
rm -rf /tmp/base && mkdir /tmp/base && git archive HEAD | tar -xf - -C /tmp/base && git show "$BASE:generate.py" > /tmp/base/generate.py
B="python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3 --quant int4-marlin --quant-output --batch 32"
e2e() { local n=$1; shift; before "$1" "$n" || return; shift
  (if [ "$n" = base ] || [ "${n%?}" = base ]; then cd /tmp/base; fi; env "$@" timeout 100 $B --out "$OUT/e2e_$n" > "$OUT/e2e_$n.log" 2>&1)
  el "$n rc=$? $(grep -m1 "^| int4-marlin" "$OUT/e2e_$n/bench.md" 2>/dev/null)"; }
e2e base 200 X=1; e2e argmax 280 X=1
e2e argmax_mk2 360 TORCHINDUCTOR_MULTI_KERNEL=2; e2e argmax_coop 430 TORCHINDUCTOR_COOPERATIVE_REDUCTIONS=1
before 440 profile && { timeout 80 python eval/decode_profile.py --model llama-3-8b --batch 32 --quant int4-marlin --quant-output \
  --steps 16 --top 12 --json "$OUT/prof32.json" > "$OUT/prof32.log" 2>&1; el "profile rc=$?"; sed -n '/Top/,$p' "$OUT/prof32.log" | head -16; }
e2e base2 450 X=1; e2e argmax2 500 X=1
before 500 tests && { timeout 75 python -m pytest -q tests/test_attention.py -k "gpu_generator or gpu_model_decode" > "$OUT/t_gen.log" 2>&1; el "tests rc=$? $(tail -1 "$OUT/t_gen.log")"; }
el done
