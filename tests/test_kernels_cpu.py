"""Parity of every Numba body (``kernels.get(op, "numba")``) with the reference body of its op.

The reference runs under ``use_backend("numpy")``, so a composite reference (one that calls an
inner op, e.g. ``binary_conv2d`` -> ``xnor_gemm``) is reference all the way down.

Tolerances: elementwise kernels evaluate the same float operations in the same order, so
im2col, max-pooling forward (values and argmax), BatchNorm+sign in both modes and its
train-mode backward pass (the batch statistics and gradient sums are the reference's own
reductions, or loops adding in NumPy's order) and every optimiser step must agree EXACTLY;
bit packing, the XNOR GEMM and the binary convolution are integer code and exact. Kernels
that add in a different order are compared with rtol = atol = 1e-5 (float32) / 1e-12
(float64): col2im and max-pooling backward with overlapping windows.
"""
from __future__ import annotations

from typing import Any, Callable

import numba  # noqa: F401  (a hard dependency: a missing or broken Numba fails this file)
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from minibnn import kernels
from minibnn.errors import DTypeError, MinibnnError, ShapeError

from oracles import reference as ref

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
DTYPES = st.sampled_from([np.float32, np.float64])


def numba_body(op: str) -> Callable[..., Any]:
    return kernels.get(op, "numba")


def rtol(dtype: type) -> float:
    return 1e-5 if dtype == np.float32 else 1e-12


def randn(rng: np.random.Generator, shape: tuple[int, ...], dtype: type,
          zeros: float = 0.1) -> np.ndarray:
    """Normal values with a fraction of exact zeros (ties for sign and flips)."""
    x = rng.standard_normal(shape)
    x[rng.random(shape) < zeros] = 0.0
    return x.astype(dtype)


