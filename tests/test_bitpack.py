"""Bit packing, XNOR-popcount GEMM, binary convolution, thresholded packing: both backends.

Every result here is an integer computed two ways (XNOR-popcount and a float product of ±1
values, which is exact for these sizes), so every comparison is ``array_equal``.  The
thresholded packing (op ``threshold_pack``, thresholds from ``kernels.threshold``) is checked
against plain comparisons, and the fused layer (op ``binary_conv2d_threshold_pack``) against
the float convolution, the float max-pool and those comparisons, at sizes that reach the
parallel Numba path.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from minibnn import kernels
from minibnn.errors import DTypeError, ShapeError
from minibnn.kernels import bitpack
from minibnn.kernels.threshold import Threshold, fold_sign_table, threshold_signs


class Bodies:
    """``Bodies("numba").xnor_gemm`` is the numba body of op "xnor_gemm" (kernels.get)."""

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def __getattr__(self, op: str):  # type: ignore[no-untyped-def]
        return kernels.get(op, self.backend)


SETTINGS = settings(max_examples=20, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
ref, cpu = Bodies("numpy"), Bodies("numba")
BACKENDS = [ref, cpu]
K_VALUES = [1, 2, 63, 64, 65, 100, 127, 128, 129, 576]


def signs(x: np.ndarray) -> np.ndarray:
    """minibnn's sign: +1 where x >= 0 (so sign(0) = +1), else -1; float64."""
    return np.where(x >= 0, 1.0, -1.0)


def randn(rng: np.random.Generator, shape: tuple[int, ...], dtype: type = np.float32,
          zeros: float = 0.1) -> np.ndarray:
    x = rng.standard_normal(shape)
    x[rng.random(shape) < zeros] = 0.0
    return x.astype(dtype)


