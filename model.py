"""A minimal Llama for batched generation.

GQA, RMSNorm, SwiGLU, RoPE (interleaved pairs, with Llama-3.1 frequency scaling) and tied embeddings;
q/k/v fused into one linear and gate/up into another, so the kernels see fewer, larger matmuls.

Batches hold prompts of different lengths by LEFT padding: row b starts with pad[b] pad tokens, so
every row's last prompt token sits in the same cache column and decoding writes one shared column
per step (one `input_pos` for the whole batch, which keeps the decode step a static graph). Each row's
RoPE positions start at 0 after its padding, and the attention mask hides the pad columns.
"""
import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 32
    vocab_size: int = 32000
    ffn_dim: int = 11008
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # Llama-3.1 style: {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
    rope_scaling: dict | None = None
    tie_embeddings: bool = False
    max_seq_len: int = 4096  # the model's trained context

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def from_name(cls, name: str) -> "ModelArgs":
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
        return cls(**PRESETS[name])

    @classmethod
    def from_dict(cls, d: dict) -> "ModelArgs":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model arguments {sorted(unknown)}")
        return cls(**d)


_L31 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
_L32 = {**_L31, "factor": 32.0}
PRESETS = {
    "tiny": dict(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, ffn_dim=256),  # smoke tests
    "smollm2-135m": dict(dim=576, n_layers=30, n_heads=9, n_kv_heads=3, vocab_size=49152, ffn_dim=1536,
                         rope_theta=100000.0, tie_embeddings=True, max_seq_len=8192),
    "llama-2-7b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, vocab_size=32000, ffn_dim=11008),
    "llama-2-13b": dict(dim=5120, n_layers=40, n_heads=40, n_kv_heads=40, vocab_size=32000, ffn_dim=13824),
    "llama-3-8b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256, ffn_dim=14336,
                       rope_theta=500000.0, max_seq_len=8192),
    "llama-3.1-8b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256, ffn_dim=14336,
                         rope_theta=500000.0, rope_scaling=_L31, max_seq_len=131072),
    "llama-3.2-1b": dict(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=128256, ffn_dim=8192,
                         rope_theta=500000.0, rope_scaling=_L32, tie_embeddings=True, max_seq_len=131072),
    "llama-3.2-3b": dict(dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, vocab_size=128256, ffn_dim=8192,
                         rope_theta=500000.0, rope_scaling=_L32, tie_embeddings=True, max_seq_len=131072),
    # Mistral-7B v0.3 (no sliding window; v0.1's 4096-token window is not modelled).
    "mistral-7b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=32768, ffn_dim=14336,
                       rope_theta=1000000.0, max_seq_len=32768),
    "llama-3-70b": dict(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=128256, ffn_dim=28672,
                        rope_theta=500000.0, max_seq_len=8192),
}


def rope_frequencies(args: ModelArgs) -> torch.Tensor:
    """Inverse frequencies (head_dim/2,), float32, with Llama-3.1's smooth long-context scaling if set."""
    d = args.head_dim
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    sc = args.rope_scaling
    if sc:
        old_ctx = sc["original_max_position_embeddings"]
        low_wavelen = old_ctx / sc["low_freq_factor"]
        high_wavelen = old_ctx / sc["high_freq_factor"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_ctx / wavelen - sc["low_freq_factor"]) / (sc["high_freq_factor"] - sc["low_freq_factor"])
        blended = (1 - smooth) * inv_freq / sc["factor"] + smooth * inv_freq
        inv_freq = torch.where(wavelen < high_wavelen, inv_freq,
                               torch.where(wavelen > low_wavelen, inv_freq / sc["factor"], blended))
    return inv_freq.float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (2i, 2i+1) of x (B, T, H, D) by per-row angles cos/sin (B, T, 1, D/2)."""
    xf = x.float().unflatten(-1, (-1, 2))  # (B, T, H, D/2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1)
    return out.flatten(-2).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.fused = False  # setup_caches: add_forward through kernels.add_rms_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight

    def add_forward(self, x: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + r, self(x + r)); one kernel where setup_caches found the op takes this norm (the same bits on CPU)."""
        if self.fused:
            return kernels.add_rms_norm(x, r, self.weight, self.eps)
        h = x + r
        return h, self(h)


