"""Generation on CPU: batching, recompilation, sampling, the CLI end to end and its errors."""
import json
import subprocess
import sys

import pytest
import torch

import generate
import sampling
from generate import Generator, decode_step, prefill
from sampling import sample
from test_model import tiny_model

ROOT = generate.Path(generate.__file__).resolve().parent


@pytest.mark.parametrize("batch", [1, 3])
def test_timed_run_does_not_recompile_after_warmup(batch):
    """The warm-up must leave nothing for the timed run to compile: a recompile there would be
    timed (on CUDA it costs tens of seconds and re-records the CUDA graph)."""
    torch._dynamo.reset()
    m = tiny_model()
    gen = Generator(m, compile=False)
    gen.prefill = torch.compile(prefill, backend="eager", dynamic=None, fullgraph=True)  # as Generator's
    gen.decode = torch.compile(decode_step, backend="eager", fullgraph=True)
    prompts = [[1, 2, 3, 4][: 2 + b % 3] for b in range(batch)]
    gen.warmup(prompts, 20, {5}, 0, cache_len=24)
    with torch._dynamo.config.patch(error_on_recompile=True), torch.no_grad():
        gen(prompts, 20, {5}, 0, cache_len=24, show_progress=False)


def test_prefill_turns_dynamic_after_a_second_prompt_length():
    """Generator's prefill compiles static for the first prompt length (the one shape of a generate.py run)
    and once more with dynamic shapes at the second length; later lengths reuse that graph."""
    torch._dynamo.reset()
    m = tiny_model()
    gen = Generator(m, compile=False)
    gen.prefill = torch.compile(prefill, backend="eager", dynamic=None, fullgraph=True)  # as Generator's
    for T in (3, 5):
        gen([[1] * T, [2] * (T - 1)], 2, set(), 0, cache_len=24, show_progress=False)
    with torch._dynamo.config.patch(error_on_recompile=True), torch.no_grad():
        for T in (7, 11):
            gen([[1] * T, [2] * (T - 1)], 2, set(), 0, cache_len=24, show_progress=False)


def test_scheme_inductor_options_reach_only_that_models_compiles():
    """int8-compile's coordinate-descent tuning (gpt-fast's recipe) is passed to torch.compile for a model
    that uses it, on CUDA only; any other model compiles with plain reduce-overhead (no process-wide flag)."""
    from quantize import quantize_
    plain = tiny_model()
    assert generate.compile_kwargs(plain, cuda=True) == ({"mode": "reduce-overhead"}, {})
    q = tiny_model()
    quantize_(q, "int8-compile")
    decode_kw, prefill_kw = generate.compile_kwargs(q, cuda=True)
    mode = torch._inductor.list_mode_options("reduce-overhead")  # what mode="reduce-overhead" applies
    assert decode_kw == {"options": {**mode, "coordinate_descent_tuning": True}}
    assert prefill_kw == {"options": {"coordinate_descent_tuning": True}}
    assert generate.compile_kwargs(q, cuda=False) == ({"mode": "reduce-overhead"}, {})
    assert not torch._inductor.config.coordinate_descent_tuning


def test_int8_compile_above_one_row_gets_a_notice():
    from quantize import quantize_
    i8, marlin = quantize_(tiny_model(), "int8-compile"), quantize_(tiny_model(), "int4-marlin")
    (notice,) = generate.slow_path_notices(i8, True, 8)
    assert "aten._weight_int8pack_mm" in notice
    assert not generate.slow_path_notices(i8, True, 1)  # its fused GEMV: a fair baseline
    assert not generate.slow_path_notices(i8, False, 8)  # eager: nothing rewritten
    assert not generate.slow_path_notices(marlin, True, 32)


def test_compile_once_is_the_cli_default():
    """generate.py compiles one layer unless told otherwise (same decode speed, about half the compile time on
    an H200 for bf16 and int4-marlin: BENCHMARKS.md "Compile time")."""
    parser = generate.build_parser()
    assert parser.parse_args([]).compile_once is True
    assert parser.parse_args(["--no-compile-once"]).compile_once is False


