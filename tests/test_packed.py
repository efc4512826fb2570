"""Bit-packed inference (``minibnn.nn.packed``, ``minibnn.deploy.packed_file``,
``minibnn.deploy.inference``):
exactly the float path, ~32x smaller weights.

Logits must be bit-identical to the float forward pass without a weight scale (the float path
sums +-1 products, exact integers), in float32 and float64, with BatchNorm + sign folded into
integer thresholds (negative gamma, gamma == 0 included); with ``scale=True`` predictions must
agree and logits may differ in the last bits.  The threshold derivation is a property test
over random BatchNorm parameters, dtypes and fan-ins.  Then the packed file (round trip,
version, sizes, one-line errors) and the CLI end to end on trained runs.
"""
import os
import dataclasses
import subprocess
import sys

import h5py
from h5edit import edited
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minibnn import kernels
from minibnn.commands.cli import main
from minibnn.run.spec import Local, config_json, read_stored_config, spec_from_options
from minibnn.backend import gpu_available
from minibnn.errors import DataFileError, DeviceError, DTypeError, MinibnnError
from minibnn.run.files import Checkpoint, RunFile, load_run, save_run
from minibnn.kernels.threshold import Threshold
from minibnn.nn import functional as F
from minibnn.nn.models import Model, binary_cnn, binary_mlp, birealnet, reactnet
from minibnn.nn.containers import Sequential
from minibnn.nn.modules import BatchNorm, BinaryDense, Dense, Flatten, Sign, Stateless
from minibnn.deploy.inference import (default_packed_path, evaluate_packed, export_packed,
                                      load_packed, pack_run)
from minibnn.deploy.packed_file import FORMAT, VERSION, is_packed_file, save_packed
from minibnn.nn.fold import fold_batchnorm_sign
from minibnn.nn.packed import PackedBinary, pack_model

MODELS = {
    # odd widths: K = 81, 70, 130 leave partial words
    "mlp-latent": lambda **kw: binary_mlp((1, 9, 9), hidden=(70, 130, 65), num_classes=7,
                                          **kw),
    "mlp-binary-first": lambda **kw: binary_mlp((1, 9, 9), hidden=(64, 128), real_first=False,
                                                binary_storage="binary", **kw),
    "cnn": lambda **kw: binary_cnn((3, 11, 13), width=5, **kw),          # odd sizes, padding 1
    "birealnet": lambda **kw: birealnet((3, 12, 12), width=6, blocks_per_stage=(1, 2), **kw),
    # RSign, RPReLU and the widening Concat (its two halves' binary convs packed too)
    "reactnet": lambda **kw: reactnet((3, 8, 8), width=3, blocks_per_stage=(1, 2), **kw),
}


def _random_state(model, dtype, seed=0, affine=False, integer_means=True):
    """Random params and non-trivial BatchNorm running statistics (and gamma/beta: negative,
    zero); ``integer_means``: every third running mean an integer, where a count lands exactly
    on BN(y) = 0 (a tie the float path with a scale does not reproduce, see the module doc)."""
    rng = np.random.default_rng(seed)
    params, buffers = model.init(rng, dtype)
    for name in buffers:
        shape = buffers[name].shape
        buffers[name] = (rng.uniform(0.5, 2.0, shape) if name.endswith("running_var")
                         else rng.normal(0.0, 1.0, shape)).astype(dtype)
        if integer_means and name.endswith("running_mean"):
            buffers[name][::3] = np.round(buffers[name][::3] * 3)
    if affine:
        for name in params:
            if name.endswith(".gamma"):
                params[name] = rng.normal(0.0, 1.0, params[name].shape).astype(dtype)
                params[name][1::4] = 0.0
            elif name.endswith(".beta"):
                params[name] = rng.normal(0.0, 0.5, params[name].shape).astype(dtype)
                params[name][::5] = 0.0
    x = rng.normal(0.0, 1.0, (23,) + model.input_shape).astype(dtype)
    x[0] = 0.0                                  # sign(0) = +1 on both paths
    return params, buffers, x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_packed_logits_equal_float_logits_exactly(name, dtype):
    model = MODELS[name]()
    packed_layers = pack_model(model, *model.init(np.random.default_rng(0), dtype)).layers
    assert sorted(packed_layers) == sorted(model.binary_names)        # every binary layer
    for affine in (False, True):
        params, buffers, x = _random_state(model, dtype, affine=affine)
        ref, _, _ = model.forward(params, buffers, x, train=False)
        for backend in ("numpy", "auto"):
            with kernels.use_backend(backend):
                out = pack_model(model, params, buffers).forward(x)
            assert out.dtype == ref.dtype
            assert np.array_equal(out, ref), (affine, backend)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["mlp-latent", "cnn", "birealnet"])
