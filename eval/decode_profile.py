"""Where one decode step's time goes: GPU kernel time per step, by kind and by kernel, for a preset with
random weights, through generate.py's Generator (compiled decode step replayed as a CUDA graph).

    python eval/decode_profile.py --model llama-3-8b --batch 1 --quant int4-marlin
    python eval/decode_profile.py --smoke          # tiny model on the CPU, eager, CPU op times (CI runs this)

Two generations are profiled with torch.profiler, of 1 + S and 1 + 2S new tokens from the same prompts and
cache; a kernel's time per decode step is the difference of its totals divided by S, so prefill, the first
token and profiler start-up cancel out. Kinds: our int4 op, cuBLAS/CUTLASS GEMMs (and PyTorch's own
quantized matmuls), attention, inductor-generated (Triton) kernels, the rest.
"""
import argparse
import json
import re
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from checkpoint import load_model  # noqa: E402
from generate import (Generator, add_step_flags, apply_pdl_flag, decode_attention_report, loading_label,  # noqa: E402
                      random_prompts, step)
from quantize import scheme_arg  # noqa: E402

KINDS = (  # (kind, pattern on the kernel or op name); the first match wins
    # Triton first: inductor names a kernel after every op it fused, e.g. an RMSNorm that feeds our op is
    # `triton_red_fused_..._w4a16_gemm_12`, and an attention mask `triton_poi_fused__scaled_dot_product_...`
    ("generated (Triton)", r"^triton_"),
    ("ours (attention)", r"kv16_decode_attention"),
    ("ours (norm)", r"add_rms_norm"),
    ("ours (w4a16)", r"w4a16|lowbit"),
    ("GEMM (cuBLAS/CUTLASS, PyTorch quantized)", r"gemm|gemv|xmma|cutlass|nvjet|cublas|aten::mm|aten::addmm|aten::bmm"
                                                 r"|_int_mm|scaled_mm|int4pack"),
    ("attention", r"flash|fmha|attention|sdpa|cudnn"),
)


def kind_of(name: str) -> str:
    return next((k for k, pat in KINDS if re.search(pat, name, re.IGNORECASE)), "other")


def totals(fn, cuda: bool) -> dict[str, tuple[float, int]]:
    """{kernel name (CUDA) or aten op (CPU): (self time in us, calls)} over one call of fn."""
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        fn()
    out = {}
    for e in prof.key_averages():
        if cuda and e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        if not cuda and not e.key.startswith("aten::"):
            continue
        t = e.self_device_time_total if cuda else e.self_cpu_time_total
        if t > 0:
            out[e.key] = (t, e.count)
    return out


def per_step(short: dict, long: dict, steps: int) -> list[dict]:
    rows = []
    for name, (t_long, n_long) in long.items():
        t_short, n_short = short.get(name, (0.0, 0))
        rows.append({"name": name, "kind": kind_of(name), "us_per_step": (t_long - t_short) / steps,
                     "calls_per_step": (n_long - n_short) / steps})
    return sorted((r for r in rows if r["us_per_step"] > 0), key=lambda r: -r["us_per_step"])


def markdown(rows: list[dict], title: str, top: int) -> str:
    total = sum(r["us_per_step"] for r in rows)
    by_kind = {}
    for r in rows:
        us, calls = by_kind.get(r["kind"], (0.0, 0.0))
        by_kind[r["kind"]] = (us + r["us_per_step"], calls + r["calls_per_step"])
    out = [title, "", "| kind | µs per step | % | calls per step |", "|---|---:|---:|---:|"]
    for kind, (us, calls) in sorted(by_kind.items(), key=lambda kv: -kv[1][0]):
        out.append(f"| {kind} | {us:,.1f} | {100 * us / total:.1f}% | {calls:,.1f} |")
    out += [f"| all | {total:,.1f} | 100% | {sum(c for _, c in by_kind.values()):,.1f} |", "",
            f"Top {top} kernels:", "", "| kernel | kind | µs per step | calls per step |", "|---|---|---:|---:|"]
    for r in rows[:top]:
        name = r["name"] if len(r["name"]) <= 90 else r["name"][:87] + "..."
        out.append(f"| `{name}` | {r['kind']} | {r['us_per_step']:,.1f} | {r['calls_per_step']:,.1f} |")
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama-3-8b", help="preset name (random weights)")
    p.add_argument("--batch", type=int, default=1, help="rows decoded together")
    p.add_argument("--quant", default="none", type=scheme_arg, help="a scheme from quantize.py, or none")
    p.add_argument("--quant-output", action="store_true", help="quantize the output head too")
    p.add_argument("--prompt-len", type=int, default=128, help="synthetic prompt tokens per row")
    p.add_argument("--steps", type=int, default=32, help="S: decode steps in the difference of the two runs")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="default: cuda if available")
    p.add_argument("--no-compile", action="store_true", help="profile the eager model (the default on CPU)")
    add_step_flags(p)
    p.add_argument("--top", type=int, default=15, help="kernels listed one by one")
    p.add_argument("--json", type=Path, help="write the rows here")
    p.add_argument("--smoke", action="store_true", help="tiny model, CPU, eager: checks the script runs")
    args = p.parse_args(argv)
    apply_pdl_flag(args)
    if args.smoke:
        args.model, args.device, args.no_compile, args.prompt_len, args.steps, args.batch = "tiny", "cpu", True, 8, 4, 2
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    with step(loading_label(f"building {args.model}", args.quant)):
        model, _, _ = load_model(args.model, device=device, dtype=dtype, random_weights=True, quantize=args.quant,
                                 quantize_output=args.quant_output)
    gen = Generator(model, cuda and not args.no_compile, compile_prefill=False, compile_once=args.compile_once,
                    pdl=args.pdl, decode_attention=args.decode_attention)
    prompts = random_prompts(args.batch, args.prompt_len, model.args.vocab_size, seed=0)
    cache_len = args.prompt_len + 1 + 2 * args.steps
    run = lambda n: gen(prompts, n, set(), 0, cache_len, show_progress=False)  # noqa: E731
    gen.warmup(prompts, 1 + 2 * args.steps, set(), 0, cache_len)  # compiles; records the decode CUDA graph
    short = totals(lambda: run(1 + args.steps), cuda)
    long = totals(lambda: run(1 + 2 * args.steps), cuda)
    rows = per_step(short, long, args.steps)
    where = torch.cuda.get_device_name(device) if cuda else "cpu (aten op self times)"
    compiled = ("eager" if not gen.compiled else "compiled once per layer" if args.compile_once
                else "compiled as a whole") + (", PDL" if gen.compiled and args.pdl else "") \
        + f", decode attention {decode_attention_report(model)}"
    title = (f"Decode step of {args.model}, {args.quant}, batch {args.batch}, prompt {args.prompt_len}, {compiled}: "
             f"{where}, torch {torch.__version__}; difference of {1 + args.steps} and {1 + 2 * args.steps} new tokens.")
    print(markdown(rows, title, args.top))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"title": title, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
