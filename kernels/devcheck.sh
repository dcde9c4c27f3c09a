#!/bin/bash
# One device call: build, GPU correctness, microbenchmark.  Logs under $OUT (or ./out).
# Usage (repo root):  bash kernels/devcheck.sh [quick|full|e2e|prof|new|prof5|e2e_attn|compile_ab]   (full: ~6-8 min on an H100, most of it
# the model-shape sweep; quick skips that sweep; e2e: issue 4's end-to-end runs (int4 batch 1/32, bf16 32), ~6 min; prof: ncu with
# stall reasons per SASS line of the streaming kernel, ~3 min; new: the code written without a GPU on 2026-12-05,
# the wgmma kernel (path 5) and the decode attention's cluster revision: tests, sanitizers, timings, ~8 min;
# prof5: ncu's full set on path 5 (M = 64, 128) and path 3, ~4 min; e2e_attn: the decode attention's end-to-end A/B, ~6 min;
# compile_ab: what NOTES.md v20 left unrun, ~9 min)
set -o pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR="$PWD/.torch_extensions"
OUT=${OUT:-out}; mkdir -p "$OUT"
MODE=${1:-full}
T0=$(date +%s)
# before SECONDS STEP: true while fewer than SECONDS have passed since the start (a device call's steps in priority order)
before() { [ $(( $(date +%s) - T0 )) -lt "$1" ] || { echo "skipped (time): ${*:2}"; return 1; }; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
python kernels/build.py > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
tail -1 "$OUT/build.log"
if [ "$MODE" = prof ]; then
  # Where the streaming kernel's warps wait (NOTES.md v5, next steps): full ncu sections with stall reasons
  # and the per-SASS-line source page, for gate_up and o at M=1 (path 2) and gate_up at M=32 (path 3).
  timeout 400 ncu --clock-control none --kernel-name regex:w4a16_stream --launch-count 3 --set full \
    --import-source yes -o "$OUT/stream" -f python -c "
import sys, torch; sys.path.insert(0, 'tests')
import kernels; from test_kernels import make_problem
for M, N, K in ((1, 28672, 4096), (1, 4096, 4096), (32, 28672, 4096)):
    x, q, s, z = make_problem(M, N, K, 128, True, torch.bfloat16, 'cuda', 0)
    kernels.load_extension().gemm_path(x, *kernels.pack_w4(q, s, z, 128), 128, -1)
torch.cuda.synchronize()
" > "$OUT/prof.log" 2>&1; echo "ncu rc=$?"
  ncu --import "$OUT/stream.ncu-rep" --print-details all --section WarpStateStats --section SchedulerStats \
    > "$OUT/prof_stalls.txt" 2>&1
  ncu --import "$OUT/stream.ncu-rep" --page source --csv --print-source sass > "$OUT/prof_source.csv" 2>&1
  grep -iE "stall|Warp Cycles|Eligible" "$OUT/prof_stalls.txt" | head -60
  echo "elapsed $(( $(date +%s) - T0 ))s"
  exit 0
fi
if [ "$MODE" = prof5 ]; then
  # Where path 5 (the wgmma kernel) loses its time (kernels/NOTES.md v12: issue slots 37-44 % busy, tensor pipe
  # 21-29 %): ncu's full set with per-SASS-line stall samples on gate_up at M = 64 and 128, and path 3 at M = 64 to
  # compare; the source page (CSV) comes back for a per-section sum of the stalls.
  timeout 300 ncu --clock-control none --kernel-name regex:"w4a16_(wgmma|stream)" --launch-count 3 --set full \
    --import-source yes -o "$OUT/prof5" -f python -c "
import sys, torch; sys.path.insert(0, 'tests')
import kernels; from test_kernels import make_problem
for M, path in ((64, 5), (128, 5), (64, 3)):
    x, q, s, z = make_problem(M, 28672, 4096, 128, True, torch.bfloat16, 'cuda', 0)
    kernels.load_extension().gemm_path(x, *kernels.pack_w4(q, s, z, 128), 128, path)
torch.cuda.synchronize()
" > "$OUT/prof5.log" 2>&1; echo "ncu rc=$?"
  ncu --import "$OUT/prof5.ncu-rep" --print-details all > "$OUT/prof5.txt" 2>&1
  ncu --import "$OUT/prof5.ncu-rep" --page source --csv --print-source sass > "$OUT/prof5_source.csv" 2>&1
  grep -E "w4a16_|Duration|Tensor|Bank Conflicts|L2 Cache Throughput|DRAM Throughput|Stall|Warp Cycles|Eligible" \
    "$OUT/prof5.txt" | head -80
  exit 0
fi
if [ "$MODE" = e2e_attn ]; then
  # The decode attention end to end (BENCHMARKS.md "Decode attention"): Llama-3-8B int4-marlin, head quantized,
  # our kernel against SDPA at batch 1 and 32 (prefer_kernel takes ours up to 512 pairs), one process each, medians of 3.
  B="python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --batch 1,32 --quant int4-marlin"
  for a in kernel sdpa; do
    timeout 280 $B --quant-output --repeats 3 --decode-attention $a --out "$OUT/e2e_attn_$a" > "$OUT/e2e_attn_$a.log" 2>&1
    echo "e2e_attn[$a] rc=$?"
  done
  grep -hE "^\| int4" "$OUT"/e2e_attn_*.log
  echo "elapsed $(( $(date +%s) - T0 ))s"
  exit 0
fi
if [ "$MODE" = compile_ab ]; then
  # What kernels/NOTES.md v20 left unrun: the attention GPU tests (the compiled Generator with and without compile-once
  # against eager, through the step op where torch takes it), then Llama-3-8B int4-marlin (head quantized) end to end
  # with the default compile-once (torch 2.11: RoPE and the cache write outside our attention) against the whole-model
  # compile (the step op), and inductor's combo_kernels on against the first (off) run; one process each, medians of 3.
  if [ "${TESTS:-1}" = 1 ]; then
    timeout 120 python -m pytest -q tests/test_attention.py -k gpu > "$OUT/t_attention.log" 2>&1
    echo "tests[attention] rc=$? $(tail -1 "$OUT/t_attention.log")"; grep -E "^E  |FAILED|Fatal" "$OUT/t_attention.log" | head -8
  fi
  B="eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3 --batch 1,32 --quant int4-marlin --quant-output"
  run() {  # name, combo_kernels (True/False), extra flags
    before 470 "$1" || return
    timeout 130 python -c "import runpy, sys; import torch._inductor.config as c; c.combo_kernels = $2
sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')" $B --out "$OUT/e2e_$1" "${@:3}" \
      > "$OUT/e2e_$1.log" 2>&1; echo "e2e[$1] rc=$?"; grep -h " decode \|Decode attention" "$OUT/e2e_$1.log"
  }
  # compile-once against the whole model, then combo kernels on (against the first run), then the pair again reversed;
  # RUNS picks and orders them (a second call runs what the first did not reach), TESTS=0 skips the tests above
  for r in ${RUNS:-once whole combo_on tcombo whole_b once_b}; do
    case $r in
      once*) run "$r" False ;;
      whole*) run "$r" False --no-compile-once ;;
      combo_on*) run "$r" True ;;
      combo_whole*) run "$r" True --no-compile-once ;;
      tcombo)  # the same GPU tests with inductor's combo kernels on (process-wide: compile_kwargs does not set it)
        before 470 tcombo && timeout 150 python -c "import sys, pytest; import torch._inductor.config as c
