"""Image folders (train|test/<class>/<image>, a folder or a tar archive) decoded once into the
cache; CIFAR-10 from the JPEG copy; the CIFAR augmentation (zero-padded shift, flip)."""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minibnn.data.augment import draw_offsets, flip_images, shift_images
from minibnn.commands.cli import main
from minibnn.data import load_dataset
from minibnn.data import imagefolder
from minibnn.errors import DataFileError

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
CLASSES = ("cat", "ant", "bee")          # sorted: ant, bee, cat


def _images(rng: np.random.Generator, n: int, grey: bool = False) -> list[np.ndarray]:
    shape = (6, 5) if grey else (6, 5, 3)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def make_folder(root: Path, grey: bool = False, per_class: dict[str, int] | None = None,
                seed: int = 0) -> dict[tuple[str, str], list[np.ndarray]]:
    """PNG files (lossless, so decoding is exact) under root/{train,test}/<class>/."""
    rng = np.random.default_rng(seed)
    made = {}
    for split, n in (("train", 4), ("test", 2)):
        for cls in CLASSES:
            count = (per_class or {}).get(cls, n) if split == "train" else n
            folder = root / split / cls
            folder.mkdir(parents=True)
            made[(split, cls)] = _images(rng, count, grey)
            for i, a in enumerate(made[(split, cls)]):
                Image.fromarray(a).save(folder / f"{i:03d}.png")
    return made


def _expected(made, split: str, grey: bool = False):
    classes = sorted(CLASSES)
    xs, ys = [], []
    longest = max(len(made[(split, c)]) for c in classes)
    for i in range(longest):                         # round robin over the sorted classes
        for label, cls in enumerate(classes):
            if i < len(made[(split, cls)]):
                a = made[(split, cls)][i]
                xs.append(a[None] if grey else a.transpose(2, 0, 1))
                ys.append(label)
    return np.stack(xs), np.array(ys)


