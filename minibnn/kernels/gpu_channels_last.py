"""CUDA bodies of the channels-last (NHWC) training ops; their oracle is ``kernels.channels_last``.

The GPU twin of ``cpu_channels_last``: the same ops, the same arguments, registered with
``@register(op, "cuda")``. The kernels are in ``cuda_sources`` (compiled in CI by the build
check); this module checks arguments, allocates and launches (``gpu_launch.launch``). The GEMMs are
cuBLAS through CuPy's matmul.

    conv forward    cols = gather(x)          y = cols @ wmat                   (cuBLAS)
    conv backward   cols = gather(x or bits)  dwmat = cols^T @ dy,  dx = col2im(dy @ wmat^T)
    max-pool        forward: one thread per output; backward: one thread per input pixel
    BatchNorm+sign  statistics: the reference's CuPy float64 sums; normalise + sign + pack:
                    one warp per output word; backward: two launches around CuPy's sums

Every float value is written once by one thread and every sum is gathered in a fixed order
(no float atomics), so each op gives the same bits on every run. col2im and the max-pool
backward add in the reference's order (taps i, j ascending, from 0), and the BatchNorm
kernels evaluate the reference's expressions in its order, so those are the reference's bits;
the GEMMs are cuBLAS's (the reference on CuPy arrays calls the same matmul).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from minibnn.errors import DTypeError, ShapeError
from minibnn.kernels import channels_last as ref
from minibnn.kernels import cuda_sources as src
from minibnn.kernels._common import conv_output_size, require_array, require_float, words_for
from minibnn.kernels.gpu_launch import cupy_for, ctype, instance, launch
from minibnn.kernels.registry import register
from minibnn.ops.sign import check_ste

Array = Any


def _gather(x: Array, c: int, dtype: Any, kh: int, kw: int, stride: int, padding: int) -> Array:
    """Columns (N*OH*OW, kH*kW*C) in ``dtype`` of float x or packed signs x (N, H, W, nw)."""
    cp = cupy_for("im2col_nhwc")
    n, h, w = (int(s) for s in x.shape[:3])
    oh, ow = conv_output_size("im2col_nhwc", h, w, kh, kw, stride, padding)
    cols = cp.empty((n * oh * ow, kh * kw * c), dtype=dtype)
    shape = (np.int32(h), np.int32(w), np.int32(c))
    window = (np.int32(kh), np.int32(kw), np.int32(stride), np.int32(padding), np.int32(oh),
              np.int32(ow))
    xc = cp.ascontiguousarray(x)
    if x.dtype == np.uint64:
        launch(src.IM2COL_NHWC_BITS, (ctype(dtype),), cols.size,
               (xc, cols, np.int64(cols.size), *shape, np.int32(x.shape[3]), *window))
    else:
        launch(src.IM2COL_NHWC, (ctype(dtype),), cols.size,
               (xc, cols, np.int64(cols.size), *shape, *window))
    return cols


def _col2im(dcols: Array, x_shape: tuple[int, int, int, int], kh: int, kw: int, stride: int,
            padding: int) -> Array:
    """The adjoint of ``_gather``: dx (N, H, W, C), each pixel's taps added in (i, j) order."""
    cp = cupy_for("col2im_nhwc")
    n, h, w, c = x_shape
    oh, ow = conv_output_size("col2im_nhwc", h, w, kh, kw, stride, padding)
    dx = cp.empty((n, h, w, c), dtype=dcols.dtype)
    launch(src.COL2IM_NHWC, (ctype(dcols.dtype),), dx.size,
           (cp.ascontiguousarray(dcols), dx, np.int64(dx.size), np.int32(h), np.int32(w),
            np.int32(c), np.int32(kh), np.int32(kw), np.int32(stride), np.int32(padding),
            np.int32(oh), np.int32(ow)))
    return dx


@register(ref.conv2d_nhwc_forward, "cuda")
def conv2d_nhwc_forward(x: Array, wmat: Array, kh: int, kw: int, stride: int = 1,
                        padding: int = 0) -> Array:
    """``y = cols(x) @ wmat``: one gather launch, then cuBLAS."""
    fn = "conv2d_nhwc_forward"
    cupy_for(fn)
    c = ref.check_wmat(fn, wmat, kh, kw, "cupy")
    ref.check_conv_source(fn, x, c, "cupy")
    if x.dtype == np.uint64:
        raise DTypeError(f"{fn}: x must be float (packed signs go through binary_conv2d)")
    n = int(x.shape[0])
    oh, ow = conv_output_size(fn, x.shape[1], x.shape[2], kh, kw, stride, padding)
    cols = _gather(x, c, x.dtype, kh, kw, stride, padding)
    return (cols @ wmat).reshape(n, oh, ow, -1)


