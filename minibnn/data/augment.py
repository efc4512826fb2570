"""Data augmentation for image batches (NCHW), drawn from the run's one random generator.

``random_shift``: translate every image by its own integer offset in ``[-s, s]`` along each
axis, filling the uncovered border with the image minimum of the batch (``fill="min"``: the
background after standardisation, the usual augmentation for MNIST-like data) or with zeros
(``fill="zero"``: zero padding of the standardised image, so ``s = 4`` is torchvision's
``RandomCrop(32, padding=4)``, the standard CIFAR augmentation).  ``draw_offsets`` and
``shift_images`` are its two halves: the trainer draws one epoch's offsets at once (one copy to
the device per epoch) and shifts each batch with its slice of them, all on the device.

``flip_images``: mirror the images marked in a boolean mask left-right (``RandomHorizontalFlip``;
the trainer draws the mask, p = 1/2 per image, once per epoch after the offsets).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from minibnn.backend import get_array_module


def draw_offsets(n: int, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """(2, n) crop corners in ``[0, 2 max_shift]``: row offsets, then column offsets."""
    return rng.integers(0, 2 * max_shift + 1, size=(2, n))


FILLS = ("min", "zero")


def shift_images(x: Any, offsets: Any, max_shift: int, fill: str = "min") -> Any:
    """Translate image ``n`` of ``x`` (N, C, H, W) by ``offsets[:, n] - max_shift`` pixels.

    ``offsets`` (2, N) index the top-left corner of each crop inside the image padded by
    ``max_shift`` on every side; the padding is the batch minimum (``fill="min"``; no host
    round trip: the minimum stays an array on ``x``'s device) or 0 (``fill="zero"``).
    """
    if max_shift == 0:
        return x
    xp = get_array_module(x)
    n, c, h, w = x.shape
    s = max_shift
    padded = xp.empty((n, c, h + 2 * s, w + 2 * s), dtype=x.dtype)
    padded[...] = x.min() if fill == "min" else 0
    padded[:, :, s:s + h, s:s + w] = x
    oy, ox = xp.asarray(offsets[0]), xp.asarray(offsets[1])
    rows = oy[:, None] + xp.arange(h)[None, :]            # (N, H)
    cols = ox[:, None] + xp.arange(w)[None, :]            # (N, W)
    batch = xp.arange(n)[:, None, None]
    # padded[n, :, rows[n, i], cols[n, j]] for every n, i, j -> (N, H, W, C), then NCHW
    out = padded.transpose(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return xp.ascontiguousarray(out.transpose(0, 3, 1, 2))


def random_shift(x: Any, max_shift: int, rng: np.random.Generator) -> Any:
    """Shift each image of ``x`` (N, C, H, W) by its own offset in ``[-max_shift, max_shift]^2``."""
    if max_shift == 0:
        return x
    return shift_images(x, draw_offsets(len(x), max_shift, rng), max_shift)


def draw_flips(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) booleans, each True with probability 1/2: which images to mirror."""
    return rng.random(n) < 0.5


def flip_images(x: Any, flips: Any) -> Any:
    """``x`` (N, C, H, W) with the images where ``flips`` is True mirrored left-right."""
    xp = get_array_module(x)
    mask = xp.asarray(flips)[:, None, None, None]
    return xp.where(mask, x[:, :, :, ::-1], x)
