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
from h5edit import edited

from minibnn import optim
from minibnn.backend import gpu_available
from minibnn.run.spec import Local, config_json, read_stored_config, spec_from_options
from minibnn.errors import DataFileError, MinibnnError
from minibnn.run.files import load_run, save_run
from minibnn.nn import models
from minibnn.run.train import batch_slices, evaluate_run, fit

README = Path(__file__).resolve().parents[1] / "README.md"
GPU = [pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="no CUDA GPU")]


def _quiet(msg):
    pass


def _config(**kw):
    base = dict(dataset="synthetic", hidden=[128, 128], epochs=2, batch_size=50,
                act_ste="clipped", shift=0)
    base.update(kw)
    return spec_from_options({k: v for k, v in base.items() if v is not None})


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
    fit(None, split, resume=True, progress=False, log=_quiet)
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
    assert json.loads(b.config_json)["local"]["backend"] == "numpy"
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
    import minibnn.run.train as train

    calls: dict[float, list[tuple[int, float]]] = {}
    real = train._schedule

    def recording(config, init, steps_per_epoch, name=None):
        schedule = real(config, init, steps_per_epoch, name)
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
    stored = read_stored_config(load_run(path).config_json)[0].options()
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
    spec = spec_from_options({"optimizer": optimizer})
    defaults = optim.defaults(optimizer)
    stored = spec.to_dict()["binary_optimizer"]
    assert stored.pop("name") == optimizer
    stored.pop("schedule", None)             # the trainer's, not the constructor's
    assert stored == {k: defaults[k] for k in stored}
    # every option the constructor takes is in the variant, except the internal ones
    assert set(defaults) - set(stored) <= {"init_state", "tie", "eps", "bias_correction",
                                          "dampening", "b1", "b2"}
    adam = optim.defaults("adam")
    real = spec.real_optimizer
    assert (real.lr, real.weight_decay) == (adam["lr"], adam["weight_decay"])


@pytest.mark.parametrize("model", ["binary_mlp", "binary_cnn", "birealnet"])
def test_model_options_default_to_the_builders_defaults(model):
    spec = spec_from_options({"model": model})
    defaults = models.defaults(model)
    stored = spec.to_dict()["model"]
    assert stored.pop("name") == model
    assert stored == {k: list(v) if isinstance(v, tuple) else v
                      for k, v in defaults.items() if k in stored}
    # the builder's other keywords come from the data set or the optimiser, or are fixed
    assert set(defaults) - set(stored) <= {"input_shape", "num_classes", "binary_storage",
                                          "real_first", "in_features", "blocks_per_stage",
                                          "prelu"}


def test_resolved_defaults_are_stored_in_the_run_file(tmp_path):
    path = str(tmp_path / "run.h5")
    fit(_config(optimizer="bop", epochs=1, train_subset=200), path, progress=False, log=_quiet)
    stored = json.loads(load_run(path).config_json)
    bop = optim.defaults("bop")
    assert stored["spec"]["binary_optimizer"] == {"name": "bop", "gamma": bop["gamma"],
                                                  "threshold": bop["threshold"]}
    assert stored["local"] == {"device": "cpu", "backend": "auto", "data_dir": None,
                               "threads": None, "log_every": 50, "tensorboard": None}


@pytest.mark.parametrize("backend,device", [("auto", "cpu"), ("numpy", "cpu"),
                                            ("numba", "cpu"), ("auto", "gpu"), ("cuda", "gpu")])
def test_stored_config_keeps_its_explicit_backend(backend, device):
    text = config_json(_config(), Local(backend=backend, device=device))
    spec, local = read_stored_config(text)
    assert (local.backend, local.device) == (backend, device) and spec == _config()


def test_evaluation_uses_the_runs_backend_on_its_own_device_only():
    from minibnn.run.train import eval_backend

    cpu, gpu = Local(backend="numpy"), Local(backend="cuda", device="gpu")
    assert eval_backend(cpu, "cpu", None) == "numpy"
    assert eval_backend(gpu, "gpu", None) == "cuda"
    assert eval_backend(gpu, "cpu", None) == "auto"       # cuda cannot run NumPy arrays
    assert eval_backend(cpu, "gpu", "numpy") == "numpy"   # an explicit choice wins


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


