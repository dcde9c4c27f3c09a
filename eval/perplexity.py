"""Token-level perplexity of a model on a token sequence (e.g. wiki.test.raw, no BOS).

Two ways to cut the sequence into windows of `window` tokens:
- stride None: consecutive non-overlapping windows; each predicts its last window-1 tokens from the
  tokens before them in the same window (the first token of a window is context only). A partial
  window at the end is dropped, as in the usual wikitext-2 evaluation.
- stride s (<= window): windows start every s tokens, and a final one ends at the last token; each
  window scores only the tokens no earlier window scored (never its own first token, which has no
  context). With s < window every token after the first is scored once, with at least window - s
  tokens of context outside the first window.
"""
import math
import sys
import time

import torch
import torch.nn.functional as F


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

    Returns {"ppl", "nll" (mean per scored token), "tokens" (scored), "windows", "window", "stride"};
    the NLL is summed in float64.
    """
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if max_tokens is not None:
        ids = ids[:max_tokens]
    plan = _plan(len(ids), window, stride)
    device = model.tok_embeddings.weight.device
    ids = ids.to(device)
    positions = torch.arange(window, device=device)
    nll, scored, cache_batch, t0 = 0.0, 0, 0, time.perf_counter()
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
            nll += loss.double().item()
            scored += window - off
        if progress:
            done = first + len(group)
            print(f"perplexity: window {done}/{len(plan)}, ppl so far {math.exp(nll / scored):.3f}, "
                  f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return {"ppl": math.exp(nll / scored), "nll": nll / scored, "tokens": scored, "windows": len(plan),
            "window": window, "stride": stride}