@register(ref.conv2d_nhwc_backward, "cuda")
def conv2d_nhwc_backward(dy: Array, x: Array, wmat: Array, kh: int, kw: int, stride: int = 1,
                         padding: int = 0, need_dx: bool = True) -> tuple[Array | None, Array]:
    """``dwmat = cols(x)^T @ dy2``, ``dx = col2im(dy2 @ wmat^T)``; packed x is gathered from
    its bits directly (no unpacked copy of the input)."""
    fn = "conv2d_nhwc_backward"
    cupy_for(fn)
    c = ref.check_wmat(fn, wmat, kh, kw, "cupy")
    ref.check_conv_source(fn, x, c, "cupy")
    n, h, w = (int(s) for s in x.shape[:3])
    oh, ow = conv_output_size(fn, h, w, kh, kw, stride, padding)
    require_float(fn, "dy", dy, "cupy")
    if tuple(dy.shape) != (n, oh, ow, wmat.shape[1]) or dy.dtype != wmat.dtype:
        raise ShapeError(f"{fn}: dy must be {wmat.dtype} {(n, oh, ow, int(wmat.shape[1]))}, got "
                         f"{dy.dtype} {tuple(dy.shape)}")
    dy2 = dy.reshape(n * oh * ow, -1)
    # float x keeps its dtype, packed x unpacks to wmat's (the reference's float_source)
    cols = _gather(x, c, wmat.dtype if x.dtype == np.uint64 else x.dtype, kh, kw, stride,
                   padding)
    dwmat = cols.T @ dy2
    dx = _col2im(dy2 @ wmat.T, (n, h, w, c), kh, kw, stride, padding) if need_dx else None
    return dx, dwmat


@register(ref.maxpool2d_nhwc_forward, "cuda")
def maxpool2d_nhwc_forward(x: Array, kernel: int, stride: int) -> tuple[Array, Array]:
    """Max and first argmax (uint8, i*kernel + j) of every window; one thread per output."""
    fn = "maxpool2d_nhwc_forward"
    cp = cupy_for(fn)
    oh, ow = ref.check_pool(fn, x, kernel, stride, "cupy")
    types = instance(src.MAXPOOL_NHWC_FORWARD, x.dtype)
    if types is None:                               # e.g. float16: the reference
        return ref.maxpool2d_nhwc_forward.reference(x, kernel, stride)
    n, h, w, c = (int(s) for s in x.shape)
    y = cp.empty((n, oh, ow, c), dtype=x.dtype)
    arg = cp.empty((n, oh, ow, c), dtype=cp.uint8)
    launch(src.MAXPOOL_NHWC_FORWARD, types, y.size,
           (cp.ascontiguousarray(x), y, arg, np.int64(y.size), np.int32(h), np.int32(w),
            np.int32(c), np.int32(kernel), np.int32(stride), np.int32(oh), np.int32(ow)))
    return y, arg


@register(ref.maxpool2d_nhwc_backward, "cuda")
def maxpool2d_nhwc_backward(dy: Array, argmax: Array, x_shape: tuple[int, int, int, int],
                            kernel: int, stride: int) -> Array:
    """dx: each input pixel gathers dy from the windows whose argmax it is."""
    fn = "maxpool2d_nhwc_backward"
    cp = cupy_for(fn)
    require_float(fn, "dy", dy, "cupy")
    n, h, w, c = (int(s) for s in x_shape)
    oh, ow = conv_output_size(fn, h, w, kernel, kernel, stride, 0)
    if tuple(dy.shape) != (n, oh, ow, c) or tuple(argmax.shape) != (n, oh, ow, c):
        raise ShapeError(f"{fn}: dy and argmax must be {(n, oh, ow, c)}, got "
                         f"{tuple(dy.shape)} and {tuple(argmax.shape)}")
    if argmax.dtype != np.uint8:
        raise DTypeError(f"{fn}: argmax must be uint8 (maxpool2d_nhwc_forward's), got "
                         f"{argmax.dtype}")
    types = instance(src.MAXPOOL_NHWC_BACKWARD, dy.dtype)
    if types is None:
        return ref.maxpool2d_nhwc_backward.reference(dy, argmax, x_shape, kernel, stride)
    dx = cp.empty((n, h, w, c), dtype=dy.dtype)
    launch(src.MAXPOOL_NHWC_BACKWARD, types, dx.size,
           (cp.ascontiguousarray(dy), cp.ascontiguousarray(argmax), dx, np.int64(dx.size),
            np.int32(h), np.int32(w), np.int32(c), np.int32(kernel), np.int32(stride),
            np.int32(oh), np.int32(ow)))
    return dx


# --------------------------------------------------------------------------- BatchNorm + sign


def _bn_types(z: Array, gamma: Array, *vectors: Array) -> tuple[str, str] | None:
    """The kernel instance (Z, T) for counts/rows z and parameters gamma, or None (the body
    then runs its reference) when z's dtype is neither int32 nor gamma's, or any per-channel
    vector (statistics, beta) has another dtype than gamma's (a kernel reads them as T)."""
    if any(v.dtype != gamma.dtype for v in vectors):
        return None
    return instance(src.BN_SIGN_PACK, z.dtype, gamma.dtype)


