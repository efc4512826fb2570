"""No host reads per training step: the trainer's GPU path, checked on the CPU and on a GPU.

On a GPU every read of a device value on the host (``int(x)``, ``float(x)``, ``bool(x)``,
``x.item()``, ``x.get()``, printing it) waits for the device, so the trainer promises to read
nothing per step: loss, correct predictions and flips accumulate on the device and are read
once per epoch (the progress bar reads the loss every ``LOSS_EVERY`` steps; not in these runs).

On the CPU: ``minibnn train --device gpu`` runs with a stand-in for CuPy (``FakeCupy``): NumPy
under CuPy's rules, whose arrays (``DeviceArray``) record every host read and where it came
from. The same run with twice the steps per epoch must read exactly as often; a read inside
the step shows up in the difference, named by file and line. The kernels run their readable
reference bodies (``--backend numpy``), which is what a GPU runs for every op without a CUDA
body; the CUDA bodies themselves are checked on a GPU by the last test below
(``cupyx.allow_synchronize(False)`` raises at the first synchronising read).

What the stand-in cannot see (only the GPU test does): ``np.asarray`` of a device array (CuPy
raises; a NumPy subclass just converts), host and device arrays mixed in one expression, and
synchronisations without a conversion to a Python value (boolean-mask indexing, ``nonzero``,
shapes that depend on data).
"""
from __future__ import annotations

import collections
import importlib
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from minibnn import backend
from minibnn.backend import gpu_available
from minibnn.run.spec import spec_from_options
from minibnn.run.train import fit

from fake_devices import READS, DeviceArray, Namespace

class FakeCupy(Namespace):
    """What ``backend._cupy()`` returns in these tests: a GPU that is NumPy."""

    cuda = types.SimpleNamespace(is_available=lambda: True)

    def __init__(self) -> None:
        super().__init__(np)


FAKE_CUPY = FakeCupy()
DeviceArray.NAMESPACE = FAKE_CUPY


def _reads_of_one_epoch(tmp_path: Path, model: str, steps: int) -> collections.Counter[str]:
    """Train one epoch of ``steps`` steps on the stand-in GPU; the host reads it made."""
    options = {"binary_mlp": {"hidden": [32, 32]}, "binary_cnn": {"width": 4},
               "birealnet": {"width": 4}}[model]
    spec = spec_from_options({"model": model, **options, "dataset": "synthetic", "epochs": 1,
                              "train_subset": 20 * steps, "batch_size": 20})
    READS.clear()
    fit(spec, str(tmp_path / f"{model}-{steps}.h5"), progress=False, log=lambda line: None,
        local={"device": "gpu", "backend": "numpy"})
    return collections.Counter(READS)


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "_cupy", lambda: FAKE_CUPY)


@pytest.mark.parametrize("model", ["binary_mlp", "binary_cnn", "birealnet"])
def test_the_gpu_path_reads_nothing_per_step(fake_gpu, tmp_path, model):
    few = _reads_of_one_epoch(tmp_path, model, steps=3)
    many = _reads_of_one_epoch(tmp_path, model, steps=6)
    per_step = {where: many[where] - few[where] for where in many if many[where] != few[where]}
    assert not per_step, f"host reads that grow with the steps: {per_step}"
    # the per-epoch reads happen (the recorder sees them), and the data really ran as
    # stand-in device arrays
    assert any("train.py" in where for where in few), few


def test_the_recorder_sees_a_read_per_step(fake_gpu, tmp_path, monkeypatch):
    """The check can fail: a step that reads its loss (as an int() in the loop would) is
    caught, named by its line."""
    train_module = importlib.import_module("minibnn.run.train")
    step = train_module.train_step

    def reading_step(*args: Any, **kwargs: Any) -> Any:
        loss, right, flips = step(*args, **kwargs)
        float(loss)                                     # a per-step host read
        return loss, right, flips

    monkeypatch.setattr(train_module, "train_step", reading_step)
    few = _reads_of_one_epoch(tmp_path, "binary_mlp", steps=3)
    many = _reads_of_one_epoch(tmp_path, "binary_mlp", steps=6)
    grown = [where for where in many if many[where] != few[where]]
    assert grown and all("float" in where for where in grown), grown


# =========================================================================== GPU only


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("model", ["binary_mlp", "binary_cnn"])
def test_training_steps_never_synchronise_on_gpu(model):
    """A few steps of the trainer's ``train_step`` on a real GPU, with the CUDA bodies,
    inside ``cupyx.allow_synchronize(False)`` (after one step that compiles the kernels)."""
    import cupyx

    from minibnn import kernels
    from minibnn.data import load_dataset
    train_module = importlib.import_module("minibnn.run.train")
    spec = spec_from_options({"model": model, "dataset": "synthetic", "batch_size": 64})
    ds = load_dataset("synthetic", n_train=256)
    net = train_module.model_from_spec(spec, ds.x_train.shape[1:], ds.num_classes)
    rng = np.random.default_rng(0)
    params, buffers = net.init(rng, np.float32)
    optimizer = train_module.optimizer_from_spec(spec, net, steps_per_epoch=4)
    to_gpu = train_module._tree_to_device
    state = train_module.TrainState(to_gpu(params, "gpu"), to_gpu(buffers, "gpu"), {}, rng)
    state.opt_state = to_gpu(optimizer.init(params), "gpu")
    x, y = backend.to_device(ds.x_train[:64], "gpu"), backend.to_device(ds.y_train[:64], "gpu")
    with kernels.use_backend("cuda"):
        train_module.train_step(net, optimizer, state, x, y)
        with cupyx.allow_synchronize(False):
            for _ in range(3):
                train_module.train_step(net, optimizer, state, x, y)
