"""BatchNorm + sign folded into per-channel integer thresholds on an XNOR-popcount output.

A binary layer's output is an exact integer count ``y`` in ``[-K, K]`` (K = fan-in).  At
inference the BatchNorm that follows is a fixed per-channel map of y, and the sign after it is
a per-channel *function of an integer* ``s_c(y)``.  BatchNorm's eval arithmetic is a chain of
correctly rounded monotone steps (``(y - mean) * inv_std * gamma + beta``), so ``s_c`` is a
step function of y, one of

    direction +1:  s = +1  iff  y >= t_c        (gamma * inv_std > 0)
    direction -1:  s = +1  iff  y <= t_c        (gamma * inv_std < 0)

(gamma == 0 gives a constant sign(beta): direction +1 with t_c = -K (all +1) or K + 1 (all -1)).
The thresholds are not taken from the real-number formula ``mean - beta / (gamma inv_std)``:
``fold_sign_table`` reads them off the float path's own signs evaluated at every integer of
``[-K, K]`` (the caller computes that table with the model's modules), so thresholding
reproduces the float path bit for bit, rounding included.  A channel whose table is not a
step (impossible with IEEE arithmetic, kept as a safety net) gets direction 0 and a lookup
row ``lookup[j, y + K]`` (1 = +1).

Ops (registered):
  * ``threshold_pack(y, threshold, direction)``: y int32 (N, C) or (N, C, H, W) ->
    packed signs along channels, (N, ceil(C/64)) or (N, H, W, ceil(C/64)) uint64: the input
    layout of the next binary dense / conv layer (``pack_signs`` / ``pack_conv_input``'s).
    Directions must be +-1 (lookup channels go through ``threshold_signs``).
Plain NumPy (no op): ``threshold_signs`` (bool signs, lookup channels included).

The Numba body is compiled on first use (``@njit(cache=True)`` built inside ``_numba_loop``),
so importing this module needs no Numba; the registry only picks it where Numba imports.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, NamedTuple

import numpy as np

from minibnn.errors import DTypeError, ShapeError
from minibnn.kernels._common import WORD_BITS, words_for
from minibnn.kernels.registry import register


class Threshold(NamedTuple):
    """Folded BatchNorm + sign of one layer's C output channels over y in [-k, k]."""

    threshold: np.ndarray          # (C,) int32 t_c
    direction: np.ndarray          # (C,) int8: +1 (y >= t), -1 (y <= t), 0 (lookup row)
    lookup: np.ndarray | None      # (L, 2k+1) uint8 rows of the direction-0 channels, or None
    k: int                         # y ranges over [-k, k]


def fold_sign_table(positive: np.ndarray, k: int) -> Threshold:
    """Thresholds from a sign table: ``positive[j, c]`` = (float sign at y = j - k) is +1.

    ``positive`` is bool (2k+1, C).  Step up (False...False True...True, or constant):
    direction +1, t = first y that is +1 (k + 1 when none).  Step down: direction -1, t = last
    y that is +1 (-k - 1 when none).  Anything else: direction 0, the column is the lookup row.
    """
    positive = np.asarray(positive, dtype=np.bool_)
    if positive.ndim != 2 or positive.shape[0] != 2 * k + 1:
        raise ShapeError(f"fold_sign_table: table must be (2k+1 = {2 * k + 1}, C), got "
                         f"{tuple(positive.shape)}")
    ups = np.all(positive[1:] >= positive[:-1], axis=0)       # nondecreasing in y
    downs = np.all(positive[1:] <= positive[:-1], axis=0)     # nonincreasing in y
    count = positive.sum(axis=0, dtype=np.int64)               # how many y give +1
    threshold = np.where(ups, k + 1 - count, -k - 1 + count)   # first +1 / last +1
    direction = np.where(ups, 1, np.where(downs, -1, 0)).astype(np.int8)
    threshold[direction == 0] = 0
    lookup = None
    if (direction == 0).any():
        lookup = np.ascontiguousarray(positive[:, direction == 0].T).astype(np.uint8)
    return Threshold(threshold.astype(np.int32), direction, lookup, int(k))


