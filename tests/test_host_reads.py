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
body; the CUDA bodies themselves are checked on a GPU by ``TestNoHostReadOnGpu`` below
(``cupyx.allow_synchronize(False)`` raises at the first synchronising read).
"""
from __future__ import annotations

import collections
import importlib
import sys
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from minibnn import backend
from minibnn.backend import gpu_available
from minibnn.run.spec import spec_from_options
from minibnn.run.train import fit

#: NumPy functions that answer about dtypes and shapes, not array values
_METADATA = {"dtype", "result_type", "can_cast", "issubdtype", "isscalar", "ndim", "shape",
             "size", "iinfo", "finfo", "promote_types", "broadcast_shapes"}


def _where() -> str:
    """The minibnn line that asked for the read (the innermost frame in the package)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if "/minibnn/" in name and "/tests/" not in name:
            return f"{Path(name).name}:{frame.f_lineno} ({frame.f_code.co_name})"
        frame = frame.f_back
    return "outside minibnn"


class DeviceArray(np.ndarray):
    """A NumPy array standing in for a CuPy array: results stay device arrays (0-d arrays,
    never scalars, as in CuPy) and every conversion to a host value is logged in ``READS``."""

    def __array_namespace__(self, api_version: Any = None) -> Any:
        return FAKE_CUPY

    def __array_wrap__(self, arr: Any, context: Any = None, return_scalar: bool = False) -> Any:
        return _device(arr)

    def _host(self, how: str) -> np.ndarray:
        READS.append(f"{how} at {_where()}")
        return self.view(np.ndarray)

    def __int__(self) -> int:
        return int(self._host("int"))

    def __float__(self) -> float:
        return float(self._host("float"))

    def __bool__(self) -> bool:
        return bool(self._host("bool"))

    def __index__(self) -> int:
        return self._host("index").__index__()

    def item(self, *args: Any) -> Any:
        return self._host("item").item(*args)

    def tolist(self) -> Any:
        return self._host("tolist").tolist()

    def get(self) -> np.ndarray:
        """CuPy's device -> host copy (``backend.to_numpy`` calls it)."""
        return self._host("get").copy()

    def __repr__(self) -> str:
        return repr(self._host("repr"))

    def __format__(self, spec: str) -> str:
        return format(self._host("format"), spec)

    def __getitem__(self, key: Any) -> Any:
        return _device(super().__getitem__(key))



def _reduction(name: str) -> Callable[..., Any]:
    """A reduction method of DeviceArray: a 0-d device array where NumPy gives a scalar."""
    def method(self: DeviceArray, *args: Any, **kwargs: Any) -> Any:
        return _device(getattr(np.ndarray, name)(self, *args, **kwargs))
    method.__name__ = name
    return method


for _name in ("argmax", "argmin", "max", "min", "sum", "mean", "any", "all"):
    setattr(DeviceArray, _name, _reduction(_name))


def _device(value: Any) -> Any:
    """NumPy results as device arrays: arrays viewed, scalars as 0-d arrays (CuPy's rules)."""
    if isinstance(value, np.ndarray):
        return value if isinstance(value, DeviceArray) else value.view(DeviceArray)
    if isinstance(value, (np.generic, bool, int, float)):
        return np.asarray(value).view(DeviceArray)
    if isinstance(value, tuple):
        return tuple(_device(v) for v in value)
    return value


class _Namespace:
    """A module of NumPy (or a submodule) whose functions return device arrays."""

    def __init__(self, module: types.ModuleType) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._module, name)
        if isinstance(value, types.ModuleType):
            return _Namespace(value)
        if not callable(value) or isinstance(value, type) or name in _METADATA:
            return value
        return lambda *args, **kwargs: _device(value(*args, **kwargs))


class FakeCupy(_Namespace):
    """What ``backend._cupy()`` returns in these tests: a GPU that is NumPy."""

    cuda = types.SimpleNamespace(is_available=lambda: True)

    def __init__(self) -> None:
        super().__init__(np)


FAKE_CUPY = FakeCupy()
READS: list[str] = []


def _reads_of_one_epoch(tmp_path: Path, model: str, steps: int) -> collections.Counter[str]:
    """Train one epoch of ``steps`` steps on the stand-in GPU; the host reads it made."""
    options = {"binary_mlp": {"hidden": [32, 32]}, "binary_cnn": {"width": 4}}[model]
    spec = spec_from_options({"model": model, **options, "dataset": "synthetic", "epochs": 1,
                              "train_subset": 20 * steps, "batch_size": 20})
    READS.clear()
    fit(spec, str(tmp_path / f"{model}-{steps}.h5"), progress=False, log=lambda line: None,
        local={"device": "gpu", "backend": "numpy"})
    return collections.Counter(READS)


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "_cupy", lambda: FAKE_CUPY)


@pytest.mark.parametrize("model", ["binary_mlp", "binary_cnn"])
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
