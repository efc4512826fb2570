"""CUDA bodies of the kernel ops (``@register(op, "cuda")``), for CuPy arrays.

Every public function here has the name and signature of its reference body in
``kernels/reference.py`` (the oracle and the documentation of the arithmetic); the channels-last
ops' CUDA bodies are in ``kernels/gpu_channels_last.py``. The CUDA sources themselves are in
``kernels/cuda_sources.py``, one list that CI compiles with NVRTC (``kernels/cuda_build.py``);
this module only checks arguments, allocates outputs and launches (``gpu_launch``). Every
kernel is a ``cupy.RawKernel`` built from that exact text. The arrays are CuPy arrays on the current
device; nothing is copied to or from the host, nothing is read back, and no function
synchronises the device (launches are asynchronous on the current stream).

What is what:
  * fused in-place optimiser steps (``cema_update``, ``bop_update``, ``sgd_update``,
    ``adam_update``): one launch per parameter group, reading and writing every buffer once;
  * fused BatchNorm + sign (``batchnorm_sign_eval``, ``batchnorm_sign_train``): one launch
    (train mode takes the batch statistics from the reference's CuPy reductions,
    ``reference.batch_statistics``);
  * bit packing (``pack_signs`` with warp ballots; ``unpack_signs``), the XNOR-popcount GEMM
    (``xnor_gemm``, shared-memory tiles and ``__popcll``) and the packed binary convolution
    (``binary_conv2d``, direct: no column matrix).

Arithmetic: see ``cuda_sources`` (no FMA contraction; the reference's operation order), so the
float kernels compute NumPy's values. The tests still compare within stated tolerances.

Differences from the other bodies:
  * CuPy arrays have no read-only flag, so "writeable" is not checked. A strided gradient is
    copied to a contiguous one first (the kernels index flat).
  * ``cema_update`` and ``bop_update`` return the flip count as a 0-d int64 array on the
    device, as every body does (``int(n)`` reads it, which synchronises).

Importing this module never imports CuPy. Each public function asks for CuPy on first use and
raises ``minibnn.errors.DeviceError`` (one line) when CuPy is missing or sees no CUDA device.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from minibnn.errors import ShapeError
from minibnn.kernels import cuda_sources as src
from minibnn.kernels._common import (
    as_scalars, channel_vector, channel_view, check_binary_conv, check_inplace,
    check_momentum_buffer, check_packed_pair, check_packed_signs, check_step, check_tie,
    require_float, words_for)
from minibnn.kernels import reference as ref
from minibnn.kernels.reference import batch_statistics
from minibnn.kernels.gpu_launch import cupy_for, ctype, instance, kernel, launch
from minibnn.kernels.registry import register

Array = Any      # a cupy.ndarray (CuPy is imported lazily, so no annotation can name it)


# --------------------------------------------------------------------------- BatchNorm + sign


def _bn_sign(fn: str, x: Array, mean: Array, inv_std: Array, gamma: Array, beta: Array,
             train: bool) -> tuple[Array, Array | None, Array | None]:
    """One launch of ``cuda_sources.BN_SIGN`` over x viewed as (N, C, L): s (and y, xhat)."""
    cp = cupy_for(fn)
    x3 = cp.ascontiguousarray(channel_view(fn, x))
    s = cp.empty_like(x3)
    y, xhat = (cp.empty_like(x3), cp.empty_like(x3)) if train else (s, s)   # eval: unused
    mean, inv_std, gamma, beta = (cp.ascontiguousarray(v) for v in (mean, inv_std, gamma, beta))
    launch(src.BN_SIGN, (ctype(x.dtype),), x3.size,
           (x3, mean, inv_std, gamma, beta, s, y, xhat, np.int64(x3.size),
            np.int64(x3.shape[2]), np.int64(x3.shape[1]), np.int32(train)))
    return s.reshape(x.shape), (y if train else None), (xhat if train else None)


@register(ref.batchnorm_sign_eval, "cuda")
def batchnorm_sign_eval(x: Array, mean: Array, var: Array, gamma: Array | None = None,
                        beta: Array | None = None, eps: float = 1e-5) -> Array:
    """``sign(gamma * (x - mean) / sqrt(var + eps) + beta)`` per channel (axis 1), one launch.

    x is (N, C) or (N, C, H, W); see ``reference.batchnorm_sign_eval`` for the operation order.
    """
    fn = "batchnorm_sign_eval"
    cp = cupy_for(fn)
    require_float(fn, "x", x, "cupy")
    mean = channel_vector(fn, "mean", mean, x, 0.0, "cupy")
    var = channel_vector(fn, "var", var, x, 1.0, "cupy")
    gamma = channel_vector(fn, "gamma", gamma, x, 1.0, "cupy")
    beta = channel_vector(fn, "beta", beta, x, 0.0, "cupy")
    inv_std = 1.0 / cp.sqrt(var + eps)             # (C,), computed as the reference does
    return _bn_sign(fn, x, mean, inv_std, gamma, beta, train=False)[0]


@register(ref.batchnorm_sign_train, "cuda")
def batchnorm_sign_train(x: Array, gamma: Array | None = None, beta: Array | None = None,
                         eps: float = 1e-5) -> tuple[Array, Array, Array, Array, Array, Array]:
    """Batch-statistics BatchNorm + sign: ``(s, y, xhat, mean, var, inv_std)`` as the reference.

    mean and the biased var are the reference's CuPy reductions (``batch_statistics``: the same
    bits as the reference body on CuPy arrays, NumPy's to rounding); normalise, affine and sign
    are one fused launch.
    """
    fn = "batchnorm_sign_train"
    cp = cupy_for(fn)
    require_float(fn, "x", x, "cupy")
    channel_view(fn, x)
    gamma = channel_vector(fn, "gamma", gamma, x, 1.0, "cupy")
    beta = channel_vector(fn, "beta", beta, x, 0.0, "cupy")
    mean, var = batch_statistics(x)               # biased var: divides by N*L
    inv_std = 1.0 / cp.sqrt(var + eps)
    s, y, xhat = _bn_sign(fn, x, mean, inv_std, gamma, beta, train=True)
    return s, y.reshape(x.shape), xhat.reshape(x.shape), mean, var, inv_std


# --------------------------------------------------------------------------- optimiser steps
# One launch per parameter group: every buffer is read once and written once, in place. Scalars
# are cast to the array dtype on the host (as_scalars), exactly as the reference twins do.


def _flip_counter(cp: Any) -> tuple[Array, Array]:
    """A zeroed uint64 counter for a kernel's atomics, and the same memory as a 0-d int64."""
    flips = cp.zeros(1, dtype=cp.uint64)
    return flips, flips.view(cp.int64).reshape(())


