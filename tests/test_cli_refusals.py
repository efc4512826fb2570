"""Bad input the CLI used to take silently or answer with a traceback (found by probing every
command): each is now a one-line error with exit status 2, refused before anything is written,
and no file it reads or keeps is replaced."""
from __future__ import annotations

import hashlib
import importlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from h5edit import edited

from minibnn.commands.cli import main
from minibnn.commands.sweep_spec import parse_sweep
from minibnn.errors import MinibnnError
from minibnn.run import train as train_module
from minibnn.run.files import load_run

SMALL = ["--dataset", "synthetic", "--shift", "0", "--hidden", "16,16", "--train-subset", "200",
         "--no-progress"]
SWEEP = """
[base]
dataset = "synthetic"
hidden = [16, 16]
epochs = 1
train-subset = 200
"""


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the CLI, which must refuse: exit 2 and exactly one line on stderr."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minibnn: error:"), err
    return err[0]


def _no_training(*args, **kwargs):
    raise AssertionError("a refused command started a training")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def trained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A finished one-epoch run file."""
    run = tmp_path / "source.h5"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    return run


def test_an_empty_resume_is_refused_not_read_as_a_new_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_module, "fit", _no_training)      # it used to train MNIST
    assert "--resume is empty" in _error(capsys, "train", "--resume", "")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("role", ["--teacher", "--init-from"])
@pytest.mark.parametrize("spelling", ["same", "dot", "link"])
def test_a_run_may_not_write_over_the_run_it_reads(trained, capsys, role, spelling):
    out = {"same": str(trained), "dot": os.path.join(os.path.dirname(trained), ".",
                                                     trained.name),
           "link": str(trained.parent / "link.h5")}[spelling]
    if spelling == "link":
        os.symlink(trained, out)
    before = _sha(trained)
    line = _error(capsys, "train", *SMALL, "--epochs", "1", role, trained, "--out", out,
                  "--overwrite")
    assert f"this run's {role} run itself" in line
    assert _sha(trained) == before


def test_an_empty_sweep_folder_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text(SWEEP + "[grid]\nseed = [0, 1]\n")
    assert "--out is empty" in _error(capsys, "sweep", "s.toml", "--out", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


@pytest.mark.parametrize("table", ["[grid]\nseed = [1979-05-27]\n",
                                   "[random]\ntrials = 2\n"
                                   "init-scale = {choice = [1979-05-27, 1980-01-01]}\n"])
def test_a_toml_date_as_a_value_is_one_line(table):
    with pytest.raises(MinibnnError, match="1979-05-27 is not an option value"):
        parse_sweep(SWEEP + table)


def test_values_that_differ_only_as_int_and_float_are_one_run():
    with pytest.raises(MinibnnError, match="init-scale repeats a value"):
        parse_sweep(SWEEP + "[grid]\ninit-scale = [1, 1.0]\n")
    drawn = parse_sweep(SWEEP + "[random]\ntrials = 8\nseed = 3\n"
                        "label-smoothing = {choice = [0, 0.0]}\n")
    assert len(drawn.points) == 1 and drawn.repeated_trials == 7


def test_counts_have_an_upper_bound_and_a_refused_extend_leaves_the_run(trained, capsys):
    assert "--epochs must be at most 2,147,483,647" in _error(
        capsys, "train", *SMALL, "--epochs", str(2 ** 31), "--out", trained.parent / "x.h5")
    before = _sha(trained)
    assert "--epochs must be at most" in _error(
        capsys, "train", "--resume", trained, "--extend", "--epochs", "99999999999999999999")
    assert _sha(trained) == before
    assert not (trained.parent / "x.h5").exists()


def test_a_seed_may_be_any_size(tmp_path, capsys):
    run = tmp_path / "r.h5"
    assert main(["train", *SMALL, "--epochs", "1", "--seed", str(2 ** 70), "--out",
                 str(run)]) == 0


def test_a_training_subset_larger_than_the_data_is_refused(tmp_path, capsys):
    line = _error(capsys, "train", "--dataset", "synthetic", "--train-subset", "999999",
                  "--epochs", "1", "--out", tmp_path / "r.h5")
    assert "--train-subset 999,999 is more than the 4,000 training images" in line
    assert not (tmp_path / "r.h5").exists()


def test_resuming_through_a_link_trains_the_file_it_points_to(tmp_path, capsys):
    real, link = tmp_path / "real.h5", tmp_path / "link.h5"
    assert main(["train", *SMALL, "--epochs", "2", "--stop-after", "1", "--out",
                 str(real)]) == 0
    os.symlink(real, link)
    assert main(["train", "--resume", str(link), "--no-progress"]) == 0
    capsys.readouterr()
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert load_run(str(real)).checkpoint.epoch == 2


def test_a_new_run_written_to_a_links_name_replaces_the_link_not_its_target(trained, capsys):
    link = trained.parent / "latest.h5"
    os.symlink(trained, link)
    before = _sha(trained)
    assert main(["train", *SMALL, "--epochs", "1", "--seed", "3", "--out", str(link),
                 "--overwrite"]) == 0
    capsys.readouterr()
    assert not link.is_symlink() and _sha(trained) == before


def test_a_sweep_folder_without_its_table_or_with_a_damaged_one(tmp_path, capsys):
    folder = tmp_path / "sw"
    (tmp_path / "s.toml").write_text(SWEEP + "[grid]\nseed = [0, 1]\n")
    assert main(["sweep", str(tmp_path / "s.toml"), "--out", str(folder), "--workers", "1",
                 "--no-progress"]) == 0
    capsys.readouterr()
    (folder / "summary.csv").write_bytes(b"\xff\xfe\x00")
    assert "not a sweep's summary table" in _error(capsys, "show", folder)
    (folder / "summary.csv").unlink()
    line = _error(capsys, "show", folder)
    assert "has a sweep.toml but no summary.csv yet" in line
    assert "is a folder, not a run file" in _error(capsys, "show", tmp_path)


def test_a_damaged_sweep_toml_is_not_replaced_silently(tmp_path, capsys):
    folder = tmp_path / "sw"
    spec = tmp_path / "s.toml"
    spec.write_text(SWEEP + "[grid]\nseed = [0]\n")
    folder.mkdir()
    (folder / "sweep.toml").write_text("[grid\nmy notes")
    line = _error(capsys, "sweep", spec, "--out", folder, "--no-progress")
    assert "cannot be read as a sweep spec" in line and "--replace-spec" in line
    assert (folder / "sweep.toml").read_text() == "[grid\nmy notes"
    assert sorted(p.name for p in folder.iterdir()) == ["sweep.toml"]     # no runs/ either
    assert main(["sweep", str(spec), "--out", str(folder), "--no-progress", "--workers", "1",
                 "--replace-spec"]) == 0


def test_a_sweeps_data_folder_is_needed_by_some_point_and_must_exist(tmp_path):
    from minibnn.commands.sweep import check_sweep_data_dir

    where = "s.toml [base] data-dir"
    check_sweep_data_dir(str(tmp_path), {"mnist", "synthetic"}, where)   # mnist reads it
    check_sweep_data_dir(None, {"synthetic"}, where)
    with pytest.raises(MinibnnError, match="synthetic set is generated"):
        check_sweep_data_dir(str(tmp_path), {"synthetic"}, where)
    with pytest.raises(MinibnnError, match="data-dir /nonexistent does not exist"):
        check_sweep_data_dir("/nonexistent", {"mnist", "synthetic"}, where)


def test_a_sweeps_data_dir_is_checked_like_the_command_lines(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text('[base]\ndataset = "mnist"\ndata-dir = "/nonexistent/mnist"\n'
                    "[grid]\nseed = [0, 1]\n")
    line = _error(capsys, "sweep", spec, "--out", tmp_path / "sw")
    assert "[base] data-dir /nonexistent/mnist does not exist" in line
    assert not (tmp_path / "sw").exists()


@pytest.mark.parametrize("argv,words", [
    (["show", "{sweep}", "--x", "seed"], "--x/--y choose the plot's axes"),
    (["show", "{sweep}", "--x", "seed", "--y", "seed", "--plot", "{tmp}/a.png"],
     "--x and --y are both 'seed'"),
    (["show", "{sweep}", "--plot", ""], "--plot is empty"),
    (["show", "{run}", "--plot", ""], "--plot is empty"),
    (["show", "{run}", "--plot", "{tmp}/a.jpg"], "unknown image format .jpg; supported: png"),
    (["explain", "--lr", "0.1", "--plot", ""], "--plot is empty"),
    (["export", "{run}", "--out", ""], "--out is empty"),
    (["export", "{run}", "--format", "onnx", "--out", ""], "--out is empty"),
])
def test_empty_or_unused_report_options_are_refused(trained, tmp_path, capsys, monkeypatch,
                                                     argv, words):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "sw"
    if "{sweep}" in argv:
        (tmp_path / "s.toml").write_text(SWEEP + "[grid]\nseed = [0, 1]\n")
        assert main(["sweep", "s.toml", "--out", str(folder), "--workers", "1",
                     "--no-progress"]) == 0
        capsys.readouterr()
    before = sorted(p.name for p in tmp_path.iterdir())
    values = {"{sweep}": str(folder), "{run}": str(trained), "{tmp}": str(tmp_path)}
    filled = [a for a in argv]
    for key, value in values.items():
        filled = [a.replace(key, value) for a in filled]
    assert words in _error(capsys, *filled)
    assert sorted(p.name for p in tmp_path.iterdir()) == before      # no ".png", no export


def test_a_file_in_the_way_of_the_output_folder_is_named(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    line = _error(capsys, "train", *SMALL, "--epochs", "1", "--out",
                  tmp_path / "notes.txt" / "a" / "r.h5")
    assert f"{tmp_path / 'notes.txt'} is a file, not a folder" in line


def test_verify_finds_its_suite_from_any_working_directory(tmp_path, monkeypatch):
    """The suite is found beside the installed package (the checkout), not only in the
    working directory."""
    from minibnn.commands import explain

    checkout = str(Path(explain.__file__).resolve().parents[2])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path
                                      if os.path.abspath(p or ".") != checkout])
    for name in [m for m in sys.modules if m == "verification" or m.startswith("verification.")]:
        monkeypatch.delitem(sys.modules, name)
    runner = explain._import_verification()
    assert Path(runner.__file__).resolve().parents[1] == Path(checkout)
    importlib.invalidate_caches()


def test_summary_checks_the_stored_arrays_like_eval(trained, capsys):
    """A run file whose checkpoint lacks a parameter the model declares (re-sealed, so only
    the structure is wrong): summary names it, as eval does, instead of a KeyError."""
    with edited(str(trained)) as f:
        del f["checkpoint/params/head.w"]
    for command in ("summary", "eval"):
        line = _error(capsys, command, trained)
        assert "head.w" in line, line


def test_a_stored_array_of_another_dtype_is_named(trained, capsys):
    """A float64 parameter in a float32 run (re-sealed): the file and the entry are named,
    not a kernel's dtype complaint from deep inside the forward pass."""
    with edited(str(trained)) as f:
        w = f["checkpoint/params/head.w"][()]
        del f["checkpoint/params/head.w"]
        f["checkpoint/params/head.w"] = w.astype("float64")
    for command in ("summary", "eval"):
        line = _error(capsys, command, trained)
        assert "'head.w' is float64, expected float32" in line and str(trained) in line, line


def test_data_of_another_name_than_the_description_is_refused():
    """A run whose spec was edited to name another data set (its description still names the
    one it was trained on) is not evaluated or resumed on the other one."""
    from types import SimpleNamespace

    from minibnn.run.train import check_same_data

    ds = SimpleNamespace(name="mnist", classes=tuple("0123456789"),
                         x_test=np.zeros((1, 1, 28, 28)))
    with pytest.raises(MinibnnError, match="trained on synthetic, its spec now names mnist"):
        check_same_data("r.h5", {"dataset": "synthetic"}, ds)
    check_same_data("r.h5", {"dataset": "mnist", "classes": list("0123456789"),
                             "input_shape": [1, 28, 28]}, ds)
    check_same_data("r.h5", None, ds)                      # an old file: nothing to compare
