"""Training loop: learns the synthetic set, resumes bit-identically, writes run files safely."""
import os

import numpy as np
import pytest

from minibnn.config import TrainConfig
from minibnn.errors import DataFileError, MinibnnError
from minibnn.io import load_run
from minibnn.train import evaluate_run, fit


def _quiet(msg):
    pass


def _config(**kw):
    base = dict(dataset="synthetic", hidden=[128, 128], epochs=2, batch_size=50, alpha=1e-2,
                gamma=1e-1, act_ste="clipped", shift=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("optimizer", ["cema", "sgd", "bop", "bop2nd", "adam"])
def test_short_run_learns_synthetic_set(tmp_path, optimizer):
    config = _config(optimizer=optimizer, lr=0.01)
    metrics = fit(config, str(tmp_path / "run.h5"), progress=False, log=_quiet)
    assert metrics["test_acc"][-1] >= 0.95
    assert metrics["train_loss"][-1] < metrics["train_loss"][0]


def test_cnn_trains_one_epoch(tmp_path):
    config = _config(model="binary_cnn", width=4, epochs=2, train_subset=2000)
    metrics = fit(config, str(tmp_path / "cnn.h5"), progress=False, log=_quiet)
    assert metrics["test_acc"][-1] > 0.5     # 10 classes: chance is 0.1


@pytest.mark.parametrize("optimizer", ["cema", "sgd"])
def test_resume_is_bit_identical(tmp_path, optimizer):
    straight, split = str(tmp_path / "straight.h5"), str(tmp_path / "split.h5")
    fit(_config(optimizer=optimizer, epochs=2, momentum=0.9), straight, progress=False, log=_quiet)
    fit(_config(optimizer=optimizer, epochs=2, momentum=0.9), split, progress=False,
        stop_after=1, log=_quiet)
    assert load_run(split).checkpoint.epoch == 1
    fit(TrainConfig(), split, resume=True, progress=False, log=_quiet)
    a, b = load_run(straight), load_run(split)
    assert b.checkpoint.epoch == 2 and b.checkpoint.step == a.checkpoint.step
    for name, value in a.checkpoint.params.items():
        np.testing.assert_array_equal(value, b.checkpoint.params[name])
    for name, value in a.checkpoint.buffers.items():
        np.testing.assert_array_equal(value, b.checkpoint.buffers[name])
    for key in ("train_loss", "test_acc"):
        assert a.metrics[key] == b.metrics[key]


def test_same_seed_same_run_different_seed_different_run(tmp_path):
    runs = [fit(_config(epochs=1, seed=s), str(tmp_path / f"{i}.h5"), progress=False, log=_quiet)
            for i, s in enumerate((0, 0, 1))]
    assert runs[0]["train_loss"] == runs[1]["train_loss"]
    assert runs[0]["train_loss"] != runs[2]["train_loss"]


def test_run_file_has_metrics_flip_ratios_and_evaluates(tmp_path):
    path = str(tmp_path / "run.h5")
    fit(_config(epochs=1), path, progress=False, log=_quiet)
    run = load_run(path)
    flips = [k for k in run.metrics if k.startswith("flip_ratio:")]
    assert flips == ["flip_ratio:fc2.w"]
    assert 0.0 < run.metrics[flips[0]][0] < 1.0
    assert evaluate_run(path)["test_acc"] == pytest.approx(run.metrics["test_acc"][-1])
    assert [p for p in os.listdir(tmp_path) if ".tmp" in p] == []


def test_float64_end_to_end(tmp_path):
    path = str(tmp_path / "run.h5")
    fit(_config(epochs=1, dtype="float64"), path, progress=False, log=_quiet)
    assert load_run(path).checkpoint.params["fc1.w"].dtype == np.float64


def test_bad_run_files_are_one_line_errors(tmp_path):
    with pytest.raises(DataFileError, match="run file not found"):
        load_run(str(tmp_path / "missing.h5"))
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(DataFileError, match="corrupt or unreadable"):
        load_run(str(junk))
    import h5py
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(DataFileError, match="not a minibnn run file"):
        load_run(str(tmp_path / "other.h5"))


def test_failed_write_leaves_previous_run_file_intact(tmp_path, monkeypatch):
    path = str(tmp_path / "run.h5")
    fit(_config(epochs=2), path, progress=False, stop_after=1, log=_quiet)
    before = load_run(path)
    import minibnn.io as io

    def broken(group, tree):
        raise OSError("disk full")
    monkeypatch.setattr(io, "_write_tree", broken)
    with pytest.raises(DataFileError, match="could not write.*disk full"):
        fit(TrainConfig(), path, resume=True, progress=False, log=_quiet)
    after = load_run(path)
    assert after.checkpoint.epoch == before.checkpoint.epoch == 1
    assert [p for p in os.listdir(tmp_path) if ".tmp" in p] == []


def test_mismatched_checkpoint_is_rejected(tmp_path):
    path = str(tmp_path / "run.h5")
    fit(_config(epochs=1), path, progress=False, log=_quiet)
    run = load_run(path)
    run.checkpoint.params["fc2.w"] = run.checkpoint.params["fc2.w"][:5]
    from minibnn.io import save_run
    save_run(path, run)
    with pytest.raises(MinibnnError, match="fc2.w"):
        evaluate_run(path)


@pytest.mark.parametrize("kw, match", [
    (dict(alpha=0.0), "alpha must be in"),
    (dict(gamma=2.0), "gamma must be in"),
    (dict(lr=-1.0), "lr must be >= 0"),
    (dict(model="resnet"), "unknown model"),
    (dict(dataset="imagenet"), "unknown dataset"),
    (dict(optimizer="lion"), "unknown optimizer"),
    (dict(scale=True), "needs latent weights"),
])
def test_bad_config_is_one_line_error(kw, match):
    with pytest.raises(MinibnnError, match=match) as info:
        _config(**kw).validate()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("optimizer", ["cema", "sgd"])
def test_numba_and_numpy_backends_train_identically(tmp_path, optimizer):
    runs = []
    for backend in ("numpy", "numba"):
        path = str(tmp_path / f"{backend}.h5")
        fit(_config(optimizer=optimizer, epochs=1, backend=backend), path, progress=False,
            log=_quiet)
        runs.append(load_run(path))
    for name, value in runs[0].checkpoint.params.items():
        np.testing.assert_array_equal(value, runs[1].checkpoint.params[name])
    assert runs[0].metrics["train_loss"] == runs[1].metrics["train_loss"]
