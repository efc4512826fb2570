"""Gradient checks for minibnn.nn.functional.

Smooth backward passes are compared with centred finite differences in float64 through the
``sum(out * dout)`` trick (a random direction ``dout``); STE backward passes are *defined*, so
they are compared with their closed forms. Also: conv2d against a naive loop, the im2col layout
and its adjoint col2im (the kernel ops the conv layer calls), BatchNorm running statistics
against PyTorch's rule, the fused BatchNorm + sign against the two layers, float32 in ->
float32 out.
"""
from __future__ import annotations

import numpy as np
import pytest

import minibnn.nn.functional as F
from minibnn import kernels

EPS = 1e-6
RTOL, ATOL = 1e-5, 1e-7


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def numeric_grad(fun, arr: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Centred differences of the scalar ``fun()`` w.r.t. ``arr`` (perturbed in place)."""
    g = np.zeros_like(arr)
    flat = arr.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        f_plus = fun()
        flat[i] = old - eps
        f_minus = fun()
        flat[i] = old
        g.reshape(-1)[i] = (f_plus - f_minus) / (2 * eps)
    return g


def gradcheck(forward, backward, args: list, wrt: dict[int, int], rng, **kwargs) -> None:
    """Check ``backward`` against finite differences of ``sum(forward(*args)[0] * dout)``.

    ``wrt`` maps the position of an argument in ``args`` to the position of its gradient in the
    backward's output tuple (a single array counts as a 1-tuple).
    """
    y, cache = forward(*args, **kwargs)
    dout = rng.standard_normal(y.shape)
    grads = backward(dout, cache)
    if not isinstance(grads, tuple):
        grads = (grads,)

    def scalar() -> float:
        return float(np.sum(forward(*args, **kwargs)[0] * dout))

    for arg_pos, grad_pos in wrt.items():
        num = numeric_grad(scalar, args[arg_pos])
        assert grads[grad_pos].shape == args[arg_pos].shape
        np.testing.assert_allclose(grads[grad_pos], num, rtol=RTOL, atol=ATOL,
                                   err_msg=f"gradient of argument {arg_pos}")


# ----------------------------------------------------------------------------------- dense

@pytest.mark.parametrize("bias", [True, False])
def test_dense_gradients(rng, bias):
    x = rng.standard_normal((4, 5))
    w = rng.standard_normal((3, 5))
    b = rng.standard_normal(3) if bias else None
    wrt = {0: 0, 1: 1, 2: 2} if bias else {0: 0, 1: 1}
    gradcheck(F.dense_forward, F.dense_backward, [x, w, b], wrt, rng)
    y, cache = F.dense_forward(x, w, b)
    np.testing.assert_allclose(y, x @ w.T + (b if bias else 0))
    assert (F.dense_backward(np.ones_like(y), cache)[2] is None) == (not bias)


# ------------------------------------------------------------------------------------ conv

def conv2d_naive(x, w, b, stride, padding):
    """Direct loop: y[n,o,i,j] = sum_{c,p,q} w[o,c,p,q] * xpad[n,c,i*s+p,j*s+q] + b[o]."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xpad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (wd + 2 * padding - kw) // stride + 1
    y = np.zeros((n, o, oh, ow), dtype=x.dtype)
    for ni in range(n):
        for oi in range(o):
            for i in range(oh):
                for j in range(ow):
                    patch = xpad[ni, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
                    y[ni, oi, i, j] = np.sum(patch * w[oi]) + (b[oi] if b is not None else 0)
    return y


CONV_CASES = [
    # (x shape, w shape, stride, padding, bias)
    ((2, 3, 5, 5), (4, 3, 3, 3), 1, 0, True),
    ((2, 3, 5, 7), (4, 3, 3, 3), 1, 1, False),
    ((1, 2, 6, 5), (3, 2, 3, 2), 2, 0, True),
    ((2, 2, 7, 6), (3, 2, 3, 3), 2, 1, True),
    ((1, 2, 4, 5), (2, 2, 3, 3), 1, 2, False),
    ((1, 1, 5, 4), (2, 1, 1, 1), 2, 2, True),
]


@pytest.mark.parametrize("xs,ws,stride,padding,bias", CONV_CASES)
def test_conv2d_matches_naive(rng, xs, ws, stride, padding, bias):
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    b = rng.standard_normal(ws[0]) if bias else None
    y, _ = F.conv2d_forward(x, w, b, stride=stride, padding=padding)
    np.testing.assert_allclose(y, conv2d_naive(x, w, b, stride, padding), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("xs,ws,stride,padding,bias", CONV_CASES)
def test_conv2d_gradients(rng, xs, ws, stride, padding, bias):
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    b = rng.standard_normal(ws[0]) if bias else None
    wrt = {0: 0, 1: 1, 2: 2} if bias else {0: 0, 1: 1}
    gradcheck(F.conv2d_forward, F.conv2d_backward, [x, w, b], wrt, rng,
              stride=stride, padding=padding)


@pytest.mark.parametrize("backend", ["numpy", "auto"])
def test_im2col_layout_and_col2im_adjoint(rng, backend):
    n, c, h, w, kh, kw, s, p = 2, 3, 5, 6, 3, 2, 2, 1
    x = rng.standard_normal((n, c, h, w))
    with kernels.use_backend(backend):
        cols = kernels.call("im2col", x, kh, kw, s, p)
    oh, ow = (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1
    assert cols.shape == (n * oh * ow, c * kh * kw)
    xpad = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    for ni, oi, oj, ci, i, j in [(0, 0, 0, 0, 0, 0), (1, 2, 3, 2, 2, 1), (1, 1, 0, 1, 1, 0)]:
        assert cols[(ni * oh + oi) * ow + oj, (ci * kh + i) * kw + j] == \
            xpad[ni, ci, oi * s + i, oj * s + j]
    # col2im is the adjoint of im2col: <im2col(x), C> == <x, col2im(C)>
    cmat = rng.standard_normal(cols.shape)
    with kernels.use_backend(backend):
        back = kernels.call("col2im", cmat, x.shape, kh, kw, s, p)
    assert back.shape == x.shape
    np.testing.assert_allclose(np.sum(cols * cmat), np.sum(x * back), rtol=1e-12)


# ------------------------------------------------------------------------------- batchnorm

@pytest.mark.parametrize("shape", [(6, 3), (3, 2, 3, 2)])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_train_gradients(rng, shape, affine):
    c = shape[1]
    x = rng.standard_normal(shape) * 2 + 1
    gamma = rng.standard_normal(c) if affine else None
    beta = rng.standard_normal(c) if affine else None
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    wrt = {0: 0, 1: 1, 2: 2} if affine else {0: 0}
    gradcheck(F.batchnorm_forward, F.batchnorm_backward, [x, gamma, beta, rm, rv], wrt, rng,
              train=True)


@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 2, 3)])
def test_batchnorm_eval_gradients(rng, shape):
    c = shape[1]
    x = rng.standard_normal(shape)
    gamma, beta = rng.standard_normal(c), rng.standard_normal(c)
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    gradcheck(F.batchnorm_forward, F.batchnorm_backward, [x, gamma, beta, rm, rv],
              {0: 0, 1: 1, 2: 2}, rng, train=False)


def test_batchnorm_running_stats_follow_pytorch_rule(rng):
    x = rng.standard_normal((4, 3, 2, 5)) * 3 + 2
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    rm0, rv0 = rm.copy(), rv.copy()
    momentum, eps = 0.3, 1e-3
    y, cache = F.batchnorm_forward(x, None, None, rm, rv, train=True, momentum=momentum, eps=eps)
    for ch in range(3):
        vals = x[:, ch].ravel()
        m = vals.size
        mean = vals.sum() / m
        var_biased = ((vals - mean) ** 2).sum() / m
        var_unbiased = ((vals - mean) ** 2).sum() / (m - 1)
        assert cache.running_mean[ch] == pytest.approx((1 - momentum) * rm0[ch] + momentum * mean)
        assert cache.running_var[ch] == pytest.approx(
            (1 - momentum) * rv0[ch] + momentum * var_unbiased)
        np.testing.assert_allclose(y[:, ch], (x[:, ch] - mean) / np.sqrt(var_biased + eps))
    np.testing.assert_array_equal(rm, rm0)          # inputs are not modified
    np.testing.assert_array_equal(rv, rv0)
    # eval mode: running stats normalise and pass through the cache unchanged
    y_eval, cache_eval = F.batchnorm_forward(x, None, None, rm, rv, train=False, eps=eps)
    np.testing.assert_allclose(y_eval, (x - rm[:, None, None]) / np.sqrt(rv[:, None, None] + eps))
    np.testing.assert_array_equal(cache_eval.running_mean, rm0)
    np.testing.assert_array_equal(cache_eval.running_var, rv0)


def _bn_sign_inputs(rng, shape, dtype, ties):
    """x, gamma, beta, running_mean, running_var; ``ties`` puts exact zeros into y."""
    c = shape[1]
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    gamma = rng.standard_normal(c).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    rm, rv = rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
    if ties:                    # y = xhat * gamma + beta = 0 exactly where x = mean, beta = 0
        gamma[0], beta[0] = 1.0, 0.0
        x[:, 0] = rm[0]
    return x, gamma, beta, rm, rv


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 5, 6)])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("backend", ["numpy", "auto"])
@pytest.mark.parametrize("ste", ["identity", "approx"])
def test_batchnorm_sign_equals_batchnorm_then_sign(rng, dtype, shape, train, backend, ste):
    """The fused pair gives the bits of the two layers: output, running stats and gradients."""
    x, gamma, beta, rm, rv = _bn_sign_inputs(rng, shape, dtype, ties=not train)
    kw = dict(train=train, momentum=0.3, eps=1e-3)
    with kernels.use_backend(backend):
        y, bn_cache = F.batchnorm_forward(x, gamma, beta, rm, rv, **kw)
        s, sign_cache = F.sign_forward(y, ste)
        fused, cache = F.batchnorm_sign_forward(x, gamma, beta, rm, rv, ste=ste, **kw)
        ds = rng.standard_normal(shape).astype(dtype)
        want = F.batchnorm_backward(F.sign_backward(ds, sign_cache), bn_cache)
        got = F.batchnorm_sign_backward(ds, cache)
    assert fused.dtype == dtype and np.array_equal(fused, s)
    assert np.array_equal(cache.running_mean, bn_cache.running_mean)
    assert np.array_equal(cache.running_var, bn_cache.running_var)
    for a, b in zip(got, want):
        assert a.dtype == dtype and np.array_equal(a, b)
    if not train:
        assert (y[:, 0] == 0).all() and (fused[:, 0] == 1).all()      # sign(0) = +1


