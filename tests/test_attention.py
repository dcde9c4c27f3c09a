"""lowbit::kv16_decode_attention: the reference against SDPA (CPU), the op's checks, fake and opcheck, the
model's decode path through it, and the CUDA kernel against the reference (GPU)."""
import re

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels import attention
from kernels import build as kbuild
import model
from model import ModelArgs, Transformer

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA GPU on this machine")
# The model takes the kernel only where attention.prefer_kernel picks it (one sequence: the GPU decides).
needs_preferred_kernel = pytest.mark.skipif(
    not CUDA or not attention.prefer_kernel(1, torch.cuda.get_device_capability()),
    reason="attention.prefer_kernel does not pick the decode kernel on this machine")
# The bar: the kernel's fp32 result rounded once to the output dtype, plus fp32 noise: 1.5 units of the output
# dtype's epsilon times the row's largest |y| (the float32 reference rounds once too, so correct results sit
# within 1 unit of it; 0.5 for the gap between fp32 orders of summation, far below what it needs).
ULP_BAR = 1.5


def problem(B, H, R, S, D, dtype, device, seed, pad=None, upto=None):
    """Random q (B, H, R, D) and caches; an additive mask (B, S) as model.py makes it: row b sees columns
    pad[b] .. upto (and always column upto); the rest -inf."""
    g = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(*shape, generator=g, device=device, dtype=dtype)
               for shape in ((B, H, R, D), (B, H, S, D), (B, H, S, D)))
    pad = torch.zeros(B, dtype=torch.long, device=device) if pad is None else torch.as_tensor(pad, device=device)
    upto = S - 1 if upto is None else upto
    j = torch.arange(S, device=device)
    visible = (j[None] <= upto) & ((j[None] >= pad[:, None]) | (j[None] == upto))
    mask = torch.zeros(B, S, dtype=dtype, device=device).masked_fill(~visible, float("-inf"))
    return q, k, v, mask


def sdpa(q, k, v, mask):
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask.double()[:, None, None])


def ulp_error(y, q, k, v, mask):
    return attention.ulp_error(y, sdpa(q, k, v, mask))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,H,R,S,D,pad,upto", [(1, 8, 4, 48, 128, None, 30), (3, 2, 3, 17, 64, [0, 4, 16], 16),
                                                 (2, 1, 1, 5, 32, [2, 0], 4), (1, 3, 9, 64, 16, None, None)])
def test_reference_matches_sdpa(B, H, R, S, D, pad, upto, dtype):
    """The CPU implementation (the reference) is SDPA's softmax(q k^T / sqrt(D) + mask) v, rounded once."""
    q, k, v, mask = problem(B, H, R, S, D, dtype, "cpu", 0, pad, upto)
    y = kernels.kv16_decode_attention(q, k, v, mask)
    assert y.shape == (B, H, R, D) and y.dtype == dtype
    assert ulp_error(y, q, k, v, mask) <= ULP_BAR


