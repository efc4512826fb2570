"""Pooling over NCHW tensors: max, average (both square windows) and global average.

Max pooling is the kernel op pair ``kernels.maxpool2d_forward`` / ``maxpool2d_backward`` (its
reference body documents the argmax convention). Average pooling
unfolds windows with the ``im2col`` op applied to x viewed as (N*C, 1, H, W), so each row of
the columns is one window of one channel and the pooled value is a row mean; the backward
scatters back with ``col2im``. Output size: ``OH = (H + 2*padding - kernel) // stride + 1``
(PyTorch's floor mode). As in PyTorch, ``padding <= kernel // 2``.
"""
from __future__ import annotations

from typing import NamedTuple

from minibnn import kernels
from minibnn.backend import get_array_module
from minibnn.errors import MinibnnError
from minibnn.nn.functional._checks import (
    Array, conv_output_size, require_float, require_grad, require_int, require_ndim)


class MaxPool2dCache(NamedTuple):
    x_shape: tuple[int, ...]
    dtype: object
    argmax: Array            # (N*C*OH*OW,) index of the max inside each window (row of cols)
    kernel: int
    stride: int
    padding: int


class AvgPool2dCache(NamedTuple):
    x_shape: tuple[int, ...]
    dtype: object
    kernel: int
    stride: int
    padding: int


class GlobalAvgPoolCache(NamedTuple):
    x_shape: tuple[int, ...]
    dtype: object


def _pool_args(fn: str, x: Array, kernel: int, stride: int | None,
               padding: int) -> tuple[int, int, int, int, int]:
    """Validate pooling arguments; return kernel, stride, padding, OH, OW."""
    require_float(fn, "x", x)
    require_ndim(fn, "x", x, 4, "(N, C, H, W)")
    kernel = require_int(fn, "kernel", kernel, 1)
    stride = kernel if stride is None else require_int(fn, "stride", stride, 1)
    padding = require_int(fn, "padding", padding, 0)
    if padding > kernel // 2:
        raise MinibnnError(f"{fn}: padding must be at most kernel // 2 = {kernel // 2}, "
                           f"got {padding}")
    oh, ow = conv_output_size(fn, x.shape[2], x.shape[3], kernel, kernel, stride, padding)
    return kernel, stride, padding, oh, ow


def maxpool2d_forward(x: Array, kernel: int = 2, stride: int | None = None,
                      padding: int = 0) -> tuple[Array, MaxPool2dCache]:
    """Max over each kernel x kernel window (stride None means stride = kernel).

    Padding uses -inf, so a padded position never wins. Ties: the gradient goes to the first
    maximum of the window in row-major (i, j) order (``argmax`` picks the first).
    """
    fn = "maxpool2d_forward"
    kernel, stride, padding, _, _ = _pool_args(fn, x, kernel, stride, padding)
    y, argmax = kernels.maxpool2d_forward(x, kernel, stride, padding)
    return y, MaxPool2dCache(tuple(int(s) for s in x.shape), x.dtype, argmax, kernel, stride,
                             padding)


def maxpool2d_backward(dy: Array, cache: MaxPool2dCache) -> Array:
    """Route each dy entry to the (first) arg-max of its window; overlapping windows add."""
    x_shape, dtype, argmax, k, s, p = cache
    n, c, h, w = x_shape
    oh, ow = conv_output_size("maxpool2d_backward", h, w, k, k, s, p)
    require_grad("maxpool2d_backward", dy, (n, c, oh, ow), dtype)
    return kernels.maxpool2d_backward(dy, argmax, x_shape, k, s, p)


def avgpool2d_forward(x: Array, kernel: int = 2, stride: int | None = None,
                      padding: int = 0) -> tuple[Array, AvgPool2dCache]:
    """Mean over each kernel x kernel window of the zero-padded input.

    Padded zeros count in the mean (``count_include_pad=True``, PyTorch's default), so every
    window divides by kernel**2.
    """
    fn = "avgpool2d_forward"
    kernel, stride, padding, oh, ow = _pool_args(fn, x, kernel, stride, padding)
    n, c, h, w = (int(s) for s in x.shape)
    cols = kernels.im2col(x.reshape(n * c, 1, h, w), kernel, kernel, stride, padding)
    y = cols.mean(axis=1).reshape(n, c, oh, ow)
    return y, AvgPool2dCache((n, c, h, w), x.dtype, kernel, stride, padding)


def avgpool2d_backward(dy: Array, cache: AvgPool2dCache) -> Array:
    """Each window member receives dy / kernel**2; overlapping windows add."""
    x_shape, dtype, k, s, p = cache
    n, c, h, w = x_shape
    oh, ow = conv_output_size("avgpool2d_backward", h, w, k, k, s, p)
    require_grad("avgpool2d_backward", dy, (n, c, oh, ow), dtype)
    xp = get_array_module(dy)
    dcols = xp.broadcast_to((dy / (k * k)).reshape(-1, 1), (n * c * oh * ow, k * k))
    return kernels.col2im(dcols, (n * c, 1, h, w), k, k, s, p).reshape(x_shape)


def global_avgpool_forward(x: Array) -> tuple[Array, GlobalAvgPoolCache]:
    """Mean over the spatial axes: (N, C, H, W) -> (N, C)."""
    fn = "global_avgpool_forward"
    require_float(fn, "x", x)
    require_ndim(fn, "x", x, 4, "(N, C, H, W)")
    return x.mean(axis=(2, 3)), GlobalAvgPoolCache(tuple(int(s) for s in x.shape), x.dtype)


def global_avgpool_backward(dy: Array, cache: GlobalAvgPoolCache) -> Array:
    """dx[n, c, h, w] = dy[n, c] / (H * W)."""
    x_shape, dtype = cache
    n, c, h, w = x_shape
    require_grad("global_avgpool_backward", dy, (n, c), dtype)
    xp = get_array_module(dy)
    return xp.ascontiguousarray(
        xp.broadcast_to((dy / (h * w))[:, :, None, None], x_shape))
