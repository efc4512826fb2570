"""Argument checks and scalar preparation shared by every kernel body (reference, Numba, CUDA).

All bodies of an op call the same helpers, so they see identical shapes, dtypes and scalars.
``require_int`` and ``conv_output_size`` are also the layers' own (``minibnn.nn.functional``
imports them from here: one definition of the output-size formula).
Each array check takes the array ``kind`` the body runs on: ``"numpy"`` (Numba bodies),
``"cupy"`` (CUDA bodies) or ``"any"`` (the reference bodies, written against ``xp``).
The hyperparameters of an optimiser step are computed once in Python float64 and cast to the
array dtype, which is exactly what NumPy 2 does with a Python float next to a float32 array
(NEP 50), and what CuPy does too.
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from minibnn.backend import (  # noqa: F401  (require_*: shared with the layers and ops)
    get_array_module, require_array, require_float)
from minibnn.errors import DTypeError, MinibnnError, ShapeError

#: Bits per packed word (bit-packed binary inference stores signs in uint64 words).
WORD_BITS = 64


def words_for(k: int) -> int:
    """Number of uint64 words that hold k bits: ceil(k / 64)."""
    return (int(k) + WORD_BITS - 1) // WORD_BITS


def require_int(fn: str, name: str, v: Any, minimum: int) -> int:
    """``v`` must be an int (not a bool) with ``v >= minimum``; returns it as a Python int."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
        raise MinibnnError(f"{fn}: {name} must be an int >= {minimum}, got {v!r}")
    return int(v)


def conv_output_size(fn: str, h: int, w: int, kh: int, kw: int, stride: int,
                     padding: int) -> tuple[int, int]:
    """Output (OH, OW) of a kH x kW window sliding over the zero-padded H x W input.

    ``OH = (H + 2 padding - kH) // stride + 1`` (likewise OW); ShapeError if the window is
    larger than the padded input. The one definition, used by the kernels and the layers.
    """
    for name, v, lo in (("kh", kh, 1), ("kw", kw, 1), ("stride", stride, 1), ("padding", padding, 0)):
        require_int(fn, name, v, lo)
    hp, wp = int(h) + 2 * padding, int(w) + 2 * padding
    if kh > hp or kw > wp:
        raise ShapeError(f"{fn}: kernel ({kh}, {kw}) is larger than the padded input ({hp}, {wp}) "
                         f"(input ({int(h)}, {int(w)}), padding {padding})")
    return (hp - kh) // stride + 1, (wp - kw) // stride + 1


def require_ndim(fn: str, name: str, x: Any, ndims: tuple[int, ...], layout: str) -> None:
    if x.ndim not in ndims:
        raise ShapeError(f"{fn}: {name} must be {layout}, got shape {tuple(x.shape)}")


def check_inplace(fn: str, kind: str, g: Any, **written: Any) -> np.dtype:
    """The arrays of an in-place optimiser step; returns their common float dtype.

    ``written`` (the buffers the step updates in place; ``None`` entries, an unused buffer, are
    skipped) must be arrays of one ``kind`` with one shape and float dtype, C-contiguous and
    writeable. The gradient ``g`` is only read: same kind, shape and dtype, any layout
    (a strided or read-only view is fine).
    """
    items = [(k, a) for k, a in written.items() if a is not None]
    first_name, first = items[0]
    for name, a in items + [("g", g)]:
        require_float(fn, name, a, kind)
        if a.dtype != first.dtype:
            raise DTypeError(f"{fn}: {name} has dtype {a.dtype}, {first_name} has {first.dtype}")
        if a.shape != first.shape:
            raise ShapeError(f"{fn}: {name} has shape {tuple(a.shape)}, "
                             f"{first_name} has {tuple(first.shape)}")
    for name, a in items:
        require_in_place(fn, name, a)
    return np.dtype(first.dtype)


def require_in_place(fn: str, name: str, a: Any) -> None:
    """An array a step writes in place: C-contiguous and writeable, or a one-line error."""
    if not a.flags.c_contiguous:
        raise ShapeError(f"{fn}: {name} must be C-contiguous (it is updated in place)")
    if not getattr(a.flags, "writeable", True):         # CuPy arrays have no such flag
        raise MinibnnError(f"{fn}: {name} must be writeable (it is updated in place)")


def check_step(fn: str, step: int) -> None:
    """Adam's step count t must be an integer >= 1 (it enters the bias corrections 1 - b^t)."""
    if int(step) != step or step < 1:
        raise ShapeError(f"{fn}: step must be an integer >= 1, got {step!r}")


def check_momentum_buffer(fn: str, momentum: float, m: Any) -> None:
    if momentum != 0.0 and m is None:
        raise ShapeError(f"{fn}: momentum {momentum} needs a buffer m, got None")


