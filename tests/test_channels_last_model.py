"""The channels-last group (``nn.channels_last.ChannelsLast``) against the NCHW steps it replaces.

The oracle is the group's own ``steps`` run one by one in NCHW (the layers' functional code;
for birealnet, the ``layout="nchw"`` twin's layers). Inside the group the binary convolution
is the exact XNOR-popcount count and the BatchNorm statistics are float64 sums, so the output
signs must be EQUAL; running statistics and gradients agree to rtol 1e-10 (float64) / 2e-5
(float32), relative to each array's largest entry (sums in another order). birealnet runs as
one group from its stem to its global pool: in every block the counts of the binary
convolution must be EQUAL, and the block's output too where it is the same expression on the
same numbers (identity shortcut, eval mode, no scale); else outputs agree as the gradients.
The new twins (PReLU, the average pools, BatchNorm on floats) are checked one by one against
their layers, with EQUAL values where they compute the same expression.

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
from minibnn.nn.channels_last import (ChannelsLast, ResidualNHWC, as_float, channels_first,
                                      channels_last, has_twin, nhwc_twin)
from minibnn.nn.containers import Residual, Sequential
from minibnn.nn.modules import (AvgPool2d, BatchNorm, BatchNormSign, BiasSign, BinaryConv2d,
                                Conv2d, Dense, Flatten, GlobalAvgPool, Hardtanh, LearnableBias,
                                MaxPool2d, Module, PReLU, Sign, forward_steps)
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


def check_against(group: ChannelsLast, oracle: list[Module], params: dict, buffers: dict,
                  x: np.ndarray, train: bool, dtype: Any, rng: np.random.Generator,
                  exact_y: bool, exact_dx: bool = False) -> None:
    """``group`` against the NCHW steps ``oracle`` on x, dy drawn from rng: y EQUAL (exact_y) or
    close; the same buffer and gradient names, dtypes and shapes, values close; dx close (EQUAL
    with exact_dx), or None for a group without an input gradient."""
    y, new_buffers, cache = group.forward(params, buffers, x, train)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, grads = group.backward(dy, cache)
    y2, new_buffers2, grads2, dx2 = nchw_run(oracle, params, buffers, x, train, dy)
    assert y.dtype == dtype and y.shape == y2.shape and y.flags.c_contiguous
    if exact_y:
        assert np.array_equal(y, y2)
    else:
        close(y, y2, dtype, "y")
    assert set(new_buffers) == set(new_buffers2) and set(grads) == set(grads2)
    for k in new_buffers:
        close(new_buffers[k], new_buffers2[k], dtype, k)
    for k in grads:
        assert grads[k].dtype == dtype and grads[k].shape == grads2[k].shape, k
        close(grads[k], grads2[k], dtype, k)
    if not group.input_grad:
        assert dx is None
        return
    assert dx.dtype == dtype and dx.shape == x.shape and dx.flags.c_contiguous
    if exact_dx:
        assert np.array_equal(dx, dx2)
    else:
        close(dx, dx2, dtype, "dx")


def check_group(model: Any, group: ChannelsLast, dtype: Any, x_shape: tuple[int, ...],
                train: bool, seed: int = 0) -> None:
    params, buffers = perturbed(model, dtype, seed)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal(x_shape).astype(dtype)
    check_against(group, group.steps, params, buffers, x, train, dtype, rng, exact_y=True)


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
                             ("SignsDense", "fc2"), ("BatchNormSign", "bn2"), ("Dense", "head")]


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
#: width of each block's input and its side (s2b1 and s3b1 halve it)
BIREAL_BLOCKS = {"s1b1": (16, 16), "s2b1": (16, 16), "s3b1": (32, 8)}


def bireal_twins(**variant: Any) -> tuple[Any, Any]:
    """birealnet (width 16, one block per stage: s1b1 16 -> 16, s2b1 16 -> 32 stride 2, s3b1
    32 -> 64 stride 2) in both layouts."""
    return tuple(models.birealnet(BIREAL_SHAPE, width=16, blocks_per_stage=(1, 1, 1),
                                  layout=layout, **variant) for layout in ("nhwc", "nchw"))


def block(model: Any, name: str) -> Residual:
    (found,) = [s for s in model.net.layers if isinstance(s, Residual)
                and s.body.layers[0].name == f"{name}.move"]
    return found


def the_group(model: Any) -> ChannelsLast:
    (group,) = [s for s in model.net.steps() if isinstance(s, ChannelsLast)]
    return group


def twin_kinds(twins: list[Any]) -> list[Any]:
    """Each twin's class name; a ResidualNHWC as (name, body's kinds, shortcut's or None)."""
    return [type(t).__name__ if not isinstance(t, ResidualNHWC) else
            ("ResidualNHWC", twin_kinds(t.body), t.shortcut and twin_kinds(t.shortcut))
            for t in twins]


