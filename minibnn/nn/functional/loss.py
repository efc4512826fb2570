"""Softmax cross-entropy on logits, with PyTorch's label smoothing, fused with its gradient.

For logits z (N, C) and integer labels (N,):
    log p = z - max(z) - log(sum(exp(z - max(z))))          (stable log-softmax)
    q     = (1 - eps) * onehot(label) + eps / C             (smoothed target)
    loss  = -(1/N) * sum_n sum_c q[n, c] * log p[n, c]
    dL/dz = (softmax(z) - q) / N
"""
from __future__ import annotations

import numpy as np

from minibnn.backend import get_array_module
from minibnn.errors import DTypeError, MinibnnError, ShapeError
from minibnn.nn.functional._checks import (
    Array, require_array, require_float, require_ndim, require_real, shape_str)


def softmax_cross_entropy(logits: Array, labels: Array,
                          label_smoothing: float = 0.0) -> tuple[Array, Array]:
    """Return ``(loss, dlogits)``: the batch-mean loss (a 0-d array) and its gradient.

    The loss stays on the logits' device (``float(loss)`` reads it), so a training step on the
    GPU never waits for it. Labels are range-checked here when they are host (NumPy) arrays;
    device labels are not (that read would synchronise every step): the trainer's data sets
    are checked once when they are loaded (``minibnn.data.base.check_arrays``).
    """
    fn = "softmax_cross_entropy"
    require_float(fn, "logits", logits)
    require_ndim(fn, "logits", logits, 2, "(N, C)")
    require_array(fn, "labels", labels)
    n, c = (int(s) for s in logits.shape)
    if n == 0 or c == 0:
        raise ShapeError(f"{fn}: logits must have at least one row and one class, "
                         f"got shape {shape_str(logits.shape)}")
    if np.dtype(labels.dtype).kind not in "iu":
        raise DTypeError(f"{fn}: labels must be integer class indices, got dtype {labels.dtype}")
    if tuple(labels.shape) != (n,):
        raise ShapeError(f"{fn}: labels must have shape ({n},) to match logits.shape[0], "
                         f"got shape {shape_str(labels.shape)}")
    if get_array_module(labels) is np and labels.size:     # host labels: checking is free
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= c:
            bad = lo if lo < 0 else hi
            raise MinibnnError(f"{fn}: labels must lie in [0, {c}) for {c} classes, got {bad}")
    eps = require_real(fn, "label_smoothing", label_smoothing, 0.0, 1.0, hi_open=True)
    xp = get_array_module(logits)
    labels = xp.asarray(labels)
    z = logits - logits.max(axis=1, keepdims=True)
    logsumexp = xp.log(xp.exp(z).sum(axis=1, keepdims=True))
    logp = z - logsumexp
    rows = xp.arange(n)
    q = xp.full((n, c), eps / c, dtype=logits.dtype)
    q[rows, labels] += 1.0 - eps
    loss = -(q * logp).sum() / n
    dlogits = (xp.exp(logp) - q) / n
    return loss, dlogits
