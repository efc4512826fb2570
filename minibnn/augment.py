"""Data augmentation for image batches (NCHW), drawn from the run's one random generator.

``random_shift``: translate every image by its own integer offset in ``[-s, s]`` along each
axis, filling the uncovered border with the image minimum of the batch (the background after
standardisation), the usual augmentation for MNIST-like data.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from minibnn.backend import get_array_module

def random_shift(x: Any, max_shift: int, rng: np.random.Generator) -> Any:
    """Shift each image of ``x`` (N, C, H, W) by its own offset in ``[-max_shift, max_shift]^2``."""
    if max_shift == 0:
        return x
    xp = get_array_module(x)
    n, _, h, w = x.shape
    s = max_shift
    fill = float(x.min())
    padded = xp.pad(x, ((0, 0), (0, 0), (s, s), (s, s)), constant_values=fill)
    # offsets index the top-left corner of the crop inside the padded image: 0..2s
    oy = xp.asarray(rng.integers(0, 2 * s + 1, size=n))
    ox = xp.asarray(rng.integers(0, 2 * s + 1, size=n))
    rows = oy[:, None] + xp.arange(h)[None, :]            # (N, H)
    cols = ox[:, None] + xp.arange(w)[None, :]            # (N, W)
    batch = xp.arange(n)[:, None, None]
    # padded[n, :, rows[n, i], cols[n, j]] for every n, i, j -> (N, H, W, C), then NCHW
    out = padded.transpose(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return xp.ascontiguousarray(out.transpose(0, 3, 1, 2))
