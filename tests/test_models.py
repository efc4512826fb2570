"""Whole-model backward passes, binary-weight storage and the mean|w| scale gradient.

sign() has no useful derivative, so finite differences cannot check a binary network as it is.
The model plumbing (Sequential, Residual, BatchNorm, pooling, the binary layers' weight path)
is checked by replacing sign by its identity-STE surrogate (sign(x) -> x, whose true derivative
is exactly what the identity STE claims) and comparing with centred finite differences.
"""
import numpy as np
import pytest

from minibnn.errors import MinibnnError, ShapeError
from minibnn.nn import functional as F
from minibnn.nn import models
from minibnn.nn.modules import BinaryDense


@pytest.fixture
def smooth_sign(monkeypatch):
    """Replace sign by the identity (and the STE factor by 1) everywhere in minibnn.nn."""
    monkeypatch.setattr(F, "sign_forward", lambda x, ste="identity", beta=5.0: (x, None))
    monkeypatch.setattr(F, "sign_backward", lambda dy, cache: dy)
    monkeypatch.setattr(F, "ste_grad", lambda x, ste="identity", beta=5.0: 1.0)


def _loss(model, params, buffers, x, dout):
    y, _, _ = model.forward(params, buffers, x, train=True)
    return float((y * dout).sum())


@pytest.mark.parametrize("build, shape", [
    (lambda: models.binary_mlp((1, 6, 6), hidden=(7, 5), num_classes=3), (4, 1, 6, 6)),
    (lambda: models.binary_mlp((1, 6, 6), hidden=(7, 5), num_classes=3, real_first=False),
     (4, 1, 6, 6)),
    (lambda: models.binary_cnn((2, 8, 8), width=2, num_classes=3), (3, 2, 8, 8)),
    (lambda: models.birealnet((3, 8, 8), width=2, blocks_per_stage=(1, 1), num_classes=3),
     (3, 3, 8, 8)),
    # RSign, RPReLU, both shortcuts (pooled and identity) and the widening Concat
    (lambda: models.reactnet((3, 8, 8), width=2, blocks_per_stage=(1, 2), num_classes=3),
     (3, 3, 8, 8)),
    # real weights (two-step training's first step) and a fully real network (a teacher)
    (lambda: models.reactnet((3, 8, 8), width=2, blocks_per_stage=(1, 1), num_classes=3,
                             weights="real"), (3, 3, 8, 8)),
    (lambda: models.binary_cnn((2, 8, 8), width=2, num_classes=3, weights="real",
                               activations="real"), (3, 2, 8, 8)),
])
def test_whole_model_backward_matches_finite_differences(smooth_sign, build, shape):
    model = build()
    rng = np.random.default_rng(0)
    params, buffers = model.init(rng, np.float64)
    # move every BatchNorm/PReLU/bias parameter off its default so their gradients matter
    params = {k: v + 0.1 * rng.normal(size=v.shape) for k, v in params.items()}
    x = rng.normal(size=shape)
    y, _, cache = model.forward(params, buffers, x, train=True)
    dout = rng.normal(size=y.shape)
    grads = model.backward(dout, cache)
    assert set(grads) == set(params)
    direction = {k: rng.normal(size=v.shape) for k, v in params.items()}
    eps = 1e-6
    plus = {k: v + eps * direction[k] for k, v in params.items()}
    minus = {k: v - eps * direction[k] for k, v in params.items()}
    numeric = (_loss(model, plus, buffers, x, dout) - _loss(model, minus, buffers, x, dout)) / (2 * eps)
    analytic = sum(float((grads[k] * direction[k]).sum()) for k in params)
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-8)


