set -o pipefail
export TORCH_EXTENSIONS_DIR=$PWD/.torch_extensions PYTHONUNBUFFERED=1
T0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
python kernels/build.py > $OUT/build.log 2>&1; echo build rc=$? $(( $(date +%s)-T0 ))s
t() { timeout $2 python -m pytest -q tests/$3 -k "$4" > $OUT/t_$1.log 2>&1; echo "tests[$1] rc=$? $(tail -1 $OUT/t_$1.log) $(( $(date +%s)-T0 ))s"; grep -E "^E  |FAILED" $OUT/t_$1.log | head -5; }
t core 240 test_kernels.py "m_sweep or forced_paths or forced_splits or opcheck_cuda or graph or exact_weights or first_split or bad_inputs_cuda"
t att 120 test_attention.py "gpu"
TORCH_LOGS=output_code timeout 100 python generate.py --model smollm2-135m --random-weights --quant int4-marlin --batch 1 --max-new-tokens 8 --prompt-len 16 --decode-attention kernel > $OUT/oc.log 2>&1; echo oc rc=$? $(( $(date +%s)-T0 ))s
timeout 150 python eval/decode_profile.py --model llama-3-8b --batch 1 --quant int4-marlin --quant-output --decode-attention kernel --top 14 > $OUT/prof_b1.log 2>&1; echo prof rc=$? $(( $(date +%s)-T0 ))s
sed -n '/| kind/,$p' $OUT/prof_b1.log
