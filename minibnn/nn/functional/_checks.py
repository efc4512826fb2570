"""Shared input checks for the functional layers.

Each check is cheap (it looks at ``ndim``, ``shape`` and ``dtype``, never at the data, except
where a range must be checked) and raises a one-line error from ``minibnn.errors`` that names the
function, the argument, what was expected and what was given. ``require_array``,
``require_float`` (``minibnn.backend``), ``require_int`` and ``conv_output_size`` (the kernels'
own, ``minibnn.kernels._common``) are re-exported here.
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from minibnn.errors import DTypeError, MinibnnError, ShapeError
# One definition each, shared with the kernels: arrays, float arrays, integer arguments and
# the output size of a sliding window (OH = (H + 2 padding - kH) // stride + 1).
from minibnn.backend import require_array, require_float  # noqa: F401
from minibnn.kernels._common import conv_output_size, require_int  # noqa: F401

#: Any NumPy or CuPy array (the functional layers are written once against ``xp``).
Array = Any


def shape_str(shape: Any) -> str:
    """Format a shape as a tuple of plain ints, e.g. ``(3, 3)``."""
    return str(tuple(int(s) for s in shape))


def require_ndim(fn: str, name: str, x: Any, ndim: int, layout: str) -> None:
    """``x`` must have exactly ``ndim`` axes; ``layout`` names them, e.g. ``"(N, C, H, W)"``."""
    if x.ndim != ndim:
        raise ShapeError(f"{fn}: {name} must be {ndim}-D {layout}, got shape {shape_str(x.shape)}")


def require_same_dtype(fn: str, name: str, x: Any, ref_name: str, ref: Any) -> None:
    """``x`` must have the dtype of ``ref`` (no silent float32/float64 mixing)."""
    if np.dtype(x.dtype) != np.dtype(ref.dtype):
        raise DTypeError(f"{fn}: {name} must have the same dtype as {ref_name} ({ref.dtype}), "
                         f"got {x.dtype}")


def require_vector(fn: str, name: str, p: Any, size: int, why: str, ref_name: str,
                   ref: Any) -> None:
    """``p`` must be a float vector of shape ``(size,)`` with the dtype of ``ref``.

    ``why`` says where ``size`` comes from, e.g. ``"to match x.shape[1]"``.
    """
    require_float(fn, name, p)
    if p.ndim != 1 or int(p.shape[0]) != int(size):
        raise ShapeError(f"{fn}: {name} must have shape ({int(size)},) {why}, "
                         f"got shape {shape_str(p.shape)}")
    require_same_dtype(fn, name, p, ref_name, ref)


def require_channel_vector(fn: str, name: str, p: Any, x: Any) -> None:
    """``p`` must be a per-channel float vector: shape ``(x.shape[1],)``, x's dtype."""
    require_vector(fn, name, p, x.shape[1], "to match x.shape[1] (channels)", "x", x)


def require_real(fn: str, name: str, v: Any, lo: float, hi: float, *,
                 lo_open: bool = False, hi_open: bool = False) -> float:
    """``v`` must be a real number in the interval given by ``lo``/``hi`` (open ends flagged)."""
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v)
    if ok:
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise MinibnnError(f"{fn}: {name} must be a number in {interval}, got {v!r}")
    return float(v)


def require_grad(fn: str, dy: Any, shape: Any, dtype: Any) -> None:
    """The upstream gradient ``dy`` must have the forward output's shape and dtype."""
    require_array(fn, "dy", dy)
    if tuple(dy.shape) != tuple(shape):
        raise ShapeError(f"{fn}: dy must have the forward output's shape {shape_str(shape)}, "
                         f"got shape {shape_str(dy.shape)}")
    if np.dtype(dy.dtype) != np.dtype(dtype):
        raise DTypeError(f"{fn}: dy must have the forward output's dtype {np.dtype(dtype)}, "
                         f"got {dy.dtype}")


def channel_shape(ndim: int, c: int) -> tuple[int, ...]:
    """Shape that broadcasts a per-channel vector along axis 1: ``(1, C, 1, ..., 1)``."""
    return (1, c) + (1,) * (ndim - 2)


def non_channel_axes(ndim: int) -> tuple[int, ...]:
    """Every axis except the channel axis 1: the axes per-channel statistics reduce over."""
    return (0,) + tuple(range(2, ndim))