def test_binary_storage_gradient_equals_latent_identity_ste_gradient():
    """With b = sign(w) and the identity weight STE, dL/db (binary) == dL/dw (latent)."""
    rng = np.random.default_rng(1)
    latent = models.binary_mlp((1, 5, 5), hidden=(6, 6), num_classes=4)
    binary = models.binary_mlp((1, 5, 5), hidden=(6, 6), num_classes=4, binary_storage="binary")
    params, buffers = latent.init(rng, np.float64)
    bparams = dict(params)
    for name in latent.binary_names:
        bparams[name] = np.where(params[name] >= 0, 1.0, -1.0)
    x, labels = rng.normal(size=(8, 1, 5, 5)), rng.integers(0, 4, 8)
    out = []
    for model, p in ((latent, params), (binary, bparams)):
        logits, _, cache = model.forward(p, buffers, x, train=True)
        loss, dlogits = F.softmax_cross_entropy(logits, labels)
        out.append((loss, model.backward(dlogits, cache)))
    assert out[0][0] == out[1][0]
    for name in params:
        np.testing.assert_array_equal(out[0][1][name], out[1][1][name])


def test_binary_init_is_sign_of_latent_init():
    latent = models.binary_cnn((1, 8, 8), width=2)
    binary = models.binary_cnn((1, 8, 8), width=2, binary_storage="binary")
    p_latent, _ = latent.init(np.random.default_rng(3), np.float32)
    p_binary, _ = binary.init(np.random.default_rng(3), np.float32)
    for name in latent.binary_names:
        np.testing.assert_array_equal(p_binary[name], np.where(p_latent[name] >= 0, 1, -1))
        assert set(np.unique(p_binary[name])) <= {-1.0, 1.0}


def test_scale_gradient_matches_its_closed_form():
    """dL/dw = a ste'(w) dW + sign(w) mean(dW sign(w)); the second term by finite differences."""
    rng = np.random.default_rng(2)
    layer = BinaryDense("fc", 5, 3, scale=True)
    params, _ = layer.init(rng, np.float64)
    w = params["fc.w"]
    dw_eff = rng.normal(size=w.shape)
    _, cache = layer.effective_weight(params)
    got = layer.weight_grad(dw_eff, cache)
    a = np.abs(w).mean(axis=1, keepdims=True)
    ste_part = a * dw_eff                       # identity STE
    eps = 1e-7
    numeric = np.zeros_like(w)
    for idx in np.ndindex(w.shape):
        plus, minus = w.copy(), w.copy()
        plus[idx] += eps
        minus[idx] -= eps
        f = lambda v: (np.abs(v).mean(axis=1, keepdims=True) * np.sign(v) * dw_eff).sum()
        numeric[idx] = (f(plus) - f(minus)) / (2 * eps)
    np.testing.assert_allclose(got - ste_part, numeric, rtol=1e-6, atol=1e-9)


def test_clipped_weight_ste_masks_large_latent_weights():
    layer = BinaryDense("fc", 2, 1, weight_ste="clipped")
    params = {"fc.w": np.array([[0.5, 2.0]])}
    _, cache = layer.effective_weight(params)
    np.testing.assert_array_equal(layer.weight_grad(np.ones((1, 2)), cache), [[1.0, 0.0]])