@pytest.mark.parametrize("prelu", [True, False])
def test_birealnet_runs_as_one_group_from_the_stem_to_the_global_pool(prelu: bool) -> None:
    fast = models.birealnet((3, 16, 16), width=8, blocks_per_stage=(2, 1), prelu=prelu)
    slow = models.birealnet((3, 16, 16), width=8, blocks_per_stage=(2, 1), prelu=prelu,
                            layout="nchw")
    group, head = fast.net.steps()
    assert isinstance(group, ChannelsLast) and head is fast.net.layers[-1]
    assert [id(s) for s in group.steps] == [id(s) for s in fast.net.layers[:-1]]
    body = ["BiasSignNHWC", "ConvNHWC", "BatchNormNHWC"]
    act = ["PReLUNHWC"] * prelu
    assert twin_kinds(group.twins) == [
        "ConvNHWC", "BatchNormNHWC", ("ResidualNHWC", body, None), *act,
        ("ResidualNHWC", body, None), *act,
        ("ResidualNHWC", body, ["AvgPoolNHWC", "ConvNHWC", "BatchNormNHWC"]), *act,
        "GlobalAvgPoolNHWC"]
    # the stem needs no input gradient; every convolution inside a block does (the add)
    assert not group.input_grad and not group.twins[0].need_dx
    residuals = [t for t in group.twins if isinstance(t, ResidualNHWC)]
    assert all(t.need_dx for r in residuals for t in r.body + (r.shortcut or [])
               if hasattr(t, "need_dx"))
    # a block run on its own (outside a group) still runs its body as a group
    for residual in (s for s in fast.net.layers if isinstance(s, Residual)):
        (inner,) = residual.body.steps()
        assert isinstance(inner, ChannelsLast) and inner.input_grad
        assert describe(inner.steps)[0][0] == "BiasSign"
    assert slow.net.steps() == slow.net.layers
    assert not any(isinstance(s, (ChannelsLast, BiasSign)) for block_ in slow.net.layers
                   if isinstance(block_, Residual) for s in block_.body.steps())


def test_a_residual_joins_a_group_only_if_each_of_its_steps_runs_channels_last() -> None:
    def net(shortcut_layers: list[Module] | None, layout: str = "nhwc") -> Sequential:
        body = Sequential([LearnableBias("move", 4), Sign(), BinaryConv2d("c", 4, 4),
                           BatchNorm("bn", 4)], layout=layout)
        shortcut = None if shortcut_layers is None else Sequential(shortcut_layers,
                                                                   layout=layout)
        return Sequential([Conv2d("stem", 3, 4), BatchNorm("stem_bn", 4),
                           Residual(body, shortcut), GlobalAvgPool(), Dense("head", 4, 2)],
                          input_grad=False, layout="nhwc")

    assert [type(s).__name__ for s in net(None).steps()] == ["ChannelsLast", "Dense"]
    assert [type(s).__name__ for s in net([Conv2d("d", 4, 4, 1, 1, 0)]).steps()] == \
        ["ChannelsLast", "Dense"]
    for steps in (net([Hardtanh()]).steps(),                      # no twin
                  net([AvgPool2d(2, 1)]).steps(),                 # stride != kernel
                  net(None, layout="nchw").steps()):              # run as written
        names = [type(s).__name__ for s in steps]
        assert names == ["Conv2d", "BatchNorm", "Residual", "Stateless", "Dense"], names


