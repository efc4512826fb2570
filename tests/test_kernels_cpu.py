"""Parity of the Numba kernels (minibnn.kernels.cpu) with their NumPy twins (kernels.reference).

Tolerances: elementwise kernels evaluate the same float operations in the same order, so
im2col, max-pooling forward (values and argmax), BatchNorm+sign in eval mode and every
optimiser step must agree EXACTLY (and the optimiser steps must equal the minibnn.optim chains
bit for bit). Kernels that add in a different order are compared with
rtol = 1e-5 (float32) / 1e-12 (float64): col2im, max-pooling backward with overlapping
windows, and the batch statistics of BatchNorm in train mode (whose signs must agree wherever
|y| is not within that tolerance of 0).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from minibnn.errors import DTypeError, MinibnnError, ShapeError
from minibnn.kernels import DEFAULT_CPU_BACKEND, get_kernels
from minibnn.kernels import cpu
from minibnn.kernels import reference as ref

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
DTYPES = st.sampled_from([np.float32, np.float64])


def rtol(dtype: type) -> float:
    return 1e-5 if dtype == np.float32 else 1e-12


def randn(rng: np.random.Generator, shape: tuple[int, ...], dtype: type,
          zeros: float = 0.1) -> np.ndarray:
    """Normal values with a fraction of exact zeros (ties for sign and flips)."""
    x = rng.standard_normal(shape)
    x[rng.random(shape) < zeros] = 0.0
    return x.astype(dtype)


@st.composite
def conv_case(draw: st.DrawFn) -> tuple:
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride, padding = draw(st.integers(1, 3)), draw(st.integers(0, 2))
    assume(kh <= h + 2 * padding and kw <= w + 2 * padding)
    return n, c, h, w, kh, kw, stride, padding, draw(DTYPES), draw(st.integers(0, 2**32 - 1))


def test_dispatch() -> None:
    assert get_kernels("numpy") is ref
    assert get_kernels("numba") is cpu
    assert DEFAULT_CPU_BACKEND == "numba"
    with pytest.raises(MinibnnError, match="unknown kernel backend"):
        get_kernels("fortran")
    public = [n for n in dir(ref) if not n.startswith("_") and callable(getattr(ref, n))
              and getattr(getattr(ref, n), "__module__", "") == ref.__name__]
    assert public and all(hasattr(cpu, n) for n in public)


@SETTINGS
@given(conv_case())
def test_im2col_col2im(case: tuple) -> None:
    n, c, h, w, kh, kw, stride, padding, dtype, seed = case
    rng = np.random.default_rng(seed)
    x = randn(rng, (n, c, h, w), dtype)
    cols = ref.im2col(x, kh, kw, stride, padding)
    got = cpu.im2col(x, kh, kw, stride, padding)
    assert got.dtype == dtype and np.array_equal(got, cols)
    dcols = randn(rng, cols.shape, dtype)
    expect = ref.col2im(dcols, x.shape, kh, kw, stride, padding)
    got = cpu.col2im(dcols, x.shape, kh, kw, stride, padding)
    assert got.shape == x.shape and got.dtype == dtype
    np.testing.assert_allclose(got, expect, rtol=rtol(dtype), atol=rtol(dtype))


def test_im2col_matches_functional_layout() -> None:
    from minibnn.nn.functional import col2im, im2col

    rng = np.random.default_rng(0)
    x = randn(rng, (2, 3, 7, 6), np.float64)
    for stride, padding in ((1, 1), (2, 0), (3, 2)):
        assert np.array_equal(cpu.im2col(x, 3, 2, stride, padding), im2col(x, 3, 2, stride, padding))
        cols = im2col(x, 3, 2, stride, padding)
        np.testing.assert_allclose(cpu.col2im(cols, x.shape, 3, 2, stride, padding),
                                   col2im(cols, x.shape, 3, 2, stride, padding), rtol=1e-12)


@SETTINGS
@given(conv_case())
def test_maxpool(case: tuple) -> None:
    n, c, h, w, k, _, stride, padding, dtype, seed = case
    assume(padding <= k // 2 and k <= min(h, w) + 2 * padding)
    rng = np.random.default_rng(seed)
    x = randn(rng, (n, c, h, w), dtype, zeros=0.3)       # zeros make ties inside windows
    y, arg = ref.maxpool2d_forward(x, k, stride, padding)
    y2, arg2 = cpu.maxpool2d_forward(x, k, stride, padding)
    assert np.array_equal(y, y2) and np.array_equal(arg, arg2) and y2.dtype == dtype
    dy = randn(rng, y.shape, dtype)
    np.testing.assert_allclose(cpu.maxpool2d_backward(dy, arg, x.shape, k, stride, padding),
                               ref.maxpool2d_backward(dy, arg, x.shape, k, stride, padding),
                               rtol=rtol(dtype), atol=rtol(dtype))


def test_maxpool_matches_functional() -> None:
    from minibnn.nn.functional import maxpool2d_backward, maxpool2d_forward

    rng = np.random.default_rng(1)
    x = randn(rng, (2, 3, 9, 8), np.float32, zeros=0.3)
    for k, s, p in ((2, None, 0), (3, 2, 1), (3, 1, 1)):
        y, cache = maxpool2d_forward(x, k, s, p)
        y2, arg = cpu.maxpool2d_forward(x, k, s, p)
        assert np.array_equal(y, y2) and np.array_equal(cache.argmax, arg)
        dy = randn(rng, y.shape, np.float32)
        np.testing.assert_allclose(cpu.maxpool2d_backward(dy, arg, x.shape, k, s, p),
                                   maxpool2d_backward(dy, cache), rtol=1e-5, atol=1e-6)


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 5), st.sampled_from([0, 1, 3]), DTYPES,
       st.integers(0, 2**32 - 1))
def test_batchnorm_sign(n: int, c: int, hw: int, dtype: type, seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (n, c) if hw == 0 else (n, c, hw, hw + 1)
    x = randn(rng, shape, dtype)
    mean, var = randn(rng, (c,), dtype), np.abs(randn(rng, (c,), dtype)) + 0.1
    gamma, beta = randn(rng, (c,), dtype), randn(rng, (c,), dtype)
    s = cpu.batchnorm_sign_eval(x, mean, var, gamma, beta)
    assert s.dtype == dtype and np.array_equal(s, ref.batchnorm_sign_eval(x, mean, var, gamma, beta))
    assert np.array_equal(cpu.batchnorm_sign_eval(x, mean, var),
                          ref.batchnorm_sign_eval(x, mean, var))
    assume(x.size // c >= 2)
    got = cpu.batchnorm_sign_train(x, gamma, beta)
    want = ref.batchnorm_sign_train(x, gamma, beta)
    tol = rtol(dtype) * 10
    for name, a, b in zip(("s", "y", "xhat", "mean", "var", "inv_std"), got, want):
        assert a.shape == b.shape and a.dtype == dtype, name
        if name != "s":
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=name)
    clear = np.abs(want[1]) > tol * (1 + np.abs(want[1]).max())
    assert np.array_equal(got[0][clear], want[0][clear])


def test_batchnorm_sign_matches_functional() -> None:
    from minibnn.nn.functional import batchnorm_forward, sign_forward

    rng = np.random.default_rng(2)
    x = randn(rng, (4, 3, 5, 5), np.float32)
    gamma, beta = randn(rng, (3,), np.float32), randn(rng, (3,), np.float32)
    rm, rv = randn(rng, (3,), np.float32), np.abs(randn(rng, (3,), np.float32)) + 0.5
    y, _ = batchnorm_forward(x, gamma, beta, rm, rv, train=False)
    assert np.array_equal(cpu.batchnorm_sign_eval(x, rm, rv, gamma, beta), sign_forward(y)[0])
    y, cache = batchnorm_forward(x, gamma, beta, None, None, train=True)
    s, y2, xhat, _, _, inv_std = cpu.batchnorm_sign_train(x, gamma, beta)
    np.testing.assert_allclose(y2, y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(xhat, cache.xhat, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(inv_std, cache.inv_std, rtol=1e-5)


# ------------------------------------------------------------------ optimiser steps


@st.composite
def opt_case(draw: st.DrawFn) -> tuple:
    size = draw(st.sampled_from([1, 7, 64, 1000]))
    rate = st.floats(1e-4, 1.0)
    return (size, draw(DTYPES), draw(st.integers(0, 2**32 - 1)), draw(rate), draw(rate),
            draw(st.sampled_from([0.0, 1e-3])), draw(st.sampled_from(["keep", "positive"])))


def _twins(*arrays: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return [a.copy() for a in arrays], [a.copy() for a in arrays]


@SETTINGS
@given(opt_case())
def test_cema_bop(case: tuple) -> None:
    size, dtype, seed, alpha, gamma, thr, tie = case
    rng = np.random.default_rng(seed)
    b = np.where(rng.random(size) < 0.5, 1.0, -1.0).astype(dtype)
    (br, mr, vr), (bc, mc, vc) = _twins(b, randn(rng, (size,), dtype, 0.5),
                                        randn(rng, (size,), dtype, 0.5))
    for _ in range(3):
        g = randn(rng, (size,), dtype, zeros=0.3)
        assert (ref.cema_update(br, mr, vr, g, alpha, gamma, 0.0, tie)
                == cpu.cema_update(bc, mc, vc, g, alpha, gamma, 0.0, tie))
        for a, c in ((br, bc), (mr, mc), (vr, vc)):
            assert np.array_equal(a, c)
    (br, mr), (bc, mc) = _twins(b, randn(rng, (size,), dtype, 0.5))
    for _ in range(3):
        g = randn(rng, (size,), dtype, zeros=0.3)
        assert (ref.bop_update(br, mr, g, gamma, thr, tie)
                == cpu.bop_update(bc, mc, g, gamma, thr, tie))
        assert np.array_equal(br, bc) and np.array_equal(mr, mc)


@SETTINGS
@given(opt_case(), st.sampled_from([0.0, 0.9]), st.sampled_from([0.0, 0.1]), st.booleans(),
       st.sampled_from([0.0, 0.5]))
def test_sgd_adam(case: tuple, momentum: float, wd: float, decoupled: bool,
                  dampening: float) -> None:
    size, dtype, seed, lr, _, _, _ = case
    rng = np.random.default_rng(seed)
    (wr, mr), (wc, mc) = _twins(randn(rng, (size,), dtype), np.zeros(size, dtype))
    for t in range(3):
        g = randn(rng, (size,), dtype)
        kw = dict(momentum=momentum, weight_decay=wd, dampening=dampening, decoupled=decoupled,
                  first_step=t == 0)
        ref.sgd_update(wr, mr, g, lr, **kw)
        cpu.sgd_update(wc, mc, g, lr, **kw)
        assert np.array_equal(wr, wc) and np.array_equal(mr, mc)
    (wr, mr, vr), (wc, mc, vc) = _twins(randn(rng, (size,), dtype), np.zeros(size, dtype),
                                        np.zeros(size, dtype))
    for t in range(1, 4):
        g = randn(rng, (size,), dtype)
        ref.adam_update(wr, mr, vr, g, lr, t, weight_decay=wd, decoupled=decoupled)
        cpu.adam_update(wc, mc, vc, g, lr, t, weight_decay=wd, decoupled=decoupled)
        for a, c in ((wr, wc), (mr, mc), (vr, vc)):
            assert np.array_equal(a, c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_steps_equal_optim_chains(dtype: type) -> None:
    """The fused kernels reproduce minibnn.optim bit for bit (what makes them a drop-in)."""
    from minibnn import optim

    rng = np.random.default_rng(3)
    n = 513
    b0 = np.where(rng.random(n) < 0.5, 1.0, -1.0).astype(dtype)
    w0 = randn(rng, (n,), dtype)
    grads = [randn(rng, (n,), dtype, zeros=0.2) for _ in range(4)]

    def run_chain(opt, p0):  # type: ignore[no-untyped-def]
        params, state, out = {"p": p0.copy()}, opt.init({"p": p0}), []
        for g in grads:
            params, state = opt.update({"p": g}, state, params)
            out.append(params["p"])
        return out

    for tie in ("keep", "positive"):
        b, m, v = b0.copy(), np.zeros(n, dtype), np.zeros(n, dtype)
        for g, want in zip(grads, run_chain(optim.cema(alpha=0.3, gamma=0.1, tie=tie), b0)):
            cpu.cema_update(b, m, v, g, 0.3, 0.1, tie=tie)
            assert np.array_equal(b, want)
    b, m = b0.copy(), np.zeros(n, dtype)
    for g, want in zip(grads, run_chain(optim.bop(threshold=1e-3, gamma=0.2), b0)):
        cpu.bop_update(b, m, g, 0.2, 1e-3)
        assert np.array_equal(b, want)
    for decoupled in (False, True):
        for mu in (0.0, 0.9):
            w, m = w0.copy(), np.zeros(n, dtype)
            chain = optim.sgd(0.05, momentum=mu, weight_decay=0.01, decoupled=decoupled)
            for t, (g, want) in enumerate(zip(grads, run_chain(chain, w0))):
                cpu.sgd_update(w, m, g, 0.05, mu, 0.01, decoupled=decoupled, first_step=t == 0)
                assert np.array_equal(w, want)
        w, m, v = w0.copy(), np.zeros(n, dtype), np.zeros(n, dtype)
        chain = optim.adam(1e-2, weight_decay=0.01, decoupled=decoupled)
        for t, (g, want) in enumerate(zip(grads, run_chain(chain, w0)), start=1):
            cpu.adam_update(w, m, v, g, 1e-2, t, weight_decay=0.01, decoupled=decoupled)
            assert np.array_equal(w, want)


def test_flip_counts_and_inplace() -> None:
    b = np.array([1.0, -1.0, 1.0, -1.0], np.float32)
    m = np.zeros(4, np.float32)
    v = np.zeros(4, np.float32)
    g = np.array([1.0, 1.0, -1.0, 0.0], np.float32)
    # gamma = alpha = 1: v = g; flip where g * b > 0 (entries 0 and ... none of the others)
    assert cpu.cema_update(b, m, v, g, 1.0, 1.0) == 1
    assert b.tolist() == [-1.0, -1.0, 1.0, -1.0]
    assert cpu.cema_update(b, m, v, np.zeros(4, np.float32), 1.0, 1.0, tie="positive") == 3
    assert b.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_argument_errors() -> None:
    a32, a64 = np.zeros(4, np.float32), np.zeros(4, np.float64)
    for k in (ref, cpu):
        with pytest.raises(DTypeError):
            k.bop_update(a32.copy(), a64.copy(), a32.copy(), 0.1, 0.0)
        with pytest.raises(ShapeError):
            k.bop_update(np.zeros(5, np.float32), a32.copy(), a32.copy(), 0.1, 0.0)
        with pytest.raises(ShapeError):
            k.sgd_update(np.zeros((4, 4), np.float32).T, None, np.zeros((4, 4), np.float32).T, 0.1)
        with pytest.raises(ShapeError):
            k.sgd_update(a32.copy(), None, a32.copy(), 0.1, momentum=0.9)
        with pytest.raises(ShapeError):
            k.adam_update(a32.copy(), a32.copy(), a32.copy(), a32.copy(), 0.1, 0)
        with pytest.raises(MinibnnError):
            k.cema_update(a32.copy(), a32.copy(), a32.copy(), a32.copy(), 0.1, 0.1, tie="zero")
        with pytest.raises(DTypeError):
            k.im2col(np.zeros((1, 1, 3, 3), np.int64), 2, 2)
        with pytest.raises(ShapeError):
            k.im2col(np.zeros((1, 1, 3, 3), np.float32), 6, 6)
        with pytest.raises(ShapeError):
            k.col2im(np.zeros((3, 3), np.float32), (1, 1, 3, 3), 2, 2)


def test_large_work_runs_parallel_path() -> None:
    """Above PARALLEL_MIN_WORK the parallel path runs; it must give the same answer."""
    rng = np.random.default_rng(4)
    x = randn(rng, (4, 8, 48, 48), np.float32)
    assert x.size >= cpu.PARALLEL_MIN_WORK
    assert np.array_equal(cpu.im2col(x, 3, 3, 1, 1), ref.im2col(x, 3, 3, 1, 1))
    y, arg = cpu.maxpool2d_forward(x, 2)
    assert np.array_equal(y, ref.maxpool2d_forward(x, 2)[0])
    n = cpu.PARALLEL_MIN_WORK * 2
    (wr, mr, vr), (wc, mc, vc) = _twins(randn(rng, (n,), np.float32), np.zeros(n, np.float32),
                                        np.zeros(n, np.float32))
    g = randn(rng, (n,), np.float32)
    ref.adam_update(wr, mr, vr, g, 1e-3, 1)
    cpu.adam_update(wc, mc, vc, g, 1e-3, 1)
    assert np.array_equal(wr, wc)


def test_get_kernels_falls_back_without_numba(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import minibnn.kernels as kernels

    monkeypatch.setitem(sys.modules, "numba", None)          # "import numba" now fails
    monkeypatch.delitem(sys.modules, "minibnn.kernels.cpu")
    monkeypatch.delattr(kernels, "cpu")
    assert kernels.get_kernels("numba") is ref
    assert not kernels._numba_importable()