class _DeviceArray:
    """Stands in for a CuPy array: ``get()`` copies to the host, NumPy cannot convert it."""

    def __init__(self, a):
        self.a = np.asarray(a)
        self.ndim, self.dtype, self.shape = self.a.ndim, self.a.dtype, self.a.shape

    def get(self):
        return self.a.copy()

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed")


def test_state_trees_with_device_leaves_move_to_the_host():
    from minibnn.run.train import _tree_to_device

    tree = {"m": {"count": _DeviceArray(np.int64(3)), "s": {"fc2.w": _DeviceArray(np.ones(4))}},
            "adam": {"count": 7, "v": {"w": np.zeros(2, np.float32)}}}
    host = _tree_to_device(tree, "cpu")
    assert isinstance(host["m"]["count"], np.ndarray) and host["m"]["count"] == 3
    assert host["m"]["count"].dtype == np.int64 and host["m"]["count"].ndim == 0
    np.testing.assert_array_equal(host["m"]["s"]["fc2.w"], np.ones(4))
    assert host["adam"]["count"] == 7 and host["adam"]["v"]["w"].dtype == np.float32


def test_version_1_run_file_is_a_one_line_error(tmp_path):
    import h5py

    path = str(tmp_path / "run.h5")
    fit(_config(epochs=1, train_subset=200), path, progress=False, log=_quiet)
    with edited(path) as f:
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
    import minibnn.run.files as io

    def broken(group, tree):
        raise OSError("disk full")
    monkeypatch.setattr(io, "_write_tree", broken)
    with pytest.raises(DataFileError, match="could not write.*disk full"):
        fit(None, path, resume=True, progress=False, log=_quiet)
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
    stored["spec"]["binary_optimizer"] = {"name": "bop", "gamma": 1e-4, "threshold": 1e-8}
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
    (dict(optimizer="bop", schedule="cosine"), "--schedule does not apply to --optimizer bop"),
    (dict(epochs=2.5), "--epochs must be an integer"),
    (dict(decoupled=True), "--decoupled does not apply to --optimizer cema"),
    (dict(learning_rate=0.1), "unknown option --learning-rate"),
])
def test_bad_config_is_one_line_error(kw, match):
    with pytest.raises(MinibnnError, match=re.escape(match) if "--" in match else match) as info:
        _config(**kw)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kw, match", [
    (dict(backend="cuda"), "--backend cuda runs on the GPU"),
    (dict(backend="fortran"), "unknown backend"),
    (dict(device="tpu"), "unknown device"),
])
def test_bad_machine_local_settings_are_one_line_errors(kw, match):
    with pytest.raises(MinibnnError, match=re.escape(match) if "--" in match else match) as info:
        Local(**kw)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("optimizer", ["cema", "sgd", "bop"])
def test_numba_and_numpy_backends_train_identically(tmp_path, optimizer):
    runs = []
    for backend in ("numpy", "numba"):
        path = str(tmp_path / f"{backend}.h5")
        fit(_config(optimizer=optimizer, epochs=1, shift=2), path, progress=False, log=_quiet,
            local={"backend": backend})
        runs.append(load_run(path))
    for name, value in runs[0].checkpoint.params.items():
        np.testing.assert_array_equal(value, runs[1].checkpoint.params[name])
    assert runs[0].metrics["train_loss"] == runs[1].metrics["train_loss"]


# --- the README's Python snippet -------------------------------------------------------------

