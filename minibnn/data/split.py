"""A seeded validation split, stratified by class (scikit-learn's ``stratify=y`` convention).

``validation_split(y, n, seed)`` holds out n of the images: each class c gets
``n * count_c / N`` of them, rounded by largest remainder so the counts add up to n exactly
(ties to the smaller class index), chosen uniformly at random within the class by a generator
seeded with ``(seed, VAL_STREAM)`` so that the training run's own random stream is untouched.
"""
from __future__ import annotations

import numpy as np

from minibnn.errors import MinibnnError

#: second seed word of the split's generator (keeps it apart from the training stream)
VAL_STREAM = 0x7A1


def validation_split(y: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices), both sorted, for labels y and n held-out images."""
    y = np.asarray(y)
    if not 0 < n < len(y) - 1:
        raise MinibnnError(f"--val-split {n} must be between 1 and {len(y) - 2} (the training "
                           f"set has {len(y)} images and needs at least 2 left)")
    classes, counts = np.unique(y, return_counts=True)
    share = n * counts / len(y)
    take = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - take), kind="stable")    # largest remainder first
    take[order[:n - int(take.sum())]] += 1
    rng = np.random.default_rng([seed, VAL_STREAM])
    held = [rng.choice(np.flatnonzero(y == c), size=k, replace=False)
            for c, k in zip(classes, take) if k]
    val = np.sort(np.concatenate(held)) if held else np.empty(0, np.int64)
    keep = np.ones(len(y), bool)
    keep[val] = False
    return np.flatnonzero(keep), val
