"""2-D convolution (cross-correlation, as PyTorch) via im2col and one matrix product.

``im2col``/``col2im`` here are the NumPy reference; the layers call them through ``unfold``/
``fold``, which use the Numba twins in ``minibnn.kernels.cpu`` for NumPy arrays when the CPU
kernel backend is "numba" (``minibnn.backend.set_cpu_kernels``).

Shapes: x (N, C, H, W), w (O, C, kH, kW), b (O,), y (N, O, OH, OW) with
``OH = (H + 2*padding - kH) // stride + 1`` (likewise OW). Zero padding on all four sides.

Column layout shared by ``im2col`` and ``col2im`` (and the pooling layers):
``cols`` has shape ``(N*OH*OW, C*kH*kW)``; row ``(n*OH + oh)*OW + ow`` is the receptive field
of output pixel (oh, ow) of sample n, and column ``(c*kH + i)*kW + j`` holds the padded input
``xpad[n, c, oh*stride + i, ow*stride + j]``. The column order equals ``w.reshape(O, -1)``'s,
so the convolution is ``cols @ w.reshape(O, -1).T``.
"""
from __future__ import annotations

from typing import NamedTuple

from minibnn.backend import fast_kernels_for, get_array_module
from minibnn.errors import ShapeError
from minibnn.nn.functional._checks import (
    Array, require_float, require_grad, require_int, require_ndim, require_same_dtype,
    require_vector, shape_str)


class Conv2dCache(NamedTuple):
    x_shape: tuple[int, ...]
    cols: Array
    w: Array
    stride: int
    padding: int
    has_bias: bool


def conv_output_size(fn: str, x_shape: tuple[int, ...], kh: int, kw: int, stride: int,
                     padding: int) -> tuple[int, int]:
    """Output (OH, OW) of a kH x kW window sliding over the zero-padded H x W input.

    Raises ShapeError when the window is larger than the padded input.
    """
    h, w = int(x_shape[2]) + 2 * padding, int(x_shape[3]) + 2 * padding
    if kh > h or kw > w:
        raise ShapeError(f"{fn}: kernel ({kh}, {kw}) is larger than the padded input ({h}, {w}) "
                         f"(x of shape {shape_str(x_shape)}, padding {padding})")
    return (h - kh) // stride + 1, (w - kw) // stride + 1


def _pad(x: Array, padding: int, value: float = 0.0) -> Array:
    """Pad the two spatial axes of an NCHW array by ``padding`` on each side."""
    if padding == 0:
        return x
    xp = get_array_module(x)
    p = padding
    return xp.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), mode="constant", constant_values=value)


def im2col(x: Array, kh: int, kw: int, stride: int, padding: int) -> Array:
    """Unfold x (N, C, H, W) into columns (N*OH*OW, C*kH*kW); layout in the module docstring.

    A strided view of the padded input with shape (N, OH, OW, C, kH, kW) is reshaped, which
    makes the one copy.
    """
    fn = "im2col"
    require_ndim(fn, "x", x, 4, "(N, C, H, W)")
    kh, kw = require_int(fn, "kh", kh, 1), require_int(fn, "kw", kw, 1)
    stride, padding = require_int(fn, "stride", stride, 1), require_int(fn, "padding", padding, 0)
    n, c = int(x.shape[0]), int(x.shape[1])
    oh, ow = conv_output_size(fn, x.shape, kh, kw, stride, padding)
    xp = get_array_module(x)
    xpad = _pad(x, padding)
    s_n, s_c, s_h, s_w = xpad.strides
    view = xp.lib.stride_tricks.as_strided(
        xpad, shape=(n, oh, ow, c, kh, kw),
        strides=(s_n, s_h * stride, s_w * stride, s_c, s_h, s_w))
    return view.reshape(n * oh * ow, c * kh * kw)