def test_scaled_layers_give_the_same_predictions(name, dtype):
    model = MODELS[name](scale=True)
    params, buffers, x = _random_state(model, dtype, seed=1, integer_means=False)
    ref, _, _ = model.forward(params, buffers, x, train=False)
    out = pack_model(model, params, buffers).forward(x)
    assert np.array_equal(out.argmax(axis=1), ref.argmax(axis=1))
    # a * z (one rounding) vs the float sum of a * (+-1) products: last bits only
    np.testing.assert_allclose(out, ref, rtol=1e-4 if dtype == np.float32 else 1e-12,
                               atol=1e-4 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [False, True])
@pytest.mark.parametrize("name", ["binary_cnn", "birealnet"])
def test_cnns_run_packed_channels_last_with_the_float_logits(name, scale, dtype):
    """CIFAR-size binary_cnn and birealnet (their binary convs reach the Numba parallel path):
    the channels-last group of the float model is one PackedBinary that runs the group's own
    twins for its real steps and its binary convs on packed signs (inside the residual blocks
    too: bias+sign in one pass, the BatchNorm after the conv as a table of its counts), and the
    logits are the float path's bit for bit, with a scale too (both paths count a * z)."""
    from minibnn.kernels.cpu import PARALLEL_MIN_WORK
    from minibnn.nn.channels_last import (BatchNormNHWC, BatchNormSignNHWC, ChannelsLast,
                                          ResidualNHWC)
    from minibnn.nn.models import build_model
    from minibnn.nn.packed import BiasSignStep, PackedStep

    model = build_model(name, input_shape=(3, 32, 32), width=16, scale=scale)
    params, buffers, x = _random_state(model, dtype, affine=True)
    assert len(x) * 32 * 32 * 16 * 9 >= PARALLEL_MIN_WORK          # the first binary conv
    pm = pack_model(model, params, buffers)
    ref, _, _ = model.forward(params, buffers, x, train=False)
    out = pm.forward(x)
    assert out.dtype == ref.dtype and np.array_equal(out, ref)
    group = model.net.steps()[0]
    run, *_, head = pm.net.layers
    assert isinstance(group, ChannelsLast) and isinstance(run, PackedBinary)
    assert head.name == "head" and run.layers == list(pm.layers.values())
    if name == "binary_cnn":                    # conv1, bn1+sign, then five folded binary convs
        assert run.steps[:2] == group.twins[:2]                 # the float model's own twins
        assert all(isinstance(s, PackedStep) and s.layer.fold is not None
                   for s in run.steps[2:])
    else:       # each block: bias+sign in one pass, the bconv with its BatchNorm as a table
        blocks = [s for s in run.steps if isinstance(s, ResidualNHWC)]
        assert len(blocks) == 6 and len(run.steps) == len(group.twins)
        for block, twin in zip(blocks, [t for t in group.twins if isinstance(t, ResidualNHWC)]):
            bias_sign, conv = block.body
            assert isinstance(bias_sign, BiasSignStep) and bias_sign.key == twin.body[0].key
            assert type(twin.body[2]) is BatchNormNHWC
            assert isinstance(conv, PackedStep) and conv.layer.fold is None
            assert conv.table.shape == (2 * conv.layer.k + 1, conv.layer.shape[0])
        assert not any(isinstance(s, BatchNormSignNHWC) for s in run.steps)


