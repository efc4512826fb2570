"""Redraw the experiment figures from the sweep folders (run the sweeps first).

    python experiments/figures.py [--runs experiments/out] [--out docs/figures]

E1: val_acc of the latent SGDW grid over (lr, weight decay) with the iso-lines lr * wd = const
(anti-diagonals of the power-of-two grid) drawn in, beside the CEMA grid over (alpha, gamma).
"""
from __future__ import annotations

import argparse
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minibnn.figures import save_figure  # noqa: E402
from minibnn.sweep_report import grid_means, load_sweep_dir  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="experiments/out")
    parser.add_argument("--out", default="docs/figures")
    args = parser.parse_args()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6))
    image, xs = heatmap(left, os.path.join(args.runs, "e1_latent"), "lr", "weight-decay")
    n = len(xs)
    for k in range(-n + 1, n):        # iso-lines lr * wd = const: i + j = const on this grid
        left.plot([k - 0.5 + n, -0.5], [-0.5, k - 0.5 + n], color="white", lw=0.6, alpha=0.5)
    left.set_xlim(-0.5, n - 0.5)
    left.set_ylim(-0.5, n - 0.5)
    left.set_title("latent SGDW, momentum 0.75: val acc\n(white lines: lr x wd = const)",
                   fontsize=9)
    heatmap(right, os.path.join(args.runs, "e1_cema"), "alpha", "gamma")
    right.set_title("CEMA: val acc over (alpha, gamma)\n(gamma 2^-2 = E1a's momentum 0.75)",
                    fontsize=9)
    fig.colorbar(image, ax=[left, right], label="val acc (5,000 held-out MNIST images)")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "e1-collapse.png")
    save_figure(fig, path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