def rope_angles(B, D, device, seed):
    """cos, sin (B, D/2) float32 of RoPE angles at a random position per row (model.py's inv_freq at theta 5e5)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    pos = torch.randint(0, 4096, (B, 1), generator=g).float()
    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, D, 2, dtype=torch.float64) / D)).float()
    angles = pos * inv_freq  # (B, D/2)
    return angles.cos().to(device), angles.sin().to(device)


def step_problem(B, H, R, S, D, dtype, device, seed, pad=None, upto=None):
    """kv16_decode_step_attention's arguments as model.py passes them: q, k_new, v_new views of one qkv row per
    sequence, a random (2, B, H, S, D) cache, the decode column input_pos = upto (visible), per-row angles."""
    q_, k, v, mask = problem(B, H, R, S, D, dtype, device, seed, pad, upto)
    g = torch.Generator(device=device).manual_seed(seed + 1000)
    qkv = torch.randn(B, 1, (H * R + 2 * H) * D, generator=g, device=device, dtype=dtype)
    q, k_new, v_new = qkv.split([H * R * D, H * D, H * D], dim=-1)
    cos, sin = rope_angles(B, D, device, seed)
    pos = torch.tensor([S - 1 if upto is None else upto], device=device)
    return (q.view(B, H, R, D), k_new.view(B, H, D), v_new.view(B, H, D), torch.stack((k, v)).contiguous(), mask,
            cos, sin, pos)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("D", [64, 128])
def test_step_reference_is_the_model_path(D, dtype):
    """The step op's reference (its CPU implementation) is model.py's SDPA-path arithmetic: apply_rope on q and k,
    the cache write at input_pos, then the attention over the cache; the cache is written in place, bit for bit."""
    from model import apply_rope
    B, H, R, S = 3, 2, 4, 40
    q, k_new, v_new, kv, mask, cos, sin, pos = step_problem(B, H, R, S, D, dtype, "cpu", 4, pad=[0, 3, 20], upto=35)
    want_kv = kv.clone()
    k_rot = apply_rope(k_new[:, None], cos[:, None, None], sin[:, None, None])[:, 0]  # (B, H, D)
    want_kv[:, :, :, pos] = torch.stack((k_rot, v_new))[:, :, :, None]
    q_rot = apply_rope(q.reshape(B, 1, H * R, D), cos[:, None, None], sin[:, None, None]).reshape(B, H, R, D)
    want = kernels.kv16_decode_attention(q_rot, want_kv[0], want_kv[1], mask)
    y = kernels.kv16_decode_step_attention(q, k_new, v_new, kv, mask, cos, sin, pos)
    assert torch.equal(kv, want_kv) and torch.equal(y, want)


def test_fully_masked_row_is_nan():
    """Defined, not silently zero (SDPA's answer differs by backend and version; model.py never makes one)."""
    q, k, v, mask = problem(2, 1, 2, 8, 64, torch.bfloat16, "cpu", 1)
    mask[1] = float("-inf")
    y = kernels.kv16_decode_attention(q, k, v, mask)
    assert torch.isnan(y[1]).all() and not torch.isnan(y[0]).any()


@pytest.mark.parametrize("case", range(5))
def test_bad_inputs_name_the_numbers(case):
    q, k, v, mask = problem(1, 2, 4, 16, 64, torch.bfloat16, "cpu", 0)
    bad = [((q.float(), k, v, mask), TypeError, "q must be bfloat16 or float16, got torch.float32"),
           ((q, k.half(), v, mask), TypeError, "k_cache must have q's dtype torch.bfloat16, got torch.float16"),
           ((q, k, v[:, :, :8], mask), ValueError, r"shapes disagree: q \(1, 2, 4, 64\), k_cache \(1, 2, 16, 64\), "
                                                   r"v_cache \(1, 2, 8, 64\)"),
           ((q, k, v, mask[:, :8]), ValueError, r"mask \(1, 8\)"),
           ((q[0], k, v, mask), ValueError, r"got shapes \(2, 4, 64\)")][case]
    args, exc, msg = bad
    with pytest.raises(exc, match=msg):
        kernels.kv16_decode_attention(*args)


def test_opcheck_and_compile_cpu():
    q, k, v, mask = problem(2, 2, 3, 24, 64, torch.bfloat16, "cpu", 3, pad=[0, 5])
    torch.library.opcheck(torch.ops.lowbit.kv16_decode_attention, (q, k, v, mask))
    f = torch.compile(kernels.kv16_decode_attention, fullgraph=True, backend="aot_eager")
    assert torch.equal(f(q, k, v, mask), kernels.kv16_decode_attention(q, k, v, mask))
    args = step_problem(2, 2, 3, 24, 64, torch.bfloat16, "cpu", 3, pad=[0, 5], upto=20)
    q_view, kv, cos, sin = args[0], args[3], args[5], args[6]  # q as the model hands it: a view of the projection
    rope = (q_view, kv[0], kv[1], args[4], cos, sin)
    torch.library.opcheck(torch.ops.lowbit.kv16_decode_attention, rope)
    rotated = attention.rotate(q_view, cos, sin)
    assert torch.equal(f(*rope), kernels.kv16_decode_attention(rotated, kv[0], kv[1], args[4]))
    torch.library.opcheck(torch.ops.lowbit.kv16_decode_step_attention, args)  # the declared cache mutation
    g = torch.compile(kernels.kv16_decode_step_attention, fullgraph=True, backend="aot_eager")
    kv2 = args[3].clone()
    assert torch.equal(g(*args), kernels.kv16_decode_step_attention(*args[:3], kv2, *args[4:]))
    assert torch.equal(args[3], kv2)


def test_rope_inputs_are_checked():
    q, k, v, mask = problem(2, 2, 4, 16, 64, torch.bfloat16, "cpu", 0)
    cos, sin = rope_angles(2, 64, "cpu", 0)
    with pytest.raises(ValueError, match="rope_cos and rope_sin come together, got only one"):
        kernels.kv16_decode_attention(q, k, v, mask, cos, None)
    with pytest.raises(ValueError, match=r"rope_sin must be float32 \(B, D/2\) = \(2, 32\) .* got torch.float32 \(2, 64\)"):
        kernels.kv16_decode_attention(q, k, v, mask, cos, torch.zeros(2, 64))


@pytest.mark.parametrize("case", range(5))
def test_step_bad_inputs_name_the_numbers(case):
    q, k_new, v_new, kv, mask, cos, sin, pos = step_problem(1, 2, 4, 16, 64, torch.bfloat16, "cpu", 0)
    bad = [((q, k_new, v_new, kv[0], mask, cos, sin, pos), r"kv_cache \(2, B, H, S, D\) expected, got \(1, 2, 16, 64\)"),
           ((q, k_new.float(), v_new, kv, mask, cos, sin, pos), r"k_new must be torch.bfloat16 \(B, H, D\)"),
           ((q, k_new, v_new[:, :1], kv, mask, cos, sin, pos), r"v_new must be .* got torch.bfloat16 \(1, 1, 64\)"),
           ((q, k_new, v_new, kv, mask, cos.double(), sin, pos), r"rope_cos must be float32 \(B, D/2\) = \(1, 32\)"),
           ((q, k_new, v_new, kv, mask, cos, sin, pos.int()), r"input_pos must be one int64 cache column")][case]
    args, msg = bad
    with pytest.raises(ValueError, match=msg):
        kernels.kv16_decode_step_attention(*args)


def test_step_column_outside_the_cache_is_an_error():
    """The reference raises; the CUDA kernel traps (as index_put's device assert) rather than leave a stale cache."""
    q, k_new, v_new, kv, mask, cos, sin, pos = step_problem(1, 2, 4, 16, 64, torch.bfloat16, "cpu", 0)
    for col in (16, -1):
        with pytest.raises(IndexError, match=f"input_pos {col} outside the cache's 16 columns"):
            kernels.kv16_decode_step_attention(q, k_new, v_new, kv, mask, cos, sin, torch.tensor([col]))


def tiny_model(dtype, device, **over):
    torch.manual_seed(0)
    args = dict(dim=512, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=97, ffn_dim=96, max_seq_len=256)
    m = Transformer(ModelArgs(**{**args, **over})).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return m.to(device=device, dtype=dtype)


def decode_logits(m, decode_kernel, force=False):
    """Left-padded batch of 3: prefill, then 6 decode steps; logits of every step (B, 7, V)."""
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15]]
    dev = m.tok_embeddings.weight.device
    T = max(map(len, prompts))
    pad = torch.tensor([T - len(p) for p in prompts], device=dev)
    m.setup_caches(3, 32, decode_kernel)
    if force:  # CPU: the op's reference implementation stands in for the kernel
        for layer in m.layers:
            layer.attention.decode_kernel = True
    tok = torch.tensor([[0] * (T - len(p)) + p for p in prompts], device=dev)
    out = [m(tok, torch.arange(T, device=dev), pad)[:, -1:]]
    for t in range(T, T + 6):
        nxt = out[-1].argmax(-1)
        out.append(m(nxt, torch.tensor([t], device=dev), pad))
    return torch.cat(out, 1)


