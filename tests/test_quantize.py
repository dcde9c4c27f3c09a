"""quantize.py on CPU: packing, each scheme against its own dequantization, error bands, checkpoint
round trips through checkpoint.quant_config/apply_quant_config, K padding, torch.compile, and GGUF Q4_1."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import checkpoint as C
import quantize as Q
import rounding
from model import ModelArgs, Transformer

# Each scheme with the relative output tolerance of forward vs F.linear(x, dequantize()): the reference
# schemes do the same arithmetic, tinygemm and marlin run in bf16, fp8-rowwise also quantizes activations.
SCHEMES = {"int8": 1e-5, "int8-compile": 1e-5, "int4-g32-sym": 1e-5, "int4-g64-asym": 1e-5,
           "int4-g128-azp": 1e-5, "int4-marlin": 1e-2, "int4-marlin-g64-sym": 1e-2,
           "int4-tinygemm": 2e-2, "int4-tinygemm-g32": 2e-2, "fp8-rowwise": 8e-2}


def gaussian_linear(N=256, K=512, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(K, N, bias=False, dtype=dtype)
    lin.weight.data = torch.randn(N, K, generator=g).to(dtype)
    return lin


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def quantized(scheme, lin):
    cls, params = Q.parse_scheme(scheme)
    return cls.from_float(lin, **params)


def test_nibbles_round_trip():
    q = torch.randint(0, 16, (7, 64), dtype=torch.uint8)
    p = rounding.pack_nibbles(q)
    assert p.shape == (7, 32) and p.dtype == torch.uint8
    assert p[0, 0] == q[0, 0] * 16 + q[0, 1]  # tinygemm's byte order: even k in the high nibble
    assert torch.equal(rounding.unpack_nibbles(p), q)


def test_parse_scheme():
    assert Q.parse_scheme("none") == (None, {})
    assert Q.parse_scheme("int4-g128-asym") == (Q.Int4, {"group_size": 128, "zero": "asym"})
    assert Q.parse_scheme("int4-marlin") == (Q.Int4Marlin, {"group_size": 128, "zero": "asym"})
    assert Q.parse_scheme("int4-marlin-g32-sym") == (Q.Int4Marlin, {"group_size": 32, "zero": "sym"})
    assert Q.parse_scheme("int4-marlin-g64-azp") == (Q.Int4Marlin, {"group_size": 64, "zero": "azp"})
    assert Q.parse_scheme("int4-tinygemm-g64") == (Q.Int4Tinygemm, {"group_size": 64})
    for bad in ["int4", "int4-g100-asym", "int4-marlin-g256-asym", "int3", "fp8"]:
        with pytest.raises(ValueError, match="unknown quantization scheme"):
            Q.parse_scheme(bad)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_matches_dequantize(scheme, dtype):
    m = quantized(scheme, gaussian_linear(dtype=dtype))
    x = torch.randn(2, 5, 512, dtype=dtype)  # leading batch dims (B, T, K)
    y = m(x)
    assert y.shape == (2, 5, 256) and y.dtype == dtype
    ref = F.linear(x.float(), m.dequantize(torch.float32))
    tol = SCHEMES[scheme] if dtype == torch.float32 else max(SCHEMES[scheme], 1e-2)
    assert rel(y, ref) < tol


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("scheme", SCHEMES)
def test_forward_matches_dequantize_cuda(scheme):
    """The GPU paths (tinygemm, _scaled_mm, our kernel) against their own dequantization, K=576 padded."""
    m = quantized(scheme, gaussian_linear(N=256, K=576, dtype=torch.bfloat16).cuda())
    x = torch.randn(2, 5, 576, dtype=torch.bfloat16, device="cuda")
    assert rel(m(x), F.linear(x.float(), m.dequantize(torch.float32))) < max(SCHEMES[scheme], 1e-2)
    assert rel(m.dequantize(torch.float32).cpu(), quantized(scheme, gaussian_linear(N=256, K=576, dtype=torch.bfloat16))
               .dequantize(torch.float32)) < 1e-2  # same quantization as on CPU


def test_dequantize_shape_and_dtype():
    for scheme in SCHEMES:
        w = quantized(scheme, gaussian_linear(dtype=torch.bfloat16)).dequantize(torch.float32)
        assert w.shape == (256, 512) and w.dtype == torch.float32


def test_error_bands():
    lin = gaussian_linear(N=512, K=1024)
    err = {s: rel(quantized(s, lin).dequantize(torch.float32), lin.weight)
           for s in ["int8", "fp8-rowwise", "int4-tinygemm"]
           + [f"int4-g{g}-{z}" for g in (32, 64, 128) for z in ("sym", "asym", "azp")]}
    assert err["int8"] < 0.01
    assert 0.015 < err["fp8-rowwise"] < 0.04
    for g in (32, 64, 128):
        assert 0.04 < err[f"int4-g{g}-asym"] < err[f"int4-g{g}-sym"] < 0.15
        assert err[f"int4-g{g}-azp"] < err[f"int4-g{g}-sym"]
        assert err["int8"] * 5 < err[f"int4-g{g}-asym"]
    for z in ("sym", "asym", "azp"):
        assert err[f"int4-g32-{z}"] < err[f"int4-g64-{z}"] < err[f"int4-g128-{z}"]
    assert err["int4-tinygemm"] == pytest.approx(err["int4-g128-asym"], rel=0.05)


def test_storage_format():
    m = quantized("int4-g128-sym", gaussian_linear(N=64, K=256, dtype=torch.bfloat16))
    assert m.qweight.shape == (64, 128) and m.qweight.dtype == torch.uint8
    assert m.scales.shape == (64, 2) and m.scales.dtype == torch.bfloat16 and m.zeros is None
    assert "zeros" not in m.state_dict()
    m = quantized("int4-g64-azp", gaussian_linear(N=64, K=256, dtype=torch.bfloat16))
    assert m.zeros.shape == (64, 4)
    z = -m.zeros.float() / m.scales.float()  # azp: m = -s*z with integer z in 0..15
    assert ((z - z.round()).abs() < 0.05).all() and z.min() >= 0 and z.max() <= 15
    assert "scheme=int4-g64-azp" in repr(m)


def test_symmetric_rule_uses_all_16_levels():
    """GGUF Q4_0's rule: each group's largest-magnitude weight sits on level -8 (q = 0) and comes back
    exactly (float32 scales), so the scale's sign is the opposite of that weight's."""
    lin = gaussian_linear(N=64, K=256)
    q, s, m = rounding.quantize_int4(lin.weight, 64, "sym", torch.float32)
    g = lin.weight.view(64, 4, 64)
    peak = g.gather(-1, g.abs().argmax(-1, keepdim=True))[..., 0]  # (N, G)
    assert m is None and torch.equal(torch.sign(s), -torch.sign(peak))
    qg = q.view(64, 4, 64)
    assert (qg.gather(-1, g.abs().argmax(-1, keepdim=True)) == 0).all()
    assert torch.allclose(-8 * s, peak, rtol=1e-6, atol=0)
    assert int(q.min()) == 0 and int(q.max()) == 15


@pytest.mark.parametrize("K,group", [(576, 128), (96, 64), (100, 32)])
@pytest.mark.parametrize("zero", ["sym", "asym", "azp"])
def test_k_padding(K, group, zero):
    lin = gaussian_linear(N=32, K=K)
    m = Q.Int4.from_float(lin, group, zero)
    Kp = -(-K // group) * group
    assert m.qweight.shape == (32, Kp // 2) and m.scales.shape == (32, Kp // group)
    w = m.dequantize()
    assert w.shape == (32, K) and rel(w, lin.weight) < 0.15
    x = torch.randn(3, K)
    assert torch.allclose(m(x), F.linear(x, w), atol=1e-5)


def test_k_padding_kernels():
    lin = gaussian_linear(N=32, K=576)
    for scheme in ["int4-tinygemm", "int4-marlin"]:
        m = quantized(scheme, lin)
        x = torch.randn(3, 576)
        assert rel(m(x), F.linear(x, m.dequantize(torch.float32))) < 2e-2
        assert rel(m.dequantize(torch.float32), lin.weight) < 0.15


def test_tinygemm_scales_and_zeros_layout():
    m = quantized("int4-tinygemm-g64", gaussian_linear(N=32, K=256))
    assert m.scales_and_zeros.shape == (4, 32, 2) and m.scales_and_zeros.dtype == torch.bfloat16
    assert m.layout == "cpu"
    with pytest.raises(ValueError, match="out_features % 16"):
        quantized("int4-tinygemm", gaussian_linear(N=40, K=256))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_compile_fullgraph(scheme):
    m = quantized(scheme, gaussian_linear(dtype=torch.bfloat16))
    x = torch.randn(2, 3, 512, dtype=torch.bfloat16)
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    assert rel(compiled(x), m(x)) < 1e-3


@pytest.mark.parametrize("scheme", ["int4-g128-asym", "int4-g32-sym", "int4-marlin", "int4-tinygemm"])
def test_compile_inductor_padded_k(scheme):
    """K=576 at group 128 (and N=96 for marlin's row padding): the padded paths under inductor."""
    m = quantized(scheme, gaussian_linear(N=96, K=576 if "g32" not in scheme else 100, dtype=torch.bfloat16))
    x = torch.randn(2, 3, m.in_features, dtype=torch.bfloat16)
    torch._dynamo.reset()
    assert rel(torch.compile(m, fullgraph=True)(x), m(x)) < 1e-2


def tiny_model(tie=True, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, ffn_dim=96,
                     tie_embeddings=tie, max_seq_len=64)
    model = Transformer(args).to(dtype)
    for name, p in model.named_parameters():
        if "norm" not in name:
            p.data.normal_(0, 0.1)
    return model


def logits(model, batch=2, T=8):
    model.setup_caches(batch, 32)
    tokens = torch.arange(batch * T).view(batch, T) % model.args.vocab_size
    return model(tokens, torch.arange(T), torch.tensor([0, 2]))


def test_quantize_model_tied_head():
    model = tiny_model(tie=True)
    emb = model.tok_embeddings.weight.detach().clone()
    ref = logits(model)
    Q.quantize_(model, "int4-g32-asym", include_output=True)
    assert isinstance(model.output, Q.Int4) and isinstance(model.layers[1].feed_forward.w13, Q.Int4)
    assert isinstance(model.tok_embeddings, nn.Embedding) and torch.equal(model.tok_embeddings.weight, emb)
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert rel(logits(model), ref) < 0.35  # int4 weight errors (~6%) compound over 9 linears
    assert C.quant_config(model) == {"scheme": "int4-g32-asym", "params": {"group_size": 32, "zero": "asym"},
                                     "include_output": True}


def test_quantize_model_keeps_head_by_default():
    model = tiny_model(tie=True)
    ref = logits(model)
    Q.quantize_(model, "int8")
    assert rel(logits(model), ref) < 0.05
    assert type(model.output) is nn.Linear and model.output.weight is model.tok_embeddings.weight
    assert C.quant_config(model)["include_output"] is False
    assert Q.quantize_(tiny_model(), "none") is not None and C.quant_config(tiny_model()) is None


@pytest.mark.parametrize("scheme,include_output", [
    ("int8", True), ("int8-compile", False), ("int4-g64-sym", True), ("int4-g32-azp", True),
    ("int4-marlin", False), ("int4-tinygemm-g32", False), ("fp8-rowwise", True)])
@pytest.mark.parametrize("tie", [True, False])
def test_checkpoint_round_trip(scheme, include_output, tie):
    model = tiny_model(tie=tie, dtype=torch.bfloat16)
    Q.quantize_(model, scheme, include_output=include_output)
    config, state = C.quant_config(model), model.state_dict()
    fresh = tiny_model(tie=tie, dtype=torch.bfloat16, seed=1)
    C.apply_quant_config(fresh, config)
    fresh.load_state_dict(state, assign=True)
    assert C.quant_config(fresh) == config
    assert torch.equal(logits(fresh), logits(model))


def test_checkpoint_round_trip_meta_device():
    model = tiny_model(dtype=torch.bfloat16)
    Q.quantize_(model, "int4-g128-asym", include_output=True)
    with torch.device("meta"):
        fresh = tiny_model(dtype=torch.bfloat16)
    C.apply_quant_config(fresh, C.quant_config(model))
    fresh.load_state_dict(model.state_dict(), assign=True)
    fresh.inv_freq = model.inv_freq  # a non-persistent buffer: built on meta, not in the state_dict
    assert torch.equal(logits(fresh), logits(model))


def test_unknown_scheme_refused():
    with pytest.raises(ValueError, match=r"checkpoint uses unknown quantization scheme 'int2-g16'; known: none, int8"):
        C.apply_quant_config(tiny_model(), {"scheme": "int2-g16", "params": {}, "include_output": False})
    with pytest.raises(ValueError, match="unknown quantization scheme 'int5'"):
        Q.quantize_(tiny_model(), "int5")


@pytest.mark.parametrize("N,K,group,zero", [(128, 256, 128, "asym"), (97, 576, 128, "asym"), (64, 96, 32, "sym"),
                                          (128, 320, 64, "azp")])
def test_marlin_stores_the_int4_quantization(N, K, group, zero):
    """The kernel-packed buffers unpack to exactly Int4's q, scales and zeros (N and K padded to 64)."""
    import kernels

    lin = gaussian_linear(N=N, K=K, dtype=torch.bfloat16)
    m = Q.Int4Marlin.from_float(lin, group, zero)
    ref = Q.Int4.from_float(lin, group, zero)
    q, s, z = kernels.unpack_w4(m.qweight, m.scales, m.zeros, group)
    Kr = ref.qweight.shape[1] * 2
    assert torch.equal(q[:N, :Kr], rounding.unpack_nibbles(ref.qweight)) and torch.equal(s[:N, :Kr // group], ref.scales)
    assert (z is None) == (zero == "sym") and (z is None or torch.equal(z[:N, :Kr // group], ref.zeros))
    assert torch.equal(m.dequantize(), ref.dequantize())
    x = torch.randn(2, 3, K, dtype=torch.bfloat16)
    y = m(x)
    assert y.shape == (2, 3, N) and rel(y, F.linear(x.float(), ref.dequantize(torch.float32))) < 1e-2


def test_gguf_q4_1_requantization_is_exact(smollm2_gguf):
    """Q4_1 is w = d*q + m in groups of 32 along K with m the block min and d = (max - min)/15, q
    rounded to nearest: every block holds q = 0 (its min) and q = 15 (its max), so int4-g32-asym
    finds the same m, a scale equal to d up to float32 rounding and the same q."""
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(smollm2_gguf)
    t = next(t for t in reader.tensors if t.tensor_type == gguf.GGMLQuantizationType.Q4_1)
    w = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())  # (out, in) float32
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
    lin.weight.data = w
    m = Q.Int4.from_float(lin, 32, "asym")
    assert m.scales.dtype == torch.float32
    d = m.dequantize()
    assert torch.allclose(d, w, rtol=1e-6, atol=1e-7 * w.abs().max().item())
