"""``minibnn train --tensorboard DIR``: the events, read back with TensorBoard's own reader, hold
the run file's step and epoch metrics at the right steps and a filter-state histogram per
binary layer and epoch; a resume appends; without tensorboardX it is a one-line error."""
from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from minibnn.commands.cli import main
from minibnn.run.files import load_run

pytest.importorskip("tensorboardX", reason="the tensorboard extra is not installed")
event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="TensorBoard (the event reader) is not installed")

#: 300 images in batches of 50: 6 steps per epoch, steps 2, 4, ... logged
TRAIN = ["train", "--dataset", "synthetic", "--hidden", "32,16", "--train-subset", "300",
         "--batch-size", "50", "--epochs", "3", "--log-every", "2", "--no-progress"]


def _events(folder: Path) -> Any:
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={
        event_accumulator.SCALARS: 0, event_accumulator.HISTOGRAMS: 0})
    acc.Reload()
    return acc


def _scalars(acc: Any, tag: str) -> tuple[list[int], list[float]]:
    events = acc.Scalars(tag)
    return [e.step for e in events], [e.value for e in events]


@pytest.mark.parametrize("optimizer", ["cema", "sgd"])
def test_events_hold_the_run_files_metrics(tmp_path: Path, optimizer: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    run, board = tmp_path / "run.h5", tmp_path / "tb"
    options = ["--optimizer", optimizer] + (["--lr", "0.01"] if optimizer == "sgd" else [])
    assert main(TRAIN + options + ["--stop-after", "2", "--tensorboard", str(board),
                                   "--out", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0   # appends to DIR
    capsys.readouterr()
    stored = load_run(str(run))
    rows, metrics = stored.step_metrics, stored.metrics
    acc = _events(board)
    rate = "alpha" if optimizer == "cema" else "lr"
    want = {"train/loss", "train/acc", "flip_ratio/fc2.w", f"rate/{rate}", "rate/real_lr"}
    want |= {"epoch/" + name.replace(":", "/") for name in metrics}
    assert set(acc.Tags()["scalars"]) == want
    steps = list(range(2, 19, 2))
    for tag, name in (("train/loss", "train_loss"), ("train/acc", "train_acc"),
                      ("flip_ratio/fc2.w", "flip_ratio:fc2.w"), (f"rate/{rate}", rate),
                      ("rate/real_lr", "real_lr")):
        at, values = _scalars(acc, tag)
        assert at == steps == rows["step"].tolist(), tag
        np.testing.assert_allclose(values, rows[name], rtol=1e-6, err_msg=tag)  # float32
    for name in ("train_loss", "test_acc", "flip_ratio:fc2.w", "seconds"):
        at, values = _scalars(acc, "epoch/" + name.replace(":", "/"))
        assert at == [6, 12, 18], name                   # the global step at each epoch's end
        np.testing.assert_allclose(values, metrics[name], rtol=1e-6, err_msg=name)
    assert acc.Tags()["histograms"] == ["filter_state/fc2.w"]
    histograms = acc.Histograms("filter_state/fc2.w")
    assert [h.step for h in histograms] == [6, 12, 18]
    weights = stored.checkpoint.params["fc2.w"]
    last = histograms[-1].histogram_value
    assert last.num == weights.size
    if optimizer == "sgd":                               # the latent weights themselves
        assert last.min == pytest.approx(weights.min()) and last.max == pytest.approx(
            weights.max())
    else:                                                # CEMA's second EMA: not the +-1 weights
        v = stored.checkpoint.opt_state["binary"]["v"]["s"]["fc2.w"]
        assert last.min == pytest.approx(v.min()) and last.max == pytest.approx(v.max())
        assert 0 < last.max < 1


def test_without_tensorboardx_it_is_a_one_line_error_before_training(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    real_import = builtins.__import__

    def no_tensorboardx(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] == "tensorboardX":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboardx)
    run = tmp_path / "run.h5"
    assert main(TRAIN + ["--tensorboard", str(tmp_path / "tb"), "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'minibnn[tensorboard]'" in err[0], err
    assert not run.exists() and not (tmp_path / "tb").exists()
