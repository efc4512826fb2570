"""Numba CPU bodies of the kernel ops (``@register(ref.<op>, "numba")``), for NumPy arrays.

Each public function has the name and signature of its reference body in ``kernels.reference``
(the oracle), checks its arguments in Python with the same helpers (``_common``),
allocates the outputs with NumPy (whose allocator asks for huge pages: a 75 MB im2col output
allocated inside ``@njit`` spent more time in page faults than in copying) and calls one
``@njit(cache=True)`` loop. ``parallel=True`` + ``prange`` splits the outermost loop over
Numba's threads (``--threads``, ``kernels.threads``); calls with less than ``PARALLEL_MIN_WORK``
elements of work run on one thread, where waking the others costs more than it saves. No
``prange`` loop here adds across iterations, so the results do not depend on the thread count.

``fastmath`` is off, and floating-point kernels evaluate the same expressions in the same order
as the reference, so elementwise kernels (im2col, max-pooling forward, BatchNorm+sign, the
optimiser steps) agree with the reference bit for bit; kernels that add in another order
(col2im, max-pooling backward with overlapping windows) differ by rounding. The BatchNorm
batch statistics are the reference's own NumPy reductions (``reference.batch_statistics``) or,
for a dense layer's (N, C) rows, a loop that adds in NumPy's order, so train-mode
BatchNorm+sign is exact too, and so is its backward pass (its sums in NumPy's order as well).
Ops without a body here (``pack_conv_weights``, done once ahead of inference) run their
reference.

The convolution itself stays ``im2col`` + a BLAS GEMM (``cols @ w.reshape(O, -1).T``, through
``kernels.threads.matmul``: one-threaded BLAS on fixed blocks, the same bits on any thread
count): a direct Numba convolution measured about ten times slower than that on a CIFAR-size layer
(``benchmarks/bench_kernels.py`` shows both).

Bit-packed kernels use LLVM's ``ctpop`` through a Numba intrinsic, because
``np.bitwise_count`` is not supported inside ``@njit``; LLVM turns it into ``popcnt`` or, where
the CPU has AVX-512 VPOPCNTDQ, into vector popcounts.
"""
from __future__ import annotations

from minibnn.kernels.threads import import_numba

import_numba()      # the one environment setting minibnn makes: see kernels/threads.py

from contextlib import contextmanager  # noqa: E402
from typing import Iterator  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import njit, prange, types  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

from minibnn.errors import ShapeError  # noqa: E402
from minibnn.kernels._common import (  # noqa: E402
    as_scalars, channel_vector, channel_view, check_binary_conv, check_binary_conv_fold,
    check_binary_conv_table, check_directions, check_inplace, check_momentum_buffer,
    check_packed_pair, check_packed_signs, check_step, check_thresholds, check_tie, col2im_shape,
    conv_output_size, maxpool_backward_shape, require_array, require_float, require_ndim,
    words_for)
from minibnn.kernels import reference as ref  # noqa: E402
from minibnn.kernels.reference import batch_statistics  # noqa: E402
from minibnn.kernels.registry import register  # noqa: E402
from minibnn.kernels.cpu_channels_last import _ste  # noqa: E402  (the one compiled STE table)
from minibnn.ops.sign import STE_NAMES, check_ste  # noqa: E402


@intrinsic
def popcount64(typingctx, x):  # type: ignore[no-untyped-def]
    """Number of set bits of a 64-bit integer, as int64 (LLVM ``llvm.ctpop.i64``)."""
    if not (isinstance(x, types.Integer) and x.bitwidth == 64):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.ctpop(args[0])

    return types.int64(x), codegen


#: Work (elements touched) below which a kernel runs on one thread.
PARALLEL_MIN_WORK = 1 << 16


@contextmanager
def _threads_for(work: int, min_work: int = PARALLEL_MIN_WORK) -> Iterator[None]:
    """Run the enclosed kernel call on one thread when ``work`` is below ``min_work``."""
    if work >= min_work:
        yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


# --------------------------------------------------------------------------- convolution


@njit(parallel=True, cache=True)
def _im2col(x, kh, kw, stride, padding, oh, ow, cols):  # type: ignore[no-untyped-def]
    n, c, h, w = x.shape
    for r in prange(n * oh):
        ni = r // oh
        yo = r - ni * oh
        for xo in range(ow):
            row = r * ow + xo                       # = (n*OH + oh)*OW + ow
            for ci in range(c):
                for i in range(kh):
                    hi = yo * stride + i - padding
                    base = (ci * kh + i) * kw
                    for j in range(kw):
                        wi = xo * stride + j - padding
                        if 0 <= hi < h and 0 <= wi < w:
                            cols[row, base + j] = x[ni, ci, hi, wi]
                        else:
                            cols[row, base + j] = 0


