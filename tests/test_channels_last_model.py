"""The channels-last group (``nn.channels_last.ChannelsLast``) against the NCHW steps it replaces.

The oracle is the group's own ``steps`` run one by one in NCHW (the layers' functional code).
Inside the group the binary convolution is the exact XNOR-popcount count and the BatchNorm
statistics are float64 sums, so the output signs must be EQUAL; running statistics and
gradients agree to rtol 1e-10 (float64) / 2e-5 (float32), relative to each array's largest
entry (sums in another order).

Max-pool ties: on unscaled layers both paths see exact integer counts and pick the same first
maximum. With the mean|w| scale the NCHW convolution rounds ``a * count`` differently per
pixel, which breaks exact ties at random, so the scale is checked on a net without pooling.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from minibnn import kernels
from minibnn.nn import models
from minibnn.nn.channels_last import ChannelsLast
from minibnn.nn.containers import Sequential
from minibnn.nn.modules import (BatchNorm, BatchNormSign, BinaryConv2d, Conv2d, Dense, Flatten,
                                MaxPool2d, Sign)


def nchw_run(group: ChannelsLast, params: dict, buffers: dict, x: np.ndarray, train: bool,
             dy: np.ndarray) -> tuple[np.ndarray, dict, dict, np.ndarray]:
    caches, new_buffers, h = [], {}, x
    for step in group.steps:
        h, updated, cache = step.forward(params, buffers, h, train)
        new_buffers.update(updated)
        caches.append(cache)
    grads, d = {}, dy
    for step, cache in zip(reversed(group.steps), reversed(caches)):
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
    y2, new_buffers2, grads2, dx2 = nchw_run(group, params, buffers, x, train, dy)
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


def test_birealnet_and_mlp_have_no_group_and_a_run_without_a_binary_conv_is_not_grouped(
) -> None:
    for model in (models.birealnet((3, 16, 16), width=8, blocks_per_stage=(1, 1)),
                  models.binary_mlp((1, 6, 6), hidden=(16, 8))):
        assert not any(isinstance(s, ChannelsLast) for s in model.net.steps())
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
