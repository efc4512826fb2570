"""Training loop: learns the synthetic set, resumes bit-identically, writes run files safely,
tells the schedules the steps it really takes, records the rates it used, and its README
snippet trains exactly like ``fit``."""
import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from minibnn import optim
from minibnn.backend import gpu_available
from minibnn.config import TrainConfig
from minibnn.errors import DataFileError, MinibnnError
from minibnn.io import load_run, save_run
from minibnn.nn import models
from minibnn.train import batch_slices, evaluate_run, fit

README = Path(__file__).resolve().parents[1] / "README.md"
GPU = [pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="no CUDA GPU")]


def _quiet(msg):
    pass


def _config(**kw):
    base = dict(dataset="synthetic", hidden=[128, 128], epochs=2, batch_size=50,
                act_ste="clipped", shift=0)
    base.update(kw)
    return TrainConfig(**base)


#: options that make each optimiser learn the synthetic set in two short epochs
LEARNS = {"cema": dict(alpha=1e-2), "sgd": dict(lr=0.01), "adam": dict(lr=0.01),
          "bop": dict(gamma=1e-1, threshold=1e-6),
          "bop2nd": dict(gamma=1e-1, threshold=1e-6, sigma=1e-3),
          "bop2nd_corrected": dict(gamma=1e-1, threshold=1e-6, sigma=1e-3)}


@pytest.mark.parametrize("optimizer", sorted(LEARNS))
def test_short_run_learns_synthetic_set(tmp_path, optimizer):
    config = _config(optimizer=optimizer, **LEARNS[optimizer])
    metrics = fit(config, str(tmp_path / "run.h5"), progress=False, log=_quiet)
    assert metrics["test_acc"][-1] >= 0.95
    assert metrics["train_loss"][-1] < metrics["train_loss"][0]


def test_cnn_trains_one_epoch(tmp_path):
    config = _config(model="binary_cnn", hidden=None, width=4, epochs=2, train_subset=2000)
    metrics = fit(config, str(tmp_path / "cnn.h5"), progress=False, log=_quiet)
    assert metrics["test_acc"][-1] > 0.5     # 10 classes: chance is 0.1


@pytest.mark.parametrize("optimizer", ["cema", "sgd"])
def test_resume_is_bit_identical(tmp_path, optimizer):
    straight, split = str(tmp_path / "straight.h5"), str(tmp_path / "split.h5")
    options = dict(LEARNS[optimizer], shift=2)      # the shifts' draws are checkpointed too
    fit(_config(optimizer=optimizer, **options), straight, progress=False, log=_quiet)
    fit(_config(optimizer=optimizer, **options), split, progress=False, stop_after=1,
        log=_quiet)
    assert load_run(split).checkpoint.epoch == 1
    fit(TrainConfig(), split, resume=True, progress=False, log=_quiet)
    a, b = load_run(straight), load_run(split)
    assert b.checkpoint.epoch == 2 and b.checkpoint.step == a.checkpoint.step
    for name, value in a.checkpoint.params.items():
        np.testing.assert_array_equal(value, b.checkpoint.params[name])
    for name, value in a.checkpoint.buffers.items():
        np.testing.assert_array_equal(value, b.checkpoint.buffers[name])
    assert a.metrics.keys() == b.metrics.keys()
    for key in a.metrics:
        if key != "seconds":
            assert a.metrics[key] == b.metrics[key], key


def test_resume_may_change_the_backend_only(tmp_path):
    straight, split = str(tmp_path / "straight.h5"), str(tmp_path / "split.h5")
    fit(_config(alpha=1e-2), straight, progress=False, log=_quiet)
    fit(_config(alpha=1e-2), split, progress=False, stop_after=1, log=_quiet)
    fit(None, split, resume=True, progress=False, log=_quiet, local={"backend": "numpy"})
    a, b = load_run(straight), load_run(split)
    assert json.loads(b.config_json)["backend"] == "numpy"
    for name, value in a.checkpoint.params.items():
        np.testing.assert_array_equal(value, b.checkpoint.params[name])
    with pytest.raises(MinibnnError, match="only machine-local settings.*not epochs"):
        fit(None, split, resume=True, progress=False, log=_quiet, local={"epochs": 5})


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
    assert evaluate_run(path, backend="numpy")["test_acc"] == evaluate_run(path)["test_acc"]
    assert [p for p in os.listdir(tmp_path) if ".tmp" in p] == []


