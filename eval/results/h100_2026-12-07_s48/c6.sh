#!/bin/bash
# Session 48, call 6 (the tree, path 5 v23): path 5's split-K count at M = 32 and 64 per linear (the rule: splits =
# resident-CTA slots / CTAs, 8 for o and down, 5 for qkv, 1 for gate_up at 32 rows), forced 1-16, with zeros, g128.
set -o pipefail
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR="$PWD/.torch_extensions"
OUT=${OUT:-out}; mkdir -p "$OUT"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
python kernels/build.py > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
el "$(tail -1 "$OUT/build.log")"
S="ours_asym"; for s in 1 2 3 4 6 8 12 16; do S="$S,ours_asym[wgmma/s$s]"; done
for n in 1 2; do
  timeout 120 python eval/kernels.py --bandwidth --ms 32,64 --reps 8 --schemes "$S" --out "$OUT/sp$n" > "$OUT/sp$n.log" 2>&1
  el "splits $n rc=$?"
done
grep -E "M= +(32|64) ours" "$OUT/sp1.log" "$OUT/sp2.log" | sed 's/ *err=.*//' | awk '{print $1, $2, $3, $4, $5}' | sort -k1,1 -k2,2 -k4,4 | head -200
el done
