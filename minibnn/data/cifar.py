"""CIFAR-10: 32x32 colour images in 10 classes, 50 000 train + 10 000 test.

The official "python version" (cifar-10-python.tar.gz, 163 MB, md5
c58f30108f718f92721af3b95e74349a) unpacks to ``cifar-10-batches-py/`` with ``data_batch_1`` ..
``data_batch_5`` and ``test_batch``.  Each is a (Python 2) pickle of a dict whose ``b"data"`` is
a uint8 array (N, 3072), each row 1024 red, then 1024 green, then 1024 blue values of a 32x32
image in row-major order, so ``reshape(N, 3, 32, 32)`` is already NCHW, and whose ``b"labels"``
is a list of N ints in 0..9.  No package ships it here: pass ``--data-dir`` pointing at the
folder, its parent, or the .tar.gz (read in place, not extracted).  Where a copy is looked for:
the cache (<cache dir>/cifar10.npz), then data_dir, then the same names inside the cache dir.
"""
from __future__ import annotations

import os
import tarfile
import warnings
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from minibnn.data.cache import load_source, load_split, resolve_cache_dir, save_split
from minibnn.data.imagefolder import is_image_folder, load_cached_or_decode
from minibnn.data.source import DataSource, absolute, sha256_file, sha256_files
from minibnn.data.pickles import safe_loads
from minibnn.errors import DataFileError, os_reason

FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
NUM_CLASSES = 10
#: CIFAR-10's class names in label order (which is also their order sorted by name)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def parse_batch(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> (uint8 images (N, 3, 32, 32), uint8 labels (N,))."""
    try:
        d = safe_loads(data, encoding="bytes")
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        raise DataFileError(f"{source}: not a readable CIFAR-10 batch pickle "
                            f"({type(e).__name__}{': ' + msg if msg else ''})") from None
    if not isinstance(d, dict):
        raise DataFileError(f"{source}: expected a dict with b'data' and b'labels', "
                            f"found {type(d).__name__}")
    d = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}
    missing = [k for k in ("data", "labels") if k not in d]
    if missing:
        hint = " (this looks like CIFAR-100)" if "fine_labels" in d else ""
        keys = ", ".join("b" + repr(k) for k in missing)
        raise DataFileError(f"{source}: batch dict lacks {keys}{hint}")
    x = np.asarray(d["data"])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise DataFileError(f"{source}: b'data' must be uint8 (N, 3072), found {x.dtype} {x.shape}")
    try:
        y = np.asarray(d["labels"], dtype=np.int64)
    except (TypeError, ValueError):
        raise DataFileError(f"{source}: b'labels' is not a list of integers") from None
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataFileError(f"{source}: {x.shape[0]} images but {y.size} labels")
    if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise DataFileError(f"{source}: label {bad} out of range 0..{NUM_CLASSES - 1}")
    return x.reshape(-1, 3, 32, 32), y.astype(np.uint8)


def _assemble(read: Callable[[str], bytes], where: str) -> Split:
    xs, ys = [], []
    for name in TRAIN_BATCHES:
        x, y = parse_batch(read(name), f"{where}/{name}")
        xs.append(x)
        ys.append(y)
    x_te, y_te = parse_batch(read(TEST_BATCH), f"{where}/{TEST_BATCH}")
    return np.concatenate(xs), np.concatenate(ys), x_te, y_te


def read_batches_dir(folder: Path) -> Split:
    """The six batches from an unpacked ``cifar-10-batches-py`` folder."""
    missing = [n for n in TRAIN_BATCHES + (TEST_BATCH,) if not (folder / n).is_file()]
    if missing:
        raise DataFileError(f"{folder}: missing CIFAR-10 batch file(s) {', '.join(missing)}")

    def read(name: str) -> bytes:
        try:
            return (folder / name).read_bytes()
        except OSError as e:
            raise DataFileError(f"{folder / name}: cannot read ({os_reason(e)})") from None

    return _assemble(read, str(folder))