def test_a_run_across_a_channels_last_group_boundary():
    """A hand-built nhwc net whose channels-last group starts with a binary conv fed by a Sign
    outside it and ends with a binary conv whose fold (a BatchNorm without affine part, not
    in the group) stays outside: that conv outputs its counts, the float modules after it
    fold into the next packed run, and the logits are the float path's."""
    from minibnn.nn.channels_last import ChannelsLast
    from minibnn.nn.modules import BinaryConv2d, Conv2d

    layers = [Conv2d("c1", 3, 8, 3, padding=1), Sign(),
              BinaryConv2d("b1", 8, 8, 3, padding=1), BatchNorm("bn1", 8), Sign(),
              BinaryConv2d("b2", 8, 70, 3, padding=1), BatchNorm("bn2", 70, affine=False),
              Sign(), BinaryConv2d("b3", 70, 8, 3, stride=2, padding=1), BatchNorm("bn3", 8),
              Sign(), Flatten(), Dense("head", 8 * 4 * 4, 3)]
    model = Model("edge", Sequential(layers, input_grad=False, layout="nhwc"), (3, 8, 8), 3, {})
    assert [type(s) for s in model.net.steps()][:3] == [Conv2d, Stateless, ChannelsLast]
    params, buffers, x = _random_state(model, np.float32)
    pm = pack_model(model, params, buffers)
    group, bn2, run = pm.net.layers[2:5]
    assert [s.name for s in group.layers] == ["b1.w", "b2.w"] and group.layers[1].fold is None
    assert group.layers[0].fold is not None and pm.layers["b2.w"].fold is not None
    assert bn2.name == "bn2" and run.layers == [pm.layers["b3.w"]]
    ref, _, _ = model.forward(params, buffers, x, train=False)
    for backend in ("numpy", "auto"):
        with kernels.use_backend(backend):
            assert np.array_equal(pm.forward(x), ref), backend


def test_a_group_ending_in_a_binary_conv_and_a_plain_batchnorm_outputs_that_batchnorm():
    """A channels-last group ending ``bconv -> BatchNorm`` (no sign after it): the packed run
    replaces the BatchNorm by its count table, so its output is the BatchNorm's values, not the
    raw counts (the run once returned the counts here: logits off by up to 17, no error)."""
    from minibnn.nn.channels_last import ChannelsLast
    from minibnn.nn.modules import BinaryConv2d, Conv2d

    for scale in (False, True):
        layers = [Conv2d("c1", 3, 8, 3, padding=1), BatchNorm("bn1", 8), Sign(),
                  BinaryConv2d("b1", 8, 70, 3, padding=1, scale=scale), BatchNorm("bn2", 70),
                  Flatten(), Dense("head", 70 * 8 * 8, 3)]
        model = Model("tail", Sequential(layers, input_grad=False, layout="nhwc"), (3, 8, 8),
                      3, {})
        assert isinstance(model.net.steps()[0], ChannelsLast)
        params, buffers, x = _random_state(model, np.float32, affine=True)
        pm = pack_model(model, params, buffers)
        ref, _, _ = model.forward(params, buffers, x, train=False)
        for backend in ("numpy", "auto"):
            with kernels.use_backend(backend):
                assert np.array_equal(pm.forward(x), ref), (scale, backend)


@pytest.mark.parametrize("scale", [False, True])
def test_birealnet_without_count_tables_is_still_exact(monkeypatch, scale):
    """Above ``COUNT_TABLE_MAX`` entries (birealnet's last stage from width 64 on) a BatchNorm
    after a binary conv runs as its own twin on the counts instead of as a table: the same
    logits."""
    import minibnn.nn.packed as packed

    model = birealnet((3, 12, 12), width=6, blocks_per_stage=(1, 2), scale=scale)
    params, buffers, x = _random_state(model, np.float32, affine=True)
    ref, _, _ = model.forward(params, buffers, x, train=False)
    monkeypatch.setattr(packed, "COUNT_TABLE_MAX", 0)
    pm = pack_model(model, params, buffers)
    def packed_steps(steps):                       # residual branches included
        for step in steps:
            if isinstance(step, packed.ResidualNHWC):
                yield from packed_steps(list(step.body) + list(step.shortcut or []))
            elif isinstance(step, packed.PackedStep):
                yield step

    runs = [run for run in pm.net.layers if isinstance(run, packed.PackedBinary)]
    tables = [step.table for run in runs for step in packed_steps(run.steps)]
    assert len(tables) == 3 and all(t is None for t in tables)   # the fallback really ran
    assert np.array_equal(pm.forward(x), ref)


