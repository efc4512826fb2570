"""Reference bodies of the channels-last (NHWC) training ops: the oracle of ``cpu_channels_last``.

The binary CNN trains channels-last inside (``minibnn.nn.channels_last``): activations are
(N, H, W, C), so the C values of a pixel are contiguous, a convolution's receptive field is
kH*kW contiguous runs of C, and the +-1 activations a binary layer keeps for its backward pass
are packed bits (N, H, W, ceil(C/64)) uint64, ``pack_signs``'s layout along C. These bodies
are written against ``xp`` (NumPy or CuPy) and declare their ops (``@op``, as in
``kernels.reference``).

Conventions:
  * conv weights as a matrix ``wmat`` (kH*kW*C, O), tap-major: row ``(i*kW + j)*C + c`` holds
    ``w[:, c, i, j]`` of the OIHW weight w, i.e. ``wmat = w.transpose(2, 3, 1, 0).reshape(-1, O)``;
  * columns ``cols`` (N*OH*OW, kH*kW*C): row ``(n*OH + oh)*OW + ow`` is the zero-padded
    receptive field of output pixel (oh, ow) of sample n in the same tap-major order, so the
    convolution is ``cols @ wmat`` and its output (N*OH*OW, O) *is* the NHWC output;
  * BatchNorm over the last axis of (M, C) rows (M = N*H*W pixels). The batch statistics are
    ``mean = S1/M`` and ``var = max(S2/M - mean^2, 0)`` with the sums S1 = sum z, S2 = sum z^2
    taken in float64: for the int32 counts of a binary convolution these sums are exact
    integers, so every body and every summation order gives the same statistics.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from minibnn.backend import get_array_module
from minibnn.errors import DTypeError, MinibnnError, ShapeError
from minibnn.kernels._common import (conv_output_size, require_array, require_float,
                                     words_for)
from minibnn.kernels.reference import pack_signs, patches_nhwc, unpack_signs
from minibnn.kernels.registry import array_kind, op
from minibnn.kernels.threads import matmul
from minibnn.ops.sign import STE_NAMES, ste_grad

Array = Any

#: STE names of the fused BatchNorm + sign backward, in the order of their integer codes (the
#: Numba bodies take the code): the one table, ``minibnn/ops/sign.py``.
STE_CODES = STE_NAMES


# --------------------------------------------------------------------------- argument checks


def check_nhwc(fn: str, name: str, x: Any, kind: str = "any") -> None:
    require_array(fn, name, x, kind)
    if x.ndim != 4:
        raise ShapeError(f"{fn}: {name} must be 4-D (N, H, W, C), got shape {tuple(x.shape)}")


def check_conv_source(fn: str, x: Any, c: int, kind: str = "any") -> bool:
    """x is float (N, H, W, c) or packed signs uint64 (N, H, W, ceil(c/64)); True if packed."""
    check_nhwc(fn, "x", x, kind)
    if x.dtype == np.uint64:
        if x.shape[3] != words_for(c):
            raise ShapeError(f"{fn}: packed x must have ceil({c}/64) = {words_for(c)} words "
                             f"per pixel, got shape {tuple(x.shape)}")
        return True
    require_float(fn, "x", x, kind)
    if x.shape[3] != c:
        raise ShapeError(f"{fn}: x must have {c} channels (last axis), got {tuple(x.shape)}")
    return False


def check_wmat(fn: str, wmat: Any, kh: int, kw: int, kind: str = "any") -> int:
    """wmat (kH*kW*C, O) float; returns C."""
    require_float(fn, "wmat", wmat, kind)
    if wmat.ndim != 2 or wmat.shape[0] % (kh * kw):
        raise ShapeError(f"{fn}: wmat must be (kH*kW*C, O) = ({kh}*{kw}*C, O), got "
                         f"{tuple(wmat.shape)}")
    return int(wmat.shape[0]) // (kh * kw)


def check_rows(fn: str, z: Any, kind: str = "any") -> None:
    require_array(fn, "z", z, kind)
    if z.ndim != 2 or not (z.dtype == np.int32 or z.dtype.kind == "f"):
        raise DTypeError(f"{fn}: z must be a 2-D (M, C) int32 or float array, got {z.dtype} "
                         f"{tuple(z.shape)}")
    if z.shape[0] < 2:
        raise ShapeError(f"{fn}: train-mode BatchNorm needs at least 2 rows, got {z.shape[0]}")


def check_ste_code(fn: str, ste: str) -> int:
    if ste not in STE_CODES:
        raise MinibnnError(f"{fn}: ste must be one of {STE_CODES}, got {ste!r}")
    return STE_CODES.index(ste)


# --------------------------------------------------------------------------- convolution


def im2col_nhwc(x: Array, kh: int, kw: int, stride: int, padding: int) -> Array:
    """Columns (N*OH*OW, kH*kW*C) of float NHWC x, in the tap-major order above."""
    xp = get_array_module(x)
    view = patches_nhwc(x, kh, kw, stride, padding)
    n, oh, ow = view.shape[:3]
    return xp.ascontiguousarray(view).reshape(n * oh * ow, -1)


def col2im_nhwc(dcols: Array, x_shape: tuple[int, int, int, int], kh: int, kw: int,
                stride: int, padding: int) -> Array:
    """Adjoint of ``im2col_nhwc``: add every column entry back onto its input pixel."""
    xp = get_array_module(dcols)
    n, h, w, c = x_shape
    oh, ow = conv_output_size("col2im_nhwc", h, w, kh, kw, stride, padding)
    p = padding
    d6 = dcols.reshape(n, oh, ow, kh, kw, c)
    dxpad = xp.zeros((n, h + 2 * p, w + 2 * p, c), dtype=dcols.dtype)
    for i in range(kh):
        for j in range(kw):
            dxpad[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :] += d6[:, :, :, i, j, :]
    return xp.ascontiguousarray(dxpad[:, p:p + h, p:p + w, :])


def float_source(x: Array, c: int, dtype: Any) -> Array:
    """x as float NHWC: packed signs are unpacked to +-1 in ``dtype``."""
    if x.dtype == np.uint64:
        return unpack_signs(x, c, dtype)
    return x


@op
def conv2d_nhwc_forward(x: Array, wmat: Array, kh: int, kw: int, stride: int = 1,
                        padding: int = 0) -> Array:
    """``y = cols(x) @ wmat``: float NHWC x (N, H, W, C) -> y (N, OH, OW, O), zero padding."""
    fn = "conv2d_nhwc_forward"
    c = check_wmat(fn, wmat, kh, kw)
    check_conv_source(fn, x, c)
    if x.dtype == np.uint64:
        raise DTypeError(f"{fn}: x must be float (packed signs go through binary_conv2d)")
    n = int(x.shape[0])
    oh, ow = conv_output_size(fn, x.shape[1], x.shape[2], kh, kw, stride, padding)
    return matmul(im2col_nhwc(x, kh, kw, stride, padding), wmat).reshape(n, oh, ow, -1)


@op
def conv2d_nhwc_backward(dy: Array, x: Array, wmat: Array, kh: int, kw: int, stride: int = 1,
                         padding: int = 0, need_dx: bool = True) -> tuple[Array | None, Array]:
    """Gradients of ``conv2d_nhwc_forward``: ``dx`` (N, H, W, C) or None, ``dwmat`` (kH*kW*C, O).

    ``x`` is the forward input, float or packed signs (a binary layer's cache, unpacked here):
        dwmat = cols(x)^T @ dy2,     dx = col2im(dy2 @ wmat^T),     dy2 = dy as (N*OH*OW, O).
    """
    fn = "conv2d_nhwc_backward"
    c = check_wmat(fn, wmat, kh, kw)
    check_conv_source(fn, x, c)
    n, h, w = (int(s) for s in x.shape[:3])
    oh, ow = conv_output_size(fn, h, w, kh, kw, stride, padding)
    require_float(fn, "dy", dy)
    if tuple(dy.shape) != (n, oh, ow, wmat.shape[1]) or dy.dtype != wmat.dtype:
        raise ShapeError(f"{fn}: dy must be {wmat.dtype} {(n, oh, ow, int(wmat.shape[1]))}, got "
                         f"{dy.dtype} {tuple(dy.shape)}")
    dy2 = dy.reshape(n * oh * ow, -1)
    cols = im2col_nhwc(float_source(x, c, wmat.dtype), kh, kw, stride, padding)
    dwmat = matmul(cols.T, dy2)
    dx = (col2im_nhwc(matmul(dy2, wmat.T), (n, h, w, c), kh, kw, stride, padding) if need_dx
          else None)
    return dx, dwmat


# --------------------------------------------------------------------------- pooling


def check_pool(fn: str, x: Any, kernel: int, stride: int, kind: str = "any") -> tuple[int, int]:
    check_nhwc(fn, "x", x, kind)
    if not (x.dtype == np.int32 or x.dtype.kind == "f"):
        raise DTypeError(f"{fn}: x must be int32 or float, got {x.dtype}")
    if kernel * kernel > 255:
        raise ShapeError(f"{fn}: kernel {kernel} has more than 255 taps (uint8 argmax)")
    return conv_output_size(fn, x.shape[1], x.shape[2], kernel, kernel, stride, 0)


@op
def maxpool2d_nhwc_forward(x: Array, kernel: int, stride: int) -> tuple[Array, Array]:
    """Max over kernel x kernel windows of NHWC x (no padding) -> y, argmax (both N, OH, OW, C).

    ``argmax = i*kernel + j`` (uint8) is the first maximum of the window in row-major order,
    as ``maxpool2d_forward``'s. x may be int32 (a binary convolution's counts) or float.
    """
    oh, ow = check_pool("maxpool2d_nhwc_forward", x, kernel, stride)
    xp = get_array_module(x)
    n, _, _, c = (int(s) for s in x.shape)
    xc = xp.ascontiguousarray(x)
    s_n, s_h, s_w, s_c = xc.strides
    win = xp.lib.stride_tricks.as_strided(
        xc, shape=(n, oh, ow, c, kernel, kernel),
        strides=(s_n, s_h * stride, s_w * stride, s_c, s_h, s_w))
    win = win.reshape(n, oh, ow, c, kernel * kernel)
    arg = xp.argmax(win, axis=-1)
    y = xp.take_along_axis(win, arg[..., None], axis=-1)[..., 0]
    return xp.ascontiguousarray(y), arg.astype(xp.uint8)


@op
def maxpool2d_nhwc_backward(dy: Array, argmax: Array, x_shape: tuple[int, int, int, int],
                            kernel: int, stride: int) -> Array:
    """Route dy[n, oh, ow, c] to the argmax of its window; overlapping windows add."""
    fn = "maxpool2d_nhwc_backward"
    require_float(fn, "dy", dy)
    xp = get_array_module(dy)
    n, h, w, c = x_shape
    oh, ow = conv_output_size(fn, h, w, kernel, kernel, stride, 0)
    if tuple(dy.shape) != (n, oh, ow, c) or tuple(argmax.shape) != (n, oh, ow, c):
        raise ShapeError(f"{fn}: dy and argmax must be {(n, oh, ow, c)}, got "
                         f"{tuple(dy.shape)} and {tuple(argmax.shape)}")
    dx = xp.zeros((n, h, w, c), dtype=dy.dtype)
    for i in range(kernel):
        for j in range(kernel):
            hit = argmax == i * kernel + j
            dx[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :] += xp.where(hit, dy, 0)
    return dx


# --------------------------------------------------------------------------- BatchNorm + sign


@op
def batch_statistics_rows(z: Array, dtype: Any) -> tuple[Array, Array]:
    """Train-mode BatchNorm statistics of rows z (M, C), int32 or float: per-channel mean and
    biased variance from float64 sums (the header's formulas), cast to ``dtype``.

    The one definition of the statistics: ``batchnorm_sign_pack_train`` takes its own from
    here, and the channels-last BatchNorm without a sign (``nn.channels_last.BatchNormNHWC``)
    calls this op alone."""
    check_rows("batch_statistics_rows", z)
    xp = get_array_module(z)
    zd = z.astype(xp.float64)
    m = z.shape[0]
    mean = zd.sum(axis=0) / m
    var = xp.maximum((zd * zd).sum(axis=0) / m - mean * mean, 0.0)
    return mean.astype(dtype), var.astype(dtype)


def check_affine(fn: str, z: Any, gamma: Any, beta: Any, kind: str = "any") -> None:
    c = int(z.shape[1])
    for name, p in (("gamma", gamma), ("beta", beta)):
        require_float(fn, name, p, kind)
        if p.shape != (c,) or p.dtype != gamma.dtype:
            raise ShapeError(f"{fn}: {name} must be {gamma.dtype} ({c},), got {p.dtype} "
                             f"{tuple(p.shape)}")


@op
def batchnorm_sign_pack_train(z: Array, gamma: Array, beta: Array, eps: float = 1e-5
                              ) -> tuple[Array, Array, Array, Array]:
    """Train-mode BatchNorm of rows z (M, C), then sign, packed: ``(bits, mean, var, inv_std)``.

    In gamma's dtype:  inv_std = 1/sqrt(var + eps),  y = (z - mean) * inv_std * gamma + beta,
    bits = pack_signs(y) (M, ceil(C/64)).  z may be int32 or float.
    """
    fn = "batchnorm_sign_pack_train"
    check_rows(fn, z)
    check_affine(fn, z, gamma, beta)
    xp = get_array_module(z)
    mean, var = batch_statistics_rows.reference(z, gamma.dtype)
    inv_std = 1.0 / xp.sqrt(var + eps)
    y = (z.astype(gamma.dtype) - mean) * inv_std * gamma + beta
    return pack_signs(y), mean, var, inv_std


@op
def batchnorm_sign_pack_eval(z: Array, mean: Array, var: Array, gamma: Array, beta: Array,
                             eps: float = 1e-5) -> Array:
    """Eval-mode twin: the running statistics instead of the batch's; returns the bits."""
    fn = "batchnorm_sign_pack_eval"
    require_array(fn, "z", z)
    check_affine(fn, z, gamma, beta)
    check_affine(fn, z, mean, var)
    inv_std = 1.0 / get_array_module(z).sqrt(var + eps)
    y = (z.astype(gamma.dtype) - mean) * inv_std * gamma + beta
    return pack_signs(y)


def check_bias_rows(fn: str, x: Any, b: Any, kind: str = "any") -> None:
    """x (M, C) float rows and b its (C,) bias of the same dtype."""
    require_float(fn, "x", x, kind)
    require_float(fn, "b", b, kind)
    if x.ndim != 2 or tuple(b.shape) != (x.shape[1],) or b.dtype != x.dtype:
        raise ShapeError(f"{fn}: x must be (M, C) rows and b its {x.dtype} (C,) bias, got x "
                         f"{x.dtype} {tuple(x.shape)} and b {b.dtype} {tuple(b.shape)}")


@op
def bias_sign_pack(x: Array, b: Array) -> Array:
    """``sign(x + b)`` of rows x (M, C), packed: bits (M, ceil(C/64)) uint64.

    ``y = x + b`` in x's dtype (``bias_forward``'s add, b (C,) of the same dtype), bit = y >= 0
    (sign(0) = +1): the bias+sign step's output at inference, in one pass.
    """
    check_bias_rows("bias_sign_pack", x, b, array_kind(x))
    return pack_signs(x + b)


@op
def batchnorm_sign_pack_backward(ds: Array, z: Array, mean: Array, inv_std: Array, gamma: Array,
                                 beta: Array, ste: str = "identity", ste_beta: float = 5.0
                                 ) -> tuple[Array, Array, Array]:
    """Backward of sign(BatchNorm(z)) in train mode, recomputing y from z: ``dz, dgamma, dbeta``.

    With xhat = (z - mean) * inv_std, y = xhat * gamma + beta and d = ds * ste'(y) (the sign's
    backward), per channel over the M rows (sums in float64):
        dbeta = sum d,   dgamma = sum d * xhat,
        dz = gamma * inv_std * (d - dbeta/M - xhat * dgamma/M)     (``batchnorm_backward``).
    """
    fn = "batchnorm_sign_pack_backward"
    check_rows(fn, z)
    check_affine(fn, z, gamma, beta)
    check_ste_code(fn, ste)
    if tuple(ds.shape) != tuple(z.shape) or ds.dtype != gamma.dtype:
        raise ShapeError(f"{fn}: ds must be {gamma.dtype} {tuple(z.shape)}, got {ds.dtype} "
                         f"{tuple(ds.shape)}")
    xp = get_array_module(z)
    m = z.shape[0]
    xhat = (z.astype(gamma.dtype) - mean) * inv_std
    y = xhat * gamma + beta
    d = ds * ste_grad(y, ste, ste_beta)                 # the sign's backward (ops/sign.py)
    s1 = d.astype(xp.float64).sum(axis=0)
    s2 = (d * xhat).astype(xp.float64).sum(axis=0)
    dt = gamma.dtype
    dz = gamma * inv_std * (d - (s1 / m).astype(dt) - xhat * (s2 / m).astype(dt))
    return dz, s2.astype(dt), s1.astype(dt)


# --------------------------------------------------------------------------- per-channel rows
# The element-wise steps of a channels-last group (BatchNorm's normalisation, PReLU, the
# bias+sign backward) on rows (M, C) of M = N*H*W pixels: y[r, c] depends on row r and the
# per-channel vectors at c; a per-channel sum runs down the rows in float64.


def wide_rows(x: Array, *vectors: Array) -> tuple[Array, ...]:
    """Contiguous x (..., C) as rows of k pixels, (M/k, k*C) with M = x.size / C, and each
    per-channel vector (C,) tiled k times to match, k = gcd(M, 1024 // C).

    An element-wise op that broadcasts (C,) vectors down the M pixels computes the same values
    on these, but NumPy's inner loop runs over k*C values instead of C (2-3x faster for C = 16,
    and 3-4x for a sum down the rows)."""
    xp = get_array_module(x)
    c = int(x.shape[-1])
    m = x.size // c
    k = math.gcd(m, max(1, 1024 // c))
    return (xp.ascontiguousarray(x).reshape(m // k, k * c),) + tuple(xp.tile(v, k)
                                                                     for v in vectors)


def channel_sum(a: Array) -> Array:
    """Sum of a (..., C) over every axis but the last, per channel, taken in float64 and
    returned in a's dtype: the k pixels of a ``wide_rows`` row are summed down the rows, then
    added (the reference order; the Numba bodies add fixed row chunks in order)."""
    xp = get_array_module(a)
    (wide,) = wide_rows(a)
    partial = wide.sum(axis=0, dtype=xp.float64)            # (k*C,)
    return partial.reshape(-1, a.shape[-1]).sum(axis=0).astype(a.dtype)


def check_channel_rows(fn: str, x: Any, vectors: dict[str, Any], kind: str = "any") -> None:
    """x (M, C) float rows and each named vector a (C,) array of x's dtype."""
    require_float(fn, "x", x, kind)
    if x.ndim != 2:
        raise ShapeError(f"{fn}: x must be (M, C) rows, got shape {tuple(x.shape)}")
    for name, v in vectors.items():
        require_float(fn, name, v, kind)
        if tuple(v.shape) != (x.shape[1],) or v.dtype != x.dtype:
            raise ShapeError(f"{fn}: {name} must be {x.dtype} ({x.shape[1]},), got {v.dtype} "
                             f"{tuple(v.shape)}")


def check_like(fn: str, name: str, a: Any, x: Any, kind: str = "any") -> None:
    """a is a float array of x's shape and dtype (a gradient flowing into x's step)."""
    require_float(fn, name, a, kind)
    if tuple(a.shape) != tuple(x.shape) or a.dtype != x.dtype:
        raise ShapeError(f"{fn}: {name} must be {x.dtype} {tuple(x.shape)}, got {a.dtype} "
                         f"{tuple(a.shape)}")


def check_normalise_rows(fn: str, z: Any, mean: Any, inv_std: Any, gamma: Any, beta: Any,
                         kind: str = "any") -> None:
    """z (M, C) int32 or float rows (any number of them), four (C,) vectors of gamma's dtype."""
    require_array(fn, "z", z, kind)
    if z.ndim != 2 or not (z.dtype == np.int32 or z.dtype.kind == "f"):
        raise DTypeError(f"{fn}: z must be a 2-D (M, C) int32 or float array, got {z.dtype} "
                         f"{tuple(z.shape)}")
    check_affine(fn, z, gamma, beta, kind)
    check_affine(fn, z, mean, inv_std, kind)
    if mean.dtype != gamma.dtype:
        raise DTypeError(f"{fn}: mean and inv_std must be {gamma.dtype} like gamma, got "
                         f"{mean.dtype}")


@op
def batchnorm_normalise_rows(z: Array, mean: Array, inv_std: Array, gamma: Array, beta: Array
                             ) -> Array:
    """BatchNorm's output on rows z (M, C), int32 counts or float, with given statistics:
    ``y = (z - mean) * inv_std * gamma + beta`` in gamma's dtype, in that order (the order of
    ``batchnorm_sign_pack_train``'s y and of ``batchnorm_forward``)."""
    check_normalise_rows("batchnorm_normalise_rows", z, mean, inv_std, gamma, beta)
    xp = get_array_module(z)
    z_k, mean_k, inv_std_k, gamma_k, beta_k = wide_rows(z, mean, inv_std, gamma, beta)
    y = xp.subtract(z_k, mean_k, dtype=gamma.dtype)
    y *= inv_std_k
    y *= gamma_k
    y += beta_k
    return y.reshape(z.shape)


@op
def batchnorm_normalise_add_rows(z: Array, mean: Array, inv_std: Array, gamma: Array,
                                 beta: Array, s: Array) -> Array:
    """``batchnorm_normalise_rows(z, ...) + s`` for float rows s (M, C) of gamma's dtype: a
    residual block's BatchNorm output plus its shortcut, the add after the normalisation (so
    the same float values as the two steps; a compiled body makes one pass)."""
    fn = "batchnorm_normalise_add_rows"
    check_normalise_rows(fn, z, mean, inv_std, gamma, beta)
    require_float(fn, "s", s)
    if tuple(s.shape) != tuple(z.shape) or s.dtype != gamma.dtype:
        raise ShapeError(f"{fn}: s must be {gamma.dtype} {tuple(z.shape)}, got {s.dtype} "
                         f"{tuple(s.shape)}")
    y = batchnorm_normalise_rows(z, mean, inv_std, gamma, beta)     # the op: a CuPy body too
    y += s
    return y


@op
def prelu_rows_forward(x: Array, a: Array) -> Array:
    """PReLU of rows x (M, C) with one slope a[c] per channel: ``y = x if x > 0 else a * x``,
    computed without a branch as ``y = a * min(x, 0) + max(x, 0)`` (x + a*0 = x where x > 0,
    0 + a*x elsewhere: ``prelu_forward``'s values for finite a; an infinite a gives NaN where
    x > 0)."""
    check_channel_rows("prelu_rows_forward", x, {"a": a})
    xp = get_array_module(x)
    x_k, a_k = wide_rows(x, a)
    y = xp.minimum(x_k, 0)
    y *= a_k
    y += xp.maximum(x_k, 0)
    return y.reshape(x.shape)


@op
def prelu_rows_backward(dy: Array, x: Array, a: Array) -> tuple[Array, Array]:
    """Gradients of ``prelu_rows_forward``: ``dx = dy if x > 0 else a * dy`` and
    ``da = sum over the rows of dy * min(x, 0)`` (``channel_sum``: float64, in x's dtype).

    Computed without a branch, as ``prelu_backward``'s values for finite numbers (only the
    sign of a zero may differ):  p = dy * (x > 0),  q = dy - p  (dy where x <= 0, else 0),
    dx = a * q + p,  and dy * min(x, 0) = q * x. An infinite dy gives dx = NaN and da = NaN
    (the product 0 * inf), x = +inf gives da = NaN."""
    fn = "prelu_rows_backward"
    check_channel_rows(fn, x, {"a": a})
    check_like(fn, "dy", dy, x)
    x_k, a_k = wide_rows(x, a)
    (dy_k,) = wide_rows(dy)
    p = dy_k * (x_k > 0)
    q = dy_k - p
    da = channel_sum((q * x_k).reshape(x.shape))
    q *= a_k
    q += p
    return q.reshape(x.shape), da


@op
def bias_sign_pack_backward(ds: Array, x: Array, b: Array, ste: str = "identity",
                            ste_beta: float = 5.0) -> tuple[Array, Array]:
    """Backward of ``bias_sign_pack`` (sign(x + b) of rows x (M, C)), recomputing y = x + b:
    ``d = ds * ste'(y)`` (the sign's STE, ``ops.sign.ste_grad``) is both dx and the rows whose
    ``channel_sum`` is db."""
    fn = "bias_sign_pack_backward"
    check_bias_rows(fn, x, b)
    check_like(fn, "ds", ds, x)
    check_ste_code(fn, ste)
    d = ds * ste_grad(x + b, ste, ste_beta)
    return d, channel_sum(d)