@pytest.mark.parametrize("packed", ["folder", "tar.gz", "tar-with-top-folder"])
@pytest.mark.parametrize("grey", [False, True])
def test_folder_and_archives_decode_exactly(tmp_path: Path, packed: str, grey: bool,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    top = tmp_path / "pets"
    made = make_folder(top, grey=grey)
    source = top
    if packed != "folder":
        source = tmp_path / "pets.tar.gz"
        with tarfile.open(source, "w:gz") as tar:
            for split in ("train", "test"):
                tar.add(top / split, arcname=(f"pets/{split}" if packed.endswith("folder")
                                              else split))
    cache = tmp_path / "cache"
    ds = load_dataset("imagefolder", data_dir=source, cache_dir=cache, dtype="float64")
    assert ds.classes == tuple(sorted(CLASSES)) and ds.num_classes == 3
    x_train, y_train = _expected(made, "train", grey)
    x_test, y_test = _expected(made, "test", grey)
    u8 = np.rint((ds.x_train * np.array(ds.std)[None, :, None, None]
                  + np.array(ds.mean)[None, :, None, None]) * 255)
    assert np.array_equal(u8, x_train) and np.array_equal(ds.y_train, y_train)
    assert np.array_equal(ds.y_test, y_test) and ds.input_shape == x_train.shape[1:]
    want_mean = (x_train / 255.0).mean(axis=(0, 2, 3))
    assert np.allclose(ds.mean, want_mean, rtol=0, atol=1e-12)
    # the second load reads the cache, not one image
    monkeypatch.setattr(imagefolder, "read_image_folder",
                        lambda root: pytest.fail("decoded again instead of reading the cache"))
    again = load_dataset("imagefolder", data_dir=source, cache_dir=cache, dtype="float64")
    assert np.array_equal(again.x_train, ds.x_train) and again.classes == ds.classes
    assert again.source.startswith("cache ")
    only_test = load_dataset("imagefolder", data_dir=source, cache_dir=cache, test_only=True)
    assert len(only_test.x_train) == 0 and len(only_test.x_test) == len(x_test)


def test_a_changed_source_is_decoded_again(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The cache is keyed by the folder's content: a class added deep inside it (which leaves
    the folder's own modification time alone) or an image touched gives a new key, and the
    next load decodes again, saying so."""
    root, cache = tmp_path / "d", tmp_path / "c"
    make_folder(root)
    key = imagefolder.source_key(root)
    assert len(load_dataset("imagefolder", data_dir=root, cache_dir=cache).classes) == 3
    assert "decoding" in capsys.readouterr().err
    load_dataset("imagefolder", data_dir=root, cache_dir=cache)          # from the cache
    assert capsys.readouterr().err == ""
    before = os.stat(root).st_mtime_ns
    for split, n in (("train", 2), ("test", 2)):
        (root / split / "zebra").mkdir()
        for i in range(n):
            Image.fromarray(_images(np.random.default_rng(i), 1, False)[0]).save(
                root / split / "zebra" / f"{i:03d}.png")
    assert os.stat(root).st_mtime_ns == before
    assert imagefolder.source_key(root) != key
    ds = load_dataset("imagefolder", data_dir=root, cache_dir=cache)
    assert len(ds.classes) == 4
    assert "it changed since it was cached" in capsys.readouterr().err
    key = imagefolder.source_key(root)
    os.utime(root / "train" / "zebra" / "000.png", ns=(0, 10**9))
    assert imagefolder.source_key(root) != key


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims width x height (IHDR rewritten, CRC fixed): what a
    decompression bomb looks like before it is decoded."""
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


@pytest.mark.parametrize("width, height, message", [
    (30000, 30000, "image is larger than the 16,777,216 pixels"),   # PIL's own bomb limit
    (5000, 5000, "image is 5000x5000, more than the 16,777,216 pixels"),   # below PIL's
])
def test_a_bomb_image_is_refused_from_its_header(tmp_path: Path, width: int, height: int,
                                                 message: str) -> None:
    root = tmp_path / "d"
    make_folder(root)
    (root / "train" / CLASSES[0] / "bomb.png").write_bytes(_png_claiming(width, height))
    with pytest.raises(DataFileError) as info:
        load_dataset("imagefolder", data_dir=root, cache_dir=tmp_path / "c")
    assert "bomb.png" in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_folder_where_the_cache_file_goes_is_a_one_line_error(tmp_path: Path) -> None:
    root, cache = tmp_path / "d", tmp_path / "c"
    make_folder(root)
    (cache / f"{imagefolder.source_key(root)}.npz").mkdir(parents=True)
    with pytest.raises(DataFileError, match="the cache file's place is taken by a folder"):
        load_dataset("imagefolder", data_dir=root, cache_dir=cache)


def test_every_prefix_is_class_balanced(tmp_path: Path) -> None:
    make_folder(tmp_path / "d", per_class={"cat": 2})         # unbalanced: 4, 4, 2
    ds = load_dataset("imagefolder", data_dir=tmp_path / "d", cache_dir=tmp_path / "c")
    assert list(ds.y_train[:6]) == [0, 1, 2, 0, 1, 2]
    assert list(ds.y_train[6:]) == [0, 1, 0, 1]


@pytest.mark.parametrize("damage, message", [
    ("no test", "no images in test/<class>/"),
    ("class mismatch", "differ from test classes"),
    ("sizes", "different sizes"),
    ("unreadable", "not a readable image"),
    ("no data dir", "needs --data-dir"),
    ("missing", "does not exist"),
    ("not a tar", "not a readable folder or tar archive"),
    ("16-bit", "a 16-bit image (mode I;16); minibnn reads 8-bit images"),
    ("float", "a 32-bit float image (mode F)"),
    ("two layouts", "images under train/ and test/ at both the top level and old/"),
    ("member twice", "is in the archive twice"),
    ("one class", "1 class ['ant']; a classifier needs 2 to 256"),
])
def test_bad_folders_are_one_line_errors(tmp_path: Path, damage: str, message: str) -> None:
    root = tmp_path / "d"
    make_folder(root)
    data_dir: object = root
    if damage == "no test":
        for f in (root / "test").rglob("*.png"):
            f.unlink()
    elif damage == "class mismatch":
        (root / "test" / "bee").rename(root / "test" / "wasp")
    elif damage == "sizes":
        Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(root / "train" / "ant" / "999.png")
    elif damage == "unreadable":
        (root / "train" / "ant" / "998.png").write_bytes(b"not a png")
    elif damage == "no data dir":
        data_dir = None
    elif damage == "missing":
        data_dir = tmp_path / "nowhere"
    elif damage == "not a tar":
        data_dir = tmp_path / "junk.tar.gz"
        data_dir.write_bytes(b"\x1f\x8b junk")
    elif damage == "16-bit":                    # values above 255: convert("L") would clip
        Image.fromarray(np.full((6, 5), 40000, np.uint16)).save(root / "train" / "ant" / "9.png")
    elif damage == "float":
        Image.fromarray(np.full((6, 5), 0.5, np.float32)).save(root / "train" / "ant" / "9.tif")
    elif damage == "two layouts":               # an old copy kept inside: not more images
        make_folder(root / "old", seed=1)
    elif damage == "member twice":
        data_dir = tmp_path / "d.tar"
        with tarfile.open(data_dir, "w") as tar:
            tar.add(root, arcname=".")
            tar.add(root / "train" / "ant" / "000.png", arcname="train/ant/000.png")
    elif damage == "one class":
        for split in ("train", "test"):
            for cls in ("bee", "cat"):
                for f in (root / split / cls).iterdir():
                    f.unlink()
                (root / split / cls).rmdir()
    with pytest.raises(DataFileError) as info:
        load_dataset("imagefolder", data_dir=data_dir, cache_dir=tmp_path / "c")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_hidden_folders_are_no_classes(tmp_path: Path) -> None:
    made = make_folder(tmp_path / "d")
    for split in ("train", "test"):                  # a notebook's checkpoints, say
        hidden = tmp_path / "d" / split / ".ipynb_checkpoints"
        hidden.mkdir()
        Image.fromarray(made[(split, "cat")][0]).save(hidden / "000.png")
    ds = load_dataset("imagefolder", data_dir=tmp_path / "d", cache_dir=tmp_path / "c")
    assert ds.classes == ("ant", "bee", "cat") and len(ds.y_train) == 12
    np.testing.assert_array_equal(ds.y_train, _expected(made, "train")[1])


def test_another_folder_does_not_evaluate_or_resume_a_run(tmp_path: Path, monkeypatch,
                                                          capsys) -> None:
    """A folder with other classes (or another image size) than the run was trained on is
    refused, not relabelled."""
    make_folder(tmp_path / "d")
    other = tmp_path / "other"
    make_folder(other)
    (other / "train" / "bee").rename(other / "train" / "dog")
    (other / "test" / "bee").rename(other / "test" / "dog")
    monkeypatch.setenv("MINIBNN_CACHE", str(tmp_path / "cache"))
    out = str(tmp_path / "run.h5")
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "d"),
                 "--hidden", "8,8", "--epochs", "2", "--stop-after", "1", "--batch-size", "4",
                 "--shift", "0", "--no-progress", "--out", out]) == 0
    capsys.readouterr()
    for argv in (["eval", out, "--data-dir", str(other)],
                 ["eval", out, "--packed", "--data-dir", str(other)],
                 ["train", "--resume", out, "--data-dir", str(other), "--no-progress"]):
        assert main(argv) == 2, argv
        err = [line for line in capsys.readouterr().err.strip().splitlines()
               if not line.startswith("minibnn: decoding")]     # the cache's own note
        assert len(err) == 1 and "trained on 3 classes ['ant', 'bee', 'cat']" in err[0], err
        assert "['ant', 'cat', 'dog']" in err[0]


