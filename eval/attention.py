"""Microbenchmark of the decode attention: our split-KV kernel (kernels.kv16_decode_attention) against
F.scaled_dot_product_attention (what model.py runs otherwise), per batch size and cache length.

    python eval/attention.py                        # Llama-3-8B's attention (8 KV heads x 4 rows, D 128)
    python eval/attention.py --batch 1,32 --seq 384,2048 --splits auto,1,4,16
    python eval/attention.py --smoke                # CPU, tiny shapes, the reference op only, seconds (CI)

Method (as eval/kernels.py): enough copies of the K/V caches that one pass exceeds 200 MB (2x+ the L2), one
CUDA graph calls the op once per copy, the graph is replayed --reps times, time per call = median replay /
copies.  Every configuration is first checked against the float32 reference on fresh random inputs.  The
bound of a call is its bytes (the visible K and V columns, q, mask and y) over the D2D copy rate (--bandwidth
measures it; otherwise 3.0e12 B/s).  `--visible` hides the cache's last columns, as a decode step does before
the cache fills: our kernel skips hidden columns, SDPA reads them.  Writes <out>/attention_bench{tag}.json
and .md; prints a short table last.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import kernels  # noqa: E402
from kernels import attention  # noqa: E402
from eval.kernels import time_graph  # noqa: E402
from generate import measured_bandwidth  # noqa: E402
from model import PRESETS, ModelArgs  # noqa: E402


def problem(B, H, R, S, D, visible, dtype, device, seed):
    """q (B, H, R, D), caches (B, H, S, D), an additive mask (B, S) hiding all but the first `visible` columns."""
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(B, H, R, D, generator=g, device=device, dtype=dtype)
    k = torch.randn(B, H, S, D, generator=g, device=device, dtype=dtype)
    v = torch.randn(B, H, S, D, generator=g, device=device, dtype=dtype)
    mask = torch.zeros(B, S, device=device, dtype=dtype)
    mask[:, visible:] = float("-inf")
    return q, k, v, mask


def ulp_error(y, q, k, v, mask):
    """y's largest error against the reference (float32 arithmetic, rounded once; kernels/attention.py ulp_error)."""
    return attention.ulp_error(y, kernels.reference_kv16_decode_attention(q, k, v, mask))


