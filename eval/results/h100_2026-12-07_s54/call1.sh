#!/bin/bash
# Session of 2026-12-07 from 23:12 UTC, first call: the attention GPU tests on main (54b309d's alignment check),
# s53's split probe (path 5's forced split counts 3-8 for Llama-3-8B's four linears at M = 17 and 32), the
# candidate rule (wip/split-min, carried in .carry/splitmin: one CTA per SM when two per SM would leave path 5's
# splits under 6 k-blocks) at batch 32 end to end, main / split-min alternated, then issue 4's standing table on
# main (s52's next.sh: bf16 at 32, int4 at 1 and 64, --no-compile-once at 32), a second probe, more A/B runs
# (32, 17) and the full microbenchmark.  Each run its own process; every step guarded against LIMIT seconds.
#   OUT=... LIMIT=560 bash eval/results/h100_2026-12-07_s54/call1.sh
set -o pipefail; export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; LIMIT=${LIMIT:-560}; mkdir -p "$OUT"; T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
before() { [ $(( $(date +%s) - T0 )) -lt $(( LIMIT - $1 )) ] || { echo "skipped (time): ${*:2}"; return 1; }; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader; python -c "import torch; print(torch.__version__)"
R="$PWD"; declare -A DIR=([main]="$R" [splitmin]=/tmp/splitmin)
rm -rf /tmp/splitmin && mkdir /tmp/splitmin && cp -r .carry/splitmin/. /tmp/splitmin
in_v() { local v=$1; shift; (cd "${DIR[$v]}" && TORCH_EXTENSIONS_DIR="$R/.torch_extensions/$v" "$@"); }
for v in main splitmin; do in_v $v python kernels/build.py > "$OUT/build_$v.log" 2>&1 & done; wait
el "builds: main $(tail -1 $OUT/build_main.log) | splitmin $(tail -1 $OUT/build_splitmin.log)"
in_v main timeout 120 python -m pytest -q tests/test_attention.py -k gpu > "$OUT/t_attention.log" 2>&1
el "tests[attention gpu] rc=$? $(tail -1 "$OUT/t_attention.log")"; grep -E "^E  |FAILED" "$OUT/t_attention.log" | head -8
S="ours_asym"; for s in 3 4 5 6 7 8; do S="$S,ours_asym[wgmma/s$s]"; done
probe() { before 120 "probe $1" || return
  in_v main timeout 100 python eval/kernels.py --bandwidth --ms 17,32 --reps 8 --schemes "$S" --out "$OUT/sp$1" > "$OUT/sp$1.log" 2>&1
  el "probe $1 rc=$?"; }
B="python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3"
Q="--quant int4-marlin --quant-output"
e2e() { local n=$1 v=$2; shift 2; before 50 "$n" || return
  in_v "$v" timeout 100 $B "$@" --out "$OUT/e2e_$n" > "$OUT/e2e_$n.log" 2>&1
  el "$n rc=$? $(grep -m1 -E "^\| (int4-marlin|none|bf16)" "$OUT/e2e_$n/bench.md" 2>/dev/null) $(grep -m1 -o "compile + warm-up [0-9]* s" "$OUT/e2e_$n.log")"; }
probe 1
e2e main1 main $Q --batch 32; e2e sm1 splitmin $Q --batch 32; e2e main2 main $Q --batch 32; e2e sm2 splitmin $Q --batch 32
e2e bf16_b32 main --quant none --batch 32; e2e main_b1 main $Q --batch 1; e2e main_b64 main $Q --batch 64
e2e main_whole main $Q --no-compile-once --batch 32
probe 2
grep -hE "^  (qkv|o|down|gate_up) +M= +(17|32) ours" "$OUT"/sp?.log | sed 's/ *GB\/s.*//' | sort -k1,1 -k3,3n -k4,4
e2e main3 main $Q --batch 32; e2e sm3 splitmin $Q --batch 32; e2e main_b17 main $Q --batch 17; e2e sm_b17 splitmin $Q --batch 17
if before 150 "microbench"; then
  in_v main timeout 140 python eval/kernels.py --bandwidth --reps 8 --out "$OUT/kb_full" > "$OUT/kb_full.log" 2>&1
  el "microbench rc=$?"; sed -n '/## Sum/,$p' "$OUT/kb_full.log" | grep -E "^\|" | head -14
fi
el done
