# e2e A/B: HEAD's model.py/generate.py vs the working tree's (residual sum fused into the next norm; joint KV cache)
set -o pipefail
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR="$PWD/.torch_extensions"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
python kernels/build.py > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
el "$(tail -1 $OUT/build.log)"
cp model.py .carry/s42/new_model.py; cp generate.py .carry/s42/new_generate.py
swap() { cp .carry/s42/$1_model.py model.py; cp .carry/s42/$1_generate.py generate.py; }
B="python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3 --quant int4-marlin --quant-output"
for v in head new ${EXTRA:-}; do
  swap ${v%%_*}; A=""; [ "${v#*_}" = att ] && A="--decode-attention kernel"
  timeout 200 $B --batch ${BATCHES:-1,32} $A --out "$OUT/e2e_$v" > "$OUT/e2e_$v.log" 2>&1; el "$v rc=$?"
  grep -h "decode " "$OUT/e2e_$v.log"
done
swap new
