"""``--resume`` may change only machine-local options; ``--extend`` re-plans a run's epochs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from h5edit import edited

from minibnn.commands.cli import main
from minibnn.run.files import load_run

BASE = ["--dataset", "synthetic", "--hidden", "16,8", "--train-subset", "300", "--no-progress"]


@pytest.fixture()
def one_epoch_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    path = str(tmp_path / "r.h5")
    assert main(["train", *BASE, "--epochs", "1", "--out", path]) == 0
    capsys.readouterr()
    return path


@pytest.mark.parametrize("flags, named", [
    (["--epochs", "10"], "--epochs"),            # 10 is the default: still refused
    (["--seed", "0"], "--seed"),                 # equal to the stored value: still refused
    (["--optimizer", "cema"], "--optimizer"),
    (["--val-split=50"], "--val-split"),
    (["--out", "x.h5"], "--out"),
])
def test_resume_refuses_every_spec_flag_given(one_epoch_run: str, flags: list[str], named: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--resume", one_epoch_run, *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err


def test_resume_accepts_machine_local_flags(one_epoch_run: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--resume", one_epoch_run, "--backend", "numpy", "--no-progress"]) == 0
    assert "already finished" in capsys.readouterr().out


def test_extend_replans_the_schedule_and_records_it(one_epoch_run: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--resume", one_epoch_run, "--epochs", "3", "--extend",
                 "--no-progress"]) == 0
    assert "re-planning" in capsys.readouterr().out
    run = load_run(one_epoch_run)
    assert run.replans == [{"at_epoch": 1, "epochs_before": 1, "epochs_after": 3}]
    assert len(run.metrics["train_loss"]) == 3 and run.checkpoint.epoch == 3
    # alpha at each epoch's first step: 1 epoch planned, then the 3-epoch linear decay
    np.testing.assert_allclose(run.metrics["alpha"], [1e-3, 1e-3 * 2 / 3, 1e-3 / 3])
    assert main(["train", "--resume", one_epoch_run, "--epochs", "5", "--extend",
                 "--no-progress"]) == 0
    assert len(load_run(one_epoch_run).replans) == 2


def test_extend_errors(one_epoch_run: str, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, text in ((["train", *BASE, "--epochs", "2", "--extend"],
                        "--extend re-plans a stored run"),
                       (["train", "--resume", one_epoch_run, "--extend"], "--epochs N"),
                       (["train", "--resume", one_epoch_run, "--epochs", "1", "--extend"],
                        "already finished 1 epochs")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and text in err, err


def test_binary_weights_are_stored_as_int8_and_resume_bit_identically(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import h5py

    straight, split = str(tmp_path / "s.h5"), str(tmp_path / "p.h5")
    assert main(["train", *BASE, "--epochs", "2", "--out", straight]) == 0
    assert main(["train", *BASE, "--epochs", "2", "--stop-after", "1", "--out", split]) == 0
    assert main(["train", "--resume", split, "--no-progress"]) == 0
    capsys.readouterr()
    with h5py.File(straight, "r") as f:
        w = f["checkpoint/params/fc2.w"]
        assert w.dtype == np.int8 and w.attrs["float_dtype"] == "float32"
        assert f["checkpoint/params/fc1.w"].dtype == np.float32      # real weights stay float
    a, b = load_run(straight).checkpoint, load_run(split).checkpoint
    assert a.binary == ("fc2.w",) and a.params["fc2.w"].dtype == np.float32
    for k in a.params:
        assert np.array_equal(a.params[k], b.params[k]), k
    with edited(straight) as f:
        f["checkpoint/params/fc2.w"][0, 0] = 3
    assert main(["eval", straight]) == 2
    assert "does not hold int8 +-1" in capsys.readouterr().err


def test_real_parameters_have_their_own_schedule(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "rs.h5")
    assert main(["train", *BASE, "--epochs", "3", "--real-schedule", "constant",
                 "--out", path]) == 0
    capsys.readouterr()
    m = load_run(path).metrics
    assert m["real_lr"] == [1e-3] * 3                               # constant
    np.testing.assert_allclose(m["alpha"], [1e-3, 1e-3 * 2 / 3, 1e-3 / 3])   # --schedule linear
    path2 = str(tmp_path / "default.h5")
    assert main(["train", *BASE, "--epochs", "3", "--out", path2]) == 0
    capsys.readouterr()
    np.testing.assert_allclose(load_run(path2).metrics["real_lr"], [1e-3, 1e-3 * 2 / 3, 1e-3 / 3])
