"""ONNX export checked with onnxruntime as the real client.

Tolerance: onnxruntime folds BatchNorm and multiplies in its own order, so a logit row agrees
to 1e-4 absolute (measured: <= 1e-5) unless a value entering a sign lies within rounding of 0
and flips one activation (measured on the default MNIST run: 1 row of 10,000, off by 0.36).
So: predictions equal on every test image, and at least 99 % of the rows within 1e-4.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import minibnn
from minibnn.commands.cli import main
from minibnn.run.spec import spec_from_options
from minibnn.data import load_dataset
from minibnn.errors import MinibnnError
from minibnn.nn import models
from minibnn.nn.containers import Sequential
from minibnn.nn.modules import Dense, Flatten, Stateless

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def ort_logits(path: str | bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"x": x})[0]


@pytest.mark.parametrize("spec", [
    dict(model="binary_mlp", hidden=[32, 16]),
    dict(model="binary_cnn", width=4),
    dict(model="binary_cnn", width=4, optimizer="sgd", lr=0.05, scale=True),
    dict(model="birealnet", width=4),
])
def test_onnxruntime_agrees_with_minibnn_on_the_test_set(
        spec: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import minibnn.run.train as train

    run = str(tmp_path / "run.h5")
    config = spec_from_options(dict(dataset="synthetic", epochs=1, batch_size=50,
                                    train_subset=200, **spec))
    ds = load_dataset("synthetic")
    if spec["model"] != "binary_mlp":       # the CNNs want 3x32x32: synthetic data of that shape
        ds = load_dataset("synthetic", shape=(3, 32, 32), n_train=200, n_test=300)
        with monkeypatch.context() as m:
            m.setattr(train, "load_data", lambda spec, data_dir=None: ds)
            train.fit(config, run, progress=False, log=lambda _: None)
    else:
        train.fit(config, run, progress=False, log=lambda _: None)
    out = str(tmp_path / "model.onnx")
    assert main(["export", run, "--format", "onnx", "--out", out]) == 0
    assert "ONNX opset 17" in capsys.readouterr().out
    expected = minibnn.load(run).logits(ds.x_test)
    got = ort_logits(out, ds.x_test)
    assert got.shape == expected.shape
    rows_close = np.abs(got - expected).max(axis=1) <= 1e-4
    assert rows_close.mean() >= 0.99, np.abs(got - expected).max()
    assert np.array_equal(got.argmax(axis=1), expected.argmax(axis=1))
    # never replaces a file without --overwrite
    assert main(["export", run, "--format", "onnx", "--out", out]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["export", run, "--format", "onnx", "--out", out, "--overwrite"]) == 0
    capsys.readouterr()
    # not a folder, not the run file itself, and no packing-only options
    for argv, message in ((["--out", str(tmp_path)], "is a directory"),
                          (["--out", run], "is the input file itself"),
                          (["--out", out, "--backend", "numpy"], "drop it")):
        assert main(["export", run, "--format", "onnx", "--overwrite", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert minibnn.load(run).epoch == 1                  # the run file is untouched


def test_sign_of_zero_is_plus_one_and_errors(tmp_path: Path) -> None:
    from minibnn.deploy.onnx_export import build_onnx

    sign_net = Sequential([Flatten(), models.Sign(), Dense("head", 4, 2)])
    model = models.Model("m", sign_net, (1, 2, 2), 2, {})
    params, buffers = model.init(np.random.default_rng(0), np.float32)
    x = np.array([[[[0.0, -0.0], [-1e-30, 2.0]]]], np.float32)
    expected = model.forward(params, buffers, x, train=False)[0]
    got = ort_logits(build_onnx(model, params, buffers).SerializeToString(), x)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    odd = Stateless(lambda x: (x, None), lambda dy, c: dy)
    bad = models.Model("m", Sequential([odd]), (1, 2, 2), 2, {})
    with pytest.raises(MinibnnError, match="no ONNX form"):
        build_onnx(bad, params, buffers)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    with pytest.raises(MinibnnError, match="float32"):
        build_onnx(model, p64, buffers)