# ---------------------------------------------------------------------------------- pooling

@pytest.mark.parametrize("kernel,stride,padding,shape", [
    (2, None, 0, (2, 2, 4, 6)),
    (3, 2, 1, (1, 2, 5, 6)),
    (3, 1, 0, (1, 2, 5, 4)),
])
def test_maxpool_gradients(rng, kernel, stride, padding, shape):
    x = rng.standard_normal(shape)
    gradcheck(F.maxpool2d_forward, F.maxpool2d_backward, [x], {0: 0}, rng,
              kernel=kernel, stride=stride, padding=padding)


def test_maxpool_forward_and_first_max_on_ties():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    y, _ = F.maxpool2d_forward(x)
    np.testing.assert_array_equal(y[0, 0], [[5, 7], [13, 15]])
    ties = np.ones((1, 1, 2, 2))
    y, cache = F.maxpool2d_forward(ties)
    dx = F.maxpool2d_backward(np.full_like(y, 3.0), cache)
    np.testing.assert_array_equal(dx[0, 0], [[3, 0], [0, 0]])
    # padding is -inf: a window made mostly of padding still returns the real value
    neg = -np.ones((1, 1, 3, 3))
    y, _ = F.maxpool2d_forward(neg, kernel=2, stride=2, padding=1)
    np.testing.assert_array_equal(y, -np.ones((1, 1, 2, 2)))


