"""Valid-rows blocked conv backward (and conv1 forward), NHWC; 2 Python threads x 1-thread BLAS.
Rows = output pixels (n, h, w) only (no padded-row waste). Sources:
  x: float NHWC (N, H, W, C) or packed bits (N, H, W, nw) uint64 (+-1, unpacked in the gather);
  dy: float (N, H, W, O) valid rows.
dw  = sum_blocks cols_x(blk).T @ dy(blk)         cols_x: (rows, 9C), tap-major (i, j, c)
dx  = cols_dy(blk) @ Wflip                       cols_dy: (rows, 9O) gathered from dy, zero outside
"""
import numpy as np, threadpoolctl
from numba import njit
from concurrent.futures import ThreadPoolExecutor
_pool = ThreadPoolExecutor(2)

@njit(nogil=True, cache=True)
def gather_f(src, n0, n1, cols):          # src (N, H, W, C) float32
    n, h, w, c = src.shape
    r = 0
    for ni in range(n0, n1):
        for yo in range(h):
            for xo in range(w):
                for i in range(3):
                    hi = yo + i - 1
                    for j in range(3):
                        wi = xo + j - 1
                        k0 = (i * 3 + j) * c
                        if 0 <= hi < h and 0 <= wi < w:
                            for ci in range(c):
                                cols[r, k0 + ci] = src[ni, hi, wi, ci]
                        else:
                            for ci in range(c):
                                cols[r, k0 + ci] = 0.0
                r += 1

@njit(nogil=True, cache=True)
def gather_b(src, c, n0, n1, cols):       # src (N, H, W, nw) uint64 packed signs
    n, h, w, nw = src.shape
    r = 0
    for ni in range(n0, n1):
        for yo in range(h):
            for xo in range(w):
                for i in range(3):
                    hi = yo + i - 1
                    for j in range(3):
                        wi = xo + j - 1
                        k0 = (i * 3 + j) * c
                        if 0 <= hi < h and 0 <= wi < w:
                            for q in range(nw):
                                word = src[ni, hi, wi, q]
                                for b in range(min(64, c - q * 64)):
                                    cols[r, k0 + q * 64 + b] = 1.0 if (word >> np.uint64(b)) & np.uint64(1) else -1.0
                        else:
                            for ci in range(c):
                                cols[r, k0 + ci] = 0.0
                r += 1

def _ranges(n, per):
    blocks = [(s, min(n, s + per)) for s in range(0, n, per)]
    half = (len(blocks) + 1) // 2
    return [blocks[:half], blocks[half:]]

def flipw(wt2, c, o):                      # (9C, O) taps -> (9O, C) flipped, transposed
    return np.ascontiguousarray(wt2.reshape(9, c, o)[::-1].transpose(0, 2, 1).reshape(9 * o, c))

def v_bwd(dy, x, wt2, c, need_dx=True, rows=1024, bits=False, wf=None):
    """dy (N, H, W, O); x float (N,H,W,C) or bits (N,H,W,nw); wt2 (9C, O). -> dx (N,H,W,C), dw (9C,O)."""
    n, h, w, o = dy.shape
    per = max(1, rows // (h * w)); R = per * h * w
    dy2 = dy.reshape(n * h * w, o)
    dx = np.empty((n, h, w, c), np.float32) if need_dx else None
    dx2 = dx.reshape(n * h * w, c) if need_dx else None
    if need_dx and wf is None:
        wf = flipw(wt2, c, o)
    def work(blocks):
        dwl = np.zeros((9 * c, o), np.float32); tmp = np.empty((9 * c, o), np.float32)
        cols = np.empty((R, 9 * c), np.float32); colsd = np.empty((R, 9 * o), np.float32) if need_dx else None
        ubuf = np.empty((per, h, w, c), np.float32)
        with threadpoolctl.threadpool_limits(1, "blas"):
            for n0, n1 in blocks:
                m = (n1 - n0) * h * w; r0 = n0 * h * w
                if bits and c % 8 == 0:
                    gather_b3(x, c, n0, n1, cols, ubuf)
                elif bits:
                    gather_b(x, c, n0, n1, cols)
                else:
                    gather_f(x, n0, n1, cols)
                np.matmul(cols[:m].T, dy2[r0:r0 + m], out=tmp); dwl += tmp
                if need_dx:
                    gather_f(dy, n0, n1, colsd)
                    np.matmul(colsd[:m], wf, out=dx2[r0:r0 + m])
        return dwl
    parts = [b for b in _ranges(n, per) if b]
    dws = list(_pool.map(work, parts))
    return dx, sum(dws)

def v_fwd(x, wt2, c, rows=1024):
    """float conv forward (for the real first layer): x (N,H,W,C) -> y (N,H,W,O)."""
    n, h, w, _ = x.shape; o = wt2.shape[1]
    per = max(1, rows // (h * w)); R = per * h * w
    y = np.empty((n, h, w, o), np.float32); y2 = y.reshape(-1, o)
    def work(blocks):
        cols = np.empty((R, 9 * c), np.float32)
        with threadpoolctl.threadpool_limits(1, "blas"):
            for n0, n1 in blocks:
                m = (n1 - n0) * h * w; r0 = n0 * h * w
                gather_f(x, n0, n1, cols)
                np.matmul(cols[:m], wt2, out=y2[r0:r0 + m])
    list(_pool.map(work, [b for b in _ranges(n, per) if b]))
    return y

# byte -> 8 floats (+1 for a set bit, -1 otherwise), LSB first
LUT = np.where((np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1, 1.0, -1.0).astype(np.float32)

@njit(nogil=True, cache=True)
def gather_b2(src, c, n0, n1, cols, lut):
    """gather_b with a byte lookup table; needs c % 8 == 0."""
    n, h, w, nw = src.shape
    nbytes = c // 8
    r = 0
    for ni in range(n0, n1):
        for yo in range(h):
            for xo in range(w):
                for i in range(3):
                    hi = yo + i - 1
                    for j in range(3):
                        wi = xo + j - 1
                        k0 = (i * 3 + j) * c
                        if 0 <= hi < h and 0 <= wi < w:
                            for bq in range(nbytes):
                                word = src[ni, hi, wi, bq >> 3]
                                byte = (word >> np.uint64((bq & 7) * 8)) & np.uint64(255)
                                base = k0 + bq * 8
                                for t in range(8):
                                    cols[r, base + t] = lut[byte, t]
                        else:
                            for ci in range(c):
                                cols[r, k0 + ci] = 0.0
                r += 1

@njit(nogil=True, cache=True)
def unpack_samples(src, c, n0, n1, buf, lut):
    """buf[0:n1-n0] (per, H, W, C) float +-1 from packed src (N, H, W, nw); c % 8 == 0."""
    n, h, w, nw = src.shape
    nbytes = c // 8
    for ni in range(n0, n1):
        for yo in range(h):
            for xo in range(w):
                for bq in range(nbytes):
                    word = src[ni, yo, xo, bq >> 3]
                    byte = (word >> np.uint64((bq & 7) * 8)) & np.uint64(255)
                    for t in range(8):
                        buf[ni - n0, yo, xo, bq * 8 + t] = lut[byte, t]

def gather_b3(src, c, n0, n1, cols, buf):
    unpack_samples(src, c, n0, n1, buf, LUT)
    gather_f(buf, 0, n1 - n0, cols)
