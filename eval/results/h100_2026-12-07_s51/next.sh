#!/bin/bash
# The next session's A/B (written in the eighth session of 2026-12-07; kernels/NOTES.md v27-v29), run from main's tree:
# builds main (the tree), branch wip/attn-qrope (v28: q's RoPE in kv16_decode_attention) and branch wip/add-rmsnorm
# (v29: lowbit::add_rms_norm) from `git archive`, each with its own extension folder, in parallel; then
#   PHASE=1: each branch's GPU tests (qrope: the rope kernel test, the step kernel, the compiled Generator; norm:
#            tests/test_norm.py's GPU tests and the compiled Generator), then batch 32 end to end (Llama-3-8B,
#            int4-marlin, head quantized, prompt 128, 256 new tokens, medians of 3) main, qrope, norm, main again;
#   PHASE=2: batch 32 norm, qrope, main (the other order), main with TORCHINDUCTOR_MULTI_KERNEL=2 (inductor's
#            reductions up to 16,384 columns in one persistent pass: the norms without our kernel), and the
#            decode profile of the norm branch (is each norm now ~1 us?).
# Separate processes, one after the other; guards sized for one 600-second call each.
set -o pipefail; export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; PHASE=${PHASE:-1}; mkdir -p "$OUT"; T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
before() { [ $(( $(date +%s) - T0 )) -lt "$1" ] || { echo "skipped (time): ${*:2}"; return 1; }; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader; python -c "import torch; print(torch.__version__)"
R="$PWD"; declare -A DIR=([main]="$R" [qrope]=/tmp/qrope [norm]=/tmp/norm)
for v in qrope norm; do rm -rf /tmp/$v && mkdir /tmp/$v && git archive "$([ $v = qrope ] && echo wip/attn-qrope || echo wip/add-rmsnorm)" | tar -xf - -C /tmp/$v; done
in_v() { local v=$1; shift; (cd "${DIR[$v]}" && TORCH_EXTENSIONS_DIR="$R/.torch_extensions/$v" "$@"); }
for v in main qrope norm; do in_v $v python kernels/build.py > "$OUT/build_$v.log" 2>&1 & done; wait
el "builds: $(for v in main qrope norm; do echo -n "$v $(tail -1 $OUT/build_$v.log) | "; done)"
B="python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3 --quant int4-marlin --quant-output --batch 32"
e2e() { local n=$1 v=$2 t=$3; shift 3; before "$t" "$n" || return
  in_v "$v" env "$@" timeout 100 $B --out "$OUT/e2e_$n" > "$OUT/e2e_$n.log" 2>&1
  el "$n rc=$? $(grep -m1 "^| int4-marlin" "$OUT/e2e_$n/bench.md" 2>/dev/null)"; }
tests() { local v=$1 t=$2; shift 2; before "$t" "tests $v" || return
  in_v "$v" timeout 90 python -m pytest -q "$@" > "$OUT/t_$v.log" 2>&1; el "tests[$v] rc=$? $(tail -1 "$OUT/t_$v.log")"
  grep -E "^E  |FAILED" "$OUT/t_$v.log" | head -5; }
if [ "$PHASE" = 1 ]; then
  tests qrope 150 tests/test_attention.py -k "gpu_rope or gpu_generator or gpu_step_kernel"
  tests norm 240 tests/test_norm.py tests/test_attention.py -k "gpu"
  e2e main1 main 320 X=1; e2e qrope1 qrope 390 X=1; e2e norm1 norm 460 X=1; e2e main2 main 530 X=1
else
  e2e norm2 norm 150 X=1; e2e qrope2 qrope 220 X=1; e2e main3 main 290 X=1
  e2e main_mk2 main 360 TORCHINDUCTOR_MULTI_KERNEL=2
  before 440 profile && { in_v norm timeout 90 python eval/decode_profile.py --model llama-3-8b --batch 32 --quant int4-marlin \
    --quant-output --steps 16 --top 12 --json "$OUT/prof32_norm.json" > "$OUT/prof32_norm.log" 2>&1; el "profile rc=$?"
    sed -n '/^| kind/,/^$/p;/Top/,$p' "$OUT/prof32_norm.log" | head -30; }
fi
el done
