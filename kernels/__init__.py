"""lowbit kernels: int4 weight-only (w4a16) GEMM, decode attention over a 16-bit KV cache, residual add + RMSNorm.

    y = w4a16_gemm(x, packed_w, scales, zeros, group_size)      # x (M, K) bf16/fp16 -> y (M, N)
    packed_w, scales_p, zeros_p = pack_w4(q, scales, zeros, group_size)
    y = kv16_decode_attention(q, k_cache, v_cache, mask)        # q (B, H, R, D) -> y (B, H, R, D)
    y = kv16_decode_attention(q, k_cache, v_cache, mask, rope_cos, rope_sin)  # q rotated (RoPE) first
    y = kv16_decode_step_attention(q, k_new, v_new, kv_cache, mask, cos, sin, input_pos)  # + RoPE, cache write
    h, y = add_rms_norm(x, r, weight, eps)                      # h = x + r, y = RMSNorm(h) (kernels/norm.py)

Operators torch.ops.lowbit.w4a16_gemm, kv16_decode_attention, kv16_decode_step_attention (kernels/attention.py) and
add_rms_norm (kernels/norm.py):
  * schema, CPU implementation (the pure-PyTorch reference) and fake/meta
    implementation are registered here, in Python, so the op exists, traces
    under torch.compile(fullgraph=True) and runs on CPU on machines where the
    CUDA extension is never built (CI).  Defining the schema in the C++
    extension instead would make the op unavailable wherever it cannot load.
  * the CUDA implementation is registered by the C++ extension
    (TORCH_LIBRARY_IMPL in csrc/ops.cpp), built/loaded by load_extension().
    The Python wrapper loads it on first CUDA use in eager mode, and the fake
    implementation loads it when torch.compile traces the op for a CUDA device,
    so compiled graphs always find the kernel at run time.
"""
from __future__ import annotations

import os

import torch

from . import attention, norm
from .attention import (check_attention_inputs, check_rope_inputs, check_step_inputs,
                        reference_kv16_decode_attention, reference_kv16_decode_step_attention)
from .build import find_cuda_home, load_extension as _load_extension
from .norm import check_norm_inputs, reference_add_rms_norm
from .reference import check_inputs, dequantize, pack_w4, reference_w4a16_gemm, unpack_w4

__all__ = [
    "w4a16_gemm", "pack_w4", "unpack_w4", "reference_w4a16_gemm", "dequantize",
    "load_extension", "extension_available", "choose_path", "gemm_path", "PATHS",
    "kv16_decode_attention", "reference_kv16_decode_attention", "kv16_decode_step_attention",
    "reference_kv16_decode_step_attention", "add_rms_norm", "reference_add_rms_norm", "add_rms_norm_supported",
]

_SCHEMA = "w4a16_gemm(Tensor x, Tensor packed_w, Tensor scales, Tensor? zeros, int group_size) -> Tensor"

_ATTN_SCHEMA = ("kv16_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor mask, Tensor? rope_cos=None, "
                "Tensor? rope_sin=None) -> Tensor")
_STEP_SCHEMA = ("kv16_decode_step_attention(Tensor q, Tensor k_new, Tensor v_new, Tensor(a!) kv_cache, Tensor mask, "
                "Tensor rope_cos, Tensor rope_sin, Tensor input_pos) -> Tensor")

_NORM_SCHEMA = "add_rms_norm(Tensor x, Tensor r, Tensor weight, float eps) -> (Tensor, Tensor)"

_lib = torch.library.Library("lowbit", "FRAGMENT")
_lib.define(_SCHEMA)
_lib.define(_ATTN_SCHEMA)
_lib.define(_STEP_SCHEMA)
_lib.define(_NORM_SCHEMA)


def _cpu_impl(x, packed_w, scales, zeros, group_size):
    return reference_w4a16_gemm(x, packed_w, scales, zeros, group_size)


_lib.impl("w4a16_gemm", _cpu_impl, "CPU")
_lib.impl("kv16_decode_attention", reference_kv16_decode_attention, "CPU")
_lib.impl("kv16_decode_step_attention", reference_kv16_decode_step_attention, "CPU")
_lib.impl("add_rms_norm", reference_add_rms_norm, "CPU")


