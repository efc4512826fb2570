"""``minibnn show RUN.h5 [RUN2.h5 ...] --plot FILE.png``: the curves of run files, as one PNG.

Top row: loss, accuracy, and the flip ratio of every binary layer (log scale); bottom row: one
small panel per optimiser rate (alpha, lr, real_lr, gamma, threshold), each on its own y-axis
so that a small rate is not flattened under a large one.

The x-axis is the global optimiser step when any run has step metrics (``/step_metrics``):
train loss, accuracy, flip ratios and rates per logged step, and the per-epoch values (val
and test, and every series of a run without step rows) at the step that ended their epoch,
``e * steps_per_epoch``.  Without step metrics the x-axis is the epoch.

Style: each split has its own line style (train solid, val dashed, test dotted) and each
(run, split) its own colour; a series of at most ``MARK_UP_TO`` points is drawn with markers,
so a one-epoch run shows its point; NaN values (a test set not evaluated that epoch) and, on a
log scale, values <= 0 are left out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from minibnn.commands.figures import save_figure

RATES = ("alpha", "lr", "real_lr", "gamma", "threshold")
SPLITS = (("train", "-"), ("val", "--"), ("test", ":"))
#: line styles telling runs apart where the colour names the layer (flip panel) or the run
RUN_STYLES = ("-", "--", "-.", ":")
MARK_UP_TO = 30


@dataclass
class Curves:
    """What one run contributes to the plot."""

    label: str
    metrics: dict[str, list[float]]
    #: step metrics (``RunFile.step_metrics``): ``step`` and one vector per metric; {} if none
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    #: optimiser steps per epoch (checkpoint step / epoch), to place epoch values on steps
    steps_per_epoch: float = 1.0


def _series(ax: Any, x: Any, y: Any, colour: str, style: str, label: str,
            log: bool = False) -> None:
    """Plot the finite (and, with ``log``, positive) points of ``y`` over ``x``; markers when
    there are few."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(y) & ((y > 0) if log else True)
    if not keep.any():
        return
    few = int(keep.sum()) <= MARK_UP_TO
    ax.plot(x[keep], y[keep], linestyle=style, color=colour, marker="o" if few else None,
            markersize=4, linewidth=1.2, label=label)


def _by_step(run: Curves, name: str, on_steps: bool) -> tuple[Any, Any] | None:
    """``name`` of ``run`` as (x, y): its step rows when it has them and the axis is steps,
    else its per-epoch values at their epochs (or the steps ending them)."""
    if on_steps and name in run.rows:
        return run.rows["step"], run.rows[name]
    if name not in run.metrics:
        return None
    epochs = np.arange(1, len(run.metrics[name]) + 1)
    return (np.round(epochs * run.steps_per_epoch) if on_steps else epochs), run.metrics[name]


def plot(runs: Sequence[Curves], out: str) -> None:
    """Draw ``runs`` (see the module docstring) into the PNG ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    on_steps = any(run.rows for run in runs)
    rates = [r for r in RATES if any(r in run.metrics or r in run.rows for run in runs)]
    fig = plt.figure(figsize=(13, 8.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=(1.5, 1))
    loss_ax, acc_ax, flip_ax = top.subplots(1, 3)
    rate_axes = np.atleast_1d(bottom.subplots(1, max(len(rates), 1)))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    layer = 0
    for i, run in enumerate(runs):
        tag, run_style = f"[{i + 1}]", RUN_STYLES[i % len(RUN_STYLES)]
        for j, (split, style) in enumerate(SPLITS):
            colour = colours[(len(SPLITS) * i + j) % len(colours)]
            for ax, what in ((loss_ax, "loss"), (acc_ax, "acc")):
                xy = _by_step(run, f"{split}_{what}", on_steps)
                if xy is not None:
                    per = " per step" if on_steps and f"{split}_{what}" in run.rows else ""
                    _series(ax, *xy, colour, style, f"{tag} {split}{per}")
        flips = sorted(k for k in set(run.metrics) | set(run.rows) if k.startswith("flip_ratio:"))
        for name in flips:
            xy = _by_step(run, name, on_steps)
            if xy is not None:
                _series(flip_ax, *xy, colours[layer % len(colours)], run_style,
                        f"{tag} {name.split(':', 1)[1]}", log=True)
                layer += 1
        for ax, name in zip(rate_axes, rates):
            xy = _by_step(run, name, on_steps)
            if xy is not None:
                _series(ax, *xy, colours[(len(SPLITS) * i) % len(colours)], run_style, tag,
                        log=True)
    xlabel = "optimiser step" if on_steps else "epoch"
    titled = [(loss_ax, "loss"), (acc_ax, "accuracy"), (flip_ax, "flip ratio per binary layer")]
    titled += list(zip(rate_axes, rates or ["rates (none logged)"]))
    for ax, title in titled:
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))    # epochs and steps are whole
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, ncol=1 + len(ax.lines) // 12)
    for ax in [flip_ax, *rate_axes]:
        if ax.lines:
            ax.set_yscale("log")
    fig.suptitle("\n".join(f"[{i + 1}] {run.label}" for i, run in enumerate(runs)), fontsize=8)
    save_figure(fig, out, dpi=110)


def steps_per_epoch(step: int, epoch: int) -> float:
    """Optimiser steps per epoch of a checkpoint at ``step`` after ``epoch`` epochs (every epoch
    takes the same batches); 1 for a file with no finished epoch."""
    return step / epoch if epoch else 1.0

