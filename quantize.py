"""Weight-only quantization: one nn.Module per scheme, swapped in for the model's nn.Linear layers.

Scheme names (`SCHEMES` maps each base name to its class; `parse_scheme` reads the parameters):
  none                           no quantization
  int8                           int8 per output channel, symmetric; dequantize, then matmul
  int8-compile                   the same weights, gpt-fast's `F.linear(x, w.to(x.dtype)) * scales`
  int4-g{32,64,128,256}-{sym,asym,azp}
                                 grouped int4, PyTorch reference (dequantize, then matmul)
  int4-tinygemm[-g{32,64,128,256}]   PyTorch's tinygemm kernel (`aten._weight_int4pack_mm`), asym
  int4-marlin[-g{32,64,128}-{sym,asym,azp}]  our CUDA kernel (`kernels.w4a16_gemm`), default g128 asym
  fp8-rowwise                    fp8 e4m3 weights per output channel x dynamic per-row fp8 activations

The rounding rules (int4 sym/asym/azp, int8 and fp8 per row) live in rounding.py; how checkpoints record
a scheme and rebuild its modules, in checkpoint.py (`quant_config`, `apply_quant_config`).
"""
import argparse
import re
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import kernels
from rounding import (FP8, pack_nibbles, pad_cols, quantize_fp8_rows, quantize_int4, quantize_int8_rows, round_up,
                      unpack_nibbles)

_NOTICED: set[str] = set()


def _notice(msg: str):
    """Print a one-line notice to stderr, once per process."""
    if msg not in _NOTICED:
        _NOTICED.add(msg)
        print(f"notice: {msg}", file=sys.stderr)


class QuantLinear(nn.Module):
    """Shared bookkeeping: sizes, the scheme's parameters (what checkpoints record) and its name."""
    PATTERN = ""  # scheme-name regex; its named groups become params
    NAME = ""  # canonical name, formatted with params
    DEFAULTS: dict = {}
    # Inductor options the scheme's forward relies on when compiled on CUDA (generate.Generator passes
    # them to its torch.compile calls, so they apply to that model only).
    INDUCTOR_OPTIONS: dict = {}
    # Printed by generate.py when the compiled model decodes more than one row: a known slow combination.
    BATCHED_NOTICE = ""

    def __init__(self, in_features: int, out_features: int, **params):
        super().__init__()
        self.in_features, self.out_features, self.params = in_features, out_features, params

    @classmethod
    def parse(cls, name: str) -> dict | None:
        m = re.fullmatch(cls.PATTERN, name)
        if m is None:
            return None
        found = {k: int(v) if v.isdigit() else v for k, v in m.groupdict().items() if v is not None}
        return {**cls.DEFAULTS, **found}

    @property
    def scheme(self) -> str:
        return self.NAME.format(**self.params)

    @staticmethod
    def _weight(linear: nn.Linear) -> torch.Tensor:
        if linear.bias is not None:
            raise ValueError("quantized linears support bias=False only")
        return linear.weight.detach()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}"


class Int8(QuantLinear):
    """int8 weights, symmetric per output channel: w = scales[n] * q[n, k], q in -127..127."""
    PATTERN = NAME = "int8"

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor):
        super().__init__(weight.shape[1], weight.shape[0])
        self.register_buffer("weight", weight)  # (N, K) int8
        self.register_buffer("scales", scales)  # (N,) model dtype

    @classmethod
    def from_float(cls, linear: nn.Linear):
        return cls(*quantize_int8_rows(cls._weight(linear), linear.weight.dtype))

    @classmethod
    def empty(cls, in_features, out_features, dtype, device):
        return cls(torch.empty(out_features, in_features, dtype=torch.int8, device=device),
                   torch.empty(out_features, dtype=dtype, device=device))

    def dequantize(self, dtype=None) -> torch.Tensor:
        return (self.weight.float() * self.scales.float()[:, None]).to(dtype or self.scales.dtype)

    def forward(self, x):
        return F.linear(x, self.dequantize(x.dtype))


