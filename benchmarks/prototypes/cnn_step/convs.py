"""Conv implementations for the prototypes. Layout for (c)/(d): padded channels-last flat.

xpf: (N*Hp*Wp, C) with Hp=H+2, Wp=W+2, zero ring (the padded NHWC input, flattened).
Output y (top-left convention): y[q] = sum_ij xpf[q + i*Wp + j] @ W[i, j]; rows q with
h >= H or w >= W (in (N, Hp, Wp) coordinates) are garbage/zeroed; valid = y.reshape(N,Hp,Wp,O)[:, :H, :W].
dyf: same layout as y, zeros at invalid rows. dyP = dyf shifted by Wp+1 rows = zero-padded dy.
"""
import numpy as np
from numba import njit, prange

def to_padded_nhwc(x):           # x NCHW -> (N*Hp*Wp, C)
    n, c, h, w = x.shape
    xp = np.zeros((n, h + 2, w + 2, c), x.dtype)
    xp[:, 1:-1, 1:-1] = x.transpose(0, 2, 3, 1)
    return xp.reshape(-1, c)

def topleft_from_nchw(d, dtype=np.float32):   # dy NCHW -> top-left flat with zeros at invalid
    n, o, h, w = d.shape
    f = np.zeros((n, h + 2, w + 2, o), dtype)
    f[:, :h, :w] = d.transpose(0, 2, 3, 1)
    return f.reshape(-1, o)

def valid(yf, n, h, w):
    return yf.reshape(n, h + 2, w + 2, -1)[:, :h, :w]

def wtaps(w):                    # OIHW -> (9, C, O)
    o, c, kh, kw = w.shape
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(kh * kw, c, o))

