"""Pure-PyTorch reference and input checks for lowbit::kv16_decode_attention (csrc/attention_kernel.cu).

    y = kv16_decode_attention(q, k_cache, v_cache, mask, rope_cos=None, rope_sin=None)

q (B, H, R, D): the R query heads that share KV head h, as R rows of that head (model.py's GQA layout),
one query position per sequence (a decode step); k_cache, v_cache (B, H, S, D) contiguous; mask (B, S),
additive, the same for every head and row (-inf hides a column); all bfloat16 or all float16.
y (B, H, R, D) = softmax(q k^T / sqrt(D) + mask) v, in q's dtype; a row with no visible column is NaN
(model.py never makes one; SDPA's answer there differs by backend and torch version).  The CUDA kernel takes
D = 64 or 128 and R <= 8.  With rope_cos and rope_sin (B, D/2) float32, the cos and sin of row b's angles, q's
interleaved pairs (2i, 2i+1) are rotated first (RoPE), in float32 and rounded to q's dtype (model.py's
apply_rope), so a decode step can hand the op the qkv projection's output as it is.

    y = kv16_decode_step_attention(q, k_new, v_new, kv_cache, mask, rope_cos, rope_sin, input_pos)

A whole decode step's attention from the qkv projection's output: k_new, v_new (B, H, D) this step's keys and
values; kv_cache (2, B, H, S, D) contiguous (keys, values), written in place at column input_pos (a (1,) int64
tensor) with v_new and with k_new rotated as q; then y as above over the whole cache with the rotated q.
"""
from __future__ import annotations

import math

import torch

MAX_ROWS = 8  # csrc/attention.h kAttnMaxRows
HEAD_DIMS = (64, 128)
_DTYPES = (torch.bfloat16, torch.float16)