def test_float64_end_to_end(tmp_path):
    path = str(tmp_path / "run.h5")
    fit(_config(epochs=1, dtype="float64"), path, progress=False, log=_quiet)
    assert load_run(path).checkpoint.params["fc1.w"].dtype == np.float64


# --- batches and schedules -------------------------------------------------------------------

@pytest.mark.parametrize("n, batch, sizes", [
    (1001, 100, [100] * 9 + [101]),      # a last batch of one joins the previous one
    (1000, 100, [100] * 10),
    (1002, 100, [100] * 10 + [2]),
    (201, 100, [100, 101]),
    (7, 10, [7]),
])
def test_batch_slices_cover_every_sample_once(n, batch, sizes):
    slices = batch_slices(n, batch)
    assert [s.stop - s.start for s in slices] == sizes
    covered = np.concatenate([np.arange(n)[s] for s in slices])
    np.testing.assert_array_equal(covered, np.arange(n))


def _schedule_recorder(monkeypatch):
    """Record (count, value) of every call the optimisers make to the trainer's schedules."""
    import minibnn.train as train

    calls: dict[float, list[tuple[int, float]]] = {}
    real = train._schedule

    def recording(config, init, steps_per_epoch):
        schedule = real(config, init, steps_per_epoch)
        log = calls.setdefault(init, [])

        def traced(count):
            value = schedule(count)
            log.append((int(count), value))
            return value

        return traced

    monkeypatch.setattr(train, "_schedule", recording)
    return calls