@torch.no_grad()
def test_model_decode_through_the_op_matches_sdpa_cpu():
    """model.py's decode path through the op (its CPU reference here): the mask row, GQA rows and the (B, Hkv,
    rep, D) layout agree with SDPA's path; setup_caches does not take the kernel on CPU."""
    m = tiny_model(torch.bfloat16, "cpu")
    want = decode_logits(m, False)
    m.setup_caches(3, 32, True)
    assert not any(layer.attention.decode_kernel for layer in m.layers)
    got = decode_logits(m, True, force=True)
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)
    assert torch.equal(got.argmax(-1), want.argmax(-1))


@pytest.mark.parametrize("region_ok", [
    pytest.param(True, marks=pytest.mark.xfail(not model.REGION_TAKES_MUTATING_OPS, strict=True,
                                                raises=torch._dynamo.exc.BackendCompilerFailed,
                                                reason="torch < 2.14.1: pytorch/pytorch#186807")), False])
def test_compiled_decode_writes_the_cache_in_place_cpu(monkeypatch, region_ok):
    """Inductor (CPU, one layer compiled once) calls the step op on views of the qkv projection's output and on
    the cache buffer itself: no copy of the cache around the declared mutation, nothing left between the
    projection and the op, and the same greedy tokens as eager mode.  As on torch < 2.14.1 (region_ok False,
    model.REGION_TAKES_MUTATING_OPS), layers compiled once call kv16_decode_attention instead, same tokens."""
    from torch._inductor.utils import run_and_get_code

    from generate import Generator
    monkeypatch.setattr(kernels, "decode_attention_supported", lambda *a, **k: True)  # the op's reference
    monkeypatch.setattr(model, "REGION_TAKES_MUTATING_OPS", region_ok)
    m = tiny_model(torch.bfloat16, "cpu")  # 2 layers: the layer is its own compiled subgraph
    prompts = [[5, 6, 7], [8, 9, 10, 11]]
    want = Generator(m, False)(prompts, 4, set(), 0, show_progress=False)["tokens"]
    gen = Generator(m, True, compile_once=True, compile_prefill=False)
    got, codes = run_and_get_code(lambda: gen(prompts, 4, set(), 0, show_progress=False))
    assert got["tokens"] == want
    if not region_ok:
        assert not any("kv16_decode_step_attention" in c for c in codes)
        calls = [a for c in codes for a in re.findall(r"kv16_decode_attention\.default\((.*)\)", c)]
        # q's RoPE in the op: its 6 arguments, q a view of the projection's output itself (row stride = the qkv
        # width, (8 + 2 x 2) x 64), not a buffer a generated kernel rotated it into
        depth0_commas = [sum(ch == "," and not a[:i].count("(") - a[:i].count(")") for i, ch in enumerate(a))
                         for a in calls]
        assert calls and depth0_commas == [5] * len(calls), calls
        assert all(re.match(r"reinterpret_tensor\(\w+, \(2, 2, 4, 64\), \(768, 256, 64, 1\), 0\)", a) for a in calls), calls
        return
    # the op's 4th argument (the cache) is a graph input itself (argN_1), not a buffer copied from it
    calls = [m for c in codes for m in re.findall(r"kv16_decode_step_attention\.default\((.*)\)", c)]
    assert calls and all(re.match(r"(?:reinterpret_tensor\(.*?\), ){3}\w*arg\d+_1, ", a) for a in calls), calls


