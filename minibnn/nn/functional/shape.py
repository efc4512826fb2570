"""Shape plumbing with gradients: flatten (N, ...) -> (N, -1), the residual add and the channel
concatenation (ReActNet's widening block: two halves side by side)."""
from __future__ import annotations

from typing import NamedTuple

from minibnn.backend import get_array_module
from minibnn.errors import ShapeError
from minibnn.nn.functional._checks import (
    Array, require_float, require_grad, require_same_dtype, shape_str)


class FlattenCache(NamedTuple):
    x_shape: tuple[int, ...]
    dtype: object


class AddCache(NamedTuple):
    shape: tuple[int, ...]
    dtype: object


class ConcatCache(NamedTuple):
    shapes: tuple[tuple[int, ...], ...]     # each input's shape, in order
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


def concat_forward(xs: "list[Array] | tuple[Array, ...]") -> tuple[Array, ConcatCache]:
    """``y = [x_1, x_2, ...]`` along the channel axis 1: (N, C_i, H, W) -> (N, sum C_i, H, W).

    Every input has the same shape except its channel count, and the same dtype.
    """
    fn = "concat_forward"
    if len(xs) < 1:
        raise ShapeError(f"{fn}: needs at least one array")
    first = xs[0]
    for i, x in enumerate(xs):
        require_float(fn, f"xs[{i}]", x)
        if x.ndim < 2:
            raise ShapeError(f"{fn}: xs[{i}] must be at least 2-D (N, C, ...), got shape "
                             f"{shape_str(x.shape)}")
        if x.shape[:1] + x.shape[2:] != first.shape[:1] + first.shape[2:]:
            raise ShapeError(f"{fn}: xs[{i}] of shape {shape_str(x.shape)} differs from xs[0] "
                             f"{shape_str(first.shape)} outside the channel axis")
        require_same_dtype(fn, f"xs[{i}]", x, "xs[0]", first)
    xp = get_array_module(first)
    shapes = tuple(tuple(int(s) for s in x.shape) for x in xs)
    return xp.concatenate(list(xs), axis=1), ConcatCache(shapes, first.dtype)


def concat_backward(dy: Array, cache: ConcatCache) -> list[Array]:
    """``dx_i = dy[:, offset_i : offset_i + C_i]``: each input's slice of the gradient (copies,
    so the caller may update them in place)."""
    shapes, dtype = cache
    total = shapes[0][:1] + (sum(s[1] for s in shapes),) + shapes[0][2:]
    require_grad("concat_backward", dy, total, dtype)
    out, start = [], 0
    for shape in shapes:
        out.append(dy[:, start:start + shape[1]].copy())
        start += shape[1]
    return out
