#!/bin/bash
# s52's next2.sh (git show e6b7fd7:eval/results/h100_2026-12-07_s52/next2.sh) reordered for a shorter call (session
# of 2026-12-07 from 21:30 UTC: eleven failed machine starts left little device time): main against the combined
# branch first (main, both, main, both), then w4a16_glu_gemm under compute-sanitizer memcheck (glu_memcheck.py), the
# branches alone (glu, split-region), then the combined branch's decode profile without PDL; every step guarded
# against LIMIT seconds.  The trees: main with the s52 patches applied (../h100_2026-12-07_s52/glu/, split/; both),
# each put in .carry/<name> with `git archive <branch> | tar -x -C .carry/<name>` and named in the call's carry.
#   OUT=... LIMIT=520 bash eval/results/h100_2026-12-07_s53/next3.sh   (trees carried in .carry/<name>)
set -o pipefail; export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; LIMIT=${LIMIT:-560}; mkdir -p "$OUT"; T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
before() { [ $(( $(date +%s) - T0 )) -lt $(( LIMIT - $1 )) ] || { echo "skipped (time): ${*:2}"; return 1; }; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader; python -c "import torch; print(torch.__version__)"
R="$PWD"; TREES="glu split-region glu-split"
declare -A DIR=([main]="$R"); for t in $TREES; do DIR[$t]=/tmp/$t; rm -rf /tmp/$t && mkdir /tmp/$t && cp -r .carry/$t/. /tmp/$t; done
in_v() { local v=$1; shift; (cd "${DIR[$v]}" && TORCH_EXTENSIONS_DIR="$R/.torch_extensions/$v" "$@"); }
for v in main $TREES; do in_v $v python kernels/build.py > "$OUT/build_$v.log" 2>&1 & done; wait
el "builds: $(for v in main $TREES; do echo -n "$v $(tail -1 $OUT/build_$v.log) | "; done)"
in_v glu-split timeout 150 python -m pytest -q -x tests/test_glu.py tests/test_attention.py tests/test_kernels.py \
  -k "glu or (test_attention and gpu) or gpu_wgmma" > "$OUT/t_glu-split.log" 2>&1
el "tests[glu-split] rc=$? $(tail -1 "$OUT/t_glu-split.log")"; grep -E "^E  |FAILED" "$OUT/t_glu-split.log" | head -8
B="python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3 --quant int4-marlin --quant-output --batch 32"
e2e() { local n=$1 v=$2; before 70 "$n" || return
  in_v "$v" timeout 100 $B --out "$OUT/e2e_$n" > "$OUT/e2e_$n.log" 2>&1
  el "$n rc=$? $(grep -m1 "^| int4-marlin" "$OUT/e2e_$n/bench.md" 2>/dev/null) $(grep -m1 -o "compile + warm-up [0-9]* s" "$OUT/e2e_$n.log")"; }
e2e main1 main; e2e both1 glu-split; e2e main2 main; e2e both2 glu-split
M="$R/eval/results/h100_2026-12-07_s53/glu_memcheck.py"
before 100 memcheck && { in_v glu-split env PYTHONPATH=/tmp/glu-split timeout 90 compute-sanitizer --tool memcheck \
  python "$M" > "$OUT/memcheck.log" 2>&1; el "memcheck rc=$?"; grep -E "^M=|ERROR SUMMARY" "$OUT/memcheck.log"; }
e2e glu1 glu; e2e split1 split-region
before 45 profile && { in_v glu-split timeout 40 python eval/decode_profile.py --model llama-3-8b --batch 32 \
  --quant int4-marlin --quant-output --steps 16 --top 10 --no-pdl --json "$OUT/prof32_both.json" > "$OUT/prof32_both.log" 2>&1
  el "profile rc=$?"; sed -n '/^| kind/,/^$/p' "$OUT/prof32_both.log"; }
el done
