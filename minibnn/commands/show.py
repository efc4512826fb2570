"""``minibnn show RUN.h5 [RUN2.h5 ...] [--plot FILE.png]``: per-epoch metrics of runs, side by side.

The table has one row per epoch and, per run, its losses and accuracies (train, and val and test
where logged) and the mean flip ratio over its binary layers. Runs are labelled by the spec
fields in which they differ (``optimizer=sgd lr=0.1``), or by file name when they do not.
``--plot`` draws four panels with matplotlib: loss, accuracy, the flip ratio of every binary
layer (log scale), and the rates the optimisers used (alpha, lr, real_lr).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

from minibnn.errors import MinibnnError
from minibnn.commands.figures import save_figure

RATES = ("alpha", "lr", "real_lr", "gamma", "threshold")


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


def plot(runs: Sequence[tuple[str, dict[str, list[float]]]], out: str) -> None:
    """Four panels (loss, accuracy, flip ratio per binary layer, rates) into the PNG ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not out.lower().endswith(".png"):
        raise MinibnnError(f"--plot writes a PNG: the file name must end in .png, got {out!r}")
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    (loss_ax, acc_ax), (flip_ax, rate_ax) = axes
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, m) in enumerate(runs):
        c = colours[i % len(colours)]
        epochs = range(1, len(m.get("train_loss", [])) + 1)
        tag = f"[{i + 1}]"
        for key, style in (("train", "-"), ("val", "--"), ("test", ":")):
            if f"{key}_loss" in m:
                loss_ax.plot(epochs, m[f"{key}_loss"], style, color=c, marker=".",
                             label=f"{tag} {key}")
            if f"{key}_acc" in m:
                acc_ax.plot(epochs, m[f"{key}_acc"], style, color=c, marker=".",
                            label=f"{tag} {key}")
        for k, v in m.items():
            if k.startswith("flip_ratio:"):
                flip_ax.plot(epochs, v, color=c, alpha=0.8, label=f"{tag} {k.split(':', 1)[1]}")
        for key, style in zip(RATES, ("-", "--", ":", "-.", "-")):
            if key in m and any(x == x for x in m[key]):
                rate_ax.plot(epochs, m[key], style, color=c, label=f"{tag} {key}")
    for ax, title in ((loss_ax, "loss"), (acc_ax, "accuracy"),
                      (flip_ax, "flip ratio per binary layer"), (rate_ax, "rates")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    if flip_ax.lines:
        flip_ax.set_yscale("log")
    if rate_ax.lines:
        rate_ax.set_yscale("log")
    fig.suptitle("\n".join(f"[{i + 1}] {label}" for i, (label, _) in enumerate(runs)),
                 fontsize=8)
    fig.tight_layout()
    save_figure(fig, out, dpi=110)


def show(paths: Sequence[str], plot_path: str | None = None) -> str:
    """The table of the run files at ``paths`` (and the plot, with ``plot_path``)."""
    from minibnn.run.files import load_run
    from minibnn.run.spec import read_stored_config

    loaded = [load_run(p) for p in paths]
    labels = run_labels([read_stored_config(r.config_json)[0].options() for r in loaded], paths)
    runs = [(label, r.metrics) for label, r in zip(labels, loaded)]
    if not any(m.get("train_loss") for _, m in runs):
        raise MinibnnError("no finished epoch in " + ", ".join(paths))
    if plot_path is not None:
        plot(runs, plot_path)
    return format_table(runs)