def test_kernel_only_where_it_is_faster():
    from kernels.attention import prefer_kernel
    assert prefer_kernel(8, (9, 0)) and prefer_kernel(256, (10, 0)) and prefer_kernel(512, (9, 0))
    assert not prefer_kernel(513, (9, 0)) and not prefer_kernel(1, (8, 0))  # no clusters below 9.0


@pytest.mark.skipif(kbuild.find_cuda_home() is None, reason="nvcc not found: cannot compile the CUDA extension")
def test_split_heuristic():
    """csrc/ops.cpp decode_attention_splits: one split from 3/4 of the SMs' worth of (b, h) pairs on; below,
    two CTAs per SM where the heads allow, at most 8 (one cluster), runs of >= 32 columns."""
    split = kernels.load_extension().decode_attention_splits
    assert split(8, 384, 132) == 8  # Llama-3-8B at batch 1: 33 wanted
    assert split(8, 2048, 132) == 8
    assert split(64, 2048, 132) == 5
    assert split(64, 384, 132) == 5  # batch 8
    assert split(98, 2048, 132) == 3  # 98 pairs: below 3/4 of the SMs
    assert split(99, 2048, 132) == 1  # from 3/4 of the SMs on, one split
    assert split(128, 2048, 132) == 1  # batch 16
    assert split(256, 384, 132) == 1  # batch 32
    assert split(512, 384, 132) == 1
    assert split(8, 16, 132) == 1
    assert split(4, 2048, 8) == 4 and split(0, 2048, 132) == 1  # few SMs; no heads (no division by zero)


