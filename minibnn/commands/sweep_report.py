"""``minibnn show DIR``: a sweep's table, its points grouped over seeds (mean ± std), the best
point, and a heatmap or line plot of one metric over its grid (or, for a random search, the
metric against each drawn option and the best after k trials).

The table is ``DIR/summary.csv`` as columns.  When the grid has a ``seed`` axis with more than one
value, a second table groups the runs that differ only in their seed: per group the number n of
finished runs and, of each metric, the mean ± the sample standard deviation (ddof = 1; none for
n = 1).  The best line names the point (or group) with the highest mean metric (``--best max``,
the default for accuracies) or the lowest (``min``, the default for losses, seconds and epochs);
unfinished points are left out and counted.  The plot takes the metric (``val_acc`` when the
runs hold a validation split, else ``test_acc``) of every finished point and draws it over the
grid axes that have more than one value: a heatmap over two axes (``x`` and ``y``, default the
first two; a value averaged over every other axis, e.g. seeds, as the title says), or a line
over one.  The heatmap's colour range is ``--vmin``/``--vmax`` or, by default, the lowest and
highest value shown; the colour bar's label says which, since an auto range over a few
thousandths makes noise look like structure.  Axis values are equally spaced ticks in sorted
order (grids are usually geometric).
"""
from __future__ import annotations

import math
import os
from typing import Any, NamedTuple, Sequence

import numpy as np

from minibnn.errors import MinibnnError
from minibnn.commands.figures import check_plot_path, save_figure

METRICS = ("val_acc", "test_acc", "seconds", "epochs")
#: the grid column whose values repeat one point (the grouped table averages over it)
SEED_AXIS = "seed"


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


def best_direction(metric: str, best: str | None) -> str:
    """``best`` (``max`` or ``min``), by default ``max`` for accuracies (``*_acc``) and ``min``
    for everything else (losses, seconds, epochs)."""
    if best is None:
        return "max" if metric.endswith("_acc") else "min"
    if best not in ("max", "min"):
        raise MinibnnError(f"--best must be max or min, got {best!r}")
    return best


def finished_values(rows: Sequence[dict[str, Any]], metric: str) -> list[float]:
    """``metric`` of every finished row that has a finite value of it."""
    values = [_number(r.get(metric)) for r in rows if r.get("status") == "done"]
    return [v for v in values if v is not None]


def group_rows(rows: Sequence[dict[str, Any]], axes: Sequence[str]
               ) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    """Every row (finished or not) under its values of ``axes``, groups in first-seen order."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(_value(row[a]) for a in axes), []).append(row)
    return groups


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation, n): std = sqrt(sum (v - mean)^2 / (n - 1)), NaN for
    n = 1; mean and std NaN for n = 0."""
    if not values:
        return math.nan, math.nan, 0
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else math.nan, len(a)


def grid_means(rows: Sequence[dict[str, Any]], axes: Sequence[str], metric: str
               ) -> dict[tuple[Any, ...], float]:
    """Mean of ``metric`` over the finished rows sharing each combination of ``axes``."""
    means = {k: mean_std(finished_values(g, metric))[0]
             for k, g in group_rows(rows, axes).items()}
    return {k: v for k, v in means.items() if not math.isnan(v)}


