"""Argument checks and scalar preparation shared by the kernel twins (reference.py, cpu.py).

Both twins call the same helpers, so they see identical shapes, dtypes and scalars: the
hyperparameters of an optimiser step are computed once in Python float64 and cast to the array
dtype, which is exactly what NumPy 2 does with a Python float next to a float32 array (NEP 50).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from minibnn.errors import DTypeError, MinibnnError, ShapeError

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

#: Bits per packed word (bit-packed binary inference stores signs in uint64 words).
WORD_BITS = 64


def words_for(k: int) -> int:
    """Number of uint64 words that hold k bits: ceil(k / 64)."""
    return (int(k) + WORD_BITS - 1) // WORD_BITS


def conv_output_size(fn: str, h: int, w: int, kh: int, kw: int, stride: int,
                     padding: int) -> tuple[int, int]:
    """``OH = (H + 2 padding - kH) // stride + 1`` (likewise OW); ShapeError if the window is too big."""
    for name, v, lo in (("kh", kh, 1), ("kw", kw, 1), ("stride", stride, 1), ("padding", padding, 0)):
        if int(v) != v or v < lo:
            raise MinibnnError(f"{fn}: {name} must be an integer >= {lo}, got {v!r}")
    hp, wp = h + 2 * padding, w + 2 * padding
    if kh > hp or kw > wp:
        raise ShapeError(f"{fn}: kernel ({kh}, {kw}) is larger than the padded input ({hp}, {wp})")
    return (hp - kh) // stride + 1, (wp - kw) // stride + 1


def require_float(fn: str, name: str, x: Any) -> None:
    if not isinstance(x, np.ndarray):
        raise DTypeError(f"{fn}: {name} must be a NumPy array, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise DTypeError(f"{fn}: {name} must have dtype float32 or float64, got {x.dtype}")


def require_ndim(fn: str, name: str, x: np.ndarray, ndims: tuple[int, ...], layout: str) -> None:
    if x.ndim not in ndims:
        raise ShapeError(f"{fn}: {name} must be {layout}, got shape {tuple(x.shape)}")


def check_inplace(fn: str, require: Callable[[str, str, Any], None] | None = None,
                  **arrays: Any) -> np.dtype:
    """Arrays updated in place: same shape, same float dtype, C-contiguous and writeable.

    ``require(fn, name, array)`` checks each array's kind and dtype (``require_float`` for NumPy
    arrays by default; the GPU kernels pass their CuPy check). Returns the common dtype.
    ``None`` entries (an unused buffer) are skipped.
    """
    require = require or require_float
    items = [(k, a) for k, a in arrays.items() if a is not None]
    first_name, first = items[0]
    require(fn, first_name, first)
    for name, a in items:
        require(fn, name, a)
        if a.dtype != first.dtype:
            raise DTypeError(f"{fn}: {name} has dtype {a.dtype}, {first_name} has {first.dtype}")
        if a.shape != first.shape:
            raise ShapeError(f"{fn}: {name} has shape {tuple(a.shape)}, "
                             f"{first_name} has {tuple(first.shape)}")
        if not a.flags.c_contiguous:
            raise ShapeError(f"{fn}: {name} must be C-contiguous (it is updated in place)")
        if not getattr(a.flags, "writeable", True):     # CuPy arrays have no such flag
            raise MinibnnError(f"{fn}: {name} must be writeable (it is updated in place)")
    return np.dtype(first.dtype)


def maxpool_backward_shape(dy: Any, argmax: Any, x_shape: tuple[int, ...], kernel: int,
                           stride: int | None, padding: int) -> tuple[int, int, int, int, int]:
    """Check dy (N, C, OH, OW) and argmax (N*C*OH*OW,) against x_shape; return (n, c, h, w, stride)."""
    stride = kernel if stride is None else stride
    n, c, h, w = (int(s) for s in x_shape)
    oh, ow = conv_output_size("maxpool2d_backward", h, w, kernel, kernel, stride, padding)
    if dy.shape != (n, c, oh, ow) or argmax.shape != (n * c * oh * ow,):
        raise ShapeError(f"maxpool2d_backward: dy must be {(n, c, oh, ow)} and argmax "
                         f"{(n * c * oh * ow,)}, got {tuple(dy.shape)} and {tuple(argmax.shape)}")
    return n, c, h, w, stride


def as_scalars(dtype: np.dtype, *values: float) -> tuple[Any, ...]:
    """Cast Python floats (computed in float64) to NumPy scalars of ``dtype``."""
    return tuple(dtype.type(v) for v in values)


def check_tie(fn: str, tie: str) -> bool:
    """``tie="keep"`` keeps b where the statistic is exactly 0; ``"positive"`` sets b = +1 there."""
    if tie not in ("keep", "positive"):
        raise MinibnnError(f"{fn}: tie must be 'keep' or 'positive', got {tie!r}")
    return tie == "positive"


def channel_view(fn: str, x: np.ndarray) -> np.ndarray:
    """View (N, C) or (N, C, H, W) as (N, C, L) with L = H*W (or 1)."""
    require_ndim(fn, "x", x, (2, 4), "(N, C) or (N, C, H, W)")
    n, c = x.shape[:2]
    return x.reshape(n, c, -1)


def channel_vector(fn: str, name: str, p: np.ndarray | None, c: int, dtype: np.dtype,
                   default: float) -> np.ndarray:
    """A per-channel parameter of shape (C,) in ``dtype``; None means ``default`` everywhere."""
    if p is None:
        return np.full(c, default, dtype=dtype)
    require_float(fn, name, p)
    if p.shape != (c,):
        raise ShapeError(f"{fn}: {name} must have shape ({c},), got {tuple(p.shape)}")
    if p.dtype != dtype:
        raise DTypeError(f"{fn}: {name} has dtype {p.dtype}, x has {dtype}")
    return np.ascontiguousarray(p)
