"""Redraw the experiment figures from the sweep folders (run the sweeps first).

    python experiments/figures.py [--runs experiments/out] [--out docs/figures]

E1: val_acc of the latent SGDW grid over (lr, weight decay) with the iso-lines lr * wd = const
(anti-diagonals of the power-of-two grid) drawn in, beside the CEMA grid over (alpha, gamma).
E2: the four final CIFAR-10 runs: val accuracy and training loss per epoch, and the mean flip
ratio of each binary layer.  E3: the Fashion-MNIST run's accuracies per epoch.  E4: equal-budget
random search, latent SGD vs CEMA (vs latent Adam): best val_acc after k trials, the median and
10-90 % band over 2,000 random orderings of each search's trials, and every trial's val_acc
sorted (how much of each search space is good).  A figure whose sweep folders are missing is
skipped.
"""
from __future__ import annotations

import argparse
import math
import os

import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minibnn.commands.figures import save_figure  # noqa: E402
from minibnn.run.files import load_run  # noqa: E402
from minibnn.commands.sweep_report import grid_means, load_sweep_dir  # noqa: E402

#: E2's final runs: (sweep folder under --runs, label)
E2_FINAL = [("e2_final_cema", "CEMA"), ("e2_final_adam", "latent Adam"),
            ("e2_final_sgd", "latent SGD"), ("e2_final_bop", "Bop")]


def heatmap(ax, folder: str, x: str, y: str, metric: str = "val_acc") -> tuple[list, list]:
    axes, rows = load_sweep_dir(folder)
    means = grid_means(rows, (x, y), metric)
    xs = sorted({k[0] for k in means} | {float(r[x]) for r in rows})
    ys = sorted({k[1] for k in means} | {float(r[y]) for r in rows})
    grid = [[means.get((vx, vy), math.nan) for vx in xs] for vy in ys]
    image = ax.imshow(grid, origin="lower", cmap="viridis", vmin=0.92, vmax=0.98)
    for j, row in enumerate(grid):
        for i, v in enumerate(row):
            ax.text(i, j, "failed" if math.isnan(v) else f"{v:.3f}", ha="center", va="center",
                    fontsize=7, color="white" if v < 0.95 else "black")
    ax.set_xticks(range(len(xs)), [f"2^{math.log2(v):g}" for v in xs])
    ax.set_yticks(range(len(ys)), [f"2^{math.log2(v):g}" for v in ys])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    return image, xs


def _single_run(folder: str) -> dict[str, list[float]] | None:
    """The metrics of the one run of a finished one-point sweep folder, else None."""
    runs = os.path.join(folder, "runs")
    names = sorted(os.listdir(runs)) if os.path.isdir(runs) else []
    names = [n for n in names if n.endswith(".h5")]
    return load_run(os.path.join(runs, names[0])).metrics if len(names) == 1 else None


def e2_figure(runs: str, out: str) -> str | None:
    found = [(label, _single_run(os.path.join(runs, folder))) for folder, label in E2_FINAL]
    found = [(label, m) for label, m in found if m is not None]
    if not found:
        return None
    fig, (acc, loss, flips) = plt.subplots(1, 3, figsize=(14, 4.2))
    for label, m in found:
        epochs = range(1, len(m["train_loss"]) + 1)
        acc.plot(epochs, m["val_acc"], marker=".", label=label)
        loss.plot(epochs, m["train_loss"], marker=".", label=label)
        layers = sorted(k for k in m if k.startswith("flip_ratio:"))
        flips.plot([k.split(":", 1)[1] for k in layers],
                   [sum(m[k]) / len(m[k]) for k in layers], marker="o", label=label)
    acc.set(xlabel="epoch", ylabel="val acc (5,000 held-out images)", title="validation accuracy")
    loss.set(xlabel="epoch", ylabel="train loss", title="training loss")
    flips.set(ylabel="mean flip ratio per step", yscale="log",
              title="flip ratio per binary layer")
    for ax in (acc, loss, flips):
        ax.grid(alpha=0.3)
    acc.legend(fontsize=8)
    fig.suptitle("E2: binary_cnn (width 16) on CIFAR-10 (JPEG copy), tuned settings", fontsize=10)
    path = os.path.join(out, "e2-cifar10.png")
    save_figure(fig, path, dpi=110)
    return path


def e3_figure(runs: str, out: str) -> str | None:
    m = _single_run(os.path.join(runs, "e3_fashion"))
    if m is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = range(1, len(m["train_loss"]) + 1)
    ax.plot(epochs, m["train_acc"], marker=".", label="train acc (augmented)")
    ax.plot(epochs, m["val_acc"], marker=".", label="val acc (5,000 held out)")
    ax.axhline(m["test_acc"][-1], color="k", lw=0.8, ls="--",
               label=f"test acc after the last epoch: {m['test_acc'][-1]:.4f}")
    ax.axhline(0.90, color="r", lw=0.6, ls=":", label="90 %")
    ax.set(xlabel="epoch", ylabel="accuracy", title="E3: binary_cnn (width 32) + CEMA on "
           "Fashion-MNIST")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = os.path.join(out, "e3-fashion.png")
    save_figure(fig, path, dpi=110)
    return path