class KVCache(nn.Module):
    def __init__(self, batch: int, n_kv_heads: int, seq: int, head_dim: int, dtype, device):
        super().__init__()
        # Keys and values in one buffer (2, B, H_kv, S, D), so a step writes both in one kernel.
        shape = (2, batch, n_kv_heads, seq, head_dim)
        self.register_buffer("kv", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        # k, v: (B, H_kv, T, D) written at cache columns input_pos (T,); returns the whole cache as two
        # contiguous (B, H_kv, S, D) views.
        self.kv[:, :, :, input_pos] = torch.stack((k, v))  # (2, B, H_kv, T, D)
        return self.kv[0], self.kv[1]


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wqkv = nn.Linear(args.dim, (args.n_heads + 2 * args.n_kv_heads) * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.kv_cache: KVCache | None = None
        self.decode_kernel = False  # setup_caches: decode steps attend through our kernel
        self.in_region = False  # Block.compile_once: called inside a nested compile region

    @property
    def step_op(self) -> bool:  # the decode kernel also does RoPE and the cache write
        return self.decode_kernel and (REGION_TAKES_MUTATING_OPS or not self.in_region)

    def forward(self, x, cos, sin, mask, input_pos):
        B, T, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = self.wqkv(x).split([H * D, Hkv * D, Hkv * D], dim=-1)
        # GQA without repeating K/V: the n_rep query heads that share a KV head become extra query
        # rows of that head, so attention reads each cached K/V once.
        # `mask` (B, 1, rep*T, S) was laid out for these rows once per forward.
        rep = H // Hkv
        if T == 1 and self.step_op:  # one kernel: RoPE, the cache write, attention; mask row 0 (B, S)
            y = kernels.kv16_decode_step_attention(  # views of the projection (B, Hkv, rep, D), (B, Hkv, D)
                q.view(B, Hkv, rep, D), k.view(B, Hkv, D), v.view(B, Hkv, D), self.kv_cache.kv, mask[:, 0, 0],
                cos[:, 0, 0], sin[:, 0, 0], input_pos)  # (B, Hkv, rep, D)
        else:
            k = apply_rope(k.view(B, T, Hkv, D), cos, sin)
            k_all, v_all = self.kv_cache.update(input_pos, k.transpose(1, 2), v.view(B, T, Hkv, D).transpose(1, 2))
            if T == 1 and self.decode_kernel:  # q's RoPE in the kernel; mask row 0 holds every row's (B, S)
                y = kernels.kv16_decode_attention(q.view(B, Hkv, rep, D), k_all, v_all, mask[:, 0, 0], cos[:, 0, 0],
                                                  sin[:, 0, 0])  # (B, Hkv, rep, D)
            else:
                q = apply_rope(q.view(B, T, H, D), cos, sin)
                q = q.view(B, T, Hkv, rep, D).permute(0, 2, 3, 1, 4).reshape(B, Hkv, rep * T, D)
                y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)  # (B, Hkv, rep*T, D)
        y = y.view(B, Hkv, rep, T, D).permute(0, 3, 1, 2, 4).reshape(B, T, H * D)
        return self.wo(y)


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.w13 = nn.Linear(args.dim, 2 * args.ffn_dim, bias=False)  # rows: gate (w1), then up (w3)
        self.w2 = nn.Linear(args.ffn_dim, args.dim, bias=False)

    def forward(self, x):
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


def _block(block: "Block", x, r, cos, sin, mask, input_pos):
    # The layer's input is x + r: the layer before returns its residual and its feed-forward output
    # unsummed, so the sum fuses with this layer's first norm (one kernel per layer fewer when
    # each layer is compiled on its own, as under compile_once); so does the second add with the ffn norm.
    x, n = block.attention_norm.add_forward(x, r)
    h, n = block.ffn_norm.add_forward(x, block.attention(n, cos, sin, mask, input_pos))
    return h, block.feed_forward(n)


# A custom op that writes into an input of a nested compile region (the step op's cache write) fails to
# functionalize before torch 2.14.1 ("Found a custom (non-ATen) operator whose output has alias annotations" on 2.11
# and 2.13; 2.14.0 not tried; pytorch/pytorch#186807 and #189523, fixed by #189543).  There, layers compiled once
# keep k's RoPE and the cache write out of the decode kernel, q's RoPE in it (Attention.forward).
REGION_TAKES_MUTATING_OPS = torch.torch_version.TorchVersion(torch.__version__) >= "2.14.1"

# One function for every layer, so torch.compile can trace and compile it once and call it n_layers
# times (`compile_once`; torch >= 2.8) instead of inlining n_layers copies.
_block_once = getattr(torch.compiler, "nested_compile_region", lambda f: f)(_block)


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args)
        self.compile_once = False

    @property
    def compile_once(self) -> bool:
        return self.attention.in_region

    @compile_once.setter
    def compile_once(self, on: bool):
        self.attention.in_region = on  # the decode step's attention needs to know (REGION_TAKES_MUTATING_OPS)

    def forward(self, x, r, cos, sin, mask, input_pos):
        return (_block_once if self.compile_once else _block)(self, x, r, cos, sin, mask, input_pos)


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.register_buffer("inv_freq", rope_frequencies(args), persistent=False)
        self.max_batch = self.max_seq = 0
        self.decode_kernel = False  # as asked of setup_caches (layers it cannot take use SDPA)

    def setup_caches(self, max_batch: int, max_seq: int, decode_kernel: bool = False):
        """Allocate the static KV caches (2, B, H_kv, S, D) (keys, values) in the embedding's dtype and device.

        max_seq is rounded up to a multiple of 16 so the attention mask rows stay aligned for the
        fused attention kernels.  decode_kernel: one-token steps attend through our split-KV kernel where it
        takes the layer (CUDA, head_dim 64/128, <= 8 query heads per KV head) and kernels/attention.py
        prefer_kernel picks it (batch x KV heads <= 512 on compute capability 9.0+), else
        F.scaled_dot_product_attention.  The kernel also does their RoPE and cache write
        (kernels.kv16_decode_step_attention) unless the layer is compiled once on torch < 2.14.1
        (REGION_TAKES_MUTATING_OPS).  Each residual add and the norm after it become kernels.add_rms_norm where
        kernels.add_rms_norm_supported takes the norm (16-bit weights; on CUDA, D and the extension).
        """
        max_seq = -(-max_seq // 16) * 16
        if max_seq > self.args.max_seq_len:
            raise ValueError(f"a cache of {max_seq} positions exceeds the model's context of {self.args.max_seq_len}")
        emb = self.tok_embeddings.weight
        for layer in self.layers:
            att = layer.attention  # its head counts are this rank's under tensor parallelism
            att.kv_cache = KVCache(max_batch, att.n_kv_heads, max_seq, att.head_dim, emb.dtype, emb.device)
            att.decode_kernel = decode_kernel and kernels.decode_attention_supported(
                att.n_heads // att.n_kv_heads, att.head_dim, emb.dtype, emb.device, max_batch * att.n_kv_heads)
        for norm in (m for m in self.modules() if isinstance(m, RMSNorm)):
            norm.fused = kernels.add_rms_norm_supported(norm.weight)
        self.max_batch, self.max_seq, self.decode_kernel = max_batch, max_seq, decode_kernel

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, pad: torch.Tensor,
                last_only: bool = False) -> torch.Tensor:
        """tokens (B, T) written to cache columns input_pos (T,); pad (B,) left-pad count per row.

        Returns float logits (B, T, V), or (B, 1, V) for the last column only when last_only.
        """
        if self.max_seq == 0:
            raise RuntimeError("call setup_caches(max_batch, max_seq) before forward")
        B = tokens.shape[0]
        # Per-row RoPE positions: column minus that row's padding (pad columns clamp to 0).
        pos = (input_pos[None, :] - pad[:, None]).clamp(min=0)  # (B, T)
        angles = pos[..., None].float() * self.inv_freq  # (B, T, D/2)
        cos, sin = angles.cos()[:, :, None], angles.sin()[:, :, None]  # (B, T, 1, D/2)
        # Column j is visible from query column c of row b if pad[b] <= j <= c. Pad queries also
        # see themselves, so their rows are never empty (an empty row would give NaN, and NaN
        # times a zero attention weight still poisons the real rows in the next layer).
        j = torch.arange(self.max_seq, device=tokens.device)
        c = input_pos[None, :, None]
        visible = (j <= c) & ((j >= pad[:, None, None]) | (j == c))  # (B, T, S)
        x = self.tok_embeddings(tokens)
        # An additive mask in the activation dtype, repeated for the rep query heads of each KV head
        # (the GQA layout of Attention.forward): (B, 1, rep*T, S), built once for all layers.
        rep = self.layers[0].attention.n_heads // self.layers[0].attention.n_kv_heads
        mask = torch.zeros(visible.shape, dtype=x.dtype, device=x.device).masked_fill(~visible, float("-inf"))
        mask = mask[:, None, None].expand(B, 1, rep, *visible.shape[1:]).reshape(B, 1, -1, self.max_seq)
        r = torch.zeros_like(x)
        for layer in self.layers:
            x, r = layer(x, r, cos, sin, mask, input_pos)
        if last_only:
            x, r = x[:, -1:], r[:, -1:]
        return self.output(self.norm.add_forward(x, r)[1]).float()
