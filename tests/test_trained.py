"""``minibnn.load``: trained models from run files and packed files, with no data set needed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import minibnn
from minibnn.commands.cli import main
from minibnn.run.spec import spec_from_options
from minibnn.data import load_dataset, synthetic_uint8
from minibnn.errors import DTypeError, MinibnnError, ShapeError
from minibnn.run.files import load_run
from minibnn.run.train import fit, run_model


@pytest.fixture(scope="module", params=["binary_mlp", "binary_cnn"])
def run_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("runs") / f"{request.param}.h5")
    options = {"hidden": [32, 16]} if request.param == "binary_mlp" else {"width": 4}
    config = spec_from_options(dict(model=request.param, dataset="synthetic", epochs=1,
                                    batch_size=50, train_subset=300, **options))
    fit(config, path, progress=False, log=lambda _: None)
    return path


def test_run_file_logits_equal_the_training_codes_eval_forward(run_path: str) -> None:
    model = minibnn.load(run_path)
    ds = load_dataset("synthetic")
    run = load_run(run_path)
    _, _, reference_model = run_model(run)
    expected, _, _ = reference_model.forward(run.checkpoint.params, run.checkpoint.buffers,
                                             ds.x_test, train=False)
    got = model.logits(ds.x_test, batch_size=10_000)
    assert got.shape == (len(ds.x_test), 10) and np.array_equal(got, expected)
    assert np.array_equal(model.predict(ds.x_test, batch_size=10_000), expected.argmax(axis=1))
    assert model.input_shape == (1, 28, 28) and model.num_classes == 10 and model.epoch == 1
    for name in model.binary_names:
        w = model.params[name]
        assert w.dtype == np.int8 and set(np.unique(w)) <= {-1, 1}
    assert "binary MACs" in model.summary() and "run file" in repr(model)


def test_preprocess_is_the_training_standardisation(run_path: str) -> None:
    model = minibnn.load(run_path)
    _, _, x_test_u8, _ = synthetic_uint8()
    np.testing.assert_array_equal(model.preprocess(x_test_u8), load_dataset("synthetic").x_test)
    with pytest.raises(DTypeError, match="uint8"):
        model.preprocess(x_test_u8.astype(np.float32))


def test_bad_input_is_a_one_line_error(run_path: str) -> None:
    model = minibnn.load(run_path)
    with pytest.raises(ShapeError, match="input must have shape"):
        model.logits(np.zeros((2, 1, 27, 28), np.float32))
    with pytest.raises(DTypeError, match="float32"):
        model.logits(np.zeros((2, 1, 28, 28), np.float64))
    with pytest.raises(MinibnnError, match="not found"):
        minibnn.load(run_path + ".missing")


def test_packed_file_predicts_as_the_run_and_export_needs_no_data(
        run_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import minibnn.deploy.inference
    import minibnn.run.train

    def no_data(*_: object, **__: object) -> None:
        raise AssertionError("export must not load the data set")
    monkeypatch.setattr(minibnn.run.train, "load_data", no_data)
    monkeypatch.setattr(minibnn.deploy.inference, "load_data", no_data)
    out = str(tmp_path / "model.packed.h5")
    assert main(["export", run_path, "--packed", "--out", out]) == 0
    capsys.readouterr()
    packed = minibnn.load(out)
    monkeypatch.undo()
    ds = load_dataset("synthetic")
    run = minibnn.load(run_path)
    assert np.array_equal(packed.predict(ds.x_test), run.predict(ds.x_test))
    np.testing.assert_allclose(packed.logits(ds.x_test), run.logits(ds.x_test), atol=1e-4)
    for name in run.binary_names:
        assert np.array_equal(packed.params[name], run.params[name])
    assert "packed file" in repr(packed)


def test_eval_takes_a_data_dir(run_path: str, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    import minibnn.data as data

    asked, real = [], data.load_dataset

    def spy(name: str, data_dir: object = None, **kw: object):
        asked.append(data_dir)
        return real(name, data_dir=data_dir, **kw)
    monkeypatch.setattr(data, "load_dataset", spy)
    assert main(["eval", run_path, "--data-dir", str(tmp_path)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert asked == [str(tmp_path)]            # the flag, not the run's stored folder, is used


def test_readme_load_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The README's ``minibnn.load`` block, on a synthetic run at the quickstart's path (the
    only change: "mnist" -> "synthetic", so no download is needed)."""
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
              if "minibnn.load(" in b]
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    config = spec_from_options(dict(dataset="synthetic", epochs=1, hidden=[32, 16],
                                    train_subset=200))
    fit(config, "runs/binary_mlp-mnist-cema.h5", progress=False, log=lambda _: None)
    exec(compile(blocks[0].replace('"mnist"', '"synthetic"'), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "TrainedModel(binary_mlp" in out and "test accuracy" in out and "int8" in out


def test_eval_loads_only_the_test_split(run_path: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    import minibnn.data as data
    from minibnn.data.cache import load_split, save_split

    calls = []
    real = data.load_dataset

    def spy(*args: object, **kw: object) -> object:
        calls.append(kw.get("test_only"))
        return real(*args, **kw)  # type: ignore[arg-type]
    monkeypatch.setattr(data, "load_dataset", spy)
    assert main(["eval", run_path]) == 0 and main(["eval", run_path, "--packed"]) == 0
    capsys.readouterr()
    assert calls == [True, True]
    full = real("synthetic")
    test = real("synthetic", test_only=True)
    assert test.x_train.shape == (0, 1, 28, 28) and len(test.y_train) == 0
    assert np.array_equal(test.x_test, full.x_test) and np.array_equal(test.y_test, full.y_test)
    # from a cache file only the test arrays are read
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (7, 1, 4, 4)).astype(np.uint8)
    y = rng.integers(0, 3, 7).astype(np.uint8)
    path = tmp_path / "c.npz"
    save_split(path, x[:5], y[:5], x[5:], y[5:])
    x_tr, y_tr, x_te, y_te = load_split(path, test_only=True)
    assert x_tr.shape == (0, 1, 4, 4) and y_tr.shape == (0,)
    assert np.array_equal(x_te, x[5:]) and np.array_equal(y_te, y[5:])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_refused_by_run_and_packed_models(run_path: str, tmp_path: Path,
                                                              bad: float) -> None:
    """NaN or infinite pixels are a one-line error naming how many and where, never a class."""
    from minibnn.deploy.inference import pack_run

    x = load_dataset("synthetic").x_test[:5].copy()
    x[3, 0, 2, 7] = bad
    x[4, 0, 0, 0] = bad
    for who, forward in (("logits", minibnn.load(run_path).predict),
                         ("(packed)", pack_run(run_path).forward)):
        with pytest.raises(DTypeError) as info:
            forward(x)
        message = str(info.value)
        assert "\n" not in message and who in message
        assert "x holds 2 NaN or infinite values (the first at index (3, 0, 2, 7), sample 3)" \
            in message
    assert minibnn.load(run_path).predict(np.nan_to_num(x)).shape == (5,)   # the way out
