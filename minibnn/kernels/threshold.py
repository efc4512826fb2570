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

Here (plain NumPy, no kernel op): ``Threshold``, ``fold_sign_table`` and ``threshold_signs``
(bool signs, lookup channels included).  The kernel op that applies the thresholds and packs
the signs for the next binary layer, ``kernels.threshold_pack(y, threshold,
direction)``, has its reference body in ``kernels.reference`` and its Numba body in
``kernels.cpu``, like every other op.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minibnn.errors import ShapeError
from minibnn.kernels._common import check_thresholds
from minibnn.kernels.reference import compare_thresholds


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


def threshold_signs(y: np.ndarray, th: Threshold) -> np.ndarray:
    """Bool signs (True = +1) of int32 y (N, C, ...) under ``th``, lookup channels included."""
    check_thresholds("threshold_signs", y, th.threshold, th.direction, "numpy")
    s = compare_thresholds(y, th.threshold, th.direction)
    if th.lookup is not None:
        for row, c in zip(th.lookup, np.flatnonzero(th.direction == 0)):
            s[:, c] = row[y[:, c] + th.k] == 1            # y in [-k, k] by construction
    return s


__all__ = ["Threshold", "fold_sign_table", "threshold_signs"]