def test_a_global_average_pool_ends_a_group() -> None:
    """Its (N, C) output is no NHWC activation: what follows runs as written."""
    layers = [Conv2d("stem", 3, 4), BatchNorm("bn0", 4), Sign(), BinaryConv2d("c", 4, 4),
              BatchNorm("bn1", 4), GlobalAvgPool(), BatchNorm("bn2", 4), PReLU("act", 4),
              Dense("head", 4, 2)]
    net = Sequential(layers, input_grad=False, layout="nhwc")
    group, *rest = net.steps()
    assert isinstance(group, ChannelsLast) and group.steps[-1] is layers[5]
    assert rest == layers[6:]
    model = models.Model("gap", net, (3, 6, 6), 2, {})
    params, buffers = perturbed(model, np.float64, 0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 3, 6, 6))
    check_against(group, group.steps, params, buffers, x, True, np.float64, rng, exact_y=False)


def check_bireal_block(variant: dict, dtype: Any, train: bool, name: str) -> None:
    """Block ``name`` as the whole-model group runs it (its ResidualNHWC twin) against the
    nchw twin's block: exact counts, then output, buffers and gradients."""
    fast, slow = bireal_twins(**variant)
    residual, residual2 = block(fast, name), block(slow, name)
    twin = the_group(fast).twins[the_group(fast).steps.index(residual)]
    assert isinstance(twin, ResidualNHWC)
    params, buffers = perturbed(fast, dtype, 0)
    rng = np.random.default_rng(1)
    c, hw = BIREAL_BLOCKS[name]
    x = rng.standard_normal((BIREAL_BATCH, c, hw, hw)).astype(dtype)
    assert x.size >= PARALLEL_MIN_WORK
    scaled = variant.get("scale", False)
    # the signs and the binary convolution before the BatchNorm: exact integer counts
    counts = forward_steps(twin.body[:2], params, buffers, channels_last(x), train)[0]
    counts = channels_first(as_float(counts, dtype))
    counts2 = nchw_run(residual2.body.layers[:3], params, buffers, x, train,
                       np.zeros_like(counts))[0]
    if scaled:
        close(counts, counts2, dtype, "counts")
    else:
        assert np.array_equal(counts, counts2)
    group = ChannelsLast([residual], [twin])
    y, new_buffers, _ = group.forward(params, buffers, x, train)
    assert set(new_buffers) == {k for k in buffers if k.startswith(f"{name}.")}
    # identity shortcut, eval mode, no scale: the same expression on the same numbers
    exact = name == "s1b1" and not train and not scaled
    check_against(group, [residual2], params, buffers, x, train, dtype, rng, exact_y=exact)


