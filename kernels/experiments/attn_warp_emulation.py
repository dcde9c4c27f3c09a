# (branch wip/attn-transpose-sum only: turn into a test or drop before merging; kernels/NOTES.md v19)
# Emulate one warp of the new kv16_decode_attention inner loop (32 lanes as numpy rows) against float64 softmax attention.
import numpy as np
rng = np.random.default_rng(0)
K_UNROLL, KWARPS = 8, 1   # one warp: columns j + u (kWarps = 1 in this emulation: the warp's own columns)

def transpose_sum(t, N, O=16):
    # t: (32, N) per-lane values
    while N > 1 and O >= 1:
        lanes = np.arange(32); up = (lanes & O) != 0
        half = N // 2
        send = np.where(up[:, None], t[:, :half], t[:, half:N])
        keep = np.where(up[:, None], t[:, half:N], t[:, :half])
        t = keep + send[lanes ^ O]
        N, O = half, O // 2
    return t

def shfl_xor(x, off): return x[np.arange(32) ^ off]

def run(RM, R, D, S, mask):
    EPL = D // 32
    N = K_UNROLL * RM; NV = N // 32 if N >= 32 else 1
    pair_of = lambda l, i: l * NV + i if N >= 32 else l >> 1
    lane_of = lambda pr: pr // NV if N >= 32 else 2 * pr
    q = rng.standard_normal((R, D)); k = rng.standard_normal((S, D)); v = rng.standard_normal((S, D))
    qp = np.zeros((RM, D)); qp[:R] = q / np.sqrt(D) * np.log2(np.e)
    lanes = np.arange(32); u_own = lanes >> 2
    hi = max([c for c in range(S) if mask[c] != -np.inf], default=-1)
    m = np.full(RM, -np.inf); o = np.zeros((RM, D)); lsum = np.zeros((32, NV))
    for j in range(0, hi + 1, K_UNROLL * KWARPS):
        cols = [min(j + u, hi) for u in range(K_UNROLL)]
        # a. partial sums: lane l holds elements l*EPL .. l*EPL+EPL-1
        t = np.zeros((32, N))
        for u in range(K_UNROLL):
            for r in range(RM):
                t[:, u * RM + r] = (qp[r].reshape(32, EPL) * k[cols[u]].reshape(32, EPL)).sum(1)
        t = transpose_sum(t, N)
        if N < 32: t[:, 0] = t[:, 0] + shfl_xor(t[:, 0], 1)
        c_own = j + u_own
        mk = np.array([mask[c] if c <= hi else -np.inf for c in c_own])
        sc = np.where(mk[:, None] == -np.inf, -np.inf, np.maximum(mk, -1e37)[:, None] * np.log2(np.e) + t[:, :NV])
        mx = sc.copy()
        for off in (4, 8, 16): mx = np.fmax(mx, mx[lanes ^ off])
        base = np.zeros(RM); a = np.zeros(RM)
        for r in range(RM):
            mn = np.fmax(m[r], mx[lane_of(r), r % NV])
            base[r] = 0.0 if mn == -np.inf else mn
            a[r] = np.exp2(m[r] - base[r]); m[r] = mn
        pe = np.zeros((32, NV))
        for i in range(NV):
            r_own = np.array([pair_of(l, i) % RM for l in range(32)])
            pe[:, i] = np.exp2(sc[:, i] - base[r_own])
            lsum[:, i] = lsum[:, i] * a[r_own] + pe[:, i]
        o *= a[:, None]
        for u in range(K_UNROLL):
            for r in range(RM):
                pr = u * RM + r
                o[r] += pe[lane_of(pr), pr % NV] * v[cols[u]]
    for off in (4, 8, 16): lsum = lsum + lsum[lanes ^ off]
    l = np.array([lsum[lane_of(r), r % NV] for r in range(RM)])
    y = o[:R] / l[:R, None]
    s = q @ k.T / np.sqrt(D) + mask[None, :]
    p = np.exp(s - s.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
    return np.abs(y - p @ v).max()

worst = 0
for RM in (2, 4, 8):
    for R in range(1, RM + 1):
        for S in (1, 5, 8, 9, 37, 100):
            for kind in ("all", "pad", "tail", "mid"):
                mask = np.zeros(S)
                if kind == "pad": mask[: S // 3] = -np.inf
                if kind == "tail": mask[S // 2 + 1:] = -np.inf
                if kind == "mid": mask[rng.random(S) < 0.4] = -np.inf; mask[S - 1] = 0
                for D in (64, 128):
                    err = run(RM, R, D, S, mask); worst = max(worst, err)
                    assert err < 1e-9, (RM, R, S, kind, D, err)
print("all cases within", worst)