@pytest.mark.parametrize("kernel,stride,padding,shape", [
    (2, None, 0, (2, 2, 4, 6)),
    (3, 2, 1, (1, 2, 5, 6)),
    (2, 1, 1, (1, 2, 3, 4)),
])
def test_avgpool_gradients(rng, kernel, stride, padding, shape):
    x = rng.standard_normal(shape)
    gradcheck(F.avgpool2d_forward, F.avgpool2d_backward, [x], {0: 0}, rng,
              kernel=kernel, stride=stride, padding=padding)


def test_avgpool_counts_padding():
    x = np.ones((1, 1, 2, 2))
    y, _ = F.avgpool2d_forward(x, kernel=2, stride=2, padding=1)
    np.testing.assert_allclose(y, np.full((1, 1, 2, 2), 0.25))   # one real 1 per 2x2 window


def test_global_avgpool_gradients(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    y, _ = F.global_avgpool_forward(x)
    np.testing.assert_allclose(y, x.mean(axis=(2, 3)))
    gradcheck(F.global_avgpool_forward, F.global_avgpool_backward, [x], {0: 0}, rng)


# ----------------------------------------------------------------------------- activations

def away_from(x: np.ndarray, kinks: list[float], gap: float = 0.05) -> np.ndarray:
    """Nudge entries within ``gap`` of a kink so finite differences never straddle it."""
    for k in kinks:
        close = np.abs(x - k) < gap
        x[close] = k + np.where(x[close] >= k, gap, -gap)
    return x


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 2)])
def test_prelu_gradients(rng, shape):
    x = away_from(rng.standard_normal(shape), [0.0])
    a = rng.uniform(0.05, 0.5, shape[1])
    gradcheck(F.prelu_forward, F.prelu_backward, [x, a], {0: 0, 1: 1}, rng)


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 2)])
def test_bias_gradients(rng, shape):
    x, b = rng.standard_normal(shape), rng.standard_normal(shape[1])
    gradcheck(F.bias_forward, F.bias_backward, [x, b], {0: 0, 1: 1}, rng)


