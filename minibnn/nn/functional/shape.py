"""Shape plumbing with gradients: flatten (N, ...) -> (N, -1) and the residual add."""
from __future__ import annotations

from typing import NamedTuple

from minibnn.errors import ShapeError
from minibnn.nn.functional._checks import (
    Array, require_float, require_grad, require_same_dtype, shape_str)


class FlattenCache(NamedTuple):
    x_shape: tuple[int, ...]
    dtype: object


class AddCache(NamedTuple):
    shape: tuple[int, ...]
    dtype: object


def flatten_forward(x: Array) -> tuple[Array, FlattenCache]:
    """Keep axis 0, merge the rest: (N, C, H, W) -> (N, C*H*W) in C order."""
    fn = "flatten_forward"
    require_float(fn, "x", x)
    if x.ndim < 1:
        raise ShapeError(f"{fn}: x must be at least 1-D (N, ...), got shape {shape_str(x.shape)}")
    n = int(x.shape[0])
    return x.reshape(n, -1), FlattenCache(tuple(int(s) for s in x.shape), x.dtype)


def flatten_backward(dy: Array, cache: FlattenCache) -> Array:
    """Reshape the gradient back to the input's shape."""
    x_shape, dtype = cache
    n = x_shape[0]
    rest = 1
    for s in x_shape[1:]:
        rest *= s
    require_grad("flatten_backward", dy, (n, rest), dtype)
    return dy.reshape(x_shape)


def add_forward(a: Array, b: Array) -> tuple[Array, AddCache]:
    """``y = a + b`` for equal shapes (a residual connection; no broadcasting)."""
    fn = "add_forward"
    require_float(fn, "a", a)
    require_float(fn, "b", b)
    if tuple(a.shape) != tuple(b.shape):
        raise ShapeError(f"{fn}: b must have the shape of a {shape_str(a.shape)}, "
                         f"got shape {shape_str(b.shape)}")
    require_same_dtype(fn, "b", b, "a", a)
    return a + b, AddCache(tuple(int(s) for s in a.shape), a.dtype)


def add_backward(dy: Array, cache: AddCache) -> tuple[Array, Array]:
    """``da = db = dy``, returned as two separate arrays (safe to update either in place)."""
    require_grad("add_backward", dy, cache.shape, cache.dtype)
    return dy, dy.copy()
