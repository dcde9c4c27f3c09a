"""lowbit::add_rms_norm: the reference against model.py's RMSNorm (CPU, bit for bit), the op's checks, fake and opcheck,
the whole model through it (CPU), and the CUDA kernel against the reference (GPU)."""
import pytest
import torch

import kernels
from kernels import norm
from model import ModelArgs, RMSNorm, Transformer

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA GPU on this machine")
DTYPES = [torch.bfloat16, torch.float16]
EPS = 1e-5


def problem(shape, dtype, device, seed):
    """x, r (shape) and weight (D,) as a layer sees them: the residual stream, a projection's output, a norm weight
    around 1."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = (torch.randn(shape, generator=g, device=device) * 2).to(dtype)
    r = torch.randn(shape, generator=g, device=device).to(dtype)
    w = (1 + 0.5 * torch.randn(shape[-1], generator=g, device=device)).to(dtype)
    return x, r, w


def model_path(x, r, w, eps):
    """What model.py computes without the op: the add, then RMSNorm.forward."""
    n = RMSNorm(x.shape[-1], eps).to(device=x.device, dtype=w.dtype)
    n.weight.data.copy_(w)
    h = x + r
    return h, n(h)


@pytest.mark.parametrize("dtype", DTYPES + [torch.float32])
@pytest.mark.parametrize("D", [64, 100, 576, 4096])
@pytest.mark.parametrize("shape", [(1,), (3,), (32,), (2, 16)])
def test_reference_is_the_model_path(shape, D, dtype):
    """The CPU implementation is model.py's add + RMSNorm bit for bit (rows 1, 3, 32; 2-D and 3-D; float32 too)."""
    x, r, w = problem(shape + (D,), dtype, "cpu", D)
    with torch.no_grad():
        want_h, want_y = model_path(x, r, w, EPS)
    h, y = kernels.add_rms_norm(x, r, w, EPS)
    assert h.shape == y.shape == x.shape and h.dtype == y.dtype == dtype
    assert torch.equal(h, want_h) and torch.equal(y, want_y)


def test_strided_rows_and_empty_batch_cpu():
    """A slice of the rows (model.py's last_only) gives contiguous outputs, the same values; zero rows give none."""
    x, r, w = problem((3, 5, 64), torch.bfloat16, "cpu", 1)
    h, y = kernels.add_rms_norm(x[:, -1:], r[:, -1:], w, EPS)
    want_h, want_y = kernels.add_rms_norm(x[:, -1:].contiguous(), r[:, -1:].contiguous(), w, EPS)
    assert h.is_contiguous() and y.is_contiguous() and torch.equal(h, want_h) and torch.equal(y, want_y)
    h, y = kernels.add_rms_norm(x[:0], r[:0], w, EPS)
    assert h.shape == y.shape == (0, 5, 64)


