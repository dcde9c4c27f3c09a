#!/bin/bash
# The next session's A/B of v30 (kernels/NOTES.md: the feed-forward's SiLU-mul in the gate/up GEMM's epilogue, op
# lowbit::w4a16_glu_gemm; branch wip/glu), written in the evening session of 2026-12-07, run from main's tree with the
# branch's tree carried in .carry/glu (`git archive wip/glu | tar -x -C .carry/glu`; a worktree's branch does not
# reach the device).  Builds both (own extension folders, in parallel); the branch's GPU tests (tests/test_glu.py,
# path 5 and 6 kernel tests: their weight and scale addressing moved); memcheck on the fused op; batch 32 end to end
# (Llama-3-8B, int4-marlin, head quantized, prompt 128, 256 new tokens, medians of 3) main, glu, main, glu; the
# branch's decode profile without PDL (is SiLU-mul gone, what does gate/up cost now?).  Guards for one 600-s call.
set -o pipefail; export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"; T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
before() { [ $(( $(date +%s) - T0 )) -lt "$1" ] || { echo "skipped (time): ${*:2}"; return 1; }; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader; python -c "import torch; print(torch.__version__)"
R="$PWD"; declare -A DIR=([main]="$R" [glu]=/tmp/glu)
rm -rf /tmp/glu && mkdir /tmp/glu && cp -r .carry/glu/. /tmp/glu
in_v() { local v=$1; shift; (cd "${DIR[$v]}" && TORCH_EXTENSIONS_DIR="$R/.torch_extensions/$v" "$@"); }
for v in main glu; do in_v $v python kernels/build.py > "$OUT/build_$v.log" 2>&1 & done; wait
el "builds: $(for v in main glu; do echo -n "$v $(tail -1 $OUT/build_$v.log) | "; done)"
in_v glu timeout 150 python -m pytest -q tests/test_glu.py tests/test_kernels.py -k "glu or gpu_wgmma" > "$OUT/t_glu.log" 2>&1
el "tests[glu] rc=$? $(tail -1 "$OUT/t_glu.log")"; grep -E "^E  |FAILED" "$OUT/t_glu.log" | head -8
cat > /tmp/glu_san.py <<'PY'
import torch, kernels
g = torch.Generator(device="cuda").manual_seed(0)  # 256 gate/up CTAs of K = 256: fused at 17, 32 and 64 rows
q = torch.randint(0, 16, (32768, 256), generator=g, device="cuda", dtype=torch.uint8)
s = (torch.rand(32768, 2, generator=g, device="cuda") * 0.02 + 0.005).to(torch.bfloat16)
z = (-(torch.rand(32768, 2, generator=g, device="cuda") * 8 + 4) * s.float()).to(torch.bfloat16)
w = kernels.pack_w4(q, s, z, 128)
for M in (17, 32, 64):
    assert kernels.glu_fuses(M, 32768, 256, torch.bfloat16, True, torch.device("cuda"))
    out = kernels.w4a16_glu_gemm(torch.randn(M, 256, generator=g, device="cuda").to(torch.bfloat16), *w, 128)
torch.cuda.synchronize(); print("glu ok", out.shape)
PY
before 250 memcheck && { in_v glu env PYTHONPATH=/tmp/glu timeout 60 compute-sanitizer --tool memcheck python /tmp/glu_san.py \
  > "$OUT/san_glu.log" 2>&1; el "memcheck rc=$? $(tail -1 "$OUT/san_glu.log")"; }
B="python eval/bench.py --model llama-3-8b --prompt-len 128 --max-new-tokens 256 --repeats 3 --quant int4-marlin --quant-output --batch 32"
e2e() { local n=$1 v=$2 t=$3; before "$t" "$n" || return
  in_v "$v" timeout 100 $B --out "$OUT/e2e_$n" > "$OUT/e2e_$n.log" 2>&1
  el "$n rc=$? $(grep -m1 "^| int4-marlin" "$OUT/e2e_$n/bench.md" 2>/dev/null)"; }
e2e main1 main 310; e2e glu1 glu 370; e2e main2 main 430; e2e glu2 glu 490
before 510 profile && { in_v glu timeout 75 python eval/decode_profile.py --model llama-3-8b --batch 32 --quant int4-marlin \
  --quant-output --steps 16 --top 10 --no-pdl --json "$OUT/prof32_glu.json" > "$OUT/prof32_glu.log" 2>&1; el "profile rc=$?"
  sed -n '/^| kind/,/^$/p;/Top/,$p' "$OUT/prof32_glu.log" | head -24; }
el done
