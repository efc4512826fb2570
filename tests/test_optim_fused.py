"""Every optimiser's fused step gives the chain's bits and the chain's state, on every backend.

The fused step (``opt.fused.step``) is run directly under ``kernels.use_backend(backend)``:
"numpy" runs it on the reference kernel bodies, "numba" on the compiled CPU ones, "cuda" on
CuPy arrays (skipped, with the reason, where no GPU is usable).  The chain (``opt.update``)
runs on NumPy arrays and is the oracle.  One parameter is large enough for the compiled
kernels' parallel path (``BIG``).  Streams include exact ties: a weight row whose
gradient is always 0 (so m == v == 0) and, for Bop, statistics landing exactly on the threshold.
"""
import numba  # noqa: F401  (a hard dependency: a missing or broken Numba fails this file)
import numpy as np
import pytest

from minibnn import kernels, optim
from minibnn.kernels.cpu import PARALLEL_MIN_WORK

STEPS = 6

CASES = {
    "cema": (lambda: optim.cema(optim.linear(0.3, STEPS), 0.6), True),
    "cema-tie-positive": (lambda: optim.cema(0.25, optim.step_decay(0.5, 2, 0.5),
                                              tie="positive"), True),
    "bop": (lambda: optim.bop(1e-3, 0.2), True),
    "bop-tie-at-threshold": (lambda: optim.bop(0.25, 0.5), True),
    "bop-defaults": (lambda: optim.bop(), True),
    "sgd-coupled": (lambda: optim.sgd(optim.cosine(0.1, STEPS), 0.9, 1e-2, False, 0.1), False),
    "sgd-decoupled": (lambda: optim.sgd(0.1, 0.9, 1e-2, True), False),
    "sgd-plain": (lambda: optim.sgd(0.1, momentum=0.0), False),
    "adam": (lambda: optim.adam(1e-2, weight_decay=1e-2), False),
    "adamw": (lambda: optim.adam(optim.linear(1e-2, STEPS), weight_decay=1e-2,
                                 decoupled=True), False),
}


def _backend_arrays(backend):
    """(to backend, to NumPy) converters; skip "cuda" with the reason where no GPU is usable."""
    if backend != "cuda":
        return (lambda a: a), (lambda a: a)
    try:
        import cupy as cp

        cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # ImportError, or CUDA without a device
        pytest.skip(f"cuda backend needs CuPy and a CUDA device: {type(exc).__name__}: {exc}")
    return cp.asarray, cp.asnumpy