@register(ref.cema_update, "cuda")
def cema_update(b: Array, m: Array, v: Array, g: Array, alpha: float, gamma: float,
                threshold: float = 0.0, tie: str = "keep") -> Array:
    """One CEMA step on binary weights b (±1), in place, in one launch.

        m = (1 - gamma) m + gamma g;  v = (1 - alpha) v + alpha m;  b = -b where v b > threshold

    Returns the number of flips as a 0-d int64 array on the device (``reference.cema_update``).
    """
    fn = "cema_update"
    cp = cupy_for(fn)
    dt = check_inplace(fn, "cupy", g, b=b, m=m, v=v)
    tie_positive = check_tie(fn, tie)
    c_m, c_g, c_v, c_a, thr = as_scalars(dt, 1.0 - gamma, gamma, 1.0 - alpha, alpha, threshold)
    flips, count = _flip_counter(cp)
    launch(src.CEMA, (ctype(dt),), b.size,
           (cp.ascontiguousarray(g), b, m, v, flips, np.int64(b.size), c_m, c_g, c_v, c_a, thr,
            np.int32(tie_positive)))
    return count


@register(ref.bop_update, "cuda")
def bop_update(b: Array, m: Array, g: Array, gamma: float, threshold: float,
               tie: str = "keep") -> Array:
    """One Bop step in place, one launch; returns the flip count as a 0-d int64 device array.

        m = (1 - gamma) m + gamma g;  b = -b where m b > threshold   (see ``reference.bop_update``)
    """
    fn = "bop_update"
    cp = cupy_for(fn)
    dt = check_inplace(fn, "cupy", g, b=b, m=m)
    tie_positive = check_tie(fn, tie)
    c_m, c_g, thr = as_scalars(dt, 1.0 - gamma, gamma, threshold)
    flips, count = _flip_counter(cp)
    launch(src.BOP, (ctype(dt),), b.size,
           (cp.ascontiguousarray(g), b, m, flips, np.int64(b.size), c_m, c_g, thr,
            np.int32(tie_positive)))
    return count