def seed_grouping(axes: Sequence[str], rows: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """The axes that name a group: every axis but ``seed`` when the seed takes more than one
    value (runs that differ only in their seed are one group), else every axis."""
    if SEED_AXIS in axes and len({_value(r[SEED_AXIS]) for r in rows}) > 1:
        return tuple(a for a in axes if a != SEED_AXIS)
    return tuple(axes)


def _varying(axes: Sequence[str], rows: Sequence[dict[str, Any]]) -> list[str]:
    return [a for a in axes if len({_value(r[a]) for r in rows}) > 1]


def _stat(mean: float, std: float, n: int, metric: str) -> str:
    """``0.8123 ± 0.0040``; the mean alone for n = 1, ``-`` for n = 0 (accuracies to 4
    decimals; other metrics, ``12.35 ± 0.41``, to 4 significant digits, the std to 2)."""
    if n == 0:
        return "-"
    form, spread = (".4f", ".4f") if metric.endswith("_acc") else (".4g", ".2g")
    return f"{mean:{form}}" if n == 1 else f"{mean:{form}} ± {std:{spread}}"


def format_group_table(keys: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    """Runs grouped by their values of ``keys`` (module docstring): n finished, and of each
    metric with a value the mean ± std over the group's finished runs.  ``epochs`` is left out
    when every finished run has the same count (it is then the spec's, not a result)."""
    groups = group_rows(rows, keys)
    metrics = [m for m in METRICS if finished_values(rows, m)]
    if "epochs" in metrics and len(set(finished_values(rows, "epochs"))) == 1:
        metrics.remove("epochs")
    columns = list(keys) + ["n"] + metrics
    cells = [[_fmt(g[0][k]) for k in keys] + [str(sum(r.get("status") == "done" for r in g))]
             + [_stat(*mean_std(finished_values(g, m)), m) for m in metrics]
             for g in groups.values()]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def best_line(axes: Sequence[str], rows: Sequence[dict[str, Any]], metric: str,
              direction: str) -> str:
    """``best val_acc (max): 0.8123 ± 0.0040 (n=3) at lr=0.01 momentum=0.9``: the group (over
    seeds, ``seed_grouping``) or point with the best mean ``metric``, and a line counting the
    points left out because they are not finished."""
    keys = seed_grouping(axes, rows)
    grouped = len(keys) < len(axes)
    pick = max if direction == "max" else min
    scored = [(mean_std(finished_values(g, metric)), g) for g in group_rows(rows, keys).values()]
    scored = [(stat, g) for stat, g in scored if stat[2] > 0]
    lines = []
    if not scored:
        lines.append(f"best {metric}: no finished point has one")
    else:
        (mean, std, n), group = pick(scored, key=lambda sg: sg[0][0])   # the first of ties
        value = _stat(mean, std, n, metric) + (f" (n={n})" if grouped else "")
        where = " ".join(f"{a}={group[0][a]}" for a in _varying(keys, rows))
        lines.append(f"best {metric} ({direction}): {value}{' at ' + where if where else ''}")
    left = [r.get("status", "") for r in rows if r.get("status") != "done"]
    if left:
        counts = ", ".join(f"{left.count(s)} {s or 'unknown'}" for s in sorted(set(left)))
        lines.append(f"{len(left)} point{'s' * (len(left) != 1)} not finished, left out "
                     f"({counts})")
    return "\n".join(lines)


class Plotted(NamedTuple):
    """What a sweep plot drew: the metric, and (a heatmap) its colour range, e.g.
    ``colour range 0.861 to 0.868, auto``; "" without a colour scale."""
    metric: str
    colour: str = ""


def check_limits(vmin: float | None, vmax: float | None) -> None:
    """``--vmin``/``--vmax``: finite, and vmin < vmax when both are given (one-line errors)."""
    for name, v in (("--vmin", vmin), ("--vmax", vmax)):
        if v is not None and not math.isfinite(v):
            raise MinibnnError(f"{name} must be a finite number, got {v}")
    if vmin is not None and vmax is not None and not vmin < vmax:
        raise MinibnnError(f"--vmin ({vmin:g}) must be below --vmax ({vmax:g})")


def colour_limits(values: Sequence[float], vmin: float | None, vmax: float | None
                  ) -> tuple[float, float, str]:
    """The heatmap's colour range (lo, hi): ``vmin``/``vmax`` where given, else the lowest and
    highest of ``values``; and how it was chosen ("auto", "set by --vmin/--vmax", ...)."""
    check_limits(vmin, vmax)
    lo = min(values) if vmin is None else vmin
    hi = max(values) if vmax is None else vmax
    if vmin is not None and vmax is None and not lo < hi:
        raise MinibnnError(f"--vmin ({vmin:g}) is not below the highest value shown "
                           f"({hi:.4g}); give --vmax too")
    if vmax is not None and vmin is None and not lo < hi:
        raise MinibnnError(f"--vmax ({vmax:g}) is not above the lowest value shown "
                           f"({lo:.4g}); give --vmin too")
    how = {(False, False): "auto", (True, True): "set by --vmin/--vmax",
           (True, False): "bottom set by --vmin, top auto",
           (False, True): "top set by --vmax, bottom auto"}
    return lo, hi, how[(vmin is not None, vmax is not None)]


def plot_sweep(axes: Sequence[str], rows: Sequence[dict[str, Any]], out: str,
               metric: str | None = None, x: str | None = None, y: str | None = None,
               vmin: float | None = None, vmax: float | None = None) -> Plotted:
    """Draw the heatmap (two varying axes; colour range ``vmin``..``vmax``, ``colour_limits``)
    or line (one; no colour scale, so ``vmin``/``vmax`` are an error) of ``metric``."""
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
    if len(chosen) == 1 and (vmin, vmax) != (None, None):
        raise MinibnnError(f"--vmin/--vmax set a heatmap's colour range; {chosen[0]} is the "
                           "only axis that varies, drawn as a line")
    lo, hi, how = colour_limits(list(means.values()), vmin, vmax)
    colour = f"colour range {lo:.4g} to {hi:.4g}, {how}" if len(chosen) == 2 else ""
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
        image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis", vmin=lo, vmax=hi)
        ax.set_xticks(range(len(xs)), [_fmt(v) for v in xs])
        ax.set_yticks(range(len(ys)), [_fmt(v) for v in ys])
        ax.set_xlabel(chosen[0])
        ax.set_ylabel(chosen[1])
        fig.colorbar(image, ax=ax, label=f"{metric}; {colour}")
        for j, row in enumerate(grid):
            for i, v in enumerate(row):
                if not math.isnan(v):        # viridis is dark below the middle of its range
                    ax.text(i, j, f"{v:.3f}", ha="center", va="center", fontsize=7,
                            color="white" if v < (lo + hi) / 2 else "black")
    ax.set_title(f"{metric}{averaged}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out, dpi=110)
    return Plotted(metric, colour)


def _sorted_values(rows: Sequence[dict[str, Any]], axis: str) -> list[Any]:
    values = {_value(r[axis]) for r in rows}
    numeric = all(isinstance(v, float) for v in values)
    return sorted(values) if numeric else sorted(values, key=str)


def best_after(rows: Sequence[dict[str, Any]], metric: str, best: str = "max") -> list[float]:
    """Best ``metric`` (the highest, or the lowest for ``best="min"``) among trials 0..k, for
    k = 0, 1, ... (NaN until a trial has one): the curve a random search is judged by. Rows are
    taken in trial order; a trial run at several grid points (seeds, say) counts with its best
    point."""
    pick = max if best == "max" else min
    by_trial: dict[int, float] = {}
    for r in rows:
        value = _number(r.get(metric))
        if r.get("status") == "done" and value is not None:
            t = int(float(r["trial"]))
            by_trial[t] = pick(by_trial.get(t, value), value)
    current, out = math.nan, []
    for t in range(max(by_trial, default=-1) + 1):
        if t in by_trial:
            current = by_trial[t] if math.isnan(current) else pick(current, by_trial[t])
        out.append(current)
    return out


def _number(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def plot_random_sweep(search: Any, rows: Sequence[dict[str, Any]], out: str,
                      metric: str | None = None, best: str | None = None) -> Plotted:
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
    curve = best_after(rows, metric, best_direction(metric, best))
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
    return Plotted(metric)


def show_sweep(path: str, plot_path: str | None, metric: str | None = None,
               x: str | None = None, y: str | None = None, best: str | None = None,
               vmin: float | None = None, vmax: float | None = None) -> str:
    """The text ``minibnn show DIR`` prints: the table, the table grouped over seeds (when the
    seed varies), the best point, a random search's best after k trials; and the plot, if
    ``plot_path``."""
    check_limits(vmin, vmax)
    if (vmin, vmax) != (None, None) and plot_path is None:
        raise MinibnnError("--vmin/--vmax set the heatmap's colour range: add --plot FILE.png")
    if (x, y) != (None, None) and plot_path is None:
        raise MinibnnError("--x/--y choose the plot's axes: add --plot FILE.png")
    if x is not None and x == y:
        raise MinibnnError(f"--x and --y are both {x!r}: give two different grid axes")
    if plot_path is not None:
        check_plot_path(plot_path)
    parsed, rows = _load(path)
    axes, search = parsed.axes, parsed.search
    used = pick_metric(rows, metric)
    direction = best_direction(used, best)
    text = format_sweep_table(axes, rows)
    keys = seed_grouping(axes, rows)
    if len(keys) < len(axes):
        text += f"\n\nmean ± std over {SEED_AXIS} (n: finished runs)\n"
        text += format_group_table(keys, rows)
    text += "\n" + best_line(axes, rows, used, direction)
    if search is not None:
        curve = best_after(rows, used, direction)
        if curve and not math.isnan(curve[-1]):
            text += f"\nbest {used} after {len(curve)} trials: {curve[-1]:.4f}"
    if plot_path is not None:
        if search is not None and (x, y) == (None, None):
            if (vmin, vmax) != (None, None):
                raise MinibnnError("--vmin/--vmax set a heatmap's colour range; a random "
                                   "search plots points (give --x and --y for a heatmap)")
            plotted = plot_random_sweep(search, rows, plot_path, used, direction)
        else:
            plotted = plot_sweep(axes, rows, plot_path, used, x, y, vmin, vmax)
        text += f"\nplotted {plotted.metric} -> {plot_path}"
        text += f" ({plotted.colour})" if plotted.colour else ""
    return text