# ---------------------------------------------------------------------------------------------------- GPU
def run_poisoned(fn, shape, dtype):
    torch.empty(shape, dtype=dtype, device="cuda").fill_(float("nan"))  # the block the output will reuse
    return fn()


def check_gpu(B, H, R, S, D, dtype, seed, splits=-1, pad=None, upto=None):
    q, k, v, mask = problem(B, H, R, S, D, dtype, "cuda", seed, pad, upto)
    ext = kernels.load_extension()
    y1 = run_poisoned(lambda: ext.decode_attention(q, k, v, mask, splits=splits), q.shape, dtype)
    y2 = run_poisoned(lambda: ext.decode_attention(q, k, v, mask, splits=splits), q.shape, dtype)
    torch.cuda.synchronize()
    what = f"B={B} H={H} R={R} S={S} D={D} {dtype} splits={splits} pad={pad} upto={upto}"
    err = ulp_error(y1, q, k, v, mask)
    assert err <= ULP_BAR, f"{what}: {err:.2f} ulp"
    assert torch.equal(y1, y2), f"{what}: two identical runs differ"


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("D", [64, 128])
def test_gpu_sweep(D, dtype):
    """Odd shapes, every row count up to 8, cache lengths around the split sizes, forced split counts."""
    seed = 0
    for B, H, R, S in ((1, 8, 4, 384), (1, 8, 4, 2048), (3, 3, 3, 1), (2, 1, 7, 5), (5, 2, 8, 33), (1, 32, 1, 100),
                       (32, 8, 4, 384), (2, 3, 2, 1000), (64, 8, 4, 48)):
        for splits in (-1, 1, 2, 7, S):
            seed += 1
            check_gpu(B, H, R, S, D, dtype, seed, splits)