def test_opcheck_and_compile_cpu():
    x, r, w = problem((2, 7, 576), torch.bfloat16, "cpu", 2)
    torch.library.opcheck(torch.ops.lowbit.add_rms_norm, (x, r, w, EPS))
    torch.library.opcheck(torch.ops.lowbit.add_rms_norm, (x[:, -1:], r[:, -1:], w, EPS))  # strided rows
    f = torch.compile(kernels.add_rms_norm, fullgraph=True, backend="aot_eager")
    for got, want in zip(f(x, r, w, EPS), kernels.add_rms_norm(x, r, w, EPS)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("case", range(7))
def test_bad_inputs_name_the_numbers(case):
    x, r, w = problem((2, 64), torch.bfloat16, "cpu", 0)
    bad = [((x.int(), r, w), TypeError, "x must be bfloat16 or float16 .*got torch.int32"),
           ((x, r.half(), w), TypeError, "r must have x's dtype torch.bfloat16, got torch.float16"),
           ((x, r, w.float()), TypeError, "weight must have x's dtype torch.bfloat16, got torch.float32"),
           ((x, r[:1], w), ValueError, r"one shape \(\.\.\., D\), got \(2, 64\) and \(1, 64\)"),
           ((x, r, w[:32]), ValueError, r"weight must be \(D,\) = \(64,\), got \(32,\)"),
           ((x.t().contiguous().t(), r, w), ValueError, r"x needs a contiguous last dim, got strides \(1, 2\)"),
           ((x[:, :0], r[:, :0], w[:0]), ValueError, r"D = 0")][case]
    args, exc, msg = bad
    with pytest.raises(exc, match=msg):
        kernels.add_rms_norm(*args, EPS)


def test_cuda_constraints_are_checked_at_trace_time():
    """The fake implementation checks what the CUDA kernel needs (fake CUDA tensors: no GPU needed), so torch.compile
    refuses a shape the kernel cannot take before any run."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        def args(shape, stride=None):
            x = torch.empty(shape[0] * (stride[0] if stride else shape[1]), dtype=torch.float16, device="cuda")
            x = x.view(shape) if stride is None else x.as_strided(shape, stride)
            return x, x, torch.empty(shape[-1], dtype=torch.float16, device="cuda")
        for shape, stride, msg in (((4, 100), None, "D a multiple of 8 up to 32768, got D = 100"),
                                   ((4, 32776), None, "got D = 32776"),
                                   ((4, 64), (68, 1), r"multiples of 8 \(16-byte rows\), got \(68, 1\)")):
            with pytest.raises(ValueError, match=msg):
                norm.check_norm_inputs(*args(shape, stride))
        norm.check_norm_inputs(*args((1, 64), (3, 1)))  # a single row's stride is never used
        x = torch.empty(2, 64, device="cuda")
        with pytest.raises(TypeError, match="x must be bfloat16 or float16, got torch.float32"):
            norm.check_norm_inputs(x, x, x[0])


def tiny_model(dtype, **over):
    torch.manual_seed(0)
    args = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, ffn_dim=96, max_seq_len=256)
    m = Transformer(ModelArgs(**{**args, **over})).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.2)
    for mod in m.modules():  # norm weights around 1, as trained ones are
        if isinstance(mod, RMSNorm):
            mod.weight.data += 1
    return m.to(dtype=dtype)


def norms(m):
    return [mod for mod in m.modules() if isinstance(mod, RMSNorm)]


def run_steps(m, fused, last_only=False):
    """Left-padded batch of 3: prefill, then 4 decode steps; every step's logits concatenated."""
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15]]
    T = max(map(len, prompts))
    pad = torch.tensor([T - len(p) for p in prompts])
    m.setup_caches(3, 32)
    for n in norms(m):
        n.fused = n.fused and fused
    tok = torch.tensor([[0] * (T - len(p)) + p for p in prompts])
    out = [m(tok, torch.arange(T), pad, last_only=last_only)]
    for t in range(T, T + 4):
        out.append(m(out[-1][:, -1:].argmax(-1), torch.tensor([t]), pad))
    return torch.cat(out, 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("last_only", [False, True])
@torch.no_grad()
def test_model_through_the_op_is_bit_identical_cpu(dtype, last_only):
    """The whole model's logits (prefill and decode steps) through the op's CPU reference equal model.py's own add +
    RMSNorm bit for bit; setup_caches takes the op for every norm in 16-bit dtypes only."""
    m = tiny_model(dtype)
    want = run_steps(m, False, last_only)
    assert not any(n.fused for n in norms(m))
    got = run_steps(m, True, last_only)
    assert all(n.fused for n in norms(m)) and len(norms(m)) == 5
    assert torch.equal(got, want)
    m32 = tiny_model(torch.float32)
    m32.setup_caches(1, 16)
    assert not any(n.fused for n in norms(m32))


@torch.no_grad()
def test_model_compiled_dynamic_through_the_op_cpu():
    """The model traced with dynamic shapes (the Generator's prefill after a second prompt length): the op takes the
    norm's eps and symbolic row counts, same logits as eagerly."""
    m = tiny_model(torch.bfloat16)
    m.setup_caches(2, 32)
    f = torch.compile(m, fullgraph=True, dynamic=True, backend="aot_eager")
    for T in (3, 5):
        args = (torch.randint(0, 97, (2, T)), torch.arange(T), torch.tensor([0, 1]))
        assert torch.equal(f(*args), m(*args))


# ---------------------------------------------------------------------------------------------------- GPU
def run_poisoned(fn, shape, dtype):
    """fn() after two NaN blocks of the outputs' size went back to the allocator, which hands them to h and y."""
    poison = [torch.empty(shape, dtype=dtype, device="cuda").fill_(float("nan")) for _ in range(2)]
    del poison
    return fn()


def neighbours(t):
    """t and the next 16-bit values below and above it (t's own dtype)."""
    return (t,) + tuple(torch.nextafter(t, torch.full_like(t, inf)) for inf in (float("-inf"), float("inf")))


def check_gpu(rows, D, dtype, seed, shape=None):
    """The kernel against the reference computed on CPU from the same inputs.

    h bit for bit.  y: the kernel sums the squares in another order (and takes CUDA's rsqrtf), so its float32
    h * rsqrt(mean + eps) differs from the reference's in the last bits and t = T(h * rs) is the reference's t or the
    16-bit value next to it (one ulp) where h * rs lies next to a rounding boundary; y = T(t * w) is then exactly the
    reference's product for that t.  This is the bound checked, element by element: y is T(t' * w) for t' the
    reference's t or one of its two 16-bit neighbours.  (In units of y it is up to 2 ulp, not 1: one ulp of t moves
    t * w by |w| / 2^e ulps of y, |w| up to twice a power of two.)  And at least 99 % of the y are the reference's bits.
    """
    shape = shape or (rows, D)
    x, r, w = problem(shape, dtype, "cuda", seed)
    h, y = run_poisoned(lambda: kernels.add_rms_norm(x, r, w, EPS), shape, dtype)
    h2, y2 = run_poisoned(lambda: kernels.add_rms_norm(x, r, w, EPS), shape, dtype)
    torch.cuda.synchronize()
    what = f"rows={rows} D={D} {dtype} shape={shape}"
    xc, rc, wc = x.cpu(), r.cpu(), w.cpu()
    want_h, want_y = kernels.reference_add_rms_norm(xc, rc, wc, EPS)
    assert torch.equal(h.cpu(), want_h), f"{what}: h differs"
    hf = want_h.float()
    t = (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + EPS)).to(dtype)
    yc = y.cpu()
    allowed = torch.zeros_like(yc, dtype=torch.bool)
    for t_ in neighbours(t):
        allowed |= yc == t_ * wc
    assert allowed.all(), f"{what}: {int((~allowed).sum())} values of y beyond one ulp of t, e.g. {yc[~allowed][:4]}"
    exact = (yc == want_y).float().mean().item()
    assert exact >= 0.99, f"{what}: only {exact:.4f} of y bit for bit"
    assert torch.equal(h, h2) and torch.equal(y, y2), f"{what}: two identical runs differ"


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [64, 576, 4096, 8192, 8200, 16384, 24576, 32768])
def test_gpu_kernel_against_reference(D, dtype):
    """Every row count of a decode step around a warp (1, 2, 31, 32, 33) and a prefill's (1,000); D from one warp's
    vector each (64) to 1,024 threads (8,192), and past it: 8,200 (thread 0 has a second vector), 16,384, 24,576 and
    32,768 (2, 3 and 4 vectors per thread, the most the kernel takes)."""
    for i, rows in enumerate((1, 2, 31, 32, 33, 1000)):
        check_gpu(rows, D, dtype, seed=1000 * i + D)


