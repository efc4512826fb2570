"""Numba bodies of the channels-last (NHWC) training ops; their oracle is ``kernels.channels_last``.

Convolution (forward of a real layer, backward of every layer) is blocked im2col + GEMM: the
output pixels are cut into blocks of whole samples (about ``BLOCK_ROWS`` rows each), spread over
the thread pool of ``kernels.threads``. Per block it gathers the block's columns (a few hundred
KiB, cache-resident; never the whole (N*OH*OW, kH*kW*C) array the NCHW path builds) and runs
one-threaded BLAS on them:

    forward   y[blk]    = cols(x)[blk] @ wmat
    backward  dwmat     = sum over blk of cols(x)[blk]^T @ dy[blk]   (threads.reduce_blocks:
                          fixed groups of blocks, added in a fixed order)
              dx[blk]   = col2im(dy[blk] @ wmat^T)           (blocks are whole samples: no races)

A binary layer's cached input arrives as packed bits and is unpacked block by block. The
blocks depend only on the shapes, and every sum is taken in an order fixed by the blocks, so
the results are the same bits with any number of threads (``kernels.threads``).

BatchNorm + sign: the float64 sums of the statistics are split into ``STAT_CHUNKS`` fixed row
chunks (an order that does not depend on the thread count); float32 only (float64 arrays run
the reference body), because the expressions must be evaluated in float32 exactly as NumPy
does, and a Numba loop promotes int32 - float32 to float64 unless told otherwise.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

from minibnn.errors import DTypeError, ShapeError
from minibnn.kernels import channels_last as ref
from minibnn.kernels._common import conv_output_size, require_float, words_for
from minibnn.kernels.registry import register
from minibnn.kernels.threads import one_blas_thread, reduce_blocks, run_blocks

#: output pixels per block of the blocked convolution (a block is whole samples, at least one)
BLOCK_ROWS = 1024
#: fixed number of row chunks of the BatchNorm reductions
STAT_CHUNKS = 16



def _blocks(n: int, per: int) -> list[tuple[int, int]]:
    """Blocks [n0, n1) of ``per`` samples: a function of the shapes only."""
    return [(s, min(n, s + per)) for s in range(0, n, per)]


# --------------------------------------------------------------------------- gather / scatter


@njit(nogil=True, cache=True)
def _gather(src, n0, n1, kh, kw, stride, pad, oh, ow, cols):  # type: ignore[no-untyped-def]
    """cols[r] = receptive field (tap-major, zeros outside) of the r-th output pixel of
    samples n0..n1 of src (N, H, W, C); row 0 is sample n0's first pixel."""
    h, w, c = src.shape[1], src.shape[2], src.shape[3]
    r = 0
    for ni in range(n0, n1):
        for yo in range(oh):
            for xo in range(ow):
                for i in range(kh):
                    hi = yo * stride + i - pad
                    for j in range(kw):
                        wi = xo * stride + j - pad
                        k0 = (i * kw + j) * c
                        if 0 <= hi < h and 0 <= wi < w:
                            for ci in range(c):
                                cols[r, k0 + ci] = src[ni, hi, wi, ci]
                        else:
                            for ci in range(c):
                                cols[r, k0 + ci] = 0.0
                r += 1


@njit(nogil=True, cache=True)
def _scatter_add(dcols, n0, n1, kh, kw, stride, pad, oh, ow, dx):  # type: ignore[no-untyped-def]
    """dx[n0:n1] = col2im of dcols (rows of samples n0..n1), written from zero."""
    h, w, c = dx.shape[1], dx.shape[2], dx.shape[3]
    dx[n0:n1] = 0.0
    r = 0
    for ni in range(n0, n1):
        for yo in range(oh):
            for xo in range(ow):
                for i in range(kh):
                    hi = yo * stride + i - pad
                    if hi < 0 or hi >= h:
                        continue
                    for j in range(kw):
                        wi = xo * stride + j - pad
                        if wi < 0 or wi >= w:
                            continue
                        k0 = (i * kw + j) * c
                        for ci in range(c):
                            dx[ni, hi, wi, ci] += dcols[r, k0 + ci]
                r += 1


