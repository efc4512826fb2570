"""Softmax cross-entropy on logits, with PyTorch's label smoothing, and the distillation loss to a
teacher's logits, each fused with its gradient.

For logits z (N, C) and integer labels (N,):
    log p = z - max(z) - log(sum(exp(z - max(z))))          (stable log-softmax)
    q     = (1 - eps) * onehot(label) + eps / C             (smoothed target)
    loss  = -(1/N) * sum_n sum_c q[n, c] * log p[n, c]
    dL/dz = (softmax(z) - q) / N

Distillation (Hinton et al. 2015; ReActNet trains with it alone) at temperature T, for student
logits z and teacher logits t (N, C):
    p = softmax(t / T),  log s = log_softmax(z / T)
    loss  = T^2 (1/N) sum_n sum_c p[n, c] (log p[n, c] - log s[n, c])      (KL(p || s))
    dL/dz = T (s - p) / N
The T^2 keeps the gradient's size independent of T (Hinton's scaling).
"""
from __future__ import annotations

import numpy as np

from minibnn.backend import get_array_module
from minibnn.errors import DTypeError, MinibnnError, ShapeError
from minibnn.nn.functional._checks import (
    Array, require_array, require_float, require_ndim, require_real, shape_str)


def _log_softmax(z: Array) -> Array:
    """``log softmax(z)`` along axis 1, computed stably as ``z - max(z) - log sum exp(z - max)``."""
    xp = get_array_module(z)
    z = z - z.max(axis=1, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))


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
    logp = _log_softmax(logits)
    rows = xp.arange(n)
    q = xp.full((n, c), eps / c, dtype=logits.dtype)
    q[rows, labels] += 1.0 - eps
    loss = -(q * logp).sum() / n
    dlogits = (xp.exp(logp) - q) / n
    return loss, dlogits


def distillation_kl(logits: Array, teacher_logits: Array,
                    temperature: float = 1.0) -> tuple[Array, Array]:
    """Return ``(loss, dlogits)``: ``T^2 KL(softmax(t/T) || softmax(z/T))``, the batch mean, and
    its gradient with respect to the student's ``logits`` (the teacher is fixed)."""
    fn = "distillation_kl"
    require_float(fn, "logits", logits)
    require_ndim(fn, "logits", logits, 2, "(N, C)")
    require_float(fn, "teacher_logits", teacher_logits)
    if tuple(teacher_logits.shape) != tuple(logits.shape):
        raise ShapeError(f"{fn}: teacher_logits must have the logits' shape "
                         f"{shape_str(logits.shape)}, got {shape_str(teacher_logits.shape)}")
    n = int(logits.shape[0])
    if n == 0:
        raise ShapeError(f"{fn}: logits must have at least one row")
    t = require_real(fn, "temperature", temperature, 0.0, float("inf"), lo_open=True)
    xp = get_array_module(logits)
    log_s = _log_softmax(logits / t)
    log_p = _log_softmax(xp.asarray(teacher_logits, dtype=logits.dtype) / t)
    p = xp.exp(log_p)
    loss = t * t * (p * (log_p - log_s)).sum() / n
    dlogits = t * (xp.exp(log_s) - p) / n
    return loss, dlogits
