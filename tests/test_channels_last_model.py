"""The channels-last group (``nn.channels_last.ChannelsLast``) against the NCHW steps it replaces.

The oracle is the group's own ``steps`` run one by one in NCHW (the layers' functional code;
for birealnet, the layers of the ``layout="nchw"`` twin's block). Inside the group the binary
convolution is the exact XNOR-popcount count and the BatchNorm statistics are float64 sums, so
the output signs must be EQUAL; running statistics and gradients agree to rtol 1e-10 (float64)
/ 2e-5 (float32), relative to each array's largest entry (sums in another order). A Bi-Real
block body ends in a float BatchNorm: its counts must be EQUAL, and its output too where it is
the same expression on the same numbers (eval mode, no scale); else it agrees as the gradients.

Max-pool ties: on unscaled layers both paths see exact integer counts and pick the same first
maximum. With the mean|w| scale the NCHW convolution rounds ``a * count`` differently per
pixel, which breaks exact ties at random, so the scale is checked on a net without pooling.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from minibnn import kernels
from minibnn.errors import MinibnnError
from minibnn.kernels.cpu import PARALLEL_MIN_WORK
from minibnn.nn import models
from minibnn.nn.channels_last import ChannelsLast
from minibnn.nn.containers import Residual, Sequential
from minibnn.nn.modules import (BatchNorm, BatchNormSign, BiasSign, BinaryConv2d, Conv2d, Dense,
                                Flatten, LearnableBias, MaxPool2d, Module, Sign)
from minibnn.run.spec import spec_from_options
from minibnn.run.train import TrainState, model_from_spec, optimizer_from_spec, train_step


def nchw_run(steps: list[Module], params: dict, buffers: dict, x: np.ndarray, train: bool,
             dy: np.ndarray) -> tuple[np.ndarray, dict, dict, np.ndarray]:
    caches, new_buffers, h = [], {}, x
    for step in steps:
        h, updated, cache = step.forward(params, buffers, h, train)
        new_buffers.update(updated)
        caches.append(cache)
    grads, d = {}, dy
    for step, cache in zip(reversed(steps), reversed(caches)):
        d, g = step.backward(d, cache)
        grads.update(g)
    return h, new_buffers, grads, d


def close(actual: np.ndarray, desired: np.ndarray, dtype: Any, what: str) -> None:
    t = 1e-10 if dtype == np.float64 else 2e-5
    scale = max(1.0, float(np.abs(desired).max()))
    np.testing.assert_allclose(actual, desired, rtol=t, atol=t * scale, err_msg=what)


def perturbed(model: Any, dtype: Any, seed: int) -> tuple[dict, dict]:
    """Initial parameters plus noise (binary +-1 weights stay +-1), running stats moved."""
    rng = np.random.default_rng(seed)
    params, buffers = model.init(rng, dtype)
    binary = set(model.binary_names)
    storage = model.config.get("binary_storage", "latent")
    params = {k: v if (k in binary and storage == "binary")
              else v + 0.1 * rng.standard_normal(v.shape).astype(dtype)
              for k, v in params.items()}
    buffers = {k: v + 0.1 * np.abs(rng.standard_normal(v.shape)).astype(dtype)
               for k, v in buffers.items()}
    return params, buffers


def check_group(model: Any, group: ChannelsLast, dtype: Any, x_shape: tuple[int, ...],
                train: bool, seed: int = 0) -> None:
    params, buffers = perturbed(model, dtype, seed)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal(x_shape).astype(dtype)
    y, new_buffers, cache = group.forward(params, buffers, x, train)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, grads = group.backward(dy, cache)
    y2, new_buffers2, grads2, dx2 = nchw_run(group.steps, params, buffers, x, train, dy)
    assert y.dtype == dtype and y.shape == y2.shape and y.flags.c_contiguous
    assert np.array_equal(y, y2)
    assert set(new_buffers) == set(new_buffers2) and set(grads) == set(grads2)
    for k in new_buffers:
        close(new_buffers[k], new_buffers2[k], dtype, k)
    for k in grads:
        assert grads[k].dtype == dtype and grads[k].shape == grads2[k].shape, k
        close(grads[k], grads2[k], dtype, k)
    if group.input_grad:
        close(dx, dx2, dtype, "dx")
    else:
        assert dx is None


VARIANTS = [dict(), dict(binary_storage="binary"), dict(act_ste="swish"),
            dict(act_ste="identity", weight_ste="clipped"), dict(act_ste="clipped")]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("backend", ["numpy", "auto"])
def test_binary_cnn_group_equals_the_nchw_layers(variant: dict, dtype: Any, train: bool,
                                                  backend: str) -> None:
    model = models.binary_cnn((3, 16, 16), width=8, num_classes=4, **variant)
    steps = model.net.steps()
    assert [type(s).__name__ for s in steps] == ["ChannelsLast", "Stateless", "Dense"]
    with kernels.use_backend(backend):
        check_group(model, steps[0], dtype, (6, 3, 16, 16), train)


def describe(steps: list[Module]) -> list[tuple[str, str]]:
    """(type, name) of each step, a group as its steps'."""
    return [(type(s).__name__, s.name) if not isinstance(s, ChannelsLast)
            else ("ChannelsLast", str(describe(s.steps))) for s in steps]


