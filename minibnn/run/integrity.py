"""Checksums of minibnn's HDF5 files (run and packed files): sealed on write, verified on load.

Every dataset carries attr ``sha256``: the SHA-256 of its dtype, shape and bytes, so a damaged
array is named.  The root carries attr ``sha256`` over everything else: the sorted list of every
object's path and kind, and every attribute's name and value (the datasets' own ``sha256``
attributes included), so a damaged attribute (config, epoch, RNG state, ...) or a renamed,
missing or extra object is caught too.  Together they cover every byte a reader uses; a flip in
bytes no reader uses (free space, padding) changes nothing.  The HDF5 metadata itself (object
headers, B-trees) is checksummed by the library when files are written with ``LIBVER``.

Files written before checksums were stored have no root ``sha256`` and are read unverified.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from minibnn.errors import DataFileError

#: the attribute holding a checksum (on every dataset, and on the root for the rest)
DIGEST = "sha256"
#: HDF5 format bounds: from 1.8 on, object headers and B-trees carry the library's own
#: checksums, so damaged metadata is an HDF5 read error rather than a silently different tree
LIBVER = ("v108", "latest")


def _value_bytes(value: Any) -> bytes:
    """A canonical byte string of an attribute or dataset value (type, shape and contents)."""
    if isinstance(value, bytes):
        return b"b:" + value
    if isinstance(value, str):
        return b"s:" + value.encode("utf-8", "surrogatepass")
    array = np.asarray(value)
    if array.dtype.kind == "O":
        return b"o:" + b"\0".join(_value_bytes(v) for v in array.ravel())
    header = f"{array.dtype.str}{array.shape}:".encode()
    return header + np.ascontiguousarray(array).tobytes()


def dataset_digest(dataset: Any) -> str:
    """SHA-256 (hex) of one dataset's dtype, shape and contents."""
    return hashlib.sha256(_value_bytes(dataset[()])).hexdigest()


def _objects(group: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every object under ``group`` as (path, object), depth first, names sorted."""
    out = []
    for name in sorted(group.keys()):
        item = group[name]
        path = f"{prefix}{name}"
        out.append((path, item))
        if hasattr(item, "keys"):
            out.extend(_objects(item, path + "/"))
    return out


def _tree_digest(f: Any, objects: list[tuple[str, Any]]) -> str:
    """SHA-256 (hex) of every object's path and kind and every attribute but the root's own
    ``sha256``."""
    h = hashlib.sha256()
    for path, item in [("/", f)] + objects:
        kind = "group" if hasattr(item, "keys") else "dataset"
        h.update(f"{path}\0{kind}\0".encode())
        for name in sorted(item.attrs.keys()):
            if item is f and name == DIGEST:
                continue
            h.update(name.encode() + b"\0" + _value_bytes(item.attrs[name]) + b"\0")
    return h.hexdigest()


def seal(f: Any) -> None:
    """Store the checksums in an open, fully written ``h5py.File``."""
    objects = _objects(f)
    for _, item in objects:
        if not hasattr(item, "keys"):
            item.attrs[DIGEST] = dataset_digest(item)
    f.attrs[DIGEST] = _tree_digest(f, objects)


def verify(f: Any, path: str) -> None:
    """Check an open ``h5py.File`` against its checksums; the first mismatch is a one-line
    ``DataFileError`` naming the damaged dataset (or the attributes).  A file without any
    checksum (written before they were stored) passes unchecked; one whose datasets carry
    checksums but whose root checksum is gone was sealed and then damaged."""
    objects = _objects(f)
    if DIGEST not in f.attrs:
        sealed = next((name for name, item in objects
                       if not hasattr(item, "keys") and DIGEST in item.attrs), None)
        if sealed is not None:
            raise DataFileError(f"{path} is damaged: its datasets carry checksums ({sealed}, "
                                "...) but the file's own checksum is missing")
        return
    for name, item in objects:
        if hasattr(item, "keys"):
            continue
        stored = item.attrs.get(DIGEST)
        if stored is None:
            raise DataFileError(f"{path} is damaged: dataset {name} has no checksum")
        if str(stored) != dataset_digest(item):
            raise DataFileError(f"{path} is damaged: dataset {name} does not match its "
                                "checksum")
    if str(f.attrs[DIGEST]) != _tree_digest(f, objects):
        raise DataFileError(f"{path} is damaged: its attributes or layout do not match the "
                            "file's checksum")


__all__ = ["DIGEST", "LIBVER", "dataset_digest", "seal", "verify"]
