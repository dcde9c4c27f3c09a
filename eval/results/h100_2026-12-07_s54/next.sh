#!/bin/bash
# For the next session (written 2026-12-08, not run): kernels/NOTES.md v32's next steps (1) and (2) on main, one
# machine, each line its own process: the full kernel microbenchmark (the README's kernel table is 2026-12-07's),
# then batch 32 compile-once against --no-compile-once, alternated, three processes each (9,700 in one run against
# 9,619-9,635 in s54).  Every step guarded against LIMIT seconds.
#   OUT=... LIMIT=540 bash eval/results/h100_2026-12-07_s54/next.sh        (about 400 s)
set -o pipefail; export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR="$PWD/.torch_extensions/main"
OUT=${OUT:-out}; LIMIT=${LIMIT:-540}; mkdir -p "$OUT"; T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
before() { [ $(( $(date +%s) - T0 )) -lt $(( LIMIT - $1 )) ] || { echo "skipped (time): ${*:2}"; return 1; }; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader; python -c "import torch; print(torch.__version__)"
git log --oneline -1 | cat
python kernels/build.py > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }; el "$(tail -1 "$OUT/build.log")"
if before 150 microbench; then
  timeout 140 python eval/kernels.py --bandwidth --reps 8 --out "$OUT/kb_full" > "$OUT/kb_full.log" 2>&1
  el "microbench rc=$?"; sed -n '/## Sum/,$p' "$OUT/kb_full.log" | grep -E "^\|" | head -14
fi
B="python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3 --quant int4-marlin"
e2e() { local n=$1; shift; before 50 "$n" || return
  timeout 100 $B --quant-output --batch 32 "$@" --out "$OUT/e2e_$n" > "$OUT/e2e_$n.log" 2>&1
  el "$n rc=$? $(grep -m1 "^| int4-marlin" "$OUT/e2e_$n/bench.md" 2>/dev/null)"; }
for i in 1 2 3; do e2e once$i; e2e whole$i --no-compile-once; done
el done
