"""The packed file (HDF5): a packed model's bits, scales, thresholds and real parameters.

Written atomically like run files (``io.atomic_h5``), format version 2 (every group, dataset
and attribute: docs/run-file.md)::

    /                 attrs: format="minibnn-packed", version, config (the run's JSON), source
                             (run path), epoch, model, dtype, input_shape, num_classes
    /real/<param>     real-valued parameters (first/last layer, BatchNorm, ...), model dtype
    /buffers/<stat>   BatchNorm running statistics
    /packed/<param>   one group per binary weight ("fc2.w"), attrs shape, kind (dense|conv2d),
                      stride, padding, fold (the folded BatchNorm's name, "" when none); datasets
        bits          uint64 (O, ceil(K/64)), K = prod(shape[1:]): row o packs
                      sign(w.reshape(O, K)[o]), element k at bit k % 64 of word k // 64,
                      bit 1 = +1, pad bits 0 (the kernels' dense layout, for conv too)
        scale         (O,) mean|w| per output channel, only when the layer uses a scale
        threshold     (O,) int32 t_c, only with a fold
        direction     (O,) int8: +1 sign = y >= t_c, -1 sign = y <= t_c, 0 lookup row
        lookup        (L, 2K+1) uint8, only when some direction is 0: row j is the sign table
                      (1 = +1) of the j-th direction-0 channel at y = -K .. K

The folded BatchNorm's parameters stay in /real and /buffers (the float path of ``--check``).
Version 1 files (no thresholds) are refused in one line: re-export them.  Conv weights are
repacked into the kernel's tap-major layout at load time, so the file stays ~32x smaller than
float32 whatever the channel count.

``read_packed`` checks the file against itself (tags, version, dtypes and shapes implied by
each layer's own attributes) and returns its contents; checking them against the model the
stored config builds is ``minibnn.deploy.inference.load_packed``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from minibnn.errors import DataFileError
from minibnn.run.files import FORMAT as RUN_FORMAT
from minibnn.run.files import PACKED_FORMAT
from minibnn.run import integrity
from minibnn.run.files import atomic_h5, check_finite, check_version, open_h5
from minibnn.kernels._common import words_for
from minibnn.kernels.threshold import Threshold
from minibnn.nn.packed import PackedModel

FORMAT = PACKED_FORMAT
VERSION = 2
#: what an older packed file's reader is told to do
REEXPORT = "re-export it from its run file with `minibnn export RUN.h5 --packed`"

Params = dict[str, np.ndarray]


@dataclass
class StoredLayer:
    """One /packed/<param> group as read, checked against its own attributes."""

    kind: str
    shape: tuple[int, ...]
    stride: int
    padding: int
    fold: str                        # the folded BatchNorm's name, "" when none
    bits: np.ndarray
    scale: np.ndarray | None
    threshold: Threshold | None      # None when fold == ""


@dataclass
class PackedFile:
    """A packed file's contents."""

    config_json: str
    epoch: int
    source: str
    input_shape: tuple[int, ...]
    num_classes: int
    real: Params
    buffers: Params
    layers: dict[str, StoredLayer]


def save_packed(path: str, pm: PackedModel) -> None:
    """Write a packed model to ``path`` atomically (``minibnn.run.files.atomic_h5``)."""
    with atomic_h5(path) as f:
        f.attrs["format"] = FORMAT
        f.attrs["version"] = VERSION
        f.attrs["config"] = pm.config_json
        f.attrs["source"] = pm.source
        f.attrs["epoch"] = pm.epoch
        f.attrs["model"] = pm.model.name
        f.attrs["dtype"] = pm.dtype.name
        f.attrs["input_shape"] = np.asarray(pm.model.input_shape, dtype=np.int64)
        f.attrs["num_classes"] = pm.model.num_classes
        for group, arrays in (("real", pm.params), ("buffers", pm.buffers)):
            g = f.create_group(group)
            for name, value in arrays.items():
                g.create_dataset(name, data=np.asarray(value))
        packed = f.create_group("packed")
        for name, layer in pm.layers.items():
            g = packed.create_group(name)
            g.attrs["shape"] = np.asarray(layer.shape, dtype=np.int64)
            g.attrs["kind"] = layer.kind
            g.attrs["stride"] = layer.stride
            g.attrs["padding"] = layer.padding
            g.attrs["fold"] = layer.fold_bn
            g.create_dataset("bits", data=layer.bits)
            if layer.scale is not None:
                g.create_dataset("scale", data=layer.scale)
            if layer.fold is not None:
                g.create_dataset("threshold", data=layer.fold.threshold)
                g.create_dataset("direction", data=layer.fold.direction)
                if layer.fold.lookup is not None:
                    g.create_dataset("lookup", data=layer.fold.lookup)


