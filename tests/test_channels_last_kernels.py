"""Parity of the channels-last training kernels (``kernels.cpu_channels_last``) with their oracle.

Each Numba body is compared with the reference body of its op (``kernels.channels_last``, run
under ``use_backend("numpy")``), and the NHWC convolution oracle itself with the NCHW
functional convolution the rest of minibnn uses (``conv2d_forward`` / ``conv2d_backward``).

Tolerances: the blocked convolution adds in a different order than one big GEMM, so it is
compared with rtol 2e-5 (float32) / 1e-12 (float64) and an atol of the same size relative
to the largest entry. Max-pooling (values and argmax)
and the BatchNorm statistics, bits, and running statistics are exact: the statistics are sums
of float64 values in fixed chunks, exact integers for int32 counts. The BatchNorm backward
applies the same float32 formula (exact for dz up to the summation order of its two sums):
rtol 1e-5.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

from minibnn import kernels
from minibnn.errors import MinibnnError
from minibnn.kernels.channels_last import STE_CODES
from minibnn.nn.functional.conv import conv2d_backward, conv2d_forward
from minibnn.nn.functional.pooling import maxpool2d_forward

from oracles import reference as ref


def fast(op: str) -> Callable[..., Any]:
    return kernels.get(op, "numba")


def close(actual: np.ndarray, desired: np.ndarray, dtype: Any) -> None:
    """rtol, and atol relative to the largest entry: a sum of many terms loses absolute digits."""
    t = 2e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(actual, desired, rtol=t,
                               atol=t * max(1.0, float(np.abs(desired).max(initial=0.0))))


def wmat_of(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]))


CONV_CASES = [  # (n, h, c, o, k, stride, padding)
    (3, 8, 5, 7, 3, 1, 1), (2, 9, 16, 8, 3, 2, 1), (2, 6, 3, 4, 1, 1, 0),
    (9, 5, 64, 10, 3, 1, 1), (2, 7, 70, 6, 3, 2, 0), (40, 8, 8, 16, 3, 1, 1),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_oracle_equals_the_nchw_convolution(case: tuple, dtype: Any) -> None:
    n, h, c, o, k, s, p = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, h)).astype(dtype)
    w = rng.standard_normal((o, c, k, k)).astype(dtype)
    y, cache = conv2d_forward(x, w, stride=s, padding=p)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dw = conv2d_backward(dy, cache)[:2]
    xl, dyl = x.transpose(0, 2, 3, 1).copy(), dy.transpose(0, 2, 3, 1).copy()
    yl = ref("conv2d_nhwc_forward")(xl, wmat_of(w), k, k, s, p)
    dxl, dwm = ref("conv2d_nhwc_backward")(dyl, xl, wmat_of(w), k, k, s, p)
    close(yl.transpose(0, 3, 1, 2), y, dtype)
    close(dxl.transpose(0, 3, 1, 2), dx, dtype)
    close(dwm, wmat_of(dw), dtype)


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("packed", [False, True])
def test_conv_kernels(case: tuple, dtype: Any, packed: bool) -> None:
    n, h, c, o, k, s, p = case
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, h, h, c)).astype(dtype)
    wmat = rng.standard_normal((k * k * c, o)).astype(dtype)
    if packed:
        x = np.where(x >= 0, 1, -1).astype(dtype)
    else:
        close(fast("conv2d_nhwc_forward")(x, wmat, k, k, s, p),
              ref("conv2d_nhwc_forward")(x, wmat, k, k, s, p), dtype)
    source = kernels.call("pack_signs", x) if packed else x
    oh = (h + 2 * p - k) // s + 1
    dy = rng.standard_normal((n, oh, oh, o)).astype(dtype)
    for need_dx in (True, False):
        dx_f, dw_f = fast("conv2d_nhwc_backward")(dy, source, wmat, k, k, s, p, need_dx)
        dx_r, dw_r = ref("conv2d_nhwc_backward")(dy, x, wmat, k, k, s, p, need_dx)
        close(dw_f, dw_r, dtype)
        assert dw_f.dtype == dtype
        if need_dx:
            close(dx_f, dx_r, dtype)
        else:
            assert dx_f is None and dx_r is None


def test_conv_kernel_is_bit_identical_across_calls() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 16, 16, 32)).astype(np.float32)
    wmat = rng.standard_normal((9 * 32, 32)).astype(np.float32)
    dy = rng.standard_normal((64, 16, 16, 32)).astype(np.float32)
    runs = [fast("conv2d_nhwc_backward")(dy, x, wmat, 3, 3, 1, 1) for _ in range(2)]
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("case", [(3, 8, 5, 2, 2), (2, 9, 7, 3, 2), (2, 6, 4, 3, 3), (1, 4, 1, 2, 1)])
@pytest.mark.parametrize("dtype", [np.int32, np.float32, np.float64])
def test_maxpool_kernels(case: tuple, dtype: Any) -> None:
    n, h, c, k, s = case
    rng = np.random.default_rng(3)
    x = rng.integers(-3, 4, (n, h, h, c)).astype(dtype)      # many ties: the first max wins
    y_f, a_f = fast("maxpool2d_nhwc_forward")(x, k, s)
    y_r, a_r = ref("maxpool2d_nhwc_forward")(x, k, s)
    assert np.array_equal(y_f, y_r) and np.array_equal(a_f, a_r) and a_f.dtype == np.uint8
    # against the NCHW functional max-pool
    y_nchw = maxpool2d_forward(x.transpose(0, 3, 1, 2).astype(np.float64), k, s)[0]
    assert np.array_equal(y_r.transpose(0, 3, 1, 2), y_nchw)
    fdt = np.float64 if dtype == np.float64 else np.float32
    dy = rng.standard_normal(y_f.shape).astype(fdt)
    np.testing.assert_allclose(fast("maxpool2d_nhwc_backward")(dy, a_f, x.shape, k, s),
                               ref("maxpool2d_nhwc_backward")(dy, a_r, x.shape, k, s),
                               rtol=1e-6, atol=1e-6)


def bn_inputs(rng: np.random.Generator, m: int, c: int, dtype: Any, counts: bool
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z = (rng.integers(-30, 31, (m, c)).astype(np.int32) if counts
         else rng.standard_normal((m, c)).astype(dtype) * 3)
    gamma = rng.standard_normal(c).astype(dtype)
    beta = (rng.standard_normal(c) * 0.1).astype(dtype)
    return z, gamma, beta


@pytest.mark.parametrize("m,c", [(2, 1), (50, 7), (1000, 64), (4096, 130)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("counts", [True, False])
@pytest.mark.parametrize("ste", STE_CODES)
def test_batchnorm_sign_pack_kernels(m: int, c: int, dtype: Any, counts: bool, ste: str) -> None:
    rng = np.random.default_rng(4)
    z, gamma, beta = bn_inputs(rng, m, c, dtype, counts)
    out_f = fast("batchnorm_sign_pack_train")(z, gamma, beta, 1e-5)
    out_r = ref("batchnorm_sign_pack_train")(z, gamma, beta, 1e-5)
    for a, b in zip(out_f, out_r):
        assert a.dtype == b.dtype
        if counts or a.dtype == np.uint64:
            assert np.array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    bits, mean, var, inv_std = out_r
    assert np.array_equal(fast("batchnorm_sign_pack_eval")(z, mean, var, gamma, beta, 1e-5),
                          ref("batchnorm_sign_pack_eval")(z, mean, var, gamma, beta, 1e-5))
    ds = rng.standard_normal((m, c)).astype(dtype)
    grads_f = fast("batchnorm_sign_pack_backward")(ds, z, mean, inv_std, gamma, beta, ste, 5.0)
    grads_r = ref("batchnorm_sign_pack_backward")(ds, z, mean, inv_std, gamma, beta, ste, 5.0)
    for a, b in zip(grads_f, grads_r):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(b).max()))


@pytest.mark.parametrize("m,c", [(2, 1), (50, 7), (1000, 64), (4096, 130)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("counts", [True, False])
def test_batch_statistics_rows(m: int, c: int, dtype: Any, counts: bool) -> None:
    """The statistics op against its reference, and both against NumPy's own float64 mean
    and biased variance of the rows (an independent computation: pairwise sums, two passes)."""
    rng = np.random.default_rng(6)
    z, gamma, beta = bn_inputs(rng, m, c, dtype, counts)
    got_f = fast("batch_statistics_rows")(z, gamma.dtype)
    got_r = ref("batch_statistics_rows")(z, gamma.dtype)
    for a, b in zip(got_f, got_r):
        assert a.dtype == b.dtype == dtype
        if counts:
            assert np.array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    zd = z.astype(np.float64)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-9)
    for got in (got_f, got_r):
        np.testing.assert_allclose(got[0], zd.mean(axis=0), **tol)
        np.testing.assert_allclose(got[1], zd.var(axis=0), **tol)


def test_batchnorm_sign_pack_equals_the_layers() -> None:
    """The fused oracle is BatchNorm2d then sign (train mode), on NHWC rows."""
    from minibnn.nn.functional.batchnorm import batchnorm_backward, batchnorm_forward
    from minibnn.nn.functional.sign import sign_backward, sign_forward
    rng = np.random.default_rng(5)
    n, c, h = 4, 6, 5
    z = rng.standard_normal((n, c, h, h)).astype(np.float64)
    gamma, beta = rng.standard_normal(c), rng.standard_normal(c) * 0.1
    y, cache = batchnorm_forward(z, gamma, beta, None, None, eps=1e-5)
    s, scache = sign_forward(y, "approx")
    rows = z.transpose(0, 2, 3, 1).reshape(-1, c)
    bits, mean, var, inv_std = ref("batchnorm_sign_pack_train")(rows, gamma, beta, 1e-5)
    unpacked = kernels.call("unpack_signs", bits, c, np.float64)
    assert np.array_equal(unpacked, s.transpose(0, 2, 3, 1).reshape(-1, c))
    ds = rng.standard_normal(s.shape)
    dz, dgamma, dbeta = batchnorm_backward(sign_backward(ds, scache), cache)
    got = ref("batchnorm_sign_pack_backward")(ds.transpose(0, 2, 3, 1).reshape(-1, c), rows, mean,
                                              inv_std, gamma, beta, "approx", 5.0)
    np.testing.assert_allclose(got[0], dz.transpose(0, 2, 3, 1).reshape(-1, c), atol=1e-10)
    np.testing.assert_allclose(got[1], dgamma, atol=1e-10)
    np.testing.assert_allclose(got[2], dbeta, atol=1e-10)


@pytest.mark.parametrize("m,c", [(2, 1), (50, 7), (1000, 64), (4096, 130)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bias_sign_pack_kernels(m: int, c: int, dtype: Any) -> None:
    """sign(x + b), packed: both bodies equal the bias+sign twin's bits (the layers' add, then
    pack_signs), ties x + b == 0 included (+1)."""
    from minibnn.nn.channels_last import BiasSignNHWC
    from minibnn.nn.modules import BiasSign, LearnableBias, Sign

    rng = np.random.default_rng(c)
    x = rng.standard_normal((m, c)).astype(dtype)
    b = rng.standard_normal(c).astype(dtype)
    x[::3] = -b                                                # y = 0 exactly: sign +1
    twin = BiasSignNHWC(BiasSign(LearnableBias("move", c), Sign()))
    want, _, _ = twin.forward({"move.b": b}, {}, x.reshape(1, 1, m, c), False)
    for body in ("numpy", "numba"):
        got = kernels.get("bias_sign_pack", body)(x, b)
        assert got.dtype == np.uint64 and np.array_equal(got, want.bits.reshape(m, -1)), body
    assert np.array_equal(kernels.call("unpack_signs", want.bits, c, dtype).reshape(m, c),
                          np.where(x + b >= 0, 1.0, -1.0))


@pytest.mark.parametrize("body", ["numpy", "numba"])
def test_argument_errors(body: str) -> None:
    conv = kernels.get("conv2d_nhwc_forward", body)
    x = np.zeros((2, 4, 4, 3), np.float32)
    with pytest.raises(MinibnnError, match="wmat"):
        conv(x, np.zeros((10, 4), np.float32), 3, 3, 1, 1)
    with pytest.raises(MinibnnError, match="channels"):
        conv(x, np.zeros((9 * 5, 4), np.float32), 3, 3, 1, 1)
    bn = kernels.get("batchnorm_sign_pack_train", body)
    with pytest.raises(MinibnnError, match="at least 2 rows"):
        bn(np.zeros((1, 3), np.float32), np.ones(3, np.float32), np.zeros(3, np.float32))
    with pytest.raises(MinibnnError, match="at least 2 rows"):
        kernels.get("batch_statistics_rows", body)(np.zeros((1, 3), np.float32), np.float32)
    back = kernels.get("batchnorm_sign_pack_backward", body)
    z = np.zeros((4, 3), np.float32)
    with pytest.raises(MinibnnError, match="ste"):
        back(z, z, z[0], z[0], z[0], z[0], "nope", 5.0)
    with pytest.raises(MinibnnError, match="float32 \\(C,\\) bias"):
        kernels.get("bias_sign_pack", body)(z, z[0].astype(np.float64))


@pytest.mark.parametrize("body", ["numpy", "numba"])
@pytest.mark.parametrize("c,k,stride,padding", [(5, 3, 1, 1), (70, 3, 2, 1), (8, 1, 1, 0)])
def test_binary_conv2d_nhwc_layout_is_the_nchw_counts_transposed(body: str, c: int, k: int,
                                                                  stride: int, padding: int
                                                                  ) -> None:
    rng = np.random.default_rng(6)
    x = np.where(rng.random((3, 7, 7, c)) < 0.5, 1.0, -1.0).astype(np.float32)
    w = rng.standard_normal((6, c, k, k)).astype(np.float32)
    xbits = kernels.call("pack_signs", x)
    wbits, wsum = kernels.call("pack_conv_weights", w)
    conv = kernels.get("binary_conv2d", body)
    with kernels.use_backend("numpy" if body == "numpy" else "auto"):
        nchw = conv(xbits, wbits, wsum, c, k, k, stride, padding)
        nhwc = conv(xbits, wbits, wsum, c, k, k, stride, padding, layout="nhwc")
    assert nhwc.dtype == np.int32 and np.array_equal(nhwc, nchw.transpose(0, 2, 3, 1))
    y = conv2d_forward(x.transpose(0, 3, 1, 2), np.where(w >= 0, 1.0, -1.0).astype(np.float32),
                       stride=stride, padding=padding)[0]
    assert np.array_equal(nchw, y.astype(np.int32))
    with pytest.raises(MinibnnError, match="layout"):
        conv(xbits, wbits, wsum, c, k, k, stride, padding, layout="hwcn")


# ------------------------------------------------------------------ per-channel rows
# (M, C) row ops of the channels-last group: the Numba bodies evaluate the reference's
# float32 expressions term for term, so every element-wise output is the same bits (but the
# swish STE's compiled exp and tanh: to an ulp); the per-channel sums (float64, fixed row chunks vs the reference's wide pairwise sums) agree to
# rounding. Sizes up to 4096 rows reach every chunk of the parallel sums; each result is also
# the same bits at 1 and 2 threads.

ROW_CASES = [(2, 1), (50, 7), (1000, 64), (4096, 16), (4096, 130)]


def at_threads(fn: Callable[[], Any]) -> Any:
    """fn() at 1 and at 2 threads; the two results must be the same bits (returns one)."""
    from minibnn.kernels.threads import using_threads

    runs = []
    for n in (1, 2):
        with using_threads(n):
            runs.append(fn())
    for a, b in zip(*(r if isinstance(r, tuple) else (r,) for r in runs)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    return runs[0]


def sums_close(actual: np.ndarray, desired: np.ndarray) -> None:
    """A per-channel sum taken in float64 in another order, then cast: to an ulp or so."""
    assert actual.dtype == desired.dtype
    t = 1e-6 if actual.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(actual, desired, rtol=t, atol=t * np.abs(desired).max(initial=1))


@pytest.mark.parametrize("m,c", ROW_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("counts", [True, False])
def test_batchnorm_normalise_rows(m: int, c: int, dtype: Any, counts: bool) -> None:
    """Both bodies give the same bits, equal to the normalisation the fused BatchNorm+sign
    packs (its bits are the signs of this y)."""
    rng = np.random.default_rng(7)
    z, gamma, beta = bn_inputs(rng, m, c, dtype, counts)
    bits, mean, var, inv_std = ref("batchnorm_sign_pack_train")(z, gamma, beta, 1e-5)
    want = ref("batchnorm_normalise_rows")(z, mean, inv_std, gamma, beta)
    got = at_threads(lambda: fast("batchnorm_normalise_rows")(z, mean, inv_std, gamma, beta))
    assert want.dtype == got.dtype == dtype and np.array_equal(got, want)
    np.testing.assert_array_equal(kernels.call("pack_signs", want), bits)
    zd = z.astype(np.float64)
    expect = (zd - zd.mean(axis=0)) / np.sqrt(zd.var(axis=0) + 1e-5) * gamma + beta
    np.testing.assert_allclose(want, expect, rtol=1e-4 if dtype == np.float32 else 1e-10,
                               atol=1e-4 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("m,c", ROW_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("counts", [True, False])
def test_batchnorm_normalise_add_rows(m: int, c: int, dtype: Any, counts: bool) -> None:
    """Both bodies give the same bits as the two steps they fuse: the normalisation, rounded
    to dtype, then the add of s."""
    rng = np.random.default_rng(10)
    z, gamma, beta = bn_inputs(rng, m, c, dtype, counts)
    _, mean, _, inv_std = ref("batchnorm_sign_pack_train")(z, gamma, beta, 1e-5)
    s = rng.standard_normal((m, c)).astype(dtype)
    want = ref("batchnorm_normalise_rows")(z, mean, inv_std, gamma, beta) + s
    got_r = ref("batchnorm_normalise_add_rows")(z, mean, inv_std, gamma, beta, s)
    got = at_threads(lambda: fast("batchnorm_normalise_add_rows")(z, mean, inv_std, gamma,
                                                                    beta, s))
    assert got.dtype == got_r.dtype == dtype
    assert np.array_equal(got_r, want) and np.array_equal(got, want)


@pytest.mark.parametrize("m,c", ROW_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prelu_rows(m: int, c: int, dtype: Any) -> None:
    """Both bodies against each other (y, dx the same bits; da to rounding) and against
    PReLU's definition (the ``where`` form, in float64)."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((m, c)).astype(dtype)
    x[::5] = 0                                          # x = 0 takes the a * x side
    a = (rng.standard_normal(c) * 0.3).astype(dtype)
    dy = rng.standard_normal((m, c)).astype(dtype)
    y_r = ref("prelu_rows_forward")(x, a)
    y_f = at_threads(lambda: fast("prelu_rows_forward")(x, a))
    assert y_f.dtype == dtype and np.array_equal(y_f, y_r)
    dx_r, da_r = ref("prelu_rows_backward")(dy, x, a)
    dx_f, da_f = at_threads(lambda: fast("prelu_rows_backward")(dy, x, a))
    assert dx_f.dtype == dtype and np.array_equal(dx_f, dx_r)
    sums_close(da_f, da_r)
    xd, dyd = x.astype(np.float64), dy.astype(np.float64)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y_r, np.where(xd > 0, xd, a * xd), **tol)
    np.testing.assert_allclose(dx_r, np.where(xd > 0, dyd, a * dyd), **tol)
    np.testing.assert_allclose(da_r, (dyd * np.minimum(xd, 0)).sum(axis=0),
                               rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)


