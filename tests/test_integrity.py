"""Integrity of run and packed files: checksums sealed on write, verified on load.

Fuzzing: random single-bit flips and truncations of real files must either be refused with a
one-line ``DataFileError`` or read back exactly the original contents; never a traceback, never
a silently different result.  Structural fuzz: groups replaced by datasets or scalars, wrong
dtypes and missing keys (files re-sealed, so the check under test is the structural one).
"""
from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest
from h5edit import edited
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minibnn.run import integrity
from minibnn.commands.cli import main
from minibnn.errors import DataFileError
from minibnn.deploy.inference import export_packed
from minibnn.run.files import load_run
from minibnn.deploy.packed_file import read_packed
from minibnn.run.spec import spec_from_options
from minibnn.run.train import fit


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A run file (binary MLP, one epoch on the synthetic set, CEMA) and its packed file."""
    folder = tmp_path_factory.mktemp("integrity")
    run, packed = str(folder / "run.h5"), str(folder / "run.packed.h5")
    fit(spec_from_options(dict(dataset="synthetic", hidden=[32, 32], epochs=1, shift=0,
                               train_subset=200)), run, progress=False, log=lambda m: None)
    export_packed(run, packed)
    return {"run": run, "packed": packed}


def _same(a, b) -> bool:
    """Deep equality of loaded contents (dataclasses, dicts, arrays, numbers; NaN == NaN)."""
    if hasattr(a, "__dataclass_fields__"):
        return type(a) is type(b) and all(_same(getattr(a, k), getattr(b, k))
                                          for k in a.__dataclass_fields__)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (np.ndarray, np.generic, float, int)):
        a, b = np.asarray(a), np.asarray(b)
        return (a.dtype == b.dtype and a.shape == b.shape
                and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    return a == b


READERS = {"run": load_run, "packed": read_packed}


def _check_damaged(kind: str, original: str, data: bytes, tmp: str) -> str:
    """Write ``data`` to ``tmp`` and read it: "detected" (one-line DataFileError) or
    "harmless" (contents identical to ``original``'s); anything else fails the test."""
    with open(tmp, "wb") as f:
        f.write(data)
    try:
        got = READERS[kind](tmp)
    except DataFileError as exc:
        assert "\n" not in str(exc) and str(exc)
        return "detected"
    assert _same(got, READERS[kind](original)), "a damaged file read back different contents"
    return "harmless"


@pytest.mark.parametrize("kind", ["run", "packed"])
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_a_flipped_bit_is_detected_or_harmless(files, tmp_path, kind, where, bit):
    data = bytearray(open(files[kind], "rb").read())
    offset = int(where * len(data))
    data[offset] ^= 1 << bit
    _check_damaged(kind, files[kind], bytes(data), str(tmp_path / "damaged.h5"))


@pytest.mark.parametrize("kind", ["run", "packed"])
@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.floats(0, 1, exclude_max=True))
def test_a_truncated_file_is_detected(files, tmp_path, kind, where):
    data = open(files[kind], "rb").read()
    assert _check_damaged(kind, files[kind], data[:int(where * len(data))],
                          str(tmp_path / "cut.h5")) == "detected"


def _array_bytes(path: str) -> list[tuple[str, int, int]]:
    """(dataset name, file offset, byte count) of every contiguous dataset with data."""
    out = []
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None:
                out.append((name, obj.id.get_offset(), obj.id.get_storage_size()))
        f.visititems(visit)
    return out


