"""Pure-PyTorch reference for lowbit::w4a16_gemm, the packed layout, and input checks.

Quantized weight:  W[n, k] = s[n, g] * q[n, k] + m[n, g],  g = k // group_size,
q unsigned 0..15.  Symmetric: zeros is None and m = -8 * s (never stored).

Packed format (what pack_w4 returns and the CUDA kernel reads):
  packed_w  int32 (N, K // 8): the (N, K) nibbles regrouped into 64 x 16 tiles
            (n-tile major, k-tile minor), 512 bytes per tile, 16 bytes per lane
            in mma.m16n8k16 B-fragment order.  Lane l = 4 i + lq, word w, nibble
            slot e*4 + jj*2 + h of that word holds
                n = 64 nt + 8 (2 w + jj) + i,   k = 16 kt + 8 h + 2 lq + e.
            The (N, K // 8) shape is only a container: row r is NOT channel r.
  scales    (K // group_size, N), activation dtype, columns permuted inside each
            block of 64: column 64 t + 8 i + j holds channel 64 t + 8 j + i.
  zeros     same layout as scales, or None (symmetric).
"""
from __future__ import annotations

import torch

SUPPORTED_GROUP_SIZES = (32, 64, 128)
_DTYPES = (torch.bfloat16, torch.float16)


