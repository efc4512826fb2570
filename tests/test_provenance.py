"""Provenance records (minibnn.run.provenance) and the data-source records the loaders fill in
(minibnn.data.source): what each records, that a cached load keeps the hash without hashing
again, that old caches still load, and the readable lines for full and empty records."""
from __future__ import annotations

import json

import numpy as np

from minibnn.data import load_dataset
from minibnn.data.base import from_uint8
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


def test_format_sessions_numbers_each_session_and_names_old_files() -> None:
    lines = format_sessions([dict(FULL, from_epoch=0), dict(FULL, from_epoch=5)])
    assert lines[0] == "session from epoch 0:" and "session from epoch 5:" in lines
    assert len(lines) == 8
    assert format_sessions(None) == format_sessions([]) == [
        "provenance: not recorded (run file written before it was stored)"]
    assert format_sessions([{}]) == ["provenance: an empty record"]