def test_relu_gradients(rng):
    x = away_from(rng.standard_normal((3, 4, 2)), [0.0])
    gradcheck(F.relu_forward, F.relu_backward, [x], {0: 0}, rng)


def test_hardtanh_gradients(rng):
    x = away_from(rng.standard_normal((3, 4, 2)) * 1.5, [-1.0, 1.0])
    gradcheck(F.hardtanh_forward, F.hardtanh_backward, [x], {0: 0}, rng)
    y, _ = F.hardtanh_forward(np.array([-3.0, -0.5, 0.5, 3.0]))
    np.testing.assert_array_equal(y, [-1.0, -0.5, 0.5, 1.0])


def test_flatten_gradients(rng):
    x = rng.standard_normal((2, 3, 2, 2))
    y, _ = F.flatten_forward(x)
    assert y.shape == (2, 12)
    gradcheck(F.flatten_forward, F.flatten_backward, [x], {0: 0}, rng)


def test_add_gradients(rng):
    a, b = rng.standard_normal((2, 3, 2)), rng.standard_normal((2, 3, 2))
    gradcheck(F.add_forward, F.add_backward, [a, b], {0: 0, 1: 1}, rng)
    y, cache = F.add_forward(a, b)
    da, db = F.add_backward(np.ones_like(y), cache)
    assert da is not db


def test_concat_gradients(rng):
    """The channel concatenation (ReActNet's widening block): each input gets its slice of dy."""
    a, b = rng.standard_normal((2, 3, 2, 2)), rng.standard_normal((2, 1, 2, 2))

    def forward(a, b):
        return F.concat_forward([a, b])

    def backward(dy, cache):
        return tuple(F.concat_backward(dy, cache))

    gradcheck(forward, backward, [a, b], {0: 0, 1: 1}, rng)
    y, _ = forward(a, b)
    np.testing.assert_array_equal(y[:, :3], a)
    np.testing.assert_array_equal(y[:, 3:], b)


# ------------------------------------------------------------------------------------- loss