def check_inputs(x, packed_w, scales, zeros, group_size) -> tuple[int, int, int]:
    """Raise ValueError/TypeError naming the offending numbers; returns (M, N, K)."""
    if x.dtype not in _DTYPES:
        raise TypeError(f"w4a16_gemm: x must be bfloat16 or float16, got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"w4a16_gemm: x must be 2-D (M, K), got shape {tuple(x.shape)}")
    major, minor = torch.cuda.get_device_capability(x.device) if x.is_cuda else (8, 0)
    if major < 8:
        raise RuntimeError(f"w4a16_gemm: unsupported GPU with compute capability {major}.{minor}: the kernels "
                           f"need 8.0 or newer (bf16 mma.sync); int4-marlin runs its PyTorch reference there")
    if packed_w.dtype != torch.int32 or packed_w.dim() != 2:
        raise TypeError(
            f"w4a16_gemm: packed_w must be a 2-D int32 tensor (N, K/8) from pack_w4, "
            f"got {packed_w.dtype} with shape {tuple(packed_w.shape)}"
        )
    M, K = x.shape
    N = packed_w.shape[0]
    if packed_w.shape[1] * 8 != K:
        raise ValueError(
            f"w4a16_gemm: K mismatch: x has K={K} but packed_w {tuple(packed_w.shape)} holds K={packed_w.shape[1] * 8}"
        )
    if N % 64 != 0:
        raise ValueError(f"w4a16_gemm: N must be a multiple of 64, got N={N}")
    if K % 64 != 0:
        raise ValueError(f"w4a16_gemm: K must be a multiple of 64, got K={K}")
    if group_size not in SUPPORTED_GROUP_SIZES and group_size != K:
        raise ValueError(f"w4a16_gemm: group_size must be 32, 64, 128 or K (={K}), got {group_size}")
    if K % group_size != 0:
        raise ValueError(f"w4a16_gemm: K={K} is not a multiple of group_size={group_size}")
    G = K // group_size
    for name, t in (("scales", scales), ("zeros", zeros)):
        if t is None:
            continue
        if tuple(t.shape) != (G, N):
            raise ValueError(
                f"w4a16_gemm: {name} must have shape (K/group_size, N) = ({G}, {N}) as returned by pack_w4, "
                f"got {tuple(t.shape)}"
            )
        if t.dtype != x.dtype:
            raise TypeError(f"w4a16_gemm: {name} dtype {t.dtype} must match x dtype {x.dtype}")
    for name, t in (("packed_w", packed_w), ("scales", scales), ("zeros", zeros)):
        if t is not None and t.device != x.device:
            raise ValueError(f"w4a16_gemm: {name} is on {t.device} but x is on {x.device}")
    for name, t in (("x", x), ("packed_w", packed_w), ("scales", scales), ("zeros", zeros)):
        if t is not None and not t.is_contiguous():
            raise ValueError(f"w4a16_gemm: {name} must be contiguous (strides {t.stride()})")
    return M, N, K


# q (N, K) viewed as (nt, w, jj, i, kt, h, lq, e); packed order is (nt, kt, i, lq, w, [e, jj, h]).
_PERM = (0, 4, 3, 6, 1, 7, 2, 5)
_INV_PERM = tuple(_PERM.index(d) for d in range(8))


def _permute_cols(t: torch.Tensor) -> torch.Tensor:
    """(N, G) per-channel values -> (G, N) kernel layout (column 64t+8i+j <- channel 64t+8j+i)."""
    N, G = t.shape
    return t.t().reshape(G, N // 64, 8, 8).transpose(2, 3).reshape(G, N).contiguous()


def _unpermute_cols(t: torch.Tensor) -> torch.Tensor:
    G, N = t.shape
    return t.reshape(G, N // 64, 8, 8).transpose(2, 3).reshape(G, N).t().contiguous()


def pack_w4(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, group_size: int):
    """(q uint8 (N, K) in 0..15, scales (N, G), zeros (N, G) or None) -> (packed_w, scales_p, zeros_p).

    scales/zeros keep their dtype, which must be the activation dtype used later.
    """
    if q.dim() != 2:
        raise ValueError(f"pack_w4: q must be 2-D (N, K), got shape {tuple(q.shape)}")
    N, K = q.shape
    if N % 64 or K % 64:
        raise ValueError(f"pack_w4: N and K must be multiples of 64, got N={N}, K={K}")
    if group_size not in SUPPORTED_GROUP_SIZES and group_size != K:
        raise ValueError(f"pack_w4: group_size must be 32, 64, 128 or K (={K}), got {group_size}")
    if K % group_size:
        raise ValueError(f"pack_w4: K={K} is not a multiple of group_size={group_size}")
    G = K // group_size
    if q.dtype not in (torch.uint8, torch.int32, torch.int64, torch.int16, torch.int8):
        raise TypeError(f"pack_w4: q must be an integer tensor, got {q.dtype}")
    qi = q.to(torch.int64)
    if qi.numel() and (int(qi.min()) < 0 or int(qi.max()) > 15):
        raise ValueError(f"pack_w4: q values must lie in 0..15, got range [{int(qi.min())}, {int(qi.max())}]")
    for name, t in (("scales", scales), ("zeros", zeros)):
        if t is not None and tuple(t.shape) != (N, G):
            raise ValueError(f"pack_w4: {name} must have shape (N, K/group_size) = ({N}, {G}), got {tuple(t.shape)}")
        if t is not None and t.dtype not in _DTYPES:
            raise TypeError(f"pack_w4: {name} must be bfloat16 or float16, got {t.dtype}")
    v = qi.reshape(N // 64, 4, 2, 8, K // 16, 2, 4, 2).permute(_PERM).reshape(-1, 8)
    shifts = torch.arange(0, 32, 4, device=q.device, dtype=torch.int64)
    words = (v << shifts).sum(dim=1)  # < 2^32
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    packed = words.reshape(N, K // 8)
    return packed, _permute_cols(scales), (None if zeros is None else _permute_cols(zeros))


def unpack_w4(packed_w: torch.Tensor, scales_p: torch.Tensor, zeros_p: torch.Tensor | None, group_size: int):
    """Inverse of pack_w4: -> (q uint8 (N, K), scales (N, G), zeros (N, G) or None)."""
    N, K8 = packed_w.shape
    K = K8 * 8
    words = packed_w.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(0, 32, 4, device=packed_w.device, dtype=torch.int64)
    nib = (words.reshape(-1, 1) >> shifts) & 0xF
    q = nib.reshape(N // 64, K // 16, 8, 4, 4, 2, 2, 2).permute(_INV_PERM).reshape(N, K)
    return (q.to(torch.uint8), _unpermute_cols(scales_p),
            None if zeros_p is None else _unpermute_cols(zeros_p))


def dequantize(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, group_size: int,
               dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
    """W = s*q + m (m = -8 s when zeros is None) from unpacked (N, K)/(N, G) tensors.

    Computed in float32, where s*q (8 x 4 significant bits) and the sum with m
    are exact for realistic magnitudes, then rounded once to `dtype`: the same
    single rounding the kernel's fma/mul does.  dtype=None keeps float64
    (used as the high-precision oracle in the tests).
    """
    work = torch.float64 if dtype is None else torch.float32
    s = scales.to(work).repeat_interleave(group_size, dim=1)
    qf = q.to(work)
    w = s * (qf - 8) if zeros is None else s * qf + zeros.to(work).repeat_interleave(group_size, dim=1)
    return w if dtype is None else w.to(dtype)


def reference_w4a16_gemm(x: torch.Tensor, packed_w: torch.Tensor, scales: torch.Tensor,
                         zeros: torch.Tensor | None, group_size: int) -> torch.Tensor:
    """The op's semantics in plain PyTorch: weights rounded to x.dtype, fp32 accumulation, y in x.dtype.
    (The CUDA streaming kernel at M <= 16 skips the weight rounding: see kernels.w4a16_gemm.)"""
    check_inputs(x, packed_w, scales, zeros, group_size)
    q, s, m = unpack_w4(packed_w, scales, zeros, group_size)
    w = dequantize(q, s, m, group_size, dtype=x.dtype)
    return (x.float() @ w.float().t()).to(x.dtype)