def e1_figure(runs: str, out: str) -> str | None:
    if not os.path.isdir(os.path.join(runs, "e1_latent")):
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6))
    image, xs = heatmap(left, os.path.join(runs, "e1_latent"), "lr", "weight-decay")
    n = len(xs)
    for k in range(-n + 1, n):        # iso-lines lr * wd = const: i + j = const on this grid
        left.plot([k - 0.5 + n, -0.5], [-0.5, k - 0.5 + n], color="white", lw=0.6, alpha=0.5)
    left.set_xlim(-0.5, n - 0.5)
    left.set_ylim(-0.5, n - 0.5)
    left.set_title("latent SGDW, momentum 0.75: val acc\n(white lines: lr x wd = const)",
                   fontsize=9)
    heatmap(right, os.path.join(runs, "e1_cema"), "alpha", "gamma")
    right.set_title("CEMA: val acc over (alpha, gamma)\n(gamma 2^-2 = E1a's momentum 0.75)",
                    fontsize=9)
    fig.colorbar(image, ax=[left, right], label="val acc (5,000 held-out MNIST images)")
    path = os.path.join(out, "e1-collapse.png")
    save_figure(fig, path, dpi=110)
    return path


#: E4's searches: (sweep folder under --runs, label)
E4_SEARCHES = [("e4_random_sgd", "latent SGD (5 hyperparameters)"),
               ("e4_random_cema", "CEMA (3 hyperparameters)"),
               ("e4_random_adam", "latent Adam (4 hyperparameters)")]


def trial_scores(folder: str, metric: str = "val_acc") -> list[float]:
    """Each trial's metric in trial order; a trial that failed (diverged) scores 0.1, chance
    on 10 classes (it found nothing); unfinished trials are left out."""
    _, rows = load_sweep_dir(folder)
    scores = []
    for row in sorted(rows, key=lambda r: int(r["trial"])):
        if row["status"] == "done" and row.get(metric):
            scores.append(float(row[metric]))
        elif row["status"] == "failed":
            scores.append(0.1)
    return scores


def best_after_k_band(scores: list[float], orderings: int = 2000, seed: int = 0
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median, 10th and 90th percentile over random orderings of the best score after k
    trials, k = 1..len(scores): what a search with this many trials finds, whatever its order."""
    rng = np.random.default_rng(seed)
    values = np.asarray(scores)
    curves = np.maximum.accumulate(
        np.stack([values[rng.permutation(len(values))] for _ in range(orderings)]), axis=1)
    return (np.median(curves, axis=0), np.percentile(curves, 10, axis=0),
            np.percentile(curves, 90, axis=0))


def e4_figure(runs: str, out: str) -> str | None:
    found = [(label, trial_scores(os.path.join(runs, folder))) for folder, label in E4_SEARCHES
             if os.path.isdir(os.path.join(runs, folder))]
    found = [(label, scores) for label, scores in found if scores]
    if not found:
        return None
    fig, (curve, spread) = plt.subplots(1, 2, figsize=(12, 4.4))
    for label, scores in found:
        median, lo, hi = best_after_k_band(scores)
        k = np.arange(1, len(scores) + 1)
        line, = curve.plot(k, median, label=f"{label}: {len(scores)} trials")
        curve.fill_between(k, lo, hi, color=line.get_color(), alpha=0.2)
        ranked = sorted(scores, reverse=True)
        spread.plot(np.arange(1, len(ranked) + 1) / len(ranked), ranked, marker=".",
                    color=line.get_color(), label=label)
    curve.set(xlabel="trials k", ylabel="best val acc after k trials",
              title="best after k trials: median and 10-90 % over trial orderings")
    spread.set(xlabel="fraction of trials", ylabel="val acc (sorted)",
               title="every trial, best first")
    for ax in (curve, spread):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("E4: equal-budget random search, binary_cnn (width 16), CIFAR-10 (JPEG copy), "
                 "4 epochs, 15,000 / 5,000 images", fontsize=10)
    path = os.path.join(out, "e4-random-search.png")
    save_figure(fig, path, dpi=110)
    return path


def e4_table(runs: str, ks: tuple[int, ...] = (1, 4, 8, 16, 32), good: float = 0.47
             ) -> list[str]:
    """EXPERIMENTS.md's E4 numbers: per search, the median best val acc after k trials (over
    the orderings the figure draws), the best trial, and how many trials reached ``good``."""
    lines = [f"| search | {' | '.join(f'k={k}' for k in ks)} | best | trials >= {good} |",
             "|---|" + "---|" * (len(ks) + 2)]
    for folder, label in E4_SEARCHES:
        path = os.path.join(runs, folder)
        scores = trial_scores(path) if os.path.isdir(path) else []
        if not scores:
            continue
        median = best_after_k_band(scores)[0]
        cells = [f"{median[k - 1]:.4f}" if k <= len(scores) else "" for k in ks]
        lines.append(f"| {label} | {' | '.join(cells)} | {max(scores):.4f} | "
                     f"{sum(v >= good for v in scores)} of {len(scores)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="experiments/out")
    parser.add_argument("--out", default="docs/figures")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for figure in (e1_figure, e2_figure, e3_figure, e4_figure):
        path = figure(args.runs, args.out)
        print(f"wrote {path}" if path else f"{figure.__name__}: its sweeps are not there; skipped")
    print("\nE4, median best val acc after k trials:", *e4_table(args.runs), sep="\n")


if __name__ == "__main__":
    main()
