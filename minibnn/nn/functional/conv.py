"""2-D convolution (cross-correlation, as PyTorch) via im2col and one matrix product.

Shapes: x (N, C, H, W), w (O, C, kH, kW), b (O,), y (N, O, OH, OW) with
``OH = (H + 2*padding - kH) // stride + 1`` (likewise OW). Zero padding on all four sides.

The unfolding is the kernel op ``kernels.im2col`` (its adjoint ``col2im``): the Numba body on
NumPy arrays, the reference (``kernels.reference``, where the column layout is documented) on
CuPy arrays or under ``use_backend("numpy")``.
``cols`` has shape ``(N*OH*OW, C*kH*kW)`` with the column order of ``w.reshape(O, -1)``, so the
convolution is ``cols @ w.reshape(O, -1).T`` (``kernels.threads.matmul``: the same bits on any
number of threads).
"""
from __future__ import annotations

from typing import NamedTuple

from minibnn import kernels
from minibnn.backend import get_array_module
from minibnn.errors import ShapeError
from minibnn.kernels.threads import matmul
from minibnn.nn.functional._checks import (
    Array, conv_output_size, require_float, require_grad, require_int, require_ndim,
    require_same_dtype, require_vector, shape_str)


class Conv2dCache(NamedTuple):
    x_shape: tuple[int, ...]
    cols: Array
    w: Array
    stride: int
    padding: int
    has_bias: bool


def conv2d_forward(x: Array, w: Array, b: Array | None = None, stride: int = 1,
                   padding: int = 0) -> tuple[Array, Conv2dCache]:
    """``y[n, o] = sum_{c,i,j} w[o, c, i, j] * xpad[n, c, s*oh + i, s*ow + j] + b[o]``."""
    fn = "conv2d_forward"
    require_float(fn, "x", x)
    require_float(fn, "w", w)
    require_ndim(fn, "x", x, 4, "(N, C, H, W)")
    require_ndim(fn, "w", w, 4, "(O, I, kH, kW)")
    require_same_dtype(fn, "w", w, "x", x)
    if w.shape[1] != x.shape[1]:
        raise ShapeError(f"{fn}: w.shape[1] (input channels) must equal x.shape[1] = "
                         f"{x.shape[1]}, got w of shape {shape_str(w.shape)}")
    o, _, kh, kw = (int(s) for s in w.shape)
    if b is not None:
        require_vector(fn, "b", b, o, "to match w.shape[0] (output channels)", "x", x)
    stride = require_int(fn, "stride", stride, 1)
    padding = require_int(fn, "padding", padding, 0)
    n = int(x.shape[0])
    oh, ow = conv_output_size(fn, x.shape[2], x.shape[3], kh, kw, stride, padding)
    xp = get_array_module(x)
    cols = kernels.im2col(x, kh, kw, stride, padding)
    y2 = matmul(cols, w.reshape(o, -1).T)          # cols @ W^T, (N*OH*OW, O): one GEMM
    if b is not None:
        y2 += b
    y = xp.ascontiguousarray(y2.reshape(n, oh, ow, o).transpose(0, 3, 1, 2))
    return y, Conv2dCache(tuple(int(s) for s in x.shape), cols, w, stride, padding, b is not None)


def conv2d_backward(dy: Array, cache: Conv2dCache) -> tuple[Array, Array, Array | None]:
    """Return ``dx, dw, db`` (``db`` is None when the forward had no bias)."""
    x_shape, cols, w, stride, padding, has_bias = cache
    o, _, kh, kw = (int(s) for s in w.shape)
    n = x_shape[0]
    oh, ow = conv_output_size("conv2d_backward", x_shape[2], x_shape[3], kh, kw, stride,
                              padding)
    require_grad("conv2d_backward", dy, (n, o, oh, ow), w.dtype)
    dy2 = dy.transpose(0, 2, 3, 1).reshape(-1, o)  # rows in im2col order, (N*OH*OW, O)
    dw = matmul(dy2.T, cols).reshape(w.shape)      # dL/dW = dY^T . cols
    dcols = matmul(dy2, w.reshape(o, -1))          # dL/dcols = dY . W
    dx = kernels.col2im(dcols, x_shape, kh, kw, stride, padding)
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dw, db
