"""Fully connected layer: ``y = x @ W.T + b``.

Shapes (PyTorch's): x (N, I), W (O, I), b (O,), y (N, O).
"""
from __future__ import annotations

from typing import NamedTuple

from minibnn.errors import ShapeError
from minibnn import kernels
from minibnn.kernels.threads import matmul
from minibnn.nn.functional._checks import (
    Array, require_float, require_grad, require_ndim, require_same_dtype, require_vector,
    shape_str)


class DenseCache(NamedTuple):
    x: Array
    w: Array
    has_bias: bool


def check_dense_args(fn: str, x: Array, w: Array, b: Array | None = None) -> None:
    """x (N, I), w (O, I) and b (O,) or None, floats of one dtype, or a one-line error."""
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


def dense_forward(x: Array, w: Array, b: Array | None = None) -> tuple[Array, DenseCache]:
    """``y = x @ w.T + b`` for x (N, I), w (O, I), b (O,) or None."""
    check_dense_args("dense_forward", x, w, b)
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


class SignsDenseCache(NamedTuple):
    xbits: Array        # the input's signs, packed (N, ceil(I/64)) uint64
    in_features: int
    w: Array


def signs_dense_forward(x: Array, w: Array) -> tuple[Array, SignsDenseCache]:
    """``y = x @ w.T`` for x and w holding only +-1 (a sign's output, binary weights without
    a scale), on bits: ``kernels.xnor_gemm`` of their packed signs, ``I - 2 popcount(x XOR
    w)`` per entry. Every partial sum is an integer of size <= I, exact in float32 (I < 2^24)
    and float64, so y equals ``dense_forward``'s bit for bit; the cache keeps x as bits (32x
    less than float32). Values other than +-1 would be read as their signs (``x >= 0``)."""
    check_dense_args("signs_dense_forward", x, w)
    xbits = kernels.pack_signs(x)
    y = kernels.xnor_gemm(xbits, kernels.pack_signs(w), int(x.shape[1])).astype(x.dtype)
    return y, SignsDenseCache(xbits, int(x.shape[1]), w)


def signs_dense_backward(dy: Array, cache: SignsDenseCache, need_dx: bool = True
                         ) -> tuple[Array | None, Array]:
    """``dx, dw`` of ``signs_dense_forward``: ``dense_backward`` on the unpacked input."""
    xbits, k, w = cache
    x = kernels.unpack_signs(xbits, k, w.dtype)
    dx, dw, _ = dense_backward(dy, DenseCache(x, w, False), need_dx)
    return dx, dw