@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_distillation_kl_gradient_and_value(rng, temperature):
    """T^2 KL(softmax(t/T) || softmax(z/T)): its gradient against finite differences, its value
    against a direct float64 sum, zero when the student equals the teacher."""
    z, t = rng.standard_normal((5, 4)) * 3, rng.standard_normal((5, 4)) * 3
    loss, dz = F.distillation_kl(z, t, temperature)
    num = numeric_grad(lambda: float(F.distillation_kl(z, t, temperature)[0]), z)
    np.testing.assert_allclose(dz, num, rtol=RTOL, atol=ATOL)
    p = np.exp(t / temperature) / np.exp(t / temperature).sum(axis=1, keepdims=True)
    s = np.exp(z / temperature) / np.exp(z / temperature).sum(axis=1, keepdims=True)
    direct = temperature ** 2 * np.sum(p * np.log(p / s)) / len(z)
    assert float(loss) == pytest.approx(direct, rel=1e-12)
    same_loss, same_grad = F.distillation_kl(t, t, temperature)
    assert abs(float(same_loss)) < 1e-15 and np.abs(same_grad).max() < 1e-15


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
def test_softmax_cross_entropy_gradient(rng, smoothing):
    logits = rng.standard_normal((5, 4)) * 3
    labels = np.array([0, 3, 1, 1, 2])
    loss, dlogits = F.softmax_cross_entropy(logits, labels, label_smoothing=smoothing)
    num = numeric_grad(lambda: F.softmax_cross_entropy(logits, labels, smoothing)[0], logits)
    np.testing.assert_allclose(dlogits, num, rtol=RTOL, atol=ATOL)
    # the value against a direct (unstable but fine here) formula
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    q = (1 - smoothing) * np.eye(4)[labels] + smoothing / 4
    assert loss == pytest.approx(-np.mean(np.sum(q * np.log(p), axis=1)), rel=1e-12)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [-1e4, 1e4, 0.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, dlogits = F.softmax_cross_entropy(logits, np.array([0, 1]))
    assert loss == pytest.approx(0.0, abs=1e-12)
    assert np.all(np.isfinite(dlogits))


# ------------------------------------------------------------------------------------- sign

X_SIGN = np.array([-3.0, -1.5, -1.0, -0.7, -0.2, 0.0, 0.2, 0.5, 1.0, 1.2, 4.0])


def test_sign_forward_zero_is_plus_one():
    y, _ = F.sign_forward(X_SIGN)
    np.testing.assert_array_equal(y, np.where(X_SIGN < 0, -1.0, 1.0))
    assert y[X_SIGN == 0.0][0] == 1.0
    assert set(np.unique(y)) == {-1.0, 1.0}


def _swish_closed_form(x: np.ndarray, beta: float) -> np.ndarray:
    """BNN+'s formula: beta * (2 - beta*x*tanh(beta*x/2)) / (1 + cosh(beta*x))."""
    return beta * (2 - beta * x * np.tanh(beta * x / 2)) / (1 + np.cosh(beta * x))


@pytest.mark.parametrize("ste,expected", [
    ("identity", lambda x: np.ones_like(x)),
    ("clipped", lambda x: (np.abs(x) <= 1).astype(float)),
    ("approx", lambda x: np.maximum(0.0, 2 - 2 * np.abs(x))),
    ("swish", lambda x: _swish_closed_form(x, 5.0)),
])
def test_sign_ste_backward_closed_form(rng, ste, expected):
    y, cache = F.sign_forward(X_SIGN, ste=ste)
    dy = rng.standard_normal(X_SIGN.shape)
    dx = F.sign_backward(dy, cache)
    np.testing.assert_allclose(dx, dy * expected(X_SIGN), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(F.ste_grad(X_SIGN, ste), expected(X_SIGN), rtol=1e-12, atol=1e-15)


def test_ste_specific_points():
    g = F.ste_grad(np.array([-1.0, 1.0, 1.0 + 1e-9, 0.0]), "clipped")
    np.testing.assert_array_equal(g, [1.0, 1.0, 0.0, 1.0])         # |x| <= 1 inclusive
    g = F.ste_grad(np.array([0.0, 0.5, 1.0, 2.0]), "approx")
    np.testing.assert_array_equal(g, [2.0, 1.0, 0.0, 0.0])
    assert F.ste_grad(np.array([0.0]), "swish", beta=3.0)[0] == pytest.approx(3.0)


def test_swish_ste_is_signswish_derivative_and_never_overflows():
    beta = 2.5
    x = np.linspace(-3, 3, 13)

    def sign_swish(v):
        s = 1 / (1 + np.exp(-beta * v))
        return 2 * s * (1 + beta * v * (1 - s)) - 1

    num = (sign_swish(x + EPS) - sign_swish(x - EPS)) / (2 * EPS)
    np.testing.assert_allclose(F.ste_grad(x, "swish", beta=beta), num, rtol=1e-6, atol=1e-9)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        g = F.ste_grad(np.array([-1e4, 1e4], dtype=np.float32), "swish", beta=10.0)
    np.testing.assert_array_equal(g, [0.0, 0.0])


# ----------------------------------------------------------------------- float32 preserved

def _float32_cases(rng):
    f = np.float32
    x4 = rng.standard_normal((2, 3, 4, 4)).astype(f)
    x2 = rng.standard_normal((4, 3)).astype(f)
    c3 = rng.standard_normal(3).astype(f)
    pos3 = rng.uniform(0.5, 1.5, 3).astype(f)
    w4 = rng.standard_normal((2, 3, 3, 3)).astype(f)
    w2 = rng.standard_normal((2, 3)).astype(f)
    return {
        "dense": (F.dense_forward, F.dense_backward,
                  (x2, w2, rng.standard_normal(2).astype(f)), {}),
        "conv2d": (F.conv2d_forward, F.conv2d_backward,
                   (x4, w4, rng.standard_normal(2).astype(f)), {"stride": 2, "padding": 1}),
        "batchnorm_train": (F.batchnorm_forward, F.batchnorm_backward,
                            (x4, c3, c3, c3, pos3), {"train": True}),
        "batchnorm_eval": (F.batchnorm_forward, F.batchnorm_backward,
                           (x2, c3, c3, c3, pos3), {"train": False}),
        "batchnorm_sign_train": (F.batchnorm_sign_forward, F.batchnorm_sign_backward,
                                 (x4, c3, c3, c3, pos3), {"train": True, "ste": "approx"}),
        "batchnorm_sign_eval": (F.batchnorm_sign_forward, F.batchnorm_sign_backward,
                                (x2, c3, c3, c3, pos3), {"train": False, "ste": "clipped"}),
        **{f"sign_{s}": (F.sign_forward, F.sign_backward, (x4,), {"ste": s})
           for s in F.STE_NAMES},
        "maxpool": (F.maxpool2d_forward, F.maxpool2d_backward, (x4,),
                    {"kernel": 3, "stride": 2, "padding": 1}),
        "avgpool": (F.avgpool2d_forward, F.avgpool2d_backward, (x4,), {"padding": 1}),
        "global_avgpool": (F.global_avgpool_forward, F.global_avgpool_backward, (x4,), {}),
        "prelu": (F.prelu_forward, F.prelu_backward, (x4, pos3), {}),
        "bias": (F.bias_forward, F.bias_backward, (x4, c3), {}),
        "relu": (F.relu_forward, F.relu_backward, (x4,), {}),
        "hardtanh": (F.hardtanh_forward, F.hardtanh_backward, (x4,), {}),
        "flatten": (F.flatten_forward, F.flatten_backward, (x4,), {}),
        "add": (F.add_forward, F.add_backward, (x4, x4 * 2), {}),
    }


def test_float32_in_float32_out(rng):
    for name, (fwd, bwd, args, kw) in _float32_cases(rng).items():
        y, cache = fwd(*args, **kw)
        assert y.dtype == np.float32, name
        grads = bwd(np.ones_like(y), cache)
        for g in grads if isinstance(grads, tuple) else (grads,):
            assert g is None or g.dtype == np.float32, name
    logits = rng.standard_normal((3, 5)).astype(np.float32)
    loss, dlogits = F.softmax_cross_entropy(logits, np.array([0, 4, 2]), 0.1)
    assert dlogits.dtype == np.float32
    assert np.ndim(loss) == 0 and loss.dtype == np.float32   # stays on the logits' device
    for backend in ("numpy", "auto"):
        with kernels.use_backend(backend):
            cols = kernels.call("im2col", rng.standard_normal((1, 2, 4, 4)).astype(np.float32),
                                3, 3, 1, 1)
            assert cols.dtype == np.float32
            assert kernels.call("col2im", cols, (1, 2, 4, 4), 3, 3, 1, 1).dtype == np.float32
    for s in F.STE_NAMES:
        assert F.ste_grad(np.zeros(3, dtype=np.float32), s).dtype == np.float32
