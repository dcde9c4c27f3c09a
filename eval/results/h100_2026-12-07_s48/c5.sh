#!/bin/bash
# Session 48 (2026-12-07, fifth session), call 5, on the tree (path 5 v23): data for the next path-5 step.
#  1. build;
#  2. path thresholds after v23: path 5 forced against the default path at M = 12, 16 (path 2) and 65-256 (path 6),
#     two processes;
#  3. where the batch-32 decode step goes now (eval/decode_profile.py);
#  4. ncu's full set with per-SASS-line samples on path 5 at M = 32 (zeros, g128): gate_up, qkv, o, down.
set -o pipefail
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR="$PWD/.torch_extensions"
OUT=${OUT:-out}; mkdir -p "$OUT"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
before() { [ $(( $(date +%s) - T0 )) -lt "$1" ] || { echo "skipped (time): ${*:2}"; return 1; }; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
python kernels/build.py > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
el "$(tail -1 "$OUT/build.log")"
for n in 1 2; do
  before 150 "threshold $n" || break
  timeout 60 python eval/kernels.py --bandwidth --ms 12,16,65,96,128,256 --reps 8 \
    --schemes "ours_sym,ours_sym[wgmma],ours_asym,ours_asym[wgmma]" --out "$OUT/thr$n" > "$OUT/thr$n.log" 2>&1
  el "threshold $n rc=$?"; sed -n '/## Sum/,$p' "$OUT/thr$n.log" | grep -E "^\| [0-9]" | head -6
done
if before 200 profile; then
  timeout 120 python eval/decode_profile.py --model llama-3-8b --batch 32 --quant int4-marlin --quant-output \
    --steps 16 --top 14 --json "$OUT/prof32.json" > "$OUT/prof32.log" 2>&1
  el "decode_profile rc=$?"; tail -32 "$OUT/prof32.log"
fi
if before 330 ncu; then
  timeout 200 ncu --clock-control none --kernel-name regex:"w4a16_wgmma" --launch-count 4 --set full \
    --import-source yes -o "$OUT/p5" -f python -c "
import sys, torch; sys.path.insert(0, 'tests')
import kernels; from test_kernels import make_problem
for N, K in ((28672, 4096), (6144, 4096), (4096, 4096), (4096, 14336)):
    x, q, s, z = make_problem(32, N, K, 128, False, torch.bfloat16, 'cuda', 0)
    kernels.load_extension().gemm_path(x, *kernels.pack_w4(q, s, z, 128), 128, 5)
torch.cuda.synchronize()
" > "$OUT/p5.log" 2>&1; el "ncu rc=$?"
  ncu --import "$OUT/p5.ncu-rep" --print-details all > "$OUT/p5.txt" 2>&1
  ncu --import "$OUT/p5.ncu-rep" --page source --csv --print-source sass > "$OUT/p5_source.csv" 2>&1
  rm -f "$OUT/p5.ncu-rep"
  grep -E "w4a16_|Duration|Registers Per|Achieved Occupancy|Issue Slots Busy|Tensor|DRAM Throughput|Eligible Warps|No Eligible|Warp Cycles Per Issued" \
    "$OUT/p5.txt" | head -60
fi
el done
