#!/bin/bash
# One device call: build, GPU correctness, microbenchmark.  Logs under $OUT (or ./out).
# Usage (repo root):  bash kernels/devcheck.sh [quick|full]   (full: ~6-8 min on an H100, most of it the
# model-shape sweep; quick skips that sweep)
set -o pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR="$PWD/.torch_extensions"
OUT=${OUT:-out}; mkdir -p "$OUT"
MODE=${1:-full}
T0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
python kernels/build.py > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
tail -1 "$OUT/build.log"
t() { # name, timeout, pytest -k expression
  timeout "$2" python -m pytest -q tests/test_kernels.py -k "$3" > "$OUT/t_$1.log" 2>&1
  echo "tests[$1] rc=$? $(tail -1 "$OUT/t_$1.log")"; grep -E "^E  |FAILED|Fatal" "$OUT/t_$1.log" | head -8
}
t bad 60 "bad_inputs_cuda"
t core 150 "m_sweep or both_paths or opcheck_cuda or graph"
timeout 200 python eval/kernels.py --bandwidth --out "$OUT" > "$OUT/bench.log" 2>&1; echo "bench rc=$?"
timeout 60 python eval/kernels.py --ms 64,128,256,1024 --schemes "ours_sym[mma],ours_sym[dq]" --reps 10 --tag _paths \
  --out "$OUT" > "$OUT/bench_paths.log" 2>&1; echo "paths rc=$?"
[ "$MODE" = full ] && t models 300 "model_shapes"
echo "elapsed $(( $(date +%s) - T0 ))s"
grep -E "^\| [0-9]" "$OUT/bench_paths.log"
sed -n '/## Sum/,$p' "$OUT/bench.log" | grep -E "^\|"