@torch.library.register_fake("lowbit::kv16_decode_attention")
def _attention_fake(q, k_cache, v_cache, mask, rope_cos=None, rope_sin=None):
    check_attention_inputs(q, k_cache, v_cache, mask)
    check_rope_inputs(q, rope_cos, rope_sin)
    if q.device.type == "cuda":
        load_extension()  # the compiled graph will call the CUDA kernel at run time
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)  # contiguous (B, H, R, D), as the kernel writes


@torch.library.register_fake("lowbit::kv16_decode_step_attention")
def _step_attention_fake(q, k_new, v_new, kv_cache, mask, rope_cos, rope_sin, input_pos):
    check_step_inputs(q, k_new, v_new, kv_cache, mask, rope_cos, rope_sin, input_pos)
    if q.device.type == "cuda":
        load_extension()
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


@torch.library.register_fake("lowbit::add_rms_norm")
def _add_rms_norm_fake(x, r, weight, eps):
    check_norm_inputs(x, r, weight)
    if x.device.type == "cuda":
        load_extension()
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device),  # contiguous, as the kernel writes them
            torch.empty(x.shape, dtype=x.dtype, device=x.device))


@torch.library.register_fake("lowbit::w4a16_gemm")
def _fake(x, packed_w, scales, zeros, group_size):
    M, N, K = check_inputs(x, packed_w, scales, zeros, group_size)
    if x.device.type == "cuda":
        _check_forced_path(x.device)
        load_extension()  # the compiled graph will call the CUDA kernel at run time
    return x.new_empty((M, N))


def _require_wgmma(device: torch.device, what: str) -> None:
    """Paths 5 and 6 (the wgmma kernels) exist on compute capability 9.0 only (kernels/build.py builds it as 9.0a):
    a clear error in Python, before the C++ check would throw from inside the op (which crashed torch 2.11's
    process, w4a16_gemm's docstring)."""
    if torch.cuda.get_device_capability(device) != (9, 0):
        raise ValueError(f"{what} runs on compute capability 9.0 (H100, H200) only; "
                         f"{torch.cuda.get_device_name(device)} has {torch.cuda.get_device_capability(device)}")


def _check_forced_path(device: torch.device) -> None:
    """LOWBIT_W4A16_PATH=5 or 6 on a GPU that lacks wgmma."""
    forced = os.environ.get("LOWBIT_W4A16_PATH", "")
    if forced in ("5", "6"):
        _require_wgmma(device, f"LOWBIT_W4A16_PATH={forced} forces a wgmma kernel ({PATHS[int(forced)]}), which")


def load_extension(verbose: bool = False):
    """Build (first call: minutes) and load the CUDA extension; registers the CUDA kernel."""
    return _load_extension(verbose=verbose)


_available: bool | None = None


def extension_available() -> bool:
    """True when a CUDA GPU of compute capability >= 8.0 (the kernels' bf16 mma.sync) is present and the
    extension builds/loads (may compile on first call)."""
    global _available
    if _available is None:
        try:
            _available = (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8
                          and find_cuda_home() is not None and load_extension() is not None)
        except Exception:  # noqa: BLE001 - any build/load failure means "not available"
            _available = False
    return _available


# The op's CUDA paths by number (csrc/ops.cpp gemm_path; choose_path picks one).
PATHS = ("mma", "dequant_cublas", "stream", "stream_smem", "stream_swap", "wgmma", "wgmma_ws")


def choose_path(M: int, N: int, K: int) -> str:
    """Which CUDA path the op takes for this shape: one of PATHS.

    The heuristic itself lives in csrc/ops.cpp (choose_path) next to the
    dispatch that uses it; this only asks it, for the current CUDA device
    (paths 5 and 6, wgmma and wgmma_ws, exist on compute capability 9.0 only).
    """
    wgmma = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
    return PATHS[load_extension().choose_path(M, N, K, wgmma)]


