"""Microbenchmark of the int4 weight-only GEMM against cuBLAS bf16 and tinygemm, per linear and per M.

    python eval/kernels.py                         # Llama-3-8B's four linears, g128, M = 1..1024 (GPU)
    python eval/kernels.py --preset llama-2-7b --ms 1,16,64 --bandwidth
    python eval/kernels.py --smoke                 # CPU, tiny shapes, reference paths only, seconds (CI)

Method (kernels/NOTES.md): each scheme's weights are replicated into enough copies that one pass over
them exceeds 2x the L2 (>= 200 MB), one CUDA graph calls the op once per copy, and the graph is replayed;
time per call = median replay time / copies.  Before timing, every scheme's output is checked against the
float reference on fresh random inputs.  The bandwidth bound of a call is its minimal bytes (int4 weights,
scales (+zeros), x read once, y written once) over the D2D copy rate (--bandwidth measures it: bytes read
+ bytes written over time; default 3.0e12 B/s, the H100 figure).  The scheme `read_int4` is a floor, not
a GEMM: one PyTorch reduction (amax) over the same packed int4 weight bytes in the same harness, i.e. what
merely reading them costs per call, launch and tail included (no output to check).  Writes
<out>/kernels_bench.json and <out>/kernels_bench.md; prints a short table last.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import kernels  # noqa: E402
from generate import measured_bandwidth  # noqa: E402
from model import PRESETS, ModelArgs  # noqa: E402
from quantize import Int4Marlin  # noqa: E402

def layer_linears(preset: str, group_size: int) -> list[tuple[str, int, int]]:
    """(name, N, K) of one decoder layer's fused linears, from model.py's preset.

    A K that is not a multiple of the group (SmolLM2's 576 at g128) is timed zero-padded up to the next
    multiple of max(group, 64) by Int4Marlin.padded_shape, as int4-marlin stores it (and says so): every scheme, cuBLAS
    included, then runs the same padded (N, K), which is what the model runs.
    """
    a = ModelArgs.from_name(preset)
    shapes = [("qkv", (a.n_heads + 2 * a.n_kv_heads) * a.head_dim, a.dim), ("o", a.dim, a.n_heads * a.head_dim),
              ("gate_up", 2 * a.ffn_dim, a.dim), ("down", a.dim, a.ffn_dim)]
    out = []
    for name, N, K in shapes:
        Kp = Int4Marlin.padded_shape(N, K, group_size)[1]
        if Kp != K:
            print(f"  {name}: K={K} is not a multiple of group {group_size}: timed at K={Kp} (zero-padded, as the "
                  f"int4 schemes store it)")
        out.append((name, N, Kp))
    return out


DEFAULT_MS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024]
# scheme suffix -> the op's forced path (kernels.PATHS); no suffix = the heuristic (choose_path)
FORCED_PATHS = {"mma": 0, "dq": 1, "stream": 2, "smem": 3, "swap": 4, "wgmma": 5, "ws": 6}


def forced(scheme: str) -> tuple[int, int, int]:
    """(path, split-K count, m16 tiles per CTA) a scheme name forces: ours_sym -> (-1, -1, -1),
    ours_sym[stream] -> (2, -1, -1), ours_sym[stream/s4] -> (2, 4, -1), ours_sym[mma/mt2] -> (0, -1, 2),
    ours_sym[smem/s2/mt1] -> (3, 2, 1); -1 leaves the choice to the op."""
    if "[" not in scheme:
        return -1, -1, -1
    name, *knobs = scheme[scheme.index("[") + 1:-1].split("/")
    splits = m_tiles = -1
    for knob in knobs:
        if knob.startswith("mt") and knob[2:] in ("1", "2", "4", "8"):
            m_tiles = int(knob[2:])
        elif knob.startswith("s") and knob[1:].isdigit() and int(knob[1:]) > 0:
            splits = int(knob[1:])
        else:
            raise SystemExit(f"{scheme}: unknown knob {knob!r} (sN: N splits of K; mt1, mt2, mt4, mt8 (wgmma only): m16 tiles per CTA)")
    if name not in FORCED_PATHS:
        raise SystemExit(f"{scheme}: unknown path {name!r}, one of {', '.join(FORCED_PATHS)}")
    return FORCED_PATHS[name], splits, m_tiles
ROTATE_BYTES = 200e6  # > 2 x the H100's 50 MB L2


def make_quant(N, K, gs, device, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randint(0, 16, (N, K), generator=g, device=device, dtype=torch.uint8)
    s = (torch.rand(N, K // gs, generator=g, device=device) * 0.02 + 0.005).to(torch.bfloat16)
    m = (-(torch.rand(N, K // gs, generator=g, device=device) * 8 + 4) * s.float()).to(torch.bfloat16)
    return q, s, m


def tinygemm_pack(q, s, m, gs):
    """aten tinygemm packing.  Its dequant is w = (q - 8) * scale + zero, so zero = m + 8 s.

    torch >= 2.5 (2.11, 2.14): _convert_weight_to_int4pack takes uint8 (N, K/2), two nibbles per byte,
    even k in the high nibble; older releases took int32 (N, K).
    """
    try:
        w = torch.ops.aten._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).contiguous(), 8)
    except RuntimeError:
        w = torch.ops.aten._convert_weight_to_int4pack(q.to(torch.int32).contiguous(), 8)
    sz = torch.stack([s.float(), m.float() + 8 * s.float()], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
    return w, sz


def time_graph(fn_per_copy, copies, reps, device):
    """Median seconds per call: one graph calls fn_per_copy(c) for every copy, replayed `reps` times."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for c in range(copies):  # warm-up (module load, workspace, cuBLAS handles) outside capture
            fn_per_copy(c)
    torch.cuda.current_stream(device).wait_stream(stream)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = [fn_per_copy(c) for c in range(copies)]
    graph.replay()
    torch.cuda.synchronize(device)
    times = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        graph.replay()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1) * 1e-3 / copies)
    del outs, graph
    return statistics.median(times)


