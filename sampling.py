"""Next-token sampling for batched decoding: greedy or temperature / top-k / top-p, on the GPU without a host
synchronisation (generate.py's prefill and decode steps call `sample` inside their compiled graphs)."""
import torch
import torch.nn.functional as F

ARGMAX_CHUNK = 1024


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """x (B, V) -> (B,), torch.argmax(x, -1) exactly (the first maximum; NaN counts as the maximum), in two stages.

    Inductor (torch 2.11) compiled `logits.argmax(-1)` as one looped reduction program per row: at batch 32 it took
    31.8 us of the decode step on 32 of an H100's 132 SMs for Llama-3's 128,256 logits (eval/decode_profile.py;
    eval/results/h100_2026-12-07_s48/call7/, kernel `..._argmax_..._10`). Chunks of ARGMAX_CHUNK give B * V / 1,024
    programs first, then a (B, V / 1,024) argmax.
    """
    B, V = x.shape
    n = -(-V // ARGMAX_CHUNK)
    if n < 2:
        return x.argmax(-1)
    x = F.pad(x, (0, n * ARGMAX_CHUNK - V), value=float("-inf"))  # (B, n * chunk); a pad never beats a real -inf
    best, at = x.view(B, n, ARGMAX_CHUNK).max(-1)  # (B, n): each chunk's maximum and its first index
    c = best.argmax(-1, keepdim=True)  # (B, 1): the first chunk holding the row's maximum
    return (c * ARGMAX_CHUNK + at.gather(-1, c)).squeeze(-1)


def sample(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """logits (B, V) float -> next ids (B,). Greedy at temperature 0; no host synchronisation."""
    if temperature <= 0:
        return argmax_rows(logits)
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        p = sorted_logits.softmax(-1)
        drop = p.cumsum(-1) - p > top_p  # keep the smallest prefix reaching top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    # Exponential-race sampling: argmax(p / E), E ~ Exp(1), draws from p without torch.multinomial's sync.
    return argmax_rows(probs / torch.empty_like(probs).exponential_(1))
