"""Image folders (torchvision's ``ImageFolder`` layout), decoded once into the uint8 cache.

    root/train/<class>/<image>      root/test/<class>/<image>

``root`` is a folder or a ``.tar`` / ``.tar.gz`` of one, read in place; one top-level folder
above ``train/`` and ``test/`` is allowed (``cifar10-jpeg/train/...``), but one layout only:
images at two such places (an old copy kept inside), or an archive member given twice, are
refused rather than added. Hidden files and folders (``.ipynb_checkpoints/``) are skipped.
Classes are the class folder names sorted by name, 2 to 256 of them (label i = the i-th name;
train and test must have the same ones);
images within a class are taken in file-name order, and the split interleaves the classes
(image 0 of every class, then image 1, ...) so that every prefix is class-balanced.  Pillow
decodes every image to uint8 NCHW: RGB, or one channel when every image is greyscale; all
images must have one size. Images of more than 8 bits a channel (16-bit PNG, float TIFF) are
refused: converting them to 8 bits would clip.

The decoded split is cached as ``<cache>/<name>.npz`` with the class names beside the arrays
and the source's record (``minibnn.data.source``: its path and sha256, hashed once here), so
later loads read no image.  ``--dataset imagefolder --data-dir PATH`` caches under a name
made from the source's content: for a folder, the path, size and modification time of every
file in it; for an archive, its own. So a folder that gains, loses or changes an image (or a
class) is decoded again, and a line on stderr says so.  An image larger than ``MAX_PIXELS`` is
refused from its header, before it is decoded.  Every problem is a one-line
``DataFileError``.
"""
from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from minibnn.data.cache import check_cache_file, load_source, load_split, save_split
from minibnn.data.source import DataSource, absolute, sha256_file, sha256_files
from minibnn.errors import DataFileError, os_reason

SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".webp", ".tif",
                  ".tiff")

#: the most pixels (width x height) an image may have: refused from its header above this,
#: before decoding (PIL's own bomb limit is 89 million; minibnn's networks take small images)
MAX_PIXELS = 4096 * 4096

#: Pillow modes with more than 8 bits a channel (refused: converting them clips at 255)
WIDE_MODES = {"I;16": "16-bit", "I;16L": "16-bit", "I;16B": "16-bit", "I;16N": "16-bit",
              "I": "32-bit integer", "F": "32-bit float"}

#: (uint8 x_train, uint8 y_train, uint8 x_test, uint8 y_test)
Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def is_image_folder(path: Path) -> bool:
    """Whether ``path`` (folder or tar archive) holds ``train/<class>/`` image files."""
    try:
        return any(True for _ in _entries(path, limit=1))
    except DataFileError:
        return False


