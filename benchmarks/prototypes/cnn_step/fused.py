"""Numba NHWC prototypes: fused BatchNorm(train)+sign(+pack bits) forward, fused STE+BN backward,
2x2 maxpool fwd/bwd, and an XNOR conv writing NHWC output. x as (M, C) rows = pixels."""
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

@intrinsic
def popcount64(typingctx, x):
    if not (isinstance(x, types.Integer) and x.bitwidth == 64):
        return None
    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])
    return types.int64(x), codegen

@njit(parallel=True, cache=True)
def _stats(z, nchunk):
    m, c = z.shape
    part = np.zeros((nchunk, 2, c))
    step = (m + nchunk - 1) // nchunk
    for t in prange(nchunk):
        s = part[t]
        for r in range(t * step, min(m, (t + 1) * step)):
            for ci in range(c):
                v = np.float64(z[r, ci])
                s[0, ci] += v
                s[1, ci] += v * v
    return part.sum(axis=0)

@njit(parallel=True, cache=True)
def _bn_sign_pack(z, mean, inv, gamma, beta, bits):
    m, c = z.shape
    nw = bits.shape[1]
    for r in prange(m):
        for q in range(nw):
            word = np.uint64(0)
            for j in range(min(64, c - q * 64)):
                ci = q * 64 + j
                y = (np.float32(z[r, ci]) - mean[ci]) * inv[ci] * gamma[ci] + beta[ci]
                word |= np.uint64(y >= 0) << np.uint64(j)
            bits[r, q] = word

def bn_sign_fwd(z, gamma, beta, eps=1e-5):
    """z (M, C) -> packed sign bits (M, ceil(C/64)), mean, inv_std (cache: z itself)."""
    m, c = z.shape
    s = _stats(z, 2)
    mean = s[0] / m; var = s[1] / m - mean * mean
    inv = (1.0 / np.sqrt(var + eps)).astype(np.float32); mean = mean.astype(np.float32)
    bits = np.empty((m, (c + 63) // 64), np.uint64)
    _bn_sign_pack(z, mean, inv, gamma, beta, bits)
    return bits, mean, inv

@njit(parallel=True, cache=True)
def _bwd_reduce(ds, z, mean, inv, gamma, beta, nchunk):
    m, c = z.shape
    part = np.zeros((nchunk, 2, c))
    step = (m + nchunk - 1) // nchunk
    for t in prange(nchunk):
        s = part[t]
        for r in range(t * step, min(m, (t + 1) * step)):
            for ci in range(c):
                xh = (np.float32(z[r, ci]) - mean[ci]) * inv[ci]
                y = xh * gamma[ci] + beta[ci]
                g = ds[r, ci] * max(np.float32(0.0), np.float32(2.0) - np.float32(2.0) * abs(y))
                s[0, ci] += g
                s[1, ci] += g * xh
    return part.sum(axis=0)

@njit(parallel=True, cache=True)
def _bwd_apply(ds, z, mean, inv, gamma, beta, mg, mgx, dz):
    m, c = z.shape
    for r in prange(m):
        for ci in range(c):
            xh = (np.float32(z[r, ci]) - mean[ci]) * inv[ci]
            y = xh * gamma[ci] + beta[ci]
            g = ds[r, ci] * max(np.float32(0.0), np.float32(2.0) - np.float32(2.0) * abs(y))
            dz[r, ci] = inv[ci] * gamma[ci] * (g - mg[ci] - xh * mgx[ci])

def bn_sign_bwd(ds, z, mean, inv, gamma, beta):
    m, c = z.shape
    s = _bwd_reduce(ds, z, mean, inv, gamma, beta, 2)
    dbeta, dgamma = s[0].astype(np.float32), s[1].astype(np.float32)
    dz = np.empty((m, c), np.float32)
    _bwd_apply(ds, z, mean, inv, gamma, beta, (s[0] / m).astype(np.float32), (s[1] / m).astype(np.float32), dz)
    return dz, dgamma, dbeta

@njit(parallel=True, cache=True)
def maxpool_fwd(x, out, arg):          # x (N, H, W, C) -> (N, H/2, W/2, C), arg uint8
    n, h, w, c = x.shape
    for r in prange(n * (h // 2)):
        ni = r // (h // 2); yo = r % (h // 2)
        for xo in range(w // 2):
            for ci in range(c):
                best = x[ni, 2 * yo, 2 * xo, ci]; bt = 0
                v = x[ni, 2 * yo, 2 * xo + 1, ci]
                if v > best: best = v; bt = 1
                v = x[ni, 2 * yo + 1, 2 * xo, ci]
                if v > best: best = v; bt = 2
                v = x[ni, 2 * yo + 1, 2 * xo + 1, ci]
                if v > best: best = v; bt = 3
                out[ni, yo, xo, ci] = best; arg[ni, yo, xo, ci] = bt

@njit(parallel=True, cache=True)
def maxpool_bwd(dy, arg, dx):         # writes every dx entry (zeros included)
    n, ho, wo, c = dy.shape
    for r in prange(n * ho):
        ni = r // ho; yo = r % ho
        for xo in range(wo):
            for ci in range(c):
                t = arg[ni, yo, xo, ci]; d = dy[ni, yo, xo, ci]
                dx[ni, 2 * yo, 2 * xo, ci] = d if t == 0 else 0.0
                dx[ni, 2 * yo, 2 * xo + 1, ci] = d if t == 1 else 0.0
                dx[ni, 2 * yo + 1, 2 * xo, ci] = d if t == 2 else 0.0
                dx[ni, 2 * yo + 1, 2 * xo + 1, ci] = d if t == 3 else 0.0

@njit(parallel=True, cache=True)
def xnor_conv_nhwc(xb, wt, c, out):
    """3x3 pad 1 stride 1. xb (N, H, W, nw) uint64, wt (9*nw, O) uint64 -> out (N, H, W, O) int32."""
    n, h, w, nw = xb.shape
    o = wt.shape[1]
    for r in prange(n * h):
        ni = r // h; yo = r - ni * h
        acc = np.empty((4, o), np.int64)
        xo = 0
        while xo < w:
            npx = 4 if (xo + 4 <= w) else 1
            acc[:, :] = 0
            for p in range(npx):
                pass
            valid = np.zeros(4, np.int64)
            for i in range(3):
                hi = yo + i - 1
                if hi < 0 or hi >= h:
                    continue
                for j in range(3):
                    t0 = (i * 3 + j) * nw
                    for p in range(npx):
                        wi = xo + p + j - 1
                        if wi < 0 or wi >= w:
                            continue
                        valid[p] += c
                        for q in range(nw):
                            xq = xb[ni, hi, wi, q]
                            wr = wt[t0 + q]
                            ap = acc[p]
                            for oc in range(o):
                                ap[oc] += popcount64(xq ^ wr[oc])
            for p in range(npx):
                for oc in range(o):
                    out[ni, yo, xo + p, oc] = valid[p] - 2 * acc[p, oc]
            xo += npx