def check_step_gpu(B, H, R, S, D, dtype, seed, splits=-1, pad=None, upto=None):
    """The step kernel against its reference: the cache written bit for bit (k rotated, v copied, nothing else
    touched), and y the same bits as kv16_decode_attention of the rotated q over the reference's cache (the kernel
    rotates as the reference does; the rest of its arithmetic is the plain kernel's), within the ulp bar of SDPA."""
    q, k_new, v_new, kv, mask, cos, sin, pos = step_problem(B, H, R, S, D, dtype, "cuda", seed, pad, upto)
    want_kv = kv.clone()
    reference_step = kernels.reference_kv16_decode_step_attention(q, k_new, v_new, want_kv, mask, cos, sin, pos)
    ext = kernels.load_extension()
    what = f"B={B} H={H} R={R} S={S} D={D} {dtype} splits={splits} pad={pad} upto={upto}"
    ys = []
    for _ in range(2):
        kv2 = kv.clone()
        ys.append(run_poisoned(lambda: ext.decode_step_attention(q, k_new, v_new, kv2, mask, cos, sin, pos, splits),
                               q.shape, dtype))
        torch.cuda.synchronize()
        assert torch.equal(kv2, want_kv), f"{what}: the cache differs from the reference's"
    q_rot = attention.rotate(q, cos, sin)
    assert torch.equal(ys[0], ys[1]), f"{what}: two identical runs differ"
    assert torch.equal(ys[0], ext.decode_attention(q_rot, want_kv[0], want_kv[1], mask, splits=splits)), what
    assert ulp_error(ys[0], q_rot, want_kv[0], want_kv[1], mask) <= ULP_BAR, what
    assert ulp_error(reference_step, q_rot, want_kv[0], want_kv[1], mask) <= ULP_BAR, what


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_step_kernel(dtype):
    """RoPE + cache write + attention in one kernel: 1 to 8 rows (every RM), both head dims, the decode column in
    the first turn of its chunk (its loads wait for the write) and beyond it, split and unsplit, padded rows."""
    seed = 200
    for B, H, R, S, D, upto, pad in ((1, 8, 4, 384, 128, 300, None), (1, 8, 4, 384, 128, 330, None),
                                     (3, 3, 3, 33, 64, 20, [0, 5, 19]), (2, 1, 8, 100, 128, 99, None),
                                     (13, 8, 4, 200, 128, 150, [0, 7, 100, 0, 3, 149, 1, 64, 7, 0, 128, 2, 33]),
                                     (2, 4, 1, 70, 128, 10, None), (3, 2, 2, 50, 64, 0, None)):
        for splits in (-1, 1, 5, 8):
            seed += 1
            check_step_gpu(B, H, R, S, D, dtype, seed, splits, pad, upto)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_rope_of_q(dtype):
    """kv16_decode_attention with rope_cos/rope_sin, q a view of the qkv projection as model.py passes it (compile-once
    layers on torch < 2.14.1): the same bits as the kernel on the reference's rotated q, split and unsplit, every RM;
    opcheck on CUDA with the rope arguments."""
    ext = kernels.load_extension()
    seed = 400
    for B, H, R, S, D in ((1, 8, 4, 384, 128), (3, 3, 3, 33, 64), (2, 1, 8, 100, 128), (32, 8, 4, 200, 128),
                          (2, 4, 1, 70, 128), (3, 2, 2, 50, 64)):
        q, _, _, kv, mask, cos, sin, _ = step_problem(B, H, R, S, D, dtype, "cuda", seed, upto=S - 3)
        q_rot = attention.rotate(q, cos, sin)
        for splits in (-1, 1, 5, 8):
            seed += 1
            what = f"B={B} H={H} R={R} S={S} D={D} {dtype} splits={splits}"
            y = run_poisoned(lambda: ext.decode_attention(q, kv[0], kv[1], mask, cos, sin, splits=splits), q.shape,
                             dtype)
            assert torch.equal(y, ext.decode_attention(q_rot, kv[0], kv[1], mask, splits=splits)), what
            assert ulp_error(y, q_rot, kv[0], kv[1], mask) <= ULP_BAR, what
    torch.library.opcheck(torch.ops.lowbit.kv16_decode_attention, (q, kv[0], kv[1], mask, cos, sin))


@needs_cuda
def test_gpu_step_opcheck_and_graph_replay():
    """opcheck of the step op on CUDA (the declared cache mutation); a CUDA graph of it replayed with input_pos
    moved in place between replays writes each step's column, as the compiled decode step does."""
    B, H, R, S, D = 2, 8, 4, 256, 128
    q, k_new, v_new, kv, mask, cos, sin, pos = step_problem(B, H, R, S, D, torch.bfloat16, "cuda", 12, upto=100)
    torch.library.opcheck(torch.ops.lowbit.kv16_decode_step_attention, (q, k_new, v_new, kv.clone(), mask, cos, sin,
                                                                        pos))
    mask.fill_(0)  # every column visible: a replay at any column reads a defined cache
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        kernels.kv16_decode_step_attention(q, k_new, v_new, kv, mask, cos, sin, pos)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = kernels.kv16_decode_step_attention(q, k_new, v_new, kv, mask, cos, sin, pos)
    for col in (5, 200, 37):
        want_kv = kv.clone()
        pos.fill_(col)
        want = kernels.reference_kv16_decode_step_attention(q, k_new, v_new, want_kv, mask, cos, sin, pos)
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(kv, want_kv)
        assert ulp_error(out, attention.rotate(q, cos, sin), kv[0], kv[1], mask) <= ULP_BAR
        assert ulp_error(want, attention.rotate(q, cos, sin), kv[0], kv[1], mask) <= ULP_BAR