def w4a16_gemm(x: torch.Tensor, packed_w: torch.Tensor, scales: torch.Tensor,
               zeros: torch.Tensor | None, group_size: int) -> torch.Tensor:
    """y (M, N) = x (M, K) @ dequant(packed_w)^T with fp32 accumulation, in x.dtype.

    Every path but the streaming kernels at M <= 16 (choose_path: paths 2 and 4) rounds the weights
    s·q + m to x.dtype before the product, as the reference does; those use the exact s·q + m, applying
    scales to fp32 group sums.  So a row's result can change by that rounding when the batch crosses 16 rows
    (tests/test_kernels.py states the bound both satisfy).

    On GPUs of compute capability 9.0+ the kernels may start before the kernel just before them in the
    stream has finished (programmatic dependent launch, csrc/ops.cpp use_pdl) and read packed_w, scales
    and zeros early: those must be constants, not written by that kernel (pack them, then synchronize or
    run anything else first; model weights are).  x is read only after the previous kernel has finished.

    In eager mode the inputs are validated here, in Python, before dispatch: on the
    H100 machine (torch 2.11) an argument error thrown as a C++ exception from the
    CUDA kernel's TORCH_CHECKs crashed the process on the 2nd such error
    (kernels/NOTES.md, "open issues"); the C++ checks remain as a last line of
    defence for direct torch.ops calls.  Under torch.compile the fake
    implementation validates at trace time instead.
    """
    if not torch.compiler.is_compiling():
        _check_eager(x, packed_w, scales, zeros, group_size)
    return torch.ops.lowbit.w4a16_gemm(x, packed_w, scales, zeros, group_size)


def _check_eager(x, packed_w, scales, zeros, group_size) -> None:
    """The Python-side validation of w4a16_gemm and gemm_path; loads the extension for CUDA inputs."""
    check_inputs(x, packed_w, scales, zeros, group_size)
    if x.is_cuda:
        _check_forced_path(x.device)
        _check_aligned("w4a16_gemm", x=x, packed_w=packed_w, scales=scales, zeros=zeros)
        load_extension()


def _check_aligned(op: str, align: int = 16, **tensors) -> None:
    """The CUDA kernels load `align` bytes at once (16 unless said): every tensor given (None skipped) must start on
    such a boundary."""
    for name, t in tensors.items():
        if t is not None and t.data_ptr() % align:
            raise ValueError(f"{op}: {name} must be {align}-byte aligned (the kernel uses {align}-byte loads), got "
                             f"address {t.data_ptr():#x}")


def check_m_tiles(path: int, m_tiles: int, which: str = "") -> None:
    """gemm_path's m_tiles knob against a path (-1: the heuristic, resolved by the caller where it can)."""
    if not (m_tiles in (-1, 8) if path == 6 else m_tiles in (-1, 1, 2, 4) or (m_tiles == 8 and path == 5)):
        raise ValueError(f"gemm_path: m_tiles must be -1 (by M), 1, 2, 4 or (path 5 only) 8, and path 6 takes only "
                         f"-1 or 8, got {m_tiles} for path {path}{which}")


def gemm_path(x: torch.Tensor, packed_w: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
              group_size: int, path: int = -1, splits: int = -1, m_tiles: int = -1) -> torch.Tensor:
    """The CUDA op with its launch choices forced (benchmarks and tests; eval/kernels.py "[smem/s2/mt2]").

    path: -1 = choose_path, else an index into PATHS; splits: -1 = the launch plan's split-K count, else
    >= 1 (the count run can differ: no split may be empty); m_tiles: -1 = by M and path (csrc/ops.cpp
    m_tiles_for), else 1, 2 or 4 m16 tiles per CTA (path 5 also 8; path 6 only 8).  Path 1 (dequantize +
    cuBLAS) takes neither knob and ignores both; path 4 (swapped operands) takes at most 8 rows and one m-tile;
    paths 5 and 6 (the wgmma kernels, which the heuristic takes for 17-64 and 65-512 rows) run on compute
    capability 9.0 only.  Validated here, in Python, for the reason w4a16_gemm gives.
    """
    if path not in range(-1, len(PATHS)):
        raise ValueError(f"gemm_path: path must be -1 (choose_path) or 0-{len(PATHS) - 1} ({', '.join(PATHS)}), "
                         f"got {path}")
    if path == 4 and (x.shape[0] > 8 or m_tiles not in (-1, 1)):
        raise ValueError(f"gemm_path: path 4 (stream_swap) takes at most 8 rows and one m-tile, got M={x.shape[0]}, "
                         f"m_tiles={m_tiles}")
    if splits != -1 and splits < 1:
        raise ValueError(f"gemm_path: splits must be -1 (the launch plan) or >= 1, got {splits}")
    if path != -1 or m_tiles not in (-1, 1, 2, 4, 8):
        check_m_tiles(path, m_tiles)
    if not x.is_cuda:
        raise ValueError(f"gemm_path runs the CUDA kernels: x is on {x.device} (kernels.w4a16_gemm runs anywhere)")
    if path == -1 and m_tiles != -1:  # the knob must suit the path the heuristic takes for this shape
        M, K = x.shape
        check_m_tiles(PATHS.index(choose_path(M, packed_w.shape[0], K)), m_tiles, f" (choose_path's at M={M})")
    if path in (5, 6):
        _require_wgmma(x.device, f"gemm_path: path {path} ({PATHS[path]})")
    _check_eager(x, packed_w, scales, zeros, group_size)
    return load_extension().gemm_path(x, packed_w, scales, zeros, group_size, path, splits, m_tiles)