class Int8Compile(Int8):
    """Int8's weights with gpt-fast's forward, left to torch.compile to fuse the cast into the matmul."""
    PATTERN = NAME = "int8-compile"
    # gpt-fast's setting: it makes inductor decompose a one-row matmul into multiply + sum, the GEMV the
    # int8 -> bf16 cast fuses into at batch 1. It tunes every generated kernel, so no other scheme pays
    # its compile time.
    INDUCTOR_OPTIONS = {"coordinate_descent_tuning": True}
    BATCHED_NOTICE = ("int8-compile is a batch-1 baseline: from 2 rows on, inductor rewrites its forward into "
                      "aten._weight_int8pack_mm, which ran at 54-64 tok/s in total at batch 8-64 on an H200 "
                      "(BENCHMARKS.md, decode matrix)")

    def forward(self, x):
        return F.linear(x, self.weight.to(dtype=x.dtype)) * self.scales


class Int4(QuantLinear):
    """Grouped int4, pure PyTorch: dequantize (see `quantize_int4`), then matmul. The CPU path.

    Buffers: qweight (N, Kp/2) uint8 nibbles, scales (N, G), zeros = m (N, G) unless sym. When K is
    not a multiple of the group, K is padded to Kp: forward zero-pads x, dequantize() slices to K.
    """
    PATTERN, NAME = r"int4-g(?P<group_size>32|64|128|256)-(?P<zero>sym|asym|azp)", "int4-g{group_size}-{zero}"

    def __init__(self, in_features, out_features, qweight, scales, zeros, group_size: int, zero: str):
        super().__init__(in_features, out_features, group_size=group_size, zero=zero)
        self.group_size = group_size
        self.register_buffer("qweight", qweight)  # (N, Kp/2) uint8
        self.register_buffer("scales", scales)  # (N, G)
        self.register_buffer("zeros", zeros)  # (N, G); None (not in the state_dict) when sym

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int, zero: str):
        q, s, m = quantize_int4(cls._weight(linear), group_size, zero, linear.weight.dtype)
        return cls(linear.in_features, linear.out_features, pack_nibbles(q), s, m, group_size, zero)

    @classmethod
    def empty(cls, in_features, out_features, dtype, device, group_size: int, zero: str):
        N, G = out_features, round_up(in_features, group_size) // group_size
        scales = torch.empty(N, G, dtype=dtype, device=device)
        return cls(in_features, out_features, torch.empty(N, G * group_size // 2, dtype=torch.uint8, device=device),
                   scales, None if zero == "sym" else torch.empty_like(scales), group_size, zero)

    def _dequantize_padded(self, dtype) -> torch.Tensor:
        N = self.out_features
        q = unpack_nibbles(self.qweight).float().view(N, -1, self.group_size)  # (N, G, group)
        s = self.scales.float()[..., None]
        w = q * s + self.zeros.float()[..., None] if self.zeros is not None else (q - 8) * s
        return w.view(N, -1).to(dtype)  # (N, Kp)

    def dequantize(self, dtype=None) -> torch.Tensor:
        return self._dequantize_padded(dtype or self.scales.dtype)[:, :self.in_features]

    def forward(self, x):
        # Zero-pad x to Kp rather than slice the weight: inductor's CPU codegen (torch 2.14) miscompiles
        # the sliced dequantized weight when K % group != 0.
        return F.linear(pad_cols(x, self.qweight.shape[1] * 2), self._dequantize_padded(x.dtype))


class Int4Marlin(QuantLinear):
    """Int4 through our kernel `kernels.w4a16_gemm` (bf16/fp16), weights packed by `kernels.pack_w4`.

    The packed buffers are the state: qweight int32 (Np, Kp/8), scales and zeros (Kp/G, Np) in the
    activation dtype (bf16 for a float32 model). The kernel wants N and K multiples of 64: N is padded
    with zero rows (outputs sliced off), K as in `quantize_int4` up to a multiple of max(group, 64),
    with x zero-padded to match. Without the CUDA extension it runs the kernels' PyTorch reference
    (same packed buffers) and says so once.
    """
    PATTERN = r"int4-marlin(?:-g(?P<group_size>32|64|128)-(?P<zero>sym|asym|azp))?"
    NAME, DEFAULTS = "int4-marlin-g{group_size}-{zero}", {"group_size": 128, "zero": "asym"}

    def __init__(self, in_features, out_features, qweight, scales, zeros, group_size: int, zero: str):
        super().__init__(in_features, out_features, group_size=group_size, zero=zero)
        self.group_size = group_size
        self.register_buffer("qweight", qweight)  # (Np, Kp/8) int32, kernel layout
        self.register_buffer("scales", scales)  # (Kp/G, Np), channels permuted by pack_w4
        self.register_buffer("zeros", zeros)  # like scales, or None when sym
        if kernels.extension_available():
            self._gemm = kernels.w4a16_gemm
        else:
            _notice("int4-marlin: the kernels CUDA extension is unavailable (it needs nvcc and a GPU of compute "
                    "capability 8.0 or newer); running its PyTorch reference")
            self._gemm = kernels.reference_w4a16_gemm

    @staticmethod
    def padded_shape(N: int, K: int, group_size: int) -> tuple[int, int]:
        """(Np, Kp): the kernel's multiples of 64, K also of the group (eval/kernels.py times these)."""
        return round_up(N, 64), round_up(K, max(group_size, 64))

    @staticmethod
    def _dtype(dtype: torch.dtype) -> torch.dtype:
        return dtype if dtype in (torch.bfloat16, torch.float16) else torch.bfloat16

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int = 128, zero: str = "asym"):
        w = cls._weight(linear)
        (N, K), dtype = w.shape, cls._dtype(w.dtype)
        Np, Kp = cls.padded_shape(N, K, group_size)
        q, s, m = quantize_int4(F.pad(w, (0, 0, 0, Np - N)), group_size, zero, dtype, Kp)  # zero rows
        return cls(K, N, *kernels.pack_w4(q, s, m, group_size), group_size, zero)

    @classmethod
    def empty(cls, in_features, out_features, dtype, device, group_size=128, zero="asym"):
        (Np, Kp), dtype = cls.padded_shape(out_features, in_features, group_size), cls._dtype(dtype)
        scales = torch.empty(Kp // group_size, Np, dtype=dtype, device=device)
        return cls(in_features, out_features, torch.empty(Np, Kp // 8, dtype=torch.int32, device=device),
                   scales, None if zero == "sym" else torch.empty_like(scales), group_size, zero)

    def dequantize(self, dtype=None) -> torch.Tensor:
        q, s, m = kernels.unpack_w4(self.qweight, self.scales, self.zeros, self.group_size)
        w = kernels.dequantize(q, s, m, self.group_size, dtype=self.scales.dtype)  # as the kernel rounds it
        return w[:self.out_features, :self.in_features].to(dtype or self.scales.dtype)  # (Np, Kp) -> (N, K)

    def forward(self, x):
        # x (B, T, K) -> x2 (B*T, Kp) -> y (B*T, Np) -> (B*T, N) -> (B, T, N)
        x2 = pad_cols(x.reshape(-1, self.in_features).to(self.scales.dtype), self.qweight.shape[1] * 8)
        y = self._gemm(x2, self.qweight, self.scales, self.zeros, self.group_size)
        return y[:, :self.out_features].to(x.dtype).view(*x.shape[:-1], self.out_features)


class Int4Tinygemm(QuantLinear):
    """Baseline: PyTorch's tinygemm int4 kernel, bf16, asym (float zero), w = (q - 8)*s + z per group.

    `aten._convert_weight_to_int4pack` takes the (N, K/2) uint8 nibbles of `pack_nibbles` (torch >= 2.5,
    incl. 2.11 and 2.14) and scales_and_zeros is (G, N, 2) bf16 [s, z] with z = m + 8s. The packed
    layout depends on the device, so `layout` ("cuda" or "cpu", where the `_for_cpu` ops run) is a
    checkpoint param. K is zero-padded to a multiple of max(group, 128); N must be a multiple of 16.
    """
    PATTERN = r"int4-tinygemm(?:-g(?P<group_size>32|64|128|256))?"
    NAME, DEFAULTS = "int4-tinygemm-g{group_size}", {"group_size": 128}
    INNER_K_TILES = 8
    OPS = {"cuda": (torch.ops.aten._convert_weight_to_int4pack, torch.ops.aten._weight_int4pack_mm),
           "cpu": (torch.ops.aten._convert_weight_to_int4pack_for_cpu, torch.ops.aten._weight_int4pack_mm_for_cpu)}

    def __init__(self, in_features, out_features, qweight, scales_and_zeros, group_size: int, layout: str):
        super().__init__(in_features, out_features, group_size=group_size, layout=layout)
        self.group_size, self.layout = group_size, layout
        self.register_buffer("qweight", qweight)  # the op's packed layout for `layout`
        self.register_buffer("scales_and_zeros", scales_and_zeros)  # (G, N, 2) bf16

    @classmethod
    def _padded_k(cls, K: int, group_size: int) -> int:
        return round_up(K, max(group_size, cls.INNER_K_TILES * 16))

    @staticmethod
    def _check_n(N: int):
        if N % 16:
            raise ValueError(f"int4-tinygemm needs out_features % 16 == 0, got {N}")

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int = 128):
        w = cls._weight(linear)
        cls._check_n(w.shape[0])
        layout, K = ("cuda" if w.is_cuda else "cpu"), w.shape[1]
        q, s, m = quantize_int4(w, group_size, "asym", torch.bfloat16, cls._padded_k(K, group_size))
        convert = cls.OPS[layout][0]
        qweight = convert(pack_nibbles(q), cls.INNER_K_TILES) if layout == "cuda" else convert(q.int(), 1)
        sz = torch.stack([s, m + 8 * s], dim=-1).transpose(0, 1).contiguous()  # (N, G, 2) -> (G, N, 2)
        return cls(K, w.shape[0], qweight, sz, group_size, layout)

    @classmethod
    def empty(cls, in_features, out_features, dtype, device, group_size=128, layout="cuda"):
        cls._check_n(out_features)
        N, Kp = out_features, cls._padded_k(in_features, group_size)
        if layout == "cuda":  # [N/8][Kp/(tiles*16)][32][tiles/2] int32
            shape, qdtype = (N // 8, Kp // (cls.INNER_K_TILES * 16), 32, cls.INNER_K_TILES // 2), torch.int32
        else:
            shape, qdtype = (N, Kp // 2), torch.uint8
        return cls(in_features, out_features, torch.empty(shape, dtype=qdtype, device=device),
                   torch.empty(Kp // group_size, N, 2, dtype=torch.bfloat16, device=device), group_size, layout)

    def _mm(self, x2: torch.Tensor) -> torch.Tensor:
        # x2 (M, K) -> bf16 (M, N); K zero-padded to Kp.
        if x2.device.type != self.layout:
            raise RuntimeError(f"int4-tinygemm weights packed for {self.layout} cannot run on {x2.device.type}; "
                               "re-quantize on this device")
        x2 = pad_cols(x2.to(torch.bfloat16), self._padded_k(self.in_features, self.group_size))
        return self.OPS[self.layout][1](x2, self.qweight, self.group_size, self.scales_and_zeros)

    def dequantize(self, dtype=None) -> torch.Tensor:
        # The kernel's own dequantization, read back through an identity matmul: (K, K) @ W^T.
        eye = torch.eye(self.in_features, dtype=torch.bfloat16, device=self.qweight.device)
        return self._mm(eye).t().to(dtype or torch.bfloat16)

    def forward(self, x):
        y = self._mm(x.reshape(-1, self.in_features))  # (B, T, K) -> (B*T, K) -> (B*T, N)
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)  # (B*T, N) -> (B, T, N)


class FP8Rowwise(QuantLinear):
    """fp8 e4m3 weights with a float32 scale per output channel; activations quantized per row at run
    time. On CUDA (sm89+; N, K multiples of 16) one `torch._scaled_mm`; elsewhere the same arithmetic
    in float32 (the reference), with a one-line notice.
    """
    PATTERN = NAME = "fp8-rowwise"

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor):
        super().__init__(weight.shape[1], weight.shape[0])
        self.register_buffer("weight", weight)  # (N, K) fp8
        self.register_buffer("scales", scales)  # (N, 1) float32
        self.scaled_mm_ok = weight.shape[0] % 16 == 0 and weight.shape[1] % 16 == 0
        if weight.device.type not in ("cuda", "meta") or not self.scaled_mm_ok:
            _notice("fp8-rowwise: torch._scaled_mm needs CUDA and N, K multiples of 16; using the float32 reference")

    @classmethod
    def from_float(cls, linear: nn.Linear):
        return cls(*quantize_fp8_rows(cls._weight(linear)))

    @classmethod
    def empty(cls, in_features, out_features, dtype, device):
        return cls(torch.empty(out_features, in_features, dtype=FP8, device=device),
                   torch.empty(out_features, 1, dtype=torch.float32, device=device))

    def dequantize(self, dtype=None) -> torch.Tensor:
        return (self.weight.float() * self.scales).to(dtype or torch.float32)

    def forward(self, x):
        xq, xs = quantize_fp8_rows(x.reshape(-1, self.in_features))  # (B, T, K) -> (B*T, K)
        if x.is_cuda and self.scaled_mm_ok:
            y = torch._scaled_mm(xq, self.weight.t(), scale_a=xs, scale_b=self.scales.t(), out_dtype=torch.bfloat16)
        else:
            y = (xq.float() * xs) @ self.dequantize(torch.float32).t()
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)  # (B*T, N) -> (B, T, N)


SCHEMES: dict[str, type] = {"int8": Int8, "int8-compile": Int8Compile, "int4": Int4, "int4-tinygemm": Int4Tinygemm,
                             "int4-marlin": Int4Marlin, "fp8-rowwise": FP8Rowwise}
KNOWN = "none, int8, int8-compile, int4-g{32,64,128,256}-{sym,asym,azp}, int4-tinygemm[-gN], " \
        "int4-marlin[-g{32,64,128}-{sym,asym,azp}], fp8-rowwise"


def parse_scheme(name: str) -> tuple[type | None, dict]:
    """'int4-g128-asym' -> (Int4, {'group_size': 128, 'zero': 'asym'}); 'none' -> (None, {})."""
    if name == "none":
        return None, {}
    for cls in SCHEMES.values():
        params = cls.parse(name)
        if params is not None:
            return cls, params
    raise ValueError(f"unknown quantization scheme {name!r}; known: {KNOWN}")


def scheme_arg(name: str) -> str:
    """argparse `type` of a one-scheme --quant flag: the name, or a usage error before any model is loaded."""
    try:
        parse_scheme(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name


def schemes_arg(text: str) -> str:
    """The same for a comma-separated list (eval/bench.py; eval/perplexity.py, whose entries may end in :DTYPE)."""
    for entry in text.split(","):
        scheme_arg(entry.partition(":")[0])
    return text


def swap_linears(model: nn.Module, include_output: bool, make, desc: str | None = None) -> nn.Module:
    """Replace every nn.Linear (the head `output` only with include_output) by make(linear), in place;
    a progress bar when `desc` is given."""
    names = [name for name, mod in model.named_modules()
             if type(mod) is nn.Linear and (name != "output" or include_output)]
    for name in tqdm(names, desc=desc, unit="linear", disable=desc is None):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, make(model.get_submodule(name)))
    return model


@torch.no_grad()
def quantize_(model: nn.Module, scheme: str, include_output: bool = False, progress: bool = True,
              **params) -> nn.Module:
    """Swap the model's nn.Linear layers for `scheme` in place, each on its weight's device.

    Embeddings stay float. A head tied to the embedding gets its own quantized copy when
    include_output is set; the embedding keeps the float weight. `params` override the name's.
    `progress`: a progress bar over the linears.
    """
    cls, parsed = parse_scheme(scheme)
    if cls is None:
        return model
    return swap_linears(model, include_output, lambda lin: cls.from_float(lin, **{**parsed, **params}),
                        desc=f"quantizing {scheme}" if progress else None)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Quantize a model's linear layers and write a checkpoint that records the scheme.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=f"schemes: {KNOWN}")
    ap.add_argument("--model", required=True, help="model spec understood by checkpoint.load_model "
                    "(GGUF file, HF safetensors folder or our checkpoint)")
    ap.add_argument("--quant", required=True, metavar="SCHEME", type=scheme_arg,
                    help="scheme name, e.g. int4-g128-asym")
    ap.add_argument("--out", required=True, help="path of the quantized checkpoint to write")
    ap.add_argument("--include-output", action="store_true", help="also quantize the output head "
                    "(a head tied to the embedding gets its own quantized copy)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="device to quantize on (default: cuda if available)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                    help="model dtype; scales are stored in it (default: bfloat16)")
    args = ap.parse_args(argv)  # --quant is checked here (scheme_arg), before the model loads

    from checkpoint import load_model, save_checkpoint
    model, _, info = load_model(args.model, device=args.device, dtype=getattr(torch, args.dtype))
    if info["quant"] is not None:
        sys.exit(f"{args.model} is already quantized ({info['quant']['scheme']}); start from float weights")
    quantize_(model, args.quant, include_output=args.include_output)
    save_checkpoint(args.out, model, info["tokenizer_file"])
    print(f"wrote {args.out} ({args.quant})", file=sys.stderr)


if __name__ == "__main__":
    main()
