"""Tensor parallelism on CPU: 2 ranks over gloo give the single-process logits and greedy tokens."""
import json
import os
import re
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from checkpoint import load_model, save_checkpoint
from conftest import ROOT
from generate import Generator, decode_step, prefill
from test_model import tiny_model
from tp import check_groups, init_distributed, shard_model

PROMPTS = [[3, 1, 4, 1, 5], [9, 2, 6]]
CASES = {  # name: (model overrides, dtype, quantization scheme)
    "float32": ({"ffn_dim": 128}, torch.float32, None),
    "bfloat16": ({"ffn_dim": 128}, torch.bfloat16, None),
    "gqa-replicated-kv": ({"ffn_dim": 128, "n_kv_heads": 1}, torch.float32, None),
    "int4-g32-asym": ({"ffn_dim": 128}, torch.float32, "int4-g32-asym"),
}


def build(case, rank=0, world=1):
    over, dtype, scheme = CASES[case]
    m = tiny_model(**over).to(dtype)
    if world > 1:
        shard_model(m, rank, world)
    if scheme:
        from quantize import quantize_
        check_groups(m, 32)
        quantize_(m, scheme)
    return m


@torch.no_grad()
def logits_and_tokens(m):
    m.setup_caches(1, 16)
    logits = m(torch.tensor([PROMPTS[0]]), torch.arange(5), torch.zeros(1, dtype=torch.long))
    tokens = Generator(m, compile=False)(PROMPTS, 8, set(), 0, show_progress=False)["tokens"]
    return logits, tokens


def close_group():
    """Both ranks leave together: a rank that tore gloo down while its peer was still finishing died of "terminate
    called without an active exception" (SIGABRT) in 1 of ~15 CPU runs (CI and here, 2026-12-07)."""
    dist.barrier()
    dist.destroy_process_group()


def _worker(rank, world, port, case, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    assert init_distributed("cpu") == (rank, world)
    logits, tokens = logits_and_tokens(build(case, rank, world))
    if rank == 0:
        torch.save({"logits": logits, "tokens": tokens}, out_path)
    close_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_match_one_process(case, tmp_path):
    ref_logits, ref_tokens = logits_and_tokens(build(case))
    mp.spawn(_worker, args=(2, free_port(), case, tmp_path / "r0.pt"), nprocs=2, join=True)
    got = torch.load(tmp_path / "r0.pt")
    tol = 2e-2 if CASES[case][1] == torch.bfloat16 else 1e-5
    torch.testing.assert_close(got["logits"], ref_logits, rtol=tol, atol=tol)
    if CASES[case][1] == torch.float32:
        assert got["tokens"] == ref_tokens


def _compiled_worker(rank, world, port, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    init_distributed("cpu")
    m = build("float32", rank, world)
    with torch.no_grad():
        gen = Generator(m, compile=True, compile_once=True)  # what generate.py runs on CUDA by default
        gen.prefill = torch.compile(prefill, backend="aot_eager", dynamic=False, fullgraph=True)  # as Generator's
        gen.decode = torch.compile(decode_step, backend="aot_eager", fullgraph=True)
        tokens = gen(PROMPTS, 6, set(), 0, show_progress=False)["tokens"]
    if rank == 0:
        torch.save(tokens, out_path)
    close_group()


def test_two_ranks_compiled_once_match_eager(tmp_path):
    """--compile-once (the CUDA default) with sharded layers: the all-reduce hooks trace inside the one-layer
    compile region under fullgraph (aot_eager: tracing without code generation), same tokens as eager."""
    want = Generator(build("float32"), compile=False)(PROMPTS, 6, set(), 0, show_progress=False)["tokens"]
    mp.spawn(_compiled_worker, args=(2, free_port(), tmp_path / "r0.pt"), nprocs=2, join=True)
    assert torch.load(tmp_path / "r0.pt") == want


def test_split_that_cuts_a_group_is_refused():
    m = shard_model(tiny_model(ffn_dim=96), 0, 2, reduce=False)  # w2: K = 48 per rank
    with pytest.raises(ValueError, match="w2 with K = 48 per rank, not a multiple of the quantization group 32"):
        check_groups(m, 32)


def test_load_model_refuses_a_shard_that_cuts_a_group():
    """load_model checks the shard against the scheme's group before any weight exists (generate.py, eval/bench.py)."""
    with pytest.raises(ValueError, match="leaves wo with K = 64 per rank, not a multiple of the quantization group 128"):
        load_model("tiny", device="cpu", dtype=torch.float32, random_weights=True, quantize="int4-g128-asym",
                   shard=lambda m: shard_model(m, 0, 2, reduce=False))


def test_uneven_heads_are_refused():
    with pytest.raises(ValueError, match="n_heads = 4 is not divisible by 3"):
        shard_model(tiny_model(), 0, 3, reduce=False)


def test_torchrun_generate_matches_single_process(tmp_path):
    """The CLI under torchrun (2 CPU ranks, gloo): same greedy rows as one process, reported once."""
    save_checkpoint(tmp_path / "tiny.pt", tiny_model(ffn_dim=128), None)
    flags = ["--model", str(tmp_path / "tiny.pt"), "--batch", "2", "--prompt-len", "6", "--max-new-tokens", "6",
             "--quant", "int4-g32-asym"]
    one = subprocess.run([sys.executable, "generate.py", *flags], cwd=ROOT, capture_output=True, text=True, timeout=300)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "generate.py", *flags], cwd=ROOT, capture_output=True, text=True, timeout=300)
    # a failing rank's own error comes first in stderr, torchrun's summary last
    assert one.returncode == 0 and two.returncode == 0, one.stderr[-2000:] + two.stderr[:3000] + two.stderr[-1500:]
    rows = lambda out: [line for line in out.splitlines() if line.startswith("row ")]  # noqa: E731
    assert rows(two.stdout) == rows(one.stdout) and len(rows(one.stdout)) == 2
    assert "tensor parallel: ranks" in two.stdout and two.stdout.count("decode tokens/s total") == 1
    # the all-reduce timing is a collective (every rank takes part: rank 0 alone hung on GPUs) and is reported
    assert re.search(r"tensor parallel: ranks, all-reduce per step\W+2, \d+\.\d{3} ms", two.stdout), two.stdout
    said = lambda out: out.count("quantizing to int4-g32-asym block by block")  # noqa: E731 - the loading step's line
    assert said(one.stdout + one.stderr) == 2 and said(two.stdout + two.stderr) == 2, "only rank 0 reports it"


def test_torchrun_bench_smoke(tmp_path):
    """eval/bench.py under torchrun (2 CPU ranks, gloo): every cell on both ranks, with the all-reduce time; rank 0
    alone prints the table and writes the files.  int4-marlin at g64: the smoke's default g128 would cut the
    tiny model's groups at 2 ranks, which check_groups refuses."""
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "eval/bench.py",
                          "--smoke", "--repeats", "1", "--quant", "none,int8,int4-marlin-g64-asym", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["meta"]["world_size"] == 2 and len(data["rows"]) == 6  # 3 schemes x batch 1, 3
    assert all(r["world_size"] == 2 and r["all_reduce_s_per_step"] > 0 for r in data["rows"])
    assert two.stdout.count("| scheme |") == 3  # one markdown (tokens/s, bandwidth, all-reduce tables), from rank 0
    assert "tensor parallel over 2 ranks" in (tmp_path / "bench.md").read_text()