@pytest.mark.parametrize("k", K_VALUES)
@pytest.mark.parametrize("kern", BACKENDS, ids=["numpy", "numba"])
def test_pack_round_trip(kern, k: int) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(k)
    x = randn(rng, (3, 2, k), np.float64)
    p = kern.pack_signs(x)
    assert p.dtype == np.uint64 and p.shape == (3, 2, (k + 63) // 64)
    assert np.array_equal(p, ref.pack_signs(x))
    if k % 64:
        assert not (p[..., -1] >> np.uint64(k % 64)).any(), "pad bits must be 0"
    for dtype in (np.float32, np.float64):
        u = kern.unpack_signs(p, k, dtype)
        assert u.dtype == dtype and np.array_equal(u, signs(x))
    assert np.array_equal(kern.pack_signs(kern.unpack_signs(p, k)), p)


def test_bit_layout() -> None:
    """Element j of the row sits at bit j % 64 of word j // 64; bit 1 means +1 (and 0 -> +1)."""
    x = -np.ones(130, np.float32)
    x[[0, 5, 64, 129]] = [1.0, 0.0, 2.0, 3.0]
    for kern in BACKENDS:
        p = kern.pack_signs(x)
        assert p.tolist() == [(1 << 0) | (1 << 5), 1 << 0, 1 << 1]


@pytest.mark.parametrize("k", K_VALUES)
@pytest.mark.parametrize("kern", BACKENDS, ids=["numpy", "numba"])
def test_xnor_gemm_equals_float_matmul(kern, k: int) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(100 + k)
    for m, n in ((1, 1), (5, 3), (9, 17)):                # odd M exercises the 4-row tail
        a, b = randn(rng, (m, k)), randn(rng, (n, k))
        c = kern.xnor_gemm(kern.pack_signs(a), kern.pack_signs(b), k)
        assert c.dtype == np.int32 and c.shape == (m, n)
        assert np.array_equal(c, signs(a) @ signs(b).T)


@SETTINGS
@given(st.integers(1, 12), st.integers(1, 300), st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_xnor_gemm_hypothesis(m: int, k: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = randn(rng, (m, k)), randn(rng, (n, k))
    pa, pb = cpu.pack_signs(a), cpu.pack_signs(b)
    want = signs(a) @ signs(b).T
    assert np.array_equal(cpu.xnor_gemm(pa, pb, k), want)
    assert np.array_equal(ref.xnor_gemm(pa, pb, k), want)


def _float_conv(x: np.ndarray, w: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """The float path: conv2d_forward on sign(x), sign(w), zero padding."""
    from minibnn.nn.functional import conv2d_forward

    y, _ = conv2d_forward(signs(x), signs(w), stride=stride, padding=padding)
    return y


@st.composite
def bconv_case(draw: st.DrawFn) -> tuple:
    n, c, o = draw(st.integers(1, 3)), draw(st.sampled_from([1, 3, 63, 64, 65, 130])), \
        draw(st.integers(1, 9))
    h, w = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    k, stride, padding = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(0, 2))
    assume(k <= h + 2 * padding and k <= w + 2 * padding)
    return n, c, o, h, w, k, stride, padding, draw(st.integers(0, 2**32 - 1))


@SETTINGS
@given(bconv_case())
def test_binary_conv2d_equals_float_conv(case: tuple) -> None:
    n, c, o, h, w, k, stride, padding, seed = case
    rng = np.random.default_rng(seed)
    x, wt = randn(rng, (n, c, h, w)), randn(rng, (o, c, k, k))
    want = _float_conv(x, wt, stride, padding)
    wbits, wsum = ref.pack_conv_weights(wt)
    for kern in BACKENDS:
        xbits = kern.pack_conv_input(x)
        assert np.array_equal(xbits, ref.pack_conv_input(x))
        y = kern.binary_conv2d(xbits, wbits, wsum, c, k, k, stride, padding)
        assert y.dtype == np.int32 and np.array_equal(y, want)


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, 0), (2, 2), (3, 1)])
def test_binary_conv2d_wide_rows(stride: int, padding: int) -> None:
    """Rows wide enough for the kernel's four-pixel interior path, with borders around it."""
    rng = np.random.default_rng(9)
    x, w = randn(rng, (2, 65, 7, 19)), randn(rng, (11, 65, 3, 3))
    wbits, wsum = ref.pack_conv_weights(w)
    y = cpu.binary_conv2d(cpu.pack_conv_input(x), wbits, wsum, 65, 3, 3, stride, padding)
    assert np.array_equal(y, _float_conv(x, w, stride, padding))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_bitpack_layers(backend: str) -> None:
    rng = np.random.default_rng(7)
    x, w = randn(rng, (4, 70, 6, 5)), randn(rng, (8, 70, 3, 3))
    with kernels.use_backend(backend):
        for stride, padding in ((1, 1), (2, 1), (1, 0), (1, 2)):
            layer = bitpack.pack_conv2d(w, stride, padding)
            y = bitpack.binary_conv2d(x, layer)
            assert np.array_equal(y, _float_conv(x, w, stride, padding))
        xd, wd = randn(rng, (5, 200)), randn(rng, (7, 200))
        dense = bitpack.pack_dense(wd)
        assert kernels.backend_for("xnor_gemm", dense.wbits) == backend
        assert np.array_equal(bitpack.binary_dense(xd, dense), signs(xd) @ signs(wd).T)


def test_padding_with_plus_one_would_be_wrong() -> None:
    """The documented pitfall: treating zero padding as +1 changes the border outputs."""
    rng = np.random.default_rng(8)
    x, w = randn(rng, (1, 4, 4, 4)), randn(rng, (2, 4, 3, 3))
    xp1 = np.pad(signs(x), ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=1.0)
    wrong = _float_conv(xp1, w, 1, 0)
    right = bitpack.binary_conv2d(x, bitpack.pack_conv2d(w, 1, 1))
    assert not np.array_equal(wrong, right)
    assert np.array_equal(wrong[:, :, 1:-1, 1:-1], right[:, :, 1:-1, 1:-1])


