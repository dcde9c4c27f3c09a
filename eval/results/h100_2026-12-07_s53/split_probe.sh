#!/bin/bash
# For the next session (written 2026-12-07 from 21:30 UTC; its probe ran inside ../h100_2026-12-07_s54/call1.sh):
# path 5's split-K count for Llama-3-8B's o and qkv at 17-32 rows, the one miss of the one-wave rule
# (kernels/NOTES.md v24 and "v30-v31 outcome"): s48's sweep
# (eval/results/h100_2026-12-07_s48/call6) gave o at M = 32 9.9-10.1 µs at 4 splits (8 k-blocks each) against
# 10.8-11.0 at the rule's 8 (4 k-blocks each), while qkv was best at the rule's 5 (12.4-12.6; 12.9-13.4 at 4).  5
# splits of o were not timed.  If o's best is 4 or 5 and qkv's stays 5, a rule "no split shorter than N k-blocks"
# goes into the split function with this run as its citation; then an end-to-end A/B at batch 32.
#   OUT=... bash eval/results/h100_2026-12-07_s53/split_probe.sh        (about 150 s)
set -o pipefail; export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR="$PWD/.torch_extensions/main"
OUT=${OUT:-out}; mkdir -p "$OUT"; T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
python kernels/build.py > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }; el "$(tail -1 "$OUT/build.log")"
S="ours_asym"; for s in 3 4 5 6 7 8; do S="$S,ours_asym[wgmma/s$s]"; done
for n in 1 2; do
  timeout 100 python eval/kernels.py --bandwidth --ms 17,32 --reps 8 --schemes "$S" --out "$OUT/sp$n" > "$OUT/sp$n.log" 2>&1
  el "splits $n rc=$?"
done
grep -hE "^  (qkv|o) +M= +(17|32) ours" "$OUT/sp1.log" "$OUT/sp2.log" | sed 's/ *GB\/s.*//' | sort -k1,1 -k3,3n -k4,4
el done
