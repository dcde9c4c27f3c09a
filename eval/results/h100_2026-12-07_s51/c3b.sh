#!/bin/bash
# c3.sh cut to the device time left (~220 s): the build, the attention GPU tests that cover q's RoPE in
# kv16_decode_attention (the kernel test, the compiled Generator with and without compile-once), then the tree's
# batch-32 run if there is time.  No A/B: `bash c3.sh` is still the comparison to run.
set -o pipefail; export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"; T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader; python -c "import torch; print(torch.__version__)"
export TORCH_EXTENSIONS_DIR="$PWD/.torch_extensions"
python kernels/build.py > "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }; el "build $(tail -1 $OUT/build.log)"
timeout 80 python -m pytest -q tests/test_attention.py -k "gpu_rope or gpu_generator or gpu_model_decode or gpu_step_kernel" > "$OUT/t_att.log" 2>&1
el "tests rc=$? $(tail -1 "$OUT/t_att.log")"; grep -E "^E  |FAILED" "$OUT/t_att.log" | head -5
[ $(( $(date +%s) - T0 )) -lt 140 ] && { timeout 75 python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3 \
  --quant int4-marlin --quant-output --batch 32 --out "$OUT/e2e_tree" > "$OUT/e2e_tree.log" 2>&1; el "tree rc=$? $(grep -m1 "^| int4-marlin" "$OUT/e2e_tree/bench.md")"; }
el done