def test_the_cnn_and_the_mlp_run_the_steps_they_ran_before_birealnet_was_grouped() -> None:
    cnn = models.binary_cnn((3, 16, 16), width=8, num_classes=4).net.steps()
    inner = [("Conv2d", "conv1"), ("BatchNormSign", "bn1")]
    for i in range(2, 7):
        inner += [("BinaryConv2d", f"conv{i}")] + [("Stateless", "")] * (i % 2 == 0)
        inner += [("BatchNormSign", f"bn{i}")]
    assert describe(cnn) == [("ChannelsLast", str(inner)), ("Stateless", ""), ("Dense", "head")]
    mlp = models.binary_mlp((1, 6, 6), hidden=(16, 8)).net.steps()
    assert describe(mlp) == [("Stateless", ""), ("Dense", "fc1"), ("BatchNormSign", "bn1"),
                             ("BinaryDense", "fc2"), ("BatchNormSign", "bn2"), ("Dense", "head")]


def test_every_birealnet_block_body_is_one_group_and_nothing_else_is_grouped() -> None:
    fast = models.birealnet((3, 16, 16), width=8, blocks_per_stage=(2, 1))
    slow = models.birealnet((3, 16, 16), width=8, blocks_per_stage=(2, 1), layout="nchw")
    blocks = [s for s in fast.net.steps() if isinstance(s, Residual)]
    assert [type(s) for s in fast.net.steps()] == [type(s) for s in slow.net.layers]
    assert len(blocks) == 3
    for block in blocks:
        (group,) = block.body.steps()
        name = block.body.layers[0].name.rsplit(".", 1)[0]
        assert isinstance(group, ChannelsLast) and group.input_grad     # the residual needs dx
        assert describe(group.steps) == [("BiasSign", f"{name}.move"),
                                         ("BinaryConv2d", f"{name}.conv"),
                                         ("BatchNorm", f"{name}.bn")]
        if block.shortcut is not None:                  # AvgPool -> 1x1 conv -> BN: no sign
            assert block.shortcut.steps() == block.shortcut.layers
    assert not any(isinstance(s, (ChannelsLast, BiasSign)) for block in
                   slow.net.layers if isinstance(block, Residual) for s in block.body.steps())


def test_bias_sign_fuses_a_learnable_bias_and_the_real_sign_only() -> None:
    move, sign = LearnableBias("move", 3), Sign("approx")
    (fused,) = Sequential([move, sign], layout="nhwc").steps()
    assert isinstance(fused, BiasSign) and fused.name == "move" and fused.bias is move
    assert Sequential([move, sign]).steps() == [move, sign]            # nchw: as written
    assert Sequential([sign, move], layout="nhwc").steps() == [sign, move]
    other = Sign()
    other.forward_fn = lambda x, ste="identity": (x, None)            # a replaced sign
    assert Sequential([move, other], layout="nhwc").steps() == [move, other]
    with pytest.raises(MinibnnError, match="needs a LearnableBias and a Sign"):
        BiasSign(move, other)
    params, buffers = Sequential([move, sign], layout="nhwc").init(np.random.default_rng(0),
                                                                   np.float32)
    assert set(params) == {"move.b"} and buffers == {}