c.combo_kernels = True; sys.exit(pytest.main(['-q', 'tests/test_attention.py', '-k', 'gpu']))" \
          > "$OUT/t_attention_combo.log" 2>&1
        echo "tests[attention, combo] rc=$? $(tail -1 "$OUT/t_attention_combo.log")" ;;
      prof32)  # where the batch-32 step goes with the step op (whole-model compile)
        before 470 prof32 && timeout 150 python eval/decode_profile.py --model llama-3-8b --batch 32 --quant int4-marlin \
          --quant-output --no-compile-once > "$OUT/prof32.log" 2>&1; echo "prof32 rc=$?"; tail -12 "$OUT/prof32.log" ;;
    esac
  done
  echo "elapsed $(( $(date +%s) - T0 ))s"
  exit 0
fi
if [ "$MODE" = e2e ]; then
  # Issue 4's end-to-end targets (BENCHMARKS.md "End to end ..."): Llama-3-8B int4-marlin with the head quantized at
  # batch 1 and 32, bf16 at batch 32 in the next process (the ratio), generate.py's report at batch 32; ~6 min.
  B="python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3"
  timeout 200 $B --batch 1,32 --quant int4-marlin --quant-output --out "$OUT/e2e_int4" > "$OUT/e2e_int4.log" 2>&1
  echo "e2e[int4] rc=$?"
  timeout 150 $B --batch 32 --quant none --out "$OUT/e2e_bf16" > "$OUT/e2e_bf16.log" 2>&1; echo "e2e[bf16] rc=$?"
  timeout 120 python generate.py --model llama-3-8b --random-weights --quant int4-marlin --quant-output --batch 32 \
    --max-new-tokens 256 > "$OUT/gen32.log" 2>&1; echo "generate rc=$? elapsed $(( $(date +%s) - T0 ))s"
  grep -h " decode " "$OUT"/e2e_*.log; grep -iE "decode|first token|peak" "$OUT/gen32.log" | head -6
  exit 0
