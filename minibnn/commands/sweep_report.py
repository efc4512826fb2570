"""``minibnn show DIR``: a sweep's table, and a heatmap or line plot of one metric over its grid
(or, for a random search, the metric against each drawn option and the best after k trials).

The table is ``DIR/summary.csv`` as columns.  The plot takes the metric (``val_acc`` when the
runs hold a validation split, else ``test_acc``) of every finished point and draws it over the
grid axes that have more than one value: a heatmap over two axes (``x`` and ``y``, default the
first two; a value averaged over every other axis, e.g. seeds, as the title says), or a line
over one.  Axis values are equally spaced ticks in sorted order (grids are usually geometric).
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

from minibnn.errors import MinibnnError
from minibnn.commands.figures import save_figure

METRICS = ("val_acc", "test_acc", "seconds", "epochs")


def is_sweep_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "summary.csv"))


def load_sweep_dir(path: str) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    """The grid axes (from ``DIR/sweep.toml``) and the rows of ``DIR/summary.csv``."""
    parsed, rows = _load(path)
    return parsed.axes, rows


def _load(path: str) -> tuple[Any, list[dict[str, Any]]]:
    """The parsed ``DIR/sweep.toml`` (a ``Sweep``) and the rows of ``DIR/summary.csv``."""
    from minibnn.commands.sweep import read_summary
    from minibnn.commands.sweep_spec import read_sweep

    spec_path = os.path.join(path, "sweep.toml")
    if not os.path.isfile(spec_path):
        raise MinibnnError(f"{path}: no sweep.toml beside summary.csv (not a sweep folder)")
    parsed, _ = read_sweep(spec_path)
    rows = read_summary(os.path.join(path, "summary.csv"))
    missing = [a for a in parsed.axes if rows and a not in rows[0]]
    if missing:
        raise MinibnnError(f"{path}: summary.csv lacks the grid column(s) {missing}; rerun "
                           "the sweep to rewrite it")
    return parsed, rows


def format_sweep_table(axes: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    columns = list(axes) + ["status", "epochs", "val_acc", "test_acc", "seconds"]
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    failed = [r for r in rows if r.get("status") == "failed"]
    lines += [f"failed: {' '.join(f'{a}={r[a]}' for a in axes)}: {r.get('reason', '')}"
              for r in failed]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if str(value).isdigit():
        return str(value)
    return f"{number:.4g}"


def _value(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def pick_metric(rows: Sequence[dict[str, Any]], metric: str | None) -> str:
    if metric is not None:
        if metric not in METRICS:
            raise MinibnnError(f"unknown --metric {metric!r}; expected one of "
                               f"{', '.join(METRICS)}")
        return metric
    return "val_acc" if any(r.get("val_acc") not in ("", None) for r in rows) else "test_acc"


def grid_means(rows: Sequence[dict[str, Any]], axes: Sequence[str], metric: str
               ) -> dict[tuple[Any, ...], float]:
    """Mean of ``metric`` over the finished rows sharing each combination of ``axes``."""
    sums: dict[tuple[Any, ...], list[float]] = {}
    for row in rows:
        if row.get("status") != "done" or row.get(metric) in ("", None):
            continue
        key = tuple(_value(row[a]) for a in axes)
        sums.setdefault(key, []).append(float(row[metric]))
    return {k: sum(v) / len(v) for k, v in sums.items()}


def plot_sweep(axes: Sequence[str], rows: Sequence[dict[str, Any]], out: str,
               metric: str | None = None, x: str | None = None, y: str | None = None) -> str:
    """Draw the heatmap (two varying axes) or line (one) of ``metric``; returns the metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = pick_metric(rows, metric)
    varying = [a for a in axes if len({r[a] for r in rows}) > 1]
    for name, given in (("--x", x), ("--y", y)):
        if given is not None and given not in axes:
            raise MinibnnError(f"{name} {given!r} is not a grid axis ({', '.join(axes)})")
    chosen = [a for a in (x, y) if a is not None]
    chosen += [a for a in varying if a not in chosen][:2 - len(chosen)]
    if not chosen:
        raise MinibnnError("the grid has no axis with more than one value to plot over")
    rest = [a for a in varying if a not in chosen]
    means = grid_means(rows, chosen, metric)
    if not means:
        raise MinibnnError(f"no finished point has a {metric} to plot")
    averaged = f" (mean over {', '.join(rest)})" if rest else ""
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    xs = _sorted_values(rows, chosen[0])
    if len(chosen) == 1:
        ax.plot(range(len(xs)), [means.get((v,), math.nan) for v in xs], marker="o")
        ax.set_xticks(range(len(xs)), [_fmt(v) for v in xs])
        ax.set_xlabel(chosen[0])
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    else:
        ys = _sorted_values(rows, chosen[1])
        grid = [[means.get((vx, vy), math.nan) for vx in xs] for vy in ys]
        image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(xs)), [_fmt(v) for v in xs])
        ax.set_yticks(range(len(ys)), [_fmt(v) for v in ys])
        ax.set_xlabel(chosen[0])
        ax.set_ylabel(chosen[1])
        fig.colorbar(image, ax=ax, label=metric)
        for j, row in enumerate(grid):
            for i, v in enumerate(row):
                if not math.isnan(v):
                    ax.text(i, j, f"{v:.3f}", ha="center", va="center", fontsize=7,
                            color="white" if v < (min(means.values()) + max(means.values())) / 2
                            else "black")
    ax.set_title(f"{metric}{averaged}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out, dpi=110)
    return metric


def _sorted_values(rows: Sequence[dict[str, Any]], axis: str) -> list[Any]:
    values = {_value(r[axis]) for r in rows}
    numeric = all(isinstance(v, float) for v in values)
    return sorted(values) if numeric else sorted(values, key=str)


def best_after(rows: Sequence[dict[str, Any]], metric: str) -> list[float]:
    """Best ``metric`` among trials 0..k, for k = 0, 1, ... (NaN until a trial has one): the
    curve a random search is judged by. Rows are taken in trial order; a trial run at several
    grid points (seeds, say) counts with its best point."""
    by_trial: dict[int, float] = {}
    for r in rows:
        value = _number(r.get(metric))
        if r.get("status") == "done" and value is not None:
            t = int(float(r["trial"]))
            by_trial[t] = max(by_trial.get(t, -math.inf), value)
    best, out = -math.inf, []
    for t in range(max(by_trial, default=-1) + 1):
        best = max(best, by_trial.get(t, -math.inf))
        out.append(best if best > -math.inf else math.nan)
    return out


def _number(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def plot_random_sweep(search: Any, rows: Sequence[dict[str, Any]], out: str,
                      metric: str | None = None) -> str:
    """One panel per drawn option (the metric of every finished trial against the option's
    value; log axis for log-uniform) and one of the best metric after k trials."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = pick_metric(rows, metric)
    done = [r for r in rows if r.get("status") == "done" and _number(r.get(metric)) is not None]
    if not done:
        raise MinibnnError(f"no finished trial has a {metric} to plot")
    panels = len(search.options) + 1
    cols = min(3, panels)
    fig, axes = plt.subplots((panels + cols - 1) // cols, cols, figsize=(4.2 * cols, 3.4 *
                             ((panels + cols - 1) // cols)), squeeze=False)
    flat = list(axes.flat)
    curve = best_after(rows, metric)
    flat[0].plot(range(1, len(curve) + 1), curve, marker=".", drawstyle="steps-post")
    flat[0].set_xlabel("trials")
    flat[0].set_ylabel(f"best {metric}")
    for ax, (name, kind, _) in zip(flat[1:], search.options):
        values = [_value(r[name]) for r in done]
        ys = [float(r[metric]) for r in done]
        if kind == "choice":
            labels = [str(v) for v in _sorted_values(done, name)]
            ax.scatter([labels.index(str(v)) for v in values], ys, s=14)
            ax.set_xticks(range(len(labels)), labels)
        else:
            ax.scatter(values, ys, s=14)
            if kind == "log-uniform":
                ax.set_xscale("log")
        ax.set_xlabel(f"{name} ({kind})")
        ax.set_ylabel(metric)
    for ax in flat:
        ax.grid(alpha=0.3)
    for ax in flat[panels:]:
        ax.set_visible(False)
    fig.suptitle(f"random search: {len(done)} finished trial rows of {len(rows)}")
    fig.tight_layout()
    save_figure(fig, out, dpi=120)
    return metric


def show_sweep(path: str, plot_path: str | None, metric: str | None = None,
               x: str | None = None, y: str | None = None, best: str | None = None,
               vmin: float | None = None, vmax: float | None = None) -> str:
    parsed, rows = _load(path)
    axes, search = parsed.axes, parsed.search
    text = format_sweep_table(axes, rows)
    if search is not None:
        used = pick_metric(rows, metric)
        curve = best_after(rows, used)
        if curve and not math.isnan(curve[-1]):
            text += f"\nbest {used} after {len(curve)} trials: {curve[-1]:.4f}"
    if plot_path is not None:
        if search is not None and (x, y) == (None, None):
            used = plot_random_sweep(search, rows, plot_path, metric)
        else:
            used = plot_sweep(axes, rows, plot_path, metric, x, y)
        text += f"\nplotted {used} -> {plot_path}"
    return text
