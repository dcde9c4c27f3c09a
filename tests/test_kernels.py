"""Tests for kernels/ (lowbit::w4a16_gemm).

CPU tests run everywhere (CI).  GPU tests skip without CUDA; run them with
    TORCH_EXTENSIONS_DIR=.torch_extensions python -m pytest -q tests/test_kernels.py

Error bound used against the float64 oracle (derivation).  The oracle is the exact product with the
exact weights s*q+m (from the 16-bit s, m).  Kernels differ from it by (1) fp32 accumulation in
another order, (2) the final rounding of y to bf16/fp16 and, except the streaming kernel at M <= 16
(which feeds the tensor core exact integers and scales fp32 sums), (3) one rounding of every weight
to 16 bits.  (2) is at most half an ulp <= eps/2 * |ref|, with eps = 2^-7 (bf16) or 2^-10 (fp16),
the spacing of numbers in [1, 2).  (1) is, for any summation order, statistically ~ K * u32 * rms(p)
with u32 = 2^-24 and p_k = x_k * w_k; since sqrt(K) * u32 <= eps for every K < 2^28, that is at most
eps * sqrt(sum_k p_k^2).  (3) adds sum_k x_k d_k with |d_k| <= eps/2 |w_k|, uniform: a sum of
independent terms with standard deviation eps/(2 sqrt 3) * sqrt(sum_k p_k^2).  Hence, elementwise,
    |y - ref| <= eps * (|ref| + 2 sqrt(sum_k x_k^2 w_k^2))
(factor 2 of margin on the rounding term; the second term, ~7 standard deviations of (3) beyond (1),
also covers outputs near zero, where a relative bound means nothing).  Before the streaming kernel
stopped rounding weights (2026-11-29) the oracle rounded them too and the second term had no 2: the
exact-weight kernel then failed 1 element in ~1e5 against it, by up to 1.1x the old bound.
"""
from __future__ import annotations

import re

import pytest
import torch

import kernels
from kernels import build as kbuild
from kernels.reference import dequantize

EPS = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
GROUPS = (32, 64, 128, "K")
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA GPU on this machine")


def make_problem(M, N, K, gs, sym, dtype, device, seed):
    """Fresh random inputs (never zeros): q uniform in 0..15, scales ~ 1e-2, float zero offsets."""
    g = torch.Generator(device=device).manual_seed(seed)
    G = K // gs
    q = torch.randint(0, 16, (N, K), generator=g, device=device, dtype=torch.uint8)
    s = (torch.rand(N, G, generator=g, device=device) * 0.02 + 0.005).to(dtype)
    z = None if sym else (-(torch.rand(N, G, generator=g, device=device) * 8 + 4) * s.float()).to(dtype)
    x = torch.randn(M, K, generator=g, device=device).to(dtype)
    return x, q, s, z


def oracle(x, q, s, z, gs):
    """float64 product with the exact weights s*q+m; plus the bound's scale."""
    w = dequantize(q, s, z, gs, dtype=None)
    xd = x.double()
    ref = xd @ w.t()
    spread = ((xd * xd) @ (w * w).t()).sqrt()
    return ref, spread


def assert_close(y, x, q, s, z, gs, what=""):
    ref, spread = oracle(x, q, s, z, gs)
    assert y.shape == ref.shape and y.dtype == x.dtype, what
    yd = y.double()
    assert torch.isfinite(yd).all(), f"{what}: non-finite output (unwritten or overflow)"
    err = (yd - ref).abs()
    tol = EPS[x.dtype] * (ref.abs() + 2 * spread)
    bad = err > tol
    if bad.any():
        i = int(bad.flatten().nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{bad.numel()} elements out of bound; first at flat index {i}: "
            f"y={yd.flatten()[i].item():.6g} ref={ref.flatten()[i].item():.6g} tol={tol.flatten()[i].item():.3g}"
        )