def check_attention_inputs(q, k_cache, v_cache, mask, op="kv16_decode_attention") -> tuple[int, int, int, int, int]:
    """Raise ValueError/TypeError naming the offending numbers; returns (B, H, R, S, D)."""
    if q.dtype not in _DTYPES:
        raise TypeError(f"{op}: q must be bfloat16 or float16, got {q.dtype}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("mask", mask)):
        if t.dtype != q.dtype:
            raise TypeError(f"{op}: {name} must have q's dtype {q.dtype}, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{op}: {name} is on {t.device}, q on {q.device}")
    if q.dim() != 4 or k_cache.dim() != 4 or mask.dim() != 2:
        raise ValueError(f"{op}: q (B, H, R, D), k_cache/v_cache (B, H, S, D) and mask (B, S) "
                         f"expected, got shapes {tuple(q.shape)}, {tuple(k_cache.shape)}, {tuple(mask.shape)}")
    B, H, R, D = q.shape
    S = k_cache.shape[2]
    if (tuple(v_cache.shape) != tuple(k_cache.shape) or tuple(k_cache.shape) != (B, H, S, D)
            or tuple(mask.shape) != (B, S)):
        raise ValueError(f"{op}: shapes disagree: q {tuple(q.shape)}, k_cache "
                         f"{tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}, mask {tuple(mask.shape)}")
    if min(B, H, R, S, D) < 1:
        raise ValueError(f"{op}: empty problem: B={B} H={H} R={R} S={S} D={D}")
    if q.is_cuda:
        if D not in HEAD_DIMS:
            raise ValueError(f"{op}: the CUDA kernel takes head_dim 64 or 128, got {D}")
        if R > MAX_ROWS:
            raise ValueError(f"{op}: the CUDA kernel takes at most {MAX_ROWS} query rows per KV "
                             f"head, got {R}")
        if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
            raise ValueError(f"{op}: k_cache and v_cache must be contiguous")
        epl = D // 32
        if q.stride(3) != 1 or any(st % epl for st in q.stride()[:3]):
            raise ValueError(f"{op}: q needs a contiguous last dim and strides that are "
                             f"multiples of {epl}, got strides {q.stride()}")
        if mask.stride(1) != 1:
            raise ValueError(f"{op}: mask needs a contiguous last dim, got strides {mask.stride()}")
    return B, H, R, S, D


def check_rope_inputs(q, rope_cos, rope_sin, op="kv16_decode_attention") -> None:
    """rope_cos and rope_sin: both or neither; float32 (B, D/2) on q's device, last dim contiguous."""
    if (rope_cos is None) != (rope_sin is None):
        raise ValueError(f"{op}: rope_cos and rope_sin come together, got only one")
    B, D = q.shape[0], q.shape[-1]
    for name, t in (("rope_cos", rope_cos), ("rope_sin", rope_sin)):
        if t is not None and (t.dtype != torch.float32 or tuple(t.shape) != (B, D // 2) or t.device != q.device
                              or t.stride(1) != 1):
            raise ValueError(f"{op}: {name} must be float32 (B, D/2) = ({B}, {D // 2}) on {q.device} with a "
                             f"contiguous last dim, got {t.dtype} {tuple(t.shape)} strides {t.stride()} on "
                             f"{t.device}")


def check_step_inputs(q, k_new, v_new, kv_cache, mask, rope_cos, rope_sin, input_pos) -> None:
    """kv16_decode_step_attention's arguments beyond kv16_decode_attention's (checked on the cache's halves)."""
    if kv_cache.dim() != 5 or kv_cache.shape[0] != 2:
        raise ValueError(f"kv16_decode_step_attention: kv_cache (2, B, H, S, D) expected, got {tuple(kv_cache.shape)}")
    B, H, R, S, D = check_attention_inputs(q, kv_cache[0], kv_cache[1], mask, "kv16_decode_step_attention")
    for name, t in (("k_new", k_new), ("v_new", v_new)):
        if t.dtype != q.dtype or t.device != q.device or tuple(t.shape) != (B, H, D) or t.stride(-1) != 1:
            raise ValueError(f"kv16_decode_step_attention: {name} must be {q.dtype} (B, H, D) = ({B}, {H}, {D}) on "
                             f"{q.device} with a contiguous last dim, got {t.dtype} {tuple(t.shape)} strides "
                             f"{t.stride()} on {t.device}")
    if k_new.stride() != v_new.stride():
        raise ValueError(f"kv16_decode_step_attention: k_new and v_new need the same strides, got {k_new.stride()} "
                         f"and {v_new.stride()}")
    if rope_cos is None or rope_sin is None:
        raise ValueError("kv16_decode_step_attention: rope_cos and rope_sin are required")
    check_rope_inputs(q, rope_cos, rope_sin, "kv16_decode_step_attention")
    if input_pos.dtype != torch.int64 or tuple(input_pos.shape) != (1,) or input_pos.device != q.device:
        raise ValueError(f"kv16_decode_step_attention: input_pos must be one int64 cache column on {q.device}, got "
                         f"{input_pos.dtype} {tuple(input_pos.shape)} on {input_pos.device}")
    if q.is_cuda:
        epl = D // 32
        if not kv_cache.is_contiguous() or any(st % epl for st in k_new.stride()[:2]):
            raise ValueError(f"kv16_decode_step_attention: kv_cache must be contiguous and k_new/v_new strides "
                             f"multiples of {epl}, got {k_new.stride()}")


def rotate(x: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor) -> torch.Tensor:
    """x (B, ..., D) with its interleaved pairs rotated by row b's angles (B, D/2), as model.py's apply_rope."""
    xf = x.float().unflatten(-1, (-1, 2))  # (B, ..., D/2, 2)
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1] // 2,)
    c, s = rope_cos.reshape(shape), rope_sin.reshape(shape)  # (B, 1.., D/2)
    x0, x1 = xf[..., 0], xf[..., 1]
    return torch.stack((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1).flatten(-2).to(x.dtype)


def reference_kv16_decode_step_attention(q, k_new, v_new, kv_cache, mask, rope_cos, rope_sin,
                                         input_pos) -> torch.Tensor:
    """Writes the rotated k_new and v_new into kv_cache at column input_pos (in place), then the reference
    attention of the rotated q over the whole cache."""
    if not 0 <= int(input_pos[0]) < kv_cache.shape[3]:  # the CUDA kernel traps
        raise IndexError(f"kv16_decode_step_attention: input_pos {int(input_pos[0])} outside the cache's "
                         f"{kv_cache.shape[3]} columns")
    kv_cache[:, :, :, input_pos] = torch.stack((rotate(k_new, rope_cos, rope_sin), v_new))[:, :, :, None]
    return reference_kv16_decode_attention(q, kv_cache[0], kv_cache[1], mask, rope_cos, rope_sin)


def reference_kv16_decode_attention(q, k_cache, v_cache, mask, rope_cos=None, rope_sin=None) -> torch.Tensor:
    """The op in float32 (the CUDA kernel's arithmetic is fp32 too, in another order), rounded once; q rotated
    first where rope_cos and rope_sin are given."""
    if rope_cos is not None:
        q = rotate(q, rope_cos, rope_sin)
    D = q.shape[-1]
    scores = q.float() @ k_cache.float().transpose(-1, -2) / math.sqrt(D)  # (B, H, R, S)
    scores = scores + mask.float()[:, None, None, :]
    return (scores.softmax(-1) @ v_cache.float()).to(q.dtype)  # (B, H, R, D)


def ulp_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest error of y against a higher-precision ref, in units of y's dtype epsilon times the row's largest
    reference output (1 = one unit in the last place at that magnitude); the tests' and eval/attention.py's
    measure of the kernel against a reference."""
    ref = ref.double()
    ulp = torch.finfo(y.dtype).eps * ref.abs().amax(-1, keepdim=True).clamp_min(1e-3)
    return ((y.double() - ref).abs() / ulp).max().item()


# Up to this many (sequence, KV head) pairs the kernel is taken at decode: it beat F.scaled_dot_product_attention
# (cuDNN) at every batch measured, Llama-3-8B's 8 to 512 pairs (batch 1 to 64; H100, torch 2.11, `python
# eval/attention.py --batch 1,4,8,16,32,64 --seq 384,2048 --visible 0.67`, BENCHMARKS.md "Decode attention at
# batch 8-64"); more pairs were never timed, nor this revision on other GPUs of compute capability 9.0+.
KERNEL_MAX_BATCH_HEADS = 512


def prefer_kernel(batch_heads: int, capability: tuple[int, int]) -> bool:
    """The one place that picks the decode attention: our kernel for batch x KV heads <= 512 on compute capability
    9.0+, else SDPA.  Below 9.0 there are no thread-block clusters, the kernel runs one CTA per pair as SDPA does,
    and it was never timed there."""
    return batch_heads <= KERNEL_MAX_BATCH_HEADS and capability >= (9, 0)


def supported(rows: int, head_dim: int, dtype: torch.dtype) -> bool:
    """Whether the CUDA kernel takes this attention layer: R query rows per KV head, head_dim, dtype."""
    return 1 <= rows <= MAX_ROWS and head_dim in HEAD_DIMS and dtype in _DTYPES
