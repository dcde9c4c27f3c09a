"""Model invariants on CPU in float32: KV-cache decoding, left-padded batches, RoPE scaling."""
import pytest
import torch

from model import ModelArgs, PRESETS, Transformer, rope_frequencies

TINY = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, ffn_dim=96, max_seq_len=256)


def tiny_model(seed=0, **over):
    torch.manual_seed(seed)
    m = Transformer(ModelArgs(**{**TINY, **over})).eval()
    for p in m.parameters():  # random, not the ones-initialised norms
        torch.nn.init.normal_(p, std=0.2)
    return m


def full_logits(m, ids):
    m.setup_caches(1, 64)
    T = len(ids)
    return m(torch.tensor([ids]), torch.arange(T), torch.zeros(1, dtype=torch.long))[0]


@pytest.mark.parametrize("over", [{}, {"tie_embeddings": True}, {"n_kv_heads": 1},
                                  {"rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                    "original_max_position_embeddings": 16}}])
@torch.no_grad()
def test_incremental_decode_matches_full_forward(over):
    m = tiny_model(**over)
    ids = torch.randint(0, 97, (20,)).tolist()
    ref = full_logits(m, ids)
    m.setup_caches(1, 64)
    out = [m(torch.tensor([ids[:5]]), torch.arange(5), torch.zeros(1, dtype=torch.long))[0]]
    for t in range(5, 20):
        out.append(m(torch.tensor([[ids[t]]]), torch.tensor([t]), torch.zeros(1, dtype=torch.long))[0])
    torch.testing.assert_close(torch.cat(out), ref, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_left_padded_batch_matches_rows_alone():
    m = tiny_model()
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15]]
    T = max(map(len, prompts))
    pad = torch.tensor([T - len(p) for p in prompts])
    tokens = torch.tensor([[0] * (T - len(p)) + p for p in prompts])
    m.setup_caches(3, 32)
    logits = m(tokens, torch.arange(T), pad)
    for b, p in enumerate(prompts):
        alone = full_logits(m, p)
        torch.testing.assert_close(logits[b, T - len(p):], alone, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(logits).all()


def test_llama31_rope_scaling_keeps_high_and_scales_low_frequencies():
    args = ModelArgs.from_name("llama-3.1-8b")
    plain = rope_frequencies(ModelArgs(**{**PRESETS["llama-3-8b"]}))
    scaled = rope_frequencies(args)
    assert torch.equal(scaled[:4], plain[:4])  # short wavelengths untouched
    torch.testing.assert_close(scaled[-4:], plain[-4:] / 8.0)  # long wavelengths divided by the factor


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model preset 'llama-9'"):
        ModelArgs.from_name("llama-9")


def test_cache_longer_than_context_is_refused():
    m = tiny_model()
    with pytest.raises(ValueError, match="exceeds the model's context"):
        m.setup_caches(1, 1000)