def test_errors() -> None:
    p = np.zeros((2, 2), np.uint64)
    for kern in BACKENDS:
        with pytest.raises(ShapeError):
            kern.xnor_gemm(p, np.zeros((2, 3), np.uint64), 100)
        with pytest.raises(ShapeError):
            kern.xnor_gemm(p, p, 200)            # 200 bits need 4 words
        with pytest.raises(DTypeError):
            kern.xnor_gemm(p.astype(np.int64), p, 100)
        with pytest.raises(DTypeError):
            kern.pack_signs(np.zeros(3, np.int32))
        with pytest.raises(ShapeError):
            kern.unpack_signs(p, 300)
        with pytest.raises(DTypeError):
            kern.unpack_signs(p.astype(np.int64), 100)
    layer = bitpack.pack_conv2d(np.ones((2, 3, 3, 3), np.float32), padding=1)
    with pytest.raises(ShapeError):
        bitpack.binary_conv2d(np.ones((1, 4, 5, 5), np.float32), layer)
    with pytest.raises(ShapeError):
        bitpack.binary_dense(np.ones((1, 4), np.float32), bitpack.pack_dense(np.ones((2, 5))))


# --------------------------------------------------------------------------- thresholds


def _plain_signs(y: np.ndarray, t: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The definition, channel by channel: +1 iff y >= t (d = +1) or y <= t (d = -1)."""
    s = np.empty(y.shape, dtype=np.bool_)
    for c in range(y.shape[1]):
        s[:, c] = y[:, c] >= t[c] if d[c] > 0 else y[:, c] <= t[c]
    return s


@st.composite
def threshold_case(draw: st.DrawFn) -> tuple:
    c = draw(st.sampled_from([1, 5, 63, 64, 65, 130]))
    spatial = draw(st.sampled_from([(), (1, 1), (3, 5), (4, 4)]))
    return draw(st.integers(1, 9)), c, spatial, draw(st.integers(0, 2**32 - 1))


@SETTINGS
@given(threshold_case())
def test_threshold_pack_is_the_packed_comparison(case: tuple) -> None:
    n, c, spatial, seed = case
    rng = np.random.default_rng(seed)
    y = rng.integers(-40, 41, (n, c) + spatial).astype(np.int32)
    t = rng.integers(-45, 46, c).astype(np.int32)
    t[: c // 3] = y.reshape(n, c, -1)[0, : c // 3, 0]          # y == t exactly somewhere
    d = rng.choice(np.array([-1, 1], np.int8), c)
    want = np.moveaxis(np.where(_plain_signs(y, t, d), 1.0, -1.0), 1, -1)   # channels last
    for kern in BACKENDS:
        bits = kern.threshold_pack(y, t, d)
        assert bits.dtype == np.uint64 and bits.shape == (n,) + spatial + ((c + 63) // 64,)
        assert np.array_equal(bits, ref.pack_signs(want))    # pad bits 0, layout of pack_signs
    assert np.array_equal(threshold_signs(y, Threshold(t, d, None, 45)),
                          _plain_signs(y, t, d))


def test_thresholded_conv_signs_are_the_next_layers_packed_input() -> None:
    """threshold_pack of conv counts == pack_conv_input of the same signs as floats."""
    rng = np.random.default_rng(11)
    y = rng.integers(-9, 10, (2, 70, 3, 4)).astype(np.int32)
    t = rng.integers(-9, 10, 70).astype(np.int32)
    d = np.ones(70, np.int8)
    s = np.where(y >= t[None, :, None, None], 1.0, -1.0)
    for kern in BACKENDS:
        assert np.array_equal(kern.threshold_pack(y, t, d), ref.pack_conv_input(s))


FUSED_CASES = [  # (n, h, c, o, k, stride, padding, (pool kernel, stride, padding))
    (8, 16, 16, 32, 3, 1, 1, (2, 2, 0)),       # binary_cnn's conv + 2x2 max-pool
    (4, 9, 70, 65, 3, 2, 1, (3, 2, 1)),        # partial words in and out, padded pool
    (6, 12, 64, 130, 3, 1, 0, (1, 1, 0)),      # no pool, three output words
    (2, 5, 5, 7, 3, 1, 1, (2, 1, 1)),          # small: one thread
]


@pytest.mark.parametrize("case", FUSED_CASES)
def test_binary_conv2d_threshold_pack_is_conv_pool_threshold(case: tuple) -> None:
    """The fused layer equals its definition: float conv of the signs, float max-pool, the
    plain comparisons, packed (both bodies; the first three cases run the parallel path)."""
    from minibnn.kernels.cpu import PARALLEL_MIN_WORK
    from minibnn.nn.functional import maxpool2d_forward

    n, h, c, o, k, stride, padding, pool = case
    rng = np.random.default_rng(o)
    x, w = randn(rng, (n, c, h, h)), randn(rng, (o, c, k, k))
    y = _float_conv(x, w, stride, padding)                     # float64, exact integers
    conv_work = y.size * k * k * ((c + 63) // 64)
    assert (conv_work >= PARALLEL_MIN_WORK) == (n > 2)
    if pool != (1, 1, 0):
        y, _ = maxpool2d_forward(y, *pool)
    y = y.astype(np.int32)
    spread = int(np.sqrt(k * k * c))
    t = rng.integers(-2 * spread, 2 * spread + 1, o).astype(np.int32)
    t[: o // 3] = y[0, : o // 3, 0, 0]                          # y == t exactly somewhere
    d = rng.choice(np.array([-1, 1], np.int8), o)
    want = ref.pack_signs(np.moveaxis(np.where(_plain_signs(y, t, d), 1.0, -1.0), 1, -1))
    xbits, (wbits, wsum) = ref.pack_conv_input(x), ref.pack_conv_weights(w)
    for body in ("numpy", "numba"):
        with kernels.use_backend("numpy" if body == "numpy" else "auto"):
            got = kernels.get("binary_conv2d_threshold_pack", body)(
                xbits, wbits, wsum, c, k, k, stride, padding, t, d, *pool)
        assert got.dtype == np.uint64 and got.shape == want.shape and np.array_equal(got, want)


def test_binary_conv2d_threshold_pack_errors() -> None:
    xbits, (wbits, wsum) = np.zeros((1, 4, 4, 1), np.uint64), \
        ref.pack_conv_weights(np.ones((3, 5, 3, 3), np.float32))
    t, d = np.zeros(3, np.int32), np.ones(3, np.int8)
    for kern in BACKENDS:
        fused = kern.binary_conv2d_threshold_pack
        with pytest.raises(ShapeError, match="direction"):
            fused(xbits, wbits, wsum, 5, 3, 3, 1, 1, t, np.array([1, 0, -1], np.int8))
        with pytest.raises(ShapeError, match="threshold must be int32 \\(3,\\)"):
            fused(xbits, wbits, wsum, 5, 3, 3, 1, 1, np.zeros(4, np.int32), d)
        with pytest.raises(ShapeError, match="pool_padding must be at most"):
            fused(xbits, wbits, wsum, 5, 3, 3, 1, 1, t, d, 2, 2, 2)
        with pytest.raises(ShapeError, match="xbits"):
            fused(xbits, wbits, wsum, 70, 3, 3, 1, 1, t, d)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [c[:7] for c in FUSED_CASES])
def test_binary_conv2d_lookup_reads_the_table_at_each_count(case: tuple, dtype: type) -> None:
    """out = table[y + K, o] with y the float conv of the signs (both bodies; the first three
    cases run the parallel path)."""
    n, h, c, o, k, stride, padding = case
    rng = np.random.default_rng(o + 1)
    x, w = randn(rng, (n, c, h, h)), randn(rng, (o, c, k, k))
    counts = np.moveaxis(_float_conv(x, w, stride, padding), 1, -1).astype(np.int64)
    table = rng.standard_normal((2 * k * k * c + 1, o)).astype(dtype)
    want = table[counts + k * k * c, np.arange(o)]
    xbits, (wbits, wsum) = ref.pack_conv_input(x), ref.pack_conv_weights(w)
    for body in ("numpy", "numba"):
        with kernels.use_backend("numpy" if body == "numpy" else "auto"):
            got = kernels.get("binary_conv2d_lookup", body)(xbits, wbits, wsum, c, k, k, stride,
                                                            padding, table)
        assert got.dtype == dtype and np.array_equal(got, want)


def test_binary_conv2d_lookup_errors() -> None:
    xbits, (wbits, wsum) = np.zeros((1, 4, 4, 1), np.uint64), \
        ref.pack_conv_weights(np.ones((3, 5, 3, 3), np.float32))
    for kern in BACKENDS:
        with pytest.raises(ShapeError, match="table must be \\(2K\\+1, O\\) = \\(91, 3\\)"):
            kern.binary_conv2d_lookup(xbits, wbits, wsum, 5, 3, 3, 1, 1, np.zeros((90, 3)))
        with pytest.raises(DTypeError, match="table"):
            kern.binary_conv2d_lookup(xbits, wbits, wsum, 5, 3, 3, 1, 1,
                                      np.zeros((91, 3), np.int32))


def test_fold_sign_table_steps_constants_and_lookup() -> None:
    k = 3                                           # y = -3 .. 3, one column per channel
    cols = {"up at 1": [0, 0, 0, 0, 1, 1, 1], "down at -2": [1, 1, 0, 0, 0, 0, 0],
            "all +1": [1] * 7, "all -1": [0] * 7, "bump": [0, 1, 1, 0, 0, 1, 0],
            "down at 2": [1, 1, 1, 1, 1, 1, 0]}
    table = np.array(list(cols.values()), dtype=bool).T
    th = fold_sign_table(table, k)
    assert th.direction.tolist() == [1, -1, 1, 1, 0, -1]
    assert th.threshold.dtype == np.int32 and th.direction.dtype == np.int8
    assert th.threshold[[0, 1, 2, 3, 5]].tolist() == [1, -2, -3, 4, 2]
    assert th.lookup is not None and th.lookup.dtype == np.uint8
    assert th.lookup.tolist() == [cols["bump"]]
    y = np.repeat(np.arange(-k, k + 1, dtype=np.int32)[:, None], table.shape[1], axis=1)
    assert np.array_equal(threshold_signs(y, th), table)  # every channel, lookup included
    with pytest.raises(ShapeError, match="direction"):
        ref.threshold_pack(y, th.threshold, th.direction)
    with pytest.raises(ShapeError, match="2k\\+1"):
        fold_sign_table(table[:-1], k)


def test_threshold_errors() -> None:
    t, d = np.zeros(3, np.int32), np.ones(3, np.int8)
    for kern in BACKENDS:
        with pytest.raises(DTypeError):
            kern.threshold_pack(np.zeros((2, 3), np.int64), t, d)
        with pytest.raises(DTypeError):
            kern.threshold_pack(np.zeros((2, 3, 4), np.int32), t, d)
        with pytest.raises(ShapeError):
            kern.threshold_pack(np.zeros((2, 4), np.int32), t, d)
        with pytest.raises(ShapeError):
            kern.threshold_pack(np.zeros((2, 3), np.int32), t, d.astype(np.int32))
        with pytest.raises(DTypeError, match="threshold_pack: y must be a NumPy"):
            kern.threshold_pack([[0, 0, 0]], t, d)
    with pytest.raises(DTypeError, match="threshold_signs: y must be a NumPy array"):
        threshold_signs([[0, 0, 0]], Threshold(t, d, None, 1))
