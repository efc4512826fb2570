"""The on-disk cache of converted datasets.

Layout: one file per dataset, ``<cache dir>/<name>.npz`` (mnist.npz, fashion-mnist.npz,
cifar10.npz), holding uint8 arrays ``x_train`` (N, C, H, W), ``y_train`` (N,), ``x_test``,
``y_test``, ``format`` (= FORMAT_VERSION) and ``source``: the ``DataSource`` record of the copy
it was converted from, with that copy's sha256, computed once when the cache is built
(``minibnn.data.source``; caches written before it have no ``source`` and still load).  uint8 keeps MNIST at ~11 MB compressed instead of
~220 MB of float32.  Files are written to a temporary name in the same directory and moved into
place with ``os.replace`` (atomic on POSIX and Windows), so a crash or a concurrent reader never
sees half a file.  The cache dir is ``$MINIBNN_CACHE`` if set, else ``~/.cache/minibnn``.
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from minibnn.data.source import CACHE_KEY, DataSource, from_cache, to_cache_array
from minibnn.errors import DataFileError, os_reason

FORMAT_VERSION = 1
KEYS = ("x_train", "y_train", "x_test", "y_test")


def default_cache_dir() -> Path:
    """``$MINIBNN_CACHE`` if set and non-empty, else ``~/.cache/minibnn``."""
    env = os.environ.get("MINIBNN_CACHE", "")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "minibnn"


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def check_cache_file(path: Path) -> None:
    """A one-line DataFileError when a folder stands where the cache file ``path`` goes."""
    if path.is_dir():
        raise DataFileError(f"{path}: the cache file's place is taken by a folder; move it "
                            "away or choose another cache (MINIBNN_CACHE)")


def save_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` to ``path`` (compressed .npz) via a temp file + ``os.replace``; a
    folder at ``path`` or where the cache folder should be is a one-line DataFileError."""
    path = Path(path)
    check_cache_file(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataFileError(f"cannot create the cache folder {path.parent}: "
                            f"{os_reason(exc)}") from None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def save_split(path: str | os.PathLike, x_train: np.ndarray, y_train: np.ndarray,
               x_test: np.ndarray, y_test: np.ndarray, source: DataSource | None = None,
               **extra: np.ndarray) -> Path:
    """Store a converted uint8 train/test split as one cache file, with the record of the
    copy it came from (``source``) and any ``extra`` arrays beside it."""
    arrays = {
        "x_train": np.ascontiguousarray(x_train, dtype=np.uint8),
        "y_train": np.ascontiguousarray(y_train, dtype=np.uint8),
        "x_test": np.ascontiguousarray(x_test, dtype=np.uint8),
        "y_test": np.ascontiguousarray(y_test, dtype=np.uint8),
        "format": np.array(FORMAT_VERSION, dtype=np.int64),
        **extra,
    }
    if source is not None:
        arrays[CACHE_KEY] = to_cache_array(source)
    return save_npz_atomic(path, arrays)


def load_source(path: str | os.PathLike, fallback: DataSource) -> DataSource:
    """The ``DataSource`` record stored in the cache file ``path``, as read from that cache
    (no hashing: the hash was stored when the cache was built). A cache written before
    records were stored: ``fallback`` (what the caller knows: kind, perhaps the path) with the
    hash ``HASH_UNKNOWN``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return from_cache(z, path, fallback)
    except DataFileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise DataFileError(f"{path}: corrupt cache file ({type(e).__name__}); delete it to "
                            "rebuild the cache") from None


def load_split(path: str | os.PathLike, test_only: bool = False
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read a cache file written by ``save_split``; DataFileError if it is unreadable.

    ``test_only`` reads (decompresses) only the test arrays; the train ones come back empty,
    with the test images' trailing shape.
    """
    path = Path(path)
    hint = "delete it to rebuild the cache"
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in KEYS + ("format",) if k not in z.files]
            if missing:
                raise DataFileError(f"{path}: cache file lacks {', '.join(missing)}; {hint}")
            if int(z["format"]) != FORMAT_VERSION:
                raise DataFileError(f"{path}: cache format {int(z['format'])}, expected "
                                    f"{FORMAT_VERSION}; {hint}")
            if test_only:
                x_te, y_te = z["x_test"], z["y_test"]
                arrays = (np.empty((0,) + x_te.shape[1:], x_te.dtype),
                          np.empty(0, y_te.dtype), x_te, y_te)
            else:
                arrays = tuple(z[k] for k in KEYS)
    except DataFileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise DataFileError(f"{path}: corrupt cache file ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else '?'}); {hint}") from None
    return arrays  # type: ignore[return-value]
