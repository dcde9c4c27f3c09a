"""Decode throughput across batch sizes and quantization schemes, in one process so the numbers compare.

    python eval/bench.py --model llama-3-8b --batch 1,8,32,64 --quant none,int8-compile,int4-tinygemm,fp8-rowwise
    python eval/bench.py --smoke          # tiny model on the CPU, seconds (CI runs this)
    torchrun --nproc-per-node 2 eval/bench.py --model llama-3-8b --batch 1,32 --quant none,int4-marlin

Under torchrun every layer is split over the ranks as in generate.py (tp.py); each cell then also records the
all-reduce time of one decode step, measured alone, and only rank 0 prints and writes.

Every (scheme, batch) cell runs generate.py's Generator: a warm-up call (compiles the decode step and
records its CUDA graph; prefill runs eagerly here, so end-to-end numbers come from generate.py), then
--repeats timed generations (the median is reported, with the spread) with random weights and synthetic
prompts of --prompt-len tokens. Writes bench.json, bench.md and bench.png (total tokens/s against batch size).
"""
import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from checkpoint import load_model  # noqa: E402
from generate import (Generator, add_step_flags, apply_pdl_flag, console, decode_attention_report,  # noqa: E402
                      loading_label, make_report, measured_bandwidth, pdl_report, random_prompts, step)
from quantize import schemes_arg  # noqa: E402
from tp import all_reduce_seconds, init_distributed, shard_model  # noqa: E402


DEFAULT_QUANT = "none,int8-compile,int4-tinygemm,fp8-rowwise,int4-marlin"
SMOKE_QUANT = "none,int8,int4-g64-asym,int4-marlin"