@pytest.mark.parametrize("name", ["cnn", "birealnet"])
def test_packed_logits_do_not_depend_on_the_thread_count(name):
    from minibnn.kernels.threads import using_threads

    model = MODELS[name](scale=True)
    params, buffers, _ = _random_state(model, np.float32, affine=True)
    x = np.random.default_rng(1).normal(size=(96,) + model.input_shape).astype(np.float32)
    pm = pack_model(model, params, buffers)
    logits = []
    for threads in (1, 2, 3):
        with using_threads(threads):
            logits.append(pm.forward(x))
    assert all(np.array_equal(logits[0], other) for other in logits[1:])


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
    unpacked = kernels.get("unpack_signs", "numpy")(layer.bits, 128, np.float32)
    assert np.array_equal(unpacked, np.where(w >= 0, 1.0, -1.0))
    sizes = pm.sizes()
    assert sizes["float32_bytes"] == 4 * w.size and sizes["weight_ratio"] == pytest.approx(32.0)
    packed = [m for m in pm.net.layers if isinstance(m, PackedBinary)]
    assert len(packed) == 1 and packed[0].layers == [layer]
    with pytest.raises(MinibnnError, match="inference-only"):
        packed[0].backward(np.zeros((1, 256), np.float32), None)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real run file: binary MLP trained one epoch on the synthetic set (CEMA, +-1 weights)."""
    from minibnn.run.train import fit

    path = str(tmp_path_factory.mktemp("packed") / "run.h5")
    fit(spec_from_options(dict(dataset="synthetic", hidden=[64, 64], epochs=1, shift=0)), path,
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
        assert int(f.attrs["version"]) == VERSION == 2
        g = f["packed/fc2.w"]
        assert g["bits"].dtype == np.uint64
        assert g.attrs["kind"] == "dense" and "fc2.w" not in f["real"]
        assert g.attrs["fold"] == "bn2" and "lookup" not in g           # bn2 -> sign folded
        assert g["threshold"].dtype == np.int32 and g["threshold"].shape == (64,)
        assert g["direction"].dtype == np.int8 and set(g["direction"][()]) <= {-1, 1}
        assert "bn2.gamma" in f["real"]                  # kept for the float path (--check)
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
    config = config_json(spec_from_options(dict(model="binary_cnn", dataset="synthetic", width=3,
                                                optimizer="sgd", scale=True, dtype="float64")),
                         Local())
    model = binary_cnn((1, 28, 28), width=3, scale=True)
    params, buffers, _ = _random_state(model, np.float64)
    run = str(tmp_path / "cnn.h5")
    save_run(run, RunFile(config, {}, Checkpoint(params, buffers, {}, {}, 3, 0)))
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
    return subprocess.run([sys.executable, "-m", "minibnn", *args], capture_output=True,
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
    assert "needs --out" in _one_line_error(["export", trained_run, "--format", "onnx"], capsys)
    assert "--packed means --format packed" in _one_line_error(
        ["export", trained_run, "--packed", "--format", "onnx", "--out", "x.onnx"], capsys)
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
    with edited(out) as f:
        bits = f["packed/fc2.w/bits"][()]
        del f["packed/fc2.w/bits"]
        f["packed/fc2.w"].create_dataset("bits", data=np.zeros((64, 3), np.uint64))
    with pytest.raises(DataFileError, match=r"bits must be uint64 \(64, 1\), got uint64 \(64, 3\)"):
        load_packed(out)
    with edited(out) as f:
        del f["packed/fc2.w/bits"]
        f["packed/fc2.w"].create_dataset("bits", data=bits)
        del f["real/head.w"]
    with pytest.raises(DataFileError, match="real/ does not match.*'head.w' is missing"):
        load_packed(out)
    with edited(out) as f:
        del f["packed"]
    with pytest.raises(DataFileError, match="corrupt"):
        load_packed(out)


# --------------------------------------------------------------------------- thresholds

TH_SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                       suppress_health_check=[HealthCheck.too_slow])


@st.composite
def bn_case(draw):
    """BatchNorm parameters aimed at the edges: BN(y) == 0 exactly at an integer y, means on
    and next to integers and half-integers, tiny/huge variance, gamma 0 / negative / tiny."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    k = draw(st.integers(1, 3000))
    c = draw(st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    y0 = rng.integers(-k, k + 1, c).astype(np.float64)
    mean = y0 + rng.choice([0.0, 0.5, -0.5, 1e-7, -1e-7, 0.3], c)
    mean = np.where(rng.random(c) < 0.2, rng.normal(0, 2 * k, c), mean)
    var = 10.0 ** rng.uniform(-8, 6, c)
    gamma = rng.choice([1.0, -1.0], c) * 10.0 ** rng.uniform(-30, 3, c)
    gamma[rng.random(c) < 0.2] = 0.0
    beta = rng.normal(0, 1, c) * 10.0 ** rng.uniform(-6, 3, c)
    beta[rng.random(c) < 0.3] = 0.0
    beta[rng.random(c) < 0.1] = -0.0
    eps = draw(st.sampled_from([1e-5, 1e-3, 1e-10]))
    affine = draw(st.booleans())
    scale = rng.uniform(0.0, 2.0, c) if draw(st.booleans()) else None
    return dtype, k, c, mean, var, gamma, beta, eps, affine, scale


@TH_SETTINGS
@given(bn_case())
def test_thresholds_equal_the_float_sign_for_every_count(case):
    dtype, k, c, mean, var, gamma, beta, eps, affine, scale = case
    bn, sign = BatchNorm("bn", c, eps=eps, affine=affine), Sign()
    params = {"bn.gamma": gamma.astype(dtype), "bn.beta": beta.astype(dtype)} if affine else {}
    buffers = {"bn.running_mean": mean.astype(dtype), "bn.running_var": var.astype(dtype)}
    th = fold_batchnorm_sign(bn, sign, params, buffers, k, dtype, scale)
    # the float path on every count y in [-k, k], NCHW like a conv layer's output
    y = np.repeat(np.arange(-k, k + 1, dtype=np.int32)[:, None], c, axis=1)
    x = y.astype(dtype)[:, :, None, None]
    if scale is not None:
        x = x * scale.astype(dtype)[None, :, None, None]
    z, _ = F.batchnorm_forward(x, params.get("bn.gamma"), params.get("bn.beta"),
                               buffers["bn.running_mean"], buffers["bn.running_var"],
                               train=False, eps=eps)
    want, _ = F.sign_forward(z)
    want = want[:, :, 0, 0] > 0
    assert th.lookup is None                      # IEEE BatchNorm is monotone in y
    for backend in ("numpy", "numba"):
        bits = kernels.get("threshold_pack", backend)(y, th.threshold, th.direction)
        got = kernels.get("unpack_signs", "numpy")(bits, c, np.float64) > 0
        assert np.array_equal(got, want), backend
    if affine:                                    # the real-number direction where it has one
        slope = gamma / np.sqrt(var + eps)
        steps = want.any(axis=0) & ~want.all(axis=0)
        assert np.all(th.direction[steps & (slope < 0)] == -1)
        assert np.all(th.direction[steps & (slope > 0)] == 1)
        constant = gamma == 0
        assert np.array_equal(want[:, constant].all(axis=0), (beta[constant] >= 0))


def _trained(tmp_path, model, dtype, **config):
    """A run of ``model`` trained a few steps on synthetic data, then BatchNorm channels set by
    hand: negative gamma, gamma == 0 with beta > 0, < 0 and == 0."""
    from minibnn.run.train import fit

    path = str(tmp_path / f"{model}-{dtype}.h5")
    cfg = spec_from_options(dict(model=model, dataset="synthetic", epochs=1, train_subset=300,
                                 shift=0, batch_size=100, dtype=dtype, **config))
    fit(cfg, path, progress=False, log=lambda m: None)
    run = load_run(path)
    params = dict(run.checkpoint.params)
    for name in sorted(params):
        if name.endswith(".gamma") and name != "bn1.gamma":
            g, b = params[name].copy(), params[name.replace("gamma", "beta")].copy()
            g[0], g[1], g[2], g[3] = -abs(g[0]) - 0.5, 0.0, 0.0, 0.0
            b[1], b[2], b[3] = 0.7, -0.7, 0.0
            params[name], params[name.replace("gamma", "beta")] = g, b
    save_run(path, dataclasses.replace(run, checkpoint=dataclasses.replace(run.checkpoint,
                                                                           params=params)))
    return path


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("model,config", [("binary_mlp", {"hidden": [48, 70, 40]}),
                                          ("binary_cnn", {"width": 4})])
def test_trained_runs_fold_exactly(tmp_path, capsys, model, config, dtype):
    path = _trained(tmp_path, model, dtype, **config)
    pm = pack_run(path)
    folds = [layer.fold for layer in pm.layers.values()]
    assert all(f is not None for f in folds) and len(folds) == (2 if model == "binary_mlp"
                                                                 else 5)
    for f in folds:                               # the hand-set channels
        assert f.direction[0] == -1
        assert (f.direction[1], f.threshold[1]) == (1, -f.k)        # always +1
        assert (f.direction[2], f.threshold[2]) == (1, f.k + 1)     # always -1
        assert (f.direction[3], f.threshold[3]) == (1, -f.k)        # beta = 0: sign(0) = +1
    # one packed run of binary layers, no float BatchNorm between them
    runs = [m for m in pm.net.layers if isinstance(m, PackedBinary)]
    assert len(runs) == 1 and [layer.name for layer in runs[0].layers] == list(pm.layers)
    assert not any(isinstance(m, BatchNorm) for m in pm.net.layers[pm.net.layers.index(runs[0]):])
    out = str(tmp_path / "run.packed.h5")
    export_packed(path, out)
    for source in (path, out):
        result = evaluate_packed(source, check=True)
        assert result["differ"] == 0 and result["max_logit_diff"] == 0.0
        assert result["folded_layers"] == len(folds)
    ck = load_run(path).checkpoint
    x = np.random.default_rng(5).normal(size=(40, 1, 28, 28)).astype(dtype)
    ref, _, _ = pm.model.forward(ck.params, ck.buffers, x, train=False)
    assert np.array_equal(load_packed(out).forward(x), ref)
    assert main(["eval", out, "--check", "--backend", "numpy"]) == 0
    assert "differing from float: 0 of 1000" in capsys.readouterr().out


def _as_lookup(fold, channels):
    """``fold`` with ``channels`` stored as lookup rows (their step read back as a table)."""
    c = fold.threshold.shape[0]
    y = np.repeat(np.arange(-fold.k, fold.k + 1, dtype=np.int32)[:, None], c, axis=1)
    bits = kernels.get("threshold_pack", "numpy")(y, fold.threshold, fold.direction)
    table = kernels.get("unpack_signs", "numpy")(bits, c, np.float64) > 0
    direction = fold.direction.copy()
    direction[channels] = 0
    return Threshold(np.where(direction == 0, 0, fold.threshold).astype(np.int32), direction,
                     np.ascontiguousarray(table[:, channels].T).astype(np.uint8), fold.k)


def test_lookup_channels_give_the_float_path_too(tmp_path):
    """Channels stored as lookup rows (the safety net for a sign table that is not a step)
    compute the same signs, inside a packed run and at its end, and survive the file."""
    model = binary_cnn((1, 28, 28), width=3)
    params, buffers, _ = _random_state(model, np.float64, affine=True)
    x = np.random.default_rng(4).normal(size=(6, 1, 28, 28))
    ref, _, _ = model.forward(params, buffers, x, train=False)
    pm = pack_model(model, params, buffers)
    layers = dict(pm.layers)
    for name in ("conv2.w", "conv6.w"):
        layers[name] = dataclasses.replace(layers[name], fold=_as_lookup(layers[name].fold,
                                                                         [0, 2]))
    config = config_json(spec_from_options(dict(model="binary_cnn", dataset="synthetic", width=3,
                                                optimizer="sgd", dtype="float64")), Local())
    looked_up = dataclasses.replace(pm, layers=layers, config_json=config)
    assert np.array_equal(looked_up.forward(x), ref)
    path = str(tmp_path / "lookup.packed.h5")
    save_packed(path, looked_up)
    with h5py.File(path, "r") as f:
        assert f["packed/conv2.w/lookup"].shape == (2, 2 * 27 + 1)
    loaded = load_packed(path)
    assert np.array_equal(loaded.layers["conv6.w"].fold.lookup, layers["conv6.w"].fold.lookup)
    assert np.array_equal(loaded.forward(x), ref)
    with edited(path) as f:
        del f["packed/conv2.w/lookup"]
    with pytest.raises(DataFileError, match="lookup must be uint8"):
        load_packed(path)


def test_old_packed_file_version_is_one_line_error(trained_run, tmp_path, capsys):
    out = str(tmp_path / "old.packed.h5")
    export_packed(trained_run, out)
    with edited(out) as f:
        f.attrs["version"] = 1
    with pytest.raises(DataFileError, match="packed file format version 1 is not supported: "
                                            "it was written by an older minibnn.*re-export"):
        load_packed(out)
    assert "version 1" in _one_line_error(["eval", out], capsys)


def test_damaged_thresholds_are_a_data_file_error(trained_run, tmp_path):
    out = str(tmp_path / "thr.packed.h5")
    export_packed(trained_run, out)
    with edited(out) as f:
        t = f["packed/fc2.w/threshold"][()]
        del f["packed/fc2.w/threshold"]
        f["packed/fc2.w"].create_dataset("threshold", data=t.astype(np.int64))
    with pytest.raises(DataFileError, match="threshold must be int32"):
        load_packed(out)
    with edited(out) as f:
        f["packed/fc2.w"].attrs["fold"] = ""
    with pytest.raises(DataFileError, match="does not match the model"):
        load_packed(out)


class _DeviceArray:
    """Stands in for a CuPy array: shape and dtype, but not a NumPy array."""

    __module__ = "cupy._core.core"

    def __init__(self, a):
        self.shape, self.dtype = a.shape, a.dtype


def test_packed_model_refuses_device_arrays_in_one_line():
    model = MODELS["mlp-latent"]()
    params, buffers, x = _random_state(model, np.float32)
    pm = pack_model(model, params, buffers)
    with pytest.raises(DeviceError, match="runs on the CPU: x must be a NumPy array, got "
                                          "cupy._DeviceArray"):
        pm.forward(_DeviceArray(x))


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="no CUDA GPU")
def test_packed_model_refuses_a_cupy_array():
    import cupy as cp

    model = MODELS["cnn"]()
    params, buffers, x = _random_state(model, np.float32)
    with pytest.raises(DeviceError, match="x must be a NumPy array, got cupy.ndarray"):
        pack_model(model, params, buffers).forward(cp.asarray(x))