@register(ref.sgd_update, "cuda")
def sgd_update(w: Array, m: Array | None, g: Array, lr: float, momentum: float = 0.0,
               weight_decay: float = 0.0, dampening: float = 0.0, decoupled: bool = False,
               first_step: bool = False) -> None:
    """One SGD step on latent weights w, in place, one launch (PyTorch's SGD semantics).

    coupled:    d = g + lam w;  m = mu m + (1 - dampening) d;  w = w + (-lr) m
    decoupled:  m = mu m + (1 - dampening) g;  w = w + (-lr) (m + lam w)
    ``first_step=True`` sets m = d undamped; see ``reference.sgd_update``.
    """
    fn = "sgd_update"
    cp = cupy_for(fn)
    check_momentum_buffer(fn, momentum, m)
    has_momentum = momentum != 0.0
    dt = check_inplace(fn, "cupy", g, w=w, m=m if has_momentum else None)
    lam, mu, c_d, neg_lr = as_scalars(dt, weight_decay, momentum, 1.0 - dampening, -lr)
    decay = weight_decay != 0.0
    launch(src.SGD, (ctype(dt),), w.size,
           (cp.ascontiguousarray(g), w, m if has_momentum else w, np.int64(w.size), lam, mu,
            c_d, neg_lr, np.int32(decay and not decoupled), np.int32(decay and decoupled),
            np.int32(has_momentum), np.int32(bool(first_step))))


@register(ref.adam_update, "cuda")
def adam_update(w: Array, m: Array, v: Array, g: Array, lr: float, step: int, b1: float = 0.9,
                b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
                decoupled: bool = False) -> None:
    """One Adam / AdamW step (PyTorch's), in place, one launch. ``step`` t >= 1.

    The bias corrections ``1 - b1^t`` and ``1 - b2^t`` are computed on the host in float64 and
    passed as scalars; see ``reference.adam_update`` for the formulas.
    """
    fn = "adam_update"
    cp = cupy_for(fn)
    dt = check_inplace(fn, "cupy", g, w=w, m=m, v=v)
    check_step(fn, step)
    sc = as_scalars(dt, weight_decay, b1, 1.0 - b1, b2, 1.0 - b2, 1.0 - b1 ** step,
                    1.0 - b2 ** step, eps, -lr)
    decay = weight_decay != 0.0
    launch(src.ADAM, (ctype(dt),), w.size,
           (cp.ascontiguousarray(g), w, m, v, np.int64(w.size), *sc,
            np.int32(decay and not decoupled), np.int32(decay and decoupled)))


# --------------------------------------------------------------------------- bit packing
# Layout (as reference.py): the last axis of length K is cut into W = ceil(K/64) uint64 words;
# element k lives in word k // 64 at bit k % 64 (least significant bit first).


@register(ref.pack_signs, "cuda")
def pack_signs(x: Array) -> Array:
    """Pack sign(x) along the last axis: (..., K) float -> (..., ceil(K/64)) uint64."""
    cp = cupy_for("pack_signs")
    require_float("pack_signs", "x", x, "cupy")
    if x.ndim < 1:
        raise ShapeError("pack_signs: x must have at least one axis, got a 0-d array")
    k = int(x.shape[-1])
    nw = words_for(k)
    rows = int(np.prod(x.shape[:-1], dtype=np.int64))
    out = cp.empty(x.shape[:-1] + (nw,), dtype=cp.uint64)
    launch(src.PACK_SIGNS, (ctype(x.dtype),), rows * nw,
           (cp.ascontiguousarray(x), out, np.int64(rows), np.int64(k), np.int64(nw)),
           threads_per_item=32)
    return out


