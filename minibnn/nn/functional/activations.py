"""Element-wise activations and per-channel shifts: ReLU, hardtanh, PReLU and bias.

PReLU and bias act per channel along axis 1 (x of shape (N, C) or (N, C, H, W)); together they
make ReActNet's RPReLU (bias, PReLU, bias) and its "move" shifts before sign.
"""
from __future__ import annotations

from typing import NamedTuple

from minibnn.backend import get_array_module
from minibnn.errors import ShapeError
from minibnn.nn.functional._checks import (
    Array, channel_shape, non_channel_axes, require_channel_vector, require_float, require_grad,
    shape_str)


class ReluCache(NamedTuple):
    mask: Array              # x > 0
    dtype: object


class HardtanhCache(NamedTuple):
    mask: Array              # -1 < x < 1
    dtype: object


class PReluCache(NamedTuple):
    x: Array
    a: Array


class BiasCache(NamedTuple):
    x_shape: tuple[int, ...]
    dtype: object


def _require_channels(fn: str, x: Array) -> None:
    if x.ndim < 2:
        raise ShapeError(f"{fn}: x must be at least 2-D (N, C) or (N, C, H, W), "
                         f"got shape {shape_str(x.shape)}")


def relu_forward(x: Array) -> tuple[Array, ReluCache]:
    """``y = max(x, 0)``."""
    require_float("relu_forward", "x", x)
    xp = get_array_module(x)
    mask = x > 0
    return xp.where(mask, x, xp.zeros((), dtype=x.dtype)), ReluCache(mask, x.dtype)


def relu_backward(dy: Array, cache: ReluCache) -> Array:
    """``dx = dy * (x > 0)`` (0 at the kink, like PyTorch)."""
    mask, dtype = cache
    require_grad("relu_backward", dy, mask.shape, dtype)
    return dy * mask


def hardtanh_forward(x: Array) -> tuple[Array, HardtanhCache]:
    """``y = clip(x, -1, 1)``."""
    require_float("hardtanh_forward", "x", x)
    xp = get_array_module(x)
    return xp.clip(x, -1.0, 1.0), HardtanhCache((x > -1) & (x < 1), x.dtype)


def hardtanh_backward(dy: Array, cache: HardtanhCache) -> Array:
    """``dx = dy * (-1 < x < 1)``: zero at and beyond the kinks, like PyTorch's hardtanh.

    (The "clipped" sign STE instead passes the gradient at |x| == 1, as larq does.)
    """
    mask, dtype = cache
    require_grad("hardtanh_backward", dy, mask.shape, dtype)
    return dy * mask


def prelu_forward(x: Array, a: Array) -> tuple[Array, PReluCache]:
    """``y = x if x > 0 else a[c] * x`` with one slope per channel (axis 1)."""
    fn = "prelu_forward"
    require_float(fn, "x", x)
    _require_channels(fn, x)
    require_channel_vector(fn, "a", a, x)
    xp = get_array_module(x)
    return xp.where(x > 0, x, a.reshape(channel_shape(x.ndim, a.shape[0])) * x), PReluCache(x, a)


def prelu_backward(dy: Array, cache: PReluCache) -> tuple[Array, Array]:
    """``dx = dy * (1 if x > 0 else a)``, ``da[c] = sum of dy * min(x, 0) over channel c``."""
    x, a = cache
    require_grad("prelu_backward", dy, x.shape, x.dtype)
    xp = get_array_module(x)
    pos = x > 0
    dx = xp.where(pos, dy, a.reshape(channel_shape(x.ndim, a.shape[0])) * dy)
    da = (dy * xp.minimum(x, 0)).sum(axis=non_channel_axes(x.ndim))   # dy * min(x, 0)
    return dx, da


def bias_forward(x: Array, b: Array) -> tuple[Array, BiasCache]:
    """``y = x + b[c]``: a learnable shift per channel (axis 1)."""
    fn = "bias_forward"
    require_float(fn, "x", x)
    _require_channels(fn, x)
    require_channel_vector(fn, "b", b, x)
    y = x + b.reshape(channel_shape(x.ndim, b.shape[0]))
    return y, BiasCache(tuple(int(s) for s in x.shape), x.dtype)


def bias_backward(dy: Array, cache: BiasCache) -> tuple[Array, Array]:
    """``dx = dy``, ``db[c] = sum of dy[:, c]``."""
    x_shape, dtype = cache
    require_grad("bias_backward", dy, x_shape, dtype)
    return dy.copy(), dy.sum(axis=non_channel_axes(len(x_shape)))
