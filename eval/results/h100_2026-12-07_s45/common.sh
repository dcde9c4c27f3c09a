# sourced by the call scripts: timers, main's tree in /tmp/m (branch tree here), both builds at once
set -o pipefail
export PYTHONUNBUFFERED=1
R="$PWD"; T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
before() { [ $(( $(date +%s) - T0 )) -lt "$1" ] || { echo "skipped (time): ${*:2}"; return 1; }; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
rm -rf /tmp/m && mkdir /tmp/m && tar --exclude=./.torch_extensions --exclude=./.git -cf - . | tar -xf - -C /tmp/m
(cd .carry/qrope_main && find . -type f) | while read f; do cp ".carry/qrope_main/$f" "/tmp/m/$f"; done
(cd /tmp/m && TORCH_EXTENSIONS_DIR="$R/.torch_extensions/ab_main" python kernels/build.py > "$OUT/build_main.log" 2>&1) &
TORCH_EXTENSIONS_DIR="$R/.torch_extensions" python kernels/build.py > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
wait; el "builds: $(tail -1 $OUT/build.log) | main: $(tail -1 $OUT/build_main.log)"
export TORCH_EXTENSIONS_DIR="$R/.torch_extensions"
B="python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3 --quant int4-marlin --quant-output --batch 1,32"
# e2e NAME WHERE(branch|main) TIMEOUT EXTRA...: one bench process
e2e() { local n=$1 w=$2 t=$3; shift 3
  if [ "$w" = main ]; then (cd /tmp/m && TORCH_EXTENSIONS_DIR="$R/.torch_extensions/ab_main" timeout $t $B "$@" --out "$OUT/e2e_$n" > "$OUT/e2e_$n.log" 2>&1)
  else timeout $t $B "$@" --out "$OUT/e2e_$n" > "$OUT/e2e_$n.log" 2>&1; fi
  el "e2e $n rc=$?"; grep -h " decode \|Decode attention\|Error" "$OUT/e2e_$n.log" | head -5; }
