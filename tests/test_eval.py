"""Every evaluation script runs in --smoke mode (so none can rot), plus quantized end-to-end checks."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from test_model import tiny_model


def run_script(path, *args, timeout=600):
    out = subprocess.run([sys.executable, str(ROOT / path), *args], capture_output=True, text=True,
                         timeout=timeout, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_bench_smoke(tmp_path):
    out = run_script("eval/bench.py", "--smoke", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert {r["quant"] for r in rows} == {"none", "int8", "int4-g64-asym", "int4-marlin"}
    assert (tmp_path / "bench.png").stat().st_size > 1000 and "| scheme |" in out.stdout
    lo, hi = zip(*(r["decode_tok_s_total_range"] for r in rows))  # the median of --repeats (3) timed runs
    assert all(r["repeats"] == 3 and a <= r["decode_tok_s_total"] <= b for r, a, b in zip(rows, lo, hi))
    assert "the median of 3 timed generations" in out.stdout


def test_bench_append_merges_cells_and_refuses_another_setting(tmp_path):
    run_script("eval/bench.py", "--smoke", "--out", str(tmp_path))
    run_script("eval/bench.py", "--smoke", "--append", "--out", str(tmp_path))
    data = json.loads((tmp_path / "bench.json").read_text())
    assert len(data["rows"]) == 8 and len(data["meta"]["commands"]) == 2  # cells measured again replace
    data["meta"]["device"] = "another GPU"
    (tmp_path / "bench.json").write_text(json.dumps(data))
    out = subprocess.run([sys.executable, str(ROOT / "eval/bench.py"), "--smoke", "--append", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode != 0 and "device='another GPU'" in out.stderr


def test_perplexity_smoke(tmp_path):
    run_script("eval/perplexity.py", "--smoke", "--window", "16", "--quant", "none,int8,int4-g32-asym",
               "--json", str(tmp_path / "p.json"))
    rows = json.loads((tmp_path / "p.json").read_text())["rows"]
    assert [r["scheme"] for r in rows] == ["none", "int8", "int4-g32-asym"]
    assert all(r["ppl"] > 1 for r in rows)
    assert rows[0]["vs_first"] == 0 and abs(rows[1]["vs_first"]) < 0.01  # int8 close to float, int4 further
    assert abs(rows[2]["vs_first"]) > abs(rows[1]["vs_first"]) and rows[2]["vs_first_se"] > 0


def test_paired_difference():
    """log(ppl_a / ppl_b) from per-window NLLs and its standard error across windows."""
    import math

    from eval.perplexity import paired_difference
    b = {"tokens": 40, "windows": 4, "window": 11, "stride": None, "window_nll": [10.0, 20.0, 30.0, 40.0],
         "window_tokens": [10, 10, 10, 10]}
    same = dict(b)
    assert paired_difference(same, b) == (0.0, 0.0)
    shifted = dict(b, window_nll=[11.0, 21.0, 31.0, 41.0])  # +1 nat per window of 10 tokens, no spread
    diff, se = paired_difference(shifted, b)
    assert diff == pytest.approx(4 / 40) and se == pytest.approx(0.0)
    noisy = dict(b, window_nll=[11.0, 19.0, 31.0, 39.0])  # differences +1, -1, +1, -1: mean 0, std 2/sqrt(3)
    diff, se = paired_difference(noisy, b)
    assert diff == pytest.approx(0.0) and se == pytest.approx(math.sqrt(4 / 3) * 2 / 40)
    with pytest.raises(ValueError, match="same tokens and windows"):
        paired_difference(dict(b, windows=3), b)
    one = {"tokens": 10, "windows": 1, "window": 11, "stride": None, "window_nll": [5.0], "window_tokens": [10]}
    assert paired_difference(dict(one, window_nll=[6.0]), one) == (0.1, None)  # no spread from one window
    # windows of unequal length (--stride): a difference proportional to the tokens has no spread
    u = {"tokens": 30, "windows": 2, "window": 21, "stride": 10, "window_nll": [40.0, 20.0], "window_tokens": [20, 10]}
    assert paired_difference(dict(u, window_nll=[42.0, 21.0]), u) == (pytest.approx(0.1), pytest.approx(0.0))


@torch.no_grad()
def test_quantize_save_load_generate_gives_identical_tokens(tmp_path):
    from checkpoint import load_model, save_checkpoint
    from generate import Generator
    from quantize import quantize_
    m = tiny_model()
    quantize_(m, "int4-g32-asym", include_output=True)
    prompts = [[3, 1, 4, 1, 5], [9, 2]]
    before = Generator(m, compile=False)(prompts, 12, set(), 0, show_progress=False)["tokens"]
    save_checkpoint(tmp_path / "q.pt", m, None)
    loaded, _, info = load_model(str(tmp_path / "q.pt"), device="cpu", dtype=torch.float32)
    assert info["quant"]["scheme"] == "int4-g32-asym"
    assert Generator(loaded, compile=False)(prompts, 12, set(), 0, show_progress=False)["tokens"] == before


@torch.no_grad()
def test_smollm2_int4_g32_float_zero_reproduces_float_perplexity(smollm2_gguf, wikitext):
    """SmolLM2's linears are GGUF Q4_1 (groups of 32, float minimum): re-quantizing them with
    int4-g32-asym is exact, so this row of the perplexity table is a correctness check."""
    import copy

    from checkpoint import load_model
    from eval.perplexity import token_perplexity
    from quantize import quantize_
    model, tok, _ = load_model(str(smollm2_gguf), device="cpu", dtype=torch.float32)
    ids = tok.encode(wikitext[:4000])[:512]
    ref = token_perplexity(model, ids, 256, progress=False)
    q = copy.deepcopy(model)
    quantize_(q, "int4-g32-asym")
    got = token_perplexity(q, ids, 256, progress=False)
    assert got["ppl"] == pytest.approx(ref["ppl"], rel=1e-5)
    sym = copy.deepcopy(model)
    quantize_(sym, "int4-g64-sym")
    assert token_perplexity(sym, ids, 256, progress=False)["ppl"] > ref["ppl"] * 1.01


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("zero", ["sym", "azp", "asym"])
@torch.no_grad()
def test_smollm2_perplexity_through_kernel_matches_reference(smollm2_gguf, wikitext, zero):
    """Issue 4: SmolLM2's perplexity through w4a16_gemm (int4-marlin) against the PyTorch reference of the same
    scheme, in bf16. Windows of 8, 16, 32, 64, 128 and 1024 tokens (one window per forward, so M = the window) send
    the linears through each path the heuristic takes: the streaming kernel with swapped operands, with its register
    ring, at 32 and 64 the wgmma kernel (compute capability 9.0) or else the streaming kernel with its shared-memory
    ring at one and at two 32-row m-blocks, at 128 the wgmma kernel with a producer warp (9.0) or else dequantize +
    cuBLAS, which also takes 1024 (or all through the one
    LOWBIT_W4A16_PATH forces).  Every path but the streaming kernels at M <= 16 rounds every weight to
    bf16 before the product, as `int4-g128-*` does; the streaming kernels at M <= 16 (path 4 at M <= 8) use the exact
    weights (fp32 sums scaled per group, w4a16_kernel.cu), so their reference is the same scheme with the product taken
    in float32 on the exact weights.  Windows of 32 tokens and more score 16,384 tokens, 8- and 16-token windows 4,096.
    The bar is 0.3%, not issue 4's 0.1%: at these token counts correct implementations of the same arithmetic
    land up to ~0.3% apart, because a bf16 output that rounds the other way in one layer changes every later
    layer's input (BENCHMARKS.md, "Perplexity through the op": a float32 CPU emulation of the kernel's own
    arithmetic came out 0.14% above the reference at 16-token windows, the GPU kernel 0.16% below it); or three
    paired standard errors where that is wider (8-token windows with zeros: ~0.16%, and differences of +0.45% and
    -0.39% with opposite signs on their first run, 2026-12-06).  Exactness
    is tested sharply elsewhere (test_kernels.py: the share of correctly rounded outputs); 0.1% holds on the whole
    split at 2048-token windows (BENCHMARKS.md, perplexity table)."""
    import copy

    import kernels
    from checkpoint import load_model
    from eval.perplexity import paired_difference, token_perplexity
    from quantize import Int4, quantize_
    if not kernels.extension_available():
        pytest.skip("the kernels CUDA extension is unavailable")
    model, tok, _ = load_model(str(smollm2_gguf), device="cuda", dtype=torch.bfloat16)
    ids = tok.encode(wikitext[:120000])[:16384]
    assert len(ids) == 16384
    ref, ker = copy.deepcopy(model), copy.deepcopy(model)
    quantize_(ref, f"int4-g128-{zero}")
    quantize_(ker, f"int4-marlin-g128-{zero}")
    exact = copy.deepcopy(ref)
    for m in exact.modules():
        if isinstance(m, Int4):  # the reference's forward in float32: exact weights, float32 product
            m.forward = lambda x, m=m: Int4.forward(m, x.float()).to(x.dtype)
    forced = os.environ.get("LOWBIT_W4A16_PATH")  # e.g. 3: every window through path 3
    sm90 = torch.cuda.get_device_capability() == (9, 0)  # csrc/ops.cpp choose_path
    mid, big = ("wgmma", "wgmma_ws") if sm90 else ("stream_smem", "dequant_cublas")
    for window, path in ((8, "stream_swap"), (16, "stream"), (32, mid), (64, mid), (128, big),
                         (1024, "dequant_cublas")):
        taken = kernels.PATHS[int(forced)] if forced and (forced != "4" or window <= 8) else path
        assert kernels.choose_path(window, 1536, 576) == taken
        exact_weights = taken in ("stream", "stream_smem", "stream_swap") and window <= 16
        scored = ids[:4096] if window <= 16 else ids
        want = token_perplexity(exact if exact_weights else ref, scored, window, progress=False)
        got = token_perplexity(ker, scored, window, progress=False)
        diff, se = paired_difference(got, want)
        print(f"{zero} window {window} ({taken}): {got['ppl']:.4f} vs {want['ppl']:.4f}, "
              f"{100 * diff:+.3f}% ± {100 * se:.3f}% (paired s.e.)")  # >= 4,096 tokens: many windows
        # 0.3%, or three standard errors of the paired difference where the windows are too short to resolve that
        # (8-token windows: perplexities near 1,000, BENCHMARKS.md "Perplexity through the op")
        assert abs(diff) <= max(3e-3, 3 * (se or 0.0)), \
            (window, path, "exact weights" if exact_weights else "bf16 weights", f"{100 * diff:+.3f}% ± {100 * se:.3f}%")


def test_decode_profile_smoke(tmp_path):
    out = run_script("eval/decode_profile.py", "--smoke", "--json", str(tmp_path / "p.json"))
    rows = json.loads((tmp_path / "p.json").read_text())["rows"]  # CPU op times: differences are noisy
    assert "| all |" in out.stdout and rows and all(r["us_per_step"] > 0 for r in rows)


def test_decode_profile_kinds():
    from eval.decode_profile import kind_of
    names = {"void lowbit::(anonymous namespace)::w4a16_stream_kernel<__nv_bfloat16, 1, false, true>(lowbit::GemmParams)":
             "ours (w4a16)", "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize64x64x64": "GEMM",
             "void lowbit::(anonymous namespace)::kv16_decode_attention_kernel<__nv_bfloat16, 4>(lowbit::AttnParams)":
             "ours (attention)",
             "void lowbit::(anonymous namespace)::add_rms_norm_kernel<__nv_bfloat16, 1>(lowbit::NormParams)": "ours (norm)",
             "aten::mm": "GEMM", "flash_fwd_splitkv_kernel": "attention", "triton_poi_fused_add_mul_0": "generated",
             "void at::native::elementwise_kernel<128, 4>": "other",
             "triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_view_w4a16_gemm_12": "generated"}
    for name, kind in names.items():
        assert kind_of(name).startswith(kind), name


def test_kernel_microbenchmark_smoke(tmp_path):
    out = run_script("eval/kernels.py", "--smoke", "--out", str(tmp_path))
    assert "reference_asym" in out.stdout and list(tmp_path.glob("*.json"))


def test_attention_microbenchmark_smoke(tmp_path):
    out = run_script("eval/attention.py", "--smoke", "--out", str(tmp_path))
    assert "reference vs SDPA" in out.stdout and (tmp_path / "attention_bench_smoke.json").exists()


def test_bench_append_reads_older_runs_as_sdpa(tmp_path):
    """A bench.json written before --decode-attention existed was measured with SDPA: --append accepts it
    for an SDPA run (the smoke run is on CPU, where the decode attention is always SDPA)."""
    run_script("eval/bench.py", "--smoke", "--out", str(tmp_path))
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["meta"].pop("decode_attention") == "sdpa"
    (tmp_path / "bench.json").write_text(json.dumps(data))
    run_script("eval/bench.py", "--smoke", "--append", "--out", str(tmp_path))
    data["meta"]["decode_attention"] = "kernel"
    (tmp_path / "bench.json").write_text(json.dumps(data))
    out = subprocess.run([sys.executable, str(ROOT / "eval/bench.py"), "--smoke", "--append", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode != 0 and "decode_attention='kernel'" in out.stderr


def test_kernel_bench_scheme_knobs():
    """eval/kernels.py's forced path, split-K count and m16 tiles per CTA, parsed from the scheme name."""
    from eval.kernels import forced
    assert forced("ours_sym") == (-1, -1, -1)
    assert forced("ours_asym[stream/s4]") == (2, 4, -1)
    assert forced("ours_sym[mma/mt2]") == (0, -1, 2)
    assert forced("ours_sym[smem/s2/mt1]") == (3, 2, 1)
    for bad in ("ours_sym[mma/mt3]", "ours_sym[mma/x]", "ours_sym[fast]", "ours_sym[stream/s0]"):
        with pytest.raises(SystemExit):
            forced(bad)