def run_matrix(args, device, rank=0, world=1, on_row=lambda rows: None) -> list[dict]:
    """Every (scheme, batch) cell; `on_row(rows so far)` after each, so a run cut short keeps its cells.
    rank, world: this process's place under torchrun (its shard of every layer); (0, 1) alone."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    compile = device.type == "cuda" and not args.no_compile
    bandwidth = measured_bandwidth(device)
    shard = (lambda m: shard_model(m, rank, world)) if world > 1 else None
    rows = []
    for scheme in args.quant:
        with step(loading_label(f"building {args.model}", scheme)):
            model, _, _ = load_model(args.model, device=device, dtype=dtype, random_weights=True, seed=args.seed,
                                     shard=shard, quantize=scheme, quantize_output=args.quant_output)
        gen = Generator(model, compile, compile_prefill=False,  # decode is what this table compares
                        compile_once=args.compile_once, pdl=args.pdl,
                        decode_attention=args.decode_attention)
        for batch in args.batch:
            prompts = random_prompts(batch, args.prompt_len, model.args.vocab_size, args.seed)
            cache_len = args.prompt_len + args.max_new_tokens
            compile_s = gen.warmup(prompts, args.max_new_tokens, set(), 0, cache_len)
            compile_s = compile_s if compile else None
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            reports = [make_report(gen(prompts, args.max_new_tokens, set(), 0, cache_len, show_progress=False),
                                   model, bandwidth, compile_s) for _ in range(args.repeats)]
            reports.sort(key=lambda x: x["decode_tok_s_total"])
            r = reports[len(reports) // 2]  # the median timed generation (the upper one of an even count)
            r.update(quant=scheme, model=args.model, dtype=str(dtype).removeprefix("torch."), repeats=args.repeats,
                     decode_tok_s_total_range=[reports[0]["decode_tok_s_total"], reports[-1]["decode_tok_s_total"]],
                     world_size=world, decode_attention=decode_attention_report(model))
            if world > 1:  # a collective: every rank times it
                r["all_reduce_s_per_step"] = all_reduce_seconds(batch, model.args.dim, dtype, device,
                                                                2 * model.args.n_layers)
            rows.append(r)
            if rank == 0:
                on_row(rows)
            console.print(f"{scheme:>16} batch {batch:>3}: decode {r['decode_tok_s_total']:>9,.1f} tok/s total, "
                          f"{r['decode_tok_s_per_seq']:>7,.1f} per seq, {r['effective_gb_s']:,.0f} GB/s"
                          + (f" per rank, all-reduce {r['all_reduce_s_per_step'] * 1e3:.3f} ms per step"
                             if world > 1 else "")
                          + (f", compile + warm-up {compile_s:.0f} s" if compile_s is not None else ""),
                          highlight=False, soft_wrap=True)
        del model, gen
        gc.collect()
        torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    batches = sorted({r["batch"] for r in rows})
    schemes = list(dict.fromkeys(r["quant"] for r in rows))
    cell = {(r["quant"], r["batch"]): r for r in rows}
    world = meta.get("world_size", 1)
    tp = f"tensor parallel over {world} ranks (bandwidth figures per rank), " if world > 1 else ""
    out = [f"Decode tokens/s, total over the batch (per sequence in brackets), {meta['model']}, random weights, "
           f"prompt {meta['prompt_len']}, {meta['max_new_tokens']} new tokens; {tp}{meta['device']}, "
           f"torch {meta['torch']}, {meta['date']}"
           + (f"; programmatic dependent launch: {meta['pdl']}" if meta.get("pdl", "off") != "off" else "") + ".", "",
           "| scheme | " + " | ".join(f"batch {b}" for b in batches) + " |",
           "|---|" + "---:|" * len(batches)]
    for s in schemes:
        vals = [f"{cell[s, b]['decode_tok_s_total']:,.0f} ({cell[s, b]['decode_tok_s_per_seq']:,.1f})"
                if (s, b) in cell else "" for b in batches]
        out.append(f"| {s} | " + " | ".join(vals) + " |")
    ranged = [r for r in rows if "decode_tok_s_total_range" in r]
    if meta.get("repeats", 1) > 1 and ranged:
        spread = max((r["decode_tok_s_total_range"][1] - r["decode_tok_s_total_range"][0]) / r["decode_tok_s_total"]
                     for r in ranged)
        out += ["", f"Each cell: the median of {meta['repeats']} timed generations after one warm-up; the largest "
                    f"spread (max - min) / median over the cells: {100 * spread:.1f}%."]
    # Which decode attention each cell ran (rows from before the flag existed ran SDPA): with the default flag our
    # kernel takes only the cells kernels/attention.py prefer_kernel picks, so say which.
    ran = {}
    for r in rows:
        ran.setdefault(r.get("decode_attention", "sdpa"), []).append(f"{r['quant']} batch {r['batch']}")
    names = {"kernel+rope": "our split-KV kernel with RoPE and the cache write (kv16_decode_step_attention)",
             "kernel+qrope": "our split-KV kernel with q's RoPE (kv16_decode_attention)",
             "kernel": "our split-KV kernel (kv16_decode_attention)", "sdpa": "F.scaled_dot_product_attention"}
    where = ["every cell"] if len(ran) == 1 else [", ".join(c) for c in ran.values()]
    out += ["", "Decode attention: " + "; ".join(f"{names.get(a, a)} in {w}" for a, w in zip(ran, where)) + "."]
    out += ["", "Effective bandwidth (weights + KV cache read per decode step / step time), % of the measured "
            "copy bandwidth, peak memory:", "",
            "| scheme | " + " | ".join(f"batch {b}" for b in batches) + " |", "|---|" + "---:|" * len(batches)]
    for s in schemes:
        vals = []
        for b in batches:
            r = cell.get((s, b))
            pct = f", {r['pct_bandwidth']:.0f}%" if r and r["pct_bandwidth"] else ""
            mem = f", {r['peak_memory_gb']:.1f} GB" if r and "peak_memory_gb" in r else ""
            vals.append(f"{r['effective_gb_s']:,.0f} GB/s{pct}{mem}" if r else "")
        out.append(f"| {s} | " + " | ".join(vals) + " |")
    if world > 1:
        out += ["", "All-reduce time of one decode step, measured alone (ms):", "",
                "| scheme | " + " | ".join(f"batch {b}" for b in batches) + " |", "|---|" + "---:|" * len(batches)]
        for s in schemes:
            vals = [f"{1e3 * cell[s, b]['all_reduce_s_per_step']:.3f}" if (s, b) in cell else "" for b in batches]
            out.append(f"| {s} | " + " | ".join(vals) + " |")
    return "\n".join(out) + "\n"


def plot(rows: list[dict], path: Path, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in dict.fromkeys(r["quant"] for r in rows):
        pts = sorted((r["batch"], r["decode_tok_s_total"]) for r in rows if r["quant"] == s)
        ax.plot(*zip(*pts), marker="o", label=s)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("decode tokens/s (total)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama-3-8b", help="preset name (random weights)")
    p.add_argument("--batch", default="1,8,32,64", help="comma-separated batch sizes")
    p.add_argument("--quant", default=None, type=schemes_arg, help="comma-separated schemes from quantize.py (default: "
                   f"{DEFAULT_QUANT}; with --smoke {SMOKE_QUANT})")
    p.add_argument("--quant-output", action="store_true", help="quantize the output head too")
    p.add_argument("--append", action="store_true",
                   help="merge into the bench.json already in --out (same model, device, torch and lengths): "
                        "fill a matrix over several runs; a cell measured again replaces the old one")
    p.add_argument("--prompt-len", type=int, default=128, help="synthetic prompt tokens per row")
    p.add_argument("--max-new-tokens", type=int, default=256, help="new tokens per row: the first from the prefill, the others timed as decode steps")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    p.add_argument("--no-compile", action="store_true", help="eager decode (no torch.compile, no CUDA graphs)")
    add_step_flags(p)
    p.add_argument("--repeats", type=int, default=3,
                   help="timed generations per cell; the median is reported, with the spread (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="seeds the random weights and prompts")
    p.add_argument("--out", type=Path, default=Path("out/bench"), help="folder for bench.json, .md, .png")
    p.add_argument("--smoke", action="store_true", help="tiny model, CPU, eager: checks the script runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.device, args.no_compile = "tiny", "cpu", True
        args.batch = "1,3"
        args.prompt_len, args.max_new_tokens = 8, 4
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    args.batch = [int(b) for b in args.batch.split(",")]
    apply_pdl_flag(args)
    args.quant = (args.quant or (SMOKE_QUANT if args.smoke else DEFAULT_QUANT)).split(",")
    dev = torch.device(args.device)
    rank, world = init_distributed(dev.type)  # (0, 1) unless started by torchrun
    if world > 1 and dev.type == "cuda":
        dev = torch.device("cuda", torch.cuda.current_device())
    console.quiet = rank != 0
    meta = {"model": args.model, "prompt_len": args.prompt_len, "max_new_tokens": args.max_new_tokens,
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), "commands": [" ".join(sys.argv)], "prefill": "eager",
            "compile_once": args.compile_once and dev.type == "cuda" and not args.no_compile, "repeats": args.repeats,
            "world_size": world, "pdl": pdl_report(args.pdl, dev, dev.type == "cuda" and not args.no_compile),
            "decode_attention": args.decode_attention if dev.type == "cuda" else "sdpa"}
    earlier = load_earlier(args.out / "bench.json", meta) if args.append else []

    def merged(rows):  # this run's cells replace the same (scheme, batch) cells of an appended-to run
        new = {(r["quant"], r["batch"]) for r in rows}
        return [r for r in earlier if (r["quant"], r["batch"]) not in new] + rows

    def write(rows):  # after every cell
        m = merged(rows)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench.json").write_text(json.dumps({"meta": meta, "rows": m}, indent=2))
        (args.out / "bench.md").write_text(markdown(m, meta))
        plot(m, args.out / "bench.png",
             f"{args.model}, prompt {args.prompt_len}, {args.max_new_tokens} new, {meta['device']}")

    rows = run_matrix(args, dev, rank, world, on_row=write)
    if rank == 0:
        print(markdown(merged(rows), meta))


def load_earlier(path: Path, meta: dict) -> list[dict]:
    """Rows of an earlier run in the same folder (--append), refused unless its setting matches this one."""
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    for key in ("model", "prompt_len", "max_new_tokens", "device", "torch", "prefill", "compile_once", "repeats",
                "world_size", "pdl", "decode_attention"):
        # older runs: one repeat, one process, no PDL, SDPA
        was = old["meta"].get(key, {"repeats": 1, "world_size": 1, "pdl": "off", "decode_attention": "sdpa"}.get(key))
        if was != meta[key]:
            raise SystemExit(f"--append: {path} was measured with {key}={was!r}, "
                             f"this run has {meta[key]!r}; use another --out")
    meta["commands"] = old["meta"].get("commands", []) + meta["commands"]
    meta["date"] = " / ".join(dict.fromkeys([old["meta"]["date"], meta["date"]]))
    return old["rows"]


if __name__ == "__main__":
    main()
