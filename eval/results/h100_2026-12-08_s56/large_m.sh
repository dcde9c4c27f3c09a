#!/bin/bash
# For the next session (written 2026-12-08 in a session without a device; not run), ~120 s on an H100 after
# ../h100_2026-12-08_s55/next.sh has built main into .torch_extensions/main.  kernels/NOTES.md v35: why path 6 (the
# wgmma kernel with a producer warp) runs Llama-3-8B's linears at M = 1,024 at ~75 % of the tensor core's peak while
# cuBLAS bf16 runs at ~98 %.  ncu's full set on four launches (six with MT16=1), in this order:
#   path 6 forced on gate_up (28,672 x 4,096), then (MT16=1, a tree with v35's wip_ws256.patch) the same at 256-row
#   m-blocks; the same for down (4,096 x 14,336); zero points, g128, M = 1,024;
#   cuBLAS bf16 (torch.mm on the dense weights) on the same two shapes.
# Then the forced paths side by side at M = 256-1,024 (eval/kernels.py, one process).
#   OUT=... LIMIT=200 [MT16=1] bash eval/results/h100_2026-12-08_s56/large_m.sh
set -o pipefail; export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; LIMIT=${LIMIT:-200}; mkdir -p "$OUT"; T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
before() { [ $(( $(date +%s) - T0 )) -lt $(( LIMIT - $1 )) ] || { echo "skipped (time): ${*:2}"; return 1; }; }
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions/main}
python kernels/build.py > "$OUT/build_large_m.log" 2>&1 || { tail -20 "$OUT/build_large_m.log"; exit 1; }
if before 100 ncu; then
  timeout 90 ncu --clock-control none --kernel-name regex:"w4a16_wgmma_ws|nvjet|gemm|xmma" --launch-count 6 \
    --set full -o "$OUT/large_m" -f python -c "
import sys, torch; sys.path.insert(0, 'tests')
import kernels; from test_kernels import make_problem
from kernels.reference import dequantize
ext = kernels.load_extension(); dense = []
for N, K in ((28672, 4096), (4096, 14336)):
    x, q, s, z = make_problem(1024, N, K, 128, False, torch.bfloat16, 'cuda', 0)
    packed = kernels.pack_w4(q, s, z, 128)
    for mt in ((8, 16) if '${MT16:-}' else (8,)):
        ext.gemm_path(x, *packed, 128, 6, -1, mt)
    dense.append((x, dequantize(q, s, z, 128, dtype=torch.bfloat16)))
for x, w in dense:
    torch.mm(x, w.t())
torch.cuda.synchronize()
" > "$OUT/large_m.log" 2>&1; el "ncu rc=$?"
  ncu --import "$OUT/large_m.ncu-rep" --print-details all > "$OUT/large_m.txt" 2>&1
  rm -f "$OUT/large_m.ncu-rep"
  grep -E "^  [a-z_]|Duration|Pipe Tensor|L1/TEX Cache Throughput|L2 Cache Throughput|DRAM Throughput|Issue Slots Busy|Eligible Warps Per|Warp Cycles Per Issued|Registers Per Thread|Shared Memory|Bank Conflicts|lts__t_sectors|L1: Data Pipe" \
    "$OUT/large_m.txt" | cut -c1-150 | head -90
fi
if before 60 paths; then
  timeout 55 python eval/kernels.py --bandwidth --ms 256,512,1024 --reps 8 \
    --schemes "cublas,ours_asym,ours_asym[ws],ours_asym[dq]${MT16:+,ours_asym[ws/mt16]}" --out "$OUT/kb_large_m" > "$OUT/kb_large_m.log" 2>&1
  el "kb large M rc=$?"; sed -n '/## Sum/,/^$/p' "$OUT/kb_large_m.log" | grep -E "^\| [0-9]"
fi
el done