def test_each_epoch_uses_its_own_scheduled_rate_with_a_merged_last_batch(tmp_path, monkeypatch):
    """1001 samples in batches of 100: 10 steps per epoch (the last has 101), not ceil = 11."""
    calls = _schedule_recorder(monkeypatch)
    epochs, alpha0, real_lr0 = 4, 0.01, 2e-3
    path = str(tmp_path / "run.h5")
    config = _config(epochs=epochs, train_subset=1001, batch_size=100, alpha=alpha0,
                     real_lr=real_lr0, schedule="linear")
    metrics = fit(config, path, progress=False, log=_quiet)
    steps = load_run(path).checkpoint.step // epochs
    assert steps == len(batch_slices(1001, 100)) == 10
    expected = [alpha0 * (1 - e / epochs) for e in range(epochs)]
    # what the optimiser asked its schedule for, at its own step counts
    for init, trace in ((alpha0, calls[alpha0]), (real_lr0, calls[real_lr0])):
        used = [(count, value) for count, value in trace if count < epochs * steps]
        assert {count for count, _ in used} == set(range(epochs * steps))
        for count, value in used:
            assert value == pytest.approx(init * (1 - (count // steps) / epochs), rel=1e-12)
    # and what the run file records
    assert metrics["alpha"] == pytest.approx(expected, rel=1e-12)
    assert metrics["real_lr"] == pytest.approx([real_lr0 / alpha0 * a for a in expected],
                                               rel=1e-12)
    for e in range(1, epochs):
        assert metrics["alpha"][e] != metrics["alpha"][e - 1]


@pytest.mark.parametrize("optimizer, names", [
    ("bop", ("gamma", "threshold")), ("bop2nd", ("gamma", "threshold")),
    ("sgd", ("lr",)), ("adam", ("lr",)),
])
def test_rates_used_are_recorded_per_epoch(tmp_path, optimizer, names):
    path = str(tmp_path / "run.h5")
    metrics = fit(_config(optimizer=optimizer, epochs=2, train_subset=200), path,
                  progress=False, log=_quiet)
    stored = json.loads(load_run(path).config_json)
    for name in names:
        first = stored[name]
        assert metrics[name][0] == first
        if name == "lr":                          # linear decay, once per epoch
            assert metrics[name][1] == pytest.approx(first / 2, rel=1e-12)
        else:                                     # Bop's rates are not scheduled
            assert metrics[name][1] == first
    others = {"alpha", "lr", "gamma", "threshold"} - set(names)
    assert not others & set(metrics)           # only the rates this optimiser has
    assert metrics["real_lr"][1] == pytest.approx(metrics["real_lr"][0] / 2, rel=1e-12)


# --- config: one source of defaults ----------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["cema", "bop", "bop2nd", "bop2nd_corrected", "sgd",
                                       "adam"])
def test_optimizer_options_default_to_the_constructors_defaults(optimizer):
    config = TrainConfig(optimizer=optimizer).validate()
    defaults = optim.defaults(optimizer)
    for name in ("alpha", "gamma", "threshold", "sigma", "lr", "momentum", "weight_decay",
                 "decoupled"):
        assert getattr(config, name) == defaults.get(name), name
    adam = optim.defaults("adam")
    assert (config.real_lr, config.real_weight_decay) == (adam["lr"], adam["weight_decay"])


@pytest.mark.parametrize("model", ["binary_mlp", "binary_cnn", "birealnet"])
def test_model_options_default_to_the_builders_defaults(model):
    config = TrainConfig(model=model).validate()
    defaults = models.defaults(model)
    for name in ("hidden", "width", "act_ste", "weight_ste", "scale", "init_scale"):
        expected = defaults.get(name)
        expected = list(expected) if isinstance(expected, tuple) else expected
        assert getattr(config, name) == expected, name


def test_resolved_defaults_are_stored_in_the_run_file(tmp_path):
    path = str(tmp_path / "run.h5")
    fit(_config(optimizer="bop", epochs=1, train_subset=200), path, progress=False, log=_quiet)
    stored = json.loads(load_run(path).config_json)
    bop = optim.defaults("bop")
    assert (stored["gamma"], stored["threshold"]) == (bop["gamma"], bop["threshold"])
    assert stored["alpha"] is None and stored["lr"] is None       # cema's, sgd's: not bop's


def test_old_config_with_numba_backend_is_accepted():
    stored = json.loads(_config().validate().to_json())
    stored["backend"] = "numba"
    assert TrainConfig.from_json(json.dumps(stored)).backend == "numba"


# --- run files and checkpoints ---------------------------------------------------------------

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


def test_version_1_run_file_is_a_one_line_error(tmp_path):
    import h5py

    path = str(tmp_path / "run.h5")
    fit(_config(epochs=1, train_subset=200), path, progress=False, log=_quiet)
    with h5py.File(path, "r+") as f:
        f.attrs["version"] = 1
    for action in (lambda: load_run(path),
                   lambda: fit(None, path, resume=True, progress=False, log=_quiet)):
        with pytest.raises(DataFileError) as info:
            action()
        message = str(info.value)
        assert "\n" not in message and "version 1" in message and "older minibnn" in message


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
    save_run(path, run)
    with pytest.raises(MinibnnError, match="fc2.w"):
        evaluate_run(path)


def test_optimiser_state_mismatch_names_the_first_entry(tmp_path):
    path = str(tmp_path / "run.h5")
    fit(_config(epochs=2), path, progress=False, stop_after=1, log=_quiet)
    run = load_run(path)
    assert set(run.checkpoint.opt_state["binary"]) == {"m", "v", "b"}    # cema's named stages
    del run.checkpoint.opt_state["binary"]["m"]["s"]["fc2.w"]
    save_run(path, run)
    with pytest.raises(MinibnnError) as info:
        fit(None, path, resume=True, progress=False, log=_quiet)
    assert "'binary/m/s/fc2.w'" in str(info.value) and "\n" not in str(info.value)
    # a run whose stored optimiser no longer matches its state (cema's state, bop's config)
    fit(_config(epochs=2), path, progress=False, stop_after=1, log=_quiet)
    run = load_run(path)
    stored = json.loads(run.config_json)
    stored.update(optimizer="bop", alpha=None, gamma=1e-4, threshold=1e-8)
    save_run(path, dataclasses.replace(run, config_json=json.dumps(stored)))
    with pytest.raises(MinibnnError, match=r"optimizer 'bop': optimiser state 'binary/v/count'"):
        fit(None, path, resume=True, progress=False, log=_quiet)


@pytest.mark.parametrize("kw, match", [
    (dict(alpha=0.0), "alpha must be in"),
    (dict(gamma=2.0), "gamma must be in"),
    (dict(optimizer="sgd", lr=-1.0), "lr must be >= 0"),
    (dict(optimizer="sgd", alpha=0.1), "--alpha does not apply to --optimizer sgd"),
    (dict(threshold=1e-6), "--threshold does not apply to --optimizer cema"),
    (dict(model="binary_cnn"), "--hidden does not apply to --model binary_cnn"),
    (dict(model="resnet"), "unknown model"),
    (dict(dataset="imagenet"), "unknown dataset"),
    (dict(optimizer="lion"), "unknown optimizer"),
    (dict(scale=True), "needs latent weights"),
    (dict(backend="cuda"), "--backend cuda runs on the GPU"),
    (dict(backend="fortran"), "unknown backend"),
])
def test_bad_config_is_one_line_error(kw, match):
    with pytest.raises(MinibnnError, match=re.escape(match) if "--" in match else match) as info:
        _config(**kw).validate()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("optimizer", ["cema", "sgd", "bop"])
def test_numba_and_numpy_backends_train_identically(tmp_path, optimizer):
    runs = []
    for backend in ("numpy", "numba"):
        path = str(tmp_path / f"{backend}.h5")
        fit(_config(optimizer=optimizer, epochs=1, backend=backend, shift=2), path,
            progress=False, log=_quiet)
        runs.append(load_run(path))
    for name, value in runs[0].checkpoint.params.items():
        np.testing.assert_array_equal(value, runs[1].checkpoint.params[name])
    assert runs[0].metrics["train_loss"] == runs[1].metrics["train_loss"]


# --- the README's Python snippet -------------------------------------------------------------

def _readme_snippet() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "README.md should hold exactly one ```python block"
    return blocks[0]


def test_readme_snippet_trains_exactly_like_fit(tmp_path, capsys):
    """The README's loop is ``minibnn train --dataset synthetic --shift 0``, bit for bit."""
    namespace: dict = {}
    exec(compile(_readme_snippet(), str(README), "exec"), namespace)
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", capsys.readouterr().out).group(1))
    path = str(tmp_path / "run.h5")
    metrics = fit(TrainConfig(dataset="synthetic", epochs=namespace["epochs"], shift=0), path,
                  progress=False, log=_quiet)
    run = load_run(path)
    for name, value in run.checkpoint.params.items():
        np.testing.assert_array_equal(namespace["params"][name], value, err_msg=name)
    for name, value in run.checkpoint.buffers.items():
        np.testing.assert_array_equal(namespace["buffers"][name], value, err_msg=name)
    assert accuracy == pytest.approx(metrics["test_acc"][-1], abs=1e-4)


# --- GPU: the same loop on CuPy arrays -------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("optimizer", ["cema", "sgd"])
def test_gpu_run_file_matches_the_cpu_run_file(tmp_path, optimizer):
    runs = {}
    for device in ("cpu", "gpu"):
        path = str(tmp_path / f"{device}.h5")
        fit(_config(optimizer=optimizer, epochs=1, dtype="float64", shift=2, device=device),
            path, progress=False, log=_quiet)
        runs[device] = load_run(path)
    cpu, gpu = runs["cpu"], runs["gpu"]
    assert cpu.metrics.keys() == gpu.metrics.keys() and cpu.checkpoint.step == gpu.checkpoint.step
    from minibnn.train import _flatten
    for part in ("params", "buffers", "opt_state"):
        a, b = _flatten(getattr(cpu.checkpoint, part)), _flatten(getattr(gpu.checkpoint, part))
        assert list(a) == list(b), part              # same entries, same order
        for name, value in a.items():
            assert (b[name].dtype, b[name].shape) == (value.dtype, value.shape), name
    for name, value in cpu.checkpoint.params.items():
        np.testing.assert_allclose(gpu.checkpoint.params[name], value, rtol=1e-7, atol=1e-9,
                                   err_msg=name)
    assert gpu.metrics["train_loss"] == pytest.approx(cpu.metrics["train_loss"], rel=1e-9)
    # a GPU run resumes on the CPU (device is machine-local) and evaluates on either
    assert evaluate_run(str(tmp_path / "gpu.h5"), device="cpu")["epoch"] == 1
