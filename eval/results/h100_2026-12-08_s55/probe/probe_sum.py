"""Summarizes probe.py's output: per linear, the last call; per warp role, the phase means per k-block (cycles)."""
import collections
import statistics
import sys

blocks, cur = collections.defaultdict(list), None
for line in open(sys.argv[1]):
    if line.startswith("==="):
        cur = line.split()[1], int(line.split()[3])
    elif line.startswith("P ") and cur:
        blocks[cur].append([int(v) for v in line.split()[1:]])
names = ["mult", "sync", "full", "deq", "wgwait"]
print("| linear | CTAs | span us | CTA us med/max | fill cyc | cyc/kb | " + " | ".join(names) + " | SMs with 2 |")
print("|---|---|---|---|---|---|" + "---|" * len(names) + "---|")
for (name, call), rows in sorted(blocks.items(), key=lambda kv: (kv[0][0], kv[0][1])):
    if call != 2:
        continue
    g0 = min(r[7] for r in rows); g1 = max(r[8] for r in rows)
    ctas = {(r[3], r[4]): r for r in rows}
    dur = [(r[8] - r[7]) / 1e3 for r in ctas.values()]
    n_it = [max(1, r[16] - 3) for r in rows]
    ph = [statistics.mean(r[10 + k] / n for r, n in zip(rows, n_it)) for k in range(5)]
    tot = statistics.mean(r[9] / max(1, r[16]) for r in rows)
    fill = statistics.mean(r[15] for r in rows)
    per_sm = collections.Counter(r[6] for r in ctas.values())
    print(f"| {name} | {len(ctas)} | {(g1 - g0) / 1e3:.1f} | {statistics.median(dur):.1f}/{max(dur):.1f} | {fill:.0f} | "
          f"{tot:.0f} | " + " | ".join(f"{v:.0f}" for v in ph) + f" | {sum(1 for c in per_sm.values() if c > 1)} |")
    for role, ws in (("issuer w0", {0}), ("compute w5-7", {5, 6, 7})):
        for per, label in ((1, "SM with 1 CTA"), (2, "SM with 2")):
            sel = [(r, n) for r, n in zip(rows, n_it) if r[5] in ws and min(per_sm[r[6]], 2) == per]
            if sel:
                print(f"|  {role}, {label} ({len(sel)} warps) | | | | | "
                      f"{statistics.mean(r[9] / r[16] for r, _ in sel):.0f} | " + " | ".join(
                          f"{statistics.mean(r[10 + k] / n for r, n in sel):.0f}" for k in range(5)) + " | |")