def rel_err(y, ref):
    return (y.float() - ref.float()).norm().item() / max(ref.float().norm().item(), 1e-30)


def bench_linear(name, N, K, gs, ms, schemes, bw, reps, device, seed):
    """All schemes x all M for one (N, K); returns result rows."""
    rows = []
    q, s, m = make_quant(N, K, gs, device, seed)
    w_sym = kernels.dequantize(q, s, None, gs, dtype=torch.bfloat16)
    w_asym = kernels.dequantize(q, s, m, gs, dtype=torch.bfloat16)
    packed = {"sym": kernels.pack_w4(q, s, None, gs), "asym": kernels.pack_w4(q, s, m, gs)}
    int4_bytes = N * K // 2 + (K // gs) * N * 2
    own_weight_bytes = {
        "cublas": N * K * 2,
        "tinygemm": N * K // 2 + (K // gs) * N * 4,
        "ours_sym": int4_bytes,
        "ours_asym": int4_bytes + (K // gs) * N * 2,
        "read_int4": N * K // 2,
    }
    weights = {}
    if "tinygemm" in schemes:
        try:
            weights["tinygemm"] = tinygemm_pack(q, s, m, gs)
        except RuntimeError as e:  # e.g. K not a multiple of 1024 for innerKTiles=8
            print(f"  tinygemm unavailable for {name} ({N}x{K}): {str(e).splitlines()[0]}")
    for scheme in schemes:
        if scheme == "tinygemm" and "tinygemm" not in weights:
            continue
        wbytes = own_weight_bytes[scheme.split("[")[0]]
        copies = max(2, math.ceil(ROTATE_BYTES / wbytes))
        if scheme == "cublas":
            base, ref_w = w_sym, w_sym
            copy_list = [base.clone() for _ in range(copies)]
        elif scheme == "tinygemm":
            base, ref_w = weights["tinygemm"], w_asym
            copy_list = [tuple(t.clone() for t in base) for _ in range(copies)]
        elif scheme == "read_int4":
            base, ref_w = packed["sym"][0], None  # (N, K/8) int32: the packed nibbles alone
            copy_list = [base.clone() for _ in range(copies)]
        else:
            kind = "sym" if "sym" == scheme.split("_")[1].split("[")[0] else "asym"
            base, ref_w = packed[kind], (w_sym if kind == "sym" else w_asym)
            copy_list = [tuple(None if t is None else t.clone() for t in base) for _ in range(copies)]
        for M in ms:
            x = torch.randn(M, K, device=device, dtype=torch.bfloat16)
            path, splits, m_tiles = forced(scheme)
            if path == 4 and M > 8:  # the swapped-operand kernel takes at most 8 rows: "-" in the tables
                continue
            if scheme == "cublas":
                fn = lambda c: F.linear(x, copy_list[c])  # noqa: E731
            elif scheme == "tinygemm":
                fn = lambda c: torch.ops.aten._weight_int4pack_mm(x, copy_list[c][0], gs, copy_list[c][1])  # noqa: E731
            elif scheme == "read_int4":
                fn = lambda c: copy_list[c].amax()  # noqa: E731
            else:
                fn = lambda c: kernels.gemm_path(x, *copy_list[c], gs, path, splits, m_tiles)  # noqa: E731
            err = 0.0 if ref_w is None else rel_err(fn(0), x.float() @ ref_w.float().t())
            ok = err < 1e-2
            t = time_graph(fn, copies, reps, device)
            bytes_total = wbytes if ref_w is None else wbytes + M * K * 2 + M * N * 2
            bound_int4 = (int4_bytes + M * K * 2 + M * N * 2) / bw
            rows.append(dict(linear=name, N=N, K=K, M=M, scheme=scheme, us=t * 1e6, rel_err=err, check=ok,
                             copies=copies, bytes=bytes_total, GBps=bytes_total / t / 1e9,
                             pct_own_bound=100 * bytes_total / bw / t, bound_int4_us=bound_int4 * 1e6,
                             pct_int4_bound=100 * bound_int4 / t,
                             splits=splits, m_tiles=m_tiles, path=(kernels.choose_path(M, N, K) if path < 0 and scheme.startswith("ours")
                                   else kernels.PATHS[path] if path >= 0 else "-")))
            r = rows[-1]
            print(f"  {name:8s} M={M:5d} {scheme:16s} {r['us']:9.2f} us  {r['GBps']:7.0f} GB/s  "
                  f"{r['pct_int4_bound']:6.1f}% int4 bound  err={err:.1e}{'' if ok else '  CHECK FAILED'}",
                  flush=True)
        copy_list = []  # free this scheme's weight copies before the next one
        torch.cuda.empty_cache()
    return rows


def launch_fit(sel) -> tuple[float, float] | tuple[None, None]:
    """Least squares of t = fixed + bytes / rate over linears of different sizes (each row: its own bytes and
    us): (fixed us, rate in TB/s), or Nones with fewer than two sizes. Separates what every launch pays
    (start-up, tail, reductions) from the streaming rate (kernels/NOTES.md, open issue 1)."""
    xs = [r["bytes"] for r in sel]
    if len(set(xs)) < 2:
        return None, None
    ys = [r["us"] for r in sel]
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)  # us per byte
    return my - slope * mx, (1e-6 / slope if slope > 0 else None)  # 1/slope B per us = 1e-6/slope TB/s