def file_format(path: str) -> str | None:
    """The ``format`` tag of an HDF5 file ("minibnn-packed", "minibnn-run", ...), else None."""
    try:
        import h5py

        if not os.path.isfile(path) or not h5py.is_hdf5(path):
            return None
        with h5py.File(path, "r") as f:
            tag = f.attrs.get("format")
    except (OSError, ValueError):
        return None
    return tag.decode() if isinstance(tag, bytes) else (None if tag is None else str(tag))


def is_packed_file(path: str) -> bool:
    """True when ``path`` is an HDF5 file tagged format="minibnn-packed"."""
    return file_format(path) == FORMAT


def read_packed(path: str) -> PackedFile:
    """Read a packed file; a missing, foreign, old, damaged (checksum) or corrupt file, or
    non-finite real parameters, is a one-line ``DataFileError``."""
    with open_h5(path, "packed file") as f:
        tag = f.attrs.get("format")
        if tag == RUN_FORMAT:
            raise DataFileError(f"{path} is a run file, not a packed file (use "
                                f"`minibnn eval {path} --packed`, or export it first)")
        if tag != FORMAT:
            raise DataFileError(f"{path} is not a minibnn packed file (no "
                                f"format={FORMAT!r} tag)")
        check_version(f.attrs.get("version"), path, "packed file", VERSION, REEXPORT)
        integrity.verify(f, path)
        packed = PackedFile(
            config_json=str(f.attrs["config"]), epoch=int(f.attrs["epoch"]),
            source=str(f.attrs["source"]),
            input_shape=tuple(int(s) for s in f.attrs["input_shape"]),
            num_classes=int(f.attrs["num_classes"]),
            real=_read_group(f["real"]), buffers=_read_group(f["buffers"]),
            layers={name: _read_layer(path, name, g) for name, g in f["packed"].items()})
    check_finite(packed.real, path, "real")
    check_finite(packed.buffers, path, "buffers")
    for name, layer in packed.layers.items():
        if layer.scale is not None:
            check_finite({"scale": layer.scale}, path, f"packed/{name}")
    return packed


def _read_group(group: Any) -> Params:
    return {name: np.asarray(item[()]) for name, item in group.items()}


def _read_layer(path: str, name: str, g: Any) -> StoredLayer:
    """One /packed/<param> group; bits, scale and thresholds must fit its shape attribute."""
    def optional(key: str) -> np.ndarray | None:
        return np.asarray(g[key][()]) if key in g else None

    shape = tuple(int(s) for s in g.attrs["shape"])
    o, k = shape[0], int(np.prod(shape[1:]))
    bits, scale = np.asarray(g["bits"][()]), optional("scale")
    if bits.dtype != np.uint64 or bits.shape != (o, words_for(k)):
        raise DataFileError(f"{path}: packed/{name}: bits must be uint64 {(o, words_for(k))}, "
                            f"got {bits.dtype} {tuple(bits.shape)}")
    if scale is not None and scale.shape != (o,):
        raise DataFileError(f"{path}: packed/{name}: scale must have shape ({o},), got "
                            f"{tuple(scale.shape)}")
    fold = str(g.attrs["fold"])
    threshold = None
    if fold:
        threshold = _read_threshold(path, name, fold, o, k, optional("threshold"),
                                    optional("direction"), optional("lookup"))
    return StoredLayer(str(g.attrs["kind"]), shape, int(g.attrs["stride"]),
                       int(g.attrs["padding"]), fold, bits, scale, threshold)


def _read_threshold(path: str, name: str, fold: str, o: int, k: int, t: np.ndarray | None,
                    d: np.ndarray | None, lookup: np.ndarray | None) -> Threshold:
    """The Threshold of a packed/<param> group that folds ``fold``: o channels, y in [-k, k]."""
    if t is None or d is None:
        raise DataFileError(f"{path}: packed/{name} folds {fold!r} but has no "
                            "threshold/direction")
    if t.dtype != np.int32 or t.shape != (o,) or d.dtype != np.int8 or d.shape != (o,):
        raise DataFileError(f"{path}: packed/{name}: threshold must be int32 ({o},) and "
                            f"direction int8 ({o},), got {t.dtype} {t.shape}, {d.dtype} "
                            f"{d.shape}")
    if not np.isin(d, (-1, 0, 1)).all():
        raise DataFileError(f"{path}: packed/{name}: directions must be -1, 0 or +1")
    n_lookup = int((d == 0).sum())
    want = (n_lookup, 2 * k + 1)
    if (lookup is None) != (n_lookup == 0) or (lookup is not None and (
            lookup.dtype != np.uint8 or lookup.shape != want)):
        got = "none" if lookup is None else f"{lookup.dtype} {lookup.shape}"
        raise DataFileError(f"{path}: packed/{name}: lookup must be uint8 {want} "
                            f"({n_lookup} direction-0 channels), got {got}")
    return Threshold(t, d, lookup, k)


__all__ = ["FORMAT", "VERSION", "PackedFile", "StoredLayer", "file_format", "is_packed_file",
           "read_packed", "save_packed"]
