"""Fused optimisers give the same bits as the filter chains, and share their state layout."""
import functools

import numpy as np
import pytest

from minibnn import optim
from minibnn.optim import fused

def pick(fused_fn, chain_fn, is_fused, kernels):
    """The fused optimiser on the given kernel backend, or the chain it replaces."""
    return functools.partial(fused_fn, kernels=kernels) if is_fused else chain_fn


CASES = [
    ("cema", lambda f, k: pick(fused.fused_cema, optim.cema, f, k)(optim.linear(0.3, 6), 0.6), True),
    ("bop", lambda f, k: pick(fused.fused_bop, optim.bop, f, k)(1e-3, 0.2), True),
    ("sgd-coupled", lambda f, k: pick(fused.fused_sgd, optim.sgd, f, k)(
        optim.cosine(0.1, 6), 0.9, 1e-2, False, 0.1), False),
    ("sgd-decoupled", lambda f, k: pick(fused.fused_sgd, optim.sgd, f, k)(0.1, 0.9, 1e-2, True), False),
    ("sgd-plain", lambda f, k: pick(fused.fused_sgd, optim.sgd, f, k)(0.1), False),
    ("adam", lambda f, k: pick(fused.fused_adam, optim.adam, f, k)(1e-2, weight_decay=1e-2), False),
    ("adamw", lambda f, k: pick(fused.fused_adam, optim.adam, f, k)(
        optim.linear(1e-2, 6), weight_decay=1e-2, decoupled=True), False),
]


def _params(binary, dtype, rng):
    shapes = {"a.w": (7, 5), "b.w": (3,)}
    out = {}
    for name, shape in shapes.items():
        w = rng.normal(size=shape).astype(dtype)
        out[name] = np.where(w >= 0, 1, -1).astype(dtype) if binary else w
    return out


def _flat(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flat(v, prefix + k + "/")
        else:
            yield prefix + k, v


@pytest.mark.parametrize("kernels", ["numpy", "numba"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, make, binary", CASES, ids=[c[0] for c in CASES])
def test_fused_equals_chain_bitwise(name, make, binary, dtype, kernels):
    rng = np.random.default_rng(0)
    params = _params(binary, dtype, rng)
    grads = [{k: rng.normal(size=v.shape).astype(dtype) for k, v in params.items()}
             for _ in range(6)]
    results = []
    for is_fused in (False, True):
        opt = make(is_fused, kernels)
        p, state = dict(params), opt.init(params)
        for g in grads:
            p, state = opt.update(g, state, p)
        results.append((p, dict(_flat(state))))
    (p0, s0), (p1, s1) = results
    for k in p0:
        np.testing.assert_array_equal(p0[k], p1[k])
        assert p1[k].dtype == dtype
    assert s0.keys() == s1.keys()
    for k in s0:
        np.testing.assert_array_equal(s0[k], s1[k])


def test_fused_does_not_modify_caller_params():
    params = {"w": np.array([1.0, -1.0, 1.0])}
    opt = fused.fused_cema(1.0, 1.0)
    state = opt.init(params)
    new, _ = opt.update({"w": np.array([1.0, 1.0, -1.0])}, state, params)
    np.testing.assert_array_equal(params["w"], [1.0, -1.0, 1.0])
    np.testing.assert_array_equal(new["w"], [-1.0, -1.0, 1.0])
