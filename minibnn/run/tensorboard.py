"""``minibnn train --tensorboard DIR``: the run's metrics as TensorBoard event files.

The training loop calls one hook, ``Board.epoch_end``, after each epoch's run file is written,
so the events never run ahead of the run file.  Per epoch it writes (x-axis: the global
optimiser step, counted from 1):

- per logged step (``minibnn.run.step_log``'s rows): ``train/loss``, ``train/acc``,
  ``flip_ratio/<layer>`` and ``rate/<name>`` (alpha, lr, real_lr, ...);
- at the epoch's last step: ``epoch/<metric>`` for each per-epoch metric of the run file
  (``epoch/train_loss``, ``epoch/val_acc``, ``epoch/flip_ratio/<layer>``, ...; NaN values,
  such as a test accuracy not evaluated that epoch, are left out), and a histogram
  ``filter_state/<layer>`` of what decides each binary layer's flips: a filter optimiser's
  state buffer (CEMA's second EMA, ...; ``train.FILTER_STATE``), or the latent weights of sgd
  and adam, which are that filter's state in the paper's reading (docs/theory.md).

A resumed run appends to the same folder with ``purge_step`` = its checkpoint's step + 1:
TensorBoard then drops any older events past the checkpoint. Each session writes its own event
file, named (beyond tensorboardX's wall-clock second and host) by its process and first step,
so a resume within the same second never replaces the file before it.  The writer is tensorboardX (the
``tensorboard`` extra); without it ``check_available`` is a one-line error before training.
"""
from __future__ import annotations

import math
import os
from types import TracebackType
from typing import Any, Callable, Mapping

import numpy as np

from minibnn.backend import to_numpy
from minibnn.errors import MinibnnError, os_reason
from minibnn.run.step_log import STEP

#: step-row name -> tag; flip ratios and rates are named by the rules in ``step_tag``
STEP_TAGS = {"train_loss": "train/loss", "train_acc": "train/acc"}


def check_available(logdir: str | None) -> None:
    """With a ``logdir``, tensorboardX must be importable: else a one-line error saying how to
    install it."""
    if logdir is None:
        return
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise MinibnnError("--tensorboard needs tensorboardX: pip install "
                           "'minibnn[tensorboard]'") from None


def step_tag(name: str) -> str:
    """The tag of a step-row metric: ``train/loss``, ``flip_ratio/fc2.w``, ``rate/alpha``."""
    if name in STEP_TAGS:
        return STEP_TAGS[name]
    if name.startswith("flip_ratio:"):
        return "flip_ratio/" + name.split(":", 1)[1]
    return "rate/" + name


def epoch_tag(name: str) -> str:
    """The tag of a per-epoch metric: ``epoch/val_acc``, ``epoch/flip_ratio/fc2.w``."""
    return "epoch/" + name.replace(":", "/")


class Board:
    """The hook the training loop calls; this one writes nothing (no ``--tensorboard``)."""

    def epoch_end(self, step: int, rows: Mapping[str, np.ndarray],
                  epoch_metrics: Mapping[str, float],
                  filter_states: Callable[[], Mapping[str, Any]]) -> None:
        """After an epoch ending at global ``step``: its step ``rows``, its metrics, and (a
        function giving) each binary layer's filter state."""

    def __enter__(self) -> "Board":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None


class EventBoard(Board):
    """Writes the events into ``logdir`` with a ``tensorboardX.SummaryWriter``."""

    def __init__(self, logdir: str, purge_step: int | None):
        from tensorboardX import SummaryWriter

        try:
            os.makedirs(logdir, exist_ok=True)
        except OSError as exc:
            raise MinibnnError(f"--tensorboard {logdir}: {os_reason(exc)}") from None
        # tensorboardX names the file by the second and the host only: two sessions in one
        # second (a quick --resume) would write the same file, the second erasing the first
        suffix = f".{os.getpid()}.from{purge_step or 1}"
        self.writer = SummaryWriter(logdir, purge_step=purge_step, filename_suffix=suffix)

    def epoch_end(self, step: int, rows: Mapping[str, np.ndarray],
                  epoch_metrics: Mapping[str, float],
                  filter_states: Callable[[], Mapping[str, Any]]) -> None:
        w = self.writer
        for i, at in enumerate(rows.get(STEP, ())):
            for name, values in rows.items():
                if name != STEP:
                    w.add_scalar(step_tag(name), float(values[i]), int(at))
        for name, value in epoch_metrics.items():
            if not math.isnan(value):
                w.add_scalar(epoch_tag(name), float(value), step)
        for layer, state in filter_states().items():
            w.add_histogram(f"filter_state/{layer}", to_numpy(state).astype(np.float64).ravel(),
                            step)
        w.flush()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.writer.close()


def open_board(logdir: str | None, resumed_at: int | None = None) -> Board:
    """The hook for ``--tensorboard logdir`` (a no-op ``Board`` without one); ``resumed_at``:
    the step a resumed run continues from (its older events past it are dropped)."""
    if logdir is None:
        return Board()
    check_available(logdir)
    return EventBoard(logdir, None if resumed_at is None else resumed_at + 1)
