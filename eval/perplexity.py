"""Token-level perplexity of a model on a token sequence (e.g. wiki.test.raw, no BOS), for several
quantization schemes in one run:

    python eval/perplexity.py --quant none:float32,none:bfloat16,int8,int4-g64-sym --window 2048
    python eval/perplexity.py --smoke      # tiny random model, seconds (CI)

Also reports an lm-eval-style WORD perplexity (labelled as such): exp(total NLL of the scored tokens /
whitespace-separated words of the text those windows cover); it depends on the tokenizer far less.

Two ways to cut the sequence into windows of `window` tokens:
- stride None: consecutive non-overlapping windows; each predicts its last window-1 tokens from the
  tokens before them in the same window (the first token of a window is context only). A partial
  window at the end is dropped, as in the usual wikitext-2 evaluation.
- stride s (<= window): windows start every s tokens, and a final one ends at the last token; each
  window scores only the tokens no earlier window scored (never its own first token, which has no
  context). With s < window every token after the first is scored once, with at least window - s
  tokens of context outside the first window.
"""
import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"


def _plan(n: int, window: int, stride: int | None) -> list[tuple[int, int]]:
    """[(start, first scored index inside the window)]."""
    if window < 2:
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    if n < window:
        raise ValueError(f"{n} tokens is less than one window of {window}")
    if stride is None:
        return [(s, 1) for s in range(0, n - window + 1, window)]
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be between 1 and the window ({window}), got {stride}")
    starts = list(range(0, n - window + 1, stride))
    if starts[-1] + window < n:
        starts.append(n - window)
    plan, scored_to = [], 0  # tokens before scored_to are scored already
    for s in starts:
        plan.append((s, max(1, scored_to - s)))
        scored_to = s + window
    return plan


@torch.inference_mode()
def token_perplexity(model, ids, window: int, stride: int | None = None, batch: int = 1,
                     max_tokens: int | None = None, progress=True) -> dict:
    """Perplexity of `model` on `ids` (list or 1-D tensor of token ids), `batch` windows per forward.

    Returns {"ppl", "nll" (mean per scored token), "tokens" (scored), "windows", "window", "stride",
    "window_nll", "window_tokens" (each window's summed NLL and scored tokens, for `paired_difference`)};
    the NLL is summed in float64.
    """
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if max_tokens is not None:
        ids = ids[:max_tokens]
    plan = _plan(len(ids), window, stride)
    device = model.tok_embeddings.weight.device
    ids = ids.to(device)
    positions = torch.arange(window, device=device)
    nll, scored, cache_batch, window_nll, window_tokens = 0.0, 0, 0, [], []
    from generate import progress as progress_bar
    bar = progress_bar() if progress else None
    task = bar.add_task("perplexity", total=len(plan)) if bar else None
    if bar:
        bar.start()
    for first in range(0, len(plan), batch):
        group = plan[first:first + batch]
        if len(group) != cache_batch:  # the first group, and a smaller last one
            cache_batch = len(group)
            model.setup_caches(cache_batch, window)
        tokens = torch.stack([ids[s:s + window] for s, _ in group])
        logits = model(tokens, positions, torch.zeros(len(group), dtype=torch.long, device=device))
        for row, (_, off) in enumerate(group):
            # logits at column j predict token j + 1
            loss = F.cross_entropy(logits[row, off - 1:-1].float(), tokens[row, off:], reduction="sum")
            window_nll.append(loss.double().item())
            window_tokens.append(window - off)
            nll += window_nll[-1]
            scored += window - off
        if bar:
            bar.update(task, advance=len(group), description=f"perplexity {math.exp(nll / scored):.3f}")
    if bar:
        bar.stop()
    covered = plan[-1][0] + window  # ids[:covered] is the text the windows span
    return {"ppl": math.exp(nll / scored), "nll": nll / scored, "tokens": scored, "windows": len(plan),
            "window": window, "stride": stride, "covered_tokens": covered, "window_nll": window_nll,
            "window_tokens": window_tokens}