fi
t() { # name, timeout, pytest -k expression
  timeout "$2" python -m pytest -q tests/test_kernels.py -k "$3" > "$OUT/t_$1.log" 2>&1
  echo "tests[$1] rc=$? $(tail -1 "$OUT/t_$1.log")"; grep -E "^E  |FAILED|Fatal" "$OUT/t_$1.log" | head -8
}
t bad 60 "bad_inputs_cuda"
t core 240 "m_sweep or forced_paths or forced_splits or opcheck_cuda or graph or exact_weights or first_split"
t stream 300 "stream_kernel"
# compute-sanitizer: a few shapes through the mma and streaming kernels (split-K, odd M, every group)
san() {  # tool [paths]
  timeout 300 compute-sanitizer --tool "$1" --error-exitcode 9 python -c "
import sys, torch; sys.path.insert(0, 'tests')
from test_kernels import check_gpu
for path in (${2:-0, 1, 2, 3}):
    for M, N, K, gs, sym in ((1, 256, 512, 128, True), (17, 192, 320, 64, False), (33, 128, 4096, 32, False)):
        check_gpu(min(M, 8) if path == 4 else M, N, K, gs, sym, torch.bfloat16, 5, path)  # path 4: M <= 8
" > "$OUT/san_$1.log" 2>&1
  echo "sanitizer[$1] rc=$? $(grep -E 'ERROR SUMMARY' "$OUT/san_$1.log" | tail -1)"
}
if [ "$MODE" = new ]; then
  # In priority order; a step starts only while enough of the device call's 600 s is left (before).
  t wgmma 200 "wgmma or bad_knobs or path_override"
  before 400 bench && timeout 150 python eval/kernels.py --bandwidth --ms 16,32,48,64,96,128 --reps 10 --tag _wgmma \
    --out "$OUT" --schemes "cublas,ours_sym,ours_sym[wgmma],ours_asym[wgmma],ours_sym[wgmma/mt2],ours_sym[wgmma/mt1],ours_sym[ws],ours_asym[ws]" \
    > "$OUT/bench_wgmma.log" 2>&1; echo "bench[wgmma] rc=$?"
  sed -n '/## Sum/,$p' "$OUT/bench_wgmma.log" | grep -E "^\|"
  before 420 prof5 && bash kernels/devcheck.sh prof5 2>&1 | tail -n +3
  before 380 core && t core 200 "m_sweep or forced_paths or forced_splits or opcheck_cuda or graph or exact_weights or first_split"
  if before 480 attention; then
    timeout 100 python -m pytest -q tests/test_attention.py > "$OUT/t_attention.log" 2>&1
    echo "tests[attention] rc=$? $(tail -1 "$OUT/t_attention.log")"; grep -E "^E  |FAILED|Fatal" "$OUT/t_attention.log" | head -8
  fi
  before 500 memcheck && san memcheck "5, 6"
  before 530 racecheck && san racecheck "4, 5, 6"  # path 4's racecheck was never run (README)
  echo "elapsed $(( $(date +%s) - T0 ))s"
  exit 0
fi
san memcheck
san racecheck
timeout 240 python eval/kernels.py --bandwidth --out "$OUT" \
  --schemes "cublas,tinygemm,ours_sym,ours_asym,ours_sym[stream],ours_asym[stream],ours_sym[smem],ours_asym[smem],read_int4" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
timeout 90 python eval/kernels.py --ms 64,128,256,1024 --schemes "ours_sym[mma],ours_sym[dq],ours_sym[stream],ours_sym[smem]" --reps 10 --tag _paths \
  --out "$OUT" > "$OUT/bench_paths.log" 2>&1; echo "paths rc=$?"
# split-K sweep of the streaming kernel at decode sizes (per-linear lines in bench_splits.log; kernels/NOTES.md v3)
timeout 120 python eval/kernels.py --ms 1,16,32 --reps 10 --tag _splits --out "$OUT" --schemes \
  "ours_sym[stream],ours_sym[stream/s1],ours_sym[stream/s2],ours_sym[stream/s4],ours_sym[smem/s1],ours_sym[smem/s2],ours_sym[smem/s4]" \
  > "$OUT/bench_splits.log" 2>&1; echo "splits rc=$?"
# Hardware counters of the streaming kernel (paths 2 and 3) at M=1 on gate_up and o_proj (NOTES.md v3/v4: what
# bounds it: DRAM throughput, issue-slot use, warp stall reasons). Needs a runtime that exposes counters.
timeout 240 ncu --clock-control none --kernel-name regex:w4a16_stream --launch-count 4 \
  --section SpeedOfLight --section MemoryWorkloadAnalysis --section SchedulerStats --section WarpStateStats \
  --section LaunchStats --section Occupancy python -c "
import sys, torch; sys.path.insert(0, 'tests')
import kernels; from test_kernels import make_problem
for N, K in ((28672, 4096), (4096, 4096)):
    x, q, s, z = make_problem(1, N, K, 128, True, torch.bfloat16, 'cuda', 0)
    for path in (2, 3):
        kernels.load_extension().gemm_path(x, *kernels.pack_w4(q, s, z, 128), 128, path)
torch.cuda.synchronize()
" > "$OUT/ncu.txt" 2>&1; echo "ncu rc=$? $(grep -cE 'Duration|Throughput' "$OUT/ncu.txt") metric lines"
[ "$MODE" = full ] && t models 300 "model_shapes"
echo "elapsed $(( $(date +%s) - T0 ))s"
grep -E "^\| [0-9]" "$OUT/bench_paths.log" "$OUT/bench_splits.log"
sed -n '/## Sum/,$p' "$OUT/bench.log" | grep -E "^\|"