@pytest.mark.parametrize("name", sorted(BIREAL_BLOCKS))
@pytest.mark.parametrize("variant", BIREAL_VARIANTS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("train", [True, False])
def test_birealnet_block_twin_equals_the_nchw_block(name: str, variant: dict, dtype: Any,
                                                    train: bool) -> None:
    check_bireal_block(variant, dtype, train, name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("train", [True, False])
def test_birealnet_block_twin_on_the_reference_kernels(dtype: Any, train: bool) -> None:
    with kernels.use_backend("numpy"):
        check_bireal_block(dict(scale=True), dtype, train, "s2b1")


@pytest.mark.parametrize("name", sorted(BIREAL_BLOCKS))
@pytest.mark.parametrize("variant", [dict(), dict(scale=True)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("train", [True, False])
def test_a_block_body_run_on_its_own_is_a_group_equal_to_the_nchw_layers(
        name: str, variant: dict, dtype: Any, train: bool) -> None:
    """A Residual outside a group runs its nhwc body Sequential's own group."""
    fast, slow = bireal_twins(**variant)
    (group,) = block(fast, name).body.steps()
    layers = block(slow, name).body.layers                  # bias, sign, bconv, BN as written
    assert isinstance(group, ChannelsLast) and group.input_grad and len(layers) == 4
    params, buffers = perturbed(fast, dtype, 0)
    rng = np.random.default_rng(1)
    c, hw = BIREAL_BLOCKS[name]
    x = rng.standard_normal((BIREAL_BATCH, c, hw, hw)).astype(dtype)
    exact = not train and not variant.get("scale", False)
    check_against(group, layers, params, buffers, x, train, dtype, rng, exact_y=exact)


#: the whole model: plain, the mean|w| scale, without PReLU (each block's output feeds the next
#: block directly), and +-1 storage with the swish STE
WHOLE_VARIANTS = [dict(), dict(scale=True), dict(prelu=False), dict(prelu=False, scale=True),
                  dict(act_ste="swish", binary_storage="binary")]


def check_whole_model(variant: dict, dtype: Any, train: bool, batch: int) -> None:
    """The whole-model group and the logits, buffers and gradients against the nchw twin, end
    to end (float64: its rounding never flips a sign; see the next test for float32)."""
    fast, slow = bireal_twins(**variant)
    params, buffers = perturbed(fast, dtype, 2)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((batch,) + BIREAL_SHAPE).astype(dtype)
    check_against(the_group(fast), slow.net.layers[:-1], params, buffers, x, train, dtype,
                  rng, exact_y=False)
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
        assert grads[k].dtype == dtype, k
        close(grads[k], grads2[k], dtype, k)


def check_step_by_step(variant: dict, dtype: Any, train: bool, batch: int) -> None:
    """Each step of the whole-model group (stem, stem BN, every block and PReLU, the global
    pool) with its twin, fed what the nchw twin's layer before it output, against that layer."""
    fast, slow = bireal_twins(**variant)
    params, buffers = perturbed(fast, dtype, 2)
    rng = np.random.default_rng(3)
    h = rng.standard_normal((batch,) + BIREAL_SHAPE).astype(dtype)
    group = the_group(fast)
    for i, (step, twin, layer) in enumerate(zip(group.steps, group.twins, slow.net.layers)):
        one = ChannelsLast([step], [twin], input_grad=i > 0)     # the stem has no dx
        check_against(one, [layer], params, buffers, h, train, dtype, rng, exact_y=False)
        h = layer.forward(params, buffers, h, train)[0]


@pytest.mark.parametrize("variant", WHOLE_VARIANTS)
@pytest.mark.parametrize("train", [True, False])
def test_birealnet_forward_and_backward_equal_the_nchw_twin(variant: dict, train: bool) -> None:
    check_whole_model(variant, np.float64, train, BIREAL_BATCH)


@pytest.mark.parametrize("variant", WHOLE_VARIANTS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("train", [True, False])
def test_every_step_of_the_birealnet_group_equals_its_nchw_layer(variant: dict, dtype: Any,
                                                                 train: bool) -> None:
    """In float32 two correct summation orders put some value x + b a few ulps either side of 0
    now and then (the stem and the shortcuts are float convolutions and BatchNorms); its sign
    flips, a count moves by 2 and everything after it differs by more than rounding. So
    float32 compares every step of the group on the nchw twin's own input."""
    check_step_by_step(variant, dtype, train, BIREAL_BATCH)


@pytest.mark.parametrize("train", [True, False])
def test_birealnet_group_on_the_reference_kernels(train: bool) -> None:
    """The bodies a CuPy array runs (the kernel ops' reference bodies)."""
    with kernels.use_backend("numpy"):
        check_whole_model(dict(scale=True), np.float64, train, 8)
        check_step_by_step(dict(scale=True), np.float32, train, 8)


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
    assert [type(s) for s in fast.net.steps()] == [ChannelsLast, Dense]
    assert set(a.params) == set(b.params) and set(a.buffers) == set(b.buffers)
    for k in fast.binary_names:
        assert np.array_equal(a.params[k], b.params[k]), k
    for k in a.params:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-9, atol=1e-12, err_msg=k)
    for k in a.buffers:
        np.testing.assert_allclose(a.buffers[k], b.buffers[k], rtol=1e-9, atol=1e-12, err_msg=k)


# ------------------------------------------------------------------ the new twins, one by one


def alone(step: Module) -> ChannelsLast:
    """``step`` as a group of its own: its twin between the two layout conversions."""
    return ChannelsLast([step], [nhwc_twin(step, True)])


def test_has_twin_and_nhwc_twin_read_one_table() -> None:
    """A step without a twin (a non-affine BatchNorm, a padded max-pool, a Dense) has none in
    both, and ``nhwc_twin`` names it instead of returning some other twin."""
    assert has_twin(BatchNorm("bn", 4)) and has_twin(MaxPool2d(2))
    for step, name in [(BatchNorm("plain", 4, affine=False), "plain"),
                       (MaxPool2d(3, padding=1), "maxpool2d_forward"), (Dense("fc", 4, 2), "fc")]:
        assert not has_twin(step)
        with pytest.raises(MinibnnError, match=f"no channels-last twin for the step .*{name}"):
            nhwc_twin(step, True)


#: >= PARALLEL_MIN_WORK values, C = 16 (k = 64 pixels per wide row); and an odd size, C = 70,
#: whose wide rows hold k = gcd(105, 14) = 7 pixels
SHAPES = [(32, 16, 16, 16), (3, 70, 5, 7)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_prelu_twin_equals_the_layer(shape: tuple[int, ...], dtype: Any) -> None:
    """y and dx EQUAL (the same values without ``where``), da to rounding; x == 0 takes the
    a * x side, and slopes may be negative or above 1."""
    prelu = PReLU("act", shape[1])
    rng = np.random.default_rng(11)
    params = {"act.a": rng.uniform(-0.5, 1.5, shape[1]).astype(dtype)}
    x = rng.standard_normal(shape).astype(dtype)
    x[rng.random(shape) < 0.1] = 0.0
    assert x.size >= PARALLEL_MIN_WORK or shape[1] == 70
    for train in (True, False):
        check_against(alone(prelu), [prelu], params, {}, x, train, dtype, rng, exact_y=True,
                      exact_dx=True)


@pytest.mark.parametrize("kernel, shape", [(2, (32, 16, 16, 16)), (2, (3, 70, 5, 7)),
                                           (3, (4, 16, 17, 16))])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_block_average_pool_twin_equals_the_layer(kernel: int, shape: tuple[int, ...],
                                                  dtype: Any) -> None:
    """k = 2: the NCHW layer's floats (its four members added in the same order); k = 3 to
    rounding. Rows and columns past the last whole block get no gradient (floor mode)."""
    pool = AvgPool2d(kernel)
    rng = np.random.default_rng(12)
    x = rng.standard_normal(shape).astype(dtype)
    check_against(alone(pool), [pool], {}, {}, x, True, dtype, rng, exact_y=kernel == 2,
                  exact_dx=True)


@pytest.mark.parametrize("shape", [(64, 16, 8, 8), (3, 70, 5, 7)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_global_average_pool_twin_ends_a_group_with_n_by_c(shape: tuple[int, ...],
                                                           dtype: Any) -> None:
    pool = GlobalAvgPool()
    rng = np.random.default_rng(13)
    x = rng.standard_normal(shape).astype(dtype)
    group = alone(pool)
    assert group.forward({}, {}, x, True)[0].shape == shape[:2]
    check_against(group, [pool], {}, {}, x, True, dtype, rng, exact_y=False, exact_dx=True)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_twin_on_floats_equals_the_layer(shape: tuple[int, ...], dtype: Any,
                                                   train: bool) -> None:
    """The BatchNorm after a real convolution (birealnet's stem and shortcuts): float input,
    train-mode statistics from float64 sums; eval mode is the layer's expression (EQUAL)."""
    bn = BatchNorm("bn", shape[1])
    rng = np.random.default_rng(14)
    params, buffers = bn.init(rng, dtype)
    params = {k: v + 0.1 * rng.standard_normal(v.shape).astype(dtype) for k, v in params.items()}
    buffers = {k: v + 0.1 * np.abs(rng.standard_normal(v.shape)).astype(dtype)
               for k, v in buffers.items()}
    x = (2.0 + 3.0 * rng.standard_normal(shape)).astype(dtype)
    check_against(alone(bn), [bn], params, buffers, x, train, dtype, rng, exact_y=not train)


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


def test_sign_ste_reads_the_sign_step_and_the_functional_defaults() -> None:
    """One reading of a Sign step's STE settings: its kwargs, else ``F.sign_forward``'s own
    defaults; the fused steps' twins take theirs from it."""
    import inspect

    from minibnn.nn import functional as F
    from minibnn.nn.channels_last import BatchNormSignNHWC, BiasSignNHWC
    from minibnn.nn.modules import sign_ste
    defaults = inspect.signature(F.sign_forward).parameters
    assert sign_ste(Sign()) == (defaults["ste"].default, defaults["beta"].default)
    approx = Sign("approx")
    assert sign_ste(approx) == ("approx", defaults["beta"].default)
    twin = BatchNormSignNHWC(BatchNormSign(BatchNorm("bn", 4), approx))
    assert (twin.ste, twin.ste_beta) == sign_ste(approx)
    bias = BiasSignNHWC(BiasSign(LearnableBias("move", 4), approx))
    assert (bias.ste, bias.ste_beta) == sign_ste(approx)
