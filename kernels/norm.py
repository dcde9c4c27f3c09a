"""Pure-PyTorch reference and input checks for lowbit::add_rms_norm (csrc/norm_kernel.cu).

    h, y = add_rms_norm(x, r, weight, eps)

x, r (..., D): the same shape and dtype (bfloat16 or float16; float32 too on CPU), last dim contiguous;
weight (D,) in x's dtype.  h = x + r, added in float32 and rounded to x's dtype (torch's 16-bit add).
y = RMSNorm(h) as model.py's RMSNorm computes it in eager mode:

    hf = h.float()
    t = (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    y = t * weight          # in x's dtype: the exact product of two 16-bit values, rounded once

h and y are new contiguous tensors of x's shape.  model.py's layers take (x, r) unsummed, so the residual add of
each layer fuses with the norm that follows it.  The CUDA kernel takes bfloat16 and float16 only, D a multiple of 8
up to MAX_D, 16-byte aligned x, r and weight, and leading strides that are multiples of 8 elements; it sums the
squares in another order than torch does, so its y can differ from this reference's (tests/test_norm.py states by
how much), its h never.
"""
from __future__ import annotations

import torch

_DTYPES = (torch.bfloat16, torch.float16)
VEC = 8  # 16-bit values per 16-byte load in the CUDA kernel
MAX_THREADS = 1024  # csrc/norm_kernel.cu: one CTA per row, blockDim D/8 rounded up to a warp, at most this
MAX_VECS_PER_THREAD = 4  # beyond 1024 threads each thread keeps up to this many loads of the row in registers
MAX_D = VEC * MAX_THREADS * MAX_VECS_PER_THREAD  # 32,768 (Llama-3-405B has 16,384)
MAX_ROWS = 2**31 - 1  # grid.x


def check_norm_inputs(x, r, weight) -> tuple[int, int]:
    """Raise TypeError/ValueError naming the offending numbers; returns (rows, D).  Alignment is the eager
    wrapper's check (kernels.add_rms_norm): fake tensors have no addresses."""
    op = "add_rms_norm"
    allowed = _DTYPES if x.is_cuda else _DTYPES + (torch.float32,)
    if x.dtype not in allowed:
        raise TypeError(f"{op}: x must be bfloat16 or float16{'' if x.is_cuda else ' (or float32 on CPU)'}, "
                        f"got {x.dtype}")
    for name, t in (("r", r), ("weight", weight)):
        if t.dtype != x.dtype:
            raise TypeError(f"{op}: {name} must have x's dtype {x.dtype}, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device}, x on {x.device}")
    if x.dim() < 1 or tuple(r.shape) != tuple(x.shape):
        raise ValueError(f"{op}: x and r must have one shape (..., D), got {tuple(x.shape)} and {tuple(r.shape)}")
    D = x.shape[-1]
    if D < 1:
        raise ValueError(f"{op}: empty rows: D = 0 (x {tuple(x.shape)})")
    if tuple(weight.shape) != (D,):
        raise ValueError(f"{op}: weight must be (D,) = ({D},), got {tuple(weight.shape)}")
    for name, t in (("x", x), ("r", r), ("weight", weight)):
        if t.stride(-1) != 1:
            raise ValueError(f"{op}: {name} needs a contiguous last dim, got strides {t.stride()}")
    rows = x.numel() // D
    if x.is_cuda:
        if D % VEC or D > MAX_D:
            raise ValueError(f"{op}: the CUDA kernel takes D a multiple of {VEC} up to {MAX_D}, got D = {D}")
        for name, t in (("x", x), ("r", r)):  # (a dim of size 1 may have any stride: it is never stepped over)
            if any(st % VEC for st, n in zip(t.stride()[:-1], t.shape[:-1]) if n > 1):
                raise ValueError(f"{op}: {name}'s strides must be multiples of {VEC} (16-byte rows), got {t.stride()}")
        if rows > MAX_ROWS:
            raise ValueError(f"{op}: the CUDA kernel takes at most {MAX_ROWS} rows (one CTA each), got {rows}")
    return rows, D


def reference_add_rms_norm(x: torch.Tensor, r: torch.Tensor, weight: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, y) of the module docstring, with model.py's RMSNorm arithmetic op for op (bit for bit on CPU)."""
    h = x + r
    hf = h.float()
    t = (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return h.contiguous(), (t * weight).contiguous()


def supported(weight: torch.Tensor) -> bool:
    """Whether model.py's norms may use the op for activations in weight's dtype on weight's device: a 16-bit
    dtype, and on CUDA a D the kernel takes (the caller also makes sure the extension loads)."""
    D = weight.shape[-1]
    return weight.dtype in _DTYPES and (weight.device.type != "cuda" or (D % VEC == 0 and D <= MAX_D))