def col2im_shape(cols: Any, x_shape: tuple[int, ...], kh: int, kw: int, stride: int,
                 padding: int) -> tuple[int, int, int, int, int, int]:
    """Check cols (N*OH*OW, C*kH*kW) against x_shape (N, C, H, W); return (n, c, h, w, oh, ow)."""
    if len(x_shape) != 4:
        raise ShapeError(f"col2im: x_shape must have 4 entries (N, C, H, W), got {tuple(x_shape)}")
    n, c, h, w = (int(s) for s in x_shape)
    oh, ow = conv_output_size("col2im", h, w, kh, kw, stride, padding)
    if tuple(cols.shape) != (n * oh * ow, c * kh * kw):
        raise ShapeError(f"col2im: cols must have shape {(n * oh * ow, c * kh * kw)} for x_shape "
                         f"{(n, c, h, w)}, got {tuple(cols.shape)}")
    return n, c, h, w, oh, ow


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
    """True for ``tie="positive"``: b = +1 wherever ``stat * b == threshold`` exactly (larq's
    Bop rule); ``"keep"`` leaves b as it is there."""
    if tie not in ("keep", "positive"):
        raise MinibnnError(f"{fn}: tie must be 'keep' or 'positive', got {tie!r}")
    return tie == "positive"


def channel_view(fn: str, x: Any) -> Any:
    """View (N, C) or (N, C, H, W) as (N, C, L) with L = H*W (or 1)."""
    require_ndim(fn, "x", x, (2, 4), "(N, C) or (N, C, H, W)")
    n, c = x.shape[:2]
    return x.reshape(n, c, -1)


def channel_vector(fn: str, name: str, p: Any, x: Any, default: float, kind: str = "any") -> Any:
    """A contiguous per-channel parameter (C,) with x's dtype, module and channel count
    (``x.shape[1]``); None means ``default`` everywhere."""
    xp = get_array_module(x)
    c, dtype = int(x.shape[1]), x.dtype
    if p is None:
        return xp.full(c, default, dtype=dtype)
    require_float(fn, name, p, kind)
    if p.shape != (c,):
        raise ShapeError(f"{fn}: {name} must have shape ({c},), got {tuple(p.shape)}")
    if p.dtype != dtype:
        raise DTypeError(f"{fn}: {name} has dtype {p.dtype}, x has {dtype}")
    return xp.ascontiguousarray(p)


def check_packed_pair(fn: str, a: Any, b: Any, k: int, kind: str = "any") -> None:
    """a (M, W) and b (N, W): 2-D uint64 of one ``kind`` with W >= ceil(k/64) words per row."""
    for name, arr in (("a", a), ("b", b)):
        require_array(fn, name, arr, kind)
        if arr.dtype != np.uint64 or arr.ndim != 2:
            raise DTypeError(f"{fn}: {name} must be a 2-D uint64 array, got {arr.dtype} "
                             f"{tuple(arr.shape)}")
    if a.shape[1] != b.shape[1] or a.shape[1] < words_for(k):
        raise ShapeError(f"{fn}: a and b must both have at least ceil(k/64) = {words_for(k)} "
                         f"words per row, got {tuple(a.shape)} and {tuple(b.shape)}")


def check_packed_signs(fn: str, p: Any, k: int, kind: str = "any") -> None:
    """p (..., ceil(k/64)) uint64 of ``kind``: ``pack_signs``'s layout for rows of k signs."""
    require_array(fn, "p", p, kind)
    require_int(fn, "k", k, 0)
    if p.dtype != np.uint64:
        raise DTypeError(f"{fn}: p must be uint64, got {p.dtype}")
    if p.ndim < 1 or p.shape[-1] != words_for(k):
        raise ShapeError(f"{fn}: p must have a last axis of ceil({k}/64) = {words_for(k)} "
                         f"words, got shape {tuple(p.shape)}")


def check_thresholds(fn: str, y: Any, threshold: Any, direction: Any, kind: str) -> None:
    """int32 counts y (N, C) or (N, C, H, W), int32 threshold (C,) and int8 direction (C,),
    all arrays of ``kind``."""
    for name, arr in (("y", y), ("threshold", threshold), ("direction", direction)):
        require_array(fn, name, arr, kind)
    if y.dtype != np.int32 or y.ndim not in (2, 4):
        raise DTypeError(f"{fn}: y must be an int32 (N, C) or (N, C, H, W) array, got "
                         f"{y.dtype} {tuple(y.shape)}")
    check_threshold_vectors(fn, int(y.shape[1]), threshold, direction)


def check_threshold_vectors(fn: str, c: int, threshold: Any, direction: Any) -> None:
    """int32 threshold (c,) and int8 direction (c,): one channel's fold each."""
    if threshold.dtype != np.int32 or threshold.shape != (c,):
        raise ShapeError(f"{fn}: threshold must be int32 ({c},), got {threshold.dtype} "
                         f"{tuple(threshold.shape)}")
    if direction.dtype != np.int8 or direction.shape != (c,):
        raise ShapeError(f"{fn}: direction must be int8 ({c},), got {direction.dtype} "
                         f"{tuple(direction.shape)}")


