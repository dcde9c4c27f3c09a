#!/bin/bash
# First session of the evening of 2026-12-07 (kernels/NOTES.md v27-v29): main against branch wip/both (v28, q's RoPE
# in kv16_decode_attention, and v29, lowbit::add_rms_norm, merged on main at 0b57840), run from main's tree.
# Each tree is built from `git archive` with its own extension folder, in parallel.
#   PHASE=1: wip/both's GPU tests (the rope kernel, the step kernel, test_norm.py, the compiled Generator), batch 32
#            end to end (Llama-3-8B, int4-marlin, head quantized, prompt 128, 256 new tokens, medians of 3) main,
#            both, main, both; then wip/both's decode profile (no PDL: each kernel's own time).
#   PHASE=2: the branches alone for attribution (qrope, norm), main, and main with TORCHINDUCTOR_MULTI_KERNEL=2
#            (inductor's one-pass norms, the control for v29).
# Separate processes, one after the other; guards sized for one 600-second call.
set -o pipefail; export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; PHASE=${PHASE:-1}; mkdir -p "$OUT"; T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
before() { [ $(( $(date +%s) - T0 )) -lt "$1" ] || { echo "skipped (time): ${*:2}"; return 1; }; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader; python -c "import torch; print(torch.__version__)"
R="$PWD"; declare -A REF=([both]=wip/both [qrope]=wip/attn-qrope [norm]=wip/add-rmsnorm)
declare -A DIR=([main]="$R" [both]=/tmp/both [qrope]=/tmp/qrope [norm]=/tmp/norm)
if [ "$PHASE" = 1 ]; then TREES="main both"; else TREES="main qrope norm"; fi
for v in $TREES; do [ $v = main ] || { rm -rf /tmp/$v && mkdir /tmp/$v && { [ -d .carry/$v ] && cp -r .carry/$v/. /tmp/$v || git archive "${REF[$v]}" | tar -xf - -C /tmp/$v; }; }; done
in_v() { local v=$1; shift; (cd "${DIR[$v]}" && TORCH_EXTENSIONS_DIR="$R/.torch_extensions/$v" "$@"); }
for v in $TREES; do in_v $v python kernels/build.py > "$OUT/build_$v.log" 2>&1 & done; wait
el "builds: $(for v in $TREES; do echo -n "$v $(tail -1 $OUT/build_$v.log) | "; done)"
B="python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3 --quant int4-marlin --quant-output --batch 32"
e2e() { local n=$1 v=$2 t=$3; shift 3; before "$t" "$n" || return
  in_v "$v" env "$@" timeout 100 $B --out "$OUT/e2e_$n" > "$OUT/e2e_$n.log" 2>&1
  el "$n rc=$? $(grep -m1 "^| int4-marlin" "$OUT/e2e_$n/bench.md" 2>/dev/null)"; }
tests() { local v=$1 t=$2; shift 2; before "$t" "tests $v" || return
  in_v "$v" timeout 120 python -m pytest -q "$@" > "$OUT/t_$v.log" 2>&1; el "tests[$v] rc=$? $(tail -1 "$OUT/t_$v.log")"
  grep -E "^E  |FAILED" "$OUT/t_$v.log" | head -8; }
if [ "$PHASE" = 1 ]; then
  tests both 100 tests/test_norm.py tests/test_attention.py -k "gpu"
  e2e main1 main 260 X=1; e2e both1 both 330 X=1; e2e main2 main 400 X=1; e2e both2 both 470 X=1
  before 490 profile && { in_v both timeout 75 python eval/decode_profile.py --model llama-3-8b --batch 32 --quant int4-marlin \
    --quant-output --steps 16 --top 14 --no-pdl --json "$OUT/prof32_both.json" > "$OUT/prof32_both.log" 2>&1; el "profile rc=$?"
    sed -n '/^| kind/,/^$/p;/Top/,$p' "$OUT/prof32_both.log" | head -32; }
else
  e2e qrope1 qrope 150 X=1; e2e norm1 norm 220 X=1; e2e main3 main 290 X=1
  e2e main_mk2 main 360 TORCHINDUCTOR_MULTI_KERNEL=2; e2e norm2 norm 430 X=1; e2e qrope2 qrope 500 X=1
fi
el done
