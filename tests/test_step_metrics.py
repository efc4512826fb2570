"""Step metrics (``minibnn train --log-every N``): what the rows hold, that logging leaves the
run's bits alone, that stopped, killed and resumed runs store the rows of an uninterrupted
one, that the GPU path reads them once per epoch, and the one-line errors."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from h5edit import edited

from minibnn import backend
from minibnn.commands.cli import main
from minibnn.errors import DataFileError
from minibnn.run.files import load_run
from minibnn.run.spec import Local, spec_from_options
from minibnn.run.train import fit

#: 400 images in batches of 50: 8 steps per epoch
BASE = dict(dataset="synthetic", hidden=[32, 16], batch_size=50, train_subset=400, epochs=2)
STEPS_PER_EPOCH = 8


def _quiet(line: str) -> None:
    pass


def _fit(path: Path, log_every: int, **options: Any) -> dict[str, list[float]]:
    return fit(spec_from_options({**BASE, **options}), str(path), progress=False, log=_quiet,
               local={"log_every": log_every})


def _same_rows(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("optimizer, options", [("cema", {}), ("sgd", {"lr": 0.01})])
def test_rows_every_step_agree_with_the_epoch_metrics_and_leave_the_bits_alone(
        tmp_path: Path, optimizer: str, options: dict[str, Any]) -> None:
    every, none = tmp_path / "every.h5", tmp_path / "none.h5"
    metrics = _fit(every, 1, optimizer=optimizer, **options)
    _fit(none, 0, optimizer=optimizer, **options)
    a, b = load_run(str(every)), load_run(str(none))
    for tree in ("params", "buffers"):
        for name, value in getattr(a.checkpoint, tree).items():
            np.testing.assert_array_equal(value, getattr(b.checkpoint, tree)[name], err_msg=name)
    assert a.checkpoint.rng_state == b.checkpoint.rng_state
    assert b.step_metrics == {}                          # --log-every 0: no rows, no group
    rows = a.step_metrics
    np.testing.assert_array_equal(rows["step"], np.arange(1, 2 * STEPS_PER_EPOCH + 1))
    rate = "alpha" if optimizer == "cema" else "lr"
    assert set(rows) == {"step", "train_loss", "train_acc", "flip_ratio:fc2.w", rate, "real_lr"}
    # equal batches: the epoch's loss, accuracy and flip ratio are the means of its steps
    for e in range(2):
        epoch = slice(e * STEPS_PER_EPOCH, (e + 1) * STEPS_PER_EPOCH)
        for name in ("train_loss", "train_acc", "flip_ratio:fc2.w"):
            assert rows[name][epoch].mean() == pytest.approx(metrics[name][e], rel=1e-6), name
        # a per-epoch schedule: every step of an epoch used the epoch's logged rate
        for name in (rate, "real_lr"):
            assert set(rows[name][epoch]) == {metrics[name][e]}, name
    assert metrics[rate][1] < metrics[rate][0]           # linear decay: the rows see it
    counts = rows["train_acc"] * 50                      # correct predictions in a batch of 50
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-9)


def test_every_nth_global_step_and_resumes_store_what_an_uninterrupted_run_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    straight, stopped, killed = (tmp_path / f"{n}.h5" for n in ("straight", "stopped", "killed"))
    _fit(straight, 3, epochs=3)
    want = load_run(str(straight)).step_metrics
    np.testing.assert_array_equal(want["step"], np.arange(3, 3 * STEPS_PER_EPOCH + 1, 3))
    fit(spec_from_options({**BASE, "epochs": 3}), str(stopped), progress=False, log=_quiet,
        stop_after=1, local={"log_every": 3})
    np.testing.assert_array_equal(load_run(str(stopped)).step_metrics["step"], [3, 6])
    fit(None, str(stopped), resume=True, progress=False, log=_quiet)
    _same_rows(load_run(str(stopped)).step_metrics, want)

    # a kill in the middle of epoch 2 (step 13, after the row of step 12 was recorded)
    train = importlib.import_module("minibnn.run.train")
    calls = {"n": 0}

    def stop_at_step_13() -> None:
        calls["n"] += 1
        if calls["n"] == 13:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "raise_if_stopped", stop_at_step_13)
    with pytest.raises(KeyboardInterrupt, match="keeps epoch 1"):
        fit(spec_from_options({**BASE, "epochs": 3}), str(killed), progress=False, log=_quiet,
            local={"log_every": 3})
    monkeypatch.undo()
    np.testing.assert_array_equal(load_run(str(killed)).step_metrics["step"], [3, 6])
    fit(None, str(killed), resume=True, progress=False, log=_quiet)
    _same_rows(load_run(str(killed)).step_metrics, want)


def test_old_files_without_step_metrics_load_and_corrupt_rows_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.h5"
    _fit(path, 4, epochs=1)
    with edited(str(path)) as f:
        del f["step_metrics"]                            # as a file written before them
    assert load_run(str(path)).step_metrics == {}
    assert main(["show", str(path), "--plot", str(tmp_path / "old.png")]) == 0
    capsys.readouterr()
    _fit(path.with_name("b.h5"), 4, epochs=1)
    for damage in ("past the checkpoint", "short", "float steps"):
        bad = tmp_path / f"{damage}.h5"
        bad.write_bytes(path.with_name("b.h5").read_bytes())
        with edited(str(bad)) as f:
            rows = f["step_metrics"]
            if damage == "past the checkpoint":
                rows["step"][...] = [4, 9]               # the checkpoint made 8 steps
            elif damage == "short":
                del rows["train_loss"]
                rows["train_loss"] = np.zeros(1)
            else:
                del rows["step"]
                rows["step"] = np.array([4.0, 8.0])
        with pytest.raises(DataFileError, match="step_metrics"):
            load_run(str(bad))


@pytest.mark.parametrize("value", ["-1", "1.5", "x"])
def test_bad_log_every_is_a_one_line_error(tmp_path: Path, value: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "r.h5")
    assert main(["train", "--dataset", "synthetic", "--log-every", value, "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--log-every must be an integer >= 0" in err[0], err


def test_log_every_is_machine_local(tmp_path: Path) -> None:
    """Outside the spec (sweep ids do not see it), stored with the local settings, changeable
    on resume."""
    assert Local(log_every=7).log_every == 7 and Local().log_every == 50
    assert Local(tensorboard="").tensorboard is None     # --tensorboard '' turns it off
    path = tmp_path / "r.h5"
    fit(spec_from_options({**BASE, "epochs": 2}), str(path), progress=False, log=_quiet,
        stop_after=1, local={"log_every": 4})
    assert main(["train", "--resume", str(path), "--log-every", "8", "--no-progress"]) == 0
    np.testing.assert_array_equal(load_run(str(path)).step_metrics["step"], [4, 8, 16])


def test_the_gpu_path_reads_the_rows_once_per_epoch(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """With every step logged, the stand-in GPU (tests/test_host_reads.py) sees as many host
    reads in a 3-step epoch as in a 6-step one: the rows are read once, at the epoch's end."""
    from fake_devices import READS
    from test_host_reads import FAKE_CUPY

    monkeypatch.setattr(backend, "_cupy", lambda: FAKE_CUPY)

    def reads(steps: int) -> dict[str, int]:
        spec = spec_from_options({"dataset": "synthetic", "hidden": [32, 32], "epochs": 1,
                                  "train_subset": 20 * steps, "batch_size": 20})
        READS.clear()
        fit(spec, str(tmp_path / f"{steps}.h5"), progress=False, log=_quiet,
            local={"device": "gpu", "backend": "numpy", "log_every": 1})
        return dict(__import__("collections").Counter(READS))

    few, many = reads(3), reads(6)
    assert load_run(str(tmp_path / "6.h5")).step_metrics["step"].tolist() == [1, 2, 3, 4, 5, 6]
    grown = {where: many[where] - few.get(where, 0) for where in many
             if many[where] != few.get(where, 0)}
    assert not grown, f"host reads that grow with the logged steps: {grown}"


@pytest.mark.parametrize("optimizer, options", [("cema", {}), ("bop", {}), ("adam", {})])
def test_the_run_file_doc_lists_the_step_metrics(tmp_path: Path, optimizer: str,
                                                 options: dict[str, Any]) -> None:
    from test_train import _check_layout, _doc_table, _generic_metric

    path = tmp_path / f"{optimizer}.h5"
    _fit(path, 2, optimizer=optimizer, epochs=1, **options)
    _check_layout([str(path)], "Run file layout")
    rows = load_run(str(path)).step_metrics
    params = set(load_run(str(path)).checkpoint.params)
    want = {row[0] for row in _doc_table("Step metrics")
            if row[1].startswith("every") or optimizer in row[1].split(", ")}
    assert {_generic_metric(name, params) for name in rows} == want
