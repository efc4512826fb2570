"""minibnn.torch's optimisers against minibnn.optim: the same gradients give the same bits."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="minibnn.torch needs PyTorch (the torch extra)")

from minibnn import optim  # noqa: E402
from minibnn.torch import optim as topt  # noqa: E402

DTYPES = {np.float64: torch.float64, np.float32: torch.float32}


def _signs(rng, shape, dtype):
    return np.where(rng.standard_normal(shape) >= 0, 1.0, -1.0).astype(dtype)


def lockstep(name, kwargs, dtype=np.float64, steps=50, shape=(6, 5), seed=0, state_scale=0.01,
             grads=None):
    """Run minibnn's optimiser ``name`` and its PyTorch twin on one gradient stream from the
    same random state; yield (step, minibnn params, minibnn state, torch param, torch state)."""
    rng = np.random.default_rng(seed)
    opt = _minibnn(name, kwargs)
    params = {"w": _signs(rng, shape, dtype)}
    state = opt.init(params)
    for _, (stage, buffer) in topt.NAMED[name][0].BUFFERS.items():
        state[stage][buffer]["w"][...] = (state_scale * rng.standard_normal(shape)).astype(dtype)
    p = torch.nn.Parameter(torch.from_numpy(params["w"].copy()))
    twin = topt.from_name(name, [p], **kwargs)
    topt.load_minibnn_state(twin, state, {"w": p})
    if grads is None:
        grads = [rng.standard_normal(shape).astype(dtype) for _ in range(steps)]
    for t, g in enumerate(grads):
        params, state = opt.update({"w": g}, state, params)
        p.grad = torch.from_numpy(np.array(g))
        twin.step()
        yield t, params, state, p, topt.minibnn_state(twin, {"w": p})


def _minibnn(name, kwargs):
    """minibnn's optimiser ``name`` (the trainer's names, and second_order)."""
    if name == "second_order":
        return optim.second_order(**kwargs)
    fn, fixed = optim.optimizers.NAMED[name]
    return fn(**{**kwargs, **fixed})


def assert_same(params, state, p, tstate, where):
    assert np.array_equal(p.detach().numpy(), params["w"]), f"b differs at {where}"
    for stage, entries in state.items():
        for key, value in entries.items():
            got = tstate[stage][key]
            want = value["w"] if isinstance(value, dict) else value
            got = got["w"] if isinstance(got, dict) else got
            assert np.array_equal(got, want), f"{stage}/{key} differs at {where}"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cema_bit_identical_with_schedule(dtype):
    kwargs = dict(alpha=optim.linear(0.05, 40, per_epoch_steps=7), gamma=optim.cosine(0.5, 50))
    flips = 0
    old = None
    for t, params, state, p, tstate in lockstep("cema", kwargs, dtype):
        assert_same(params, state, p, tstate, f"step {t}")
        if old is not None:
            flips += int(np.count_nonzero(old != params["w"]))
        old = params["w"].copy()
    assert flips > 0
