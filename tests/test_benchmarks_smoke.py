"""Smoke runs of the benchmark scripts: tiny sizes, one round, a printed table, no timings checked.

CI does not install torch: every script must run without it (the torch columns read n/a);
the runs with torch are skipped where it is missing.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = {
    "bench_xnor": "XNOR GEMM",
    "bench_optimizer": "fused optimiser step",
    "bench_kernels": "Numba kernel vs NumPy reference twin",
    "bench_train": "training step: minibnn vs PyTorch",
    "bench_startup": "start-up",
    "bench_layers": "conv2d 3x3 forward+backward",
    "bench_epoch": "CIFAR-10-shaped epoch",
    "bench_contention": "two concurrent trainings vs one alone",
    "bench_data_memory": "peak resident memory and time per run",
    "bench_packed_eval": "packed vs float eval forward",
    "bench_gemm": "MLP step GEMMs: minibnn fixed blocks vs numpy.matmul",
}


def load(name: str) -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"_smoke_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_smoke_without_torch(name: str, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    module = load(name)
    if hasattr(module, "try_import_torch"):
        monkeypatch.setattr(module, "try_import_torch", lambda: None)
    out_json = tmp_path / "result.json"
    assert module.main(["--smoke", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert SCRIPTS[name] in out
    assert "-----" in out                                   # a table was printed
    data = json.loads(out_json.read_text())
    assert data["benchmark"] == name.removeprefix("bench_")


@pytest.mark.parametrize("name", ["bench_xnor", "bench_train", "bench_optimizer", "bench_layers",
                                  "bench_interference"])
def test_smoke_with_torch(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    module = load(name)
    assert module.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    title = SCRIPTS.get(name, "PyTorch step alone and interleaved with minibnn steps")
    assert title in out and "torch not installed" not in out


@pytest.mark.parametrize("name, shape, options", [
    ("binary_mlp", (1, 28, 28), {"hidden": [64, 64]}),
    ("binary_cnn", (3, 32, 32), {"width": 4}),
    ("birealnet", (3, 32, 32), {"width": 4}),
])
def test_the_pytorch_twins_compute_minibnn_s_forward(name: str, shape: tuple[int, ...],
                                                     options: dict) -> None:
    """bench_train's PyTorch peer is the same network: train-mode logits agree (float32)."""
    torch = pytest.importorskip("torch")
    import numpy as np

    from minibnn.nn.models import build_model

    bench = load("bench_train")
    model = build_model(name, input_shape=shape, num_classes=10, **options)
    params, buffers = model.init(np.random.default_rng(0), np.float32)
    for key in model.binary_names:
        params[key] = np.where(params[key] >= 0, 1.0, -1.0).astype(np.float32)
    x = np.random.default_rng(1).standard_normal((8,) + shape).astype(np.float32)
    logits, _, _ = model.forward(params, buffers, x, train=True)
    net = bench.torch_step(torch, model, params, 8).net
    with torch.no_grad():
        twin = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(twin, logits, rtol=1e-5, atol=1e-5)


def test_birealnet_ops_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    """bench_birealnet_ops against this checkout's own HEAD: each timed backward gets a cache of
    its own (a backward pass consumes its cache) and both tables print."""
    module = load("bench_birealnet_ops")
    assert module.main(["--before", "HEAD", "--repeats", "1", "--batch", "2", "--width",
                        "4"]) == 0
    out = capsys.readouterr().out
    assert "per twin" in out and "Bi-Real residual block" in out and "-----" in out