def test_packed_eval_uses_the_runs_own_backend_unless_told(trained_run, tmp_path, monkeypatch,
                                                         capsys):
    """``minibnn eval --packed`` without --backend runs the kernels the run was trained with."""
    run = load_run(trained_run)
    spec, _ = read_stored_config(run.config_json)
    path = str(tmp_path / "numpy-run.h5")
    save_run(path, dataclasses.replace(run, config_json=config_json(spec, Local(backend="numpy"))))
    used, real = [], kernels.use_backend

    def recording(name):
        used.append(name)
        return real(name)

    monkeypatch.setattr(kernels, "use_backend", recording)
    assert main(["eval", path, "--packed"]) == 0
    assert main(["eval", path, "--packed", "--backend", "auto"]) == 0
    evaluate_packed(trained_run)
    assert used == ["numpy", "auto", "auto"]
    assert capsys.readouterr().out.count("packed (1 binary layer") == 2


def test_packed_model_wants_its_own_dtype():
    model = MODELS["mlp-latent"]()
    params, buffers, x = _random_state(model, np.float32)
    with pytest.raises(DTypeError, match="float32"):
        pack_model(model, params, buffers).forward(x.astype(np.float64))


def test_export_never_replaces_a_file_without_overwrite(trained_run, tmp_path, capsys):
    out = tmp_path / "other.h5"
    out.write_bytes(b"someone else's file")
    assert "exists; pass --overwrite" in _one_line_error(
        ["export", trained_run, "--out", str(out)], capsys)
    assert out.read_bytes() == b"someone else's file"
    assert main(["export", trained_run, "--out", str(out), "--overwrite"]) == 0
    assert is_packed_file(str(out))


def test_export_never_replaces_its_input_or_a_folder_and_honours_the_umask(trained_run, tmp_path,
                                                                          capsys):
    from minibnn.commands.cli import main

    for out, message in ((trained_run, "is the input file itself"),
                         (str(tmp_path), "is a directory")):
        assert main(["export", trained_run, "--out", out, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert load_run(trained_run).checkpoint is not None
    old = os.umask(0o027)
    try:
        out = str(tmp_path / "m.packed.h5")
        assert main(["export", trained_run, "--out", out]) == 0
    finally:
        os.umask(old)
    assert os.stat(out).st_mode & 0o777 == 0o640