def read_batches_tar(archive: Path) -> Split:
    """The six batches read straight out of cifar-10-python.tar.gz (nothing is extracted)."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = {}
            for m in tar.getmembers():
                base = m.name.rsplit("/", 1)[-1]
                if m.isfile() and base in TRAIN_BATCHES + (TEST_BATCH,):
                    members.setdefault(base, m)
            missing = [n for n in TRAIN_BATCHES + (TEST_BATCH,) if n not in members]
            if missing:
                raise DataFileError(f"{archive}: archive lacks CIFAR-10 batch(es) "
                                    f"{', '.join(missing)}")

            def read(name: str) -> bytes:
                f = tar.extractfile(members[name])
                assert f is not None
                return f.read()

            return _assemble(read, f"{archive}!{members[TEST_BATCH].name.rsplit('/', 1)[0]}")
    except DataFileError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        msg = str(e).splitlines()[0] if str(e) else "truncated"
        raise DataFileError(f"{archive}: not a readable tar archive "
                            f"({type(e).__name__}: {msg})") from None


def _locate(root: Path) -> list[tuple[str, Path]]:
    """The CIFAR-10 copies ``root`` may designate: the folder itself, its parent, the archive."""
    if root.is_file():
        return [("tar", root)]
    out: list[tuple[str, Path]] = []
    if (root / TEST_BATCH).is_file() or (root / "data_batch_1").is_file():
        out.append(("dir", root))
    if (root / FOLDER).is_dir():
        out.append(("dir", root / FOLDER))
    if (root / ARCHIVE).is_file():
        out.append(("tar", root / ARCHIVE))
    return out


def load_cifar10_split(data_dir: str | os.PathLike | None = None,
                       cache_dir: str | os.PathLike | None = None, test_only: bool = False
                       ) -> tuple[Split, DataSource]:
    """uint8 CIFAR-10 split (images (N, 3, 32, 32)) and the record of the copy it came from
    (``test_only``: from the cache, read only the test arrays).

    ``data_dir`` may hold the official pickled batches (cached as ``cifar10.npz``, kind
    "cifar10-pickles") or an image folder / archive of ``train|test/<class>/<image>`` files
    such as the JPEG copy (cached as ``cifar10-jpeg.npz``, kind "cifar10-jpeg": its pixels are
    not the canonical ones, so the two never mix). Without ``data_dir``: the pickles' cache,
    then the JPEG copy's, then the cache folder; the record names the copy either way.
    """
    cache = resolve_cache_dir(cache_dir)
    pickles_cache, images_cache = cache / "cifar10.npz", cache / "cifar10-jpeg.npz"
    looked: list[str] = []
    roots: list[Path] = []
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.exists():
            raise DataFileError(f"CIFAR-10: data dir {root} does not exist")
        if is_image_folder(root):
            return _from_images(root, images_cache, test_only)
        roots.append(root)
    else:
        for cached, kind in ((pickles_cache, "cifar10-pickles"), (images_cache, "cifar10-jpeg")):
            if cached.is_file():
                return _cached(cached, test_only, DataSource(kind))
            looked.append(str(cached))
    roots.append(cache)
    for root in roots:
        hits = _locate(root) if root.exists() else []
        if not hits:
            looked.append(str(root))
            continue
        if pickles_cache.is_file():
            # an old cache without its record: built from some copy, not necessarily this one
            return _cached(pickles_cache, test_only, DataSource("cifar10-pickles"))
        kind, path = hits[0]
        split = read_batches_tar(path) if kind == "tar" else read_batches_dir(path)
        source = DataSource("cifar10-pickles", absolute(path), _pickles_sha256(kind, path))
        try:
            save_split(pickles_cache, *split, source=source)
        except OSError as e:
            warnings.warn(f"CIFAR-10: could not write cache {pickles_cache} ({e})", stacklevel=2)
        return split, source
    raise DataFileError(f"CIFAR-10: no copy found (looked in {', '.join(looked)}); download "
                        f"{ARCHIVE} from {URL} and pass --data-dir with the archive, the "
                        f"{FOLDER} folder or its parent (or a folder / archive of "
                        "train|test/<class>/<image> files)")


def _pickles_sha256(kind: str, path: Path) -> str:
    """The archive's sha256, or that of the six batch files' ``sha256sum`` listing."""
    if kind == "tar":
        return sha256_file(path)
    return sha256_files(path, [path / n for n in TRAIN_BATCHES + (TEST_BATCH,)])


def _cached(path: Path, test_only: bool, fallback: DataSource) -> tuple[Split, DataSource]:
    """The split in cache file ``path`` and its record (``fallback`` for an old cache)."""
    split = load_split(path, test_only)
    if split[2].shape[1:] != (3, 32, 32):
        raise DataFileError(f"{path}: cached images have shape {split[2].shape[1:]}, "
                            "expected (3, 32, 32); delete it to rebuild the cache")
    return split, load_source(path, fallback)


def _from_images(root: Path, cache_path: Path, test_only: bool) -> tuple[Split, DataSource]:
    """CIFAR-10 from an image folder: its classes must be CIFAR-10's, in label order."""
    if cache_path.is_file():
        # an old cache without its record names no path: it may hold another copy than root
        return _cached(cache_path, test_only, DataSource("cifar10-jpeg"))
    split, info, source = load_cached_or_decode(root, cache_path, kind="cifar10-jpeg")
    classes = info.classes         # checked once, when decoded: the cache holds only good ones
    if classes != CLASSES:
        cache_path.unlink(missing_ok=True)
        raise DataFileError(f"{root}: classes {list(classes)} are not CIFAR-10's "
                            f"{list(CLASSES)}; use --dataset imagefolder for other data")
    if split[0].shape[1:] != (3, 32, 32):
        cache_path.unlink(missing_ok=True)
        raise DataFileError(f"{root}: images are {split[0].shape[1:]}, CIFAR-10's are "
                            "(3, 32, 32)")
    return split, source