@register(ref.im2col, "numba")
def im2col(x: np.ndarray, kh: int, kw: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """x (N, C, H, W) -> cols (N*OH*OW, C*kH*kW); layout of ``reference.im2col``."""
    require_float("im2col", "x", x, "numpy")
    require_ndim("im2col", "x", x, (4,), "4-D (N, C, H, W)")
    n, c, h, w = x.shape
    oh, ow = conv_output_size("im2col", h, w, kh, kw, stride, padding)
    cols = np.empty((n * oh * ow, c * kh * kw), dtype=x.dtype)
    with _threads_for(cols.size):
        _im2col(np.ascontiguousarray(x), kh, kw, stride, padding, oh, ow, cols)
    return cols


@njit(parallel=True, cache=True)
def _col2im(cols, kh, kw, stride, padding, oh, ow, out):  # type: ignore[no-untyped-def]
    n, c, h, w = out.shape
    for ni in prange(n):                            # one sample per task: no write conflicts
        for yo in range(oh):
            for xo in range(ow):
                row = (ni * oh + yo) * ow + xo
                for ci in range(c):
                    for i in range(kh):
                        hi = yo * stride + i - padding
                        if hi < 0 or hi >= h:
                            continue
                        base = (ci * kh + i) * kw
                        for j in range(kw):
                            wi = xo * stride + j - padding
                            if 0 <= wi < w:
                                out[ni, ci, hi, wi] += cols[row, base + j]


@register(ref.col2im, "numba")
def col2im(cols: np.ndarray, x_shape: tuple[int, int, int, int], kh: int, kw: int,
           stride: int = 1, padding: int = 0) -> np.ndarray:
    """Adjoint of ``im2col``: cols (N*OH*OW, C*kH*kW) -> dx of shape ``x_shape``."""
    require_float("col2im", "cols", cols, "numpy")
    n, c, h, w, oh, ow = col2im_shape(cols, x_shape, kh, kw, stride, padding)
    out = np.zeros((n, c, h, w), dtype=cols.dtype)
    with _threads_for(cols.size if n > 1 else 0):
        _col2im(np.ascontiguousarray(cols), kh, kw, stride, padding, oh, ow, out)
    return out


# --------------------------------------------------------------------------- pooling


@njit(parallel=True, cache=True)
def _maxpool_fwd(x, k, stride, padding, y, arg):  # type: ignore[no-untyped-def]
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    for plane in prange(n * c):
        ni = plane // c
        ci = plane - ni * c
        for yo in range(oh):
            for xo in range(ow):
                best = -np.inf                    # float64 holds every float32 exactly
                best_t = -1
                for i in range(k):
                    hi = yo * stride + i - padding
                    for j in range(k):
                        wi = xo * stride + j - padding
                        v = -np.inf
                        if 0 <= hi < h and 0 <= wi < w:
                            v = x[ni, ci, hi, wi]
                        # np.argmax: the first maximum wins, and a NaN beats everything.
                        if best_t < 0 or (best == best and (v > best or v != v)):
                            best = v
                            best_t = i * k + j
                y[ni, ci, yo, xo] = best
                arg[(plane * oh + yo) * ow + xo] = best_t


@register(ref.maxpool2d_forward, "numba")
def maxpool2d_forward(x: np.ndarray, kernel: int, stride: int | None = None,
                      padding: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """y (N, C, OH, OW) and argmax (N*C*OH*OW,) int64 (position i*kernel + j in the window)."""
    require_float("maxpool2d_forward", "x", x, "numpy")
    require_ndim("maxpool2d_forward", "x", x, (4,), "4-D (N, C, H, W)")
    stride = kernel if stride is None else stride
    n, c, h, w = x.shape
    oh, ow = conv_output_size("maxpool2d_forward", h, w, kernel, kernel, stride, padding)
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    arg = np.empty(n * c * oh * ow, dtype=np.int64)
    with _threads_for(x.size):
        _maxpool_fwd(np.ascontiguousarray(x), kernel, stride, padding, y, arg)
    return y, arg


@njit(parallel=True, cache=True)
def _maxpool_bwd(dy, arg, k, stride, padding, dx):  # type: ignore[no-untyped-def]
    n, c, oh, ow = dy.shape
    h, w = dx.shape[2], dx.shape[3]
    for plane in prange(n * c):                     # windows of one plane stay in that plane
        ni = plane // c
        ci = plane - ni * c
        for yo in range(oh):
            for xo in range(ow):
                t = arg[(plane * oh + yo) * ow + xo]
                hi = yo * stride + t // k - padding
                wi = xo * stride + t % k - padding
                if 0 <= hi < h and 0 <= wi < w:
                    dx[ni, ci, hi, wi] += dy[ni, ci, yo, xo]


@register(ref.maxpool2d_backward, "numba")
def maxpool2d_backward(dy: np.ndarray, argmax: np.ndarray, x_shape: tuple[int, int, int, int],
                       kernel: int, stride: int | None = None, padding: int = 0) -> np.ndarray:
    """Route dy to the arg-max of each window; overlapping windows add. Returns dx (x_shape)."""
    require_float("maxpool2d_backward", "dy", dy, "numpy")
    require_array("maxpool2d_backward", "argmax", argmax, "numpy")
    n, c, h, w, stride = maxpool_backward_shape(dy, argmax, x_shape, kernel, stride, padding)
    dx = np.zeros((n, c, h, w), dtype=dy.dtype)
    with _threads_for(dx.size):
        _maxpool_bwd(np.ascontiguousarray(dy), np.ascontiguousarray(argmax, dtype=np.int64),
                     kernel, stride, padding, dx)
    return dx


# --------------------------------------------------------------------------- BatchNorm + sign


@njit(parallel=True, cache=True)
def _bn_sign_apply(x3, mean, inv_std, gamma, beta, s, y, xhat, keep):  # type: ignore[no-untyped-def]
    n, c, length = x3.shape
    for ni in prange(n):           # one sample per iteration: no division per (n, c) row,
        for ci in range(c):        # which cost more than the arithmetic when H*W is 1 (MLPs)
            mu, inv, ga, be = mean[ci], inv_std[ci], gamma[ci], beta[ci]
            for j in range(length):
                xh = (x3[ni, ci, j] - mu) * inv       # xhat = (x - mean) * inv_std
                yv = xh * ga + be                     # y = xhat * gamma + beta
                s[ni, ci, j] = 1.0 if yv >= 0 else -1.0
                if keep:
                    y[ni, ci, j] = yv
                    xhat[ni, ci, j] = xh


@njit(parallel=True, cache=True)
def _bn_sign_apply_dense(x, mean, inv_std, gamma, beta, s, y, xhat, keep):  # type: ignore[no-untyped-def]
    """``_bn_sign_apply`` for (N, C) rows (H*W = 1: a dense layer's BatchNorm), the loop over
    the channels innermost, where it vectorises (3x faster at (128, 1024)); y and xhat are
    written only with ``keep``."""
    n, c = x.shape
    for ni in prange(n):
        for ci in range(c):
            xh = (x[ni, ci] - mean[ci]) * inv_std[ci]
            yv = xh * gamma[ci] + beta[ci]
            s[ni, ci] = 1.0 if yv >= 0 else -1.0
            if keep:
                y[ni, ci] = yv
                xhat[ni, ci] = xh


@njit(parallel=True, cache=True)
def _dense_batch_statistics(x, mean, var):  # type: ignore[no-untyped-def]
    """``reference.batch_statistics`` of a C-contiguous (N, C) array with C >= 2, bit for bit:
    NumPy sums over axis 0 from 0 in row order, in x's dtype (with C = 1 the axis is contiguous
    and NumPy sums pairwise: callers send that case to the reference), and ``var`` is
    ``mean((x - mean)**2)`` (NumPy's ``var``: its own mean, the squares, their sum, divided by
    N). Channels in blocks of 64, one block per iteration, each summed into an array of its
    own."""
    n, c = x.shape
    for q in prange((c + 63) // 64):
        lo, hi = q * 64, min(c, q * 64 + 64)
        acc = np.zeros(hi - lo, x.dtype)
        for r in range(n):
            xr = x[r, lo:hi]
            for j in range(hi - lo):
                acc[j] += xr[j]
        for j in range(hi - lo):
            mean[lo + j] = acc[j] / n
            acc[j] = 0.0
        mu = mean[lo:hi].copy()
        for r in range(n):
            xr = x[r, lo:hi]
            for j in range(hi - lo):
                d = xr[j] - mu[j]
                acc[j] += d * d
        for j in range(hi - lo):
            var[lo + j] = acc[j] / n


#: values below which the dense (N, C) kernels run on one thread (waking two costs more there)
DENSE_PARALLEL_MIN_WORK = 1 << 19


@register(ref.batchnorm_sign_eval, "numba")
def batchnorm_sign_eval(x: np.ndarray, mean: np.ndarray, var: np.ndarray,
                        gamma: np.ndarray | None = None, beta: np.ndarray | None = None,
                        eps: float = 1e-5) -> np.ndarray:
    """``sign(gamma * (x - mean) / sqrt(var + eps) + beta)``, one pass; see the reference."""
    fn = "batchnorm_sign_eval"
    require_float(fn, "x", x, "numpy")
    x3 = np.ascontiguousarray(channel_view(fn, x))
    mean = channel_vector(fn, "mean", mean, x, 0.0, "numpy")
    var = channel_vector(fn, "var", var, x, 1.0, "numpy")
    gamma = channel_vector(fn, "gamma", gamma, x, 1.0, "numpy")
    beta = channel_vector(fn, "beta", beta, x, 0.0, "numpy")
    inv_std = 1.0 / np.sqrt(var + eps)            # (C,): computed as the reference does
    s = np.empty_like(x3)
    if x3.shape[2] == 1:                            # (N, C) rows: a dense layer's BatchNorm
        rows, s2 = x3.reshape(x3.shape[:2]), s.reshape(x3.shape[:2])
        with _threads_for(x3.size, DENSE_PARALLEL_MIN_WORK):     # (y, xhat: not written)
            _bn_sign_apply_dense(rows, mean, inv_std, gamma, beta, s2, s2, s2, False)
        return s.reshape(x.shape)
    unused = np.empty((0, 0, 0), dtype=x.dtype)
    with _threads_for(x3.size):
        _bn_sign_apply(x3, mean, inv_std, gamma, beta, s, unused, unused, False)
    return s.reshape(x.shape)


@register(ref.batchnorm_sign_train, "numba")
def batchnorm_sign_train(x: np.ndarray, gamma: np.ndarray | None = None,
                         beta: np.ndarray | None = None, eps: float = 1e-5
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                    np.ndarray]:
    """Batch-statistics BatchNorm + sign: ``(s, y, xhat, mean, var, inv_std)`` as the reference.

    The statistics are the reference's NumPy reductions (so every bit agrees), or for (N, C)
    rows with C >= 2 a loop that sums in NumPy's order (the same bits); normalise, affine and
    sign are one pass that writes s, y and xhat.
    """
    fn = "batchnorm_sign_train"
    require_float(fn, "x", x, "numpy")
    x3 = np.ascontiguousarray(channel_view(fn, x))
    gamma = channel_vector(fn, "gamma", gamma, x, 1.0, "numpy")
    beta = channel_vector(fn, "beta", beta, x, 0.0, "numpy")
    s, y, xhat = np.empty_like(x3), np.empty_like(x3), np.empty_like(x3)
    if x3.shape[2] == 1 and x3.shape[1] >= 2:       # (N, C) rows: a dense layer's BatchNorm
        rows = x3.reshape(x3.shape[:2])
        mean, var = np.empty(rows.shape[1], x.dtype), np.empty(rows.shape[1], x.dtype)
        s2, y2, xhat2 = s.reshape(rows.shape), y.reshape(rows.shape), xhat.reshape(rows.shape)
        with _threads_for(x3.size, DENSE_PARALLEL_MIN_WORK):
            _dense_batch_statistics(rows, mean, var)
            inv_std = 1.0 / np.sqrt(var + eps)
            _bn_sign_apply_dense(rows, mean, inv_std, gamma, beta, s2, y2, xhat2, True)
    else:
        mean, var = batch_statistics(x)
        inv_std = 1.0 / np.sqrt(var + eps)
        with _threads_for(x3.size):
            _bn_sign_apply(x3, mean, inv_std, gamma, beta, s, y, xhat, True)
    return s.reshape(x.shape), y.reshape(x.shape), xhat.reshape(x.shape), mean, var, inv_std


@njit(parallel=True, cache=True)
def _bn_sign_grad_sums_dense(ds, y, xhat, gamma, code, sbeta, sums):  # type: ignore[no-untyped-def]
    """Per channel: sums[0] = sum d, sums[1] = sum d * xhat, sums[2] = sum g, sums[3] = sum
    g * xhat (d = ds * ste'(y), g = d * gamma), in float32, from 0 and in row order: NumPy's
    order for a sum over axis 0 of a C-contiguous (N, C) array. Channels in blocks of 64, one
    block per iteration, summed into arrays of the block's own; each row's STE factors are
    taken first, in a loop of their own (with the STE's branches in it, the loop of sums
    would not vectorise: 6x slower). The identity STE's factor 1 gives d = ds exactly."""
    m, c = ds.shape
    for q in prange((c + 63) // 64):
        lo, hi = q * 64, min(c, q * 64 + 64)
        w = hi - lo
        s0, s1 = np.zeros(w, np.float32), np.zeros(w, np.float32)
        s2, s3 = np.zeros(w, np.float32), np.zeros(w, np.float32)
        ga, f = gamma[lo:hi].copy(), np.empty(w, np.float32)
        for r in range(m):
            dr, yr, xr = ds[r, lo:hi], y[r, lo:hi], xhat[r, lo:hi]
            for j in range(w):
                f[j] = _ste(yr[j], code, sbeta)
            for j in range(w):
                d = dr[j] * f[j]
                g = d * ga[j]
                s0[j] += d
                s1[j] += d * xr[j]
                s2[j] += g
                s3[j] += g * xr[j]
        sums[0, lo:hi] = s0
        sums[1, lo:hi] = s1
        sums[2, lo:hi] = s2
        sums[3, lo:hi] = s3


@njit(parallel=True, cache=True)
def _bn_sign_grad_dx_dense(ds, y, xhat, gamma, inv_std, g_mean, gx_mean, code, sbeta, dx):  # type: ignore[no-untyped-def]
    """dx = (g - mean(g) - xhat * mean(g * xhat)) * inv_std, one row per iteration (the STE's
    factors first, as above)."""
    m, c = ds.shape
    for r in prange(m):
        f = np.empty(c, np.float32)
        for ci in range(c):
            f[ci] = _ste(y[r, ci], code, sbeta)
        for ci in range(c):
            g = ds[r, ci] * f[ci] * gamma[ci]
            dx[r, ci] = (g - g_mean[ci] - xhat[r, ci] * gx_mean[ci]) * inv_std[ci]


@register(ref.batchnorm_sign_backward_train, "numba")
def batchnorm_sign_backward_train(ds: np.ndarray, y: np.ndarray, xhat: np.ndarray,
                                  inv_std: np.ndarray, gamma: np.ndarray, ste: str = "identity",
                                  ste_beta: float = 5.0
                                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two passes over C-contiguous float32 (N, C) arrays, C >= 2 (a dense layer's
    BatchNorm+sign): the four per-channel sums, then dx; every expression the reference's, in
    its order and float32, and each sum in NumPy's order, so the bits are the reference's.
    Other inputs run the reference: NCHW, float64, other memory orders and C = 1 (NumPy sums
    those in another order), and the "swish" STE (its exp and tanh round differently in
    Numba: test_ste_table).
    """
    fn = "batchnorm_sign_backward_train"
    for name, a in (("ds", ds), ("y", y), ("xhat", xhat)):
        require_float(fn, name, a, "numpy")
    dense = (xhat.ndim == 2 and xhat.shape[1] >= 2 and xhat.dtype == np.float32
             and ste != "swish"
             and all(a.shape == xhat.shape and a.dtype == np.float32 and a.flags.c_contiguous
                     for a in (ds, y, xhat)))
    if not dense:
        return ref.batchnorm_sign_backward_train.reference(ds, y, xhat, inv_std, gamma, ste,
                                                           ste_beta)
    inv_std = channel_vector(fn, "inv_std", inv_std, xhat, 1.0, "numpy")
    gamma = channel_vector(fn, "gamma", gamma, xhat, 1.0, "numpy")
    sbeta = np.float32(check_ste(fn, ste, ste_beta))
    code = STE_NAMES.index(ste)
    m, c = xhat.shape
    sums = np.zeros((4, c), dtype=np.float32)
    dx = np.empty_like(xhat)
    # (a (128, 1024) batch: 0.21 ms on one thread, 0.32 ms on two: DENSE_PARALLEL_MIN_WORK)
    with _threads_for(xhat.size, DENSE_PARALLEL_MIN_WORK):
        _bn_sign_grad_sums_dense(ds, y, xhat, gamma, code, sbeta, sums)
        g_mean, gx_mean = sums[2] / m, sums[3] / m   # np.mean's division (exact for m < 2^24)
        _bn_sign_grad_dx_dense(ds, y, xhat, gamma, inv_std, g_mean, gx_mean, code, sbeta, dx)
    return dx, sums[1].copy(), sums[0].copy()


# --------------------------------------------------------------------------- optimiser steps
# One pass over memory: each element of every buffer is read once and written once, in place.
# The loops index flat C-contiguous arrays; the gradient, which is only read, may come in any
# layout and is copied to a contiguous one first where it is not (``_flat_read``).


def _flat_read(g: np.ndarray) -> np.ndarray:
    """g as a flat C-contiguous array (a copy only when g is not contiguous already)."""
    return np.ascontiguousarray(g).reshape(-1)


@njit(parallel=True, cache=True)
def _cema(b, m, v, g, c_m, c_g, c_v, c_a, thr, tie_positive):  # type: ignore[no-untyped-def]
    flips = 0
    for i in prange(b.size):
        mi = c_m * m[i] + c_g * g[i]              # m = (1 - gamma) m + gamma g
        vi = c_v * v[i] + c_a * mi                # v = (1 - alpha) v + alpha m
        m[i] = mi
        v[i] = vi
        bi = b[i]
        score = vi * bi
        if score > thr or (tie_positive and score == thr and bi < 0):   # tie: b = +1
            b[i] = -bi
            flips += 1
    return flips


@register(ref.cema_update, "numba")
def cema_update(b: np.ndarray, m: np.ndarray, v: np.ndarray, g: np.ndarray, alpha: float,
                gamma: float, threshold: float = 0.0, tie: str = "keep") -> np.ndarray:
    """Fused CEMA step, in place; returns the number of flips, 0-d (``reference.cema_update``)."""
    dt = check_inplace("cema_update", "numpy", g, b=b, m=m, v=v)
    tie_positive = check_tie("cema_update", tie)
    c_m, c_g, c_v, c_a, thr = as_scalars(dt, 1.0 - gamma, gamma, 1.0 - alpha, alpha, threshold)
    with _threads_for(b.size):
        return np.asarray(_cema(b.reshape(-1), m.reshape(-1), v.reshape(-1), _flat_read(g),
                                c_m, c_g, c_v, c_a, thr, tie_positive), dtype=np.int64)


@njit(parallel=True, cache=True)
def _bop(b, m, g, c_m, c_g, thr, tie_positive):  # type: ignore[no-untyped-def]
    flips = 0
    for i in prange(b.size):
        mi = c_m * m[i] + c_g * g[i]              # m = (1 - gamma) m + gamma g
        m[i] = mi
        bi = b[i]
        score = mi * bi
        if score > thr or (tie_positive and score == thr and bi < 0):   # tie: b = +1
            b[i] = -bi
            flips += 1
    return flips


@register(ref.bop_update, "numba")
def bop_update(b: np.ndarray, m: np.ndarray, g: np.ndarray, gamma: float, threshold: float,
               tie: str = "keep") -> np.ndarray:
    """Fused Bop step, in place; returns the number of flips, 0-d (``reference.bop_update``)."""
    dt = check_inplace("bop_update", "numpy", g, b=b, m=m)
    tie_positive = check_tie("bop_update", tie)
    c_m, c_g, thr = as_scalars(dt, 1.0 - gamma, gamma, threshold)
    with _threads_for(b.size):
        return np.asarray(_bop(b.reshape(-1), m.reshape(-1), _flat_read(g), c_m, c_g, thr,
                               tie_positive), dtype=np.int64)


@njit(parallel=True, cache=True)
def _sgd(w, m, g, lam, mu, c_d, neg_lr, coupled_decay, decoupled_decay, use_momentum,
         first):  # type: ignore[no-untyped-def]
    for i in prange(w.size):
        wi = w[i]
        d = g[i]
        if coupled_decay:
            d = d + lam * wi                      # d = g + lam w
        if use_momentum:
            if first:
                mi = d                            # PyTorch: first buffer = d, undamped
            else:
                mi = mu * m[i] + c_d * d          # m = mu m + (1 - dampening) d
            m[i] = mi
            d = mi
        if decoupled_decay:
            d = d + lam * wi                      # step on m + lam w
        w[i] = wi + neg_lr * d


@register(ref.sgd_update, "numba")
def sgd_update(w: np.ndarray, m: np.ndarray | None, g: np.ndarray, lr: float,
               momentum: float = 0.0, weight_decay: float = 0.0, dampening: float = 0.0,
               decoupled: bool = False, first_step: bool = False) -> None:
    """Fused SGD step, in place (see ``reference.sgd_update`` for the formulas)."""
    fn = "sgd_update"
    check_momentum_buffer(fn, momentum, m)
    dt = check_inplace(fn, "numpy", g, w=w, m=m if momentum != 0.0 else None)
    lam, mu, c_d, neg_lr = as_scalars(dt, weight_decay, momentum, 1.0 - dampening, -lr)
    use_m = momentum != 0.0
    mm = m.reshape(-1) if use_m else np.empty(0, dtype=dt)
    decay = weight_decay != 0.0
    with _threads_for(w.size):
        _sgd(w.reshape(-1), mm, _flat_read(g), lam, mu, c_d, neg_lr, decay and not decoupled,
             decay and decoupled, use_m, bool(first_step))


@njit(parallel=True, cache=True)
def _adam(w, m, v, g, lam, c_b1, c_1b1, c_b2, c_1b2, bc1, bc2, c_eps, neg_lr, coupled_decay,
          decoupled_decay):  # type: ignore[no-untyped-def]
    for i in prange(w.size):
        wi = w[i]
        x = g[i]
        if coupled_decay:
            x = x + lam * wi                      # x = g + lam w
        mi = c_b1 * m[i] + c_1b1 * x              # m = b1 m + (1 - b1) x
        vi = c_b2 * v[i] + c_1b2 * (x * x)        # v = b2 v + (1 - b2) x^2
        m[i] = mi
        v[i] = vi
        u = (mi / bc1) / (np.sqrt(vi / bc2) + c_eps)
        if decoupled_decay:
            u = u + lam * wi
        w[i] = wi + neg_lr * u


@register(ref.adam_update, "numba")
def adam_update(w: np.ndarray, m: np.ndarray, v: np.ndarray, g: np.ndarray, lr: float,
                step: int, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                weight_decay: float = 0.0, decoupled: bool = False) -> None:
    """Fused Adam / AdamW step, in place (see ``reference.adam_update``)."""
    fn = "adam_update"
    dt = check_inplace(fn, "numpy", g, w=w, m=m, v=v)
    check_step(fn, step)
    sc = as_scalars(dt, weight_decay, b1, 1.0 - b1, b2, 1.0 - b2, 1.0 - b1 ** step,
                    1.0 - b2 ** step, eps, -lr)
    decay = weight_decay != 0.0
    with _threads_for(w.size):
        _adam(w.reshape(-1), m.reshape(-1), v.reshape(-1), _flat_read(g), *sc,
              decay and not decoupled, decay and decoupled)


# --------------------------------------------------------------------------- bit packing
# Layout and conventions: see the bit-packing section of reference.py (bit 1 = +1, LSB first,
# pad bits 0).


@njit(parallel=True, cache=True)
def _pack_rows(x2, out):  # type: ignore[no-untyped-def]
    rows, k = x2.shape
    nw = out.shape[1]
    for r in prange(rows):
        for q in range(nw):
            k0 = q * 64
            word = np.uint64(0)
            if k - k0 >= 64:
                for j in range(64):               # a fixed trip count vectorises well
                    word |= np.uint64(x2[r, k0 + j] >= 0) << np.uint64(j)
            else:
                for j in range(k - k0):           # last, partial word: pad bits stay 0
                    word |= np.uint64(x2[r, k0 + j] >= 0) << np.uint64(j)
            out[r, q] = word


@register(ref.pack_signs, "numba")
def pack_signs(x: np.ndarray) -> np.ndarray:
    """Pack sign(x) along the last axis: (..., K) float -> (..., ceil(K/64)) uint64."""
    require_float("pack_signs", "x", x, "numpy")
    if x.ndim < 1:
        raise ShapeError("pack_signs: x must have at least one axis, got a 0-d array")
    k = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(int(np.prod(x.shape[:-1])), k)
    out = np.empty((x2.shape[0], words_for(k)), dtype=np.uint64)
    with _threads_for(x2.size):
        _pack_rows(x2, out)
    return out.reshape(x.shape[:-1] + (words_for(k),))


@njit(parallel=True, cache=True)
def _unpack_rows(p2, k, out):  # type: ignore[no-untyped-def]
    for r in prange(p2.shape[0]):
        for kk in range(k):
            bit = (p2[r, kk >> 6] >> np.uint64(kk & 63)) & np.uint64(1)
            out[r, kk] = 1.0 if bit else -1.0


@register(ref.unpack_signs, "numba")
def unpack_signs(p: np.ndarray, k: int, dtype: type | np.dtype = np.float32) -> np.ndarray:
    """Inverse of ``pack_signs``: (..., W) uint64 -> (..., k) array of ±1 in ``dtype``."""
    check_packed_signs("unpack_signs", p, k, "numpy")
    p2 = np.ascontiguousarray(p).reshape(int(np.prod(p.shape[:-1])), p.shape[-1])
    out = np.empty((p2.shape[0], k), dtype=dtype)
    with _threads_for(out.size):
        _unpack_rows(p2, k, out)
    return out.reshape(p.shape[:-1] + (k,))


@njit(inline="always", cache=True)
def _folded_sign_bit(y, d, dt):  # type: ignore[no-untyped-def]
    """The threshold rule, branch-free: s = +1 iff y >= t (d = +1) or y <= t (d = -1), i.e.
    iff d*y >= d*t; ``dt`` = d*t, precomputed per channel (``_directions``)."""
    return np.uint64(d * y >= dt)


def _directions(threshold: np.ndarray, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d, d*t) as int64 per channel, the two arrays ``_folded_sign_bit`` reads."""
    d = direction.astype(np.int64)
    return d, d * threshold.astype(np.int64)


@njit(parallel=True, cache=True)
def _threshold_pack(y3, d, dt, out):  # type: ignore[no-untyped-def]
    # y3 (N, C, P) int32; out (N*P, W) uint64: row n*P + p packs the C signs of pixel p
    n, c, p = y3.shape
    nw = out.shape[1]
    for r in prange(n * p):
        ni = r // p
        pi = r - ni * p
        for q in range(nw):
            c0 = q * 64
            word = np.uint64(0)
            for j in range(min(64, c - c0)):      # last, partial word: pad bits stay 0
                oc = c0 + j
                word |= _folded_sign_bit(y3[ni, oc, pi], d[oc], dt[oc]) << np.uint64(j)
            out[r, q] = word


@register(ref.threshold_pack, "numba")
def threshold_pack(y: np.ndarray, threshold: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Compare int32 counts with per-channel thresholds and pack the signs, in one pass.

    (N, C) -> (N, ceil(C/64)); (N, C, H, W) -> (N, H, W, ceil(C/64)); see the reference.
    """
    fn = "threshold_pack"
    check_thresholds(fn, y, threshold, direction, "numpy")
    check_directions(fn, direction)
    n, c = y.shape[:2]
    y3 = np.ascontiguousarray(y).reshape(n, c, -1)
    out = np.empty((n * y3.shape[2], words_for(c)), dtype=np.uint64)
    with _threads_for(y.size):
        _threshold_pack(y3, *_directions(threshold, direction), out)
    return out.reshape((n,) + y.shape[2:] + (words_for(c),))


@njit(parallel=True, cache=True)
def _xnor_gemm(a, b, k, out):  # type: ignore[no-untyped-def]
    m, nw = a.shape
    n = b.shape[0]
    nblocks = (m + 3) // 4
    for blk in prange(nblocks):
        i0 = blk * 4
        if i0 + 4 <= m:
            # 4 rows of A against one row of B: each B word is loaded once for 4 popcounts.
            for j in range(n):
                c0 = 0
                c1 = 0
                c2 = 0
                c3 = 0
                for q in range(nw):
                    bq = b[j, q]
                    c0 += popcount64(a[i0, q] ^ bq)
                    c1 += popcount64(a[i0 + 1, q] ^ bq)
                    c2 += popcount64(a[i0 + 2, q] ^ bq)
                    c3 += popcount64(a[i0 + 3, q] ^ bq)
                out[i0, j] = k - 2 * c0            # C = k - 2 popcount(a XOR b)
                out[i0 + 1, j] = k - 2 * c1
                out[i0 + 2, j] = k - 2 * c2
                out[i0 + 3, j] = k - 2 * c3
        else:
            for i in range(i0, m):
                for j in range(n):
                    c0 = 0
                    for q in range(nw):
                        c0 += popcount64(a[i, q] ^ b[j, q])
                    out[i, j] = k - 2 * c0


@register(ref.xnor_gemm, "numba")
def xnor_gemm(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """``C = A @ B.T`` (int32, exact) from packed ±1 rows a (M, W), b (N, W); k = true length."""
    check_packed_pair("xnor_gemm", a, b, k, "numpy")
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.int32)
    with _threads_for(out.size * a.shape[1]):
        _xnor_gemm(np.ascontiguousarray(a), np.ascontiguousarray(b), k, out)
    return out


@njit(parallel=True, cache=True)
def _pack_nchw(x, out):  # type: ignore[no-untyped-def]
    n, c, h, w = x.shape
    full = c // 8 * 8
    for r in prange(n * h):
        ni = r // h
        yi = r - ni * h
        for xi in range(w):
            for q in range(out.shape[3]):
                out[ni, yi, xi, q] = 0
        # Eight channels at a time: their bits form one byte per pixel, OR-ed into the word at
        # bit (c % 64); the reads stay contiguous along the image row.
        for cb in range(0, full, 8):
            sh = np.uint64(cb & 63)
            for xi in range(w):
                byte = np.uint64(0)
                for k in range(8):
                    byte |= np.uint64(x[ni, cb + k, yi, xi] >= 0) << np.uint64(k)
                out[ni, yi, xi, cb >> 6] |= byte << sh
        for ci in range(full, c):
            sh = np.uint64(ci & 63)
            for xi in range(w):
                out[ni, yi, xi, ci >> 6] |= np.uint64(x[ni, ci, yi, xi] >= 0) << sh


@register(ref.pack_conv_input, "numba")
def pack_conv_input(x: np.ndarray) -> np.ndarray:
    """Pack sign(x) of NCHW activations along channels: (N, C, H, W) -> (N, H, W, ceil(C/64))."""
    require_float("pack_conv_input", "x", x, "numpy")
    require_ndim("pack_conv_input", "x", x, (4,), "4-D (N, C, H, W)")
    n, c, h, w = x.shape
    out = np.empty((n, h, w, words_for(c)), dtype=np.uint64)
    with _threads_for(x.size):
        _pack_nchw(np.ascontiguousarray(x), out)
    return out


@njit(cache=True)
def _bconv_pixel(xb, wt, ni, yo, xo, c, kh, kw, stride, padding, acc):  # type: ignore[no-untyped-def]
    """acc[o] = popcount(x XOR w) over the in-bounds taps of one output pixel; returns the
    number of bits that met a real input value (valid taps * C)."""
    h, w, nw = xb.shape[1], xb.shape[2], xb.shape[3]
    acc[:] = 0
    valid = 0
    for i in range(kh):
        hi = yo * stride + i - padding
        if hi < 0 or hi >= h:
            continue
        for j in range(kw):
            wi = xo * stride + j - padding
            if wi < 0 or wi >= w:
                continue                          # a padded tap (x = 0) adds nothing
            valid += 1
            t0 = (i * kw + j) * nw
            for q in range(nw):
                xq = xb[ni, hi, wi, q]
                for oc in range(acc.size):        # contiguous in oc: vector popcounts
                    acc[oc] += popcount64(xq ^ wt[t0 + q, oc])
    return valid * c


@njit(cache=True)
def _bconv_row(xb, wt, c, kh, kw, stride, padding, ni, yo, acc, row):  # type: ignore[no-untyped-def]
    """row[xo, oc] = the exact count y[ni, oc, yo, xo] along output row yo of sample ni, every
    output channel oc (``row`` is (OW, O) int32, ``acc`` (4, O) int64 scratch)."""
    h, w, nw = xb.shape[1], xb.shape[2], xb.shape[3]
    o = wt.shape[1]
    ow = row.shape[0]
    xo = 0
    while xo < ow:
        w0 = xo * stride - padding
        if xo + 3 < ow and w0 >= 0 and w0 + 3 * stride + kw <= w:
            # Four neighbours whose windows are inside horizontally share each weight load.
            acc[:, :] = 0
            a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
            valid = 0
            for i in range(kh):
                hi = yo * stride + i - padding
                if hi < 0 or hi >= h:
                    continue
                valid += kw
                for j in range(kw):
                    t0 = (i * kw + j) * nw
                    for q in range(nw):
                        x0 = xb[ni, hi, w0 + j, q]
                        x1 = xb[ni, hi, w0 + stride + j, q]
                        x2 = xb[ni, hi, w0 + 2 * stride + j, q]
                        x3 = xb[ni, hi, w0 + 3 * stride + j, q]
                        wr = wt[t0 + q]
                        for oc in range(o):
                            wq = wr[oc]
                            a0[oc] += popcount64(x0 ^ wq)
                            a1[oc] += popcount64(x1 ^ wq)
                            a2[oc] += popcount64(x2 ^ wq)
                            a3[oc] += popcount64(x3 ^ wq)
            kb = valid * c
            for p in range(4):
                for oc in range(o):
                    row[xo + p, oc] = kb - 2 * acc[p, oc]   # y = bits - 2 popcount
            xo += 4
        else:
            a0 = acc[0]
            kb = _bconv_pixel(xb, wt, ni, yo, xo, c, kh, kw, stride, padding, a0)
            for oc in range(o):
                row[xo, oc] = kb - 2 * a0[oc]
            xo += 1


@njit(parallel=True, cache=True)
def _binary_conv2d(xb, wt, c, kh, kw, stride, padding, nhwc, out):  # type: ignore[no-untyped-def]
    n = xb.shape[0]
    o = wt.shape[1]
    oh, ow = (out.shape[1], out.shape[2]) if nhwc else (out.shape[2], out.shape[3])
    for r in prange(n * oh):                      # one output row of one sample per task
        ni = r // oh
        yo = r - ni * oh
        acc = np.empty((4, o), dtype=np.int64)
        row = np.empty((ow, o), dtype=np.int32)   # written to out as whole rows, see below
        _bconv_row(xb, wt, c, kh, kw, stride, padding, ni, yo, acc, row)
        # Row-wise stores: scattering each pixel's O values at a stride of OH*OW int32 (4 KiB at
        # 32x32) maps them onto a few L1 sets and measured 3x slower.
        if nhwc:
            for xo in range(ow):
                for oc in range(o):
                    out[ni, yo, xo, oc] = row[xo, oc]
        else:
            for oc in range(o):
                for xo in range(ow):
                    out[ni, oc, yo, xo] = row[xo, oc]


@register(ref.binary_conv2d, "numba")
def binary_conv2d(xbits: np.ndarray, wbits: np.ndarray, wsum: np.ndarray, c: int, kh: int,
                  kw: int, stride: int = 1, padding: int = 0, layout: str = "nchw"
                  ) -> np.ndarray:
    """Exact binary convolution on packed operands -> int32 (N, O, OH, OW), or (N, OH, OW, O)
    with ``layout="nhwc"``.

    Same result as the reference, computed differently at the border: instead of packing
    padded taps as -1 and adding ``wsum`` back, this kernel skips them, so with ``valid``
    in-bounds taps ``y = valid*C - 2 * popcount(x XOR w over those taps)`` (``wsum`` is only
    checked). Per output pixel it loops over taps and words with the output channels
    innermost (weights transposed to (kH*kW*Wc, O)), which vectorises the popcount over O;
    interior pixels go in fours that share the weight loads.
    """
    oh, ow = check_binary_conv("binary_conv2d", xbits, wbits, wsum, c, kh, kw, stride, padding,
                               "numpy", layout)
    n, o = xbits.shape[0], wbits.shape[0]
    nhwc = layout == "nhwc"
    out = np.empty((n, oh, ow, o) if nhwc else (n, o, oh, ow), dtype=np.int32)
    with _threads_for(out.size * wbits.shape[1]):
        _binary_conv2d(np.ascontiguousarray(xbits), np.ascontiguousarray(wbits.T), c, kh, kw,
                       stride, padding, nhwc, out)
    return out


#: the int32 minimum: a max-pool's padding, which never wins (-inf in the float path)
_INT32_MIN = np.iinfo(np.int32).min


@njit(parallel=True, cache=True)
def _binary_conv2d_threshold_pack(xb, wt, c, kh, kw, stride, padding, oh, ow, sgn, st, pk, ps,
                                  pp, out):  # type: ignore[no-untyped-def]
    n, ph, pw, nwo = out.shape
    o = wt.shape[1]
    for r in prange(n * ph):                      # one pooled output row of one sample per task
        ni = r // ph
        py = r - ni * ph
        acc = np.empty((4, o), dtype=np.int64)
        row = np.empty((ow, o), dtype=np.int32)
        best = np.full((pw, o), _INT32_MIN, dtype=np.int32)
        for i in range(pk):                       # the conv rows under this pooled row
            yo = py * ps + i - pp
            if yo < 0 or yo >= oh:
                continue
            _bconv_row(xb, wt, c, kh, kw, stride, padding, ni, yo, acc, row)
            for px in range(pw):
                for j in range(pk):
                    xo = px * ps + j - pp
                    if 0 <= xo < ow:
                        for oc in range(o):
                            best[px, oc] = max(best[px, oc], row[xo, oc])
        for px in range(pw):
            for q in range(nwo):
                word = np.uint64(0)
                for j in range(min(64, o - q * 64)):      # last, partial word: pad bits stay 0
                    oc = q * 64 + j
                    word |= _folded_sign_bit(best[px, oc], sgn[oc], st[oc]) << np.uint64(j)
                out[ni, py, px, q] = word


@register(ref.binary_conv2d_threshold_pack, "numba")
def binary_conv2d_threshold_pack(xbits: np.ndarray, wbits: np.ndarray, wsum: np.ndarray, c: int,
                                 kh: int, kw: int, stride: int, padding: int,
                                 threshold: np.ndarray, direction: np.ndarray,
                                 pool_kernel: int = 1, pool_stride: int = 1,
                                 pool_padding: int = 0) -> np.ndarray:
    """The fused binary conv layer of the reference in one pass: per pooled output row, the
    conv rows under it (``_bconv_row``, as ``binary_conv2d``), their max-pool and the
    thresholded, packed signs; the int32 counts never leave the task's scratch rows."""
    oh, ow, ph, pw = check_binary_conv_fold(
        "binary_conv2d_threshold_pack", xbits, wbits, wsum, c, kh, kw, stride, padding,
        threshold, direction, pool_kernel, pool_stride, pool_padding, "numpy")
    n, o = xbits.shape[0], wbits.shape[0]
    out = np.empty((n, ph, pw, words_for(o)), dtype=np.uint64)
    with _threads_for(n * oh * ow * o * wbits.shape[1]):
        sgn, st = _directions(threshold, direction)
        _binary_conv2d_threshold_pack(np.ascontiguousarray(xbits),
                                      np.ascontiguousarray(wbits.T), c, kh, kw, stride, padding,
                                      oh, ow, sgn, st, pool_kernel, pool_stride,
                                      pool_padding, out)
    return out


@njit(parallel=True, cache=True)
def _binary_conv2d_lookup(xb, wt, c, kh, kw, stride, padding, table,
                          out):  # type: ignore[no-untyped-def]
    n, oh, ow, o = out.shape
    k = kh * kw * c
    for r in prange(n * oh):                      # one output row of one sample per task
        ni = r // oh
        yo = r - ni * oh
        acc = np.empty((4, o), dtype=np.int64)
        row = np.empty((ow, o), dtype=np.int32)
        _bconv_row(xb, wt, c, kh, kw, stride, padding, ni, yo, acc, row)
        for xo in range(ow):
            for oc in range(o):
                out[ni, yo, xo, oc] = table[row[xo, oc] + k, oc]


@register(ref.binary_conv2d_lookup, "numba")
def binary_conv2d_lookup(xbits: np.ndarray, wbits: np.ndarray, wsum: np.ndarray, c: int,
                         kh: int, kw: int, stride: int, padding: int, table: np.ndarray
                         ) -> np.ndarray:
    """The reference's lookup in the conv's epilogue: per output row, the counts
    (``_bconv_row``, as ``binary_conv2d``) are looked up while in scratch, never written."""
    oh, ow = check_binary_conv_table("binary_conv2d_lookup", xbits, wbits, wsum, c, kh, kw,
                                     stride, padding, table, "numpy")
    n, o = xbits.shape[0], wbits.shape[0]
    out = np.empty((n, oh, ow, o), dtype=table.dtype)
    with _threads_for(out.size * wbits.shape[1]):
        _binary_conv2d_lookup(np.ascontiguousarray(xbits), np.ascontiguousarray(wbits.T), c, kh,
                              kw, stride, padding, np.ascontiguousarray(table), out)
    return out


# The channels-last training ops register their Numba bodies from their own module.
import minibnn.kernels.cpu_channels_last  # noqa: E402,F401