def test_model_input_shape_and_bad_options_are_one_line_errors():
    model = models.binary_mlp()
    params, buffers = model.init(np.random.default_rng(0))
    with pytest.raises(ShapeError, match=r"input must have shape \(N, 1, 28, 28\)"):
        model.forward(params, buffers, np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(MinibnnError, match="unknown binary weight storage"):
        models.binary_mlp(binary_storage="packed")
    with pytest.raises(MinibnnError, match="needs latent weights"):
        models.binary_mlp(binary_storage="binary", scale=True)
    with pytest.raises(MinibnnError, match="unknown model"):
        models.build_model("resnet50")


#: the documented builder defaults (README, DESIGN), written out: models.defaults must give them
DOCUMENTED_DEFAULTS = {
    "binary_mlp": {"input_shape": (1, 28, 28), "hidden": (1024, 1024), "num_classes": 10,
                   "binary_storage": "latent", "scale": False, "weight_ste": "identity",
                   "act_ste": "approx", "init_scale": 1.0, "real_first": True,
                   "in_features": None, "layout": "nhwc", "weights": "binary",
                   "activations": "binary"},
    "binary_cnn": {"input_shape": (1, 28, 28), "width": 32, "num_classes": 10,
                   "binary_storage": "latent", "scale": False, "weight_ste": "identity",
                   "act_ste": "approx", "init_scale": 1.0, "layout": "nhwc",
                   "weights": "binary", "activations": "binary"},
    "birealnet": {"input_shape": (3, 32, 32), "width": 16, "blocks_per_stage": (2, 2, 2),
                  "num_classes": 10, "binary_storage": "latent", "scale": False,
                  "weight_ste": "identity", "act_ste": "approx", "init_scale": 1.0,
                  "prelu": True, "layout": "nhwc", "weights": "binary",
                  "activations": "binary"},
    "reactnet": {"input_shape": (3, 32, 32), "width": 16, "blocks_per_stage": (1, 2, 2, 2),
                 "num_classes": 10, "binary_storage": "latent", "scale": False,
                 "weight_ste": "identity", "act_ste": "approx", "init_scale": 1.0,
                 "layout": "nchw", "weights": "binary", "activations": "binary"},
}


def test_defaults_lists_every_builder():
    assert sorted(DOCUMENTED_DEFAULTS) == sorted(models.MODEL_BUILDERS)


@pytest.mark.parametrize("name", sorted(DOCUMENTED_DEFAULTS))
def test_builders_default_to_the_bireal_ste_and_the_documented_values(name):
    assert models.defaults(name) == DOCUMENTED_DEFAULTS[name]
    model = models.build_model(name)
    assert model.config["act_ste"] == "approx"   # the STE minibnn trains with (README, Results)
    with pytest.raises(MinibnnError, match="unknown model"):
        models.defaults("resnet50")


@pytest.mark.parametrize("name", sorted(models.MODEL_BUILDERS))
def test_real_weights_and_activations_keep_the_parameter_names(name):
    """weights="real" turns every binary layer into a real one under the same name (so a run
    can start from another's weights) and leaves no binary parameter; activations="real" puts
    a ReLU where each sign was."""
    small = {"binary_mlp": dict(input_shape=(1, 8, 8), hidden=(6, 5)),
             "binary_cnn": dict(input_shape=(3, 8, 8), width=2),
             "birealnet": dict(input_shape=(3, 8, 8), width=2, blocks_per_stage=(1, 1)),
             "reactnet": dict(input_shape=(3, 8, 8), width=2, blocks_per_stage=(1, 1))}[name]
    rng = np.random.default_rng(0)
    binary = models.build_model(name, **small)
    real = models.build_model(name, weights="real", activations="real", **small)
    p_binary, b_binary = binary.init(rng, np.float64)
    p_real, b_real = real.init(rng, np.float64)
    assert binary.binary_names and real.binary_names == []
    assert {k: v.shape for k, v in p_binary.items()} == {k: v.shape for k, v in p_real.items()}
    assert set(b_binary) == set(b_real)
    x = rng.normal(size=(4,) + small["input_shape"])
    y, _, _ = real.forward(p_real, b_real, x, train=True)
    assert np.all(np.isfinite(y))
    with pytest.raises(MinibnnError, match="--weights must be one of binary, real"):
        models.build_model(name, weights="ternary", **small)


def test_reactnet_refuses_an_image_its_stages_cannot_halve():
    with pytest.raises(ShapeError, match="reactnet: .* divisible by 8; got 28x28"):
        models.reactnet((1, 28, 28))
    assert models.reactnet((1, 28, 28), blocks_per_stage=(1, 1, 1)).input_shape == (1, 28, 28)


def test_a_name_declared_twice_is_refused_in_any_container():
    from minibnn.nn.containers import Concat, Sequential
    from minibnn.nn.modules import PReLU

    rng = np.random.default_rng(0)
    for container in (Sequential([PReLU("a", 2), PReLU("a", 2)]),
                      Concat([PReLU("a", 2), PReLU("a", 2)])):
        with pytest.raises(MinibnnError, match=r"duplicate parameter names in model: \['a.a'\]"):
            container.init(rng, np.float64)


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("real_first", [True, False])
def test_top_level_backward_skips_the_unread_input_gradient(layout, real_first, monkeypatch):
    """A model's top level (``input_grad=False``) gives the same gradients without the first
    dense layer's ``dy . W`` (nobody reads dx) and returns None for dx."""
    from minibnn.nn import containers

    model = models.binary_mlp(in_features=12, hidden=(16, 16), num_classes=3, layout=layout,
                              real_first=real_first)
    params, buffers = model.init(np.random.default_rng(0), np.float32)
    x = np.random.default_rng(1).standard_normal((8, 12)).astype(np.float32)
    dy = np.random.default_rng(2).standard_normal((8, 3)).astype(np.float32)
    full = containers.Sequential(model.net.layers, input_grad=True, layout=layout)
    want_dx, want = full.backward(dy, full.forward(params, buffers, x, True)[2])
    from minibnn.nn.functional import dense

    need = []
    real = F.dense_backward
    spy = lambda *a: need.append(a[2]) or real(*a)              # noqa: E731
    monkeypatch.setattr(F, "dense_backward", spy)               # the layers' calls
    monkeypatch.setattr(dense, "dense_backward", spy)           # signs_dense_backward's
    dx, got = model.net.backward(dy, model.net.forward(params, buffers, x, True)[2])
    assert want_dx.shape == x.shape and dx is None and need == [True, True, False]
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("in_features", [3, 64, 130, 1024])
def test_signs_dense_is_the_float_product_bit_for_bit(backend, dtype, in_features):
    """On +-1 inputs and weights, the XNOR-popcount product and its backward give the float
    layer's bits (every partial sum is an integer), also past a word boundary."""
    from minibnn import kernels

    rng = np.random.default_rng(in_features)
    x = np.where(rng.random((70, in_features)) < 0.5, -1.0, 1.0).astype(dtype)
    w = np.where(rng.random((33, in_features)) < 0.5, -1.0, 1.0).astype(dtype)
    dy = rng.standard_normal((70, 33)).astype(dtype)
    with kernels.use_backend(backend):
        y, cache = F.signs_dense_forward(x, w)
        want_y, want_cache = F.dense_forward(x, w)
        dx, dw = F.signs_dense_backward(dy, cache)
        want_dx, want_dw, _ = F.dense_backward(dy, want_cache)
    assert y.dtype == dtype and cache.xbits.shape == (70, -(-in_features // 64))  # x as bits
    for got, want in ((y, want_y), (dx, want_dx), (dw, want_dw)):
        np.testing.assert_array_equal(got, want)


def test_signs_dense_checks_its_arguments_like_dense():
    with pytest.raises(ShapeError, match="signs_dense_forward: w.shape"):
        F.signs_dense_forward(np.ones((2, 4), np.float32), np.ones((3, 5), np.float32))


@pytest.mark.parametrize("storage,scale", [("binary", False), ("latent", False),
                                           ("latent", True)])
def test_the_fast_mlp_runs_its_hidden_layers_on_bits_with_the_readable_bits(storage, scale):
    """The nhwc MLP runs each unscaled hidden BinaryDense after a sign as ``SignsDense``;
    its logits and gradients equal the readable nchw model's bit for bit (float32)."""
    from minibnn.nn.modules import SignsDense

    kw = dict(in_features=100, hidden=(96, 80, 64), num_classes=5, binary_storage=storage,
              scale=scale)
    fast, readable = models.binary_mlp(**kw), models.binary_mlp(**kw, layout="nchw")
    on_bits = [s for s in fast.net.steps() if isinstance(s, SignsDense)]
    assert len(on_bits) == (0 if scale else 2)
    params, buffers = readable.init(np.random.default_rng(0), np.float32)
    x = np.random.default_rng(1).standard_normal((40, 100)).astype(np.float32)
    dy = np.random.default_rng(2).standard_normal((40, 5)).astype(np.float32)
    results = []
    for model in (fast, readable):
        logits, _, cache = model.forward(params, buffers, x, train=True)
        results.append((logits, model.backward(dy, cache)))
    (a, ga), (b, gb) = results
    np.testing.assert_array_equal(a, b)
    assert ga.keys() == gb.keys()
    for k in ga:
        np.testing.assert_array_equal(ga[k], gb[k], err_msg=k)