@pytest.mark.parametrize("m,c", ROW_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ste", STE_CODES)
def test_bias_sign_pack_backward(m: int, c: int, dtype: Any, ste: str) -> None:
    """Both bodies (dx the same bits, db to rounding) and the layers' backward: the Sign's
    STE at y = x + b, then the bias gradient (``sign_backward``, the sum over the rows)."""
    from minibnn.nn.functional.sign import ste_grad

    rng = np.random.default_rng(9)
    x = (rng.standard_normal((m, c)) * 0.8).astype(dtype)
    b = (rng.standard_normal(c) * 0.3).astype(dtype)
    ds = rng.standard_normal((m, c)).astype(dtype)
    d_r, db_r = ref("bias_sign_pack_backward")(ds, x, b, ste, 5.0)
    d_f, db_f = at_threads(lambda: fast("bias_sign_pack_backward")(ds, x, b, ste, 5.0))
    assert d_f.dtype == dtype
    if ste == "swish" and dtype == np.float32:     # compiled exp, tanh (tests/test_ste_table.py)
        ulps = 4 * np.spacing(np.float32(5.0)) * np.abs(ds)
        np.testing.assert_allclose(d_f, d_r, rtol=0, atol=ulps.max())
        np.testing.assert_array_less(np.abs(db_f - db_r), ulps.sum(axis=0) + 1e-6)
    else:
        assert np.array_equal(d_f, d_r)
        sums_close(db_f, db_r)
    want = ds * ste_grad(x + b, ste, 5.0)
    np.testing.assert_array_equal(d_r, want)
    np.testing.assert_allclose(db_r, want.astype(np.float64).sum(axis=0),
                               rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-6)


@pytest.mark.parametrize("body", ["numpy", "numba"])
def test_row_op_argument_errors(body: str) -> None:
    z = np.zeros((4, 3), np.float32)
    v = np.zeros(3, np.float32)
    with pytest.raises(MinibnnError, match="a must be float32 \\(3,\\)"):
        kernels.get("prelu_rows_forward", body)(z, np.zeros(4, np.float32))
    with pytest.raises(MinibnnError, match="dy must be float32 \\(4, 3\\)"):
        kernels.get("prelu_rows_backward", body)(z[:2], z, v)
    with pytest.raises(MinibnnError, match="ste"):
        kernels.get("bias_sign_pack_backward", body)(z, z, v, "nope", 5.0)
    with pytest.raises(MinibnnError, match="ds must be"):
        kernels.get("bias_sign_pack_backward", body)(z.astype(np.float64), z, v)
    with pytest.raises(MinibnnError, match="mean and inv_std"):
        kernels.get("batchnorm_normalise_rows", body)(z, v.astype(np.float64),
                                                      v.astype(np.float64), v, v)
    with pytest.raises(MinibnnError, match="int32 or float"):
        kernels.get("batchnorm_normalise_rows", body)(z.astype(np.int64), v, v, v, v)
    with pytest.raises(MinibnnError, match="s must be float32 \\(4, 3\\)"):
        kernels.get("batchnorm_normalise_add_rows", body)(z, v, v, v, v, z[:2])
