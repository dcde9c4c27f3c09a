"""Loading weights on CPU: HF folders against transformers, GGUF files (tiny and SmolLM2's perplexity),
our checkpoints' round trip, and the errors for broken sources."""
import json
import time

import gguf
import numpy as np
import pytest
import torch

from checkpoint import CheckpointError, load_model, quant_config, save_checkpoint
from model import PRESETS, ModelArgs, Transformer

TINY = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, ffn_dim=96, max_seq_len=256)
L31 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16}


def random_model(seed=0, **over) -> Transformer:
    torch.manual_seed(seed)
    m = Transformer(ModelArgs(**{**TINY, **over})).eval().requires_grad_(False)
    for name, p in m.named_parameters():
        torch.nn.init.normal_(p, mean=1.0 if "norm" in name else 0.0, std=0.2)
    return m


def logits(m, ids):
    m.setup_caches(1, len(ids))
    return m(torch.tensor([ids]), torch.arange(len(ids)), torch.zeros(1, dtype=torch.long))[0]


# ---------------------------------------------------------------------------------------------------
# Hugging Face folders, checked against transformers' own forward


def save_hf(folder, seed=0, shard=None, **config):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    base = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=97, max_position_embeddings=256, rms_norm_eps=1e-5)
    hf = LlamaForCausalLM(LlamaConfig(**{**base, **config})).float().eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.1)
    kwargs = {"max_shard_size": shard} if shard else {}
    hf.save_pretrained(folder, safe_serialization=True, **kwargs)
    return hf


@pytest.mark.parametrize("config", [
    dict(rope_theta=10000.0),  # GQA, untied, single file
    dict(num_key_value_heads=4, rope_theta=10000.0),  # MHA
    dict(num_key_value_heads=1, tie_word_embeddings=True, rope_theta=500000.0,
         rope_scaling={"rope_type": "llama3", **L31}, shard="20KB"),  # Llama-3.1 RoPE, tied, sharded
], ids=["gqa", "mha", "llama31-tied-sharded"])
@torch.no_grad()
def test_hf_folder_matches_transformers(tmp_path, config):
    config = dict(config)
    hf = save_hf(tmp_path, shard=config.pop("shard", None), **config)
    with pytest.warns(UserWarning, match="no tokenizer"):
        model, tok, info = load_model(tmp_path, device="cpu", dtype=torch.float32)
    assert tok is None and info["kind"] == "hf" and info["tokenizer_file"] is None
    assert model.args.tie_embeddings == config.get("tie_word_embeddings", False)
    if model.args.tie_embeddings:
        assert model.output.weight is model.tok_embeddings.weight
    ids = torch.randint(0, 97, (48,), generator=torch.Generator().manual_seed(1)).tolist()
    ref = hf(torch.tensor([ids])).logits[0].float()
    torch.testing.assert_close(logits(model, ids), ref, rtol=1e-4, atol=1e-4)


def test_hf_sharded_folder_is_sharded(tmp_path):
    save_hf(tmp_path, shard="20KB", rope_theta=10000.0)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1


@pytest.mark.parametrize("change, message", [
    ({"head_dim": 32}, "head_dim 32"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}}, "rope_type 'yarn'"),
    ({"model_type": "qwen2"}, "model_type 'qwen2'"),
])
def test_hf_refuses_unsupported_configs(tmp_path, change, message):
    config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 97, **change}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        load_model(tmp_path, device="cpu", dtype=torch.float32)


