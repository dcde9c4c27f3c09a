# (branch wip/attn-transpose-sum only: turn into a test or drop before merging; kernels/NOTES.md v19)
# An fp32 emulation of the decode attention kernel, main's per-column loop (warp_old) and the transposing warp sum
# (warp_new): 4 warps, chunks/splits, the step-3 and cluster combines; run it to compare NaN/Inf patterns and values.
import math

import numpy as np
f32 = np.float32
NINF = f32(-np.inf)
LOG2E = f32(1.4426950408889634)
KW, KU = 4, 8

def fmax(a, b): return np.fmax(a, b)  # fmaxf: NaN ignored
def ex2(x):
    with np.errstate(all='ignore'): return np.exp2(np.asarray(x, f32)).astype(f32)

def tsum(t, N, O=16):
    lanes = np.arange(32)
    while N > 1 and O >= 1:
        up = (lanes & O) != 0; h = N // 2
        send = np.where(up[:, None], t[:, :h], t[:, h:N]); keep = np.where(up[:, None], t[:, h:N], t[:, :h])
        t = (keep + send[lanes ^ O]).astype(f32); N, O = h, O // 2
    return t

def warp_new(qs, K, V, mask, j0, j1, hi, warp, RM, EPL):
    lanes = np.arange(32); N = KU * RM; NV = N // 32 if N >= 32 else 1
    pair_of = (lambda l, i: l * NV + i) if N >= 32 else (lambda l, i: l >> 1)
    lane_of = (lambda pr: pr // NV) if N >= 32 else (lambda pr: 2 * pr)
    u_own = lanes >> 2
    m = np.full(RM, NINF, f32); o = np.zeros((RM, 32 * EPL), f32); lsum = np.zeros((32, NV), f32)
    jf = j0 + warp; j = jf; first = True
    with np.errstate(all='ignore'):
        while j <= hi:
            last = j1 - 1 if first else hi; first = False
            cols = [min(j + u * KW, last) for u in range(KU)]
            cown = j + u_own * KW
            mk = np.array([mask[c] if c <= last else -np.inf for c in cown], f32)
            t = np.zeros((32, N), f32)
            for u in range(KU):
                kk = K[cols[u]].reshape(32, EPL)
                for r in range(RM): t[:, u * RM + r] = (qs[r].reshape(32, EPL) * kk).sum(1, dtype=f32)
            t = tsum(t, N)
            if N < 32: t[:, 0] = t[:, 0] + t[lanes ^ 1, 0]
            sc = np.where(mk[:, None] == NINF, NINF, np.maximum(mk, f32(-1e37))[:, None] * LOG2E + t[:, :NV]).astype(f32)
            mx = sc.copy()
            for off in (4, 8, 16): mx = fmax(mx, mx[lanes ^ off])
            base = np.zeros(RM, f32); a = np.zeros(RM, f32)
            for r in range(RM):
                mn = fmax(m[r], mx[lane_of(r), r % NV]); base[r] = 0 if mn == NINF else mn
                a[r] = ex2(m[r] - base[r]); m[r] = mn
            pe = np.zeros((32, NV), f32)
            for i in range(NV):
                ro = np.array([pair_of(l, i) % RM for l in range(32)])
                pe[:, i] = ex2(sc[:, i] - base[ro]); lsum[:, i] = lsum[:, i] * a[ro] + pe[:, i]
            o = o * a[:, None]
            for u in range(KU):
                for r in range(RM):
                    pr = u * RM + r; o[r] = o[r] + pe[lane_of(pr), pr % NV] * V[cols[u]]
            j += KW * KU
        for off in (4, 8, 16): lsum = lsum + lsum[lanes ^ off]
        l = np.array([lsum[lane_of(r), r % NV] for r in range(RM)], f32)
    return m, l, o

def warp_old(qs, K, V, mask, j0, j1, hi, warp, RM, EPL):
    m = np.full(RM, NINF, f32); l = np.zeros(RM, f32); o = np.zeros((RM, 32 * EPL), f32)
    j = j0 + warp; first = True
    with np.errstate(all='ignore'):
        while j <= hi:
            last = j1 - 1 if first else hi; first = False
            for u in range(KU):
                c = min(j + u * KW, last); mk = f32(mask[c]) if j + u * KW <= last else NINF
                s = (qs * K[c][None]).sum(1, dtype=f32)
                for r in range(RM):
                    sc = NINF if mk == NINF else f32(max(mk, f32(-1e37)) * LOG2E + s[r])
                    mn = fmax(m[r], sc); base = f32(0) if mn == NINF else mn
                    a = ex2(m[r] - base); pe = ex2(sc - base); m[r] = mn
                    l[r] = l[r] * a + pe; o[r] = o[r] * a + pe * V[c]
            j += KW * KU
    return m, l, o

def attn(q, K, V, mask, R, RM, splits, warpfn):
    S, D = K.shape; EPL = D // 32
    qs = np.zeros((RM, D), f32); qs[:R] = q * f32(1.4426950408889634 / math.sqrt(D))
    chunk = -(-S // splits); splits = -(-S // chunk)
    parts = []
    with np.errstate(all='ignore'):
        for sp in range(splits):
            j0, j1 = sp * chunk, min(S, sp * chunk + chunk)
            vis = [c for c in range(j0, j1) if mask[c] != -np.inf]; hi = max(vis, default=-1)
            ws = [warpfn(qs, K, V, mask, j0, j1, hi, w, RM, EPL) for w in range(KW)]
            M = np.full(RM, NINF, f32)
            for w in ws: M = fmax(M, w[0])
            L = np.zeros(RM, f32); O = np.zeros((RM, D), f32)
            for (mw, lw, ow) in ws:
                c = np.where(lw == 0, f32(0), ex2(mw - M)); L = lw * c + L; O = ow * c[:, None] + O
            parts.append((M, L, O))
        if splits == 1: M, L, O = parts[0]
        else:
            M = np.full(RM, NINF, f32)
            for p in parts: M = fmax(M, p[0])
            L = np.zeros(RM, f32); O = np.zeros((RM, D), f32)
            for (Mk, Lk, Ok) in parts:
                c = np.where(Lk == 0, f32(0), ex2(Mk - M)); L = Lk * c + L; O = Ok * c[:, None] + O
        return (O / L[:, None])[:R]

def ref(q, K, V, mask):
    D = K.shape[1]
    with np.errstate(all='ignore'):
        s = q.astype(np.float64) @ K.T.astype(np.float64) / math.sqrt(D) + mask[None].astype(np.float64)
        mx = s.max(1, keepdims=True); p = np.exp(s - mx); p /= p.sum(1, keepdims=True)
        return p @ V.astype(np.float64)


rng = np.random.default_rng(1)
bad = 0; worst = 0; n = 0
def same_nan(a, b): return np.array_equal(np.isnan(a), np.isnan(b))
for RM in (2, 4, 8):
  for R in sorted({1, RM // 2 + 1, RM}):
    for D in (64, 128):
      for S in (1, 5, 33, 70, 200):
        for splits in (1, 2, 3, 7):
          for kind in ("all", "pad", "tail", "mid", "none", "finmin", "nanVhid", "nanKhid", "nanVvis", "infKvis", "infVhidtail"):
            q = rng.standard_normal((R, D)).astype(f32); K = rng.standard_normal((S, D)).astype(f32); V = rng.standard_normal((S, D)).astype(f32)
            mask = np.zeros(S, f32)
            if kind == "pad": mask[: S // 3] = -np.inf
            if kind == "tail": mask[S // 2 + 1:] = -np.inf
            if kind == "mid": mask[rng.random(S) < 0.5] = -np.inf; mask[0] = 0
            if kind == "none": mask[:] = -np.inf
            if kind == "finmin": mask[S//2:] = np.finfo(np.float32).min; mask[0] = np.finfo(np.float32).min
            if kind.startswith("nan") or kind.startswith("inf"):
                if S < 3: continue
                mask[1::2] = -np.inf; mask[0] = 0
                c = 1 if "hid" in kind else 0
                if kind == "infVhidtail": mask[S//2:] = -np.inf; c = S - 1
                arr = K if "K" in kind else V
                arr[c, 5] = np.nan if kind.startswith("nan") else np.inf
            yn = attn(q, K, V, mask, R, RM, splits, warp_new); yo = attn(q, K, V, mask, R, RM, splits, warp_old)
            n += 1
            if not same_nan(yn, yo) or not np.array_equal(np.isinf(yn), np.isinf(yo)):
                bad += 1; print("NaN/Inf pattern differs", RM, R, D, S, splits, kind, np.isnan(yn).sum(), np.isnan(yo).sum()); continue
            fin = np.isfinite(yo)
            if fin.any():
                e = np.abs(yn[fin] - yo[fin]).max(); worst = max(worst, e)
                if e > 1e-4: bad += 1; print("value differs", RM, R, D, S, splits, kind, e)
print("cases", n, "bad", bad, "worst new-vs-old", worst)