def kv16_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, mask: torch.Tensor,
                          rope_cos: torch.Tensor | None = None, rope_sin: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of one query position per sequence over a 16-bit KV cache (a decode step): y (B, H, R, D); with
    rope_cos and rope_sin, of q rotated by RoPE first (in the kernel, as q is loaded).

    Shapes and semantics in kernels/attention.py.  On CUDA (compute capability 8.0+, head_dim 64 or 128, at most
    8 query rows per KV head) one kernel that splits the cache's columns over the SMs (csrc/attention_kernel.cu);
    on CPU the float32 reference.  Validated here in eager mode, by the fake implementation under torch.compile.
    """
    if not torch.compiler.is_compiling():
        check_attention_inputs(q, k_cache, v_cache, mask)
        check_rope_inputs(q, rope_cos, rope_sin)
        if q.is_cuda:  # the kernel loads D/32 16-bit values at a time
            _check_aligned("kv16_decode_attention", q.shape[-1] // 16, q=q, k_cache=k_cache, v_cache=v_cache)
            load_extension()
    return torch.ops.lowbit.kv16_decode_attention(q, k_cache, v_cache, mask, rope_cos, rope_sin)


def kv16_decode_step_attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, kv_cache: torch.Tensor,
                               mask: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor,
                               input_pos: torch.Tensor) -> torch.Tensor:
    """A decode step's attention straight from the qkv projection: RoPE of q and k_new, k_new and v_new written
    into kv_cache (2, B, H, S, D) at column input_pos (in place), then kv16_decode_attention over the cache: one
    kernel on CUDA, the reference on CPU.  Shapes and semantics in kernels/attention.py."""
    if not torch.compiler.is_compiling():
        check_step_inputs(q, k_new, v_new, kv_cache, mask, rope_cos, rope_sin, input_pos)
        if q.is_cuda:  # the kernel loads D/32 16-bit values at a time
            _check_aligned("kv16_decode_step_attention", q.shape[-1] // 16, q=q, k_new=k_new, v_new=v_new,
                           kv_cache=kv_cache)
            load_extension()
    return torch.ops.lowbit.kv16_decode_step_attention(q, k_new, v_new, kv_cache, mask, rope_cos, rope_sin, input_pos)


def decode_attention_supported(rows: int, head_dim: int, dtype: torch.dtype, device: torch.device,
                               batch_heads: int) -> bool:
    """Whether a model layer's decode attention runs through the CUDA kernel: it takes the layer (rows query
    heads per KV head, head_dim, dtype) on `device` (building the extension if needed), and it is the faster
    choice for batch_heads = batch x KV heads (attention.prefer_kernel)."""
    return (device.type == "cuda" and attention.supported(rows, head_dim, dtype)
            and attention.prefer_kernel(batch_heads, torch.cuda.get_device_capability(device))
            and extension_available())


def add_rms_norm(x: torch.Tensor, r: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """h = x + r and y = RMSNorm(h) * weight in one pass: (h, y), both new contiguous tensors of x's shape.

    Shapes and semantics in kernels/norm.py.  On CUDA one kernel, one CTA per row (csrc/norm_kernel.cu; bfloat16 or
    float16, D a multiple of 8 up to norm.MAX_D); on CPU the reference, model.py's arithmetic bit for bit.  Validated
    here in eager mode, by the fake implementation under torch.compile.
    """
    if not torch.compiler.is_compiling():
        check_norm_inputs(x, r, weight)
        if x.is_cuda:
            _check_aligned("add_rms_norm", x=x, r=r, weight=weight)
            load_extension()
    return torch.ops.lowbit.add_rms_norm(x, r, weight, eps)


def add_rms_norm_supported(weight: torch.Tensor) -> bool:
    """Whether model.py's norm with this weight takes add_rms_norm (activations in weight's dtype): a 16-bit dtype,
    and on CUDA a D the kernel takes and an extension that loads (building it if needed)."""
    return norm.supported(weight) and (weight.device.type != "cuda" or extension_available())
