"""``minibnn export --format torch`` and ``minibnn.torch.build``: a run continued in PyTorch.

Tiny runs (synthetic data, one epoch) of every model minibnn trains (reactnet too, and real
weights and real activations, the two-step recipe's) are exported and rebuilt as
``torch.nn.Module``s, then checked against minibnn itself on the same inputs:

* eval-mode logits against ``minibnn.load(run).logits``: float64 runs within 1e-10 absolute
  (measured: <= 3e-15); float32 runs within 1e-4 on at least 99 % of the rows, and at least
  99 % of the predictions equal (measured: <= 1e-6, birealnet and binary_cnn too; a value entering a sign
  within rounding of 0 can flip one activation, as in tests/test_onnx.py). The float32 run
  is an MLP: a float32 CNN run compiles its own kernels first (~8 s on a loaded machine);
* train-mode STE gradients of every parameter and the updated BatchNorm running statistics
  against minibnn's backward on one batch: float64 within 1e-9 of each gradient's largest
  entry (measured: <= 1e-13), float32 within 1e-4 (measured: <= 5e-6);
* a float64 CEMA run (and latent Adam, SGD and SGDW runs) resumed in PyTorch with
  ``minibnn.torch``'s optimisers follows minibnn's ``train_step`` on the same batches for six
  updates across two schedule changes: binary weights (latent ones' signs) identical, losses
  within 1e-12, real parameters, latent weights, BatchNorm statistics and CEMA's m, v (SGD's
  momentum buffer) within 1e-9 relative;
* the CLI writes the file, refuses to overwrite it, and turns bad input into one line (exit 2).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="minibnn.torch needs PyTorch (the torch extra)")

import minibnn  # noqa: E402
import minibnn.run.train as train  # noqa: E402
from minibnn.commands.cli import main  # noqa: E402
from minibnn.data import load_dataset  # noqa: E402
from minibnn.errors import MinibnnError  # noqa: E402
from minibnn.nn.functional import softmax_cross_entropy  # noqa: E402
from minibnn.ops.sign import STE_NAMES, ste_grad  # noqa: E402
from minibnn.run.files import load_run  # noqa: E402
from minibnn.run.spec import spec_from_options  # noqa: E402
from minibnn.deploy.torch_export import export_torch  # noqa: E402
from minibnn.torch.model import STE_GRADS, MinibnnNet, SignSTE, build  # noqa: E402
from minibnn.torch.resume import optimizers  # noqa: E402

#: run name -> (dtype, options): every model, both weight storages, every STE in some layer
RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "mlp64": ("float64", dict(hidden=[32, 16], alpha=1e-2, epochs=3)),
    "mlp64_adam": ("float64", dict(hidden=[32, 16], optimizer="adam", lr=0.05, scale=True,
                                   weight_ste="clipped", epochs=3)),
    "mlp64_sgd": ("float64", dict(hidden=[32, 16], optimizer="sgd", lr=0.5, momentum=0.9,
                                  weight_decay=0.05, epochs=3)),
    "mlp64_sgdw": ("float64", dict(hidden=[32, 16], optimizer="sgd", lr=0.5, momentum=0.9,
                                   weight_decay=0.05, decoupled=True, epochs=3)),
    "cnn64": ("float64", dict(model="binary_cnn", width=4)),
    "cnn64_scaled": ("float64", dict(model="binary_cnn", width=4, optimizer="adam", lr=0.05,
                                     scale=True, weight_ste="approx", act_ste="swish")),
    "bireal64": ("float64", dict(model="birealnet", width=4, act_ste="clipped")),
    # reactnet (RSign, RPReLU, the AvgPool shortcut, Concat), 16 -> 8 -> 4 -> 2 over 4 stages
    "react64": ("float64", dict(model="reactnet", width=2)),
    "react64_scaled": ("float64", dict(model="reactnet", width=2, optimizer="adam", lr=0.05,
                                       scale=True, act_ste="clipped", weight_ste="approx")),
    # the two-step recipe's networks: real weights with binary activations (step 1), and the
    # real teacher (ReLU activations); real weights are Dense/Conv2d under the binary names
    "react64_step1": ("float64", dict(model="reactnet", width=2, weights="real",
                                      optimizer="adam", lr=0.05)),
    "react64_teacher": ("float64", dict(model="reactnet", width=2, weights="real",
                                        activations="real", optimizer="adam", lr=0.05)),
    "mlp64_teacher": ("float64", dict(hidden=[32, 16], weights="real", activations="real",
                                      optimizer="adam", lr=0.05)),
    "mlp32": ("float32", dict(hidden=[32, 16])),
}


def _dataset(dtype: str, options: dict[str, Any]) -> Any:
    """Synthetic data: MNIST-shaped for the MLP, small 3x16x16 images for the CNNs."""
    shape = (1, 28, 28) if options.get("model", "binary_mlp") == "binary_mlp" else (3, 16, 16)
    return load_dataset("synthetic", shape=shape, n_train=100, n_test=60, dtype=dtype)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str, Any]]:
    """name -> (run file, its PyTorch export, dataset): one finished epoch each."""
    folder = tmp_path_factory.mktemp("torch_export")
    out = {}
    for name, (dtype, options) in RUNS.items():
        ds = _dataset(dtype, options)
        spec = spec_from_options(dict(dataset="synthetic", batch_size=50, shift=0,
                                      dtype=dtype, **{"epochs": 1, **options}))
        path = str(folder / f"{name}.h5")
        with pytest.MonkeyPatch.context() as m:
            m.setattr(train, "load_data", lambda spec, data_dir=None, test_only=False: ds)
            train.fit(spec, path, progress=False, stop_after=1, log=lambda _: None)
        export_torch(path, path + ".pt")
        out[name] = (path, path + ".pt", ds)
    return out


def _numpy(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy()


# ------------------------------------------------------------------ the STE table


@pytest.mark.parametrize("ste", STE_NAMES)
@pytest.mark.parametrize("beta", [5.0, 1.5])
def test_torch_ste_table_is_minibnns(ste: str, beta: float) -> None:
    x = np.concatenate([np.linspace(-3, 3, 601), [-1.0, 1.0, 0.0, -0.0, 1e-30, -800.0, 800.0,
                                                  np.nextafter(1.0, 2.0)]])
    want = ste_grad(x, ste, beta)
    got = _numpy(STE_GRADS[ste](torch.from_numpy(x), beta))
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-300)
    # through autograd: sign forward (sign(0) = sign(-0) = +1), dy * ste'(x) backward
    xt = torch.from_numpy(x).requires_grad_()
    dy = np.random.default_rng(0).standard_normal(x.shape)
    y = SignSTE.apply(xt, ste, beta)
    y.backward(torch.from_numpy(dy))
    assert np.array_equal(_numpy(y), np.where(x >= 0, 1.0, -1.0))
    np.testing.assert_allclose(_numpy(xt.grad), dy * want, rtol=1e-13, atol=1e-300)


# ------------------------------------------------------------------ forward and backward


@pytest.mark.parametrize("name", RUNS)
def test_eval_logits_equal_minibnns(runs: dict, name: str) -> None:
    path, pt, ds = runs[name]
    expected = minibnn.load(path).logits(ds.x_test)
    net = build(pt).eval()
    with torch.no_grad():
        got = _numpy(net(torch.from_numpy(ds.x_test)))
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if RUNS[name][0] == "float64":
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    else:
        assert (np.abs(got - expected).max(axis=1) <= 1e-4).mean() >= 0.99
        assert (got.argmax(axis=1) == expected.argmax(axis=1)).mean() >= 0.99


@pytest.mark.parametrize("name", RUNS)
def test_ste_gradients_equal_minibnns_backward(runs: dict, name: str) -> None:
    path, pt, ds = runs[name]
    trained = minibnn.load(path)
    x, y = ds.x_train[:50], ds.y_train[:50].astype(np.int64)
    logits, new_buffers, cache = trained.model.forward(trained.stored_params, trained.buffers,
                                                       x, train=True)
    loss, dlogits = softmax_cross_entropy(logits, y)
    grads = trained.model.backward(dlogits, cache)

    net = build(pt).train()
    out = net(torch.from_numpy(x))
    torch_loss = torch.nn.functional.cross_entropy(out, torch.from_numpy(y))
    torch_loss.backward()
    tol = 1e-9 if RUNS[name][0] == "float64" else 1e-4
    assert abs(torch_loss.item() - float(loss)) <= tol
    named = dict(net.named_parameters())
    assert set(named) == set(grads)
    for key, g in grads.items():
        diff = np.abs(_numpy(named[key].grad) - g).max()
        assert diff <= tol * max(np.abs(g).max(), 1e-12), f"{key}: {diff}"
    buffers = dict(net.named_buffers())
    assert set(buffers) == set(new_buffers)
    for key, value in new_buffers.items():
        np.testing.assert_allclose(_numpy(buffers[key]), value, rtol=tol, atol=tol,
                                   err_msg=key)


def test_export_is_a_weights_only_checkpoint(runs: dict) -> None:
    path, pt, ds = runs["mlp64"]
    data = torch.load(pt, weights_only=True)
    run = load_run(path)
    ck = run.checkpoint
    assert (data["format"], data["version"]) == ("minibnn-torch", 1)
    assert data["minibnn_version"] == minibnn.__version__
    assert (data["epoch"], data["step"], data["steps_per_epoch"]) == (1, 2, 2)
    assert data["spec"]["model"]["hidden"] == [32, 16] and data["dtype"] == "float64"
    assert data["mean"] == list(ds.mean) and data["binary"] == ["fc2.w"]
    assert set(data["state_dict"]) == set(ck.params) | set(ck.buffers)
    for key, value in {**ck.params, **ck.buffers}.items():
        assert np.array_equal(_numpy(data["state_dict"][key]), value), key
    assert set(np.unique(_numpy(data["state_dict"]["fc2.w"]))) == {-1.0, 1.0}
    cema = data["optimizer_state"]["binary"]
    assert cema["m"]["count"] == cema["v"]["count"] == 2
    assert np.array_equal(_numpy(cema["v"]["s"]["fc2.w"]), ck.opt_state["binary"]["v"]["s"]["fc2.w"])
    # a latent run keeps its latent weights as the parameters
    latent = torch.load(runs["mlp64_adam"][1], weights_only=True)
    assert latent["binary_storage"] == "latent"
    assert len(np.unique(_numpy(latent["state_dict"]["fc2.w"]))) > 2
    net = build(pt)
    assert net.binary_names == ["fc2.w"] and net.input_shape == (1, 28, 28)
    images = np.zeros((2, 1, 28, 28), np.uint8)
    assert torch.equal(net.preprocess(images), torch.full((2, 1, 28, 28), -1.0,
                                                          dtype=torch.float64))


# ------------------------------------------------------------------ the command line


def test_cli_writes_refuses_and_explains(runs: dict, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = runs["cnn64"][0]
    out = str(tmp_path / "model.pt")
    assert main(["export", path, "--format", "torch", "--out", out]) == 0
    said = capsys.readouterr().out
    assert "PyTorch export of binary_cnn" in said and said.count("\n") == 1
    assert torch.load(out, weights_only=True)["model"] == "binary_cnn"
    before = Path(out).read_bytes()
    notes = Path(tmp_path / "notes.txt")
    notes.write_text("not a run file\n")
    for argv, message in (
            ([path, "--out", out], "exists"),
            ([path, "--out", str(tmp_path)], "is a directory"),
            ([str(tmp_path / "missing.h5"), "--out", str(tmp_path / "m.pt")], "not found"),
            ([str(notes), "--out", str(tmp_path / "n.pt")], "notes.txt"),
            ([out, "--out", str(tmp_path / "o.pt")], "model.pt"),
            ([path, "--out", str(tmp_path / "b.pt"), "--backend", "numpy"], "drop it")):
        assert main(["export", *argv, "--format", "torch"]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert Path(out).read_bytes() == before
    assert main(["export", path, "--format", "torch", "--out", out, "--overwrite"]) == 0
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_without_pytorch_the_export_is_one_line(runs: dict, tmp_path: Path) -> None:
    """minibnn never needs torch: without it (hidden from imports here) the export is a
    one-line error naming the extra, exit 2."""
    import subprocess
    import sys

    argv = ["export", runs["mlp64"][0], "--format", "torch", "--out", str(tmp_path / "m.pt")]
    script = ("import sys\nsys.modules['torch'] = None\n"
              "from minibnn.commands.cli import main\n"
              f"raise SystemExit(main({argv!r}))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pip install 'minibnn[torch]'" in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "m.pt").exists()


def test_build_refuses_what_is_no_export(runs: dict, tmp_path: Path) -> None:
    path = runs["mlp64"][0]
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    exported = torch.load(runs["mlp64"][1], weights_only=True)
    newer, partial = tmp_path / "newer.pt", tmp_path / "partial.pt"
    torch.save({**exported, "version": 99}, newer)
    torch.save({k: v for k, v in exported.items() if k != "spec"}, partial)
    for source, message in ((path, "not a minibnn PyTorch export"),
                            (str(other), "no format='minibnn-torch' tag"),
                            (str(newer), "version 99 is not supported"),
                            (str(partial), "lacks spec"),
                            (str(tmp_path / "gone.pt"), "not found")):
        with pytest.raises(MinibnnError, match=message) as caught:
            build(source)
        assert "\n" not in str(caught.value)


def test_a_layer_with_no_torch_form_is_one_line() -> None:
    from minibnn.nn.containers import Sequential
    from minibnn.nn.models import Model
    from minibnn.nn.modules import Dense, Flatten, Stateless

    odd = Stateless(lambda x: (x, None), lambda dy, c: dy)
    model = Model("m", Sequential([Flatten(), odd, Dense("head", 4, 2)]), (1, 2, 2), 2, {})
    with pytest.raises(MinibnnError, match="has no PyTorch form"):
        MinibnnNet(model, torch.float64)


# ------------------------------------------------------------------ resuming in PyTorch


@pytest.mark.parametrize("name", ["mlp64", "mlp64_adam", "mlp64_sgd", "mlp64_sgdw"])
def test_resume_in_pytorch_follows_minibnn(runs: dict, name: str) -> None:
    """Six updates from the exported checkpoint, on the same batches in both engines; the
    spec's 3 epochs of 2 steps put two schedule changes (and the end of the run) in them.
    Latent sgd (coupled, and decoupled) runs on PyTorch's own SGD, which rounds ``a + alpha b``
    once where minibnn rounds twice: its weights and momentum within 1e-9 relative too, its
    signs the same on these seeds (tests/test_torch_optim.py bounds the weights' difference
    at 1e-13 of their largest on random streams)."""
    path, pt, ds = runs[name]
    run = load_run(path)
    spec, _, model = train.run_model(run)
    ck = run.checkpoint
    steps_per_epoch = len(train.batch_slices(len(ds.x_train), spec.loop.batch_size))
    optimizer = train.optimizer_from_spec(spec, model, steps_per_epoch)
    state = train.TrainState(copy.deepcopy(ck.params), copy.deepcopy(ck.buffers),
                             copy.deepcopy(ck.opt_state), np.random.default_rng(0),
                             ck.epoch, ck.step)
    net = build(pt).train()
    binary, real = optimizers(net, pt)
    named = dict(net.named_parameters())
    flips = 0
    for i in range(6):
        rows = np.random.default_rng(i).permutation(len(ds.x_train))[:50]
        x, y = ds.x_train[rows], ds.y_train[rows].astype(np.int64)
        before = {k: state.params[k] >= 0 for k in model.binary_names}
        loss, _, _ = train.train_step(model, optimizer, state, x, y)
        binary.zero_grad()
        real.zero_grad()
        torch_loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x)),
                                                       torch.from_numpy(y))
        torch_loss.backward()
        binary.step()
        real.step()
        assert abs(torch_loss.item() - float(loss)) <= 1e-12, f"step {i}"
        for key, value in state.params.items():
            got = _numpy(named[key])
            if key in model.binary_names:
                flips += int((before[key] != (value >= 0)).sum())
                assert np.array_equal(got >= 0, value >= 0), f"{key} signs at step {i}"
            np.testing.assert_allclose(got, value, rtol=1e-9, atol=1e-12,
                                       err_msg=f"{key} at step {i}")
        for key, value in dict(net.named_buffers()).items():
            np.testing.assert_allclose(_numpy(value), state.buffers[key], rtol=1e-9,
                                       atol=1e-12, err_msg=f"{key} at step {i}")
    assert flips > 0, "no binary weight flipped: the comparison of signs tested nothing"
    # the optimiser's state: CEMA's m, v; SGD's momentum buffer (and the counts)
    buffers = {"cema": (("m", "s"), ("v", "s")), "sgd": (("momentum", "m"),)}
    if spec.binary_optimizer.name in buffers:
        from minibnn.torch.optim import minibnn_state

        got = minibnn_state(binary, {k: named[k] for k in model.binary_names})
        want = state.opt_state["binary"]
        for stage, buffer in buffers[spec.binary_optimizer.name]:
            assert int(got[stage]["count"]) == int(want[stage]["count"]) == ck.step + 6
            assert set(got[stage][buffer]) == set(model.binary_names)
            for key, value in got[stage][buffer].items():
                np.testing.assert_allclose(value, want[stage][buffer][key], rtol=1e-9,
                                           atol=1e-15)


def test_epochs_replans_the_schedules_of_a_finished_run(runs: dict) -> None:
    """A finished 1-epoch run's linear rates are 0 from its last step on; ``epochs=3`` gives
    the rates of ``minibnn train --resume --epochs 3 --extend``: those of a 3-epoch run."""
    path, pt, _ = runs["cnn64"]
    spec, _, _ = train.run_model(load_run(path))
    net = build(pt)
    binary, real = optimizers(net, pt)
    assert binary.param_groups[0]["alpha"](2) == 0.0          # 2 steps done of 2
    binary, real = optimizers(net, pt, epochs=3)
    extended = train.optimizer_rates(spec.replace(epochs=3), 2)
    for count in (2, 3, 4):
        assert binary.param_groups[0]["alpha"](count) == extended["alpha"](count) > 0.0
        assert real.schedule(count) == extended["real_lr"](count) > 0.0
    for bad in (1, 0, 2.5):
        with pytest.raises(MinibnnError, match="already finished 1 epochs"):
            optimizers(net, pt, epochs=bad)
