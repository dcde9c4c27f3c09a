"""Issued instructions per k-block in the wgmma kernels' main loops (paths 5 and 6), read from the SASS of the built
extension: no GPU needed, only nvcc and cuobjdump (kernels/build.py find_cuobjdump).

    python kernels/sass.py   # a markdown table, one row per instantiation (path, dtype, rows per m-block, zeros)

Why: with two warps per scheduler the kernel's time per k-block follows the length of each warp's instruction
stream (kernels/NOTES.md v13: 621 -> 366 instructions per k-block at 128 rows took M = 128 from 226 to 164 us on an
H100), so this count is the first thing to check after a change, before any device time.  In path 6 the count is
a consumer warp's (its producer warp issues the copies).

How: one iteration of the main loop issues one commit group of wgmma (HGMMA in SASS); the loop runs two iterations
per trip, so the distance between the first HGMMA of one group and the next is one k-block's instructions.  Code
that only the copy-issuing lanes run (path 5 since v22: a forward branch over bulk copies, UBLKCP or UTMALDG, and
nothing that every thread runs: cp.async, barriers, wgmma) is left out of that count and reported beside it as
"issuer code" (its static length: the issuing warps run part of it on top of the count).  The pipe classes are
approximate (from the opcode alone): alu = integer/logic ops that run on the ALU pipe, fma = IMAD and the
float/half arithmetic, shared = LDS/STS, global = cp.async and its waits, other = branches, barriers (mbarrier
waits included), uniform-register moves and constant loads.
"""
from __future__ import annotations

import collections
import dataclasses
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
_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)([^;]*)")
_TARGET = re.compile(r"\b0x([0-9a-f]+)\b")
# path 5: w4a16_wgmma_kernel<T, NR, HAS_Z>; path 6: w4a16_wgmma_ws_kernel<T, HAS_Z> (128 rows)
_KERNEL = re.compile(r"w4a16_wgmma_(ws_)?kernelI\d+(__nv_bfloat16|__half)(?:Li(\d+)E)?Lb([01])E")


@dataclasses.dataclass(frozen=True)
class Insn:
    op: str          # opcode without modifiers: "HGMMA", "BRA", ...
    addr: int = -1   # byte address in the function
    target: int = -1  # a branch's target address, else -1


def disassemble(so: str) -> dict[str, list[Insn]]:
    """{mangled function name: its instructions in address order} for every kernel in `so`."""
    found = find_cuobjdump()
    if found is None:
        raise RuntimeError("cuobjdump not found: install nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm "
                           "(requirements-dev.txt) or put the CUDA toolkit's bin folder on PATH")
    tool, env = found
    out = subprocess.run([tool, "-sass", so], capture_output=True, text=True, timeout=600, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"cuobjdump -sass {so} failed: {out.stderr[-2000:]}")
    funcs: dict[str, list[Insn]] = {}
    insns: list[Insn] | None = None
    for line in out.stdout.splitlines():
        if "Function :" in line:
            insns = funcs.setdefault(line.split("Function :")[1].strip(), [])
        elif insns is not None and (m := _INSN.search(line)):
            op = m.group(2).split(".")[0]
            t = _TARGET.search(m.group(3)) if op == "BRA" else None
            insns.append(Insn(op, int(m.group(1), 16), int(t.group(1), 16) if t else -1))
    return funcs


_BULK = {"UBLKCP", "UTMALDG"}             # bulk copies and tensor-map copies: issued by one lane
_EVERY_THREAD = {"LDGSTS", "BAR", "HGMMA"}  # cp.async, CTA barriers, wgmma: run by every thread


def issuer_only(window: list[Insn]) -> set[int]:
    """Indices (in `window`) of the code that only copy-issuing lanes run: the outermost forward branches whose
    skipped range holds a bulk or tensor-map copy and nothing every thread runs (cp.async, a CTA barrier, wgmma)."""
    at = {ins.addr: i for i, ins in enumerate(window)}
    regions = []
    for b, ins in enumerate(window):
        t = at.get(ins.target, -1)
        if ins.op == "BRA" and t > b + 1:
            ops = {w.op for w in window[b + 1:t]}
            if ops & _BULK and not ops & _EVERY_THREAD:
                regions.append((b + 1, t))
    skipped: set[int] = set()
    for lo, hi in regions:
        if not any(lo2 <= lo and hi <= hi2 and (lo2, hi2) != (lo, hi) for lo2, hi2 in regions):
            skipped.update(range(lo, hi))
    return skipped


def kblock_stats(insns: list[Insn]) -> dict | None:
    """Instructions per k-block of one wgmma kernel for a warp that issues no copies (see the module docstring),
    or None without two groups."""
    hgmma = [i for i, ins in enumerate(insns) if ins.op == "HGMMA"]
    starts = [i for j, i in enumerate(hgmma) if j == 0 or i - hgmma[j - 1] > 32]  # first HGMMA of each group
    if len(starts) < 2:
        return None
    windows = [insns[a:b] for a, b in zip(starts, starts[1:])]  # k-blocks: one group's issue up to the next's
    skips = [issuer_only(w) for w in windows]
    per_kblock = statistics.median(len(w) - len(s) for w, s in zip(windows, skips))
    window, skipped = windows[0], skips[0]
    ops = [ins.op for i, ins in enumerate(window) if i not in skipped]
    pipes = collections.Counter(_PIPE_OF.get(op, "other") for op in ops)
    return {"instructions": int(per_kblock), "window": len(ops), "issuer": len(skipped),
            **{p: pipes[p] for p in (*PIPES, "other")}, "top": collections.Counter(ops).most_common(6)}


def table(funcs: dict[str, list[Insn]]) -> list[str]:
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
             "| other | issuer code | most issued |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (path, dtype, nr, z), st in rows:
        top = ", ".join(f"{op} {n}" for op, n in st["top"])
        lines.append(f"| {path} | {dtype} | {nr} | {'yes' if z else 'no'} | {st['instructions']} | {st['alu']} "
                     f"| {st['fma']} | {st['shared']} | {st['global']} | {st['tensor']} | {st['other']} "
                     f"| {st['issuer']} | {top} |")
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
