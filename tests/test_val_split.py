"""``--val-split``: a seeded, stratified validation split logged every epoch."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minibnn.commands.cli import main
from minibnn.run.spec import RunSpec, read_stored_config, spec_from_options
from minibnn.data.split import validation_split
from minibnn.errors import MinibnnError
from minibnn.run.files import load_run
from minibnn.run.train import fit


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=4, max_size=300), st.data(), st.integers(0, 2**31))
def test_split_is_exact_stratified_disjoint_and_seeded(labels: list[int], data: st.DataObject,
                                                       seed: int) -> None:
    y = np.array(labels)
    n = data.draw(st.integers(1, len(y) - 2))
    train, val = validation_split(y, n, seed)
    assert len(val) == n and len(train) == len(y) - n
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(y)))
    assert np.all(np.diff(val) > 0) and np.all(np.diff(train) > 0)
    for c in np.unique(y):                   # each class within one image of its share
        share = n * np.sum(y == c) / len(y)
        assert abs(np.sum(y[val] == c) - share) < 1
    again = validation_split(y, n, seed)
    assert np.array_equal(again[1], val)


def test_split_depends_on_the_seed_and_rejects_bad_sizes() -> None:
    y = np.repeat(np.arange(10), 100)
    assert not np.array_equal(validation_split(y, 100, 0)[1], validation_split(y, 100, 1)[1])
    assert np.all(np.bincount(y[validation_split(y, 100, 0)[1]]) == 10)
    for n in (0, 999, -3):
        with pytest.raises(MinibnnError, match="--val-split"):
            validation_split(y, n, 0)


def config(**kw: object) -> RunSpec:
    base = dict(dataset="synthetic", hidden=[32, 16], epochs=3, batch_size=50, train_subset=600,
                val_split=100)
    base.update(kw)
    return spec_from_options(base)


def test_training_logs_val_every_epoch_and_test_at_the_end(tmp_path: Path) -> None:
    m = fit(config(), str(tmp_path / "a.h5"), progress=False, log=lambda _: None)
    assert len(m["val_acc"]) == len(m["val_loss"]) == 3
    assert all(0 <= v <= 1 for v in m["val_acc"])
    assert np.isnan(m["test_acc"][:2]).all() and 0 <= m["test_acc"][2] <= 1
    every = fit(config(test_every_epoch=True), str(tmp_path / "b.h5"), progress=False,
                log=lambda _: None)
    assert not np.isnan(every["test_acc"]).any()
    assert every["val_acc"] == m["val_acc"]            # the same split and the same training
    assert every["train_loss"] == m["train_loss"]
    # no split: as before, the test set every epoch and no val metrics
    plain = fit(config(val_split=0), str(tmp_path / "c.h5"), progress=False, log=lambda _: None)
    assert "val_acc" not in plain and not np.isnan(plain["test_acc"]).any()


def test_resume_with_a_split_is_bit_identical(tmp_path: Path) -> None:
    straight = fit(config(), str(tmp_path / "s.h5"), progress=False, log=lambda _: None)
    path = str(tmp_path / "r.h5")
    fit(config(), path, progress=False, stop_after=1, log=lambda _: None)
    resumed = fit(None, path, resume=True, progress=False, log=lambda _: None)
    assert set(resumed) == set(straight)
    for k in straight:
        if k != "seconds":
            assert np.array_equal(resumed[k], straight[k], equal_nan=True), k
    a, b = load_run(path).checkpoint, load_run(str(tmp_path / "s.h5")).checkpoint
    for k in a.params:
        assert np.array_equal(a.params[k], b.params[k]), k


#: ``TrainConfig().validate().to_json()`` of the last flat-config version (6b48fd0)
OLD_FLAT_CONFIG = {
    "act_ste": "approx", "alpha": 0.001, "backend": "auto", "batch_size": 100, "data_dir": None,
    "dataset": "mnist", "decoupled": None, "device": "cpu", "dtype": "float32", "epochs": 10,
    "gamma": 0.1, "hidden": [1024, 1024], "init_scale": 1.0, "label_smoothing": 0.0, "lr": None,
    "model": "binary_mlp", "momentum": None, "optimizer": "cema", "real_lr": 0.001,
    "real_schedule": "linear", "real_weight_decay": 0.0, "scale": False, "schedule": "linear",
    "seed": 0, "shift": 2, "sigma": None, "test_every_epoch": False, "threshold": None,
    "train_subset": None, "val_split": 0, "weight_decay": None, "weight_ste": "identity",
    "width": None}


def test_cli_errors_and_old_configs_without_the_new_fields(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    assert main(["train", "--dataset", "synthetic", "--test-every-epoch", "--out",
                 str(tmp_path / "x.h5")]) == 2
    assert "--test-every-epoch only applies" in capsys.readouterr().err
    old = dict(OLD_FLAT_CONFIG)          # as the flat config of earlier versions stored it
    del old["val_split"], old["test_every_epoch"]
    restored, _ = read_stored_config(json.dumps(old))
    assert restored.data.val_split == 0 and restored.loop.test_every_epoch is False