def summarize(rows, ms, schemes):
    """Sum over the linears per (scheme, M), and the per-launch fit."""
    out = []
    for scheme in schemes:
        for M in ms:
            sel = [r for r in rows if r["scheme"] == scheme and r["M"] == M]
            if not sel:
                continue
            us = sum(r["us"] for r in sel)
            bound = sum(r["bound_int4_us"] for r in sel)
            fixed, rate = launch_fit(sel)
            out.append(dict(scheme=scheme, M=M, us=us, bound_int4_us=bound, pct_int4_bound=100 * bound / us,
                            linears=len(sel), fit_fixed_us=fixed, fit_rate_tb_s=rate))
    return out


def markdown(rows, summary, meta):
    lines = [f"# w4a16 microbenchmark: {meta['preset']} g{meta['group_size']}", "",
             f"device: {meta['device']}; torch {meta['torch']}; bandwidth {meta['bandwidth'] / 1e12:.2f} TB/s "
             f"({meta['bandwidth_source']}); median of {meta['reps']} graph replays, weights rotated over "
             f">= {ROTATE_BYTES / 1e6:.0f} MB.", "",
             "## Sum over the linears (us; % of the int4 sym bandwidth bound)", ""]
    schemes = list(dict.fromkeys(r["scheme"] for r in summary))
    ms = sorted({r["M"] for r in summary})
    lines.append("| M | bound us | " + " | ".join(schemes) + " |")
    lines.append("|---|---|" + "---|" * len(schemes))
    for M in ms:
        cells = []
        bound = next(r["bound_int4_us"] for r in summary if r["M"] == M)
        for s in schemes:
            r = next((r for r in summary if r["M"] == M and r["scheme"] == s), None)
            cells.append("-" if r is None else f"{r['us']:.1f} ({r['pct_int4_bound']:.0f}%)")
        lines.append(f"| {M} | {bound:.1f} | " + " | ".join(cells) + " |")
    lines += ["", "## Per-launch fit: t = fixed + bytes / rate over the linears (us, TB/s)", "",
              "| M | " + " | ".join(schemes) + " |", "|---|" + "---|" * len(schemes)]
    for M in ms:
        cells = []
        for s in schemes:
            r = next((r for r in summary if r["M"] == M and r["scheme"] == s), None)
            ok = r is not None and r["fit_rate_tb_s"] is not None
            cells.append(f"{r['fit_fixed_us']:.1f} + B / {r['fit_rate_tb_s']:.2f}" if ok else "-")
        lines.append(f"| {M} | " + " | ".join(cells) + " |")
    lines += ["", "## Per linear", "", "| linear | M | scheme | path | us | GB/s | % own bound | % int4 bound | rel err |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['linear']} ({r['N']}x{r['K']}) | {r['M']} | {r['scheme']} | {r['path']} | {r['us']:.2f} | "
                     f"{r['GBps']:.0f} | {r['pct_own_bound']:.1f} | {r['pct_int4_bound']:.1f} | {r['rel_err']:.1e} |")
    return "\n".join(lines) + "\n"