def test_bench_and_perplexity_refuse_an_unknown_scheme_before_loading():
    """A typo in the second of several schemes is a usage error before any model is built."""
    for script in ("eval/bench.py", "eval/perplexity.py"):
        out = subprocess.run([sys.executable, str(ROOT / script), "--smoke", "--quant", "int8,int4-g100-sym"],
                             capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert out.returncode == 2 and "unknown quantization scheme 'int4-g100-sym'" in out.stderr, out.stderr[-1000:]
        assert "int8" not in out.stdout  # no row was measured first


def test_kernel_bench_refuses_bad_scheme_names_first():
    """A scheme name eval/kernels.py cannot time is an error before any GPU work (CPU: before "needs a CUDA GPU")."""
    for bad, says in (("cublas[dq]", "only ours_sym and ours_asym take [path/knobs]"), ("ours_int3", "unknown scheme")):
        out = subprocess.run([sys.executable, str(ROOT / "eval/kernels.py"), "--schemes", bad], capture_output=True,
                             text=True, timeout=300, cwd=ROOT)
        assert out.returncode == 2 and says in out.stderr, out.stderr[-1000:]


def test_kernel_bench_pads_k_like_the_int4_schemes(capsys):
    """SmolLM2's K = 576 at g128 is timed at 640, as Int4Marlin stores it (it crashed the GPU run before)."""
    from eval.kernels import layer_linears
    assert layer_linears("smollm2-135m", 128) == [("qkv", 960, 640), ("o", 576, 640), ("gate_up", 3072, 640),
                                                  ("down", 576, 1536)]
    assert "K=576 is not a multiple of group 128: timed at K=640" in capsys.readouterr().out
    assert layer_linears("smollm2-135m", 64)[0] == ("qkv", 960, 576)
    assert layer_linears("llama-3-8b", 128)[3] == ("down", 4096, 14336)


def test_kernel_bench_launch_fit_and_markdown():
    """eval/kernels.py separates a per-launch fixed cost from the streaming rate (least squares over linears)."""
    from eval.kernels import markdown, summarize
    rows = [dict(linear=n, N=64, K=64, M=1, scheme="s", path="-", us=5.0 + b / 2e6, bytes=b, GBps=b / (5.0 + b / 2e6) / 1e3,
                 pct_own_bound=50.0, pct_int4_bound=40.0, rel_err=1e-3, bound_int4_us=1.0)
            for n, b in (("a", 8e6), ("b", 30e6), ("c", 60e6))]  # t = 5 us + bytes / 2 TB/s
    (s,) = summarize(rows, [1], ["s"])
    assert s["fit_fixed_us"] == pytest.approx(5.0) and s["fit_rate_tb_s"] == pytest.approx(2.0)
    meta = dict(preset="x", group_size=128, device="d", torch="t", bandwidth=3e12, bandwidth_source="assumed", reps=1)
    assert "| 1 | 5.0 + B / 2.00 |" in markdown(rows, [s], meta)
    (one,) = summarize(rows[:1], [1], ["s"])  # one size: no fit
    assert one["fit_fixed_us"] is None and "| 1 | - |" in markdown(rows[:1], [one], meta)


def test_bench_markdown_says_which_decode_attention_each_cell_ran():
    """With --decode-attention kernel (the default) our kernel takes only the cells prefer_kernel picks: bench.md
    names the attention per cell, or once when every cell ran the same."""
    from eval.bench import markdown
    meta = dict(model="m", prompt_len=1, max_new_tokens=1, device="d", torch="t", date="x")
    row = dict(quant="int4-marlin", decode_tok_s_total=1.0, decode_tok_s_per_seq=1.0, effective_gb_s=1.0,
               pct_bandwidth=1.0)
    mixed = markdown([dict(row, batch=1, decode_attention="kernel"), dict(row, batch=32, decode_attention="sdpa")], meta)
    assert ("Decode attention: our split-KV kernel (kv16_decode_attention) in int4-marlin batch 1; "
            "F.scaled_dot_product_attention in int4-marlin batch 32.") in mixed
    qrope = markdown([dict(row, batch=1, decode_attention="kernel+qrope")], meta)
    assert "Decode attention: our split-KV kernel with q's RoPE (kv16_decode_attention) in every cell." in qrope
    fused = markdown([dict(row, batch=1, decode_attention="kernel+rope")], meta)
    assert ("Decode attention: our split-KV kernel with RoPE and the cache write (kv16_decode_step_attention) in "
            "every cell.") in fused
    old = markdown([dict(row, batch=1), dict(row, batch=8)], meta)  # rows from before the flag: SDPA
    assert "Decode attention: F.scaled_dot_product_attention in every cell." in old
