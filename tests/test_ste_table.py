"""One STE table: the layers, the channels-last reference and the Numba body agree on it.

``minibnn/ops/sign.py`` defines sign and the STEs once. The activation layer
(``nn.functional.sign``) re-exports that ``ste_grad``; the channels-last reference body uses
it; the Numba body of the fused BatchNorm+sign backward reimplements it for one float32 value
(``kernels.cpu_channels_last._ste``) and must give the same bits on every value, the edges of
each piece included, for the piecewise-polynomial STEs. "swish" calls exp and tanh, which NumPy
(SIMD loops) and Numba (the C library through LLVM) round differently in the last bit: there the
two agree within 4 float32 ulps of the STE's peak value beta (measured: 2, i.e. 1e-6 at beta 5;
relative to a value near the STE's zero crossing that can be many ulps).
"""
from __future__ import annotations

import numpy as np
import pytest

from minibnn.kernels import channels_last
from minibnn.kernels.cpu_channels_last import _ste
from minibnn.nn import functional as F
from minibnn.ops import sign as ops_sign

VALUES = np.concatenate([
    np.array([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1e-30, -1e-30, 1.0000001, -0.9999999, 20.0, -20.0,
              89.0, -89.0, 1e30, -1e30], np.float32),
    np.random.default_rng(0).normal(scale=1.5, size=200).astype(np.float32)])


def test_the_layers_and_the_kernels_use_the_one_table() -> None:
    assert F.ste_grad is ops_sign.ste_grad and F.STE_NAMES is ops_sign.STE_NAMES
    assert channels_last.STE_CODES is ops_sign.STE_NAMES
    assert channels_last.ste_grad is ops_sign.ste_grad


@pytest.mark.parametrize("code, ste", list(enumerate(ops_sign.STE_NAMES)))
@pytest.mark.parametrize("beta", [5.0, 0.5])
def test_the_numba_body_is_the_table_value_for_value(code: int, ste: str, beta: float) -> None:
    want = ops_sign.ste_grad(VALUES, ste, beta)
    got = np.array([_ste(np.float32(v), code, np.float32(beta)) for v in VALUES], np.float32)
    if ste == "swish":
        np.testing.assert_allclose(got, want, rtol=0, atol=4 * np.spacing(np.float32(beta)))
    else:
        np.testing.assert_array_equal(got, want, err_msg=ste)