@pytest.mark.parametrize("kind", ["run", "packed"])
def test_every_flip_in_array_data_names_its_dataset(files, tmp_path, kind):
    """Flip one bit in every array's bytes (first, middle, last byte): each is detected, with
    the damaged dataset's name in the message."""
    data = open(files[kind], "rb").read()
    arrays = _array_bytes(files[kind])
    assert len(arrays) >= 5
    for name, offset, size in arrays:
        for at in sorted({offset, offset + size // 2, offset + size - 1}):
            damaged = bytearray(data)
            damaged[at] ^= 0x10
            with open(tmp_path / "d.h5", "wb") as f:
                f.write(damaged)
            with pytest.raises(DataFileError, match=f"dataset {name} does not match"):
                READERS[kind](str(tmp_path / "d.h5"))


def test_an_edited_attribute_is_detected(files, tmp_path):
    path = str(tmp_path / "run.h5")
    shutil.copy(files["run"], path)
    with h5py.File(path, "a") as f:
        f["checkpoint"].attrs["epoch"] = 7
    with pytest.raises(DataFileError, match="attributes or layout do not match"):
        load_run(path)


def test_damage_through_the_cli_is_one_line_exit_2(files, tmp_path, capsys):
    path = str(tmp_path / "run.h5")
    shutil.copy(files["run"], path)
    name, offset, size = _array_bytes(path)[-1]
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 1]))
    for argv in (["eval", path], ["train", "--resume", path], ["summary", path],
                 ["export", path, "--out", str(tmp_path / "p.h5")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("minibnn: error:") and name in err[0], err


def test_files_without_checksums_are_read_unverified(files, tmp_path):
    """Files written before checksums existed load as before."""
    path = str(tmp_path / "old.h5")
    shutil.copy(files["run"], path)
    with h5py.File(path, "a") as f:
        del f.attrs[integrity.DIGEST]
        f.visititems(lambda n, o: o.attrs.__delitem__(integrity.DIGEST)
                     if isinstance(o, h5py.Dataset) else None)
    assert _same(load_run(path), load_run(files["run"]))


def test_a_sealed_file_without_its_root_checksum_is_damaged(files, tmp_path):
    """Deleting the file's own checksum does not turn the checks off while its datasets
    still carry theirs (it did: a changed parameter was then read silently)."""
    path = str(tmp_path / "unsealed.h5")
    shutil.copy(files["run"], path)
    with h5py.File(path, "a") as f:
        del f.attrs[integrity.DIGEST]
        f["checkpoint/params/fc1.w"][0, 0] *= 2
    with pytest.raises(DataFileError, match="file's own checksum is missing"):
        load_run(path)


def test_a_nan_checkpoint_is_refused(files, tmp_path, capsys):
    path = str(tmp_path / "nan.h5")
    shutil.copy(files["run"], path)
    with edited(path) as f:
        f["checkpoint/params/fc1.w"][0, 0] = np.nan
    with pytest.raises(DataFileError, match="checkpoint/params/fc1.w holds NaN"):
        load_run(path)
    assert main(["train", "--resume", path]) == 2
    assert "holds NaN" in capsys.readouterr().err


def _structural_edits():
    """(name, edit) pairs that damage a run file's structure; each edit takes an open file."""
    def replace(key, value):
        def edit(f):
            del f[key]
            f[key] = value
        return edit

    def set_attr(obj, key, value):
        return lambda f: f[obj].attrs.__setitem__(key, value)

    def del_attr(obj, key):
        return lambda f: f[obj].attrs.__delitem__(key)

    return [
        ("checkpoint is a dataset", replace("checkpoint", np.zeros(3))),
        ("params is a scalar", replace("checkpoint/params", 1.0)),
        ("metrics is a dataset", replace("metrics", np.arange(3))),
        ("opt_state is a string", replace("checkpoint/opt_state", "x")),
        ("a parameter is a group", lambda f: (f["checkpoint/params"].__delitem__("fc1.w"),
                                              f["checkpoint/params"].create_group("fc1.w"))),
        ("a metric is a string", replace("metrics/train_loss", "abc")),
        ("a metric is 2-d", replace("metrics/train_loss", np.zeros((2, 2)))),
        ("a parameter is int", replace("checkpoint/params/fc1.w", np.zeros((32, 64), np.int32))),
        ("a parameter has the wrong shape", replace("checkpoint/params/fc1.w", np.zeros(3))),
        ("epoch is a string", set_attr("checkpoint", "epoch", "one")),
        ("step is an array", set_attr("checkpoint", "step", np.arange(4))),
        ("rng_state missing", del_attr("checkpoint", "rng_state")),
        ("rng_state is a number", set_attr("checkpoint", "rng_state", 3)),
        ("config is a number", set_attr("/", "config", 5)),
        ("config is not a spec", set_attr("/", "config", '{"spec": 1}')),
        ("description is a list", set_attr("/", "description", "[1, 2]")),
        ("no metrics", lambda f: f.__delitem__("metrics")),
        ("no params", lambda f: f["checkpoint"].__delitem__("params")),
        ("opt_state stage missing", lambda f: f["checkpoint/opt_state"].__delitem__(
            sorted(f["checkpoint/opt_state"].keys())[0])),
        ("a count is a float array", lambda f: _replace_counts(f)),
    ]


def _replace_counts(f):
    def visit(name, obj):
        if name.endswith("/count"):
            found.append(name)
    found: list[str] = []
    f["checkpoint/opt_state"].visititems(visit)
    key = "checkpoint/opt_state/" + found[0]
    del f[key]
    f[key] = np.zeros(3)


#: edits of what only --resume reads (the RNG state, the optimiser state, the step count)
RESUME_ONLY = ("rng_state", "opt_state", "step is", "count")


def _readers_untouched_by(name: str) -> tuple[str, ...]:
    """Commands that may succeed despite the edit ``name``: show and summary read only the
    metrics and the spec; eval and export read no resume-only state."""
    if any(part in name for part in RESUME_ONLY):
        return ("show", "summary", "eval", "export")
    return ("show", "summary")


@pytest.mark.parametrize("name,edit", _structural_edits(), ids=[n for n, _ in _structural_edits()])
def test_structural_damage_is_one_line(files, tmp_path, capsys, name, edit):
    """Every command that reads the file gives a one-line error (exit 2), not a traceback."""
    path = str(tmp_path / "run.h5")
    shutil.copy(files["run"], path)
    with edited(path) as f:
        edit(f)
    for argv in (["eval", path], ["train", "--resume", path, "--no-progress"],
                 ["summary", path], ["show", path],
                 ["export", path, "--out", str(tmp_path / "p.h5"), "--overwrite"]):
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        if code == 0 and argv[0] in _readers_untouched_by(name):
            continue       # the damaged part is one this command does not read
        assert code == 2 and len(err) == 1 and err[0].startswith("minibnn: error:"), (argv, err)


def test_structural_damage_of_packed_files_is_one_line(files, tmp_path, capsys):
    edits = {
        "packed is a dataset": lambda f: (f.__delitem__("packed"), f.create_dataset("packed", data=1)),
        "bits is a group": lambda f: _regroup(f, "packed/fc2.w/bits"),
        "shape is a string": lambda f: f["packed/fc2.w"].attrs.__setitem__("shape", "wide"),
        "input_shape missing": lambda f: f.attrs.__delitem__("input_shape"),
        "real is a scalar": lambda f: (f.__delitem__("real"), f.create_dataset("real", data=2.0)),
        "scale is 2-d": lambda f: _replace(f, "packed/fc2.w/scale", np.zeros((2, 2))),
        "nan real parameter": lambda f: f["real/fc1.w"].__setitem__((0, 0), np.nan),
    }
    for name, edit in edits.items():
        path = str(tmp_path / "p.h5")
        shutil.copy(files["packed"], path)
        with edited(path) as f:
            if name == "scale is 2-d" and "scale" not in f["packed/fc2.w"]:
                f["packed/fc2.w"].create_dataset("scale", data=np.ones(32))
            edit(f)
        assert main(["eval", path]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("minibnn: error:"), (name, err)


def _regroup(f, key):
    del f[key]
    f.create_group(key)


def _replace(f, key, value):
    del f[key]
    f[key] = value