# ----------------------------------------------------------------------------- CPU
@pytest.mark.parametrize("N,K", [(64, 64), (192, 320), (128, 576), (256, 1024)])
@pytest.mark.parametrize("gs", GROUPS)
@pytest.mark.parametrize("sym", [True, False])
def test_pack_unpack_roundtrip(N, K, gs, sym):
    gs = K if gs == "K" else gs
    if K % gs:
        pytest.skip(f"K={K} not a multiple of {gs}")
    _, q, s, z = make_problem(1, N, K, gs, sym, torch.bfloat16, "cpu", seed=N + K + gs)
    pw, sp, zp = kernels.pack_w4(q, s, z, gs)
    assert pw.dtype == torch.int32 and pw.shape == (N, K // 8)
    assert sp.shape == (K // gs, N) and (zp is None) == sym
    q2, s2, z2 = kernels.unpack_w4(pw, sp, zp, gs)
    assert torch.equal(q2, q) and torch.equal(s2, s)
    assert sym or torch.equal(z2, z)


def test_pack_layout_matches_fragment_formula():
    """Spot-check the documented layout formula for single nibbles."""
    N, K = 128, 64
    for n, k in [(0, 0), (1, 0), (8, 0), (0, 1), (0, 8), (64 + 19, 16 + 13), (127, 63), (37, 42)]:
        q = torch.zeros(N, K, dtype=torch.uint8)
        q[n, k] = 7
        pw, _, _ = kernels.pack_w4(q, torch.ones(N, 1, dtype=torch.bfloat16), None, K)
        words = pw.flatten().to(torch.int64) & 0xFFFFFFFF
        nt, r = divmod(n, 64)
        j, i = divmod(r, 8)
        w, jj = divmod(j, 2)
        kt, rk = divmod(k, 16)
        h, rk = divmod(rk, 8)
        lq, e = divmod(rk, 2)
        lane = 4 * i + lq
        idx = ((nt * (K // 16) + kt) * 32 + lane) * 4 + w
        slot = e * 4 + jj * 2 + h
        assert int(words[idx]) == 7 << (4 * slot), (n, k)
        assert int((words != 0).sum()) == 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("gs", GROUPS)
def test_reference_matches_float64(dtype, sym, gs):
    M, N, K = 5, 192, 640 if gs == 128 else 576
    gs = K if gs == "K" else gs
    x, q, s, z = make_problem(M, N, K, gs, sym, dtype, "cpu", seed=3)
    pw, sp, zp = kernels.pack_w4(q, s, z, gs)
    y = kernels.reference_w4a16_gemm(x, pw, sp, zp, gs)
    assert_close(y, x, q, s, z, gs, "reference")
    # the registered CPU implementation is the reference
    assert torch.equal(torch.ops.lowbit.w4a16_gemm(x, pw, sp, zp, gs), y)
    assert torch.equal(kernels.w4a16_gemm(x, pw, sp, zp, gs), y)


def test_dequantize_semantics():
    """Symmetric means m = -8 s; asymmetric uses the float offset m directly."""
    q = torch.tensor([[0, 15, 8, 3]], dtype=torch.uint8)
    s = torch.tensor([[0.5, 2.0]], dtype=torch.bfloat16)
    m = torch.tensor([[1.0, -3.0]], dtype=torch.bfloat16)
    assert dequantize(q, s, None, 2, None).tolist() == [[-4.0, 3.5, 0.0, -10.0]]
    assert dequantize(q, s, m, 2, None).tolist() == [[1.0, 8.5, 13.0, 3.0]]


def test_fake_impl_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        for dtype in (torch.bfloat16, torch.float16):
            x = torch.empty(7, 576, dtype=dtype)
            pw = torch.empty(960, 72, dtype=torch.int32)
            s = torch.empty(576 // 64, 960, dtype=dtype)
            y = torch.ops.lowbit.w4a16_gemm(x, pw, s, s, 64)
            assert y.shape == (7, 960) and y.dtype == dtype
            y = torch.ops.lowbit.w4a16_gemm(x, pw, torch.empty(1, 960, dtype=dtype), None, 576)
            assert y.shape == (7, 960)


@pytest.mark.parametrize("sym", [True, False])
def test_opcheck_cpu(sym):
    x, q, s, z = make_problem(3, 128, 256, 64, sym, torch.bfloat16, "cpu", seed=11)
    pw, sp, zp = kernels.pack_w4(q, s, z, 64)
    torch.library.opcheck(torch.ops.lowbit.w4a16_gemm.default, (x, pw, sp, zp, 64))


def test_torch_compile_fullgraph_cpu():
    x, q, s, z = make_problem(4, 128, 256, 128, False, torch.bfloat16, "cpu", seed=5)
    pw, sp, zp = kernels.pack_w4(q, s, z, 128)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x):
        return kernels.w4a16_gemm(x, pw, sp, zp, 128) * 2

    assert torch.equal(f(x), kernels.reference_w4a16_gemm(x, pw, sp, zp, 128) * 2)


def _bad_cases(device):
    """(description, args, message fragment) for invalid inputs."""
    dt = torch.bfloat16
    x, q, s, z = make_problem(2, 128, 256, 64, False, dt, device, seed=1)
    pw, sp, zp = kernels.pack_w4(q, s, z, 64)
    other = "cpu" if device != "cpu" else "meta"
    return [
        ("float32 x", (x.float(), pw, sp, zp, 64), "bfloat16 or float16"),
        ("K mismatch", (x[:, :192].contiguous(), pw, sp, zp, 64), "K=192"),
        ("N % 64", (x, torch.zeros(96, 32, dtype=torch.int32, device=device), sp[:, :96].contiguous(), None, 64), "N=96"),
        ("K % 64", (torch.randn(2, 96, device=device).to(dt), torch.zeros(64, 12, dtype=torch.int32, device=device),
                    torch.ones(3, 64, device=device, dtype=dt), None, 32), "K=96"),
        ("K % group", (torch.randn(2, 192, device=device).to(dt), torch.zeros(64, 24, dtype=torch.int32, device=device),
                       torch.ones(1, 64, device=device, dtype=dt), None, 128), "K=192"),
        ("bad group", (x, pw, sp, zp, 48), "got 48"),
        ("scales shape", (x, pw, sp[:2].contiguous(), zp, 64), "(4, 128)"),
        ("scales dtype", (x, pw, sp.half(), None, 64), "dtype"),
        ("non-contiguous x", (torch.randn(256, 2, device=device).to(dt).t(), pw, sp, zp, 64), "contiguous"),
        ("device", (x, pw, sp.to(other), zp, 64), "is on"),
        ("int8 weights", (x, pw.to(torch.int8), sp, zp, 64), "int32"),
    ]


def test_gpu_older_than_sm80_is_not_offered_the_kernels(monkeypatch):
    """On a GPU below compute capability 8.0 (no bf16 mma.sync) the extension counts as unavailable without
    being built, so int4-marlin takes its reference path and says why."""
    import quantize
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(kernels, "load_extension", lambda *a, **k: pytest.fail("must not build for sm_75"))
    monkeypatch.setattr(kernels, "_available", None)
    assert not kernels.extension_available()
    notices = []
    monkeypatch.setattr(quantize, "_notice", notices.append)
    q, s, z = kernels.pack_w4(*make_problem(1, 64, 128, 64, False, torch.bfloat16, "cpu", 0)[1:], 64)
    lin = quantize.Int4Marlin(128, 64, q, s, z, 64, "asym")
    assert lin._gemm is kernels.reference_w4a16_gemm and "compute capability 8.0" in notices[0]


@needs_cuda
def test_gpu_older_than_sm80_is_a_clear_error_in_the_op(monkeypatch):
    """A direct call of the op on such a GPU is refused in Python (no C++ throw), naming the capability."""
    x, q, s, z = make_problem(1, 64, 128, 64, False, torch.bfloat16, "cuda", 0)
    packed = kernels.pack_w4(q, s, z, 64)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    with pytest.raises(RuntimeError, match=r"compute capability 7\.5: the kernels need 8\.0"):
        kernels.w4a16_gemm(x, *packed, 64)


@pytest.mark.parametrize("case", range(11))
def test_bad_inputs_cpu(case):
    name, args, msg = _bad_cases("cpu")[case]
    if name == "device":
        pytest.skip("a meta tensor among CPU tensors is rejected by the dispatcher before our check")
    with pytest.raises((ValueError, TypeError, RuntimeError), match=msg.replace("(", r"\(").replace(")", r"\)")):
        kernels.w4a16_gemm(*args)


@pytest.mark.skipif(kbuild.find_cuda_home() is None, reason="nvcc not found: cannot compile the CUDA extension")
def test_extension_compiles():
    """Compile-only check (works without a GPU; builds for $TORCH_CUDA_ARCH_LIST or 9.0). May take minutes."""
    mod = kernels.load_extension()
    ms = (1, 8, 9, 16, 17, 32, 33, 96, 97, 128, 129)
    assert hasattr(mod, "gemm_path") and [mod.choose_path(m, 4096, 4096) for m in ms] == [4, 4, 2, 2, 3, 3, 3, 3, 1, 1, 1]
    # on compute capability 9.0 the wgmma kernels take M = 17..64 (path 5) and 65..512 (path 6; csrc/ops.cpp)
    want = [4, 4, 2, 2] + [5] * 3 + [6] * 4 + [5, 6, 6, 1]
    assert [mod.choose_path(m, 4096, 4096, wgmma=True) for m in ms + (64, 65, 512, 513)] == want


@pytest.mark.skipif(kbuild.find_cuda_home() is None, reason="nvcc not found: cannot compile the CUDA extension")
@pytest.mark.parametrize("source", ["w4a16_wgmma.cu", "w4a16_wgmma_ws.cu"])
def test_wgmma_kernel_assembles_without_serialization_or_spills(tmp_path, source):
    """ptxas keeps the wgmma pipelines of paths 5 and 6 asynchronous (it warns "wgmma ... serialized", C7510-C7515,
    when it cannot keep the A or accumulator registers live across the asynchronous window, C7513 when a group is
    pending across a loop's back edge while other code defines wgmma inputs, C7520 for a branch between wgmma, and
    inserts waits) and spills nothing, for every instantiation (sm_90a; ~10 s each)."""
    import os
    import subprocess
    nvcc = os.path.join(kbuild.find_cuda_home(), "bin", "nvcc")
    out = subprocess.run([nvcc, "-c", "-O3", "-std=c++17", "--expt-relaxed-constexpr",
                          "-gencode=arch=compute_90a,code=sm_90a", "-Xptxas=-v,-warn-spills", f"-I{kbuild.CSRC}",
                          os.path.join(kbuild.CSRC, source), "-o", str(tmp_path / "wgmma.o")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert ("w4a16_wgmma_ws_kernel" in log) == (source == "w4a16_wgmma_ws.cu") and "w4a16_wgmma" in log, log[-3000:]
    assert not re.search(r"C75\d\d|serializ|[1-9]\d* bytes spill", log), log[-3000:]


@pytest.mark.skipif(kbuild.find_cuda_home() is None or kbuild.find_cuobjdump() is None,
                    reason="nvcc or cuobjdump not found: cannot build or disassemble the extension")
def test_no_memory_descriptor_in_an_odd_uniform_register():
    """A 64-bit memory descriptor lives in an even/odd uniform register pair.  With an L2 cache-policy operand on
    the fused kernels' weight copies, ptxas (CUDA 13.0) emitted `LDGSTS ... desc[UR1]` (odd, never written) in their
    main loops: 'illegal instruction' on an H100 whenever that loop issued a copy (NOTES v11e).  Scans the SASS of
    every kernel in the built extension."""
    import subprocess
    so = kernels.load_extension().__file__
    tool, env = kbuild.find_cuobjdump()
    out = subprocess.run([tool, "-sass", so], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    bad, fn = [], None
    for line in out.stdout.splitlines():
        if "Function :" in line:
            fn = line.split("Function :")[1].strip()
        elif re.search(r"desc\[UR\d*[13579]\]", line):
            bad.append(f"{fn}: {line.strip()[:120]}")
    assert "Function :" in out.stdout and not bad, "\n".join(bad[:10])


def test_sass_kblock_count_on_a_synthetic_loop():
    """kernels/sass.py: a k-block is the distance between the first HGMMA of consecutive wgmma groups, less the code
    that only copy-issuing lanes run (a forward branch over bulk copies and no cp.async)."""
    from kernels.sass import Insn, kblock_stats

    def program(ops_or_insns):  # addresses 16 bytes apart, as in SASS
        return [Insn(o, 16 * i) if isinstance(o, str) else Insn(o.op, 16 * i, o.target)
                for i, o in enumerate(ops_or_insns)]
    group = ["HGMMA", "MOV", "HGMMA"]
    body = ["LOP3"] * 40 + ["IMAD"] * 30 + ["LDS"] * 5 + ["BRA"]
    ops = ["LDC"] * 20 + group + body + group + body + ["EXIT"]
    st = kblock_stats(program(ops))
    assert st["instructions"] == len(group) + len(body) == 79 and st["issuer"] == 0
    assert (st["alu"], st["fma"], st["shared"], st["tensor"], st["other"]) == (41, 30, 5, 2, 1)
    assert kblock_stats(program(group + body)) is None  # one group: no loop to measure

    def with_branch(start, skipped):  # a loop whose k-block has a forward branch over `skipped` after the group
        out = []
        for g in range(2):
            base = start + len(out)
            here = base + len(group)  # the branch's index
            out += group + [Insn("BRA", -1, 16 * (here + 1 + len(skipped)))] + skipped + ["LOP3"] * 50
        return program(out + ["EXIT"])
    st = kblock_stats(with_branch(0, ["IMAD"] * 6 + ["UBLKCP", "BRA"] + ["IMAD"] * 4 + ["UBLKCP"]))
    assert (st["instructions"], st["issuer"], st["fma"]) == (len(group) + 1 + 50, 13, 0)
    st = kblock_stats(with_branch(0, ["IMAD"] * 6 + ["UBLKCP", "LDGSTS"]))  # cp.async inside: every thread runs it
    assert (st["instructions"], st["issuer"]) == (len(group) + 1 + 8 + 50, 0)


@pytest.mark.skipif(kbuild.find_cuda_home() is None or kbuild.find_cuobjdump() is None,
                    reason="nvcc or cuobjdump not found: cannot build or disassemble the extension")
def test_sass_wgmma_kblock_instruction_budget():
    """The wgmma kernels' main loops stay short (kernels/NOTES.md v13: path 5 at 328-389 issued instructions per
    k-block with CUDA 13.0, 621 before, and the kernel's speed followed that count; v23: 204-215 for its warps that
    issue no copies; path 6's consumer warps 255-267): every instantiation under 450."""
    from kernels.sass import disassemble, table
    if kbuild._target_arch() != "9.0a":
        pytest.skip("the wgmma kernel exists in sm_90a builds only")
    lines = table(disassemble(kernels.load_extension().__file__))[2:]
    assert len(lines) == 20, lines  # 2 dtypes x with/without zeros x (path 5: 4 m-block sizes, path 6: one)
    counts = [int(line.split("|")[5]) for line in lines]
    assert max(counts) < 450, "\n".join(lines)
    # path 5's copy-issuing branch was found (else its length would be in the count, or a parse broke silently)
    assert all(int(line.split("|")[12]) > 0 for line in lines if line.split("|")[1].strip() == "5"), "\n".join(lines)


@pytest.mark.skipif(kbuild.find_cuda_home() is None, reason="nvcc not found: cannot compile the CUDA extension")
def test_path_override_from_environment():
    """LOWBIT_W4A16_PATH forces one path for every M (end-to-end A/B runs; 4, at most 8 rows, for the calls that
    fit); a bad value is a clear error."""
    import os
    import subprocess
    import sys
    code = "import kernels; m = kernels.load_extension(); print([m.choose_path(M, 4096, 4096) for M in (1, 64, 999)])"
    root = str(kbuild.REPO)
    for forced, want in (("3", "[3, 3, 3]"), ("4", "[4, 3, 1]"), ("6", "[6, 6, 6]")):  # 4: at most 8 rows
        env = dict(os.environ, LOWBIT_W4A16_PATH=forced)
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0 and out.stdout.strip() == want, out.stderr[-2000:]
    env["LOWBIT_W4A16_PATH"] = "fast"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert out.returncode != 0
    assert "LOWBIT_W4A16_PATH must be 0, 1, 2, 3, 4, 5 or 6 (or unset), got 'fast'" in out.stderr


@needs_cuda
def test_pdl_override_from_environment():
    """LOWBIT_W4A16_PDL=0/1 overrides the launch default; any other value is a clear error at the first
    call (read at the first launch, so only on a GPU)."""
    import os
    import subprocess
    import sys
    code = ("import torch, kernels; x = torch.randn(1, 64, device='cuda', dtype=torch.bfloat16); "
            "q = torch.randint(0, 16, (64, 64), dtype=torch.uint8); s = torch.rand(64, 1) + 0.5; "
            "pw, sp, zp = kernels.pack_w4(q, s.to(torch.bfloat16), None, 64); "
            "kernels.w4a16_gemm(x, pw.cuda(), sp.cuda(), None, 64); print('ok')")
    env = dict(os.environ, LOWBIT_W4A16_PDL="yes")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(kbuild.REPO), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode != 0 and "LOWBIT_W4A16_PDL must be 0 or 1 (or unset), got 'yes'" in out.stderr


@pytest.mark.skipif(kbuild.find_cuda_home() is None, reason="nvcc not found: cannot compile the CUDA extension")
@pytest.mark.parametrize("smem_ring", [False, True])
@pytest.mark.parametrize("has_z", [False, True])
@pytest.mark.parametrize("gpu", ["H100", "A100", "L4"])
def test_stream_kernel_plan(has_z, smem_ring, gpu):
    """Host-side launch plan of the streaming kernel (runs without a GPU, for a device description: SMs,
    shared memory per SM and per CTA; an H100, an A100, and an sm_89 part whose 100 KB per SM cannot hold
    two CTAs of path 3's 64 KB ring at MT=1, nor its 32 KB ring at MT=2 with zeros; kernels/NOTES.md open
    issue 7): whole runs of 4 k-tiles, every k-tile covered once, staging (and path 3's weight rings) that
    fits, scales of every group the CTA touches, no more splits than needed."""
    mod = kernels.load_extension()
    sms, per_sm, per_block = {"H100": (132, 233472, 232448), "A100": (108, 167936, 166912),
                              "L4": (58, 102400, 101376)}[gpu]
    for N, K, gs in shape_group_cases():
        for M in (1, 3, 16, 17, 33, 64, 1000):
            mt = 1 if M <= 16 else (2 if M <= 32 else 4)
            occ = 2 if mt <= 2 else 1
            ring = 8 * (8 if mt == 2 else 16) * 512 if smem_ring else 0  # w4a16.h stream_ring_bytes
            ctas = -(-M // (16 * mt)) * -(-N // 128)
            rows = min(M, 16) if mt == 1 else 16 * mt
            shortest = rows * 4 * 128 + (2 if has_z else 1) * 256 * (1 if gs == K else -(-256 // gs)) + ring
            *plan, error = mod.plan_stream(M, K, gs, has_z, mt, ctas, occ, sms, per_sm, per_block, smem_ring=smem_ring)
            splits, tw, ngroups, s_off, z_off, smem, ring_off = plan
            if max(shortest, mt * 16384) > per_block - 128:  # even runs of 4 k-tiles do not fit: gemm_path refuses
                assert error == 1 and tw == 4 and smem == max(shortest, mt * 16384), (error, plan)
                assert gpu == "L4" and smem_ring and mt == 4  # (path 3 at MT=4: forced only)
                continue
            assert error == 0, (error, plan)
            what = f"M={M} N={N} K={K} gs={gs}: plan {splits, tw, ngroups, s_off, z_off, smem, ring_off}"
            k_tiles = K // 16
            assert tw % 4 == 0 and tw >= 4, what
            assert (splits - 1) * 4 * tw < k_tiles <= splits * 4 * tw, what  # no empty split, all covered
            assert (4 * tw * 16) % min(gs, 256) == 0 or gs == K, what  # CTAs start on group boundaries
            assert ngroups == (1 if gs == K else -(-64 * tw // gs)), what
            assert s_off == rows * tw * 128 and z_off == s_off + ngroups * 256, what
            assert ring_off == z_off + (ngroups * 256 if has_z else 0) and ring_off % 16 == 0, what
            assert smem >= max(ring_off + ring, mt * 16384), what
            assert smem <= min(per_block - 128, per_sm // occ - 1024 - 128) or tw == 4, what
            # Split K to fill one wave of resident CTAs, and further only when longer runs would not fit.
            want = max(1, sms * occ // ctas) if ctas < sms * occ else 1
            if splits > want:  # then one split fewer needs longer runs, whose staging does not fit
                longer = -(-(-(-k_tiles // (4 * (splits - 1)))) // 4) * 4
                staging = rows * longer * 128 + (2 if has_z else 1) * 256 * (1 if gs == K else -(-64 * longer // gs))
                assert staging + ring > min(per_block - 128, per_sm // occ - 1024 - 128), what


@pytest.mark.skipif(kbuild.find_cuda_home() is None, reason="nvcc not found: cannot compile the CUDA extension")
def test_stream_kernel_plan_forced_splits():
    """The benchmark knob `splits` replaces the one-wave rule; runs stay whole and cover K exactly."""
    mod = kernels.load_extension()
    K = 4096  # 256 k-tiles
    for want, (splits, tw) in {1: (1, 64), 2: (2, 32), 3: (3, 24), 8: (8, 8), 64: (16, 4)}.items():
        got = mod.plan_stream(1, K, 128, False, 1, 32, 2, 132, 233472, 232448, splits=want)
        assert tuple(got[:2]) == (splits, tw), (want, got)
    assert mod.plan_stream(1, K, 128, False, 1, 32, 2, 132, 233472, 232448)[0] == 8  # 264 slots / 32 CTAs


# ----------------------------------------------------------------------------- GPU
M_SWEEP = (1, 2, 3, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 96, 97, 127, 128, 255, 256, 1000)  # 96/97: path 3 | 1
SHAPES = {
    "llama3-8b": [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)],
    "llama2-7b": [(12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008)],
    "smollm2-135m": [(960, 576), (576, 576), (3072, 576), (576, 1536)],
    "odd": [(64, 64), (192, 320), (320, 192), (64, 1088)],
}


def shape_group_cases():
    """(N, K, group size) for every shape of SHAPES and every group of GROUPS that divides K."""
    for shapes in SHAPES.values():
        for N, K in shapes:
            for gs in GROUPS:
                gs = K if gs == "K" else gs
                if K % gs == 0:
                    yield N, K, gs


def run_poisoned(fn, x, N):
    """Fill the allocator block the output will reuse with NaN, then run."""
    torch.empty(x.shape[0], N, dtype=x.dtype, device=x.device).fill_(float("nan"))
    return fn()


def check_gpu(M, N, K, gs, sym, dtype, seed, path=-1, splits=-1, m_tiles=-1):
    x, q, s, z = make_problem(M, N, K, gs, sym, dtype, "cuda", seed)
    pw, sp, zp = kernels.pack_w4(q, s, z, gs)
    torch.cuda.synchronize()  # packed weights are constants to the op (it may read them early: w4a16_gemm)
    ext = kernels.load_extension()
    what = f"M={M} N={N} K={K} gs={gs} {'sym' if sym else 'asym'} {dtype} path={path} splits={splits} m_tiles={m_tiles}"
    y1 = run_poisoned(lambda: ext.gemm_path(x, pw, sp, zp, gs, path, splits, m_tiles), x, N)
    y2 = run_poisoned(lambda: ext.gemm_path(x, pw, sp, zp, gs, path, splits, m_tiles), x, N)
    torch.cuda.synchronize()
    assert_close(y1, x, q, s, z, gs, what)
    assert torch.equal(y1, y2), f"{what}: results differ between two identical runs"


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("N,K", [(4096, 4096), (192, 320)])
def test_gpu_m_sweep(N, K, sym, dtype):
    for i, M in enumerate(M_SWEEP):
        check_gpu(M, N, K, 64 if K % 128 else 128, sym, dtype, seed=1000 + i)


@needs_cuda
@pytest.mark.parametrize("preset", list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_model_shapes(preset, dtype):
    seed = 0
    for N, K in SHAPES[preset]:
        for gs in GROUPS:
            gs = K if gs == "K" else gs
            if K % gs:
                continue
            for sym in (True, False):
                for M in (1, 16, 33, 100, 300, 600):  # 33-300: path 5 on compute capability 9.0, else 3/1
                    seed += 1
                    check_gpu(M, N, K, gs, sym, dtype, seed)


@needs_cuda
@pytest.mark.parametrize("path", [0, 1, 2, 3])
def test_gpu_forced_paths(path):
    """The mma kernel, dequantize+cuBLAS and the streaming kernel, each forced, across the M range."""
    for i, M in enumerate((1, 16, 64, 128, 256, 1000)):
        check_gpu(M, 4096, 4096, 128, i % 2 == 0, torch.bfloat16, seed=77 + i, path=path)


def launched_kernels(fn):
    """Names of the CUDA kernels fn() launches (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def kernel_of_path(names):
    """Which path a list of launched kernel names belongs to (the template arguments of the streaming kernel tell
    its rings apart: <T, MT, HAS_Z, SMEM_RING, SWAP>, booleans printed as 0/1 or false/true)."""
    flag = {"0": False, "false": False, "1": True, "true": True}
    for n in names:
        if "w4a16_wgmma_kernel" in n:
            return 5
        if "w4a16_wgmma_ws_kernel" in n:
            return 6
        if "w4a16_mma_kernel" in n:
            return 0
        if "w4_dequant_kernel" in n:
            return 1
        if "w4a16_stream_kernel" in n:
            args = [a.strip() for a in n.split("w4a16_stream_kernel<", 1)[1].split(">", 1)[0].split(",")]
            smem_ring, swap = flag[args[3]], flag[args[4]]
            return 4 if swap else 3 if smem_ring else 2
    raise AssertionError(f"no kernel of ours among {names}")


@needs_cuda
def test_gpu_forced_path_runs_its_kernel():
    """A forced path launches that path's kernel (path 5 once ran the streaming kernel: a test of outputs alone
    cannot see that, since every path gives the same answer); so does the heuristic's choice (-1) at the rows where
    it changes kernels (40: path 5 on compute capability 9.0, else 3; 80 and 112: path 6 there, else 3 and 1)."""
    x, q, s, z = make_problem(112, 4096, 4096, 128, False, torch.bfloat16, "cuda", seed=31)
    pw, sp, zp = kernels.pack_w4(q, s, z, 128)
    ext = kernels.load_extension()
    paths = (0, 1, 2, 3, 4) + ((5, 6) if torch.cuda.get_device_capability() == (9, 0) else ())
    for path in paths:
        for M in (8, 40) if path != 4 else (8,):
            xm = x[:M].contiguous()
            names = launched_kernels(lambda: ext.gemm_path(xm, pw, sp, zp, 128, path, -1, -1))
            assert kernel_of_path(names) == path, f"path {path}, M={M}: launched {names}"
    for M in (8, 16, 40, 80, 112):
        xm = x[:M].contiguous()
        names = launched_kernels(lambda: ext.gemm_path(xm, pw, sp, zp, 128, -1, -1, -1))
        want = kernels.PATHS.index(kernels.choose_path(M, 4096, 4096))
        assert kernel_of_path(names) == want, f"heuristic, M={M}: launched {names}, choose_path says {want}"


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("sym", [True, False])
def test_gpu_exact_weights_only_in_streaming_kernel_at_m_le_16(sym, dtype):
    """The op's two weight semantics (kernels.w4a16_gemm): inputs built so that the exact weights give
    y = 0 exactly while weights rounded to 16 bits give a clearly nonzero y (all sums are small integers
    times powers of two, exact in fp32 in any order).  Pairs of k: x = (+1, -c) against weights whose
    exact values are (c·v, v), so every pair cancels; the rounded c·v does not equal c times the rounded
    v.  The streaming kernel at M <= 16 (paths 2 and 3, and 4 at M <= 8) must give 0; every other path, and the streaming
    kernel from M = 17, the reference's rounded-weight answer (within 25%: cuBLAS may add split-K partials
    in 16 bits)."""
    ref_gemm = kernels.reference_w4a16_gemm
    N, K, gs = 128, 4096, 128
    s_val = 1 + 2.0 ** (-7 if dtype == torch.bfloat16 else -10)  # exact in dtype; c·s_val needs more bits
    qa, qb, c = (15, 9, 7.0) if sym else (15, 1, 15.0)  # sym: weights 7s and s; zeros (z = 0): 15s and s
    q = torch.tensor([qa, qb], dtype=torch.uint8, device="cuda").repeat(N, K // 2)
    s = torch.full((N, K // gs), s_val, dtype=dtype, device="cuda")
    z = None if sym else torch.zeros_like(s)
    pw, sp, zp = kernels.pack_w4(q, s, z, gs)
    ext = kernels.load_extension()
    for M in (1, 9, 16, 17, 33, 300):
        x = torch.tensor([1.0, -c], dtype=dtype, device="cuda").repeat(M, K // 2)
        rounded = ref_gemm(x.cpu(), pw.cpu(), sp.cpu(), None if zp is None else zp.cpu(), gs)
        assert (rounded.float().abs() >= 1).all(), "the construction must separate the two semantics"
        for path in (-1, 0, 1, 2, 3) + ((4,) if M <= 8 else ()):
            y = ext.gemm_path(x, pw, sp, zp, gs, path, -1).cpu()
            taken = kernels.PATHS.index(kernels.choose_path(M, N, K)) if path < 0 else path
            what = f"M={M} path={path} (ran {taken}): y[0,0]={y[0, 0].item()}, rounded weights give " \
                   f"{rounded[0, 0].item()}"
            if taken in (2, 3, 4) and M <= 16:
                assert (y == 0).all(), what + ", exact weights 0"
            else:  # cuBLAS may reduce split-K partials in 16 bits: close to the rounded answer, far from 0
                assert ((y.float() - rounded.float()).abs() <= 0.25 * rounded.float().abs()).all(), what


@needs_cuda
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("path", [0, 2, 3, 4])
def test_gpu_outputs_correctly_rounded(sym, path):
    """Tighter than `assert_close`, whose bound (a few units of bf16 rounding of the terms' spread) could hide a
    small systematic error: our kernels' bf16 outputs equal the correctly rounded product of their weight
    semantics (exact weights in the streaming kernels at M <= 16, bf16-rounded weights elsewhere) for >= 99%
    of the outputs. fp32 sums in another order flip the rounding only where the exact value lies within
    ~1e-6 (relative) of a rounding boundary, ~0.05% of the outputs; an error of 1e-3 flips ~25%."""
    N, K, gs = 4096, 4096, 128
    ext = kernels.load_extension()
    for i, M in enumerate((1, 8) if path == 4 else (1, 8, 16, 17, 32, 64)):
        x, q, s, z = make_problem(M, N, K, gs, sym, torch.bfloat16, "cuda", seed=300 + i)
        pw, sp, zp = kernels.pack_w4(q, s, z, gs)
        y = ext.gemm_path(x, pw, sp, zp, gs, path, -1).double()
        w = dequantize(q, s, z, gs, dtype=None)  # float64: the exact weights
        exact = path in (2, 3, 4) and M <= 16
        if not exact:
            w = w.to(torch.bfloat16).double()
        want = (x.double() @ w.t()).to(torch.bfloat16).double()
        share = (y == want).double().mean().item()
        assert share >= 0.99, (f"M={M} path={path} {'sym' if sym else 'zeros'}: only {100 * share:.2f}% of the "
                               f"outputs are the correctly rounded product with {'exact' if exact else 'bf16'} weights")


@needs_cuda
@pytest.mark.parametrize("path", [0, 2, 3, 4])
def test_gpu_forced_splits(path):
    """The split-K benchmark knob (`gemm_path(..., splits)`): any count gives a correct, repeatable result."""
    cases = ((1, 1), (1, 3), (8, 2), (3, 7), (5, 64)) if path == 4 else ((1, 1), (1, 3), (17, 2), (33, 7), (5, 64))
    for i, (M, splits) in enumerate(cases):
        check_gpu(M, 4096, 4096, 128, i % 2 == 0, torch.bfloat16, seed=90 + i, path=path, splits=splits)


@needs_cuda
@pytest.mark.parametrize("path", [0, 2, 3])
def test_gpu_forced_m_tiles(path):
    """The m-tile benchmark knob (`gemm_path(..., m_tiles)`): 1, 2 or 4 m16 tiles per CTA at any M (several
    m-blocks when the tiles are fewer than the rows), with and without split K, correct and repeatable."""
    cases = ((64, 1, -1), (64, 2, -1), (64, 4, -1), (33, 1, 3), (100, 2, -1), (17, 4, 2), (5, 2, -1), (130, 2, 2))
    for i, (M, mt, splits) in enumerate(cases):
        check_gpu(M, 4096, 4096, 128, i % 2 == 0, torch.bfloat16, seed=500 + i, path=path, splits=splits, m_tiles=mt)
    check_gpu(48, 192, 320, 64, False, torch.float16, seed=520, path=path, m_tiles=2)  # N % 128 == 64, K % 128 == 64


_M_TILES = "m_tiles must be -1 (by M), 1, 2, 4 or (path 5 only) 8, and path 6 takes only -1 or 8, got"


@pytest.mark.parametrize("knobs,message", [
    ((0, -1, 3), f"{_M_TILES} 3 for path 0"),
    ((3, -1, 8), f"{_M_TILES} 8 for path 3"),
    ((6, -1, 4), f"{_M_TILES} 4 for path 6"),
    ((-1, -1, 3), f"{_M_TILES} 3 for path -1"),
    ((7, -1, -1), "path must be -1 (choose_path) or 0-6"),
    ((4, -1, 2), "path 4 (stream_swap) takes at most 8 rows and one m-tile, got M=4, m_tiles=2"),
    ((0, 0, -1), "splits must be -1 (the launch plan) or >= 1, got 0"),
    ((-1, -1, -1), "gemm_path runs the CUDA kernels: x is on cpu"),
])
def test_gemm_path_bad_knobs_raise(knobs, message):
    """The forced-launch knobs are checked in Python before the extension is touched (a C++ error thrown
    through its binding has crashed torch 2.11's process, kernels/NOTES.md open issue 3): runs on CPU."""
    x, q, s, z = make_problem(4, 256, 512, 128, True, torch.bfloat16, "cpu", seed=1)
    with pytest.raises(ValueError, match=re.escape(message)):
        kernels.gemm_path(x, *kernels.pack_w4(q, s, z, 128), 128, *knobs)


def test_check_m_tiles_per_path():
    """The m_tiles knob per path (gemm_path checks an explicit path at once and the heuristic's path on the GPU,
    where choose_path can answer): 8 for paths 5 and 6 only, and path 6 takes nothing else."""
    for path in (0, 2, 3, 5):
        for mt in (-1, 1, 2, 4):
            kernels.check_m_tiles(path, mt)
    kernels.check_m_tiles(5, 8)
    kernels.check_m_tiles(6, 8)
    for path, mt in ((0, 8), (3, 8), (6, 1), (6, 2), (6, 4), (2, 3)):
        with pytest.raises(ValueError, match=re.escape(f"{_M_TILES} {mt} for path {path}")):
            kernels.check_m_tiles(path, mt)


def test_forced_wgmma_path_on_another_gpu_is_a_clear_error(monkeypatch):
    """LOWBIT_W4A16_PATH=5 or 6 where the GPU lacks wgmma: a ValueError from Python naming the GPU (runs on CPU: the
    capability query is stubbed), not the C++ op's exception."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    monkeypatch.setenv("LOWBIT_W4A16_PATH", "6")
    with pytest.raises(ValueError, match=re.escape("LOWBIT_W4A16_PATH=6 forces a wgmma kernel (wgmma_ws), which runs "
                                                   "on compute capability 9.0 (H100, H200) only; NVIDIA A100 has (8, 0)")):
        kernels._check_forced_path(torch.device("cuda"))
    monkeypatch.setenv("LOWBIT_W4A16_PATH", "3")
    kernels._check_forced_path(torch.device("cuda"))  # other paths run anywhere


@needs_cuda
def test_gpu_gemm_path_m_tiles_checked_against_the_heuristics_path():
    """gemm_path(path=-1, m_tiles=...) raises in Python when the path choose_path takes cannot use that m-tile count
    (M = 100 is path 6 on compute capability 9.0, 128-row m-blocks only), instead of in the C++ op."""
    x, q, s, z = make_problem(100, 256, 512, 128, True, torch.bfloat16, "cuda", seed=3)
    pw, sp, zp = kernels.pack_w4(q, s, z, 128)
    if kernels.choose_path(100, 256, 512) == "wgmma_ws":
        with pytest.raises(ValueError, match=re.escape(f"{_M_TILES} 2 for path 6 (choose_path's at M=100)")):
            kernels.gemm_path(x, pw, sp, zp, 128, -1, -1, 2)
    else:  # paths 1 and 3 take the knob (path 1 ignores it)
        assert_close(kernels.gemm_path(x, pw, sp, zp, 128, -1, -1, 2), x, q, s, z, 128, "M=100 m_tiles=2")


def _emulate_path4(x, pw, sp, zp, gs, N, splits_wanted):
    """Path 4 (the streaming kernel with SWAP) in Python, thread by thread as csrc/w4a16_kernel.cu computes it:
    plan_stream's k-tiles per warp and splits, the swizzled x staging and ldmatrix.x2 lane addresses (ar,
    a_half, a_off), the 16+q bit trick on the packed words, the weight A fragments and the mma.m16n8k16 maps,
    the group starts and the byte offsets of the fold's scale vectors, the fold, the shuffle back to the
    C = x W^T layout and the k-partial and split-K sums.  Returns y (M, N) in float64."""
    import numpy as np
    M, K = x.shape
    words = pw.contiguous().view(-1).numpy().astype(np.int64) & 0xFFFFFFFF
    S = sp.double().numpy()
    Z = zp.double().numpy() if zp is not None else None
    xf = x.double().numpy()
    k_tiles, n_tiles, G = K // 16, N // 64, K // gs
    tw = ((k_tiles + 4 * splits_wanted - 1) // (4 * splits_wanted) + 3) // 4 * 4  # as plan_stream
    splits = (k_tiles + 4 * tw - 1) // (4 * tw)
    gshift = 31 if gs == K else gs.bit_length() - 1
    fmask = min((1 << gshift) - 1, 127)
    rows, row_bytes = min(M, 16), tw * 4 * 32
    bf16 = lambda bits: float(np.array([bits << 16], dtype=np.uint32).view(np.float32)[0])  # noqa: E731
    lanes = range(32)
    y = np.zeros((M, N))
    for nb in range((N + 127) // 128):
        for split in range(splits):
            kx0 = split * 4 * tw * 16
            g0 = kx0 >> gshift
            smem = np.zeros(rows * row_bytes // 2)  # staged x, in elements: chunk c of row r at c ^ (r & 7)
            for r in range(rows):
                for ch in range(row_bytes // 16):
                    if kx0 + ch * 8 < K:
                        at = (r * row_bytes + ((ch ^ (r & 7)) << 4)) // 2
                        smem[at:at + 8] = xf[r, kx0 + ch * 8: kx0 + ch * 8 + 8]

            def staged(arr, byte_off):  # a staged scale/zero row: 128 channels of 2 bytes per group
                gi, c = divmod(byte_off // 2, 128)
                ok = g0 + gi < G and nb * 128 + c < N
                return arr[g0 + gi, nb * 128 + c] if ok else 0.0

            for wn in range(2):
                gt = nb * 2 + wn
                if gt >= n_tiles:
                    continue
                total = np.zeros((32, 8, 2))
                for wk in range(4):
                    wkt0 = wk * tw
                    ntiles = max(0, min(tw, k_tiles - split * 4 * tw - wkt0))
                    acc, ga, gx = np.zeros((32, 4, 4)), np.zeros((32, 4, 4)), np.zeros((32, 4))
                    ar = [min(lane & 7, rows - 1) for lane in lanes]
                    a_half = [(lane >> 3) & 1 for lane in lanes]
                    a_off = [[((2 * q + a_half[lane]) ^ (ar[lane] & 7)) << 4 for q in range(4)] for lane in lanes]
                    sv_off = [(wn * 8 + (lane >> 2)) * 16 for lane in lanes]
                    fold_ofs = [0] * 32

                    def fold():
                        for lane in lanes:
                            for j in range(8):
                                sc = staged(S, fold_ofs[lane] + 2 * j)
                                zc = staged(Z, fold_ofs[lane] + 2 * j) - 16 * sc if Z is not None else 0.0
                                for c in range(2):
                                    i, r = j >> 1, (j & 1) * 2 + c
                                    if Z is None:
                                        acc[lane, i, r] += sc * (ga[lane, i, r] - 24 * gx[lane, c])
                                    else:
                                        acc[lane, i, r] += sc * ga[lane, i, r] + zc * gx[lane, c]

                    for t0 in range(0, ntiles, 4):
                        for d in range(4):
                            t = t0 + d
                            kl = (wkt0 + t) << 4
                            gstart = (d & 1) == 0 and (t == 0 or (kl & fmask) == 0)
                            if gstart:
                                if t > 0:
                                    fold()
                                fold_ofs = [(kl >> gshift) * 256 + sv_off[lane] for lane in lanes]
                            addr = [ar[lane] * row_bytes + wkt0 * 32 + (t0 + (d & ~3)) * 32 + a_off[lane][d & 3]
                                    for lane in lanes]
                            B = np.zeros((16, 8))  # ldmatrix.x2: matrix m's row i from lane 8m + i's address
                            for lane in lanes:
                                for m in range(2):
                                    at = addr[8 * m + lane // 4] // 2 + 2 * (lane % 4)
                                    B[8 * m + 2 * (lane % 4): 8 * m + 2 * (lane % 4) + 2, lane // 4] = smem[at:at + 2]
                            A = np.zeros((4, 16, 16))
                            for lane in lanes:
                                w4 = ((gt * k_tiles + split * 4 * tw + wkt0 + t) * 32 + lane) * 4
                                b = [[None, None] for _ in range(8)]
                                for j in range(8):
                                    for h in range(2):  # and_or<kTopMask, kMagic16>(w << sh or w >> -sh)
                                        sh, w = 3 - 4 * ((j & 1) * 2 + h), int(words[w4 + (j >> 1)])
                                        v = ((w << sh if sh >= 0 else w >> -sh) & 0x00780078) | 0x41804180
                                        b[j][h] = (bf16(v & 0xFFFF), bf16(v >> 16))
                                g, tq = lane // 4, lane % 4
                                for i in range(4):
                                    wa = (b[2 * i][0], b[2 * i + 1][0], b[2 * i][1], b[2 * i + 1][1])
                                    for r, (row, col) in enumerate(((g, 2 * tq), (g + 8, 2 * tq), (g, 2 * tq + 8),
                                                                    (g + 8, 2 * tq + 8))):
                                        A[i, row, col], A[i, row, col + 1] = wa[r]

                            def frag(C):  # C (16, 8) -> per lane (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1)
                                return np.array([[C[lane // 4, 2 * (lane % 4)], C[lane // 4, 2 * (lane % 4) + 1],
                                                  C[lane // 4 + 8, 2 * (lane % 4)], C[lane // 4 + 8, 2 * (lane % 4) + 1]]
                                                 for lane in lanes])
                            for i in range(4):
                                ga[:, i] = (0 if gstart else ga[:, i]) + frag(A[i] @ B)
                            gx[:] = (0 if gstart else gx) + frag(np.ones((16, 16)) @ B)
                    if ntiles > 0:
                        fold()
                    for L in lanes:  # the shuffle: lane L takes row L/4, channels 8j + 2(L%4) + e
                        for j in range(8):
                            for e in range(2):
                                src = 4 * (2 * (L & 3) + e) + (L >> 3)
                                total[L, j, e] += acc[src, j >> 1, (j & 1) * 2 + ((L >> 2) & 1)]
                for L in lanes:
                    if L >> 2 < M:
                        for j in range(8):
                            for e in range(2):
                                y[L >> 2, gt * 64 + 8 * j + 2 * (L & 3) + e] += total[L, j, e]
    return y


@pytest.mark.parametrize("M,N,K,gs,sym,splits", [
    (1, 192, 320, 64, True, 1), (3, 128, 512, 32, False, 2), (8, 192, 1024, 128, True, 3),
    (5, 128, 384, 384, False, 1), (7, 64, 2048, 128, False, 1), (2, 128, 4096, 4096, True, 5)])
def test_path4_emulated(M, N, K, gs, sym, splits):
    """CPU desk check of path 4's addressing and fragment arithmetic (the GPU test below runs the kernel): bf16
    x times exact small integers and power-of-two-free scales, summed in float64, must match the float64 product
    to rounding (1e-9 relative), for odd N (N % 128 == 64), split K, every group kind, sym and zeros."""
    x, q, s, z = make_problem(M, N, K, gs, sym, torch.bfloat16, "cpu", seed=M * 7 + K + N)
    y = _emulate_path4(x, *kernels.pack_w4(q, s, z, gs), gs, N, splits)
    ref = oracle(x, q, s, z, gs)[0].numpy()
    assert abs(y - ref).max() <= 1e-9 * abs(ref).max()


def sweep_forced_path(path, ms, m_of_seed, sym, dtype, seed):
    """A forced path at every M of `ms` on a square and an odd shape (N % 128 == 64, K % 128 == 64), then at
    M = m_of_seed(seed) on every model shape x group size; returns the next seed."""
    for M in ms:
        for N, K in ((4096, 4096), (192, 320)):
            check_gpu(M, N, K, 64 if K % 128 else 128, sym, dtype, seed=seed, path=path)
            seed += 1
    for N, K, gs in shape_group_cases():
        check_gpu(m_of_seed(seed), N, K, gs, sym, dtype, seed=seed, path=path)
        seed += 1
    return seed


def _emulate_wgmma(x, pw, sp, zp, gs, N, NR, dtype, path):
    """Path 5 or 6 (csrc/w4a16_wgmma.cu, w4a16_wgmma_ws.cu) in Python, as their threads compute it: per CTA (m-block
    of NR rows, n-block of 128 channels) and 128-deep k-block, x staged chunk by chunk where the kernel puts chunk c
    of row r (half c / 8, 128-byte row r, chunk (c % 8) ^ (r % 8); both paths' tensor maps write this layout) and
    read back as wgmma's B through the descriptor (start: half kt / 4 plus 32 bytes per k-tile
    kt % 4; stride byte offset 1024; the PTX ISA's 128-byte-swizzle K-major layout ((8, m), (8, 2)):((64 elements,
    SBO), (1, 8)) with address bits 4-6 XORed by bits 7-9).  Each wgmma's A: warp q of the warpgroup supplies A rows
    16q .. 16q + 15 from one word (sub-tiles 2w, 2w + 1) of one n-tile of the CTA: path 5 issues two wgmma per k-tile
    (j = 0, 1) from the warpgroup that owns the k-tile's half (kt / 4), warp q taking word 2(q % 2) + j of n-tile
    q / 2; path 6 one per k-tile from each warpgroup wg, warp q taking word q of n-tile wg.  Nibble pair -> register
    {0, 2, 1, 3}, the scale and zero of the sub-tile from the lane's pair in the permuted vector, each weight rounded
    once to `dtype`, placed as the PTX ISA's m64nNk16 A layout puts them; the accumulator fragment (element 4i + 2v
    + u at A-row 16q + lane/4 + 8v, column 8i + 2(lane%4) + u) stored where the epilogue stores it (row, channel 64
    tile + 16 word + lane/4 + 8v) and summed over wgmma.  Returns y (M, N) in float64."""
    import numpy as np
    M, K = x.shape
    words = pw.contiguous().view(-1).numpy().astype(np.int64) & 0xFFFFFFFF
    S, Z = sp.double().numpy(), (zp.double().numpy() if zp is not None else None)
    xf = x.double().numpy()
    k_tiles, n_tiles = K // 16, N // 64
    kreg = (0, 2, 1, 3)
    # per k-tile, the wgmma issued: for each, warp q's (n-tile of the CTA, word)
    issues = ([[(q >> 1, 2 * (q & 1) + j) for q in range(4)] for j in range(2)] if path == 5 else
              [[(wg, q) for q in range(4)] for wg in range(2)])
    y = np.zeros((M, N))
    for mb in range((M + NR - 1) // NR):
        row0 = mb * NR
        for nb in range((N + 127) // 128):
            red = np.zeros((NR, 128))
            for kb in range((K + 127) // 128):
                xs = np.zeros(NR * 128)  # the stage's x, in 2-byte elements (the kernel's byte offsets / 2)
                for r in range(min(NR, M - row0)):
                    for c in range(16):
                        k = kb * 128 + c * 8
                        if k < K:
                            at = ((c >> 3) * (NR * 128) + r * 128 + (((c & 7) ^ (r & 7)) << 4)) // 2
                            xs[at:at + 8] = xf[row0 + r, k:k + 8]

                def swizzled(byte):  # the hardware's 128-byte swizzle on a 1024-byte-aligned atom
                    return byte ^ (((byte >> 7) & 7) << 4)

                for kt in range(8):
                    k = kb * 128 + kt * 16
                    if k >= K:
                        break
                    start, sbo = (kt >> 2) * (NR * 128) + (kt & 3) * 32, 1024  # bytes
                    B = np.array([[xs[swizzled(start + (n // 8) * sbo + (n % 8) * 128 + kk * 2) // 2]
                                   for kk in range(16)] for n in range(NR)])  # (NR, 16); kk * 2 < 32: one chunk pair
                    g = k // gs
                    for warps in issues:
                        A = np.zeros((64, 16))
                        for q, (tile, wd) in enumerate(warps):
                            nt = nb * 2 + tile
                            if nt >= n_tiles:
                                continue  # the kernel computes garbage rows there and never stores them
                            for lane in range(32):
                                word = int(words[((nt * k_tiles + k // 16) * 32 + lane) * 4 + wd])
                                for pr in range(4):
                                    sub = 2 * wd + (pr >> 1)  # the sub-tile of the nibble pair
                                    col = 64 * nt + (lane >> 2) * 8 + sub  # the lane's scale vector, element `sub`
                                    sc = S[g, col]
                                    for hh in range(2):
                                        qv = (word >> (4 * pr + 16 * hh)) & 0xF
                                        w = qv * sc + Z[g, col] if Z is not None else (qv - 8) * sc
                                        w = float(torch.tensor(w, dtype=torch.float64).to(dtype).double())
                                        ri = kreg[pr]
                                        A[16 * q + (lane >> 2) + 8 * (ri & 1), 2 * (lane & 3) + hh + 8 * (ri >> 1)] = w
                        D = A @ B.T  # (64, NR)
                        for q, (tile, wd) in enumerate(warps):
                            for lane in range(32):
                                for e in range(NR // 2):
                                    i, v, u = e >> 2, (e >> 1) & 1, e & 1
                                    val = D[16 * q + (lane >> 2) + 8 * v, 8 * i + 2 * (lane & 3) + u]
                                    row, ch = 8 * i + 2 * (lane & 3) + u, 64 * tile + 16 * wd + (lane >> 2) + 8 * v
                                    red[row, ch] += val
            rows, cols = min(NR, M - row0), min(128, N - nb * 128)
            y[row0:row0 + rows, nb * 128:nb * 128 + cols] = red[:rows, :cols]
    return y


@pytest.mark.parametrize("M,N,K,gs,sym,NR,path", [
    (5, 192, 320, 64, True, 16, 5), (20, 128, 256, 128, False, 32, 5), (40, 192, 320, 32, False, 32, 5),
    (33, 64, 192, 192, True, 64, 5), (70, 128, 256, 64, False, 128, 5),
    (5, 192, 320, 64, False, 128, 6), (130, 64, 192, 192, True, 128, 6), (70, 128, 256, 32, False, 128, 6),
])
def test_wgmma_emulated(M, N, K, gs, sym, NR, path):
    """The wgmma kernels' fragment and layout algebra (not the hardware): emulated lane by lane against float64 with
    the same 16-bit-rounded weights, on shapes with N % 128 == 64, K % 128 == 64, several m-blocks, every kind of
    group and both weight forms."""
    x, q, s, z = make_problem(M, N, K, gs, sym, torch.bfloat16, "cpu", seed=M * 7 + N)
    pw, sp, zp = kernels.pack_w4(q, s, z, gs)
    y = _emulate_wgmma(x, pw, sp, zp, gs, N, NR, torch.bfloat16, path)
    w = dequantize(q, s, z, gs, dtype=None).to(torch.bfloat16).double()  # each weight rounded once, as the kernel
    want = (x.double() @ w.t()).numpy()
    assert abs(y - want).max() <= 1e-9 * max(1.0, abs(want).max()), abs(y - want).max()


needs_sm90 = pytest.mark.skipif(not (CUDA and torch.cuda.get_device_capability() == (9, 0)),
                                reason="path 5 (wgmma) needs a GPU of compute capability 9.0")


@needs_sm90
@pytest.mark.parametrize("path", [5, 6])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("sym", [True, False])
def test_gpu_wgmma(sym, dtype, path):
    """Paths 5 and 6, forced: the M sweep on a square and an odd shape (N % 128 == 64, K % 128 == 64), every model
    shape x group at M = 17..64 (path 5) or 65..300 (path 6), the m-block sizes (path 5: 16/32/64/128 rows; path 6:
    128) and split-K counts forced; poisoned outputs, bitwise repeats."""
    m_of_seed = (lambda seed: 17 + seed % 48) if path == 5 else (lambda seed: 65 + seed % 236)
    seed = sweep_forced_path(path, M_SWEEP, m_of_seed, sym, dtype, seed=7000)
    cases = (((40, 1, -1), (40, 2, 3), (40, 4, -1), (64, 4, 1), (100, 4, 2), (5, 1, 7), (100, 8, -1), (128, 8, 3),
              (20, 8, -1)) if path == 5 else
             ((1, 8, -1), (40, 8, 3), (100, -1, 2), (128, 8, 1), (129, -1, -1), (300, -1, 5), (5, -1, 7)))
    for M, mt, splits in cases:
        check_gpu(M, 4096, 4096, 128, sym, dtype, seed=seed, path=path, splits=splits, m_tiles=mt)
        seed += 1


@needs_sm90
@pytest.mark.parametrize("path", [5, 6])
def test_gpu_wgmma_correctly_rounded_and_graph_replay(path):
    """The wgmma kernels' bf16 outputs equal the correctly rounded product of their (bf16-rounded) weights for >= 99%
    of the outputs, as test_gpu_outputs_correctly_rounded asks of the other paths; and they replay in a CUDA graph."""
    N, K, gs = 4096, 4096, 128
    ext = kernels.load_extension()
    for i, M in enumerate((17, 32, 33, 64, 65, 128)):
        x, q, s, z = make_problem(M, N, K, gs, i % 2 == 0, torch.bfloat16, "cuda", seed=400 + i)
        pw, sp, zp = kernels.pack_w4(q, s, z, gs)
        y = ext.gemm_path(x, pw, sp, zp, gs, path, -1).double()
        w = dequantize(q, s, z, gs, dtype=None).to(torch.bfloat16).double()
        want = (x.double() @ w.t()).to(torch.bfloat16).double()
        share = (y == want).double().mean().item()
        assert share >= 0.99, f"M={M}: only {100 * share:.2f}% of the outputs are correctly rounded"
    check_graph_replays(path, seed=450)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("sym", [True, False])
def test_gpu_swapped_operands(sym, dtype):
    """Path 4 (the register-ring streaming kernel with the weights as the mma's A operand and x as B, M <= 8):
    every M it takes on a square and an odd shape, then every model shape x group size at M in 1..8."""
    sweep_forced_path(4, (1, 2, 3, 5, 7, 8), lambda seed: 1 + seed % 8, sym, dtype, seed=6000)


@needs_cuda
@pytest.mark.parametrize("path", [2, 3])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("sym", [True, False])
def test_gpu_stream_kernel(sym, dtype, path):
    """The streaming kernel (path 2: register ring; 3: shared-memory ring) on its own: every M of the sweep
    on a square and an odd shape, then every model shape x group size at the M values that pick each m-tile
    count (1, 2 and 4 m16 tiles)."""
    for i, M in enumerate(M_SWEEP):
        for N, K in ((4096, 4096), (192, 320)):
            check_gpu(M, N, K, 64 if K % 128 else 128, sym, dtype, seed=3000 + i, path=path)
    seed = 4000
    for N, K, gs in shape_group_cases():
        for M in (1, 5, 16, 17, 33):
            seed += 1
            check_gpu(M, N, K, gs, sym, dtype, seed, path=path)


@needs_cuda
@pytest.mark.parametrize("sym", [True, False])
def test_opcheck_cuda(sym):
    x, q, s, z = make_problem(5, 256, 512, 128, sym, torch.bfloat16, "cuda", seed=9)
    pw, sp, zp = kernels.pack_w4(q, s, z, 128)
    kernels.load_extension()
    torch.library.opcheck(torch.ops.lowbit.w4a16_gemm.default, (x, pw, sp, zp, 128))


def check_graph_replays(path, seed):
    """Capture one call of `path` (-1: the public op) in a CUDA graph, replay it on fresh inputs: split-K
    counters must be back at zero after every launch.  Returns the problem for further checks."""
    M, N, K, gs = 3, 4096, 4096, 128
    x, q, s, z = make_problem(M, N, K, gs, False, torch.bfloat16, "cuda", seed=seed)
    pw, sp, zp = kernels.pack_w4(q, s, z, gs)
    ext = kernels.load_extension()
    if path < 0:
        call = lambda t: kernels.w4a16_gemm(t, pw, sp, zp, gs)  # noqa: E731
    else:
        call = lambda t: ext.gemm_path(t, pw, sp, zp, gs, path)  # noqa: E731
    call(x)  # warm-up outside capture
    static_x = x.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = call(static_x)
    for it in range(3):
        xi = torch.randn(M, K, device="cuda").to(torch.bfloat16)
        static_x.copy_(xi)
        graph.replay()
        torch.cuda.synchronize()
        assert_close(static_y, xi, q, s, z, gs, f"path {path}: graph replay {it}")
        assert torch.equal(static_y, call(xi))
    return x, call


@needs_cuda
def test_cuda_graph_replay_and_compile():
    """Split-K counters must reset between replays; compiled fullgraph must call the kernel."""
    x, call = check_graph_replays(-1, seed=21)
    f = torch.compile(call, fullgraph=True)
    assert torch.equal(f(x), call(x))


@needs_cuda
@pytest.mark.parametrize("path", [2, 3, 4])
def test_stream_kernel_graph_replay(path):
    """The streaming kernel (both rings, and swapped operands: M = 3) under CUDA-graph replays."""
    check_graph_replays(path, seed=22)


@needs_cuda
@pytest.mark.parametrize("case", range(11))
def test_bad_inputs_cuda(case):
    name, args, msg = _bad_cases("cuda")[case]
    with pytest.raises((ValueError, TypeError, RuntimeError), match=msg.replace("(", r"\(").replace(")", r"\)")):
        kernels.w4a16_gemm(*args)
        torch.cuda.synchronize()


@needs_cuda
def test_first_split_call_inside_cudagraph_trees():
    """A fresh process whose FIRST split-K call runs inside torch.compile's CUDA-graph warm-up (as in
    `generate.py --quant int4-marlin --batch 32`, whose prefill dequantizes and never splits K):
    the op's persistent counters must not come from the graph's memory pool (that raised "tensor in
    the cudagraph pool not tracked as outputs"), and the replayed results must match the reference."""
    import subprocess
    import sys
    code = """
import torch, kernels, sys
sys.path.insert(0, 'tests')
from test_kernels import make_problem, assert_close
kernels.load_extension()  # loads only: no op call before the compiled function's warm-up
x, q, s, z = make_problem(32, 4096, 4096, 128, False, torch.bfloat16, 'cuda', 3)
pw, sp, zp = kernels.pack_w4(q, s, z, 128)
f = torch.compile(lambda a: torch.ops.lowbit.w4a16_gemm(a, pw, sp, zp, 128) * 1.0, mode='reduce-overhead',
                  fullgraph=True)
for _ in range(4):
    y = f(x).clone()
torch.cuda.synchronize()
assert_close(y, x, q, s, z, 128, 'graph-trees first call')
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=str(kbuild.REPO), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


@needs_cuda
@pytest.mark.parametrize("pdl", ["0", "1"])
def test_gpu_chained_calls_in_a_graph(pdl):
    """Programmatic dependent launch: each kernel may start before the previous one ends and must not read
    x (or write anything) until that one has finished.  A chain op -> op -> elementwise -> op -> op over
    every path (split-K and not), captured in one CUDA graph and replayed on fresh inputs, must equal the
    same chain run call by call with a synchronisation after each (bitwise), with LOWBIT_W4A16_PDL on and
    off (on: sm_90+ only, below it the two runs would be the same)."""
    import os
    import subprocess
    import sys
    if pdl == "1" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs compute capability 9.0+")
    code = """
import torch, kernels, sys
sys.path.insert(0, 'tests')
from test_kernels import make_problem
ext = kernels.load_extension()
torch.manual_seed(0)
layers = []
for i, (N, K) in enumerate([(2048, 1024), (1024, 2048), (3072, 1024), (1024, 3072)]):
    x, q, s, z = make_problem(1, N, K, 128, i % 2 == 0, torch.bfloat16, 'cuda', 40 + i)
    layers.append(kernels.pack_w4(q, s, z, 128))
for M in (1, 8, 33, 200):
    for path in (-1, 0, 1, 2, 3) + ((4,) if M <= 8 else ()):
        def chain(t, sync):
            outs = []
            for i, (pw, sp, zp) in enumerate(layers):
                t = ext.gemm_path(t, pw, sp, zp, 128, path)
                if sync: torch.cuda.synchronize()
                if i == 1:
                    t = t * 0.5  # an elementwise kernel between two of ours
                    if sync: torch.cuda.synchronize()
                outs.append(t)
            return outs
        x0 = torch.randn(M, 1024, device='cuda').to(torch.bfloat16)
        chain(x0, True)  # warm-up (counters) outside the capture
        static_x = x0.clone()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            static_outs = chain(static_x, False)
        for it in range(3):
            xi = torch.randn(M, 1024, device='cuda').to(torch.bfloat16)
            static_x.copy_(xi)
            g.replay()
            torch.cuda.synchronize()
            ref = chain(xi, True)
            for a, b in zip(static_outs, ref):
                assert torch.equal(a, b), f'M={M} path={path} replay {it}'
print('ok')
"""
    env = dict(os.environ, LOWBIT_W4A16_PDL=pdl)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(kbuild.REPO), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