def test_hf_missing_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file
    save_hf(tmp_path, rope_theta=10000.0)
    sd = load_file(tmp_path / "model.safetensors")
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing tensor model\.layers\.1\.mlp\.up_proj\.weight"):
        load_model(tmp_path, device="cpu", dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------
# GGUF


def write_tiny_gguf(path, model: Transformer, rope_freqs=None):
    """Our model as a float32 llama GGUF (q/k rows in the interleaved layout, as llama.cpp stores them)."""
    a = model.args
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_block_count(a.n_layers)
    w.add_context_length(a.max_seq_len)
    w.add_embedding_length(a.dim)
    w.add_feed_forward_length(a.ffn_dim)
    w.add_head_count(a.n_heads)
    w.add_head_count_kv(a.n_kv_heads)
    w.add_rope_freq_base(a.rope_theta)
    w.add_layer_norm_rms_eps(a.norm_eps)
    w.add_vocab_size(a.vocab_size)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    H, Hkv, D = a.n_heads, a.n_kv_heads, a.head_dim
    tensors = {"token_embd.weight": sd["tok_embeddings.weight"], "output_norm.weight": sd["norm.weight"]}
    if not a.tie_embeddings:
        tensors["output.weight"] = sd["output.weight"]
    if rope_freqs is not None:
        tensors["rope_freqs.weight"] = rope_freqs
        w.add_rope_scaling_orig_ctx_len(a.rope_scaling["original_max_position_embeddings"])
    for i in range(a.n_layers):
        l, b = f"layers.{i}.", f"blk.{i}."
        q, k, v = np.split(sd[l + "attention.wqkv.weight"], [H * D, (H + Hkv) * D])
        gate, up = np.split(sd[l + "feed_forward.w13.weight"], 2)
        tensors |= {b + "attn_norm.weight": sd[l + "attention_norm.weight"], b + "attn_q.weight": q,
                    b + "attn_k.weight": k, b + "attn_v.weight": v, b + "attn_output.weight": sd[l + "attention.wo.weight"],
                    b + "ffn_norm.weight": sd[l + "ffn_norm.weight"], b + "ffn_gate.weight": gate,
                    b + "ffn_up.weight": up, b + "ffn_down.weight": sd[l + "feed_forward.w2.weight"]}
    for name, t in tensors.items():
        w.add_tensor(name, np.ascontiguousarray(t, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("over", [{}, {"tie_embeddings": True, "rope_scaling": L31}], ids=["plain", "tied-llama31"])
@torch.no_grad()
def test_tiny_gguf_loads_exactly(tmp_path, over):
    from model import rope_frequencies
    ref = random_model(**over)
    rope_freqs = None
    if over.get("rope_scaling"):  # llama.cpp's form of Llama-3.1 scaling: per-frequency divisors
        plain = ModelArgs(**{**TINY, **over, "rope_scaling": None})
        rope_freqs = (rope_frequencies(plain).double() / ref.inv_freq.double()).float().numpy()
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, ref, rope_freqs)
    with pytest.warns(UserWarning, match="no usable tokenizer"):
        model, tok, info = load_model(path, device="cpu", dtype=torch.float32)
    assert tok is None and info["kind"] == "gguf"
    assert model.args == ref.args
    ids = list(range(3, 43))
    torch.testing.assert_close(logits(model, ids), logits(ref, ids), rtol=1e-5, atol=1e-5)


def test_truncated_gguf_is_named(tmp_path):
    path = tmp_path / "cut.gguf"
    write_tiny_gguf(path, random_model())
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.gguf: not a readable GGUF file \(truncated or corrupt"):
        load_model(path, device="cpu", dtype=torch.float32)


@torch.no_grad()
def test_smollm2_gguf_perplexity(smollm2_gguf, wikitext):
    from eval.perplexity import token_perplexity
    t0 = time.perf_counter()
    model, tok, info = load_model(smollm2_gguf, device="cpu", dtype=torch.float32)
    load_s = time.perf_counter() - t0
    assert tok is not None and model.args.tie_embeddings and model.args.n_kv_heads == 3
    ids = tok.encode(wikitext)
    r = token_perplexity(model, ids, window=1024, max_tokens=4 * 1024, progress=False)
    print(f"\nSmolLM2-135M GGUF: loaded in {load_s:.1f} s; ppl {r['ppl']:.3f} on {r['windows']} windows of "
          f"{r['window']} ({r['tokens']} tokens) of wiki.test.raw (reference 23.09)")
    assert r["windows"] == 4 and r["tokens"] == 4 * 1023
    assert r["ppl"] < 30


# ---------------------------------------------------------------------------------------------------
# Our checkpoints


@torch.no_grad()
def test_checkpoint_round_trip_with_embedded_tokenizer(smollm2_gguf, tmp_path):
    from tokenizer import load_tokenizer
    ref = random_model(tie_embeddings=True, rope_scaling=L31)
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, ref, smollm2_gguf)
    assert path.stat().st_size < 3_000_000  # a tokenizer-only GGUF (~1.8 MB), not the 98 MB model
    model, tok, info = load_model(path, device="cpu", dtype=torch.float32)
    assert info == {"source": str(path), "kind": "checkpoint", "quant": None, "tokenizer_file": info["tokenizer_file"]}
    assert model.args == ref.args and model.output.weight is model.tok_embeddings.weight
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    ids = list(range(5, 45))
    assert torch.equal(logits(model, ids), logits(ref, ids))
    full = load_tokenizer(smollm2_gguf)
    text = "<|im_start|>user\nHello, world! 12345 naïve café<|im_end|>"
    assert tok.encode(text) == full.encode(text)
    assert (tok.bos_id, tok.eos_ids, tok.pad_id) == (full.bos_id, full.eos_ids, full.pad_id)
    # what load_model reports feeds save_checkpoint again, and the embedded file is stable
    save_checkpoint(tmp_path / "again.pt", model, info["tokenizer_file"])
    embedded = [torch.load(p, weights_only=True)["tokenizer"] for p in (path, tmp_path / "again.pt")]
    assert embedded[0]["filename"] == embedded[1]["filename"]
    assert torch.equal(embedded[0]["data"], embedded[1]["data"])


@torch.no_grad()
def test_checkpoint_loads_in_another_dtype(tmp_path):
    ref = random_model()
    save_checkpoint(tmp_path / "x.pt", ref, None)
    half, tok, _ = load_model(tmp_path / "x.pt", device="cpu", dtype=torch.bfloat16)
    assert tok is None and half.inv_freq.dtype == torch.float32  # RoPE frequencies stay float32
    for name, t in ref.state_dict().items():
        assert torch.equal(half.state_dict()[name], t.to(torch.bfloat16)), name
    assert logits(half, list(range(5, 45))).isfinite().all()


@pytest.mark.parametrize("scheme", ["int8", "int4-g32-asym"])
@torch.no_grad()
def test_quantized_checkpoint_round_trip(tmp_path, scheme):
    quantize = pytest.importorskip("quantize")
    ref = quantize.quantize_(random_model(), scheme)
    path = tmp_path / "q.pt"
    save_checkpoint(path, ref, None)
    model, tok, info = load_model(path, device="cpu", dtype=torch.float32)
    assert tok is None and info["quant"] == quant_config(ref)
    ids = list(range(5, 45))
    assert torch.equal(logits(model, ids), logits(ref, ids))
    for name, t in ref.state_dict().items():
        assert model.state_dict()[name].dtype == t.dtype, name


def test_truncated_checkpoint_is_named(tmp_path):
    path = tmp_path / "cut.pt"
    save_checkpoint(path, random_model(), None)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt: not a readable checkpoint \(truncated or corrupt"):
        load_model(path, device="cpu", dtype=torch.float32)


def test_shape_mismatch_names_tensor_and_shapes(tmp_path):
    path = tmp_path / "x.pt"
    save_checkpoint(path, random_model(), None)
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["layers.1.attention.wo.weight"] = torch.zeros(64, 32)
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"x\.pt: layers\.1\.attention\.wo\.weight has shape \(64, 32\), "
                                              r"model expects \(64, 64\)"):
        load_model(path, device="cpu", dtype=torch.float32)


def test_wrong_format_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"format": "something-else", "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match=r"other\.pt: not a lowbit-llama checkpoint \(format 'something-else'\)"):
        load_model(path, device="cpu", dtype=torch.float32)


def test_unknown_spec_and_weightless_preset():
    with pytest.raises(ValueError, match="llama-3-8b") as e:
        load_model("no-such-model", device="cpu", dtype=torch.float32)
    assert "unknown model 'no-such-model'" in str(e.value)
    with pytest.raises(ValueError, match="preset llama-3-8b has no weights here; pass --random-weights"):
        load_model("llama-3-8b", device="cpu", dtype=torch.float32)


def test_random_preset_is_seeded_and_initialised():
    m, tok, info = load_model("smollm2-135m", device="cpu", dtype=torch.bfloat16, random_weights=True, seed=3)
    assert tok is None and info["kind"] == "preset" and m.args == ModelArgs(**PRESETS["smollm2-135m"])
    w = m.layers[0].attention.wqkv.weight
    assert w.dtype == torch.bfloat16 and abs(w.float().std().item() - 0.02) < 1e-3
    assert torch.all(m.layers[0].attention_norm.weight == 1) and m.output.weight is m.tok_embeddings.weight
    again, _, _ = load_model("smollm2-135m", device="cpu", dtype=torch.bfloat16, random_weights=True, seed=3)
    assert torch.equal(again.layers[0].attention.wqkv.weight, w)


def test_random_preset_quantized_block_by_block(monkeypatch):
    """load_model(quantize=...) quantizes each block of random weights as soon as they exist (later blocks
    still without storage), giving the same model as quantizing the finished one. The random weights
    themselves are pinned to the values the one-pass initialisation drew before block-by-block building
    (torch's CPU generator)."""
    import checkpoint
    from quantize import quantize_
    building, seen = [], []
    real_meta_model, real_quantize = checkpoint._meta_model, checkpoint.quantize_

    def spy_meta(args, dtype):  # a handle on the model while load_model builds it
        building.append(real_meta_model(args, dtype))
        return building[-1]

    def spy_quantize(module, scheme, **kw):
        if module in list(building[-1].layers):
            blocks = list(building[-1].layers)
            seen.append(sum(b.attention.wqkv.weight.is_meta for b in blocks[blocks.index(module) + 1:]))
        return real_quantize(module, scheme, **kw)

    monkeypatch.setattr(checkpoint, "_meta_model", spy_meta)
    monkeypatch.setattr(checkpoint, "quantize_", spy_quantize)
    built, _, _ = load_model("tiny", device="cpu", dtype=torch.float32, random_weights=True, seed=5,
                             quantize="int4-g64-asym")
    assert seen == [1, 0]  # tiny has 2 blocks: the second had no storage yet when the first was quantized
    after, _, _ = load_model("tiny", device="cpu", dtype=torch.float32, random_weights=True, seed=5)
    sd = after.state_dict()
    for name, total in (("tok_embeddings.weight", -5.864667513593417), ("layers.0.attention.wqkv.weight", -2.1186647603358324),
                        ("layers.1.feed_forward.w2.weight", 4.276404781503743), ("output.weight", -0.5795048288484494)):
        assert sd[name].double().sum().item() == pytest.approx(total, rel=1e-9), name
    quantize_(after, "int4-g64-asym", progress=False)
    a, b = built.state_dict(), after.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
