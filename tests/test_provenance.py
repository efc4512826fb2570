"""Provenance records (minibnn.run.provenance) and the data-source records the loaders fill in
(minibnn.data.source): what each records, that a cached load keeps the hash without hashing
again, that old caches still load, and the readable lines for full and empty records."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from minibnn.data import cifar, imagefolder, load_dataset
from minibnn.data.base import from_uint8
from minibnn.data.cache import save_split
from minibnn.data.source import HASH_UNKNOWN
from minibnn.run import provenance
from minibnn.run.provenance import collect, format_provenance, format_sessions
from minibnn.run.spec import Local


def _synthetic(**kw):
    return load_dataset("synthetic", n_train=20, n_test=10, **kw)


def test_synthetic_record_holds_the_generator_parameters_and_round_trips_json() -> None:
    ds = _synthetic(seed=3, noise=1.5)
    record = collect(ds, Local(device="cpu", backend="numpy"))
    assert json.loads(json.dumps(record)) == record
    data = record["data"]
    assert data["kind"] == "synthetic" and data["cached"] is False and data["sha256"] is None
    assert data["params"]["seed"] == 3 and data["params"]["noise"] == 1.5
    assert data["params"]["n_train"] == 20 and data["params"]["shape"] == [1, 28, 28]
    assert record["backend"] == "numpy" and record["device"] == "cpu"
    from minibnn.kernels.threads import get_threads, using_threads
    assert record["threads"] == get_threads()
    with using_threads(1):
        assert collect(ds, Local())["threads"] == 1
    assert set(record["versions"]) >= {"python", "numpy", "numba", "h5py", "minibnn"}
    assert record["versions"]["numpy"] == np.__version__
    assert isinstance(record["cpu"]["features"], list)
    for lib in record["blas"]:
        assert set(lib) == {"internal_api", "version", "architecture", "num_threads"}
    assert "host" not in json.dumps(record).lower()


def test_environment_records_only_the_blas_variables_that_are_set(monkeypatch) -> None:
    monkeypatch.delenv("OPENBLAS_L2_SIZE", raising=False)
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert collect(_synthetic(), Local())["env"] == {"OPENBLAS_CORETYPE": "Haswell"}


def test_a_hand_built_dataset_records_its_name_and_phrase() -> None:
    u8 = np.zeros((2, 1, 4, 4), np.uint8)
    y = np.array([0, 1], np.uint8)
    ds = from_uint8("synthetic", u8, y, u8, y, num_classes=2, source="my arrays")
    assert ds.origin is None
    assert provenance.data_record(ds) == {"kind": "synthetic", "path": "my arrays",
                                          "sha256": None, "cached": False}


def test_cpu_features_are_the_listed_vector_flags(tmp_path) -> None:
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor : 0\nflags : fpu sse2 avx2 fma avx512f\n")
    assert provenance.cpu_features(str(fake)) == ["avx2", "fma", "avx512f"]
    assert provenance.cpu_features(str(tmp_path / "absent")) == []


def fake_jpeg_archive(path: Path) -> Path:
    """A tiny stand-in for cifar10-jpeg.tar.gz: cifar10-jpeg/{train,test}/<class>/0000.jpg,
    one random 32x32 JPEG per class and split."""
    Image = pytest.importorskip("PIL.Image", reason="Pillow decodes the JPEG copy")
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            for cls in cifar.CLASSES:
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    buf, format="JPEG")
                info = tarfile.TarInfo(f"cifar10-jpeg/{split}/{cls}/0000.jpg")
                info.size = len(buf.getvalue())
                tar.addfile(info, io.BytesIO(buf.getvalue()))
    return path


def test_cifar10_jpeg_copy_is_named_even_when_read_from_the_cache(tmp_path, monkeypatch) -> None:
    """The issue: ``--dataset cifar10`` without ``--data-dir`` silently read the cached JPEG
    copy. The record now names it, with its path and hash, and the cached load hashes
    nothing."""
    archive = fake_jpeg_archive(tmp_path / "cifar10-jpeg.tar.gz")
    cache = tmp_path / "cache"
    first = collect(load_dataset("cifar10", data_dir=archive, cache_dir=cache), Local())
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert first["data"] == {"kind": "cifar10-jpeg", "path": str(archive), "sha256": sha,
                             "cached": False}

    def no_hashing(*a, **k):
        raise AssertionError("a cached load hashed the source again")

    for module in (cifar, imagefolder):
        monkeypatch.setattr(module, "sha256_file", no_hashing)
        monkeypatch.setattr(module, "sha256_files", no_hashing)
    for data_dir in (None, archive):
        again = collect(load_dataset("cifar10", data_dir=data_dir, cache_dir=cache), Local())
        assert again["data"] == dict(first["data"], cached=True)
    line = format_provenance(again)[0]
    assert line == f"data: CIFAR-10 JPEG copy {archive} (sha256 {sha[:16]}...) via the cache"


def test_cifar10_jpeg_from_an_unpacked_folder_hashes_its_image_files(tmp_path) -> None:
    archive = fake_jpeg_archive(tmp_path / "copy.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    root = tmp_path / "unpacked" / "cifar10-jpeg"
    (root / "README.md").write_text("not an image: not part of the hash")
    ds = load_dataset("cifar10", data_dir=root, cache_dir=tmp_path / "cache")
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    listing = "".join(f"{hashlib.sha256((root / n).read_bytes()).hexdigest()}  {n}\n"
                      for n in names)
    assert ds.origin.kind == "cifar10-jpeg" and ds.origin.path == str(root)
    assert ds.origin.sha256 == hashlib.sha256(listing.encode()).hexdigest()
    assert "JPEG" in ds.source


def test_imagefolder_records_its_archive_and_keeps_it_in_its_cache(tmp_path) -> None:
    archive = fake_jpeg_archive(tmp_path / "pets.tar.gz")
    first = load_dataset("imagefolder", data_dir=archive, cache_dir=tmp_path / "c").origin
    again = load_dataset("imagefolder", data_dir=archive, cache_dir=tmp_path / "c").origin
    assert (first.kind, first.path, first.cached) == ("imagefolder", str(archive), False)
    assert first.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert again.cached and (again.kind, again.path, again.sha256) == (
        first.kind, first.path, first.sha256)


def test_an_old_jpeg_cache_without_a_record_still_loads(tmp_path) -> None:
    x, y = np.zeros((10, 3, 32, 32), np.uint8), np.arange(10, dtype=np.uint8)
    save_split(tmp_path / "cifar10-jpeg.npz", x, y, x, y)          # written without a record
    record = collect(load_dataset("cifar10", cache_dir=tmp_path), Local())["data"]
    assert record == {"kind": "cifar10-jpeg", "path": None, "sha256": HASH_UNKNOWN,
                      "cached": True}
    assert "sha256 unknown (cache written before hashes were stored)" in \
        format_provenance({"data": record})[0]


FULL = {"data": {"kind": "cifar10-jpeg", "path": "/d/cifar10-jpeg.tar.gz",
                 "sha256": "d41e23425f493b2fecea783939e27a18a6f33400cf3e811090c981bfb9219048",
                 "cached": True},
        "threads": 2, "backend": "numba", "device": "cpu",
        "blas": [{"internal_api": "openblas", "version": "0.3.27", "architecture": "SkylakeX",
                  "num_threads": 2}],
        "cpu": {"machine": "x86_64", "features": ["avx2", "avx512f"]},
        "env": {"OPENBLAS_CORETYPE": "Haswell"},
        "versions": {"python": "3.11.7", "numpy": "2.4.6", "numba": "0.68.1",
                     "h5py": "3.16.0", "minibnn": "0.1.0"}}


def test_format_full_record() -> None:
    lines = format_provenance(FULL)
    assert lines == [
        "data: CIFAR-10 JPEG copy /d/cifar10-jpeg.tar.gz (sha256 d41e23425f493b2f...) "
        "via the cache",
        "threads: 2, backend numba on cpu; BLAS openblas 0.3.27 SkylakeX (2 threads); "
        "forced by OPENBLAS_CORETYPE=Haswell; CPU x86_64 avx2 avx512f",
        "versions: minibnn 0.1.0, numpy 2.4.6, numba 0.68.1, h5py 3.16.0, python 3.11.7"]


def test_format_empty_and_partial_records_do_not_fail() -> None:
    assert format_provenance({}) == []
    assert format_provenance({"data": {}}) == ["data: unknown source"]
    assert format_provenance({"blas": [{}], "versions": {"numpy": "2"}}) == [
        "machine: BLAS ? ? ? (? threads)", "versions: numpy 2"]
    unknown = {"kind": "cifar10-pickles", "sha256": "unknown (cache written before hashes "
               "were stored)", "cached": True}
    assert "sha256 unknown (cache written" in format_provenance({"data": unknown})[0]


def test_format_sessions_heads_each_session_and_names_old_files() -> None:
    lines = format_sessions([dict(FULL, from_epoch=1), dict(FULL, from_epoch=5)])
    assert lines[0] == "session from epoch 1:" and lines[4] == "session from epoch 5:"
    assert lines[1:4] == ["  " + line for line in format_provenance(FULL)]
    assert len(lines) == 8
    assert format_sessions(None) == format_sessions([]) == [
        "provenance: not recorded (run file written before it was stored)"]
    assert format_sessions([{}]) == ["provenance: an empty record"]
    assert format_sessions(["junk"]) == ["provenance: an empty record"]


def test_an_old_cache_read_with_a_data_dir_names_no_path(tmp_path) -> None:
    """An old cache may hold another copy than the --data-dir given now: its record says the
    path is unknown rather than naming that folder."""
    x, y = np.zeros((10, 3, 32, 32), np.uint8), np.arange(10, dtype=np.uint8)
    save_split(tmp_path / "cifar10-jpeg.npz", x, y, x, y)          # written without a record
    other = fake_jpeg_archive(tmp_path / "other.tar.gz")
    record = load_dataset("cifar10", data_dir=other, cache_dir=tmp_path).origin
    assert record.path is None and record.sha256 == HASH_UNKNOWN