def test_a_run_without_a_binary_conv_is_not_grouped() -> None:
    real = Sequential([Conv2d("c", 3, 4), BatchNorm("bn", 4), Sign(), Conv2d("d", 4, 4)],
                      layout="nhwc")
    assert not any(isinstance(s, ChannelsLast) for s in real.steps())
    assert isinstance(real.steps()[1], BatchNormSign)


def scaled_net(dtype: Any, input_grad: bool) -> Any:
    """conv -> BN -> sign -> scaled bconv -> BN -> sign -> scaled bconv (stride 2, 70 channels,
    two words per pixel) -> BN -> sign, then a head: no max-pool (module header)."""
    layers = [Conv2d("c1", 2, 70, bias=True), BatchNorm("bn1", 70), Sign("approx"),
              BinaryConv2d("c2", 70, 70, scale=True), BatchNorm("bn2", 70), Sign("approx"),
              BinaryConv2d("c3", 70, 8, stride=2, scale=True, weight_ste="clipped"),
              BatchNorm("bn3", 8), Sign("swish"), Flatten(), Dense("head", 8 * 16, 3)]
    net = Sequential(layers, input_grad=input_grad, layout="nhwc")
    return models.Model("scaled", net, (2, 8, 8), 3, {})


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("train", [True, False])
def test_scaled_binary_convs_and_the_input_gradient(dtype: Any, input_grad: bool,
                                                    train: bool) -> None:
    model = scaled_net(dtype, input_grad)
    group = model.net.steps()[0]
    assert isinstance(group, ChannelsLast) and group.input_grad == input_grad
    check_group(model, group, dtype, (5, 2, 8, 8), train)


def test_a_pool_after_a_float_conv_and_a_group_later_in_the_net_keeps_its_input_gradient(
) -> None:
    net = Sequential([Sign(), Conv2d("c1", 3, 8), MaxPool2d(2), BatchNorm("bn1", 8), Sign(),
                      BinaryConv2d("c2", 8, 8), BatchNorm("bn2", 8), Sign(), Flatten(),
                      Dense("head", 8 * 16, 2)], input_grad=False, layout="nhwc")
    steps = net.steps()
    assert type(steps[1]) is ChannelsLast and steps[1].input_grad      # a Sign runs first
    model = models.Model("m", net, (3, 8, 8), 2, {})
    check_group(model, steps[1], np.float64, (4, 3, 8, 8), True)


def test_training_steps_are_bit_identical_across_runs() -> None:
    model = models.binary_cnn((3, 32, 32), width=16, num_classes=10)
    params, buffers = perturbed(model, np.float32, 3)
    x = np.random.default_rng(4).standard_normal((64, 3, 32, 32)).astype(np.float32)

    def step() -> tuple[np.ndarray, dict]:
        logits, _, cache = model.forward(params, buffers, x, train=True)
        return logits, model.backward(np.ones_like(logits), cache)

    (l0, g0), (l1, g1) = step(), step()
    assert np.array_equal(l0, l1)
    for k in g0:
        assert np.array_equal(g0[k], g1[k]), k


# --------------------------------------------------------------------------- birealnet

#: big enough for the Numba kernels' parallel paths: every block's input has
#: >= PARALLEL_MIN_WORK values (pack_signs), the stride-1 and the first stride-2 block's
#: convolutions span several sample blocks (BLOCK_ROWS output pixels)
BIREAL_SHAPE, BIREAL_BATCH = (3, 16, 16), 32
BIREAL_VARIANTS = [dict(), dict(scale=True), dict(binary_storage="binary"),
                   dict(act_ste="identity", weight_ste="clipped"), dict(act_ste="swish")]


def bireal_twins(**variant: Any) -> tuple[Any, Any]:
    """birealnet (width 16, one block per stage: s1b1 16 -> 16, s2b1 16 -> 32 stride 2, s3b1
    32 -> 64 stride 2) in both layouts."""
    return tuple(models.birealnet(BIREAL_SHAPE, width=16, blocks_per_stage=(1, 1, 1),
                                  layout=layout, **variant) for layout in ("nhwc", "nchw"))