#: byte -> its 8 signs (+1 for a set bit, -1 otherwise), least significant bit first
_BYTE_SIGNS = np.where((np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1, 1.0, -1.0)


@njit(nogil=True, cache=True)
def _unpack(bits, c, n0, n1, lut, out):  # type: ignore[no-untyped-def]
    """out[:n1-n0] (per, H, W, c) = the +-1 values of packed bits[n0:n1] (byte lookups)."""
    h, w = bits.shape[1], bits.shape[2]
    nbytes = (c + 7) // 8
    for ni in range(n0, n1):
        for yo in range(h):
            for xo in range(w):
                for bq in range(nbytes):
                    word = bits[ni, yo, xo, bq >> 3]
                    byte = (word >> np.uint64((bq & 7) * 8)) & np.uint64(255)
                    for t in range(min(8, c - bq * 8)):
                        out[ni - n0, yo, xo, bq * 8 + t] = lut[byte, t]


# --------------------------------------------------------------------------- convolution


def _samples_per_block(oh: int, ow: int) -> int:
    return max(1, BLOCK_ROWS // max(1, oh * ow))


@register(ref.conv2d_nhwc_forward, "numba")
def conv2d_nhwc_forward(x: np.ndarray, wmat: np.ndarray, kh: int, kw: int, stride: int = 1,
                        padding: int = 0) -> np.ndarray:
    """Blocked ``cols(x) @ wmat`` (see the module docstring); same result as the reference
    up to the GEMM's summation order."""
    fn = "conv2d_nhwc_forward"
    c = ref.check_wmat(fn, wmat, kh, kw, "numpy")
    ref.check_conv_source(fn, x, c, "numpy")
    if x.dtype == np.uint64:
        raise DTypeError(f"{fn}: x must be float (packed signs go through binary_conv2d)")
    if x.dtype != wmat.dtype:
        raise DTypeError(f"{fn}: x is {x.dtype}, wmat is {wmat.dtype}")
    x = np.ascontiguousarray(x)
    wmat = np.ascontiguousarray(wmat)
    n = x.shape[0]
    oh, ow = conv_output_size(fn, x.shape[1], x.shape[2], kh, kw, stride, padding)
    per = _samples_per_block(oh, ow)
    y = np.empty((n, oh, ow, wmat.shape[1]), dtype=x.dtype)
    y2 = y.reshape(-1, wmat.shape[1])

    def work(block: tuple[int, int]) -> None:
        n0, n1 = block
        m, r0 = (n1 - n0) * oh * ow, n0 * oh * ow
        cols = np.empty((m, wmat.shape[0]), dtype=x.dtype)
        _gather(x, n0, n1, kh, kw, stride, padding, oh, ow, cols)
        np.matmul(cols, wmat, out=y2[r0:r0 + m])

    with one_blas_thread():
        run_blocks(work, _blocks(n, per))
    return y


@register(ref.conv2d_nhwc_backward, "numba")
def conv2d_nhwc_backward(dy: np.ndarray, x: np.ndarray, wmat: np.ndarray, kh: int, kw: int,
                         stride: int = 1, padding: int = 0, need_dx: bool = True
                         ) -> tuple[np.ndarray | None, np.ndarray]:
    """Blocked gradients of the convolution (module docstring); x float or packed signs."""
    fn = "conv2d_nhwc_backward"
    c = ref.check_wmat(fn, wmat, kh, kw, "numpy")
    packed = ref.check_conv_source(fn, x, c, "numpy")
    n, h, w = x.shape[:3]
    oh, ow = conv_output_size(fn, h, w, kh, kw, stride, padding)
    require_float(fn, "dy", dy, "numpy")
    o = wmat.shape[1]
    if dy.shape != (n, oh, ow, o) or dy.dtype != wmat.dtype:
        raise ShapeError(f"{fn}: dy must be {wmat.dtype} {(n, oh, ow, o)}, got {dy.dtype} "
                         f"{dy.shape}")
    dtype = wmat.dtype
    x, wmat = np.ascontiguousarray(x), np.ascontiguousarray(wmat)
    dy2 = np.ascontiguousarray(dy).reshape(n * oh * ow, o)
    wmat_t = np.ascontiguousarray(wmat.T) if need_dx else None
    dx = np.empty((n, h, w, c), dtype=dtype) if need_dx else None
    per = _samples_per_block(oh, ow)
    lut = _BYTE_SIGNS.astype(dtype)

    def partial(block: tuple[int, int]) -> np.ndarray:
        """This block's share of dwmat (and its rows of dx, written in place)."""
        n0, n1 = block
        m, r0 = (n1 - n0) * oh * ow, n0 * oh * ow
        cols = np.empty((m, wmat.shape[0]), dtype=dtype)
        if packed:
            signs = np.empty((n1 - n0, h, w, c), dtype=dtype)
            _unpack(x, c, n0, n1, lut, signs)
            _gather(signs, 0, n1 - n0, kh, kw, stride, padding, oh, ow, cols)
        else:
            _gather(x, n0, n1, kh, kw, stride, padding, oh, ow, cols)
        if need_dx:
            dcols = np.matmul(dy2[r0:r0 + m], wmat_t)
            _scatter_add(dcols, n0, n1, kh, kw, stride, padding, oh, ow, dx)
        return np.matmul(cols.T, dy2[r0:r0 + m])

    with one_blas_thread():
        dwmat = reduce_blocks(partial, _blocks(n, per))
    return dx, dwmat


# --------------------------------------------------------------------------- pooling


@njit(parallel=True, cache=True)
def _maxpool_fwd(x, k, stride, y, arg):  # type: ignore[no-untyped-def]
    n, oh, ow, c = y.shape
    for r in prange(n * oh):
        ni = r // oh
        yo = r - ni * oh
        for xo in range(ow):
            for ci in range(c):
                best = x[ni, yo * stride, xo * stride, ci]
                bt = 0
                for i in range(k):
                    for j in range(k):
                        v = x[ni, yo * stride + i, xo * stride + j, ci]
                        if v > best:                  # strict: the first maximum wins
                            best = v
                            bt = i * k + j
                y[ni, yo, xo, ci] = best
                arg[ni, yo, xo, ci] = bt


@njit(parallel=True, cache=True)
def _maxpool_bwd(dy, arg, k, stride, dx):  # type: ignore[no-untyped-def]
    n, oh, ow, c = dy.shape
    for ni in prange(n):                              # one sample per task: no write races
        dx[ni] = 0.0
        for yo in range(oh):
            for xo in range(ow):
                for ci in range(c):
                    t = arg[ni, yo, xo, ci]
                    i = t // k
                    dx[ni, yo * stride + i, xo * stride + t - i * k, ci] += dy[ni, yo, xo, ci]


@register(ref.maxpool2d_nhwc_forward, "numba")
def maxpool2d_nhwc_forward(x: np.ndarray, kernel: int, stride: int
                           ) -> tuple[np.ndarray, np.ndarray]:
    oh, ow = ref.check_pool("maxpool2d_nhwc_forward", x, kernel, stride, "numpy")
    n, c = x.shape[0], x.shape[3]
    y = np.empty((n, oh, ow, c), dtype=x.dtype)
    arg = np.empty((n, oh, ow, c), dtype=np.uint8)
    _maxpool_fwd(np.ascontiguousarray(x), kernel, stride, y, arg)
    return y, arg


@register(ref.maxpool2d_nhwc_backward, "numba")
def maxpool2d_nhwc_backward(dy: np.ndarray, argmax: np.ndarray,
                            x_shape: tuple[int, int, int, int], kernel: int, stride: int
                            ) -> np.ndarray:
    fn = "maxpool2d_nhwc_backward"
    require_float(fn, "dy", dy, "numpy")
    n, h, w, c = x_shape
    oh, ow = conv_output_size(fn, h, w, kernel, kernel, stride, 0)
    if dy.shape != (n, oh, ow, c) or argmax.shape != (n, oh, ow, c):
        raise ShapeError(f"{fn}: dy and argmax must be {(n, oh, ow, c)}, got {dy.shape} and "
                         f"{argmax.shape}")
    dx = np.empty((n, h, w, c), dtype=dy.dtype)
    _maxpool_bwd(np.ascontiguousarray(dy), np.ascontiguousarray(argmax), kernel, stride, dx)
    return dx


# --------------------------------------------------------------------------- BatchNorm + sign

# float32 throughout: every value is cast with np.float32 and every constant is a float32, so
# each expression is the reference's, evaluated in NumPy's float32 arithmetic.


@njit(cache=True)
def _chunk_total(part):  # type: ignore[no-untyped-def]
    """The per-chunk float64 partial sums ``part[t]`` added in chunk order (t = 0, 1, ...): the
    fixed order that keeps every chunked sum independent of the thread count."""
    out = np.zeros_like(part[0])
    for t in range(part.shape[0]):
        out += part[t]
    return out


@njit(parallel=True, cache=True)
def _row_sums(z, chunks):  # type: ignore[no-untyped-def]
    """float64 per-channel (sum z, sum z^2), ``chunks`` fixed row chunks added in order."""
    m, c = z.shape
    part = np.zeros((chunks, 2, c))
    step = (m + chunks - 1) // chunks
    for t in prange(chunks):
        for r in range(t * step, min(m, (t + 1) * step)):
            for ci in range(c):
                v = np.float64(z[r, ci])
                part[t, 0, ci] += v
                part[t, 1, ci] += v * v
    return _chunk_total(part)


@njit(parallel=True, cache=True)
def _normalise_pack(z, mean, inv_std, gamma, beta, bits):  # type: ignore[no-untyped-def]
    m, c = z.shape
    nw = bits.shape[1]
    for r in prange(m):
        for q in range(nw):
            word = np.uint64(0)
            for j in range(min(64, c - q * 64)):
                ci = q * 64 + j
                y = (np.float32(z[r, ci]) - mean[ci]) * inv_std[ci] * gamma[ci] + beta[ci]
                if y >= 0:
                    word |= np.uint64(1) << np.uint64(j)
            bits[r, q] = word


@njit(cache=True)
def _ste(y, code, beta):  # type: ignore[no-untyped-def]
    """``ops.sign.ste_grad(y, STE_NAMES[code], beta)`` for one float32 y: the one STE table,
    compiled (each line is that table's formula, in float32; tests/test_ste_table.py checks
    it value for value)."""
    if code == 0:
        return np.float32(1.0)
    if code == 1:
        return np.float32(1.0) if abs(y) <= np.float32(1.0) else np.float32(0.0)
    if code == 2:
        return max(np.float32(2.0) - np.float32(2.0) * abs(y), np.float32(0.0))
    t = beta * y
    e = np.exp(-abs(t))
    den = np.float32(1.0) + e
    return (np.float32(2.0) * beta) * e * (np.float32(2.0) - t * np.tanh(np.float32(0.5) * t)) \
        / (den * den)


@njit(parallel=True, cache=True)
def _bn_sign_grad_sums(ds, z, mean, inv_std, gamma, beta, code, sbeta, chunks):  # type: ignore[no-untyped-def]
    """float64 per-channel (sum d, sum d * xhat) of ``chunks`` fixed row chunks, added in order.

    The identity STE (code 0: d = ds) has a loop of its own: with the STE's branches in it,
    the loop over the channels does not vectorise (4-6x slower)."""
    m, c = z.shape
    part = np.zeros((chunks, 2, c))
    step = (m + chunks - 1) // chunks
    for t in prange(chunks):
        s1, s2 = np.zeros(c), np.zeros(c)
        for r in range(t * step, min(m, (t + 1) * step)):
            if code == 0:
                for ci in range(c):
                    xh = (np.float32(z[r, ci]) - mean[ci]) * inv_std[ci]
                    d = ds[r, ci]
                    s1[ci] += np.float64(d)
                    s2[ci] += np.float64(d * xh)
            else:
                for ci in range(c):
                    xh = (np.float32(z[r, ci]) - mean[ci]) * inv_std[ci]
                    d = ds[r, ci] * _ste(xh * gamma[ci] + beta[ci], code, sbeta)
                    s1[ci] += np.float64(d)
                    s2[ci] += np.float64(d * xh)
        part[t, 0] = s1
        part[t, 1] = s2
    return _chunk_total(part)


@njit(parallel=True, cache=True)
def _bn_sign_grad_apply(ds, z, mean, inv_std, gamma, beta, code, sbeta, mg, mgx, dz):  # type: ignore[no-untyped-def]
    """dz = gamma * inv_std * (d - mg - xhat * mgx); the identity STE in a loop of its own."""
    m, c = z.shape
    for r in prange(m):
        if code == 0:
            for ci in range(c):
                xh = (np.float32(z[r, ci]) - mean[ci]) * inv_std[ci]
                dz[r, ci] = gamma[ci] * inv_std[ci] * (ds[r, ci] - mg[ci] - xh * mgx[ci])
        else:
            for ci in range(c):
                xh = (np.float32(z[r, ci]) - mean[ci]) * inv_std[ci]
                d = ds[r, ci] * _ste(xh * gamma[ci] + beta[ci], code, sbeta)
                dz[r, ci] = gamma[ci] * inv_std[ci] * (d - mg[ci] - xh * mgx[ci])


def _float32_rows(gamma: np.ndarray) -> bool:
    return gamma.dtype == np.float32


@register(ref.batch_statistics_rows, "numba")
def batch_statistics_rows(z: np.ndarray, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """The reference's mean and var from ``_row_sums``' chunked float64 sums (for float32;
    other dtypes run the reference). For int32 counts the sums are exact: the same bits."""
    fn = "batch_statistics_rows"
    ref.check_rows(fn, z, "numpy")
    if np.dtype(dtype) != np.float32:
        return ref.batch_statistics_rows.reference(z, dtype)
    m = z.shape[0]
    sums = _row_sums(np.ascontiguousarray(z), STAT_CHUNKS)
    mean64 = sums[0] / m
    var = np.maximum(sums[1] / m - mean64 * mean64, 0.0).astype(np.float32)
    return mean64.astype(np.float32), var


@register(ref.batchnorm_sign_pack_train, "numba")
def batchnorm_sign_pack_train(z: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                              eps: float = 1e-5
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two passes: the float64 sums (``batch_statistics_rows``), then normalise + sign + pack
    (float32; see the header)."""
    fn = "batchnorm_sign_pack_train"
    ref.check_rows(fn, z, "numpy")
    ref.check_affine(fn, z, gamma, beta, "numpy")
    if not _float32_rows(gamma):
        return ref.batchnorm_sign_pack_train.reference(z, gamma, beta, eps)
    z = np.ascontiguousarray(z)
    mean, var = batch_statistics_rows(z, gamma.dtype)
    inv_std = 1.0 / np.sqrt(var + eps)
    bits = np.empty((z.shape[0], words_for(z.shape[1])), dtype=np.uint64)
    _normalise_pack(z, mean, inv_std, gamma, beta, bits)
    return bits, mean, var, inv_std


@register(ref.batchnorm_sign_pack_eval, "numba")
def batchnorm_sign_pack_eval(z: np.ndarray, mean: np.ndarray, var: np.ndarray, gamma: np.ndarray,
                             beta: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    fn = "batchnorm_sign_pack_eval"
    ref.check_affine(fn, z, gamma, beta, "numpy")
    ref.check_affine(fn, z, mean, var, "numpy")
    if not _float32_rows(gamma):
        return ref.batchnorm_sign_pack_eval.reference(z, mean, var, gamma, beta, eps)
    inv_std = 1.0 / np.sqrt(var + eps)
    bits = np.empty((z.shape[0], words_for(z.shape[1])), dtype=np.uint64)
    _normalise_pack(np.ascontiguousarray(z), mean, inv_std, gamma, beta, bits)
    return bits


@njit(parallel=True, cache=True)
def _bias_sign_pack(x, b, bits):  # type: ignore[no-untyped-def]
    m, c = x.shape
    for r in prange(m):
        for q in range(bits.shape[1]):
            word = np.uint64(0)
            for j in range(min(64, c - q * 64)):          # last, partial word: pad bits stay 0
                ci = q * 64 + j
                word |= np.uint64(x[r, ci] + b[ci] >= 0) << np.uint64(j)   # y = x + b, x's dtype
            bits[r, q] = word


@register(ref.bias_sign_pack, "numba")
def bias_sign_pack(x: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One pass: add, compare, pack (the reference adds into a new array, then packs it)."""
    ref.check_bias_rows("bias_sign_pack", x, b, "numpy")
    bits = np.empty((x.shape[0], words_for(x.shape[1])), dtype=np.uint64)
    _bias_sign_pack(np.ascontiguousarray(x), np.ascontiguousarray(b), bits)
    return bits


@register(ref.batchnorm_sign_pack_backward, "numba")
def batchnorm_sign_pack_backward(ds: np.ndarray, z: np.ndarray, mean: np.ndarray,
                                 inv_std: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                                 ste: str = "identity", ste_beta: float = 5.0
                                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two passes: the float64 gradient sums, then dz (float32; see the header)."""
    fn = "batchnorm_sign_pack_backward"
    ref.check_rows(fn, z, "numpy")
    ref.check_affine(fn, z, gamma, beta, "numpy")
    code = ref.check_ste_code(fn, ste)
    if ds.shape != z.shape or ds.dtype != gamma.dtype:
        raise ShapeError(f"{fn}: ds must be {gamma.dtype} {z.shape}, got {ds.dtype} {ds.shape}")
    if not _float32_rows(gamma):
        return ref.batchnorm_sign_pack_backward.reference(ds, z, mean, inv_std, gamma, beta,
                                                          ste, ste_beta)
    ds, z = np.ascontiguousarray(ds), np.ascontiguousarray(z)
    m = z.shape[0]
    sbeta = np.float32(ste_beta)
    sums = _bn_sign_grad_sums(ds, z, mean, inv_std, gamma, beta, code, sbeta, STAT_CHUNKS)
    mg, mgx = (sums[0] / m).astype(np.float32), (sums[1] / m).astype(np.float32)
    dz = np.empty(z.shape, dtype=np.float32)
    _bn_sign_grad_apply(ds, z, mean, inv_std, gamma, beta, code, sbeta, mg, mgx, dz)
    return dz, sums[1].astype(np.float32), sums[0].astype(np.float32)


# --------------------------------------------------------------------------- per-channel rows
# One pass over the rows each, float32 only (float64 runs the reference): every expression is
# the reference's, term for term in its order, in float32; only a per-channel sum differs,
# taken as STAT_CHUNKS fixed row chunks in float64 (each chunk's rows in order, the chunks
# added in order) where the reference sums wide rows pairwise: the same float64 sum to
# rounding, so the float32 result agrees to the last bit or one ulp.


@njit(parallel=True, cache=True)
def _normalise_rows(z, mean, inv_std, gamma, beta, y):  # type: ignore[no-untyped-def]
    m, c = z.shape
    for r in prange(m):
        for ci in range(c):
            y[r, ci] = (np.float32(z[r, ci]) - mean[ci]) * inv_std[ci] * gamma[ci] + beta[ci]


@register(ref.batchnorm_normalise_rows, "numba")
def batchnorm_normalise_rows(z: np.ndarray, mean: np.ndarray, inv_std: np.ndarray,
                             gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """One pass, float32 (the reference's four passes over wide rows otherwise)."""
    ref.check_normalise_rows("batchnorm_normalise_rows", z, mean, inv_std, gamma, beta,
                             "numpy")
    if not _float32_rows(gamma):
        return ref.batchnorm_normalise_rows.reference(z, mean, inv_std, gamma, beta)
    y = np.empty(z.shape, dtype=np.float32)
    _normalise_rows(np.ascontiguousarray(z), mean, inv_std, gamma, beta, y)
    return y


@njit(parallel=True, cache=True)
def _normalise_add_rows(z, mean, inv_std, gamma, beta, s, y):  # type: ignore[no-untyped-def]
    m, c = z.shape
    for r in prange(m):
        for ci in range(c):
            bn = (np.float32(z[r, ci]) - mean[ci]) * inv_std[ci] * gamma[ci] + beta[ci]
            y[r, ci] = bn + s[r, ci]                  # the add after the rounded BatchNorm


@register(ref.batchnorm_normalise_add_rows, "numba")
def batchnorm_normalise_add_rows(z: np.ndarray, mean: np.ndarray, inv_std: np.ndarray,
                                 gamma: np.ndarray, beta: np.ndarray, s: np.ndarray
                                 ) -> np.ndarray:
    """One pass, float32 (the reference: ``batchnorm_normalise_rows``, then ``+= s``)."""
    fn = "batchnorm_normalise_add_rows"
    ref.check_normalise_rows(fn, z, mean, inv_std, gamma, beta, "numpy")
    require_float(fn, "s", s, "numpy")
    if s.shape != z.shape or s.dtype != gamma.dtype:
        raise ShapeError(f"{fn}: s must be {gamma.dtype} {z.shape}, got {s.dtype} {s.shape}")
    if not _float32_rows(gamma):
        return ref.batchnorm_normalise_add_rows.reference(z, mean, inv_std, gamma, beta, s)
    y = np.empty(z.shape, dtype=np.float32)
    _normalise_add_rows(np.ascontiguousarray(z), mean, inv_std, gamma, beta,
                        np.ascontiguousarray(s), y)
    return y


@njit(parallel=True, cache=True)
def _prelu_rows(x, a, y):  # type: ignore[no-untyped-def]
    m, c = x.shape
    zero = np.float32(0.0)
    for r in prange(m):
        for ci in range(c):
            v = x[r, ci]
            y[r, ci] = a[ci] * min(v, zero) + max(v, zero)


@register(ref.prelu_rows_forward, "numba")
def prelu_rows_forward(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    """One pass, float32: ``a * min(x, 0) + max(x, 0)`` as the reference."""
    ref.check_channel_rows("prelu_rows_forward", x, {"a": a}, "numpy")
    if x.dtype != np.float32:
        return ref.prelu_rows_forward.reference(x, a)
    y = np.empty(x.shape, dtype=np.float32)
    _prelu_rows(np.ascontiguousarray(x), a, y)
    return y


@njit(parallel=True, cache=True)
def _prelu_rows_grad(dy, x, a, chunks, dx):  # type: ignore[no-untyped-def]
    """dx = a*q + p (p = dy * (x > 0), q = dy - p); returns the float64 sum of q*x per chunk."""
    m, c = x.shape
    part = np.zeros((chunks, c))
    step = (m + chunks - 1) // chunks
    for t in prange(chunks):
        acc = np.zeros(c)
        for r in range(t * step, min(m, (t + 1) * step)):
            for ci in range(c):
                v = x[r, ci]
                p = dy[r, ci] * np.float32(1.0 if v > 0 else 0.0)
                q = dy[r, ci] - p
                acc[ci] += np.float64(q * v)
                dx[r, ci] = a[ci] * q + p
        part[t] = acc
    return _chunk_total(part)


@register(ref.prelu_rows_backward, "numba")
def prelu_rows_backward(dy: np.ndarray, x: np.ndarray, a: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """One pass, float32: dx and the chunked float64 sums of q*x (the section header)."""
    fn = "prelu_rows_backward"
    ref.check_channel_rows(fn, x, {"a": a}, "numpy")
    ref.check_like(fn, "dy", dy, x, "numpy")
    if x.dtype != np.float32:
        return ref.prelu_rows_backward.reference(dy, x, a)
    dx = np.empty(x.shape, dtype=np.float32)
    da = _prelu_rows_grad(np.ascontiguousarray(dy), np.ascontiguousarray(x), a, STAT_CHUNKS,
                          dx)
    return dx, da.astype(np.float32)


@njit(parallel=True, cache=True)
def _bias_sign_grad(ds, x, b, code, sbeta, chunks, d):  # type: ignore[no-untyped-def]
    """d = ds * ste'(x + b); returns the float64 sum of d per chunk."""
    m, c = x.shape
    part = np.zeros((chunks, c))
    step = (m + chunks - 1) // chunks
    for t in prange(chunks):
        acc = np.zeros(c)
        for r in range(t * step, min(m, (t + 1) * step)):
            for ci in range(c):
                v = ds[r, ci] * _ste(x[r, ci] + b[ci], code, sbeta)
                acc[ci] += np.float64(v)
                d[r, ci] = v
        part[t] = acc
    return _chunk_total(part)


@register(ref.bias_sign_pack_backward, "numba")
def bias_sign_pack_backward(ds: np.ndarray, x: np.ndarray, b: np.ndarray,
                            ste: str = "identity", ste_beta: float = 5.0
                            ) -> tuple[np.ndarray, np.ndarray]:
    """One pass, float32: d and the chunked float64 sums of d (the section header)."""
    fn = "bias_sign_pack_backward"
    ref.check_bias_rows(fn, x, b, "numpy")
    ref.check_like(fn, "ds", ds, x, "numpy")
    code = ref.check_ste_code(fn, ste)
    if x.dtype != np.float32:
        return ref.bias_sign_pack_backward.reference(ds, x, b, ste, ste_beta)
    d = np.empty(x.shape, dtype=np.float32)
    db = _bias_sign_grad(np.ascontiguousarray(ds), np.ascontiguousarray(x), b, code,
                         np.float32(ste_beta), STAT_CHUNKS, d)
    return d, db.astype(np.float32)