@needs_cuda
def test_gpu_masks_as_the_model_makes_them():
    """Left padding per row, columns beyond the step hidden (never read), and a split that sees nothing."""
    for splits in (-1, 1, 4, 12):
        check_gpu(3, 8, 4, 384, 128, torch.bfloat16, 7, splits, pad=[0, 100, 250], upto=300)
        check_gpu(2, 2, 3, 64, 64, torch.bfloat16, 8, splits, pad=[10, 0], upto=20)
        # 104 pairs: one split by the rule (from 3/4 of the SMs' pairs), rows padded differently
        check_gpu(13, 8, 4, 384, 128, torch.bfloat16, 9, splits, pad=[0, 5, 31, 100, 0, 250, 1, 64, 7, 0, 128, 299, 33],
                  upto=300)


@needs_cuda
def test_gpu_lowest_finite_mask_is_not_minus_infinity():
    """A mask of torch.finfo(dtype).min (what some code uses instead of -inf) stays finite after the kernel's scaling
    by log2(e): a row hidden that way is the reference's uniform average, not NaN; partly hidden rows are unchanged."""
    q, k, v, mask = problem(2, 2, 4, 64, 128, torch.bfloat16, "cuda", 11)
    mask[0] = torch.finfo(torch.bfloat16).min
    mask[1, 40:] = torch.finfo(torch.bfloat16).min
    for splits in (1, 4):
        y = kernels.load_extension().decode_attention(q, k, v, mask, splits=splits)
        assert torch.isfinite(y).all() and ulp_error(y, q, k, v, mask) <= ULP_BAR


@needs_cuda
def test_gpu_misaligned_cache_is_a_clear_error():
    q, k, v, mask = problem(1, 2, 4, 16, 128, torch.bfloat16, "cuda", 12)
    k_odd = torch.empty(k.numel() + 1, dtype=k.dtype, device="cuda")[1:].view(k.shape).copy_(k)  # 2-byte offset
    with pytest.raises(ValueError, match="k_cache must be 8-byte aligned"):
        kernels.kv16_decode_attention(q, k_odd, v, mask)


@needs_cuda
def test_gpu_step_misaligned_input_is_a_clear_error():
    """The step op loads D/16 bytes at a time from q, k_new, v_new and the cache: a view 2 bytes off is refused."""
    q, k_new, v_new, kv, mask, cos, sin, pos = step_problem(1, 2, 4, 16, 128, torch.bfloat16, "cuda", 13)
    k_odd = torch.empty(k_new.numel() + 1, dtype=k_new.dtype, device="cuda")[1:].view(k_new.shape).copy_(k_new)
    with pytest.raises(ValueError, match="k_new must be 8-byte aligned"):  # v_new with k_odd's strides
        kernels.kv16_decode_step_attention(q, k_odd, v_new.contiguous(), kv, mask, cos, sin, pos)


@needs_cuda
def test_gpu_fully_masked_row_is_nan():
    q, k, v, mask = problem(2, 2, 4, 64, 128, torch.bfloat16, "cuda", 9)
    mask[0] = float("-inf")
    y = kernels.kv16_decode_attention(q, k, v, mask)
    assert torch.isnan(y[0]).all() and not torch.isnan(y[1]).any()


