"""Tensor parallelism over the GPUs of one host: `torchrun --nproc-per-node N generate.py ...`.

Megatron-style split of every decoder layer, as gpt-fast's tp.py does:
- column-parallel wqkv (each rank keeps its query heads and the KV heads they read) and w13 (its slice of
  the gate rows and the same slice of the up rows);
- row-parallel wo and w2 (the matching input columns), followed by one all-reduce (sum) each, done by a
  forward hook on Attention and FeedForward, with the traceable functional collective so the decode step
  still compiles with fullgraph=True and CUDA graphs;
- KV heads split across ranks; with fewer KV heads than ranks a KV head is replicated on every rank whose
  query heads read it;
- embedding, norms and the output head replicated (every rank computes the full logits, so every rank
  samples the same token from the same seed without a broadcast).

Quantization happens after sharding, on each rank's slices. Groups run along K, so a row-parallel slice
must hold whole groups: `check_groups` refuses a split that would cut one.
"""
import atexit
import os
import time

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn as nn

from model import Transformer

# Multicast over NVLink can take the host's GPUs out of service (device guide): keep it off everywhere.
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def init_distributed(device_type: str) -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) without it. NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    for k, v in SAFE_ENV.items():
        os.environ.setdefault(k, v)
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        # Tear the group down before the interpreter does: a rank that returned early (only rank 0 reports) and
        # left it to the destructors died of "terminate called without an active exception" (SIGABRT) in about 1
        # of 4 CPU runs of tests/test_tp.py's torchrun test, 2026-12-05.  Local, no collective: safe whatever the
        # other ranks are doing.
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return dist.get_rank(), dist.get_world_size()


def _split(n: int, world: int, what: str) -> int:
    if n % world:
        raise ValueError(f"tensor parallelism over {world} ranks: {what} = {n} is not divisible by {world}")
    return n // world


def _keep(linear: nn.Linear, rows=None, cols=None):
    """Keep the listed row ranges (output features) or one column range (input features) of `linear`."""
    w = linear.weight
    if rows is not None:
        w = torch.cat([w[a:b] for a, b in rows])  # (sum of range lengths, K)
    if cols is not None:
        w = w[:, cols[0]:cols[1]]  # (N, K / world)
    linear.weight = nn.Parameter(w.contiguous(), requires_grad=False)
    linear.out_features, linear.in_features = w.shape


def _all_reduce_output(module, inputs, output):
    return funcol.all_reduce(output, "sum", dist.group.WORLD)


def shard_model(model: Transformer, rank: int, world: int, reduce: bool = True) -> Transformer:
    """Keep rank `rank`'s share of every layer of `model` (real or meta tensors), in place.

    reduce=False leaves out the all-reduce hooks (tests that emulate ranks in one process sum themselves).
    """
    a = model.args
    if any(type(m) is not nn.Linear for layer in model.layers for m in (layer.attention.wqkv, layer.feed_forward.w2)):
        raise ValueError("tensor parallelism needs float weights: load a float model and quantize on the fly "
                         "with --quant (quantization then runs on each rank's slices)")
    D, rep = a.head_dim, a.n_heads // a.n_kv_heads
    heads = _split(a.n_heads, world, "n_heads")
    ffn = _split(a.ffn_dim, world, "ffn_dim")
    q0 = rank * heads  # first query head of this rank
    kv0, kv1 = q0 // rep, (q0 + heads - 1) // rep + 1  # the KV heads its query heads read
    kv_heads = kv1 - kv0
    if heads % kv_heads or any((q0 + i) // rep - kv0 != i // (heads // kv_heads) for i in range(heads)):
        raise ValueError(f"tensor parallelism over {world} ranks cannot split {a.n_heads} query heads "
                         f"over {a.n_kv_heads} KV heads evenly")
    qkv_rows = [(q0 * D, (q0 + heads) * D)]
    for base in (a.n_heads * D, (a.n_heads + a.n_kv_heads) * D):  # k rows, then v rows
        qkv_rows.append((base + kv0 * D, base + kv1 * D))
    for layer in model.layers:
        att, ff = layer.attention, layer.feed_forward
        _keep(att.wqkv, rows=qkv_rows)
        _keep(att.wo, cols=(q0 * D, (q0 + heads) * D))
        att.n_heads, att.n_kv_heads = heads, kv_heads
        _keep(ff.w13, rows=[(rank * ffn, (rank + 1) * ffn), (a.ffn_dim + rank * ffn, a.ffn_dim + (rank + 1) * ffn)])
        _keep(ff.w2, cols=(rank * ffn, (rank + 1) * ffn))
        if reduce:
            att.register_forward_hook(_all_reduce_output)
            ff.register_forward_hook(_all_reduce_output)
    model.tp = (rank, world)
    return model


def check_groups(model: Transformer, group_size: int | None):
    """Refuse a quantization group that a row-parallel slice would cut (its K is not a multiple)."""
    if not group_size or getattr(model, "tp", (0, 1))[1] == 1:
        return
    layer = model.layers[0]
    for name, lin in (("wo", layer.attention.wo), ("w2", layer.feed_forward.w2)):
        if lin.in_features % group_size:
            raise ValueError(f"tensor parallelism over {model.tp[1]} ranks leaves {name} with K = {lin.in_features} "
                             f"per rank, not a multiple of the quantization group {group_size}: a group would be "
                             "cut; use a smaller group or fewer ranks")


def all_reduce_seconds(batch: int, dim: int, dtype, device, calls_per_step: int, iters: int = 50) -> float:
    """Time of the all-reduces of one decode step, measured alone: `calls_per_step` all-reduces of a
    (batch, 1, dim) tensor, median of `iters` timed calls (CUDA events on a GPU, the wall clock on CPU, where
    gloo's all-reduce returns when done).  A collective: every rank must call it."""
    x = torch.zeros(batch, 1, dim, dtype=dtype, device=device)  # the values do not change the time; zeros stay finite
    times = []
    for _ in range(iters + 5):
        if x.is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dist.all_reduce(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            dist.all_reduce(x)
            times.append(time.perf_counter() - t0)
    return sorted(times[5:])[iters // 2] * calls_per_step