def block(model: Any, name: str) -> Residual:
    (found,) = [s for s in model.net.layers if isinstance(s, Residual)
                and s.body.layers[0].name == f"{name}.move"]
    return found


def check_bireal_body(variant: dict, dtype: Any, train: bool, name: str) -> None:
    fast, slow = bireal_twins(**variant)
    (group,) = block(fast, name).body.steps()
    layers = block(slow, name).body.layers                  # bias, sign, bconv, BN as written
    assert isinstance(group, ChannelsLast) and len(layers) == 4
    params, buffers = perturbed(fast, dtype, 0)
    rng = np.random.default_rng(1)
    c, hw = layers[0].channels, {"s1b1": 16, "s2b1": 16, "s3b1": 8}[name]
    x = rng.standard_normal((BIREAL_BATCH, c, hw, hw)).astype(dtype)
    assert x.size >= PARALLEL_MIN_WORK
    y, new_buffers, cache = group.forward(params, buffers, x, train)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, grads = group.backward(dy, cache)
    y2, new_buffers2, grads2, dx2 = nchw_run(layers, params, buffers, x, train, dy)
    assert y.dtype == dtype and y.shape == y2.shape and y.flags.c_contiguous
    scaled = variant.get("scale", False)
    if train or scaled:
        close(y, y2, dtype, "y")
    else:                   # the same expression on the same exact counts and statistics
        assert np.array_equal(y, y2)
    # the signs and the binary convolution before the BatchNorm: exact integer counts
    counts = ChannelsLast(group.steps[:2]).forward(params, buffers, x, train)[0]
    counts2 = nchw_run(layers[:3], params, buffers, x, train, np.zeros_like(counts))[0]
    if scaled:
        close(counts, counts2, dtype, "counts")
    else:
        assert np.array_equal(counts, counts2)
    assert set(new_buffers) == set(new_buffers2) == {f"{name}.bn.running_mean",
                                                     f"{name}.bn.running_var"}
    assert set(grads) == set(grads2) == {f"{name}.move.b", f"{name}.conv.w",
                                         f"{name}.bn.gamma", f"{name}.bn.beta"}
    for k in new_buffers:
        close(new_buffers[k], new_buffers2[k], dtype, k)
    for k in grads:
        assert grads[k].dtype == dtype and grads[k].shape == grads2[k].shape, k
        close(grads[k], grads2[k], dtype, k)
    assert dx.dtype == dtype and dx.shape == x.shape
    close(dx, dx2, dtype, "dx")