def col2im(cols: Array, x_shape: tuple[int, ...], kh: int, kw: int, stride: int,
           padding: int) -> Array:
    """Adjoint of ``im2col``: sum every column entry back into the input pixel it came from.

    Returns an array of shape ``x_shape`` (the padding border is dropped). Loops over the kH*kW
    kernel offsets; each iteration adds one strided (N, C, OH, OW) block, so overlapping windows
    accumulate without ``add.at``.
    """
    fn = "col2im"
    kh, kw = require_int(fn, "kh", kh, 1), require_int(fn, "kw", kw, 1)
    stride, padding = require_int(fn, "stride", stride, 1), require_int(fn, "padding", padding, 0)
    if len(x_shape) != 4:
        raise ShapeError(f"{fn}: x_shape must have 4 entries (N, C, H, W), got {tuple(x_shape)}")
    n, c, h, w = (int(s) for s in x_shape)
    oh, ow = conv_output_size(fn, x_shape, kh, kw, stride, padding)
    expected = (n * oh * ow, c * kh * kw)
    if tuple(cols.shape) != expected:
        raise ShapeError(f"{fn}: cols must have shape {expected} for x_shape {shape_str(x_shape)}, "
                         f"got shape {shape_str(cols.shape)}")
    xp = get_array_module(cols)
    p = padding
    out = xp.zeros((n, c, h + 2 * p, w + 2 * p), dtype=cols.dtype)
    blocks = cols.reshape(n, oh, ow, c, kh, kw).transpose(0, 3, 4, 5, 1, 2)
    h_span, w_span = stride * (oh - 1) + 1, stride * (ow - 1) + 1
    for i in range(kh):
        for j in range(kw):
            out[:, :, i:i + h_span:stride, j:j + w_span:stride] += blocks[:, :, i, j]
    if p == 0:
        return out
    return xp.ascontiguousarray(out[:, :, p:p + h, p:p + w])


def unfold(x: Array, kh: int, kw: int, stride: int, padding: int) -> Array:
    """``im2col`` on the fastest available kernel (Numba on NumPy arrays), same result."""
    fast = fast_kernels_for(x)
    if fast is None:
        return im2col(x, kh, kw, stride, padding)
    return fast.im2col(xp_contiguous(x), kh, kw, stride, padding)


def fold(cols: Array, x_shape: tuple[int, ...], kh: int, kw: int, stride: int,
         padding: int) -> Array:
    """``col2im`` on the fastest available kernel (Numba on NumPy arrays), same result."""
    fast = fast_kernels_for(cols)
    if fast is None:
        return col2im(cols, x_shape, kh, kw, stride, padding)
    return fast.col2im(xp_contiguous(cols), tuple(x_shape), kh, kw, stride, padding)


def xp_contiguous(x: Array) -> Array:
    return get_array_module(x).ascontiguousarray(x)


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
    oh, ow = conv_output_size(fn, x.shape, kh, kw, stride, padding)
    xp = get_array_module(x)
    cols = unfold(x, kh, kw, stride, padding)
    y2 = cols @ w.reshape(o, -1).T                 # (N*OH*OW, O): one GEMM
    if b is not None:
        y2 += b
    y = xp.ascontiguousarray(y2.reshape(n, oh, ow, o).transpose(0, 3, 1, 2))
    return y, Conv2dCache(tuple(int(s) for s in x.shape), cols, w, stride, padding, b is not None)


def conv2d_backward(dy: Array, cache: Conv2dCache) -> tuple[Array, Array, Array | None]:
    """Return ``dx, dw, db`` (``db`` is None when the forward had no bias)."""
    x_shape, cols, w, stride, padding, has_bias = cache
    o, _, kh, kw = (int(s) for s in w.shape)
    n = x_shape[0]
    oh, ow = conv_output_size("conv2d_backward", x_shape, kh, kw, stride, padding)
    require_grad("conv2d_backward", dy, (n, o, oh, ow), w.dtype)
    dy2 = dy.transpose(0, 2, 3, 1).reshape(-1, o)  # rows in im2col order, (N*OH*OW, O)
    dw = (dy2.T @ cols).reshape(w.shape)           # dL/dW = dY^T . cols
    dcols = dy2 @ w.reshape(o, -1)                 # dL/dcols = dY . W
    dx = fold(dcols, x_shape, kh, kw, stride, padding)
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dw, db
