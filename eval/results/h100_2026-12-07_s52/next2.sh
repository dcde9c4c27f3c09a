#!/bin/bash
# The next session's first call (written in the evening session of 2026-12-07): main against branches wip/glu (v30:
# SiLU-mul in the gate/up GEMM's epilogue), wip/split-region (v31: each layer compiled once as two regions, the step
# op between them) and wip/glu-split (both), run from main's tree with each branch's tree carried in .carry/<name>:
#   for b in glu split-region glu-split; do rm -rf .carry/$b; mkdir -p .carry/$b; git archive wip/$b | tar -x -C .carry/$b; done
#   (a branch made in a worktree does not reach the device; carry [".carry/glu", ".carry/split-region", ".carry/glu-split"]).
# Builds the four trees in parallel (own extension folders); the combined branch's GPU tests (test_glu.py, the
# attention and generator GPU tests, path 5/6 kernel tests); batch 32 end to end (Llama-3-8B, int4-marlin, head
# quantized, prompt 128, 256 new tokens, medians of 3) main, glu-split, glu, split-region, main, glu-split; then
# glu-split's decode profile without PDL.  Each run its own process, one after the other; guards for a 600-s call.
set -o pipefail; export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"; T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
before() { [ $(( $(date +%s) - T0 )) -lt "$1" ] || { echo "skipped (time): ${*:2}"; return 1; }; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader; python -c "import torch; print(torch.__version__)"
R="$PWD"; TREES="glu split-region glu-split"
declare -A DIR=([main]="$R"); for t in $TREES; do DIR[$t]=/tmp/$t; rm -rf /tmp/$t && mkdir /tmp/$t && cp -r .carry/$t/. /tmp/$t; done
in_v() { local v=$1; shift; (cd "${DIR[$v]}" && TORCH_EXTENSIONS_DIR="$R/.torch_extensions/$v" "$@"); }
for v in main $TREES; do in_v $v python kernels/build.py > "$OUT/build_$v.log" 2>&1 & done; wait
el "builds: $(for v in main $TREES; do echo -n "$v $(tail -1 $OUT/build_$v.log) | "; done)"
in_v glu-split timeout 170 python -m pytest -q tests/test_glu.py tests/test_attention.py tests/test_kernels.py \
  -k "glu or (test_attention and gpu) or gpu_wgmma" > "$OUT/t_glu-split.log" 2>&1
el "tests[glu-split] rc=$? $(tail -1 "$OUT/t_glu-split.log")"; grep -E "^E  |FAILED" "$OUT/t_glu-split.log" | head -8
B="python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3 --quant int4-marlin --quant-output --batch 32"
e2e() { local n=$1 v=$2 t=$3; before "$t" "$n" || return
  in_v "$v" timeout 100 $B --out "$OUT/e2e_$n" > "$OUT/e2e_$n.log" 2>&1
  el "$n rc=$? $(grep -m1 "^| int4-marlin" "$OUT/e2e_$n/bench.md" 2>/dev/null) $(grep -m1 -o "compile + warm-up [0-9]* s" "$OUT/e2e_$n.log")"; }
e2e main1 main 260; e2e both1 glu-split 320; e2e glu1 glu 380; e2e split1 split-region 440; e2e main2 main 500
e2e both2 glu-split 540
before 560 profile && { in_v glu-split timeout 40 python eval/decode_profile.py --model llama-3-8b --batch 32 \
  --quant int4-marlin --quant-output --steps 16 --top 10 --no-pdl --json "$OUT/prof32_both.json" > "$OUT/prof32_both.log" 2>&1
  el "profile rc=$?"; sed -n '/^| kind/,/^$/p' "$OUT/prof32_both.log"; }
el done