@needs_cuda
def test_gpu_opcheck_strided_q_and_graph_replay():
    """opcheck on CUDA; q as a strided view (model.py's permute of the fused qkv output); CUDA-graph replay
    of a split launch (its splits meet in a thread-block cluster) equals the eager call."""
    B, H, R, S, D = 2, 8, 4, 256, 128
    _, k, v, mask = problem(B, H, R, S, D, torch.bfloat16, "cuda", 10, pad=[0, 30], upto=200)
    big = torch.randn(B, H, R, 2 * D, device="cuda", dtype=torch.bfloat16)
    q = big[..., D:]  # strides (H R 2D, R 2D, 2D, 1)
    torch.library.opcheck(torch.ops.lowbit.kv16_decode_attention, (q, k, v, mask))
    eager = kernels.kv16_decode_attention(q, k, v, mask)
    assert ulp_error(eager, q, k, v, mask) <= ULP_BAR
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        kernels.kv16_decode_attention(q, k, v, mask)
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g):
        out = kernels.kv16_decode_attention(q, k, v, mask)
    for _ in range(3):
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, eager)


@needs_cuda
def test_gpu_bad_shapes_are_clear_errors():
    q, k, v, mask = problem(1, 2, 9, 16, 128, torch.bfloat16, "cuda", 0)
    with pytest.raises(ValueError, match="at most 8 query rows per KV head, got 9"):
        kernels.kv16_decode_attention(q, k, v, mask)
    q, k, v, mask = problem(1, 2, 4, 16, 96, torch.bfloat16, "cuda", 0)
    with pytest.raises(ValueError, match="head_dim 64 or 128, got 96"):
        kernels.kv16_decode_attention(q, k, v, mask)


@needs_preferred_kernel
@torch.no_grad()
def test_gpu_model_decode_kernel_matches_sdpa():
    """The model's decode steps through the kernel against SDPA, bf16 on the GPU, eager."""
    m = tiny_model(torch.bfloat16, "cuda")
    want = decode_logits(m, False)
    got = decode_logits(m, True)
    assert all(layer.attention.decode_kernel for layer in m.layers)
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)
    assert torch.equal(got.argmax(-1), want.argmax(-1))


@needs_preferred_kernel
@pytest.mark.parametrize("compile_once", [True, False])
def test_gpu_generator_compiled_with_kernel_matches_sdpa(compile_once):
    """generate.Generator compiled (fullgraph, CUDA graphs; one layer compiled once, or the whole model as one
    graph, where the step op does RoPE and the cache write on any torch): the same greedy tokens with the decode
    attention through the kernel as through SDPA."""
    from generate import Generator
    m = tiny_model(torch.bfloat16, "cuda")
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15]]
    runs = {a: Generator(m, True, compile_once=compile_once, decode_attention=a)(prompts, 8, set(), 0,
                                                                                 show_progress=False)
            for a in ("sdpa", "kernel")}
    assert m.decode_kernel and all(layer.attention.decode_kernel for layer in m.layers)
    from generate import decode_attention_report
    assert decode_attention_report(m) == ("kernel+rope" if model.REGION_TAKES_MUTATING_OPS or not compile_once
                                          else "kernel+qrope")
    # Greedy tokens may part where two logits nearly tie: the kernel's and SDPA's rounding differ (eager logits differ
    # by up to 0.023 on this model; on an H100 the compiled runs parted at a step whose top two logits were 0.023
    # apart).  So the tokens must agree up to the first step where they part, and there the kernel's pick must be
    # within 0.05 of the best logit of the same history, computed eagerly through SDPA.
    for b, (got, want) in enumerate(zip(runs["kernel"]["tokens"], runs["sdpa"]["tokens"])):
        i = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), None)
        if i is None:
            continue
        history = prompts[b] + want[:i]
        for layer in m.layers:
            layer.compile_once = False  # an eager forward
        m.setup_caches(1, len(history), False)
        with torch.no_grad():
            logits = m(torch.tensor([history], device="cuda"), torch.arange(len(history), device="cuda"),
                       torch.zeros(1, dtype=torch.long, device="cuda"))[0, -1].float()
        gap = (logits.max() - logits[got[i]]).item()
        assert gap <= 0.05, f"sequence {b} parts at step {i} ({got[i]} vs {want[i]}) with a logit gap of {gap}"
