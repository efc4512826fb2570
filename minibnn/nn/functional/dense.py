"""Fully connected layer: ``y = x @ W.T + b``.

Shapes (PyTorch's): x (N, I), W (O, I), b (O,), y (N, O).
"""
from __future__ import annotations

from typing import NamedTuple

from minibnn.errors import ShapeError
from minibnn.kernels.threads import matmul
from minibnn.nn.functional._checks import (
    Array, require_float, require_grad, require_ndim, require_same_dtype, require_vector,
    shape_str)


class DenseCache(NamedTuple):
    x: Array
    w: Array
    has_bias: bool


def dense_forward(x: Array, w: Array, b: Array | None = None) -> tuple[Array, DenseCache]:
    """``y = x @ w.T + b`` for x (N, I), w (O, I), b (O,) or None."""
    fn = "dense_forward"
    require_float(fn, "x", x)
    require_float(fn, "w", w)
    require_ndim(fn, "x", x, 2, "(N, I)")
    require_ndim(fn, "w", w, 2, "(O, I)")
    require_same_dtype(fn, "w", w, "x", x)
    if w.shape[1] != x.shape[1]:
        raise ShapeError(f"{fn}: w.shape[1] (input features) must equal x.shape[1] = "
                         f"{x.shape[1]}, got w of shape {shape_str(w.shape)}")
    if b is not None:
        require_vector(fn, "b", b, w.shape[0], "to match w.shape[0] (output features)", "x", x)
    y = matmul(x, w.T)      # x @ W.T, in a fixed summation order (kernels/threads.py)
    if b is not None:
        y += b
    return y, DenseCache(x, w, b is not None)


def dense_backward(dy: Array, cache: DenseCache, need_dx: bool = True
                   ) -> tuple[Array | None, Array, Array | None]:
    """Return ``dx, dw, db`` (``db`` is None when the forward had no bias, ``dx`` when
    ``need_dx`` is False: a model's first layer, whose input gradient nobody reads)."""
    x, w, has_bias = cache
    require_grad("dense_backward", dy, (x.shape[0], w.shape[0]), x.dtype)
    dx = matmul(dy, w) if need_dx else None     # dL/dx = dL/dy . W
    dw = matmul(dy.T, x)    # dL/dW = dL/dy^T . x
    db = dy.sum(axis=0) if has_bias else None
    return dx, dw, db