@register(ref.unpack_signs, "cuda")
def unpack_signs(p: Array, k: int, dtype: type | np.dtype = np.float32) -> Array:
    """Inverse of ``pack_signs``: (..., W) uint64 -> (..., k) array of ±1 in ``dtype``."""
    cp = cupy_for("unpack_signs")
    check_packed_signs("unpack_signs", p, k, "cupy")
    types = instance(src.UNPACK_SIGNS, dtype)
    if types is None:                               # e.g. int8 or float16: the reference
        return ref.unpack_signs.reference(p, k, dtype)
    out = cp.empty(p.shape[:-1] + (int(k),), dtype=np.dtype(dtype))
    launch(src.UNPACK_SIGNS, types, out.size,
           (cp.ascontiguousarray(p), out, np.int64(out.size), np.int64(k),
            np.int64(p.shape[-1])))
    return out


# --------------------------------------------------------------------------- XNOR-popcount GEMM

_XNOR_TILE = 64     # rows and columns of C per block (cuda_sources.XNOR_GEMM)


@register(ref.xnor_gemm, "cuda")
def xnor_gemm(a: Array, b: Array, k: int) -> Array:
    """``C = A @ B.T`` for ±1 matrices A (M, k), B (N, k) given packed: (M, W), (N, W) -> int32.

    ``C[i, j] = k - 2 * popcount(a_i XOR b_j)``, exact, one launch (see ``reference.xnor_gemm``;
    W may exceed ceil(k/64) when every tap of a convolution is padded to whole words).
    """
    cp = cupy_for("xnor_gemm")
    check_packed_pair("xnor_gemm", a, b, k, "cupy")
    if k >= 2 ** 31:
        raise ShapeError(f"xnor_gemm: k must be below 2**31 (int32 output), got {k}")
    m, n, nw = int(a.shape[0]), int(b.shape[0]), int(a.shape[1])
    out = cp.empty((m, n), dtype=cp.int32)
    if m == 0 or n == 0:
        return out
    if nw == 0:                                   # k = 0: the empty sum
        out.fill(0)
        return out
    row_tiles, col_tiles = -(-m // _XNOR_TILE), -(-n // _XNOR_TILE)
    if row_tiles * col_tiles >= 2 ** 31:          # grid axis x holds at most 2**31 - 1 blocks
        raise ShapeError(f"xnor_gemm: ({m} x {n}) needs {row_tiles * col_tiles} tiles of "
                         f"{_XNOR_TILE} x {_XNOR_TILE}, more than one launch holds (2**31 - 1)")
    kernel(src.XNOR_GEMM)((row_tiles * col_tiles,), (16, 16),
                          (cp.ascontiguousarray(a), cp.ascontiguousarray(b), out, np.int64(m),
                           np.int64(n), np.int64(nw), np.int32(k), np.int64(col_tiles)))
    return out


# --------------------------------------------------------------------------- binary convolution


@register(ref.binary_conv2d, "cuda")
def binary_conv2d(xbits: Array, wbits: Array, wsum: Array, c: int, kh: int, kw: int,
                  stride: int = 1, padding: int = 0, layout: str = "nchw") -> Array:
    """Binary convolution on packed operands -> int32 counts, exact, one direct launch.

    No column matrix: each output sums ``C - 2 popcount(x XOR w)`` over its taps inside the
    image (``cuda_sources.BINARY_CONV_NHWC``). A tap on the zero padding contributes 0, which
    is what the reference's ``wsum`` correction gives, so ``wsum`` is checked but not read.
    """
    fn = "binary_conv2d"
    cp = cupy_for(fn)
    oh, ow = check_binary_conv(fn, xbits, wbits, wsum, c, kh, kw, stride, padding, "cupy",
                               layout=layout)
    n, h, w, nw = (int(s) for s in xbits.shape)
    o = int(wbits.shape[0])
    y = cp.empty((n, oh, ow, o), dtype=cp.int32)
    launch(src.BINARY_CONV_NHWC, (), y.size,
           (cp.ascontiguousarray(xbits), cp.ascontiguousarray(wbits), y, np.int64(y.size),
            np.int32(h), np.int32(w), np.int32(nw), np.int32(c), np.int32(o), np.int32(kh),
            np.int32(kw), np.int32(stride), np.int32(padding), np.int32(oh), np.int32(ow)))
    return y if layout == "nhwc" else cp.ascontiguousarray(y.transpose(0, 3, 1, 2))


import minibnn.kernels.gpu_channels_last  # noqa: E402,F401  (registers the channels-last bodies)