def test_pdl_is_the_cli_default_and_reaches_the_compiles_on_sm90(monkeypatch):
    """--pdl (default) asks inductor for programmatic dependent launch on GPUs of compute capability 9.0+ only;
    --no-pdl also turns the int4 kernels' off through LOWBIT_W4A16_PDL (read at their first launch)."""
    parser = generate.build_parser()
    assert parser.parse_args([]).pdl is True
    monkeypatch.setenv("LOWBIT_W4A16_PDL", "1")  # restored after the test
    generate.apply_pdl_flag(parser.parse_args([]))
    assert generate.os.environ["LOWBIT_W4A16_PDL"] == "1"
    from torch._inductor import config as inductor_config
    monkeypatch.setattr(inductor_config.triton, "enable_pdl", True)  # as TORCHINDUCTOR_ENABLE_PDL=1 sets it
    generate.apply_pdl_flag(parser.parse_args(["--no-pdl"]))
    assert generate.os.environ["LOWBIT_W4A16_PDL"] == "0" and inductor_config.triton.enable_pdl is False
    assert generate.pdl_report(True, torch.device("cpu"), False) == "off"
    plain = tiny_model()
    mode = torch._inductor.list_mode_options("reduce-overhead")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    cuda = torch.device("cuda")  # only its type is read: pdl_report's capability query is patched
    assert generate.pdl_report(False, cuda, True) == "off"  # LOWBIT_W4A16_PDL=0 and inductor's off, from above
    monkeypatch.setenv("LOWBIT_W4A16_PDL", "1")
    assert [generate.pdl_report(p, cuda, c) for p, c in ((True, True), (False, True), (True, False))] == \
        ["on", "int4 kernels only", "int4 kernels only"]
    assert generate.compile_kwargs(plain, cuda=True, pdl=True) == (
        {"options": {**mode, "triton.enable_pdl": True}}, {"options": {"triton.enable_pdl": True}})
    assert generate.compile_kwargs(plain, cuda=False, pdl=True) == ({"mode": "reduce-overhead"}, {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert generate.compile_kwargs(plain, cuda=True, pdl=True) == ({"mode": "reduce-overhead"}, {})


@pytest.mark.parametrize("scheme", ["none", "int8", "int4-g64-asym", "int4-marlin"])
@torch.no_grad()
def test_compile_once_traces_one_layer_and_gives_the_eager_tokens(scheme):
    """--compile-once (the CLI default): every layer calls one nested compile region (KV-cache writes inside it)
    under fullgraph, quantized layers too; the tokens equal the eager ones. aot_eager checks the tracing without
    code generation."""
    from quantize import quantize_
    torch._dynamo.reset()
    m = tiny_model() if scheme == "none" else quantize_(tiny_model(), scheme)
    prompts = [[3, 1, 4], [1, 5, 9, 2, 6, 5, 3]]
    eager = Generator(m, compile=False)(prompts, 10, set(), 0, show_progress=False)["tokens"]
    gen = Generator(m, compile=True, compile_once=True)
    assert all(layer.compile_once for layer in m.layers)
    gen.prefill = torch.compile(prefill, backend="aot_eager", dynamic=False, fullgraph=True)  # as Generator's
    gen.decode = torch.compile(decode_step, backend="aot_eager", fullgraph=True)
    assert gen(prompts, 10, set(), 0, show_progress=False)["tokens"] == eager


@torch.no_grad()
def test_batched_greedy_rows_equal_rows_alone():
    m = tiny_model()
    gen = Generator(m, compile=False)
    prompts = [[3, 1, 4], [1, 5, 9, 2, 6, 5, 3], [5]]
    together = gen(prompts, 12, set(), 0, show_progress=False)["tokens"]
    for p, row in zip(prompts, together):
        assert gen([p], 12, set(), 0, show_progress=False)["tokens"][0] == row


@torch.no_grad()
def test_rows_stop_at_eos_and_then_emit_pad():
    m = tiny_model()
    gen = Generator(m, compile=False)
    free = gen([[3, 1, 4]], 10, set(), 0, show_progress=False)["tokens"][0]
    eos = free[2]
    stopped = gen([[3, 1, 4]], 10, {eos}, 0, show_progress=False)["tokens"][0]
    first = free.index(eos)
    assert stopped[:first + 1] == free[:first + 1] and set(stopped[first + 1:]) <= {0}


def test_sampling_respects_top_k_and_top_p():
    torch.manual_seed(0)
    logits = torch.tensor([[4.0, 3.0, 2.0, -1.0, -2.0]]).repeat(2000, 1)
    assert set(sample(logits, 1.0, 2, 1.0).tolist()) == {0, 1}
    # probabilities ~ .66 .24 .09 ...: top-p 0.8 keeps the first two only
    assert set(sample(logits, 1.0, 0, 0.8).tolist()) == {0, 1}
    assert sample(logits, 0.0, 0, 1.0).unique().tolist() == [0]
    assert len(set(sample(logits, 1.0, 0, 1.0).tolist())) >= 4


@pytest.mark.parametrize("V", [5, 1024, 1025, 3000, 49152, 128256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_argmax_rows_is_torch_argmax(V, dtype):
    """The two-stage argmax of greedy decoding picks what torch.argmax picks: the first maximum, ties across
    chunks included; NaN wins; an all -inf row gives 0 (the padding of the last chunk never wins)."""
    torch.manual_seed(V)
    x = torch.randn(8, V).to(dtype)
    x[1] = 0.0
    x[2, V // 2] = x[2, -1] = 100.0
    x[3] = float("-inf")
    x[4, -1] = x[4, V // 3] = float("nan")
    x[5, -1] = float("nan")
    x[6] = float("-inf")
    x[6, -1] = -1e30
    x[7, 0] = 50.0
    assert torch.equal(sampling.argmax_rows(x), x.argmax(-1))
    if V == 128256 and dtype == torch.float32:
        compiled = torch.compile(sampling.argmax_rows, backend="aot_eager", fullgraph=True)
        assert torch.equal(compiled(x), x.argmax(-1))


def test_prompt_longer_than_cache_is_a_clear_error():
    gen = Generator(tiny_model(), compile=False)
    with pytest.raises(ValueError, match="needs 13 cache positions, but the cache holds 8"):
        gen([[1, 2, 3]], 10, set(), 0, cache_len=8)


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "generate.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_cli_unknown_scheme_fails_before_the_model_loads():
    out = run_cli("--model", "/nonexistent/model.gguf", "--quant", "int4-g100-sym", timeout=120)
    assert out.returncode != 0
    assert "unknown quantization scheme 'int4-g100-sym'" in out.stderr + out.stdout
    assert "loading" not in out.stdout


def test_cli_default_model_generates_text_and_report(tmp_path, smollm2_gguf):
    out = run_cli("--max-new-tokens", "8", "--json", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr
    assert "row 0" in out.stdout and "decode tokens/s per sequence" in out.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["new_tokens"] == 8 and report["bytes_per_step"]["weights"] > 1e8


def test_cli_random_preset_with_mixed_prompts(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nbb\n")
    out = run_cli("--model", "tiny", "--random-weights", "--batch", "3", "--prompt-len", "5", "--max-new-tokens", "4")
    assert out.returncode == 0, out.stderr
    assert "3 × 5 → 4" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["--model", "tiny", "--random-weights", "--prompt-len", "600", "--cache-len", "512"],
     "needs 664 cache positions, but the cache holds 512"),
    (["--model", "llama-9", "--random-weights"], "unknown model 'llama-9': neither a preset"),
    (["--model", "tiny", "--random-weights", "--batch", "0"], "--batch and --max-new-tokens must be at least 1"),
])
def test_cli_bad_input_is_one_clear_line(args, message):
    out = run_cli(*args)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_cli_truncated_checkpoint_is_one_clear_line(tmp_path):
    from checkpoint import save_checkpoint
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, tiny_model(), None)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    out = run_cli("--model", str(path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()  # progress notes ("loading ... ...") may precede the error
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and str(path) in errors[0] and all(line.endswith(" ...") for line in lines if line not in errors)
