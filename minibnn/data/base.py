"""The ``Dataset`` record and the one place where uint8 images become training inputs.

Every loader (MNIST, Fashion-MNIST, CIFAR-10, synthetic) ends with uint8 images in NCHW and
integer labels; ``from_uint8`` turns them into float arrays by the same two steps:

    x = u8 / 255                      # scale to [0, 1]
    x = (x - mean[c]) / std[c]        # standardise with fixed per-dataset, per-channel constants

The trainer keeps the images in their own bytes instead (``load_dataset(..., lazy=True)``):
``StandardisedImages`` holds the uint8 array and applies the same two steps to each batch as
it is taken, so it yields the very floats the eager array holds, at a quarter of the memory
(CIFAR-10: 184 MB instead of 737 MB in float32).

The constants are fixed (not recomputed per run) so that a checkpoint trained on one machine
sees identical inputs on another.  They are the mean and standard deviation over all pixels of
the *training* split after the /255 scaling:

    dataset        mean                      std                       where from
    mnist          0.1307                    0.3081                    measured: 0.130660, 0.308108
    fashion-mnist  0.2860                    0.3530                    measured: 0.286041, 0.353024
    cifar10        (0.4914, 0.4822, 0.4465)  (0.2470, 0.2435, 0.2616)  the usual published figures
    synthetic      0.5                       0.5                       maps [0, 1] onto [-1, 1]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from minibnn.backend import get_array_module, resolve_dtype, to_device, to_numpy
from minibnn.data.source import DataSource
from minibnn.errors import DataFileError

#: name -> (per-channel mean, per-channel std) applied after scaling to [0, 1].
NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "synthetic": ((0.5,), (0.5,)),
}


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split ready for training.

    x_* are float arrays (N, C, H, W), standardised (see the module docstring); y_* are int64
    class indices in ``range(num_classes)``.  ``mean``/``std`` are the per-channel constants
    that were applied, so ``x * std + mean`` recovers the [0, 1] image.  ``origin`` is the
    record of the copy the arrays came from (kind, path, sha256, cache file: ``DataSource``),
    ``source`` the same in one phrase for messages (a cache file, a data dir, a download, or
    "generated (...)").
    """

    x_train: "np.ndarray | StandardisedImages"
    y_train: np.ndarray
    x_test: "np.ndarray | StandardisedImages"
    y_test: np.ndarray
    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    source: str = ""
    classes: tuple[str, ...] = ()     # class names in label order ("0".."9" when unnamed)
    origin: DataSource | None = None  # None: built by hand, not by a loader

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, train={self.x_train.shape}, "
                f"test={self.x_test.shape}, dtype={self.x_train.dtype}, "
                f"num_classes={self.num_classes}, source={self.source!r})")


def standardise(u8: Any, mean: tuple[float, ...], std: tuple[float, ...],
                dtype: np.dtype) -> Any:
    """uint8 (N, C, H, W) -> float ``(u8 / 255 - mean[c]) / std[c]`` in ``dtype``, on u8's
    device. Each pixel's value depends only on the pixel, so a batch gives the same floats as
    the whole array."""
    xp = get_array_module(u8)
    x = u8.astype(dtype)
    xp.divide(x, 255, out=x)
    m = xp.asarray(mean, dtype=dtype).reshape(1, -1, 1, 1)
    s = xp.asarray(std, dtype=dtype).reshape(1, -1, 1, 1)
    x -= m
    x /= s
    return x