def test_train_eval_and_load_an_image_folder_run(tmp_path: Path, monkeypatch, capsys) -> None:
    import minibnn

    make_folder(tmp_path / "d")
    monkeypatch.setenv("MINIBNN_CACHE", str(tmp_path / "cache"))
    out = str(tmp_path / "run.h5")
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "d"),
                 "--hidden", "8,8", "--epochs", "1", "--batch-size", "4",
                 "--shift", "1", "--fill", "zero", "--flip", "--no-progress",
                 "--out", out]) == 0
    trained = minibnn.load(out)
    assert trained.classes == ("ant", "bee", "cat") and trained.input_shape == (3, 6, 5)
    capsys.readouterr()
    assert main(["eval", out]) == 0                      # the stored data dir, from the cache
    assert "test accuracy" in capsys.readouterr().out
    assert main(["summary", out]) == 0
    assert "input 3x6x5, 3 classes" in capsys.readouterr().out


@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason=f"no {SHARED_CIFAR} (the shared "
                    "datasets folder beside the project)")
def test_cifar10_from_a_subset_of_the_jpeg_archive(tmp_path: Path) -> None:
    """20 train and 5 test images per class copied out of the shared archive: --dataset
    cifar10 takes them in CIFAR-10's label order, decoded exactly as Pillow decodes them."""
    subset, kept = tmp_path / "cifar-subset.tar", {}
    with tarfile.open(SHARED_CIFAR, "r:gz") as src, tarfile.open(subset, "w") as dst:
        for member in src:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4 or parts[1] not in ("train", "test"):
                continue
            n = 20 if parts[1] == "train" else 5
            if int(parts[3].split(".")[0]) < n:
                data = src.extractfile(member).read()
                kept[(parts[1], parts[2], parts[3])] = data
                dst.addfile(member, io.BytesIO(data))
    ds = load_dataset("cifar10", data_dir=subset, cache_dir=tmp_path / "cache", dtype="float64")
    assert ds.classes[0] == "airplane" and ds.classes[-1] == "truck" and len(ds.x_train) == 200
    assert ds.x_train.shape[1:] == (3, 32, 32) and list(ds.y_test[:10]) == list(range(10))
    assert "JPEG" in ds.source
    first_truck = np.asarray(Image.open(io.BytesIO(kept[("test", "truck", "0000.jpg")])))
    u8 = np.rint((ds.x_test[9] * np.array(ds.std)[:, None, None]
                  + np.array(ds.mean)[:, None, None]) * 255)
    assert np.array_equal(u8, first_truck.transpose(2, 0, 1))


def test_zero_fill_shift_is_a_zero_padded_crop_and_flip_mirrors() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 8, 8))
    offsets = draw_offsets(5, 2, rng)
    got = shift_images(x, offsets, 2, fill="zero")
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))       # torchvision RandomCrop(padding=2)
    for n in range(5):
        oy, ox = offsets[:, n]
        assert np.array_equal(got[n], padded[n, :, oy:oy + 8, ox:ox + 8])
    assert shift_images(x, offsets, 2)[0].min() == x.min()      # default: the batch minimum
    mask = np.array([True, False, True, False, False])
    flipped = flip_images(x, mask)
    assert np.array_equal(flipped[0], x[0, :, :, ::-1]) and np.array_equal(flipped[1], x[1])
