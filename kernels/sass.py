"""Issued instructions per k-block in the wgmma kernels' main loops (paths 5 and 6), read from the SASS of the built
extension: no GPU needed, only nvcc and cuobjdump (kernels/build.py find_cuobjdump).

    python kernels/sass.py   # a markdown table, one row per instantiation (path, dtype, rows per m-block, zeros)

Why: with two warps per scheduler the kernel's time per k-block follows the length of each warp's instruction
stream (kernels/NOTES.md v13: 621 -> 366 instructions per k-block at 128 rows took M = 128 from 226 to 164 us on an
H100), so this count is the first thing to check after a change, before any device time.  In path 6 the count is
a consumer warp's (its producer warp issues the copies).

How: one iteration of the main loop issues one commit group of wgmma (HGMMA in SASS); the loop runs two iterations
per trip, so the distance between the first HGMMA of one group and the next is one k-block's instructions.  The
pipe classes are approximate (from the opcode alone): alu = integer/logic ops that run on the ALU pipe, fma =
IMAD and the float/half arithmetic, shared = LDS/STS, global = cp.async and its waits, other = branches,
barriers, uniform-register moves and constant loads.
"""
from __future__ import annotations

import collections
import os
import re
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kernels.build import find_cuobjdump, load_extension  # noqa: E402

PIPES = {
    "alu": ("LOP3", "SHF", "PRMT", "ISETP", "SEL", "LEA", "IADD3", "VIADD", "VIADDMNMX", "FSEL", "PLOP3", "MOV",
            "CS2R", "SGXT", "BMSK", "P2R", "R2P", "ISCADD", "IABS", "IMNMX", "FLO", "POPC"),
    "fma": ("IMAD", "FFMA", "FADD", "FMUL", "HADD2", "HMUL2", "HFMA2", "FMNMX"),
    "shared": ("LDS", "STS", "LDSM", "ATOMS"),
    "global": ("LDG", "STG", "LDGSTS", "LDGDEPBAR", "DEPBAR", "RED", "ATOMG"),
    "tensor": ("HGMMA", "WARPGROUP"),
}
_PIPE_OF = {op: pipe for pipe, ops in PIPES.items() for op in ops}
_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")
# path 5: w4a16_wgmma_kernel<T, NR, HAS_Z>; path 6: w4a16_wgmma_ws_kernel<T, HAS_Z> (128 rows)
_KERNEL = re.compile(r"w4a16_wgmma_(ws_)?kernelI\d+(__nv_bfloat16|__half)(?:Li(\d+)E)?Lb([01])E")


def disassemble(so: str) -> dict[str, list[str]]:
    """{mangled function name: [opcode of each instruction, in address order]} for every kernel in `so`."""
    found = find_cuobjdump()
    if found is None:
        raise RuntimeError("cuobjdump not found: install nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm "
                           "(requirements-dev.txt) or put the CUDA toolkit's bin folder on PATH")
    tool, env = found
    out = subprocess.run([tool, "-sass", so], capture_output=True, text=True, timeout=600, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"cuobjdump -sass {so} failed: {out.stderr[-2000:]}")
    funcs: dict[str, list[str]] = {}
    ops: list[str] | None = None
    for line in out.stdout.splitlines():
        if "Function :" in line:
            ops = funcs.setdefault(line.split("Function :")[1].strip(), [])
        elif ops is not None and (m := _INSN.search(line)):
            ops.append(m.group(2))
    return funcs


def kblock_stats(ops: list[str]) -> dict | None:
    """Instructions per k-block of one wgmma kernel (see the module docstring), or None without two groups."""
    hgmma = [i for i, op in enumerate(ops) if op == "HGMMA"]
    starts = [i for j, i in enumerate(hgmma) if j == 0 or i - hgmma[j - 1] > 32]  # first HGMMA of each group
    if len(starts) < 2:
        return None
    per_kblock = statistics.median(b - a for a, b in zip(starts, starts[1:]))
    window = ops[starts[0]:starts[1]]  # one k-block: the first group's issue up to the next group's
    pipes = collections.Counter(_PIPE_OF.get(op, "other") for op in window)
    return {"instructions": int(per_kblock), "window": len(window), **{p: pipes[p] for p in (*PIPES, "other")},
            "top": collections.Counter(window).most_common(6)}


def table(funcs: dict[str, list[str]]) -> list[str]:
    rows = []
    for name, ops in funcs.items():
        m = _KERNEL.search(name)
        if not m or (st := kblock_stats(ops)) is None:
            continue
        dtype = "bf16" if m.group(2) == "__nv_bfloat16" else "fp16"
        path, nr = (6, 128) if m.group(1) else (5, int(m.group(3)))
        rows.append(((path, dtype, nr, m.group(4) == "1"), st))
    rows.sort()
    lines = ["| path | dtype | rows (NR) | zeros | instructions per k-block | alu | fma | shared | global | tensor "
             "| other | most issued |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (path, dtype, nr, z), st in rows:
        top = ", ".join(f"{op} {n}" for op, n in st["top"])
        lines.append(f"| {path} | {dtype} | {nr} | {'yes' if z else 'no'} | {st['instructions']} | {st['alu']} "
                     f"| {st['fma']} | {st['shared']} | {st['global']} | {st['tensor']} | {st['other']} | {top} |")
    return lines


def main() -> int:
    so = load_extension().__file__
    lines = table(disassemble(so))
    if len(lines) == 2:
        print(f"no wgmma kernel with a main loop found in {so} (built for a target without wgmma?)")
        return 1
    print(f"Issued instructions per k-block, paths 5 and 6 (the wgmma kernels), from the SASS of "
          f"{os.path.basename(so)}:\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