def _split_and_class(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """``(split, class)`` of an image at relative path ``parts``: ``[top/]split/class/file``;
    None for anything else, and for hidden names (``.ipynb_checkpoints/``, ``.DS_Store``):
    a hidden folder is no class."""
    if any(p.startswith(".") for p in parts):
        return None
    if len(parts) == 4:
        parts = parts[1:]
    if len(parts) != 3 or parts[0] not in SPLITS:
        return None
    if not parts[2].lower().endswith(IMAGE_SUFFIXES):
        return None
    return parts[0], parts[1]


def _top(parts: tuple[str, ...]) -> str:
    """The folder above ``train/`` and ``test/`` of an image's relative path ("" for none)."""
    return parts[0] if len(parts) == 4 else ""


class _OneLayout:
    """Refuses a second layout (images under ``train/`` and under ``old/train/``, or under two
    top folders) and an archive member given twice: either would add images silently."""

    def __init__(self, root: Path):
        self.root, self.top, self.seen = root, None, set()

    def check(self, parts: tuple[str, ...]) -> None:
        top, name = _top(parts), "/".join(parts)
        if self.top is None:
            self.top = top
        elif top != self.top:
            where = [f"{t}/" if t else "the top level" for t in sorted({self.top, top})]
            raise DataFileError(f"{self.root}: images under train/ and test/ at both "
                                f"{where[0]} and {where[1]}; keep one layout")
        if name in self.seen:
            raise DataFileError(f"{self.root}: {name} is in the archive twice")
        self.seen.add(name)


def _entries(root: Path, limit: int | None = None
             ) -> Iterator[tuple[str, str, str, bytes | Path]]:
    """``(split, class, file name, bytes or path)`` of every image under ``root``."""
    count = 0
    layout = _OneLayout(root)
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            parts = path.relative_to(root).parts
            where = _split_and_class(parts)
            if where is not None and path.is_file():
                layout.check(parts)
                yield where[0], where[1], path.name, path
                count += 1
                if limit is not None and count >= limit:
                    return
        return
    try:
        with tarfile.open(root, "r:*") as tar:
            for member in tar:
                parts = tuple(p for p in member.name.split("/") if p not in ("", "."))
                where = _split_and_class(parts)
                if where is None or not member.isfile():
                    continue
                layout.check(parts)
                f = tar.extractfile(member)
                if f is None:
                    continue
                yield where[0], where[1], member.name.rsplit("/", 1)[-1], f.read()
                count += 1
                if limit is not None and count >= limit:
                    return
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        msg = str(e).splitlines()[0] if str(e) else "truncated"
        raise DataFileError(f"{root}: not a readable folder or tar archive of images "
                            f"({type(e).__name__}: {msg})") from None


def _decode(data: bytes | Path, what: str) -> np.ndarray:
    """One image file -> uint8 (H, W) for greyscale or (H, W, 3)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():             # PIL's bomb warning: MAX_PIXELS decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(data if isinstance(data, Path) else io.BytesIO(data))
        with image:
            width, height = image.size              # from the header: nothing decoded yet
            if width * height > MAX_PIXELS:
                raise DataFileError(f"{what}: image is {width}x{height}, more than the "
                                    f"{MAX_PIXELS:,} pixels minibnn decodes")
            if image.mode in WIDE_MODES:
                # convert("L") would clip every value above 255: refuse, do not guess a scale
                raise DataFileError(f"{what}: a {WIDE_MODES[image.mode]} image (mode "
                                    f"{image.mode}); minibnn reads 8-bit images: convert the "
                                    "folder to 8 bits per channel")
            mode = "L" if image.mode in ("L", "1") else "RGB"
            return np.asarray(image.convert(mode), dtype=np.uint8)
    except DataFileError:
        raise
    except Image.DecompressionBombError:
        raise DataFileError(f"{what}: image is larger than the {MAX_PIXELS:,} pixels minibnn "
                            "decodes (a decompression bomb?)") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataFileError(f"{what}: not a readable image ({type(e).__name__})") from None


def read_image_folder(root: Path) -> tuple[Split, tuple[str, ...]]:
    """Decode every image under ``root``; returns the uint8 NCHW split and the class names."""
    images: dict[str, dict[str, list[tuple[str, np.ndarray]]]] = {s: {} for s in SPLITS}
    for split, cls, name, data in _entries(root):
        images[split].setdefault(cls, []).append((name, _decode(data, f"{root}: {split}/{cls}/"
                                                                     f"{name}")))
    if not images["train"] or not images["test"]:
        missing = [s for s in SPLITS if not images[s]]
        raise DataFileError(f"{root}: no images in {' or '.join(missing)}/<class>/ (expected "
                            "the layout train/<class>/<image> and test/<class>/<image>)")
    classes = tuple(sorted(images["train"]))
    if tuple(sorted(images["test"])) != classes:
        raise DataFileError(f"{root}: train classes {list(classes)} differ from test classes "
                            f"{sorted(images['test'])}")
    if not 2 <= len(classes) <= 256:
        raise DataFileError(f"{root}: {len(classes)} class{'es' if len(classes) != 1 else ''} "
                            f"{list(classes)[:3]}; a classifier needs 2 to 256")
    grey = all(a.ndim == 2 for split in images.values() for files in split.values()
               for _, a in files)
    arrays = []
    for split in SPLITS:
        # round robin over the classes (image 0 of every class, then image 1, ...), so
        # that every prefix of the split is class-balanced (--train-subset takes a prefix)
        per_class = [sorted(images[split][cls], key=lambda item: item[0]) for cls in classes]
        order = sorted((i, label) for label, files in enumerate(per_class)
                       for i in range(len(files)))
        xs = [_channels_first(per_class[label][i][1], grey) for i, label in order]
        ys = [label for _, label in order]
        shapes = {x.shape for x in xs}
        if len(shapes) != 1:
            raise DataFileError(f"{root}: {split} images have different sizes "
                                f"{sorted(s[1:] for s in shapes)[:3]}; resize them to one size")
        arrays += [np.stack(xs), np.asarray(ys, dtype=np.uint8)]
    if arrays[0].shape[1:] != arrays[2].shape[1:]:
        raise DataFileError(f"{root}: train images are {arrays[0].shape[1:]}, test images "
                            f"{arrays[2].shape[1:]}")
    return (arrays[0], arrays[1], arrays[2], arrays[3]), classes


def _channels_first(a: np.ndarray, grey: bool) -> np.ndarray:
    if grey:
        return a[None]
    if a.ndim == 2:                     # a grey image among colour ones: repeat the channel
        a = np.repeat(a[:, :, None], 3, axis=2)
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def image_files(folder: Path) -> list[Path]:
    """The image files of a folder that ``_entries`` reads (its layout's, sorted), no others."""
    return [path for path in sorted(folder.rglob("*"))
            if _split_and_class(path.relative_to(folder).parts) is not None
            and path.is_file()]                 # as _entries: not folders, dangling links


def source_key(root: Path) -> str:
    """A cache name for ``root``: ``imagefolder-<path hash>-<content hash>``. The content is
    the (relative path, size, modification time) of every image file the folder's layout
    holds (what ``_entries`` reads), or the size and modification time of an archive, so any
    change to the images gives a new name."""
    resolved = root.resolve()
    content = hashlib.sha256()
    if resolved.is_dir():
        for path in image_files(resolved):
            try:
                st = path.stat()
            except OSError as exc:                  # vanished since the listing
                raise DataFileError(f"{path}: cannot read ({os_reason(exc)})") from None
            content.update(f"{path.relative_to(resolved)}|{st.st_size}|"
                           f"{st.st_mtime_ns}\n".encode())
    else:
        st = resolved.stat()
        content.update(f"{st.st_size}|{st.st_mtime_ns}".encode())
    where = hashlib.sha256(str(resolved).encode()).hexdigest()[:8]
    return f"imagefolder-{where}-{content.hexdigest()[:16]}"


def source_sha256(root: Path) -> str:
    """The sha256 of the copy at ``root``: an archive's own, a folder's over the ``sha256sum``
    listing of its image files (``minibnn.data.source.sha256_files``)."""
    return sha256_files(root, image_files(root)) if root.is_dir() else sha256_file(root)


@dataclass(frozen=True)
class FolderInfo:
    """What a decoded image folder knows besides its arrays (stored in its cache file)."""
    classes: tuple[str, ...]
    mean: tuple[float, ...]          # per channel, of the training images scaled to [0, 1]
    std: tuple[float, ...]


def channel_stats(x_train: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images after ``/ 255`` (float64)."""
    x = x_train.astype(np.float64) / 255.0
    return (tuple(float(v) for v in x.mean(axis=(0, 2, 3))),
            tuple(float(v) for v in x.std(axis=(0, 2, 3))))


def load_cached_or_decode(root: Path, cache_path: Path, test_only: bool = False,
                          kind: str = "imagefolder") -> tuple[Split, FolderInfo, DataSource]:
    """The split of ``root`` and its ``FolderInfo``, from ``cache_path`` when it exists (then
    only the test arrays with ``test_only``), else decoded and cached; and the record of the
    copy they came from (``kind``; its sha256 computed here, once, and kept in the cache)."""
    check_cache_file(cache_path)                    # before decoding, not after
    if cache_path.is_file():
        source = load_source(cache_path, DataSource(kind, absolute(root)))
        return load_split(cache_path, test_only), load_info(cache_path), source
    stale = [p for p in cache_path.parent.glob(cache_path.name.rsplit("-", 1)[0] + "-*.npz")
             if p != cache_path] if cache_path.name.startswith("imagefolder-") else []
    print(f"minibnn: decoding {root} into the cache"
          + (" (it changed since it was cached)" if stale else ""), file=sys.stderr)
    split, classes = read_image_folder(root)
    mean, std = channel_stats(split[0])
    if min(std) == 0:
        raise DataFileError(f"{root}: a channel of the training images is constant (std 0)")
    source = DataSource(kind, absolute(root), source_sha256(root))
    save_split(cache_path, *split, source=source, classes=np.array(classes, dtype=np.str_),
               mean=np.array(mean), std=np.array(std))
    return split, FolderInfo(classes, mean, std), source


def load_info(cache_path: Path) -> FolderInfo:
    try:
        with np.load(cache_path, allow_pickle=False) as z:
            missing = [k for k in ("classes", "mean", "std") if k not in z.files]
            if missing:
                raise DataFileError(f"{cache_path}: cache file lacks {', '.join(missing)}; "
                                    "delete it to rebuild the cache")
            return FolderInfo(tuple(str(c) for c in z["classes"]),
                              tuple(float(v) for v in z["mean"]),
                              tuple(float(v) for v in z["std"]))
    except (OSError, ValueError) as e:
        raise DataFileError(f"{cache_path}: unreadable cache file ({e}); delete it to "
                            "rebuild the cache") from None


def check_root(data_dir: str | os.PathLike | None, what: str) -> Path:
    if data_dir is None:
        raise DataFileError(f"{what} needs --data-dir: a folder or .tar/.tar.gz with "
                            "train/<class>/<image> and test/<class>/<image>")
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise DataFileError(f"{what}: data dir {root} does not exist")
    return root