def _check(fn: str, y: np.ndarray, threshold: np.ndarray, direction: np.ndarray) -> None:
    if not isinstance(y, np.ndarray) or y.dtype != np.int32 or y.ndim not in (2, 4):
        raise DTypeError(f"{fn}: y must be an int32 (N, C) or (N, C, H, W) array, got "
                         f"{getattr(y, 'dtype', type(y).__name__)} "
                         f"{tuple(getattr(y, 'shape', ()))}")
    c = y.shape[1]
    if threshold.dtype != np.int32 or threshold.shape != (c,):
        raise ShapeError(f"{fn}: threshold must be int32 ({c},), got {threshold.dtype} "
                         f"{tuple(threshold.shape)}")
    if direction.dtype != np.int8 or direction.shape != (c,):
        raise ShapeError(f"{fn}: direction must be int8 ({c},), got {direction.dtype} "
                         f"{tuple(direction.shape)}")


def threshold_signs(y: np.ndarray, th: Threshold) -> np.ndarray:
    """Bool signs (True = +1) of int32 y (N, C, ...) under ``th``, lookup channels included."""
    _check("threshold_signs", y, th.threshold, th.direction)
    shape = (1, -1) + (1,) * (y.ndim - 2)
    t, d = th.threshold.reshape(shape), th.direction.reshape(shape)
    s = np.where(d > 0, y >= t, y <= t)
    if th.lookup is not None:
        for row, c in zip(th.lookup, np.flatnonzero(th.direction == 0)):
            s[:, c] = row[y[:, c] + th.k] == 1            # y in [-k, k] by construction
    return s


def _pack_bool(bits: np.ndarray) -> np.ndarray:
    """Pack bool (..., C) along the last axis: bit c % 64 of word c // 64, pad bits 0."""
    c = bits.shape[-1]
    nw = words_for(c)
    padded = np.zeros(bits.shape[:-1] + (nw * WORD_BITS,), dtype=np.bool_)
    padded[..., :c] = bits
    packed = np.packbits(padded.reshape(-1, nw, WORD_BITS), axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64).reshape(bits.shape[:-1]
                                                                              + (nw,))


def _check_directions(fn: str, direction: np.ndarray) -> None:
    if not np.all(np.abs(direction) == 1):
        raise ShapeError(f"{fn}: every direction must be +1 or -1 (lookup channels go through "
                         "threshold_signs)")


@register("threshold_pack", "numpy")
def threshold_pack(y: np.ndarray, threshold: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Signs ``(y >= t) if d > 0 else (y <= t)`` per channel (axis 1), packed along channels.

    (N, C) -> (N, ceil(C/64)); (N, C, H, W) -> (N, H, W, ceil(C/64)); uint64, bit 1 = +1.
    """
    fn = "threshold_pack"
    _check(fn, y, threshold, direction)
    _check_directions(fn, direction)
    s = threshold_signs(y, Threshold(threshold, direction, None, 0))
    return _pack_bool(np.moveaxis(s, 1, -1))


@lru_cache(maxsize=1)
def _numba_loop() -> Callable[..., Any]:
    """The compiled loop (Numba imported and the function compiled, or loaded, on first use)."""
    from numba import njit, prange

    @njit(parallel=True, cache=True)
    def loop(y3, t, d, out):  # type: ignore[no-untyped-def]
        # y3 (N, C, P) int32; out (N*P, W) uint64: row n*P + p packs the C signs of pixel p
        n, c, p = y3.shape
        nw = out.shape[1]
        for r in prange(n * p):
            ni, pi = r // p, r % p
            for q in range(nw):
                c0 = q * 64
                word = np.uint64(0)
                for j in range(min(64, c - c0)):
                    v, tc = y3[ni, c0 + j, pi], t[c0 + j]
                    bit = v >= tc if d[c0 + j] > 0 else v <= tc
                    word |= np.uint64(bit) << np.uint64(j)
                out[r, q] = word

    return loop


@register("threshold_pack", "numba")
def threshold_pack_numba(y: np.ndarray, threshold: np.ndarray, direction: np.ndarray
                         ) -> np.ndarray:
    """Numba twin of ``threshold_pack``: compare and pack in one pass over y."""
    fn = "threshold_pack"
    _check(fn, y, threshold, direction)
    _check_directions(fn, direction)
    n, c = y.shape[:2]
    spatial = y.shape[2:]
    y3 = np.ascontiguousarray(y).reshape(n, c, -1)
    out = np.empty((n * y3.shape[2], words_for(c)), dtype=np.uint64)
    _numba_loop()(y3, threshold, direction, out)
    return out.reshape((n,) + spatial + (words_for(c),))


__all__ = ["Threshold", "fold_sign_table", "threshold_pack", "threshold_signs"]
