"""``minibnn show RUN.h5 [RUN2.h5 ...] [--plot FILE.png]``: per-epoch metrics of runs, side by side.

The table has one row per epoch and, per run, its losses and accuracies (train, and val and test
where logged) and the mean flip ratio over its binary layers. Runs are labelled by the spec
fields in which they differ (``optimizer=sgd lr=0.1``), or by file name when they do not.
Under the table, each run's provenance: one record per training session (data source, threads,
BLAS, CPU, versions; ``minibnn.run.provenance``).  ``--plot`` draws the curves
(``minibnn.commands.show_plot``): per optimiser step where the runs stored step metrics, else
per epoch.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

from minibnn.errors import MinibnnError


def run_labels(options: Sequence[dict[str, Any]], paths: Sequence[str]) -> list[str]:
    """A short label per run: the spec options (``RunSpec.options()``) whose values differ
    between the runs; an option a run's model or optimiser does not take is absent there and
    says nothing about that run."""
    keys = sorted(k for k in set().union(*options)
                  if len({json.dumps(c.get(k)) for c in options}) > 1)
    labels = [" ".join(f"{k}={_short(c[k])}" for k in keys if c.get(k) is not None)
              for c in options]
    if not keys or len(set(labels)) < len(labels) or not all(labels):
        # equal specs, or a run told apart only by options it lacks: add the file names
        labels = [f"{lab} ({os.path.basename(p)})" if lab else os.path.basename(p)
                  for lab, p in zip(labels, paths)]
    return labels


def _short(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return f"{v:g}" if isinstance(v, float) else str(v)


def _mean_flip(metrics: dict[str, list[float]], epoch: int) -> float:
    values = [v[epoch] for k, v in metrics.items() if k.startswith("flip_ratio:")]
    return sum(values) / len(values) if values else math.nan


COLUMNS = (("train_loss", "train loss"), ("train_acc", "train acc"), ("val_acc", "val acc"),
           ("test_acc", "test acc"))


def format_table(runs: Sequence[tuple[str, dict[str, list[float]]]]) -> str:
    """The per-epoch table: for each run, the columns it has, then its mean flip ratio."""
    header = ["epoch"]
    getters: list[tuple[int, str]] = []
    for i, (label, metrics) in enumerate(runs):
        for key, name in COLUMNS:
            if key in metrics:
                header.append(f"{name} [{i + 1}]")
                getters.append((i, key))
        header.append(f"flips [{i + 1}]")
        getters.append((i, "flips"))
    epochs = max(len(m.get("train_loss", [])) for _, m in runs)
    rows = []
    for e in range(epochs):
        row = [str(e + 1)]
        for i, key in getters:
            metrics = runs[i][1]
            n = len(metrics.get("train_loss", []))
            if e >= n:
                row.append("")
            elif key == "flips":
                row.append(f"{_mean_flip(metrics, e):.2e}")
            else:
                v = metrics[key][e]
                row.append("" if v != v else f"{v:.4f}")
        rows.append(row)
    widths = [max(len(r[j]) for r in [header] + rows) for j in range(len(header))]
    lines = [f"[{i + 1}] {label}" for i, (label, _) in enumerate(runs)]
    lines.append("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    lines.append("-" * len(lines[-1]))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def show(paths: Sequence[str], plot_path: str | None = None) -> str:
    """The table of the run files at ``paths``, each run's provenance under it (and the plot,
    with ``plot_path``)."""
    from minibnn.commands.figures import check_plot_path
    from minibnn.commands.show_plot import Curves, plot, steps_per_epoch
    from minibnn.run.files import load_run
    from minibnn.run.provenance import format_sessions
    from minibnn.run.spec import read_stored_config

    if plot_path is not None:
        check_plot_path(plot_path, only=("png",))
    loaded = [load_run(p) for p in paths]
    labels = run_labels([read_stored_config(r.config_json)[0].options() for r in loaded], paths)
    runs = [(label, r.metrics) for label, r in zip(labels, loaded)]
    if not any(m.get("train_loss") for _, m in runs):
        raise MinibnnError("no finished epoch in " + ", ".join(paths))
    if plot_path is not None:
        plot([Curves(label, r.metrics, r.step_metrics,
                     steps_per_epoch(r.checkpoint.step, r.checkpoint.epoch)
                     if r.checkpoint is not None else 1.0)
              for label, r in zip(labels, loaded)], plot_path)
    lines = [format_table(runs)]
    for i, r in enumerate(loaded):
        lines.append(f"\n[{i + 1}] provenance")
        lines += ["  " + line for line in format_sessions((r.description or {}).get("provenance"))]
    return "\n".join(lines)