def smoke(args):
    """CPU: tiny shapes through the reference op; checks the plumbing, times nothing meaningful."""
    rows = []
    for name, N, K in [("a", 128, 256), ("b", 256, 128)]:
        q, s, m = make_quant(N, K, 64, "cpu", 0)
        for kind, z in (("sym", None), ("asym", m)):
            pw, sp, zp = kernels.pack_w4(q, s, z, 64)
            w = kernels.dequantize(q, s, z, 64, dtype=torch.bfloat16)
            for M in (1, 4):
                x = torch.randn(M, K, dtype=torch.bfloat16)
                t0 = time.perf_counter()
                y = kernels.w4a16_gemm(x, pw, sp, zp, 64)
                t = time.perf_counter() - t0
                err = rel_err(y, x.float() @ w.float().t())
                assert err < 1e-2, err
                rows.append(dict(linear=name, N=N, K=K, M=M, scheme=f"reference_{kind}", us=t * 1e6, rel_err=err))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernels_bench_smoke.json").write_text(json.dumps(rows, indent=1))
    print("| linear | M | scheme | us (CPU) | rel err |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['linear']} ({r['N']}x{r['K']}) | {r['M']} | {r['scheme']} | {r['us']:.0f} | {r['rel_err']:.1e} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="llama-3-8b", choices=list(PRESETS), metavar="PRESET",
                    help="model whose linear shapes (N, K) are timed (default: llama-3-8b): "
                         + ", ".join(PRESETS))
    ap.add_argument("--group-size", type=int, default=128, help="int4 group size along K (default: 128)")
    ap.add_argument("--ms", default=",".join(map(str, DEFAULT_MS)),
                    help="comma-separated M values (rows of x: batch x tokens) (default: %(default)s)")
    ap.add_argument("--schemes", default="cublas,tinygemm,ours_sym,ours_asym",
                    help="also: ours_sym[mma], ours_sym[dq], ours_sym[stream], ours_sym[smem], ours_sym[swap], "
                         "ours_sym[wgmma], ours_sym[ws] (force the mma kernel / dequantize+cuBLAS / the streaming "
                         "kernel with its ring in registers / in shared memory / with swapped operands, M <= 8 only / "
                         "the wgmma kernel / the wgmma kernel with a producer warp, both compute capability 9.0 "
                         "only), ours_sym[stream/s4] "
                         "(and split K in 4), ours_sym[mma/mt2] (2 m16 tiles per CTA; "
                         "mt1, mt2, mt4, and mt8 for wgmma; combine as [smem/s2/mt2]); likewise ours_asym[...]; read_int4 "
                         "(a floor: one reduction reading the packed int4 weights, no GEMM)")
    ap.add_argument("--bandwidth", action="store_true", help="measure the D2D copy bandwidth first")
    ap.add_argument("--reps", type=int, default=20, help="graph replays per timing; the median is reported")
    ap.add_argument("--out", default=os.environ.get("OUT", "out"), help="output folder (default: $OUT or ./out)")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU, tiny shapes, reference paths only: checks the script runs (CI)")
    ap.add_argument("--tag", default="", help="suffix of the output file names")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    args = ap.parse_args()
    if args.smoke:
        return smoke(args)
    schemes = args.schemes.split(",")
    for scheme in schemes:  # refuse a bad name before minutes of timing
        if scheme.split("[")[0] not in ("cublas", "tinygemm", "ours_sym", "ours_asym", "read_int4"):
            ap.error(f"unknown scheme {scheme!r}: cublas, tinygemm, ours_sym[...], ours_asym[...] or read_int4")
        if scheme.startswith("ours"):
            forced(scheme)
        elif "[" in scheme:
            ap.error(f"{scheme!r}: only ours_sym and ours_asym take [path/knobs]")
    if not torch.cuda.is_available():
        sys.exit("eval/kernels.py needs a CUDA GPU (use --smoke on CPU)")
    device = torch.device("cuda")
    ms = [int(v) for v in args.ms.split(",")]
    t0 = time.perf_counter()
    kernels.load_extension()
    print(f"extension ready in {time.perf_counter() - t0:.1f}s", flush=True)
    bw, src = (measured_bandwidth(device), "measured D2D copy, read+write") if args.bandwidth else (3.0e12, "assumed")
    print(f"bandwidth {bw / 1e12:.2f} TB/s ({src})", flush=True)
    rows = []
    for i, (name, N, K) in enumerate(layer_linears(args.preset, args.group_size)):
        rows += bench_linear(name, N, K, args.group_size, ms, schemes, bw, args.reps, device, args.seed + i)
    summary = summarize(rows, ms, schemes)
    meta = dict(preset=args.preset, group_size=args.group_size, device=torch.cuda.get_device_name(),
                torch=torch.__version__, bandwidth=bw, bandwidth_source=src, reps=args.reps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"kernels_bench{args.tag}.json").write_text(json.dumps(dict(meta=meta, rows=rows, summary=summary), indent=1))
    md = markdown(rows, summary, meta)
    (out / f"kernels_bench{args.tag}.md").write_text(md)
    print()
    print(md.split("## Per linear")[0])


if __name__ == "__main__":
    main()