@pytest.mark.parametrize("name", ["s1b1", "s2b1", "s3b1"])
@pytest.mark.parametrize("variant", BIREAL_VARIANTS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("train", [True, False])
def test_birealnet_block_body_group_equals_the_nchw_layers(name: str, variant: dict,
                                                           dtype: Any, train: bool) -> None:
    check_bireal_body(variant, dtype, train, name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("train", [True, False])
def test_birealnet_block_body_group_on_the_reference_kernels(dtype: Any, train: bool) -> None:
    with kernels.use_backend("numpy"):
        check_bireal_body(dict(scale=True), dtype, train, "s2b1")


@pytest.mark.parametrize("variant", [dict(), dict(scale=True)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("train", [True, False])
def test_birealnet_forward_and_backward_equal_the_nchw_twin(variant: dict, dtype: Any,
                                                            train: bool) -> None:
    fast, slow = bireal_twins(**variant)
    params, buffers = perturbed(fast, dtype, 2)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((BIREAL_BATCH,) + BIREAL_SHAPE).astype(dtype)
    logits, new_buffers, cache = fast.forward(params, buffers, x, train)
    logits2, new_buffers2, cache2 = slow.forward(params, buffers, x, train)
    close(logits, logits2, dtype, "logits")
    dlogits = rng.standard_normal(logits.shape).astype(dtype)
    grads, grads2 = fast.backward(dlogits, cache), slow.backward(dlogits, cache2)
    assert set(new_buffers) == set(new_buffers2) == set(buffers)
    assert set(grads) == set(grads2) == set(params)
    for k in new_buffers:
        close(new_buffers[k], new_buffers2[k], dtype, k)
    for k in grads:
        close(grads[k], grads2[k], dtype, k)


def test_birealnet_trains_to_the_same_parameters_in_both_layouts_in_float64() -> None:
    """Four CEMA + Adam steps from one start on the same synthetic batches: the same +-1
    weights and running statistics, the real parameters to rounding."""
    states = {}
    for layout in ("nhwc", "nchw"):
        spec = spec_from_options({"model": "birealnet", "width": 8, "layout": layout,
                                  "dataset": "synthetic"})
        model = model_from_spec(spec, (3, 16, 16), 10)
        optimizer = optimizer_from_spec(spec, model, steps_per_epoch=4)
        rng = np.random.default_rng(0)
        params, buffers = model.init(rng, np.float64)
        state = TrainState(params, buffers, optimizer.init(params), rng)
        data = np.random.default_rng(1)
        for _ in range(4):
            x = data.standard_normal((32, 3, 16, 16))
            train_step(model, optimizer, state, x, data.integers(0, 10, 32))
        states[layout] = (model, state)
    (fast, a), (_, b) = states["nhwc"], states["nchw"]
    assert any(isinstance(s, ChannelsLast) for r in fast.net.steps() if isinstance(r, Residual)
               for s in r.body.steps())
    assert set(a.params) == set(b.params) and set(a.buffers) == set(b.buffers)
    for k in fast.binary_names:
        assert np.array_equal(a.params[k], b.params[k]), k
    for k in a.params:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-9, atol=1e-12, err_msg=k)
    for k in a.buffers:
        np.testing.assert_allclose(a.buffers[k], b.buffers[k], rtol=1e-9, atol=1e-12, err_msg=k)


def bias_sign_net(input_grad: bool) -> Any:
    """bias -> sign -> bconv (2 words per pixel) -> BN -> sign -> head: one group that starts
    with a bias+sign and ends in packed signs."""
    layers = [LearnableBias("move", 70), Sign("approx"), BinaryConv2d("c", 70, 8),
              BatchNorm("bn", 8), Sign("swish"), Flatten(), Dense("head", 8 * 64, 3)]
    return models.Model("bias", Sequential(layers, input_grad=input_grad, layout="nhwc"),
                        (70, 8, 8), 3, {})


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("train", [True, False])
def test_a_group_that_starts_with_a_bias_sign_keeps_or_skips_its_input_gradient(
        dtype: Any, input_grad: bool, train: bool) -> None:
    model = bias_sign_net(input_grad)
    group = model.net.steps()[0]
    assert isinstance(group, ChannelsLast) and group.input_grad == input_grad
    assert describe(group.steps) == [("BiasSign", "move"), ("BinaryConv2d", "c"),
                                     ("BatchNormSign", "bn")]
    check_group(model, group, dtype, (20, 70, 8, 8), train)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bias_sign_takes_sign_of_zero_as_plus_one_like_the_layers(dtype: Any) -> None:
    """x + b == 0 exactly in about a fifth of the entries: sign(0) = +1 on both paths, and the
    approx STE's gradient 2 - 2|0| = 2 there."""
    model = bias_sign_net(True)
    group = model.net.steps()[0]
    rng = np.random.default_rng(5)
    params, buffers = model.init(rng, dtype)
    params["move.b"] = rng.integers(-2, 3, 70).astype(dtype)
    x = rng.integers(-2, 3, (20, 70, 8, 8)).astype(dtype)
    assert (x + params["move.b"][:, None, None] == 0).mean() > 0.15
    for train in (True, False):
        y, _, cache = group.forward(params, buffers, x, train)
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx, grads = group.backward(dy, cache)
        y2, _, grads2, dx2 = nchw_run(group.steps, params, buffers, x, train, dy)
        assert np.array_equal(y, y2)
        close(dx, dx2, dtype, "dx")
        close(grads["move.b"], grads2["move.b"], dtype, "move.b")