class StandardisedImages:
    """uint8 images (N, C, H, W) kept in their own bytes, standardised as batches are taken.

    ``images[key]`` is ``standardise(u8[key])`` (a float batch, or one image for an integer
    key): the floats the eager array holds. ``rows(idx)`` is a lazy subset (a validation split
    or a training subset without a float copy), ``on(device)`` the same images on another
    device. ``np.asarray(images)`` standardises everything (a float copy: for callers that
    want the whole array).
    """

    def __init__(self, u8: Any, mean: tuple[float, ...], std: tuple[float, ...],
                 dtype: np.dtype) -> None:
        self.u8, self.mean, self.std, self.dtype = u8, tuple(mean), tuple(std), np.dtype(dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.u8.shape)

    @property
    def ndim(self) -> int:
        return 4

    def __len__(self) -> int:
        return int(self.u8.shape[0])

    def __getitem__(self, key: Any) -> Any:
        _check_row_key(key)
        batch = self.u8[key]
        if batch.ndim == 3:                      # one image
            return standardise(batch[None], self.mean, self.std, self.dtype)[0]
        return standardise(batch, self.mean, self.std, self.dtype)

    def rows(self, idx: Any) -> "StandardisedImages":
        _check_row_key(idx)
        u8 = self.u8[idx]
        if u8.ndim != 4:
            raise TypeError("StandardisedImages.rows takes a slice or an index array, not one "
                            "image's index")
        return StandardisedImages(u8, self.mean, self.std, self.dtype)

    def on(self, device: str) -> "StandardisedImages":
        return StandardisedImages(to_device(self.u8, device), self.mean, self.std, self.dtype)

    def __array_namespace__(self, api_version: Any = None) -> Any:
        return get_array_module(self.u8)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if copy is False:
            raise ValueError("StandardisedImages holds uint8: a float array is always a copy")
        x = standardise(to_numpy(self.u8), self.mean, self.std, self.dtype)
        return x if dtype is None else x.astype(dtype)

    def __repr__(self) -> str:
        return f"StandardisedImages(uint8 {self.shape} -> {self.dtype})"


def _check_row_key(key: Any) -> None:
    """Images are taken by rows (a slice, an index or an index array), not by pixel."""
    if isinstance(key, tuple) or key is Ellipsis:
        raise TypeError(f"StandardisedImages are indexed by rows only (a slice, an index or an "
                        f"index array), got {key!r}: take the rows first")


def take_rows(x: Any, idx: Any) -> Any:
    """Rows ``idx`` of images ``x``, lazily for ``StandardisedImages`` (no float copy)."""
    return x.rows(idx) if isinstance(x, StandardisedImages) else x[idx]


def images_on(x: Any, device: str) -> Any:
    """Images ``x`` on ``device``: ``StandardisedImages`` move their uint8 bytes."""
    return x.on(device) if isinstance(x, StandardisedImages) else to_device(x, device)


def check_arrays(x: np.ndarray, y: np.ndarray, shape: tuple[int, int, int],
                 num_classes: int, what: str) -> None:
    """Raise DataFileError (naming ``what``) unless x is uint8 (N, *shape) and y fits it."""
    if x.dtype != np.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape):
        dims = ", ".join(map(str, shape))
        raise DataFileError(f"{what}: expected uint8 images of shape (N, {dims}), "
                            f"found {x.dtype} {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataFileError(f"{what}: {x.shape[0]} images but labels of shape {y.shape}")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
        raise DataFileError(f"{what}: label {bad} out of range 0..{num_classes - 1}")


def from_uint8(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
               y_test: np.ndarray, num_classes: int, dtype: str | np.dtype = "float32",
               source: DataSource | str = "", normalisation: tuple | None = None,
               classes: tuple[str, ...] | None = None, lazy: bool = False) -> Dataset:
    """Build a Dataset from uint8 NCHW images and integer labels (checked, then standardised;
    ``lazy``: kept as uint8 and standardised per batch, ``StandardisedImages``). ``source``:
    the loader's ``DataSource`` record (or, built by hand, a phrase)."""
    origin = source if isinstance(source, DataSource) else None
    source = source.describe() if isinstance(source, DataSource) else source
    shape = tuple(int(s) for s in x_train.shape[1:])
    check_arrays(x_train, y_train, shape, num_classes, f"{name} train split ({source})")
    check_arrays(x_test, y_test, shape, num_classes, f"{name} test split ({source})")
    mean, std = normalisation if normalisation is not None else NORMALISATION[name]
    if len(mean) != shape[0]:
        mean, std = mean * shape[0], std * shape[0]
    dt = resolve_dtype(dtype)
    images = StandardisedImages if lazy else standardise
    return Dataset(
        x_train=images(x_train, mean, std, dt),
        y_train=y_train.astype(np.int64),
        x_test=images(x_test, mean, std, dt),
        y_test=y_test.astype(np.int64),
        name=name, num_classes=num_classes, input_shape=shape,  # type: ignore[arg-type]
        mean=tuple(mean), std=tuple(std), source=source,
        classes=tuple(classes) if classes else tuple(str(i) for i in range(num_classes)),
        origin=origin,
    )
