"""Round-to-nearest quantization arithmetic shared by quantize.py's schemes (no modules here).

`quantize_int4` holds the three int4 rules (symmetric as GGUF Q4_0, float zero as Q4_1/tinygemm/HQQ,
integer zero as AWQ/GPTQ); `pack_nibbles` is tinygemm's byte order, also our checkpoints' int4 format;
`quantize_int8_rows` and `quantize_fp8_rows` are the per-row (per output channel) rules of int8 and fp8;
`nonzero_scale` turns scales into safe divisors for every scheme; `round_up` and `pad_cols` size and fill
the K padding.

Every int4 scheme stores q unsigned in 0..15 with w = s*q + m per group of K: `sym` keeps q+8 and no
m (m = -8s), `asym` uses the group min as a float m (tinygemm/HQQ/GGUF Q4_1), `azp` an integer zero
point z in 0..15 stored as m = -s*z (AWQ/GPTQ); `sym` takes s = -(the signed weight of largest magnitude)/8
(GGUF Q4_0's rule).
"""
import torch


def round_up(a: int, b: int) -> int:
    return -(-a // b) * b


def pad_cols(x: torch.Tensor, Kp: int) -> torch.Tensor:
    """x (..., K) -> (..., Kp) contiguous, zero columns appended (a no-op when already so): the activations'
    side of the K padding that quantize_int4's k_multiple gives the weights."""
    return (x if x.shape[-1] == Kp else torch.nn.functional.pad(x, (0, Kp - x.shape[-1]))).contiguous()


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """q (N, K) uint8 in 0..15, K even -> (N, K/2) uint8, byte = q[2i] << 4 | q[2i+1] (tinygemm's order)."""
    return (q[:, 0::2] << 4) | q[:, 1::2]


def unpack_nibbles(p: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_nibbles: (N, K/2) uint8 -> (N, K) uint8."""
    return torch.stack((p >> 4, p & 15), dim=-1).flatten(1)  # (N, K/2, 2) -> (N, K)


def nonzero_scale(s: torch.Tensor) -> torch.Tensor:
    """Scales as float32 divisors: zero (an all-zero group or row) becomes the smallest normal float;
    the sign is kept (symmetric int4 scales may be negative)."""
    s = s.float()
    return torch.where(s == 0, torch.finfo(torch.float32).tiny, s)


def quantize_int4(w: torch.Tensor, group_size: int, zero: str, dtype: torch.dtype, k_multiple: int = 0):
    """Round-to-nearest int4 of w (N, K) in groups of `group_size` along K, computed in float32.

    Returns q (N, Kp) uint8 in 0..15, scales (N, G) and offsets m (N, G) (None for `sym`) in `dtype`,
    with w ~ s*q + m (sym: s*(q-8)). Kp = K rounded up to the group (or to k_multiple): the padding
    columns repeat the last column, so they never widen the last group's range; callers slice them
    off (or feed zeros). q is rounded against the scales and offsets as stored in `dtype`.
    """
    N, K = w.shape
    Kp = round_up(K, k_multiple or group_size)
    w = w.float()
    if Kp != K:
        w = torch.cat([w, w[:, -1:].expand(N, Kp - K)], dim=1)
    g = w.view(N, Kp // group_size, group_size)  # (N, G, group)
    if zero == "sym":
        # GGUF Q4_0's rule: the weight of largest magnitude maps to level -8 exactly (so s takes its
        # opposite sign), and all 16 levels are used; max|w|/7 would leave level -8 unused and cost
        # SmolLM2 2.9 perplexity points at g64 (BENCHMARKS.md).
        peak = g.gather(-1, g.abs().argmax(-1, keepdim=True))[..., 0]  # (N, G) signed extreme
        s = (peak / -8).to(dtype)
        sd = nonzero_scale(s)[..., None]
        q, m = (g / sd).round().clamp(-8, 7) + 8, None
    elif zero in ("asym", "azp"):
        lo, hi = g.amin(-1), g.amax(-1)
        s = ((hi - lo) / 15).to(dtype)
        sd = nonzero_scale(s)[..., None]
        if zero == "asym":
            m = lo.to(dtype)
            q = ((g - m.float()[..., None]) / sd).round().clamp(0, 15)
        else:
            z = (-lo[..., None] / sd).round().clamp(0, 15)  # (N, G, 1)
            m = (-s.float() * z[..., 0]).to(dtype)
            q = ((g / sd).round() + z).clamp(0, 15)
    else:
        raise ValueError(f"unknown int4 zero mode {zero!r}; known: sym, asym, azp")
    return q.to(torch.uint8).view(N, Kp), s, m  # (N, G, group) -> (N, Kp)


def quantize_int8_rows(w: torch.Tensor, dtype: torch.dtype):
    """w (N, K) -> int8 q (N, K) in -127..127 and scales (N,) in dtype, w ~ scales[n] * q[n, k]."""
    w = w.float()
    s = (w.abs().amax(1) / 127).to(dtype)
    return (w / nonzero_scale(s)[:, None]).round().clamp(-127, 127).to(torch.int8), s


FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max


def quantize_fp8_rows(t: torch.Tensor):
    """t (R, K) -> fp8 e4m3 (R, K) and float32 scales (R, 1), t ~ fp8 * scale."""
    t = t.float()
    s = nonzero_scale(t.abs().amax(-1, keepdim=True) / FP8_MAX)
    return (t / s).clamp(-FP8_MAX, FP8_MAX).to(FP8), s