@needs_cuda
def test_gpu_batch_shapes_and_strided_rows():
    """(B, T, D) inputs, and the last position of each sequence (model.py's last_only: rows D * T apart)."""
    check_gpu(32, 4096, torch.bfloat16, 5, shape=(4, 8, 4096))
    x, r, w = problem((3, 5, 576), torch.bfloat16, "cuda", 6)
    h, y = kernels.add_rms_norm(x[:, -1:], r[:, -1:], w, EPS)
    want_h, want_y = kernels.add_rms_norm(x[:, -1:].contiguous(), r[:, -1:].contiguous(), w, EPS)
    assert h.is_contiguous() and torch.equal(h, want_h) and torch.equal(y, want_y)


@needs_cuda
def test_gpu_errors_name_the_numbers():
    x, r, w = problem((2, 100), torch.bfloat16, "cuda", 0)
    with pytest.raises(ValueError, match="D a multiple of 8 up to 32768, got D = 100"):
        kernels.add_rms_norm(x, r, w, EPS)
    x, r, w = problem((2, 64), torch.bfloat16, "cuda", 0)
    x_odd = torch.empty(x.numel() + 8, dtype=x.dtype, device="cuda")[8:].view(x.shape).copy_(x)
    assert kernels.add_rms_norm(x_odd, r, w, EPS)[1].shape == x.shape  # a 16-byte offset is fine
    x_odd = torch.empty(x.numel() + 1, dtype=x.dtype, device="cuda")[1:].view(x.shape).copy_(x)
    with pytest.raises(ValueError, match="x must be 16-byte aligned"):
        kernels.add_rms_norm(x_odd, r, w, EPS)
    with pytest.raises(TypeError, match="x must be bfloat16 or float16, got torch.float32"):
        kernels.add_rms_norm(x.float(), r.float(), w.float(), EPS)


@needs_cuda
def test_gpu_opcheck_and_graph_replay():
    """opcheck on CUDA; a CUDA graph of the op replayed with new inputs copied in place equals the eager call."""
    x, r, w = problem((32, 4096), torch.bfloat16, "cuda", 7)
    torch.library.opcheck(torch.ops.lowbit.add_rms_norm, (x, r, w, EPS))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        kernels.add_rms_norm(x, r, w, EPS)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        h, y = kernels.add_rms_norm(x, r, w, EPS)
    for seed in (8, 9):
        x2, r2, _ = problem((32, 4096), torch.bfloat16, "cuda", seed)
        x.copy_(x2)
        r.copy_(r2)
        g.replay()
        want_h, want_y = kernels.add_rms_norm(x, r, w, EPS)
        torch.cuda.synchronize()
        assert torch.equal(h, want_h) and torch.equal(y, want_y)


@needs_cuda
@torch.no_grad()
def test_gpu_model_through_the_kernel():
    """The model on the GPU (bf16, eager) with the kernel for every add + norm against model.py's own: the same greedy
    tokens, logits within bf16 noise."""
    m = tiny_model(torch.bfloat16, dim=576, n_heads=9, n_kv_heads=3).cuda()
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15]]
    T = max(map(len, prompts))
    pad = torch.tensor([T - len(p) for p in prompts], device="cuda")
    tok = torch.tensor([[0] * (T - len(p)) + p for p in prompts], device="cuda")
    logits = {}
    for fused in (False, True):
        m.setup_caches(3, 32)
        for n in norms(m):
            n.fused = n.fused and fused
        logits[fused] = m(tok, torch.arange(T, device="cuda"), pad)
    assert all(n.fused for n in norms(m))
    torch.testing.assert_close(logits[True], logits[False], rtol=0.05, atol=0.05)
    assert torch.equal(logits[True].argmax(-1), logits[False].argmax(-1))
