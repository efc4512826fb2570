"""Bit-packed inference (``minibnn.packed``): exactly the float path, ~32x smaller weights.

Logits must be bit-identical to the float forward pass without a weight scale (the float path
sums +-1 products, exact integers), in float32 and float64; with ``scale=True`` predictions
must agree and logits may differ in the last bits.  Then the packed file (round trip, sizes,
one-line errors) and the CLI end to end.
"""
import subprocess
import sys

import h5py
import numpy as np
import pytest

from minibnn.cli import main
from minibnn.config import TrainConfig
from minibnn.errors import DataFileError, MinibnnError
from minibnn.io import Checkpoint, RunFile, load_run, save_run
from minibnn.kernels import get_kernels
from minibnn.nn.models import Model, binary_cnn, binary_mlp, birealnet
from minibnn.nn.modules import BinaryDense, Dense, Flatten, Sequential
from minibnn.packed import (FORMAT, PackedBinary, default_packed_path, evaluate_packed, export_packed,
                            is_packed_file, load_packed, pack_model, pack_run)

MODELS = {
    # odd widths: K = 81, 70, 130 leave partial words
    "mlp-latent": lambda **kw: binary_mlp((1, 9, 9), hidden=(70, 130, 65), num_classes=7,
                                          **kw),
    "mlp-binary-first": lambda **kw: binary_mlp((1, 9, 9), hidden=(64, 128), real_first=False,
                                                binary_storage="binary", **kw),
    "cnn": lambda **kw: binary_cnn((3, 11, 13), width=5, **kw),          # odd sizes, padding 1
    "birealnet": lambda **kw: birealnet((3, 12, 12), width=6, blocks_per_stage=(1, 2), **kw),
}


def _random_state(model, dtype, seed=0):
    """Random params and non-trivial BatchNorm running statistics."""
    rng = np.random.default_rng(seed)
    params, buffers = model.init(rng, dtype)
    for name in buffers:
        shape = buffers[name].shape
        buffers[name] = (rng.uniform(0.5, 2.0, shape) if name.endswith("running_var")
                         else rng.normal(0.0, 1.0, shape)).astype(dtype)
    x = rng.normal(0.0, 1.0, (23,) + model.input_shape).astype(dtype)
    x[0] = 0.0                                  # sign(0) = +1 on both paths
    return params, buffers, x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_packed_logits_equal_float_logits_exactly(name, dtype):
    model = MODELS[name]()
    params, buffers, x = _random_state(model, dtype)
    ref, _, _ = model.forward(params, buffers, x, train=False)
    pm = pack_model(model, params, buffers)
    out = pm.forward(x)
    assert out.dtype == ref.dtype
    assert np.array_equal(out, ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["mlp-latent", "cnn", "birealnet"])
def test_scaled_layers_give_the_same_predictions(name, dtype):
    model = MODELS[name](scale=True)
    params, buffers, x = _random_state(model, dtype, seed=1)
    ref, _, _ = model.forward(params, buffers, x, train=False)
    out = pack_model(model, params, buffers).forward(x)
    assert np.array_equal(out.argmax(axis=1), ref.argmax(axis=1))
    # a * z (one rounding) vs the float sum of a * (+-1) products: last bits only
    np.testing.assert_allclose(out, ref, rtol=1e-4 if dtype == np.float32 else 1e-12,
                               atol=1e-4 if dtype == np.float32 else 1e-12)


def test_binary_layer_without_a_sign_in_front_is_refused():
    net = Sequential([Flatten(), BinaryDense("fc", 16, 8), Dense("head", 8, 2)])
    model = Model("odd", net, (16,), 2, {})
    params, buffers = model.init(np.random.default_rng(0), np.float32)
    with pytest.raises(MinibnnError, match="not directly preceded by a Sign"):
        pack_model(model, params, buffers)


