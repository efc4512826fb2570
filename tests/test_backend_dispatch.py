"""Layers give the same results on the Numba kernels as on the NumPy reference."""
import numpy as np
import pytest

from minibnn.backend import fast_kernels_for, set_cpu_kernels
from minibnn.errors import DeviceError
from minibnn.nn import functional as F


@pytest.fixture
def restore_backend():
    yield
    set_cpu_kernels("numba")


def _run_both(fn):
    out = []
    for backend in ("numpy", "numba"):
        set_cpu_kernels(backend)
        out.append(fn())
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, k, stride, padding", [
    ((1, 1, 5, 5), 3, 1, 0), ((2, 3, 7, 6), 3, 2, 1), ((3, 2, 9, 9), 5, 1, 2), ((2, 4, 4, 4), 1, 1, 0),
])
def test_conv2d_numba_equals_numpy(restore_backend, dtype, shape, k, stride, padding):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(dtype)
    w = rng.normal(size=(5, shape[1], k, k)).astype(dtype)

    def run():
        y, cache = F.conv2d_forward(x, w, stride=stride, padding=padding)
        dx, dw, _ = F.conv2d_backward(np.ones_like(y), cache)
        return y, dx, dw

    ref, fast = _run_both(run)
    for a, b in zip(ref, fast):
        np.testing.assert_allclose(a, b, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=0)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pooling_numba_equals_numpy(restore_backend, kind):
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 7))
    fwd, bwd = ((F.maxpool2d_forward, F.maxpool2d_backward) if kind == "max"
                else (F.avgpool2d_forward, F.avgpool2d_backward))

    def run():
        y, cache = fwd(x, 3, 2, 1)
        return y, bwd(np.ones_like(y), cache)

    ref, fast = _run_both(run)
    for a, b in zip(ref, fast):
        np.testing.assert_array_equal(a, b)


def test_backend_selection(restore_backend):
    x = np.zeros(3)
    set_cpu_kernels("numpy")
    assert fast_kernels_for(x) is None
    set_cpu_kernels("numba")
    assert fast_kernels_for(x) is not None
    assert fast_kernels_for([1.0]) is None
    with pytest.raises(DeviceError, match="unknown CPU kernel backend"):
        set_cpu_kernels("fortran")