# ---------------------------------------------------------------- (c) nine shifted GEMMs
def c_fwd(xpf, wt, n, h, w):
    hp, wp = h + 2, w + 2
    mp = xpf.shape[0]; L = mp - 2 * wp - 2; o = wt.shape[2]
    y = np.empty((mp, o), np.float32); y[L:] = 0
    tmp = np.empty((L, o), np.float32)
    np.matmul(xpf[0:L], wt[0], out=y[:L])
    for k in range(1, 9):
        off = (k // 3) * wp + k % 3
        np.matmul(xpf[off:off + L], wt[k], out=tmp)
        y[:L] += tmp
    return y

def c_bwd(dyf, xpf, wt, n, h, w, need_dx=True):
    hp, wp = h + 2, w + 2
    mp, o = dyf.shape; L = mp - 2 * wp - 2; c = xpf.shape[1]
    dw = np.empty((9, c, o), np.float32)
    for k in range(9):
        off = (k // 3) * wp + k % 3
        np.matmul(xpf[off:off + L].T, dyf[:L], out=dw[k])
    if not need_dx:
        return None, dw
    dyP = np.empty((mp, o), np.float32); dyP[:wp + 1] = 0; dyP[wp + 1:] = dyf[:mp - wp - 1]
    dx = np.empty((mp, c), np.float32); dx[L:] = 0
    tmp = np.empty((L, c), np.float32)
    for k in range(9):
        off = (k // 3) * wp + k % 3
        wk = wt[8 - k].T                        # flipped tap, (O, C)
        if k == 0:
            np.matmul(dyP[off:off + L], wk, out=dx[:L])
        else:
            np.matmul(dyP[off:off + L], wk, out=tmp); dx[:L] += tmp
    return dx, dw          # dx top-left layout (valid region = dx of the interior)

# ---------------------------------------------------------------- (d) blocked im2col + GEMM
@njit(nogil=True, cache=True)
def gather_block(src, s, e, wp, cols):
    """cols[r - s, k*C:(k+1)*C] = src[r + off_k]; src (M, C) float32."""
    c = src.shape[1]
    for r in range(s, e):
        rr = r - s
        for i in range(3):
            base = r + i * wp
            for j in range(3):
                k0 = (i * 3 + j) * c
                srow = base + j
                for ci in range(c):
                    cols[rr, k0 + ci] = src[srow, ci]

def _np_gather(src, s, e, wp, cols):
    c = src.shape[1]
    for k in range(9):
        off = (k // 3) * wp + k % 3
        cols[:e - s, k * c:(k + 1) * c] = src[s + off:e + off]

def d_fwd(xpf, wt2, n, h, w, B=2048, gather=_np_gather):
    """wt2: (9C, O) = taps stacked. blocked: cols block in L2, one GEMM per block."""
    wp = w + 2; mp, c = xpf.shape; L = mp - 2 * wp - 2; o = wt2.shape[1]
    y = np.empty((mp, o), np.float32); y[L:] = 0
    cols = np.empty((B, 9 * c), np.float32)
    for s in range(0, L, B):
        e = min(L, s + B)
        gather(xpf, s, e, wp, cols)
        np.matmul(cols[:e - s], wt2, out=y[s:e])
    return y

def d_bwd(dyf, xpf, wt2, n, h, w, need_dx=True, B=2048, gather=_np_gather):
    wp = w + 2; mp, o = dyf.shape; c = xpf.shape[1]; L = mp - 2 * wp - 2
    dw = np.zeros((9 * c, o), np.float32); tmpw = np.empty((9 * c, o), np.float32)
    cols = np.empty((B, 9 * c), np.float32)
    for s in range(0, L, B):
        e = min(L, s + B)
        gather(xpf, s, e, wp, cols)
        np.matmul(cols[:e - s].T, dyf[s:e], out=tmpw); dw += tmpw
    if not need_dx:
        return None, dw
    # dx: forward of dyP with flipped transposed taps, (9O, C)
    wf = np.ascontiguousarray(wt2.reshape(9, c, o)[::-1].transpose(0, 2, 1).reshape(9 * o, c))
    dyP = np.empty((mp, o), np.float32); dyP[:wp + 1] = 0; dyP[wp + 1:] = dyf[:mp - wp - 1]
    dx = np.empty((mp, c), np.float32); dx[L:] = 0
    colsd = np.empty((B, 9 * o), np.float32)
    for s in range(0, L, B):
        e = min(L, s + B)
        gather(dyP, s, e, wp, colsd)
        np.matmul(colsd[:e - s], wf, out=dx[s:e])
    return dx, dw

# ---------------------------------------------------------------- (d') blocked, two Python threads x 1-thread BLAS
from concurrent.futures import ThreadPoolExecutor
_pool = ThreadPoolExecutor(2)

def _split(L, B, parts=2):
    blocks = [(s, min(L, s + B)) for s in range(0, L, B)]
    k = (len(blocks) + parts - 1) // parts
    return [blocks[i:i + k] for i in range(0, len(blocks), k)]

def dt_fwd(xpf, wt2, n, h, w, B=1024, gather=gather_block):
    wp = w + 2; mp, c = xpf.shape; L = mp - 2 * wp - 2; o = wt2.shape[1]
    y = np.empty((mp, o), np.float32); y[L:] = 0
    def work(blocks):
        cols = np.empty((B, 9 * c), np.float32)
        for s, e in blocks:
            gather(xpf, s, e, wp, cols)
            np.matmul(cols[:e - s], wt2, out=y[s:e])
    list(_pool.map(work, _split(L, B)))
    return y

def dt_bwd(dyf, xpf, wt2, n, h, w, need_dx=True, B=1024, gather=gather_block):
    wp = w + 2; mp, o = dyf.shape; c = xpf.shape[1]; L = mp - 2 * wp - 2
    wf = np.ascontiguousarray(wt2.reshape(9, c, o)[::-1].transpose(0, 2, 1).reshape(9 * o, c))
    dyP = np.empty((mp, o), np.float32); dyP[:wp + 1] = 0; dyP[wp + 1:] = dyf[:mp - wp - 1]
    dx = np.empty((mp, c), np.float32) if need_dx else None
    if need_dx:
        dx[L:] = 0
    def work(blocks):
        dw = np.zeros((9 * c, o), np.float32); tmpw = np.empty((9 * c, o), np.float32)
        cols = np.empty((B, 9 * c), np.float32); colsd = np.empty((B, 9 * o), np.float32)
        for s, e in blocks:
            gather(xpf, s, e, wp, cols)
            np.matmul(cols[:e - s].T, dyf[s:e], out=tmpw); dw += tmpw
            if need_dx:
                gather(dyP, s, e, wp, colsd)
                np.matmul(colsd[:e - s], wf, out=dx[s:e])
        return dw
    dws = list(_pool.map(work, _split(L, B)))
    return dx, sum(dws)

def mixed_bwd(dyf, xpf, wt2, n, h, w, need_dx=True, B=1024):
    """dw: nine big-K GEMMs (BLAS 2 threads); dx: blocked gather + GEMM."""
    wp = w + 2; mp, o = dyf.shape; c = xpf.shape[1]; L = mp - 2 * wp - 2
    dw = np.empty((9, c, o), np.float32)
    for k in range(9):
        off = (k // 3) * wp + k % 3
        np.matmul(xpf[off:off + L].T, dyf[:L], out=dw[k])
    if not need_dx:
        return None, dw
    wf = np.ascontiguousarray(wt2.reshape(9, c, o)[::-1].transpose(0, 2, 1).reshape(9 * o, c))
    dyP = np.empty((mp, o), np.float32); dyP[:wp + 1] = 0; dyP[wp + 1:] = dyf[:mp - wp - 1]
    dx = np.empty((mp, c), np.float32); dx[L:] = 0
    colsd = np.empty((B, 9 * o), np.float32)
    for s in range(0, L, B):
        e = min(L, s + B)
        _np_gather(dyP, s, e, wp, colsd)
        np.matmul(colsd[:e - s], wf, out=dx[s:e])
    return dx, dw