def _readme_snippet() -> str:
    """The README's training-loop block (the one that calls ``opt.step_in_place``)."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
              if "opt.step_in_place(" in b]
    assert len(blocks) == 1, "README.md should hold exactly one ```python training loop"
    return blocks[0]


def test_readme_snippet_trains_exactly_like_fit(tmp_path, capsys):
    """The README's loop is ``minibnn train --dataset synthetic --shift 0``, bit for bit."""
    namespace: dict = {}
    exec(compile(_readme_snippet(), str(README), "exec"), namespace)
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", capsys.readouterr().out).group(1))
    path = str(tmp_path / "run.h5")
    metrics = fit(spec_from_options(dict(dataset="synthetic", epochs=namespace["epochs"],
                                         shift=0)), path,
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
        fit(_config(optimizer=optimizer, epochs=2, dtype="float64", shift=2), path,
            progress=False, stop_after=1, log=_quiet, local={"device": device})
        runs[device] = load_run(path)
    cpu, gpu = runs["cpu"], runs["gpu"]
    assert cpu.metrics.keys() == gpu.metrics.keys() and cpu.checkpoint.step == gpu.checkpoint.step
    from minibnn.run.train import _flatten
    for part in ("params", "buffers", "opt_state"):
        a, b = _flatten(getattr(cpu.checkpoint, part)), _flatten(getattr(gpu.checkpoint, part))
        assert list(a) == list(b), part              # same entries, same order
        for name, value in a.items():
            assert (b[name].dtype, b[name].shape) == (value.dtype, value.shape), name
    for name, value in cpu.checkpoint.params.items():
        np.testing.assert_allclose(gpu.checkpoint.params[name], value, rtol=1e-7, atol=1e-9,
                                   err_msg=name)
    assert gpu.metrics["train_loss"] == pytest.approx(cpu.metrics["train_loss"], rel=1e-9)
    # a GPU run evaluates on either device, and resumes on the CPU (device is machine-local):
    # its second epoch matches the CPU run's second epoch
    on_cpu, on_gpu = (evaluate_run(str(tmp_path / "gpu.h5"), device=d) for d in ("cpu", "gpu"))
    assert on_cpu["epoch"] == on_gpu["epoch"] == 1
    assert on_cpu["test_acc"] == on_gpu["test_acc"]
    for device in ("cpu", "gpu"):
        fit(None, str(tmp_path / f"{device}.h5"), resume=True, progress=False, log=_quiet,
            local={"device": "cpu"})
    cpu, gpu = load_run(str(tmp_path / "cpu.h5")), load_run(str(tmp_path / "gpu.h5"))
    assert json.loads(gpu.config_json)["local"]["device"] == "cpu"
    assert gpu.checkpoint.epoch == cpu.checkpoint.epoch == 2
    assert gpu.checkpoint.step == cpu.checkpoint.step
    for name, value in cpu.checkpoint.params.items():
        np.testing.assert_allclose(gpu.checkpoint.params[name], value, rtol=1e-7, atol=1e-9,
                                   err_msg=name)
    assert gpu.metrics["train_loss"] == pytest.approx(cpu.metrics["train_loss"], rel=1e-9)


# --- docs/run-file.md lists every group, dataset and attribute the writers write -------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "run-file.md"


def _doc_section(heading):
    """The text under ``### heading`` up to the next heading."""
    text = DOC.read_text()
    start = text.index(f"\n### {heading}\n")
    end = text.find("\n#", start + 1)
    return text[start:end if end >= 0 else len(text)]


def _doc_layout(heading):
    """``{path pattern: (kind, attribute names, optional)}`` from the section's ``text`` block;
    a line whose description says "(only ...)" is optional."""
    block = _doc_section(heading).split("```text\n", 1)[1].split("```", 1)[0]
    layout = {}
    for line in block.strip().splitlines():
        path, kind, *rest = re.split(r"\s{2,}", line.strip())
        text = " ".join(rest)
        listed = re.sub(r"\s*\(only.*", "", text)          # "(only ...)" is not an attribute
        attrs = set(listed[len("attrs: "):].split(", ")) if text.startswith("attrs: ") else set()
        layout[path] = (kind, attrs, "(only" in text)
    return layout


def _doc_table(heading):
    """The rows of the section's first table, backticks dropped, header row skipped."""
    rows = [line for line in _doc_section(heading).splitlines() if line.startswith("|")]
    return [[cell.strip().replace("`", "") for cell in row.strip("|").split("|")]
            for row in rows[2:]]


def _pattern(path):
    return re.compile("^" + re.sub(r"<[a-z_]+>", "[^/]+", path) + "$")


def _objects(path):
    """``(name, kind, attribute names)`` of every object in an HDF5 file, root included."""
    import h5py

    found = []
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            kind = "group" if isinstance(obj, h5py.Group) else "dataset"
            attrs = set(obj.attrs) - ({"sha256"} if kind == "dataset" else set())
            found.append(("/" + name, kind, attrs))    # every dataset's checksum: see the doc
        found.append(("/", "group", set(f.attrs)))
        f.visititems(visit)
    return found


def _check_layout(files, heading):
    """Every object of ``files`` is a documented line of its kind with exactly its attributes;
    every documented line not marked "(only ...)" occurs in some file."""
    layout = _doc_layout(heading)
    patterns = {p: _pattern(p) for p in layout}
    seen = set()
    for path in files:
        for name, kind, attrs in _objects(path):
            lines = [p for p in layout if patterns[p].match(name) and layout[p][0] == kind]
            assert lines, f"{heading}: {kind} {name} of {path} is not in {DOC.name}"
            assert any(layout[p][1] == attrs for p in lines), (name, attrs, lines)
            seen.update(lines)
    always = {p for p, (_, _, optional) in layout.items() if not optional}
    assert always <= seen, f"documented but never written: {sorted(always - seen)}"


def _generic(name, params):
    """A path with every model parameter name replaced by ``<param>``."""
    return "/".join("<param>" if part in params else part for part in name.split("/"))


def _generic_metric(name, params):
    """``flip_ratio:fc2.w`` -> ``flip_ratio:<param>``; other metric names unchanged."""
    prefix, _, rest = name.partition(":")
    return f"{prefix}:<param>" if rest in params else name


def _for_optimizer(rows, optimizer, every):
    return [row for row in rows if optimizer in row[0].split(", ") or row[0] == every]


RUNS_FOR_THE_DOC = [("cema", {}), ("bop", {}), ("bop2nd", {}), ("bop2nd_corrected", {}),
                    ("sgd", {"momentum": 0.9}), ("sgd", {"decoupled": True}),
                    ("adam", {})]


@pytest.fixture(scope="module")
def doc_runs(tmp_path_factory):
    """One freshly written run file per optimiser (sgd twice: with momentum, and without)."""
    folder = tmp_path_factory.mktemp("doc")
    runs = []
    for i, (optimizer, options) in enumerate(RUNS_FOR_THE_DOC):
        path = str(folder / f"{i}-{optimizer}.h5")
        fit(_config(optimizer=optimizer, epochs=1, train_subset=200, hidden=[32, 32], **options),
            path, progress=False, log=_quiet)
        runs.append((optimizer, path))
    return runs


def test_run_file_doc_lists_every_group_dataset_and_attribute(doc_runs):
    _check_layout([path for _, path in doc_runs], "Run file layout")
    documented = {row[1] for row in _doc_table("Run file attributes") if row[0] == "/"}
    documented_ck = {row[1] for row in _doc_table("Run file attributes")
                     if row[0] == "/checkpoint"}
    assert documented == _doc_layout("Run file layout")["/"][1]
    assert documented_ck == _doc_layout("Run file layout")["/checkpoint"][1]


def test_run_file_doc_lists_the_metrics_and_optimiser_stages(doc_runs):
    import h5py

    for optimizer, path in doc_runs:
        with h5py.File(path, "r") as f:
            params = set(f["checkpoint/params"])
            metrics = {_generic_metric(name, params) for name in f["metrics"]}
            state = f["checkpoint/opt_state"]
            stages = {(g, s) for g in state for s in state[g]}
            datasets = set()
            state.visititems(lambda name, obj: datasets.add(_generic(name, params))
                             if isinstance(obj, h5py.Dataset) else None)
        rows = _doc_table("Metrics")
        want = {row[0] for row in rows
                if row[1].startswith("every run") or optimizer in row[1].split(", ")}
        assert metrics == want, optimizer
        rows = _for_optimizer(_doc_table("Optimiser state"), optimizer, "every optimiser")
        assert stages == {(row[1], row[2]) for row in rows}, optimizer
        allowed = {f"{row[1]}/{row[2]}/{item.strip()}" for row in rows
                   for item in re.sub(r"\(.*?\)", "", row[3]).split(",") if item.strip()}
        assert datasets <= allowed, (optimizer, sorted(datasets - allowed))
    sgd_with_momentum = dict(doc_runs[4:5])["sgd"]
    with h5py.File(sgd_with_momentum, "r") as f:
        assert "m" in f["checkpoint/opt_state/binary/momentum"]   # the optional slot occurs


def test_packed_file_doc_lists_every_group_dataset_and_attribute(doc_runs, tmp_path):
    from minibnn.deploy.inference import export_packed
    from minibnn.run.files import Checkpoint, RunFile

    cema = str(tmp_path / "cema.packed.h5")
    export_packed(dict(doc_runs)["cema"], cema)
    config = config_json(_config(optimizer="sgd", scale=True, hidden=[32, 32]), Local())
    model = models.binary_mlp((1, 28, 28), hidden=(32, 32), scale=True)
    params, buffers = model.init(np.random.default_rng(0), np.float32)
    scaled_run = str(tmp_path / "scaled.h5")
    save_run(scaled_run, RunFile(config, {}, Checkpoint(params, buffers, {}, {}, 1, 0)))
    scaled = str(tmp_path / "scaled.packed.h5")
    export_packed(scaled_run, scaled)
    _check_layout([cema, scaled], "Packed file layout")
    rows = _doc_table("Packed file attributes")
    assert {r[1] for r in rows if r[0] == "/"} == _doc_layout("Packed file layout")["/"][1]
    assert ({r[1] for r in rows if r[0] == "/packed/<param>"}
            == _doc_layout("Packed file layout")["/packed/<param>"][1])


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("shape", [(3,), (64,), (130,), (16, 8, 3, 3)])
def test_sign_changes_counts_what_the_comparison_counts(backend, shape):
    """The flip count of a step that updated the weights in place (one bit per weight taken
    before it) equals the plain count ``(old >= 0) != (new >= 0)``, zeros and -0.0 included."""
    from minibnn import kernels
    from minibnn.run.train import sign_bits, sign_changes

    rng = np.random.default_rng(0)
    old = rng.choice([-1.0, -0.0, 0.0, 0.5, 1.0], size=shape).astype(np.float32)
    with kernels.use_backend(backend):
        before = sign_bits(old)
        new = old.copy()
        new[rng.random(shape) < 0.4] *= -1.0            # in place, as the optimiser writes
        new.reshape(-1)[0] = -3.0
        got = sign_changes(before, new)
    want = int(((old >= 0) != (new >= 0)).sum())
    assert want > 0 and int(got) == want and got.dtype == np.int64 and got.ndim == 0


def test_backward_frees_each_steps_cache_as_it_goes():
    """``model.backward`` consumes the cache ``forward`` returned: every step's entry is
    dropped once its backward has run (the activations are freed during the pass)."""
    model = models.binary_mlp(in_features=12, hidden=(16, 16), num_classes=3)
    params, buffers = model.init(np.random.default_rng(0), np.float32)
    x = np.random.default_rng(1).standard_normal((8, 12)).astype(np.float32)
    logits, _, cache = model.forward(params, buffers, x, train=True)
    assert isinstance(cache, list) and len(cache) > 3 and all(c is not None for c in cache)
    grads = model.backward(np.ones_like(logits), cache)
    assert set(grads) == set(params) and cache == [None] * len(cache)
