"""The ``Dataset`` record and the one place where uint8 images become training inputs.

Every loader (MNIST, Fashion-MNIST, CIFAR-10, synthetic) ends with uint8 images in NCHW and
integer labels; ``from_uint8`` turns them into float arrays by the same two steps:

    x = u8 / 255                      # scale to [0, 1]
    x = (x - mean[c]) / std[c]        # standardise with fixed per-dataset, per-channel constants

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

import numpy as np

from minibnn.backend import resolve_dtype
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
    that were applied, so ``x * std + mean`` recovers the [0, 1] image.  ``source`` says where
    the arrays came from (a cache file, a data dir, a download, or "generated").
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    source: str = ""
    classes: tuple[str, ...] = ()     # class names in label order ("0".."9" when unnamed)

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, train={self.x_train.shape}, "
                f"test={self.x_test.shape}, dtype={self.x_train.dtype}, "
                f"num_classes={self.num_classes}, source={self.source!r})")


def standardise(u8: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...],
                dtype: np.dtype) -> np.ndarray:
    """uint8 (N, C, H, W) -> float ``(u8 / 255 - mean[c]) / std[c]`` in ``dtype``."""
    x = u8.astype(dtype)
    np.divide(x, 255, out=x)
    m = np.asarray(mean, dtype=dtype).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=dtype).reshape(1, -1, 1, 1)
    x -= m
    x /= s
    return x


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
               source: str = "", normalisation: tuple | None = None,
               classes: tuple[str, ...] | None = None) -> Dataset:
    """Build a Dataset from uint8 NCHW images and integer labels (checked, then standardised)."""
    shape = tuple(int(s) for s in x_train.shape[1:])
    check_arrays(x_train, y_train, shape, num_classes, f"{name} train split ({source})")
    check_arrays(x_test, y_test, shape, num_classes, f"{name} test split ({source})")
    mean, std = normalisation if normalisation is not None else NORMALISATION[name]
    if len(mean) != shape[0]:
        mean, std = mean * shape[0], std * shape[0]
    dt = resolve_dtype(dtype)
    return Dataset(
        x_train=standardise(x_train, mean, std, dt),
        y_train=y_train.astype(np.int64),
        x_test=standardise(x_test, mean, std, dt),
        y_test=y_test.astype(np.int64),
        name=name, num_classes=num_classes, input_shape=shape,  # type: ignore[arg-type]
        mean=tuple(mean), std=tuple(std), source=source,
        classes=tuple(classes) if classes else tuple(str(i) for i in range(num_classes)),
    )