def paired_difference(a: dict, b: dict) -> tuple[float, float | None]:
    """log(ppl_a / ppl_b) of two `token_perplexity` results on the same tokens and windows, and its standard
    error with windows as independent samples (a ratio estimate: windows may score different token counts,
    as with --stride); None with one window. For small differences both read as relative differences of the
    perplexity. Two correct implementations of the same scheme differ by rounding flips that every later
    layer amplifies; this says how much of a difference such noise explains at the given token count
    (BENCHMARKS.md, "Perplexity through the op")."""
    if (a["tokens"], a["windows"], a["window"], a["stride"]) != (b["tokens"], b["windows"], b["window"], b["stride"]):
        raise ValueError("paired_difference needs results on the same tokens and windows")
    d = torch.tensor(a["window_nll"], dtype=torch.float64) - torch.tensor(b["window_nll"], dtype=torch.float64)
    t = torch.tensor(a["window_tokens"], dtype=torch.float64)
    n, diff = len(d), d.sum().item() / a["tokens"]
    if n < 2:
        return diff, None
    resid = d - diff * t  # per-window deviation from the common per-token difference
    return diff, math.sqrt(n / (n - 1) * resid.pow(2).sum().item()) / a["tokens"]


def main(argv=None):
    from quantize import quantize_, schemes_arg
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="as generate.py --model (a model with a tokenizer)")
    p.add_argument("--quant", default="none", type=schemes_arg,
                   help="comma-separated SCHEME[:DTYPE] entries, e.g. none:float32,int8")
    p.add_argument("--quant-output", action="store_true", help="quantize the output head too")
    p.add_argument("--corpus", type=Path, default=WIKITEXT, help="raw text file (default: WikiText-2 raw test)")
    p.add_argument("--window", type=int, default=2048, help="tokens per window (default: 2048)")
    p.add_argument("--stride", type=int, help="sliding windows (default: non-overlapping)")
    p.add_argument("--batch", type=int, default=1, help="windows per forward")
    p.add_argument("--max-tokens", type=int, help="only the first N tokens of the corpus")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="default: cuda if available")
    p.add_argument("--dtype", help="default DTYPE of entries: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--json", type=Path, help="write the table as JSON here")
    p.add_argument("--smoke", action="store_true", help="tiny random model and a made-up corpus (CI)")
    args = p.parse_args(argv)
    from checkpoint import load_model
    from generate import resolve_model_spec
    device = torch.device(args.device)
    default_dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    entries = [(e.split(":") + [default_dtype])[:2] for e in args.quant.split(",")]
    if args.smoke:
        args.model, args.corpus = "tiny", Path("random-ids")
        base, tok, info = load_model("tiny", device=device, dtype=torch.float32, random_weights=True)
        ids = torch.randint(0, base.args.vocab_size, (4 * args.window,), generator=torch.Generator().manual_seed(0))
        words = len(ids) // 2
    else:
        base, tok, info = load_model(resolve_model_spec(args.model), device=device, dtype=torch.float32)
        if tok is None:
            raise SystemExit(f"{args.model} has no tokenizer: perplexity needs one")
        text = args.corpus.read_text(encoding="utf-8")
        ids = tok.encode(text)[: args.max_tokens]
    rows = []
    for scheme, dtype in entries:
        model = copy.deepcopy(base).to(getattr(torch, dtype))
        if scheme != "none":
            quantize_(model, scheme, include_output=args.quant_output)
        t = time.perf_counter()
        r = token_perplexity(model, ids, args.window, args.stride, args.batch)
        if not args.smoke:
            words = len(tok.decode(ids[: r["covered_tokens"]]).split())
        r.update(scheme=scheme, dtype=dtype, word_ppl=math.exp(r["nll"] * r["tokens"] / words), words=words,
                 seconds=time.perf_counter() - t)
        rows.append(r)
        print(f"{scheme}:{dtype}: token ppl {r['ppl']:.3f}, word ppl {r['word_ppl']:.2f}", file=sys.stderr)
        del model
    stride = "non-overlapping" if args.stride is None else f"stride {args.stride}"
    print(f"\n{args.model}, {args.corpus.name}, windows of {args.window} ({stride}, no BOS), "
          f"{rows[0]['windows']} windows, {rows[0]['tokens']:,} scored tokens, {args.device}, torch {torch.__version__}\n")
    first = f"{rows[0]['scheme']}:{rows[0]['dtype']}"
    print(f"| scheme | dtype | token ppl | vs {first} (± paired s.e.) | word ppl (lm-eval style) |\n"
          "|---|---|---:|---:|---:|")
    for r in rows:
        diff, se = paired_difference(r, rows[0])
        r.update(vs_first=diff, vs_first_se=se)
        vs = "" if r is rows[0] else f"{100 * diff:+.3f}%" + (f" ± {100 * se:.3f}%" if se is not None else "")
        print(f"| {r['scheme']} | {r['dtype']} | {r['ppl']:.3f} | {vs} | {r['word_ppl']:.2f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": args.model, "corpus": str(args.corpus), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
