"""Which copy of a data set a ``Dataset`` was made from: the ``DataSource`` record.

Every loader fills one in (``Dataset.origin``); run files store it as part of their provenance
(``minibnn.run.provenance``). Its fields:

    kind      which copy: "mnist-idx", "mnist-pickle", "fashion-mnist-idx", "cifar10-pickles",
              "cifar10-jpeg" (CIFAR-10 from an image folder or archive, i.e. the JPEG copy),
              "imagefolder", "synthetic"; an old MNIST or Fashion-MNIST cache without a
              record: the data set's name (any of its routes may have built it)
    path      the file, folder or URL the arrays were converted from (absolute), or None
    sha256    of that source: a single file's own sha256 (the archive's, as ``sha256sum``
              prints it); several files: the sha256 of their ``sha256sum`` listing
              ("<file sha256>  <relative name>\\n" per file, sorted by name); None for
              synthetic data, ``HASH_UNKNOWN`` for a cache written before records were stored
    cache_file  the cache file the arrays were read from, or None when converted just now
    params    synthetic data: the generator's parameters (its whole identity), else None

The hash is computed once, when the cache is built, and stored in the cache file beside the
arrays (key ``source``: the record as JSON), so a cached load reads it back and hashes nothing.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from minibnn.errors import DataFileError, os_reason

#: ``sha256`` of a source read from a cache written before records were stored
HASH_UNKNOWN = "unknown (cache written before hashes were stored)"
#: the cache file's key holding the record
CACHE_KEY = "source"

#: readable names of the kinds (``format_provenance`` and ``describe``)
KIND_TITLES: dict[str, str] = {
    "mnist": "MNIST (route not recorded)",
    "fashion-mnist": "Fashion-MNIST (route not recorded)",
    "mnist-idx": "MNIST IDX files",
    "mnist-pickle": "MNIST pickle (mnist.pkl.gz)",
    "fashion-mnist-idx": "Fashion-MNIST IDX files",
    "cifar10-pickles": "CIFAR-10 pickled batches",
    "cifar10-jpeg": "CIFAR-10 JPEG copy",
    "imagefolder": "image folder",
    "synthetic": "synthetic",
}

#: what the CIFAR-10 image-folder route adds to ``describe``: its pixels are not canonical
JPEG_NOTE = "image folder; JPEG pixels differ slightly from the canonical"


@dataclass(frozen=True)
class DataSource:
    """Where a data set's arrays came from (see the module docstring)."""

    kind: str
    path: str | None = None
    sha256: str | None = None
    cache_file: str | None = None
    params: dict[str, Any] | None = None

    @property
    def cached(self) -> bool:
        return self.cache_file is not None

    def describe(self) -> str:
        """One phrase for messages (``Dataset.source``): the cache file, the path, or the
        generator's parameters."""
        if self.cache_file is not None:
            return f"cache {self.cache_file}"
        if self.params is not None:
            return "generated (" + ", ".join(f"{k}={v}" for k, v in self.params.items()) + ")"
        text = self.path or "unknown"
        return f"{text} ({JPEG_NOTE})" if self.kind == "cifar10-jpeg" else text

    def record(self) -> dict[str, Any]:
        """The JSON-serialisable record a run file keeps: kind, path, sha256, cached (and the
        generator's parameters for synthetic data)."""
        out: dict[str, Any] = {"kind": self.kind, "path": self.path, "sha256": self.sha256,
                               "cached": self.cached}
        if self.params is not None:
            out["params"] = dict(self.params)
        return out


def absolute(path: str | os.PathLike) -> str:
    """``path`` as an absolute path, user folder expanded, links kept as the user named them."""
    return str(Path(path).expanduser().absolute())


def sha256_file(path: Path) -> str:
    """The sha256 of one file's bytes, read in 1 MiB pieces."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while piece := f.read(1 << 20):
                h.update(piece)
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read ({os_reason(exc)})") from None
    return h.hexdigest()


def sha256_files(root: Path, files: Iterable[Path]) -> str:
    """The sha256 of the ``sha256sum`` listing of ``files`` (names relative to ``root``,
    sorted): "<sha256>  <name>\\n" per file. One file alone: its own sha256, so an archive's
    hash is the one its publisher prints."""
    files = sorted(files, key=lambda p: p.relative_to(root).as_posix())
    if len(files) == 1:
        return sha256_file(files[0])
    listing = "".join(f"{sha256_file(p)}  {p.relative_to(root).as_posix()}\n" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def to_cache_array(source: DataSource) -> np.ndarray:
    """The record as a 0-d string array, for a cache file (``np.load`` without pickles reads it)."""
    record = {k: v for k, v in dataclasses.asdict(source).items() if k != "cache_file"}
    return np.array(json.dumps(record, sort_keys=True), dtype=np.str_)


def from_cache(z: Any, cache_file: Path, fallback: DataSource) -> DataSource:
    """The record stored in an open cache file ``z`` (an ``NpzFile``), read back as cached;
    a cache without one (written before records were stored): ``fallback`` with its hash
    ``HASH_UNKNOWN``; an unreadable record is a one-line DataFileError."""
    if CACHE_KEY not in z.files:
        return dataclasses.replace(fallback, sha256=HASH_UNKNOWN, cache_file=str(cache_file))
    try:
        stored = json.loads(str(z[CACHE_KEY][()]))
        # fields a later minibnn may add are left out rather than refused
        known = {f.name for f in dataclasses.fields(DataSource)} - {"cache_file"}
        return DataSource(**{k: v for k, v in stored.items() if k in known},
                          cache_file=str(cache_file))
    except (ValueError, TypeError, AttributeError) as exc:
        raise DataFileError(f"{cache_file}: unreadable source record in the cache ({exc}); "
                            "delete it to rebuild the cache") from None
