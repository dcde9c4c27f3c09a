#!/bin/bash
# For the next session (written 2026-12-08 after the device was paused; not run): kernels/NOTES.md v33's two
# diagnostics, ~150 s on one H100.  (1) path 5 at 32 rows with every k-block iteration split into its phases (the
# wgmma issue, the CTA barrier, the copies' issue and the "full" wait, the dequantization, the wgmma wait), per warp,
# on the four linears: a disposable copy of the tree with probe/w4a16_wgmma_phases.patch, its own extension folder.
# (2) the tensor core alone: 8 wgmma.m64nNk16 per warpgroup and k-block at N = 16, 32, 64, register or shared A,
# one group in flight or none, 1 or 2 CTAs per SM (probe/wgmma_rate.py).
#   OUT=... bash eval/results/h100_2026-12-08_s55/next.sh
set -o pipefail; export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"; HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$PWD
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader; python -c "import torch; print(torch.__version__)"
D=$ROOT/.torch_extensions/s55_probe_tree; rm -rf "$D"; mkdir -p "$D"
cp -r kernels eval "$D"/ && cp "$HERE"/probe/*.py "$D"/ && (cd "$D" && git apply -p1 "$HERE/probe/w4a16_wgmma_phases.patch")
cd "$D" || exit 1; export TORCH_EXTENSIONS_DIR=$ROOT/.torch_extensions/s55_probe
python kernels/build.py 2>&1 | tail -1
timeout 200 python probe.py > "$OUT/probe.out" 2>&1; echo "probe rc=$?"
python probe_sum.py "$OUT/probe.out" | tee "$OUT/probe_sum.md"; gzip -f "$OUT/probe.out"
timeout 200 python wgmma_rate.py 2>&1 | grep -v "^W1" | tee "$OUT/wgmma_rate.md" | tail -20
