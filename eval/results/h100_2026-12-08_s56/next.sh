#!/bin/bash
# For the next session (written 2026-12-08 in a session without a device; not run): ~740 s on one H100 in two
# calls, after ../h100_2026-12-08_s55/next.sh (it builds main into .torch_extensions/main); run from the repository
# root; each step guarded against LIMIT.
# kernels/NOTES.md v35: path 6 with a producer warpgroup (setmaxnreg) and 256-row m-blocks (wip_ws256.patch, branch
# wip/ws256), in a disposable copy of the tree:
#   1. build; the path-6 GPU tests (128 and 256 rows, forced m-tiles, the bad-knob checks);
#   2. compute-sanitizer memcheck, racecheck and synccheck on ws256_sanitize.py's seven shapes;
#   3. the microbenchmark at M = 128-1,024: main's path 6 against v35's at 128 and 256 rows, cuBLAS and path 1 beside
#      them, alternated (main, v35, main, v35);
#   4. large_m.sh on the v35 tree (MT16=1): ncu's full set on path 6 at 128 and 256 rows and on cuBLAS, M = 1,024;
#   5. on main, path 5 at 48-64 rows as two 32-row m-blocks (two CTAs per SM, each weight dequantized twice) against
#      its one 64-row m-block (158-162 registers: one CTA per SM), last timed at the v11 stage.
# Steps 1-2 take up to ~400 s on the GPU, 3-4 ~340 s: PART=a runs 1-2, PART=b 3-4 (each builds first, cached).
#   OUT=... LIMIT=560 [PART=a|b] bash eval/results/h100_2026-12-08_s56/next.sh
set -o pipefail; export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; LIMIT=${LIMIT:-560}; PART=${PART:-ab}; mkdir -p "$OUT"; T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
before() { [ $(( $(date +%s) - T0 )) -lt $(( LIMIT - $1 )) ] || { echo "skipped (time): ${*:2}"; return 1; }; }
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$PWD; EXT=$ROOT/.torch_extensions
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader; python -c "import torch; print(torch.__version__)"
V35=$EXT/s56_v35_tree; rm -rf "$V35"; mkdir -p "$V35"; cp -r kernels eval tests ./*.py README.md "$V35"/
cp "$HERE"/ws256_sanitize.py "$HERE"/large_m.sh "$V35"/; (cd "$V35" && git apply -p1 "$HERE/wip_ws256.patch") || exit 1
build() { (cd "$2" && TORCH_EXTENSIONS_DIR=$3 python kernels/build.py > "$OUT/build_$1.log" 2>&1)
  el "$1 $(tail -1 "$OUT/build_$1.log")"; }
build main "$ROOT" "$EXT/main"; build v35 "$V35" "$EXT/s56_v35"
cd "$V35" || exit 1; export TORCH_EXTENSIONS_DIR=$EXT/s56_v35
if [[ $PART == *a* ]] && before 260 tests; then
  timeout 200 python -m pytest -q -x tests/test_kernels.py \
    -k "(test_gpu_wgmma and 6) or m_tiles or bad_knobs or sass" > "$OUT/v35_tests.log" 2>&1
  el "v35 tests rc=$? $(tail -1 "$OUT/v35_tests.log")"
fi
for tool in memcheck racecheck synccheck; do [[ $PART == *a* ]] && before 60 "$tool" || continue
  timeout 60 compute-sanitizer --tool $tool python ws256_sanitize.py > "$OUT/v35_$tool.log" 2>&1
  el "v35 $tool rc=$? $(grep -c FAILED "$OUT/v35_$tool.log") failed; $(grep -m1 "ERROR SUMMARY" "$OUT/v35_$tool.log")"
done
KB="python eval/kernels.py --bandwidth --ms 128,256,512,1024 --reps 8"
kb() { local n=$1 dir=$2 ext=$3 schemes=$4; before 70 "kb $n" || return
  (cd "$dir" && TORCH_EXTENSIONS_DIR=$ext timeout 60 $KB --schemes "$schemes" --out "$OUT/kb_$n" > "$OUT/kb_$n.log" 2>&1)
  el "kb $n rc=$?"; sed -n '/## Sum/,/^$/p' "$OUT/kb_$n.log" | grep -E "^\| [0-9]"; }
[[ $PART == *b* ]] && for i in 1 2; do
  kb main$i "$ROOT" "$EXT/main" "cublas,ours_asym,ours_asym[ws],ours_asym[dq]"
  kb v35_$i "$V35" "$EXT/s56_v35" "ours_asym[ws],ours_asym[ws/mt16],ours_sym[ws/mt16]"
done
if [[ $PART == *b* ]] && before 110 large_m; then
  MT16=1 OUT=$OUT LIMIT=$(( LIMIT - $(date +%s) + T0 )) bash large_m.sh 2>&1 | tail -60
fi
if [[ $PART == *b* ]] && before 40 mt2; then
  (cd "$ROOT" && TORCH_EXTENSIONS_DIR=$EXT/main timeout 35 python eval/kernels.py --ms 48,64 --reps 8 \
    --schemes "ours_sym,ours_sym[wgmma/mt2],ours_asym,ours_asym[wgmma/mt2]" --out "$OUT/kb_mt2" > "$OUT/kb_mt2.log" 2>&1)
  el "kb mt2 rc=$?"; sed -n '/## Sum/,/^$/p' "$OUT/kb_mt2.log" | grep -E "^\| [0-9]"
fi
el done
