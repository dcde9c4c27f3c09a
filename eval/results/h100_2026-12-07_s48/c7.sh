#!/bin/bash
# Session 48, call 7 (the tree, path 5 v23): where the batch-32 decode step goes without PDL (with PDL a kernel's
# profiled duration includes its wait for the previous one), and inductor's generated code for the layer (the
# RMSNorm-like reductions took 5.6-6.8 us each per layer under PDL in call 5).
set -o pipefail
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR="$PWD/.torch_extensions"
OUT=${OUT:-out}; mkdir -p "$OUT"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
python kernels/build.py > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
el "$(tail -1 "$OUT/build.log")"
P="python eval/decode_profile.py --model llama-3-8b --batch 32 --quant int4-marlin --quant-output --steps 16 --top 10"
TORCH_LOGS=output_code timeout 150 $P --no-pdl --json "$OUT/prof32_nopdl.json" > "$OUT/prof32_nopdl.log" 2> "$OUT/output_code.log"
el "no PDL rc=$?"; sed -n '/| kind/,$p' "$OUT/prof32_nopdl.log" | cut -c1-160 | head -24
gzip -f "$OUT/output_code.log"
el done