def check_directions(fn: str, direction: Any) -> None:
    """Every direction must be +1 or -1 (a lookup channel, direction 0, has no threshold)."""
    if not bool((abs(direction) == 1).all()):
        raise ShapeError(f"{fn}: every direction must be +1 or -1 (lookup channels go through "
                         "threshold_signs)")


def pool_output_size(fn: str, h: int, w: int, kernel: int, stride: int, padding: int
                     ) -> tuple[int, int]:
    """A max-pool (kernel, stride, padding) over an H x W map; returns its (PH, PW).

    As in the layers (and PyTorch), ``padding <= kernel // 2``: every window holds an input.
    """
    kernel = require_int(fn, "pool_kernel", kernel, 1)
    stride = require_int(fn, "pool_stride", stride, 1)
    padding = require_int(fn, "pool_padding", padding, 0)
    if padding > kernel // 2:
        raise ShapeError(f"{fn}: pool_padding must be at most pool_kernel // 2 = {kernel // 2}, "
                         f"got {padding}")
    return conv_output_size(fn, h, w, kernel, kernel, stride, padding)


def check_binary_conv(fn: str, xbits: Any, wbits: Any, wsum: Any, c: int, kh: int, kw: int,
                      stride: int, padding: int, kind: str = "any", layout: str = "nchw"
                      ) -> tuple[int, int]:
    """Check the packed operands of ``binary_conv2d``; return (OH, OW)."""
    if layout not in ("nchw", "nhwc"):
        raise MinibnnError(f"{fn}: layout must be 'nchw' or 'nhwc', got {layout!r}")
    for name, arr in (("xbits", xbits), ("wbits", wbits), ("wsum", wsum)):
        require_array(fn, name, arr, kind)
    if xbits.dtype != np.uint64 or xbits.ndim != 4 or xbits.shape[3] != words_for(c):
        raise ShapeError(f"{fn}: xbits must be uint64 (N, H, W, ceil(C/64) = {words_for(c)}), "
                         f"got {xbits.dtype} {tuple(xbits.shape)}")
    if (wbits.dtype != np.uint64 or wbits.ndim != 2
            or wbits.shape[1] != kh * kw * words_for(c)):
        raise ShapeError(f"{fn}: wbits must be uint64 (O, kH*kW*ceil(C/64) = "
                         f"{kh * kw * words_for(c)}), got {wbits.dtype} {tuple(wbits.shape)}")
    if wsum.dtype != np.int32 or wsum.shape != (wbits.shape[0], kh * kw):
        raise ShapeError(f"{fn}: wsum must be int32 {(wbits.shape[0], kh * kw)}, "
                         f"got {wsum.dtype} {tuple(wsum.shape)}")
    return conv_output_size(fn, xbits.shape[1], xbits.shape[2], kh, kw, stride, padding)


def check_binary_conv_fold(fn: str, xbits: Any, wbits: Any, wsum: Any, c: int, kh: int, kw: int,
                           stride: int, padding: int, threshold: Any, direction: Any,
                           pool_kernel: int, pool_stride: int, pool_padding: int,
                           kind: str = "any") -> tuple[int, int, int, int]:
    """Check a binary convolution followed by [max-pool ->] thresholds (directions +-1);
    return (OH, OW) of the convolution and (PH, PW) of the pool."""
    oh, ow = check_binary_conv(fn, xbits, wbits, wsum, c, kh, kw, stride, padding, kind, "nhwc")
    for name, arr in (("threshold", threshold), ("direction", direction)):
        require_array(fn, name, arr, kind)
    check_threshold_vectors(fn, int(wbits.shape[0]), threshold, direction)
    check_directions(fn, direction)
    ph, pw = pool_output_size(fn, oh, ow, pool_kernel, pool_stride, pool_padding)
    return oh, ow, ph, pw


def check_binary_conv_table(fn: str, xbits: Any, wbits: Any, wsum: Any, c: int, kh: int, kw: int,
                            stride: int, padding: int, table: Any, kind: str = "any"
                            ) -> tuple[int, int]:
    """Check a binary convolution followed by a table of its counts: float ``table``
    (2K+1, O), K = kH*kW*C; return (OH, OW)."""
    oh, ow = check_binary_conv(fn, xbits, wbits, wsum, c, kh, kw, stride, padding, kind, "nhwc")
    require_float(fn, "table", table, kind)
    k = kh * kw * c
    if tuple(table.shape) != (2 * k + 1, int(wbits.shape[0])):
        raise ShapeError(f"{fn}: table must be (2K+1, O) = {(2 * k + 1, int(wbits.shape[0]))} "
                         f"(K = kH*kW*C), got {tuple(table.shape)}")
    return oh, ow
