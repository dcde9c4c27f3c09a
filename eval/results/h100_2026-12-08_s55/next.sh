#!/bin/bash
# For the next session (written 2026-12-08 after the device was paused; not run), ~500 s on one H100 with a fresh
# machine (three builds), each step guarded against LIMIT seconds.  kernels/NOTES.md v33-v34:
#   1. v34, path 5's warpgroups with their own copies and barriers (wip_wg_pipes.patch, branch wip/wg-pipes), in a
#      disposable copy of the tree: the path-5 GPU tests, the sanitizers on wg_pipes_sanitize.py's shapes, then the
#      microbenchmark at 16-64 rows against main, alternated (main, v34, main, v34).
#   2. the probes: path 5's iteration split into phases (probe/w4a16_wgmma_phases.patch, probe.py, probe_sum.py) and
#      the tensor core alone (probe/wgmma_rate.py).
# Then, if v34 is correct and faster: batch 32 end to end, main against v34, alternated (E2E=1 runs only that part).
#   OUT=... LIMIT=560 bash eval/results/h100_2026-12-08_s55/next.sh          (E2E=1 OUT=... for the end-to-end part)
set -o pipefail; export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; LIMIT=${LIMIT:-560}; mkdir -p "$OUT"; T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
before() { [ $(( $(date +%s) - T0 )) -lt $(( LIMIT - $1 )) ] || { echo "skipped (time): ${*:2}"; return 1; }; }
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$PWD; EXT=$ROOT/.torch_extensions
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader; python -c "import torch; print(torch.__version__)"
tree() {  # tree NAME PATCH: a copy of kernels/ and eval/ (and the probes) with PATCH applied, under .torch_extensions
  local d=$EXT/s55_$1_tree; rm -rf "$d"; mkdir -p "$d"; cp -r kernels eval tests ./*.py "$d"/
  cp "$HERE"/probe/*.py "$HERE"/wg_pipes_sanitize.py "$d"/; (cd "$d" && git apply -p1 "$2") && echo "$d"; }
V34=$(tree v34 "$HERE/wip_wg_pipes.patch") || exit 1
build() { (cd "$2" && TORCH_EXTENSIONS_DIR=$3 python kernels/build.py > "$OUT/build_$1.log" 2>&1)
  el "$1 $(tail -1 "$OUT/build_$1.log")"; }
build main "$ROOT" "$EXT/main"; build v34 "$V34" "$EXT/s55_v34"
B="python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3 --quant int4-marlin"
e2e() { local n=$1 dir=$2 ext=$3; before 50 "$n" || return
  (cd "$dir" && TORCH_EXTENSIONS_DIR=$ext timeout 100 $B --quant-output --batch 32 --out "$OUT/e2e_$n" \
    > "$OUT/e2e_$n.log" 2>&1)
  el "$n rc=$? $(grep -m1 "^| int4-marlin" "$OUT/e2e_$n/bench.md" 2>/dev/null)"; }
if [ -n "${E2E:-}" ]; then
  for i in 1 2; do e2e main$i "$ROOT" "$EXT/main"; e2e v34_$i "$V34" "$EXT/s55_v34"; done; el done; exit 0
fi
cd "$V34" || exit 1; export TORCH_EXTENSIONS_DIR=$EXT/s55_v34
if before 200 tests; then
  timeout 190 python -m pytest -q -x tests/test_kernels.py \
    -k "test_gpu_wgmma or test_gpu_m_sweep or test_gpu_model_shapes or test_gpu_chained" > "$OUT/v34_tests.log" 2>&1
  el "v34 tests rc=$? $(tail -1 "$OUT/v34_tests.log")"
fi
for tool in memcheck racecheck synccheck; do before 60 "$tool" || continue
  timeout 50 compute-sanitizer --tool $tool python wg_pipes_sanitize.py > "$OUT/v34_$tool.log" 2>&1
  el "v34 $tool rc=$? $(grep -c FAILED "$OUT/v34_$tool.log") failed; $(grep -m1 "ERROR SUMMARY" "$OUT/v34_$tool.log")"
done
KB="python eval/kernels.py --bandwidth --ms 16,17,32,64 --reps 8 --schemes ours_sym,ours_asym,ours_asym[wgmma]"
kb() { local n=$1 dir=$2 ext=$3; before 40 "kb $n" || return
  (cd "$dir" && TORCH_EXTENSIONS_DIR=$ext timeout 60 $KB --out "$OUT/kb_$n" > "$OUT/kb_$n.log" 2>&1)
  el "kb $n rc=$?"; sed -n '/## Sum/,/^$/p' "$OUT/kb_$n.log" | grep -E "^\| [0-9]"; }
for i in 1 2; do kb main$i "$ROOT" "$EXT/main"; kb v34_$i "$V34" "$EXT/s55_v34"; done
PROBE=$(tree probe "$HERE/probe/w4a16_wgmma_phases.patch") || exit 1
cd "$PROBE" || exit 1; export TORCH_EXTENSIONS_DIR=$EXT/s55_probe
if before 120 probes; then
  python kernels/build.py 2>&1 | tail -1
  timeout 100 python probe.py > "$OUT/probe.out" 2>&1; el "probe rc=$?"
  python probe_sum.py "$OUT/probe.out" | tee "$OUT/probe_sum.md"; gzip -f "$OUT/probe.out"
fi
if before 160 rate; then timeout 150 python wgmma_rate.py 2>&1 | grep -v "^W1" | tee "$OUT/wgmma_rate.md" | tail -20; fi
el done