#: a parameter large enough for the kernels' parallel (prange) path, which updates every real
#: layer of a model; the small ones run on one thread
BIG = (PARALLEL_MIN_WORK // 256 + 1, 256)


def _params(binary, dtype, rng):
    out = {}
    for name, shape in {"a.w": (7, 5), "b.w": (3,), "c.w": BIG}.items():
        w = rng.normal(size=shape).astype(dtype)
        out[name] = np.where(w >= 0, 1, -1).astype(dtype) if binary else w
    return out


def _grads(name, params, dtype, rng):
    """Gradient stream: Gaussian with sparse zeros and one row that is always 0; Bop's tie
    case draws from {-1/2, 0, 1/2} so that m lands on tau = 1/4 exactly."""
    stream = []
    for _ in range(STEPS):
        step = {}
        for k, p in params.items():
            if name == "bop-tie-at-threshold":
                g = rng.choice([-0.5, 0.0, 0.5], size=p.shape)
            else:
                g = rng.normal(size=p.shape) * (rng.random(p.shape) > 0.2)
            if k == "a.w":
                g[0] = 0.0
            step[k] = g.astype(dtype)
        stream.append(step)
    return stream


def _flat(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flat(v, prefix + k + "/")
        else:
            yield prefix + k, v


def _run(opt, params, grads, step, to_dev=lambda a: a, to_host=lambda a: a):
    """The parameters after each step (copies: a fused step overwrites its arrays) and the
    final state, flat."""
    p = {k: to_dev(v.copy()) for k, v in params.items()}
    state = opt.init(p)
    history = []
    for g in grads:
        p, state = step(opt)({k: to_dev(v) for k, v in g.items()}, state, p)
        history.append({k: np.array(to_host(v)) for k, v in p.items()})
    return history, {k: to_host(v) for k, v in _flat(state)}


@pytest.mark.parametrize("backend", ["numpy", "numba", "cuda"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_fused_step_equals_chain_bitwise(name, dtype, backend):
    to_dev, to_host = _backend_arrays(backend)
    make, binary = CASES[name]
    rng = np.random.default_rng(0)
    params = _params(binary, dtype, rng)
    grads = _grads(name, params, dtype, rng)
    want, want_state = _run(make(), params, grads, lambda o: o.update)
    assert make().fused is not None
    assert params["c.w"].size >= PARALLEL_MIN_WORK > params["a.w"].size
    with kernels.use_backend(backend):
        got, got_state = _run(make(), params, grads, lambda o: o.fused.step, to_dev, to_host)
    for t, (w, g) in enumerate(zip(want, got)):
        for k in w:
            np.testing.assert_array_equal(g[k], w[k], err_msg=f"{name} step {t + 1} {k}")
            assert g[k].dtype == dtype
    assert got_state.keys() == want_state.keys()
    for k in want_state:
        np.testing.assert_array_equal(got_state[k], want_state[k], err_msg=k)
        assert np.asarray(got_state[k]).dtype == np.asarray(want_state[k]).dtype, k


@pytest.mark.parametrize("name", ["cema", "cema-tie-positive", "bop", "bop-defaults"])
def test_streams_hit_exact_zero_ties(name):
    """The always-zero row keeps its statistic at exactly 0 (so the tie rule decides it)."""
    make, _ = CASES[name]
    rng = np.random.default_rng(0)
    params = _params(True, np.float64, rng)
    _, state = _run(make(), params, _grads(name, params, np.float64, rng), lambda o: o.update)
    stat = state["v/s/a.w"] if name.startswith("cema") else state["m/s/a.w"]
    assert np.all(stat[0] == 0)


def test_bop_stream_hits_the_threshold_exactly():
    make, _ = CASES["bop-tie-at-threshold"]
    rng = np.random.default_rng(0)
    params = _params(True, np.float64, rng)
    opt, p = make(), dict(params)
    state, hits = opt.init(p), 0
    for g in _grads("bop-tie-at-threshold", params, np.float64, rng):
        before = p
        p, state = opt.update(g, state, p)
        for k in p:
            hits += int(np.count_nonzero(state["m"]["s"][k] * before[k] == 0.25))
    assert hits > 0


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("make", [lambda: optim.cema(1.0, 1.0), lambda: optim.sgd(0.5),
                                  optim.bop2nd], ids=["cema", "sgd", "bop2nd-chain-only"])
def test_step_in_place_writes_into_the_callers_arrays(make, backend):
    """``step_in_place`` leaves the new parameters in the arrays it was given (the fused
    kernel writes them; a chain's new arrays are copied in) and returns that dict: a step
    keeps no second copy of the parameters."""
    params = {"w": np.array([1.0, -1.0, 1.0])}
    grads = {"w": np.array([1.0, 1.0, -1.0])}
    opt, array = make(), params["w"]
    want, _ = opt.update(grads, opt.init(params), {"w": array.copy()})
    with kernels.use_backend(backend):
        got = opt.step_in_place(grads, opt.init(params), params)
    assert got is params and params["w"] is array
    np.testing.assert_array_equal(array, want["w"])
    assert not np.array_equal(want["w"], [1.0, -1.0, 1.0])      # the step changed something


def _awkward_grads(grads, layout, to_dev):
    """The same gradient values as strided views (every other entry of a doubled array) or,
    on NumPy, read-only arrays: a gradient is only read, so any layout must do."""
    out = []
    for step in grads:
        new = {}
        for k, g in step.items():
            if layout == "strided":
                new[k] = to_dev(np.repeat(g, 2, axis=-1))[..., ::2]
                assert not new[k].flags.c_contiguous
            else:
                new[k] = g.copy()
                new[k].flags.writeable = False
        out.append(new)
    return out


@pytest.mark.parametrize("backend, layout", [("numpy", "strided"), ("numpy", "read-only"),
                                             ("numba", "strided"), ("numba", "read-only"),
                                             ("cuda", "strided")])   # CuPy: no read-only flag
@pytest.mark.parametrize("name", list(CASES))
def test_fused_step_reads_any_gradient_layout(name, layout, backend):
    to_dev, to_host = _backend_arrays(backend)
    make, binary = CASES[name]
    rng = np.random.default_rng(1)
    params = _params(binary, np.float32, rng)
    grads = _grads(name, params, np.float32, rng)
    want, want_state = _run(make(), params, grads, lambda o: o.update)
    awkward = _awkward_grads(grads, layout, to_dev)
    p = {k: to_dev(v) for k, v in params.items()}
    opt = make()
    state = opt.init(p)
    with kernels.use_backend(backend):
        for t, g in enumerate(awkward):
            p, state = opt.fused.step(g, state, p)
            for k in p:
                np.testing.assert_array_equal(to_host(p[k]), want[t][k],
                                              err_msg=f"{name} step {t + 1} {k}")
    for k, v in _flat(state):
        np.testing.assert_array_equal(to_host(v), want_state[k], err_msg=k)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("decoupled", [False, True])
def test_sgd_without_momentum_keeps_no_buffer(backend, decoupled):
    """trace(0) is the identity: the momentum stage stores only its count, in the chain's
    state and in the fused step's (the checkpoint layout is the same either way)."""
    params = {"a.w": np.ones((2, 3)), "b.w": np.ones(4)}
    grads = {k: np.full(v.shape, 0.5) for k, v in params.items()}
    opt = optim.sgd(0.1, momentum=0.0, weight_decay=0.01, decoupled=decoupled)
    state = opt.init(params)
    assert state["momentum"] == {"count": 0}
    _, chain_state = opt.update(grads, state, params)
    with kernels.use_backend(backend):
        _, fused_state = opt.fused.step(grads, opt.init(params), params)
    for st in (chain_state, fused_state):
        assert set(st["momentum"]) == {"count"} and int(st["momentum"]["count"]) == 1
    assert dict(_flat(chain_state)).keys() == dict(_flat(fused_state)).keys()
    with_momentum = optim.sgd(0.1, momentum=0.9).init(params)["momentum"]
    assert set(with_momentum) == {"count", "m"} and set(with_momentum["m"]) == set(params)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("awkward", ["read-only", "fortran"])
def test_step_in_place_refuses_arrays_it_cannot_write_on_every_backend(awkward, backend):
    """A read-only or non-C-contiguous parameter is a one-line error before anything changes,
    whichever path (fused kernel or chain) would run."""
    from minibnn.errors import MinibnnError

    w = np.asfortranarray(np.ones((3, 4))) if awkward == "fortran" else np.ones((3, 4))
    w.flags.writeable = awkward != "read-only"
    params = {"a.w": np.ones(5), "z.w": w}
    grads = {k: np.full(v.shape, 0.5) for k, v in params.items()}
    opt = optim.cema(1.0, 1.0)
    state = opt.init(params)
    with kernels.use_backend(backend), pytest.raises(MinibnnError, match="'z.w' must be"):
        opt.step_in_place(grads, state, params)
    assert params["a.w"].tolist() == [1.0] * 5 and int(state["m"]["count"]) == 0