def step_args(q, k, v, mask, visible, seed):
    """kv16_decode_step_attention's arguments over the same cache: a (2, B, H, S, D) copy of k and v, this step's
    k_new/v_new, angles, and the decode column visible - 1."""
    B, H, _, D = q.shape
    g = torch.Generator(device=q.device).manual_seed(seed)
    k_new, v_new = (torch.randn(B, H, D, generator=g, device=q.device, dtype=q.dtype) for _ in range(2))
    angles = torch.rand(B, D // 2, generator=g, device=q.device) * 6.28
    pos = torch.tensor([visible - 1], device=q.device)
    return q, k_new, v_new, torch.stack((k, v)), mask, angles.cos(), angles.sin(), pos


def bench(B, S, args, bw, device):
    H, R, D = args.heads, args.rows, args.head_dim
    visible = max(1, round(S * args.visible))
    one = 2 * B * H * S * D * 2  # K and V bytes of one layer's cache
    copies = max(1, math.ceil(200e6 / one))
    probs = [problem(B, H, R, S, D, visible, torch.bfloat16, device, args.seed + c) for c in range(copies)]
    mask4 = [m[:, None, None, :].expand(B, 1, R, S).contiguous() for _, _, _, m in probs]  # (B, 1, R, S), as model.py
    nbytes = 2 * B * H * visible * D * 2 + 2 * (2 * B * H * R * D) + B * S * 2
    ext = kernels.load_extension()
    rows = []
    variants = [("sdpa", None)] + [(f"ours[{s}]", -1 if s == "auto" else int(s)) for s in args.splits]
    steps = []
    if args.step:  # the same caches as (2, B, H, S, D) buffers, written at column visible - 1 by every call
        steps = [step_args(*p, visible, args.seed + 1000 + c) for c, p in enumerate(probs)]
        variants += [(f"step[{s}]", -1 if s == "auto" else int(s)) for s in args.splits]
    for name, splits in variants:
        if splits is None:
            fn = lambda c: F.scaled_dot_product_attention(*probs[c][:3], attn_mask=mask4[c])  # noqa: E731
        elif name.startswith("step"):
            fn = lambda c, s=splits: ext.decode_step_attention(*steps[c], s)  # noqa: E731
        else:
            fn = lambda c, s=splits: ext.decode_attention(*probs[c], splits=s)  # noqa: E731
        if name.startswith("step"):  # against the reference attention of the rotated q over the written cache
            q, k_new, v_new, kv, mask, cos, sin, _ = steps[0]
            y = fn(0)
            err = attention.ulp_error(y, kernels.reference_kv16_decode_attention(
                attention.rotate(q, cos, sin), kv[0], kv[1], mask))
        else:
            err = ulp_error(fn(0), *probs[0])
        if splits is not None and not err <= 1.5:  # ours: its fp32 result rounded once, plus fp32 noise
            raise SystemExit(f"{name} B={B} S={S}: error {err:.2f} ulp of bf16 against the reference")
        t = time_graph(fn, copies, args.reps, device)
        ran = ext.decode_attention_splits(B * H, S, torch.cuda.get_device_properties(device).multi_processor_count) \
            if splits == -1 else splits
        rows.append(dict(batch=B, seq=S, visible=visible, variant=name, splits=ran, us=t * 1e6,
                         gb_s=nbytes / t / 1e9, pct_bound=100 * nbytes / bw / t, err_ulp=err, copies=copies))
        print(f"B={B:3d} S={S:5d} visible={visible:5d} {name:10s} {t * 1e6:8.2f} us {nbytes / t / 1e9:8.1f} GB/s "
              f"({100 * nbytes / bw / t:5.1f}% of bound) err {err:.2f} ulp", flush=True)
    del probs, mask4, steps
    torch.cuda.empty_cache()
    return rows


def smoke(args):
    """CPU: the reference op against SDPA on tiny shapes; checks the plumbing, times nothing."""
    for B, H, R, S, D in ((1, 2, 4, 40, 64), (3, 1, 3, 17, 128)):
        q, k, v, mask = problem(B, H, R, S, D, S - 5, torch.bfloat16, "cpu", 0)
        y = kernels.kv16_decode_attention(q, k, v, mask)
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask.float()[:, None, None])
        err = (y.float() - ref).abs().max().item()
        assert err < 2e-2, err
        print(f"| {B}x{H}x{R}x{D}, S={S} | reference vs SDPA (float32) | max abs err {err:.1e} |")
        q, k_new, v_new, kv, mask, cos, sin, pos = step_args(q, k, v, mask, S - 5, 0)  # --step's plumbing
        y = kernels.kv16_decode_step_attention(q, k_new, v_new, kv, mask, cos, sin, pos)
        assert torch.equal(kv[1, :, :, S - 6], v_new) and torch.isfinite(y).all()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "attention_bench_smoke.json").write_text(json.dumps({"ok": True}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="llama-3-8b", choices=list(PRESETS), metavar="PRESET",
                    help="model whose attention shape is timed (default: llama-3-8b): " + ", ".join(PRESETS))
    ap.add_argument("--batch", default="1,8,32,64", help="comma-separated batch sizes (default: %(default)s)")
    ap.add_argument("--seq", default="384,2048", help="comma-separated cache lengths S (default: %(default)s)")
    ap.add_argument("--visible", type=float, default=1.0,
                    help="share of the cache's columns visible to the query (default: 1.0, all)")
    ap.add_argument("--splits", default="auto",
                    help="comma-separated column-split counts for our kernel: 'auto' (the heuristic, csrc/ops.cpp "
                         "decode_attention_splits) or numbers (default: %(default)s)")
    ap.add_argument("--step", action="store_true",
                    help="also time kv16_decode_step_attention (RoPE and this step's cache write in the kernel) as "
                         "step[...] rows, over the same caches")
    ap.add_argument("--bandwidth", action="store_true", help="measure the D2D copy bandwidth first")
    ap.add_argument("--reps", type=int, default=20, help="graph replays per timing; the median is reported")
    ap.add_argument("--out", default=os.environ.get("OUT", "out"), help="output folder (default: $OUT or ./out)")
    ap.add_argument("--tag", default="", help="suffix of the output file names")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, the reference op only (CI)")
    args = ap.parse_args()
    if args.smoke:
        return smoke(args)
    m = ModelArgs.from_name(args.preset)
    args.heads, args.rows, args.head_dim = m.n_kv_heads, m.n_heads // m.n_kv_heads, m.head_dim
    args.splits = args.splits.split(",")
    for s in args.splits:
        if s != "auto" and not (s.isdigit() and int(s) >= 1):
            ap.error(f"--splits: 'auto' or a positive count, got {s!r}")
    if not 0 < args.visible <= 1:
        ap.error(f"--visible must be in (0, 1], got {args.visible}")
    if not torch.cuda.is_available():
        sys.exit("eval/attention.py needs a CUDA GPU (use --smoke on CPU)")
    device = torch.device("cuda")
    bw, src = (measured_bandwidth(device), "measured D2D copy, read+write") if args.bandwidth else (3.0e12, "assumed")
    print(f"{args.preset}: {args.heads} KV heads x {args.rows} rows, head_dim {args.head_dim}; bandwidth "
          f"{bw / 1e12:.2f} TB/s ({src})", flush=True)
    rows = []
    for B in map(int, args.batch.split(",")):
        for S in map(int, args.seq.split(",")):
            rows += bench(B, S, args, bw, device)
    meta = dict(preset=args.preset, device=torch.cuda.get_device_name(), torch=torch.__version__,
                date=time.strftime("%Y-%m-%d"), command=" ".join(sys.argv), bandwidth_b_s=bw, bandwidth_source=src)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"attention_bench{args.tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"Decode attention, {args.preset}, {meta['device']}, torch {meta['torch']}, {meta['date']}: "
             f"`{meta['command']}`", "", "| batch | S | visible | variant | splits | us | GB/s | % of bound |",
             "|---:|---:|---:|---|---:|---:|---:|---:|"]
    lines += [f"| {r['batch']} | {r['seq']} | {r['visible']} | {r['variant']} | {r['splits'] or ''} | {r['us']:.2f} "
              f"| {r['gb_s']:,.0f} | {r['pct_bound']:.1f}% |" for r in rows]
    (out / f"attention_bench{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