def _bn_pack(z: Array, mean: Array, inv_std: Array, gamma: Array, beta: Array,
             types: tuple[str, str]) -> Array:
    """bits (M, ceil(C/64)) of sign(((T)z - mean) * inv_std * gamma + beta): one warp a word."""
    cp = cupy_for("batchnorm_sign_pack")
    m, c = (int(s) for s in z.shape)
    nw = words_for(c)
    bits = cp.empty((m, nw), dtype=cp.uint64)
    vectors = [cp.ascontiguousarray(v) for v in (mean, inv_std, gamma, beta)]
    launch(src.BN_SIGN_PACK, types, m * nw,
           (cp.ascontiguousarray(z), *vectors, bits, np.int64(m), np.int32(c), np.int32(nw)),
           threads_per_item=32)
    return bits


@register(ref.batchnorm_sign_pack_train, "cuda")
def batchnorm_sign_pack_train(z: Array, gamma: Array, beta: Array, eps: float = 1e-5
                              ) -> tuple[Array, Array, Array, Array]:
    """``(bits, mean, var, inv_std)``: the reference's statistics, then one packing launch."""
    fn = "batchnorm_sign_pack_train"
    cp = cupy_for(fn)
    ref.check_rows(fn, z, "cupy")
    ref.check_affine(fn, z, gamma, beta, "cupy")
    types = _bn_types(z, gamma, beta)
    if types is None:
        return ref.batchnorm_sign_pack_train.reference(z, gamma, beta, eps)
    mean, var = ref.batch_statistics_rows(z, gamma.dtype)
    inv_std = 1.0 / cp.sqrt(var + eps)
    return _bn_pack(z, mean, inv_std, gamma, beta, types), mean, var, inv_std


@register(ref.batchnorm_sign_pack_eval, "cuda")
def batchnorm_sign_pack_eval(z: Array, mean: Array, var: Array, gamma: Array, beta: Array,
                             eps: float = 1e-5) -> Array:
    """Eval-mode twin (running statistics): one packing launch."""
    fn = "batchnorm_sign_pack_eval"
    cp = cupy_for(fn)
    require_array(fn, "z", z, "cupy")
    if z.ndim != 2:
        raise ShapeError(f"{fn}: z must be 2-D (M, C), got shape {tuple(z.shape)}")
    ref.check_affine(fn, z, gamma, beta, "cupy")
    ref.check_affine(fn, z, mean, var, "cupy")
    types = _bn_types(z, gamma, beta, mean, var)
    if types is None:
        return ref.batchnorm_sign_pack_eval.reference(z, mean, var, gamma, beta, eps)
    return _bn_pack(z, mean, 1.0 / cp.sqrt(var + eps), gamma, beta, types)


@register(ref.batchnorm_sign_pack_backward, "cuda")
def batchnorm_sign_pack_backward(ds: Array, z: Array, mean: Array, inv_std: Array, gamma: Array,
                                 beta: Array, ste: str = "identity", ste_beta: float = 5.0
                                 ) -> tuple[Array, Array, Array]:
    """``dz, dgamma, dbeta``: d = ds * ste'(y) and d * xhat in one launch, their float64 column
    sums by CuPy (the reference's), dz in a second launch."""
    fn = "batchnorm_sign_pack_backward"
    cp = cupy_for(fn)
    ref.check_rows(fn, z, "cupy")
    ref.check_affine(fn, z, gamma, beta, "cupy")
    code = ref.check_ste_code(fn, ste)
    ste_beta = check_ste(fn, ste, ste_beta)
    if tuple(ds.shape) != tuple(z.shape) or ds.dtype != gamma.dtype:
        raise ShapeError(f"{fn}: ds must be {gamma.dtype} {tuple(z.shape)}, got {ds.dtype} "
                         f"{tuple(ds.shape)}")
    types = _bn_types(z, gamma, beta, mean, inv_std, ds)
    if types is None:
        return ref.batchnorm_sign_pack_backward.reference(ds, z, mean, inv_std, gamma, beta,
                                                          ste, ste_beta)
    m, c = (int(s) for s in z.shape)
    dt = gamma.dtype
    zc, dsc = cp.ascontiguousarray(z), cp.ascontiguousarray(ds)
    mean, inv_std, gamma, beta = (cp.ascontiguousarray(v) for v in (mean, inv_std, gamma, beta))
    d, dxhat = cp.empty_like(dsc), cp.empty_like(dsc)
    launch(src.BN_SIGN_PACK_GRAD, types, d.size,
           (dsc, zc, mean, inv_std, gamma, beta, d, dxhat, np.int64(d.size), np.int32(c),
            np.int32(code), dt.type(ste_beta)))
    s1 = d.astype(cp.float64).sum(axis=0)               # dbeta, in float64 as the reference
    s2 = dxhat.astype(cp.float64).sum(axis=0)           # dgamma
    dz = cp.empty_like(dsc)
    launch(src.BN_SIGN_PACK_DZ, types, dz.size,
           (d, zc, mean, inv_std, gamma, (s1 / m).astype(dt), (s2 / m).astype(dt), dz,
            np.int64(dz.size), np.int32(c)))
    return dz, s2.astype(dt), s1.astype(dt)