def signs(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    return np.where(rng.random(shape) < 0.5, 1.0, -1.0).astype(dtype)


@st.composite
def conv_case(draw: st.DrawFn) -> tuple:
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride, padding = draw(st.integers(1, 3)), draw(st.integers(0, 2))
    assume(kh <= h + 2 * padding and kw <= w + 2 * padding)
    return n, c, h, w, kh, kw, stride, padding, draw(DTYPES), draw(st.integers(0, 2**32 - 1))


def test_every_op_has_a_reference_and_the_numba_bodies_match_its_signature() -> None:
    import inspect

    table = kernels.registered()
    assert all("numpy" in backends for backends in table.values())
    for op, backends in table.items():
        if "numba" in backends:
            want = inspect.signature(kernels.get(op, "numpy")).parameters
            got = inspect.signature(kernels.get(op, "numba")).parameters
            assert [(p.name, p.default) for p in got.values()] == \
                   [(p.name, p.default) for p in want.values()], op


# ------------------------------------------------------------------ convolution and pooling


@SETTINGS
@given(conv_case())
def test_im2col_col2im(case: tuple) -> None:
    n, c, h, w, kh, kw, stride, padding, dtype, seed = case
    rng = np.random.default_rng(seed)
    x = randn(rng, (n, c, h, w), dtype)
    cols = ref("im2col")(x, kh, kw, stride, padding)
    assert cols.shape == (n * ((h + 2 * padding - kh) // stride + 1)
                          * ((w + 2 * padding - kw) // stride + 1), c * kh * kw)
    got = numba_body("im2col")(x, kh, kw, stride, padding)
    assert got.dtype == dtype and np.array_equal(got, cols)
    dcols = randn(rng, cols.shape, dtype)
    expect = ref("col2im")(dcols, x.shape, kh, kw, stride, padding)
    got = numba_body("col2im")(dcols, x.shape, kh, kw, stride, padding)
    assert got.shape == x.shape and got.dtype == dtype
    np.testing.assert_allclose(got, expect, rtol=rtol(dtype), atol=rtol(dtype))


@SETTINGS
@given(conv_case())
def test_maxpool(case: tuple) -> None:
    n, c, h, w, k, _, stride, padding, dtype, seed = case
    assume(padding <= k // 2 and k <= min(h, w) + 2 * padding)
    rng = np.random.default_rng(seed)
    x = randn(rng, (n, c, h, w), dtype, zeros=0.3)       # zeros make ties inside windows
    y, arg = ref("maxpool2d_forward")(x, k, stride, padding)
    y2, arg2 = numba_body("maxpool2d_forward")(x, k, stride, padding)
    assert np.array_equal(y, y2) and np.array_equal(arg, arg2) and y2.dtype == dtype
    assert arg2.dtype == np.int64
    dy = randn(rng, y.shape, dtype)
    np.testing.assert_allclose(numba_body("maxpool2d_backward")(dy, arg, x.shape, k, stride, padding),
                               ref("maxpool2d_backward")(dy, arg, x.shape, k, stride, padding),
                               rtol=rtol(dtype), atol=rtol(dtype))


def test_maxpool_first_maximum_wins_and_padding_never_wins() -> None:
    x = np.array([[[[1.0, 3.0, 3.0], [-2.0, 3.0, 0.0], [-5.0, -4.0, -6.0]]]], np.float32)
    for body in (ref("maxpool2d_forward"), numba_body("maxpool2d_forward")):
        y, arg = body(x, 2, 1, 0)
        assert y.reshape(-1).tolist() == [3.0, 3.0, 3.0, 3.0]
        assert arg.tolist() == [1, 0, 1, 0]           # the first 3 in row-major order
        y, arg = body(-np.abs(x) - 1, 3, 1, 1)          # all values negative, padding -inf
        assert np.isfinite(y).all()


# ------------------------------------------------------------------ BatchNorm + sign


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 5), st.sampled_from([0, 1, 3]), DTYPES,
       st.integers(0, 2**32 - 1))
def test_batchnorm_sign(n: int, c: int, hw: int, dtype: type, seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (n, c) if hw == 0 else (n, c, hw, hw + 1)
    x = randn(rng, shape, dtype)
    mean, var = randn(rng, (c,), dtype), np.abs(randn(rng, (c,), dtype)) + 0.1
    gamma, beta = randn(rng, (c,), dtype), randn(rng, (c,), dtype)
    s = numba_body("batchnorm_sign_eval")(x, mean, var, gamma, beta)
    assert s.dtype == dtype and np.array_equal(
        s, ref("batchnorm_sign_eval")(x, mean, var, gamma, beta))
    assert np.array_equal(numba_body("batchnorm_sign_eval")(x, mean, var),
                          ref("batchnorm_sign_eval")(x, mean, var))
    assume(x.size // c >= 2)
    got = numba_body("batchnorm_sign_train")(x, gamma, beta)
    want = ref("batchnorm_sign_train")(x, gamma, beta)
    for name, a, b in zip(("s", "y", "xhat", "mean", "var", "inv_std"), got, want):
        assert a.shape == b.shape and a.dtype == dtype, name
        assert np.array_equal(a, b), name


def test_batchnorm_sign_equals_the_layers() -> None:
    """sign(batchnorm(x)) of the functional layers, bit for bit, in both modes."""
    from minibnn.nn.functional import batchnorm_forward, sign_forward

    rng = np.random.default_rng(2)
    x = randn(rng, (4, 3, 5, 5), np.float32)
    gamma, beta = randn(rng, (3,), np.float32), randn(rng, (3,), np.float32)
    rm, rv = randn(rng, (3,), np.float32), np.abs(randn(rng, (3,), np.float32)) + 0.5
    y, _ = batchnorm_forward(x, gamma, beta, rm, rv, train=False)
    assert np.array_equal(numba_body("batchnorm_sign_eval")(x, rm, rv, gamma, beta), sign_forward(y)[0])
    y, cache = batchnorm_forward(x, gamma, beta, None, None, train=True)
    s, y2, xhat, _, _, inv_std = numba_body("batchnorm_sign_train")(x, gamma, beta)
    assert np.array_equal(s, sign_forward(y)[0]) and np.array_equal(y2, y)
    assert np.array_equal(xhat, cache.xhat) and np.array_equal(inv_std, cache.inv_std)


def _bn_sign_backward_case(rng: np.random.Generator, shape: tuple[int, ...], dtype: type,
                           ste: str) -> tuple:
    """(ds, y, xhat, inv_std, gamma, ste) from a train-mode forward of random x; ds holds
    exact zeros of both signs (a sum's sign of zero must be NumPy's too)."""
    c = shape[1]
    x = randn(rng, shape, dtype)
    gamma, beta = randn(rng, (c,), dtype), randn(rng, (c,), dtype)
    _, y, xhat, _, _, inv_std = ref("batchnorm_sign_train")(x, gamma, beta)
    ds = randn(rng, shape, dtype, zeros=0.3)
    ds[rng.random(shape) < 0.1] = -0.0
    return ds, y, xhat, inv_std, gamma, ste


def _same_bits(got: tuple, want: tuple) -> bool:
    return all(a.dtype == b.dtype and a.shape == b.shape
               and np.array_equal(np.ascontiguousarray(a).view(np.uint8),
                              np.ascontiguousarray(b).view(np.uint8)) for a, b in zip(got, want))


@SETTINGS
@given(st.integers(1, 6), st.integers(1, 140), st.sampled_from([0, 2]), DTYPES,
       st.sampled_from(["identity", "clipped", "approx", "swish"]), st.integers(0, 2**32 - 1))
def test_batchnorm_sign_backward(n: int, c: int, hw: int, dtype: type, ste: str,
                                 seed: int) -> None:
    """The Numba body gives the reference's bits (signed zeros included): the dense (N, C)
    float32 case in its kernels, everything else through the reference."""
    shape = (n, c) if hw == 0 else (n, c, hw, hw + 1)
    args = _bn_sign_backward_case(np.random.default_rng(seed), shape, dtype, ste)
    assert _same_bits(numba_body("batchnorm_sign_backward_train")(*args),
                      ref("batchnorm_sign_backward_train")(*args))


def test_batchnorm_sign_backward_equals_the_layers() -> None:
    """The op is sign_backward then train-mode batchnorm_backward, bit for bit, in every body
    and layout (and so is the fused layer's backward, which calls it)."""
    from minibnn.nn.functional import SignCache, batchnorm_backward, sign_backward
    from minibnn.nn.functional.batchnorm import BatchNormCache

    rng = np.random.default_rng(5)
    for shape in [(64, 200), (3, 4, 5, 6)]:
        for ste in ("identity", "clipped", "approx", "swish"):
            ds, y, xhat, inv_std, gamma, _ = _bn_sign_backward_case(rng, shape, np.float32, ste)
            want = batchnorm_backward(sign_backward(ds, SignCache(y, ste, 5.0)),
                                      BatchNormCache(xhat, inv_std, gamma, True, True, None, None))
            for body in (numba_body, ref):
                assert _same_bits(body("batchnorm_sign_backward_train")(
                    ds, y, xhat, inv_std, gamma, ste), want), (shape, ste, body)


def test_batchnorm_sign_backward_parallel_path_and_memory_orders() -> None:
    """Above the op's parallel threshold (2^19 values) the bits are the reference's on 1 and
    2 threads; arrays in another memory order (NumPy sums them in another order) run the
    reference, so they still give the reference's bits."""
    from minibnn.kernels import threads

    rng = np.random.default_rng(6)
    args = _bn_sign_backward_case(rng, (520, 1030), np.float32, "approx")
    assert args[0].size >= 1 << 19
    want = ref("batchnorm_sign_backward_train")(*args)
    for n in (1, 2):
        with threads.using_threads(n):
            assert _same_bits(numba_body("batchnorm_sign_backward_train")(*args), want), n
    ds, y, xhat, inv_std, gamma, ste = _bn_sign_backward_case(rng, (40, 30), np.float32, "clipped")
    fortran = [np.asfortranarray(a) for a in (ds, y, xhat)]
    want = ref("batchnorm_sign_backward_train")(*fortran, inv_std, gamma, ste)
    assert not _same_bits(want, ref("batchnorm_sign_backward_train")(ds, y, xhat, inv_std, gamma,
                                                                      ste))    # another order
    assert _same_bits(numba_body("batchnorm_sign_backward_train")(*fortran, inv_std, gamma, ste),
                      want)


def test_batchnorm_sign_one_channel() -> None:
    """With one channel NumPy sums the contiguous batch axis pairwise (N >= 8): the Numba bodies
    send that case to the reference, forward and backward, 2-D and 4-D."""
    rng = np.random.default_rng(9)
    for shape in [(200, 1), (16, 1), (200, 1, 1, 1)]:
        x = randn(rng, shape, np.float32) * np.float32(30.0)
        gamma, beta = randn(rng, (1,), np.float32), randn(rng, (1,), np.float32)
        assert _same_bits(numba_body("batchnorm_sign_train")(x, gamma, beta),
                          ref("batchnorm_sign_train")(x, gamma, beta)), shape
        for ste in ("identity", "approx"):
            args = _bn_sign_backward_case(rng, shape, np.float32, ste)
            assert _same_bits(numba_body("batchnorm_sign_backward_train")(*args),
                              ref("batchnorm_sign_backward_train")(*args)), (shape, ste)


def test_batchnorm_sign_dense_parallel_path() -> None:
    """A dense layer's (N, C) BatchNorm+sign (its own statistics loop and apply loop) above
    their parallel threshold: the reference's bits on 1 and 2 threads, signed zeros too."""
    from minibnn.kernels import cpu, threads

    rng = np.random.default_rng(8)
    x = randn(rng, (520, 1030), np.float32) * np.float32(30.0)
    x[rng.random(x.shape) < 0.05] = -0.0
    assert x.size >= cpu.DENSE_PARALLEL_MIN_WORK
    gamma, beta = randn(rng, (1030,), np.float32), randn(rng, (1030,), np.float32)
    want = ref("batchnorm_sign_train")(x, gamma, beta)
    mean, var = want[3], want[4]
    for n in (1, 2):
        with threads.using_threads(n):
            assert _same_bits(numba_body("batchnorm_sign_train")(x, gamma, beta), want), n
            assert _same_bits((numba_body("batchnorm_sign_eval")(x, mean, var, gamma, beta),),
                              (ref("batchnorm_sign_eval")(x, mean, var, gamma, beta),)), n


def test_batchnorm_sign_backward_refuses_bad_input() -> None:
    rng = np.random.default_rng(7)
    ds, y, xhat, inv_std, gamma, _ = _bn_sign_backward_case(rng, (4, 3), np.float32, "approx")
    for body in (numba_body, ref):
        op = body("batchnorm_sign_backward_train")
        with pytest.raises(ShapeError, match="ds must be float32 \\(4, 3\\)"):
            op(ds[:2], y, xhat, inv_std, gamma)
        with pytest.raises(ShapeError, match="gamma must have shape \\(3,\\)"):
            op(ds, y, xhat, inv_std, gamma[:2])
        with pytest.raises(MinibnnError, match="ste must be one of"):
            op(ds, y, xhat, inv_std, gamma, "nope")


# ------------------------------------------------------------------ optimiser steps


@st.composite
def opt_case(draw: st.DrawFn) -> tuple:
    size = draw(st.sampled_from([1, 7, 64, 1000]))
    rate = st.floats(1e-4, 1.0)
    return (size, draw(DTYPES), draw(st.integers(0, 2**32 - 1)), draw(rate), draw(rate),
            draw(st.sampled_from([0.0, 1e-3, 0.5])), draw(st.sampled_from(["keep", "positive"])))


def _twins(*arrays: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return [a.copy() for a in arrays], [a.copy() for a in arrays]


@SETTINGS
@given(opt_case())
def test_cema_bop(case: tuple) -> None:
    size, dtype, seed, alpha, gamma, thr, tie = case
    rng = np.random.default_rng(seed)
    b = signs(rng, (size,), dtype)
    (br, mr, vr), (bc, mc, vc) = _twins(b, randn(rng, (size,), dtype, 0.5),
                                        randn(rng, (size,), dtype, 0.5))
    for _ in range(3):
        g = randn(rng, (size,), dtype, zeros=0.3)
        n_ref = ref("cema_update")(br, mr, vr, g, alpha, gamma, thr, tie)
        n_numba = numba_body("cema_update")(bc, mc, vc, g, alpha, gamma, thr, tie)
        assert n_ref == n_numba and n_numba.shape == () and n_numba.dtype == np.int64
        for a, c in ((br, bc), (mr, mc), (vr, vc)):
            assert np.array_equal(a, c)
    (br, mr), (bc, mc) = _twins(b, randn(rng, (size,), dtype, 0.5))
    for _ in range(3):
        g = randn(rng, (size,), dtype, zeros=0.3)
        assert (ref("bop_update")(br, mr, g, gamma, thr, tie)
                == numba_body("bop_update")(bc, mc, g, gamma, thr, tie))
        assert np.array_equal(br, bc) and np.array_equal(mr, mc)


@pytest.mark.parametrize("body", ["numpy", "numba"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threshold", [0.0, 0.25])
def test_tie_rule_at_the_threshold(body: str, dtype: type, threshold: float) -> None:
    """tie="positive" is larq's Bop rule b = sign(-sign(b m - tau) b) (outer sign(0) = +1): b = +1
    wherever m b == tau exactly; tie="keep" leaves b there. Elsewhere both flip where m b > tau.
    """
    bop = kernels.get("bop_update", body)
    rng = np.random.default_rng(5)
    b0 = signs(rng, (400,), dtype)
    # gamma = 1 makes m = g exactly; a quarter of the entries land on m b == threshold
    g = randn(rng, (400,), dtype, zeros=0.0)
    tied = rng.random(400) < 0.25
    g[tied] = threshold * b0[tied]
    for tie in ("keep", "positive"):
        b, m = b0.copy(), np.zeros(400, dtype)
        flips = bop(b, m, g, 1.0, threshold, tie)
        score = m * b0
        if tie == "positive":
            want = np.where(-np.sign(score - threshold) * b0 >= 0, 1.0, -1.0)
        else:
            want = np.where(score > threshold, -b0, b0)
        assert np.array_equal(m, g) and np.array_equal(b, want.astype(dtype))
        assert flips == int(np.count_nonzero(b != b0))
    assert np.count_nonzero(tied & (b0 < 0)) > 0         # the rule was exercised
    # CEMA: the same rule on v (alpha = gamma = 1 gives m = v = g)
    cema = kernels.get("cema_update", body)
    b, m, v = b0.copy(), np.zeros(400, dtype), np.zeros(400, dtype)
    cema(b, m, v, g, 1.0, 1.0, threshold, "positive")
    assert np.array_equal(b, np.where(-np.sign(v * b0 - threshold) * b0 >= 0, 1.0, -1.0))


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
        ref("sgd_update")(wr, mr, g, lr, **kw)
        numba_body("sgd_update")(wc, mc, g, lr, **kw)
        assert np.array_equal(wr, wc) and np.array_equal(mr, mc)
    (wr, mr, vr), (wc, mc, vc) = _twins(randn(rng, (size,), dtype), np.zeros(size, dtype),
                                        np.zeros(size, dtype))
    for t in range(1, 4):
        g = randn(rng, (size,), dtype)
        ref("adam_update")(wr, mr, vr, g, lr, t, weight_decay=wd, decoupled=decoupled)
        numba_body("adam_update")(wc, mc, vc, g, lr, t, weight_decay=wd, decoupled=decoupled)
        for a, c in ((wr, wc), (mr, mc), (vr, vc)):
            assert np.array_equal(a, c)


def test_flip_counts_and_inplace() -> None:
    for body in ("numpy", "numba"):
        cema = kernels.get("cema_update", body)
        b = np.array([1.0, -1.0, 1.0, -1.0], np.float32)
        m = np.zeros(4, np.float32)
        v = np.zeros(4, np.float32)
        g = np.array([1.0, 1.0, -1.0, 0.0], np.float32)
        # gamma = alpha = 1: v = g; flip where g * b > 0 (entry 0 only); entry 3 is a tie
        assert cema(b, m, v, g, 1.0, 1.0) == 1
        assert b.tolist() == [-1.0, -1.0, 1.0, -1.0]
        assert cema(b, m, v, np.zeros(4, np.float32), 1.0, 1.0, tie="positive") == 3
        assert b.tolist() == [1.0, 1.0, 1.0, 1.0]


def _awkward(g: np.ndarray, layout: str) -> np.ndarray:
    """g's values in a layout a caller may hand over: a strided view or a read-only array."""
    if layout == "strided":
        view = np.repeat(g, 2, axis=-1)[..., ::2]           # every other entry: not contiguous
        assert not view.flags.c_contiguous
        return view
    frozen = g.copy()
    frozen.flags.writeable = False
    return frozen


@pytest.mark.parametrize("body", ["numpy", "numba"])
@pytest.mark.parametrize("layout", ["strided", "read-only"])
def test_optimiser_steps_read_any_gradient_layout(body: str, layout: str) -> None:
    """g is only read: a strided or read-only gradient gives the contiguous one's result."""
    rng = np.random.default_rng(8)
    shape = (6, 5)
    g = randn(rng, shape, np.float32)
    cases = {
        "cema_update": (signs(rng, shape, np.float32), randn(rng, shape, np.float32),
                        randn(rng, shape, np.float32), (0.3, 0.2)),
        "bop_update": (signs(rng, shape, np.float32), randn(rng, shape, np.float32), (0.2, 0.01)),
        "sgd_update": (randn(rng, shape, np.float32), randn(rng, shape, np.float32),
                       (0.1, 0.9, 0.01)),
        "adam_update": (randn(rng, shape, np.float32), randn(rng, shape, np.float32),
                        np.abs(randn(rng, shape, np.float32)), (1e-2, 3)),
    }
    for op, (*buffers, scalars) in cases.items():
        fn = kernels.get(op, body)
        want = [a.copy() for a in buffers]
        got = [a.copy() for a in buffers]
        fn(*want, g, *scalars)
        fn(*got, _awkward(g, layout), *scalars)
        for w, a in zip(want, got):
            assert np.array_equal(w, a), op


# ------------------------------------------------------------------ bit packing


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (63,), (64,), (65,), (3, 4, 200), (2, 0, 5), (4, 0)])
def test_pack_unpack(dtype: type, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(9)
    x = randn(rng, shape, dtype, zeros=0.2)                # sign(0) = +1, bit 1
    packed = ref("pack_signs")(x)
    assert packed.dtype == np.uint64 and packed.shape == shape[:-1] + (-(-shape[-1] // 64),)
    assert np.array_equal(numba_body("pack_signs")(x), packed)
    back = ref("unpack_signs")(packed, shape[-1], dtype)
    assert back.dtype == dtype and np.array_equal(back, np.where(x >= 0, 1.0, -1.0))
    assert np.array_equal(numba_body("unpack_signs")(packed, shape[-1], dtype), back)
    if x.size:                                            # bit k % 64 of word k // 64
        flat = x.reshape(-1, shape[-1])[0]
        word0 = sum(1 << j for j in range(min(64, shape[-1])) if flat[j] >= 0)
        assert int(packed.reshape(-1, packed.shape[-1])[0, 0]) == word0


@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (3, 0, 2), (65, 64, 63), (9, 1000, 13)])
def test_xnor_gemm(m: int, k: int, n: int) -> None:
    rng = np.random.default_rng(10)
    a, b = rng.standard_normal((m, k)), rng.standard_normal((n, k))
    pa, pb = ref("pack_signs")(a), ref("pack_signs")(b)
    want = (np.where(a >= 0, 1, -1) @ np.where(b >= 0, 1, -1).T).astype(np.int32)
    for body in (ref("xnor_gemm"), numba_body("xnor_gemm")):
        got = body(pa, pb, k)
        assert got.dtype == np.int32 and np.array_equal(got, want)


@pytest.mark.parametrize("c, o, hw, k, stride, padding", [(70, 5, 9, 3, 1, 1), (3, 4, 6, 3, 2, 1),
                                                           (64, 8, 5, 1, 1, 0),
                                                           (5, 3, 7, 3, 1, 0)])
def test_binary_conv2d_and_its_packing(c: int, o: int, hw: int, k: int, stride: int,
                                       padding: int) -> None:
    """Exact, and equal to the float convolution of sign(x) and sign(w) with zero padding."""
    from minibnn.nn.functional import conv2d_forward

    rng = np.random.default_rng(11)
    x = randn(rng, (2, c, hw, hw), np.float32)
    w = randn(rng, (o, c, k, k), np.float32)
    xbits = ref("pack_conv_input")(x)
    assert np.array_equal(numba_body("pack_conv_input")(x), xbits)
    wbits, wsum = ref("pack_conv_weights")(w)
    auto_bits, auto_sum = kernels.call("pack_conv_weights", w)   # numba pack_signs inside
    assert np.array_equal(auto_bits, wbits) and np.array_equal(auto_sum, wsum)
    want = ref("binary_conv2d")(xbits, wbits, wsum, c, k, k, stride, padding)
    sx, sw = np.where(x >= 0, 1.0, -1.0), np.where(w >= 0, 1.0, -1.0)
    y_float, _ = conv2d_forward(sx, sw, stride=stride, padding=padding)
    assert want.dtype == np.int32 and np.array_equal(want, y_float)
    assert np.array_equal(numba_body("binary_conv2d")(xbits, wbits, wsum, c, k, k, stride, padding),
                          want)


# ------------------------------------------------------------------ argument checks


@pytest.mark.parametrize("body", ["numpy", "numba"])
def test_argument_errors(body: str) -> None:
    def k(op: str) -> Callable[..., Any]:
        return kernels.get(op, body)

    a32, a64 = np.zeros(4, np.float32), np.zeros(4, np.float64)
    with pytest.raises(DTypeError, match="bop_update: m has dtype float64"):
        k("bop_update")(a32.copy(), a64.copy(), a32.copy(), 0.1, 0.0)
    with pytest.raises(ShapeError, match=r"bop_update: m has shape \(4,\), b has \(5,\)"):
        k("bop_update")(np.zeros(5, np.float32), a32.copy(), a32.copy(), 0.1, 0.0)
    with pytest.raises(ShapeError, match="C-contiguous"):
        k("sgd_update")(np.zeros((4, 4), np.float32).T, None, np.zeros((4, 4), np.float32).T, 0.1)
    with pytest.raises(ShapeError, match="needs a buffer m"):
        k("sgd_update")(a32.copy(), None, a32.copy(), 0.1, momentum=0.9)
    with pytest.raises(ShapeError, match="step must be an integer >= 1"):
        k("adam_update")(a32.copy(), a32.copy(), a32.copy(), a32.copy(), 0.1, 0)
    with pytest.raises(MinibnnError, match="tie must be 'keep' or 'positive'"):
        k("cema_update")(a32.copy(), a32.copy(), a32.copy(), a32.copy(), 0.1, 0.1, tie="zero")
    ro = a32.copy()
    ro.flags.writeable = False
    with pytest.raises(MinibnnError, match="must be writeable"):
        k("bop_update")(ro, a32.copy(), a32.copy(), 0.1, 0.0)
    with pytest.raises(DTypeError, match="im2col: x must have dtype float32 or float64"):
        k("im2col")(np.zeros((1, 1, 3, 3), np.int64), 2, 2)
    with pytest.raises(DTypeError, match="im2col: x must be a"):
        k("im2col")([[[[1.0]]]], 1, 1)
    with pytest.raises(ShapeError, match="im2col: kernel .* is larger than the padded input"):
        k("im2col")(np.zeros((1, 1, 3, 3), np.float32), 6, 6)
    with pytest.raises(MinibnnError, match=r"im2col: kh must be an int >= 1, got 0"):
        k("im2col")(np.zeros((2, 3, 5, 5)), 0, 3, 1, 0)
    with pytest.raises(MinibnnError, match=r"im2col: stride must be an int >= 1, got 1\.5"):
        k("im2col")(np.zeros((2, 3, 5, 5)), 3, 3, 1.5, 0)
    with pytest.raises(ShapeError, match=r"col2im: cols must have shape \(4, 4\)"):
        k("col2im")(np.zeros((5, 5)), (1, 1, 3, 3), 2, 2, 1, 0)
    with pytest.raises(ShapeError, match="batchnorm_sign_eval: x must be"):
        k("batchnorm_sign_eval")(np.zeros(3, np.float32), None, None)
    with pytest.raises(ShapeError, match=r"batchnorm_sign_train: gamma must have shape \(3,\)"):
        k("batchnorm_sign_train")(np.zeros((4, 3), np.float32), np.zeros(2, np.float32))
    with pytest.raises(DTypeError, match="xnor_gemm: a must be a 2-D uint64 array"):
        k("xnor_gemm")(np.zeros((2, 1), np.int64), np.zeros((2, 1), np.uint64), 8)
    with pytest.raises(ShapeError, match="at least ceil"):
        k("xnor_gemm")(np.zeros((2, 1), np.uint64), np.zeros((2, 1), np.uint64), 65)
    with pytest.raises(DTypeError, match="unpack_signs: p must be uint64"):
        k("unpack_signs")(np.zeros((2, 1), np.int64), 8)
    with pytest.raises(ShapeError, match=r"unpack_signs: p must have a last axis of ceil\(65/64\)"):
        k("unpack_signs")(np.zeros((2, 1), np.uint64), 65)
    with pytest.raises(ShapeError, match="binary_conv2d: wsum must be int32"):
        k("binary_conv2d")(np.zeros((1, 3, 3, 1), np.uint64), np.zeros((2, 9), np.uint64),
                           np.zeros((2, 9), np.int64), 5, 3, 3)


def test_large_work_runs_parallel_path() -> None:
    """Above PARALLEL_MIN_WORK the parallel path runs; it must give the same answer."""
    from minibnn.kernels import cpu

    rng = np.random.default_rng(4)
    x = randn(rng, (4, 8, 48, 48), np.float32)
    assert x.size >= cpu.PARALLEL_MIN_WORK
    assert np.array_equal(numba_body("im2col")(x, 3, 3, 1, 1), ref("im2col")(x, 3, 3, 1, 1))
    assert np.array_equal(numba_body("maxpool2d_forward")(x, 2)[0], ref("maxpool2d_forward")(x, 2)[0])
    gamma, beta = randn(rng, (8,), np.float32), randn(rng, (8,), np.float32)
    for a, b in zip(numba_body("batchnorm_sign_train")(x, gamma, beta),
                    ref("batchnorm_sign_train")(x, gamma, beta)):
        assert np.array_equal(a, b)
    n = cpu.PARALLEL_MIN_WORK * 2
    (wr, mr, vr), (wc, mc, vc) = _twins(randn(rng, (n,), np.float32), np.zeros(n, np.float32),
                                        np.zeros(n, np.float32))
    g = randn(rng, (n,), np.float32)
    ref("adam_update")(wr, mr, vr, g, 1e-3, 1)
    numba_body("adam_update")(wc, mc, vc, g, 1e-3, 1)
    assert np.array_equal(wr, wc)