def test_packed_weights_are_32x_smaller_and_bits_are_the_signs():
    model = binary_mlp((1, 8, 8), hidden=(128, 256))       # fc2: K = 128, a multiple of 64
    params, buffers, _ = _random_state(model, np.float32)
    pm = pack_model(model, params, buffers)
    layer = pm.layers["fc2.w"]
    w = params["fc2.w"]
    assert layer.bits.dtype == np.uint64 and layer.bits.shape == (256, 2)
    assert layer.bits.nbytes <= w.astype(np.float32).nbytes / 30
    unpacked = get_kernels("numpy").unpack_signs(layer.bits, 128, np.float32)
    assert np.array_equal(unpacked, np.where(w >= 0, 1.0, -1.0))
    sizes = pm.sizes()
    assert sizes["float32_bytes"] == 4 * w.size and sizes["weight_ratio"] == pytest.approx(32.0)
    packed = [m for m in pm.net.layers if isinstance(m, PackedBinary)]
    assert len(packed) == 1 and packed[0].layer is layer
    with pytest.raises(MinibnnError, match="inference-only"):
        packed[0].backward(np.zeros((1, 256), np.float32), None)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real run file: binary MLP trained one epoch on the synthetic set (CEMA, +-1 weights)."""
    from minibnn.train import fit

    path = str(tmp_path_factory.mktemp("packed") / "run.h5")
    fit(TrainConfig(dataset="synthetic", hidden=[64, 64], epochs=1, shift=0), path,
        progress=False, log=lambda m: None)
    return path


def test_export_round_trip_and_sizes(trained_run, tmp_path):
    out = str(tmp_path / "run.packed.h5")
    sizes = export_packed(trained_run, out)
    assert is_packed_file(out) and not is_packed_file(trained_run)
    assert sizes["binary_layers"] == 1 and sizes["binary_weights"] == 64 * 64
    assert sizes["packed_bytes"] == 64 * 8 and sizes["weight_ratio"] == pytest.approx(32.0)
    assert sizes["packed_file_bytes"] < sizes["run_file_bytes"]
    with h5py.File(out, "r") as f:
        assert f.attrs["format"] == FORMAT and int(f.attrs["epoch"]) == 1
        assert f["packed/fc2.w/bits"].dtype == np.uint64
        assert f["packed/fc2.w"].attrs["kind"] == "dense" and "fc2.w" not in f["real"]
    loaded, in_memory = load_packed(out), pack_run(trained_run)
    ck = load_run(trained_run).checkpoint
    x = np.random.default_rng(2).normal(size=(50, 1, 28, 28)).astype(np.float32)
    ref, _, _ = in_memory.model.forward(ck.params, ck.buffers, x, train=False)
    assert np.array_equal(loaded.forward(x), ref) and np.array_equal(in_memory.forward(x), ref)
    a = evaluate_packed(out, check=True)
    b = evaluate_packed(trained_run, check=True)
    assert a["differ"] == b["differ"] == 0 and a["max_logit_diff"] == b["max_logit_diff"] == 0
    assert a["test_acc"] == b["test_acc"] and a["test_loss"] == b["test_loss"]


def test_conv_file_with_scale_round_trips(tmp_path):
    config = TrainConfig(model="binary_cnn", dataset="synthetic", width=3, optimizer="sgd",
                         scale=True, dtype="float64")
    model = binary_cnn((1, 28, 28), width=3, scale=True)
    params, buffers, _ = _random_state(model, np.float64)
    run = str(tmp_path / "cnn.h5")
    save_run(run, RunFile(config.to_json(), {}, Checkpoint(params, buffers, {}, {}, 3, 0)))
    sizes = export_packed(run)
    out = default_packed_path(run)
    assert out.endswith("cnn.packed.h5") and sizes["binary_layers"] == 5
    pm = load_packed(out)
    assert pm.layers["conv3.w"].kind == "conv2d" and pm.layers["conv3.w"].scale is not None
    x = np.random.default_rng(3).normal(size=(9, 1, 28, 28))
    ref, _, _ = model.forward(params, buffers, x, train=False)
    out_logits = pm.forward(x)
    assert np.array_equal(out_logits, pack_run(run).forward(x))
    assert np.array_equal(out_logits.argmax(axis=1), ref.argmax(axis=1))
    np.testing.assert_allclose(out_logits, ref, rtol=1e-12, atol=1e-12)
    assert evaluate_packed(out, check=True)["differ"] == 0


def _run(*args):
    return subprocess.run([sys.executable, "-m", "minibnn.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_cli_export_and_packed_eval_end_to_end(trained_run, tmp_path):
    out = str(tmp_path / "cli.packed.h5")
    proc = _run("export", trained_run, "--packed", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "32.0x smaller" in proc.stdout and is_packed_file(out)
    plain = _run("eval", trained_run)
    packed = _run("eval", out, "--check")                 # format detected from the file
    assert plain.returncode == 0 and packed.returncode == 0, plain.stderr + packed.stderr
    accuracy = plain.stdout.split("test accuracy")[1].split()[0]
    assert packed.stdout.split("test accuracy")[1].split()[0] == accuracy
    assert "differing from float: 0 of" in packed.stdout


def test_cli_eval_run_file_packed_in_memory(trained_run, capsys):
    assert main(["eval", trained_run, "--packed", "--check"]) == 0
    line = capsys.readouterr().out.strip()
    assert "packed (1 binary layer," in line and "differing from float: 0 of" in line


def _one_line_error(argv, capsys):
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minibnn: error:"), lines
    return lines[0]


def test_one_line_errors(trained_run, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.packed.h5"
    corrupt.write_bytes(b"not an hdf5 file at all" * 10)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.attrs["format"] = "something-else"
    assert "only bit-packed export" in _one_line_error(["export", trained_run], capsys)
    assert "add --packed" in _one_line_error(["eval", trained_run, "--check"], capsys)
    assert "run file not found" in _one_line_error(["eval", "/nonexistent.h5", "--packed"],
                                                   capsys)
    assert "run file not found" in _one_line_error(["export", "/nonexistent.h5", "--packed"],
                                                   capsys)
    assert "corrupt" in _one_line_error(["eval", str(corrupt), "--packed"], capsys)
    assert "not a minibnn run file" in _one_line_error(["eval", str(foreign), "--packed"], capsys)
    with pytest.raises(DataFileError, match="packed file not found"):
        load_packed(str(tmp_path / "missing.packed.h5"))
    with pytest.raises(DataFileError, match="corrupt"):
        load_packed(str(corrupt))
    with pytest.raises(DataFileError, match="not a minibnn packed file"):
        load_packed(str(foreign))
    with pytest.raises(DataFileError, match="is a run file"):
        load_packed(trained_run)


def test_damaged_packed_file_is_a_data_file_error(trained_run, tmp_path):
    out = str(tmp_path / "damaged.packed.h5")
    export_packed(trained_run, out)
    with h5py.File(out, "a") as f:
        del f["packed/fc2.w/bits"]
        f["packed/fc2.w"].create_dataset("bits", data=np.zeros((64, 3), np.uint64))
    with pytest.raises(DataFileError, match="bits must be uint64"):
        load_packed(out)
    with h5py.File(out, "a") as f:
        del f["real/head.w"]
    with pytest.raises(DataFileError, match="real/"):
        load_packed(out)
    with h5py.File(out, "a") as f:
        del f["packed"]
    with pytest.raises(DataFileError, match="corrupt"):
        load_packed(out)
