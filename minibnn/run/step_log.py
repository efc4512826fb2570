"""Step metrics: every ``log_every``-th optimiser step's loss, accuracy, flip ratios and rates.

A row is recorded at each global step ``t`` (counted from 1 over the whole run) with
``t % log_every == 0``, so a resumed run logs exactly the steps an uninterrupted one logs.  The
row's values stay where the training computed them (0-d device arrays on the GPU) until the
epoch ends: ``StepLog.take`` then reads each series with one copy, so logging adds no host
synchronisation inside the epoch.  The run file stores the rows of finished epochs only
(``RunFile.step_metrics``: ``step`` int64 and one float64 vector per metric, all one length);
``append_rows`` joins a session's rows to the stored ones.

Row values, for a batch of ``n`` images at step ``t``:

- ``train_loss``: the batch's mean loss; ``train_acc``: correct predictions / ``n``;
- ``flip_ratio:<param>``: weights whose sign changed at step ``t`` / weights of the layer;
- one entry per optimiser rate (``alpha``, ``lr``, ``real_lr``, ...): the value used at ``t``.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from minibnn.backend import get_array_module, to_numpy

STEP = "step"


class StepLog:
    """The rows of one epoch, gathered during it and read on the host at its end."""

    def __init__(self, every: int):
        self.every = every
        self.steps: list[int] = []
        self.values: dict[str, list[Any]] = {}

    def due(self, step: int) -> bool:
        """Whether global step ``step`` (1-based) is logged."""
        return self.every > 0 and step % self.every == 0

    def record(self, step: int, loss: Any, correct: Any, n: int, flips: Mapping[str, Any],
               sizes: Mapping[str, int], rates: Mapping[str, float]) -> None:
        """Keep step ``step``'s row; ``loss``, ``correct`` and ``flips`` (flipped signs per
        layer, ``sizes`` its weights) may be device scalars: nothing is read here."""
        row: dict[str, Any] = {"train_loss": loss, "train_acc": correct / n}
        row.update({f"flip_ratio:{name}": count / sizes[name] for name, count in flips.items()})
        row.update(rates)
        self.steps.append(step)
        for name, value in row.items():
            self.values.setdefault(name, []).append(value)

    def take(self) -> dict[str, np.ndarray]:
        """The rows kept since the last ``take`` as host arrays (one read per series); then
        forget them.  Empty when no step was logged."""
        if not self.steps:
            return {}
        rows = {STEP: np.asarray(self.steps, dtype=np.int64)}
        for name, values in self.values.items():
            rows[name] = np.asarray([float(v) for v in values], dtype=np.float64) \
                if all(isinstance(v, (int, float)) for v in values) else _stacked(values)
        self.steps, self.values = [], {}
        return rows


def _stacked(values: list[Any]) -> np.ndarray:
    """0-d arrays of one array module -> one float64 host vector, read with one copy."""
    xp = get_array_module(values[0])
    return to_numpy(xp.stack([xp.asarray(v, dtype=xp.float64) for v in values]))


def append_rows(stored: Mapping[str, np.ndarray], new: Mapping[str, np.ndarray]
                ) -> dict[str, np.ndarray]:
    """``stored`` rows followed by ``new`` ones; a metric missing on one side reads NaN there
    (e.g. after a change of optimiser rates, which a run's spec never makes)."""
    if not new:
        return dict(stored)
    if not stored:
        return dict(new)
    before, after = len(stored[STEP]), len(new[STEP])
    rows = {STEP: np.concatenate([stored[STEP], new[STEP]]).astype(np.int64)}
    for name in list(stored) + [k for k in new if k not in stored]:
        if name == STEP:
            continue
        rows[name] = np.concatenate([stored.get(name, np.full(before, np.nan)),
                                     new.get(name, np.full(after, np.nan))]
                                    ).astype(np.float64)
    return rows

