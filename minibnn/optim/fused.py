"""Fused optimisers: the same updates as the filter chains, one pass over memory per parameter.

``fused_cema``, ``fused_bop``, ``fused_sgd`` and ``fused_adam`` compute exactly what
``cema``, ``bop``, ``sgd`` and ``adam`` compute (same operation order, so the same bits), but
call one in-place kernel per parameter (``minibnn.kernels``: Numba on the CPU, or the NumPy
reference twin) instead of building each intermediate stream as a new array.  They keep the
state layout of the chain they replace, so a checkpoint written by one loads into the other.

Differences from the chains, by design: the state buffers are updated *in place* (the state
passed in must not be used again, which the training loop never does); parameters are still
returned as new arrays (one copy), so callers can compare old and new weights.
"""
from __future__ import annotations

from typing import Callable

from minibnn.kernels import DEFAULT_CPU_BACKEND, get_kernels
from minibnn.optim.base import Params, State, Transform
from minibnn.optim.filters import step_count as _count
from minibnn.optim.filters import step_count_after
from minibnn.optim.optimizers import adam, bop, cema, sgd
from minibnn.optim.schedules import Schedule, as_schedule


def _bump(state: State) -> State:
    """The same sub-state with ``count`` advanced by one, as the chain's filters do."""
    return {**state, "count": step_count_after(state)}


def _fused(reference: Transform, step: Callable[[Params, State, Params], tuple[Params, State]]
           ) -> Transform:
    """A transform with the reference chain's ``init`` (so its state layout) and a fused step."""
    return Transform(reference.init, step)


def fused_cema(alpha: float | Schedule, gamma: float, init_state: dict[str, Params] | None = None,
               tie: str = "keep", kernels: str = DEFAULT_CPU_BACKEND) -> Transform:
    """``cema`` with one fused kernel per weight tensor (state: chain(ema, ema, flip)'s)."""
    reference = cema(alpha, gamma, init_state, tie)
    alpha_at = as_schedule(alpha)
    k = get_kernels(kernels)

    def update(grads: Params, state: State, params: Params) -> tuple[Params, State]:
        a = alpha_at(_count(state["1"]))
        new = {}
        for name, g in grads.items():
            new[name] = params[name].copy()
            k.cema_update(new[name], state["0"]["s"][name], state["1"]["s"][name], g, a, gamma,
                          0.0, tie)
        return new, {"0": _bump(state["0"]), "1": _bump(state["1"]), "2": state["2"]}

    return _fused(reference, update)


def fused_bop(threshold: float, gamma: float, kernels: str = DEFAULT_CPU_BACKEND) -> Transform:
    """``bop`` with one fused kernel per weight tensor (state: chain(ema, flip)'s)."""
    reference = bop(threshold, gamma)
    k = get_kernels(kernels)

    def update(grads: Params, state: State, params: Params) -> tuple[Params, State]:
        new = {}
        for name, g in grads.items():
            new[name] = params[name].copy()
            k.bop_update(new[name], state["0"]["s"][name], g, gamma, threshold)
        return new, {"0": _bump(state["0"]), "1": state["1"]}

    return _fused(reference, update)


def fused_sgd(lr: float | Schedule, momentum: float = 0.0, weight_decay: float = 0.0,
              decoupled: bool = False, dampening: float = 0.0,
              kernels: str = DEFAULT_CPU_BACKEND) -> Transform:
    """``sgd`` with one fused kernel per weight tensor.

    State layout of the chain: decoupled ``[trace, decay, lr, apply]``, coupled
    ``[decay, trace, lr, apply]``; the trace holds ``m``, the lr scaler its step count.
    """
    reference = sgd(lr, momentum, weight_decay, decoupled, dampening)
    lr_at = as_schedule(lr)
    trace_key = "0" if decoupled else "1"
    k = get_kernels(kernels)

    def update(grads: Params, state: State, params: Params) -> tuple[Params, State]:
        eta = lr_at(_count(state["2"]))
        first = _count(state[trace_key]) == 0
        new = {}
        for name, g in grads.items():
            new[name] = params[name].copy()
            m = state[trace_key]["m"][name] if momentum != 0.0 else None
            k.sgd_update(new[name], m, g, eta, momentum, weight_decay, dampening, decoupled,
                         first)
        out = dict(state)
        out[trace_key], out["2"] = _bump(state[trace_key]), _bump(state["2"])
        return new, out

    return _fused(reference, update)


def fused_adam(lr: float | Schedule = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
               weight_decay: float = 0.0, decoupled: bool = False,
               kernels: str = DEFAULT_CPU_BACKEND) -> Transform:
    """``adam`` with one fused kernel per weight tensor.

    State layout of the chain: coupled ``[decay, adam, lr, apply]``, decoupled
    ``[adam, decay, lr, apply]``; the Adam stage holds ``m``, ``v`` and the step count.
    """
    reference = adam(lr, b1, b2, eps, weight_decay, decoupled)
    lr_at = as_schedule(lr)
    adam_key = "0" if decoupled else "1"
    k = get_kernels(kernels)

    def update(grads: Params, state: State, params: Params) -> tuple[Params, State]:
        eta = lr_at(_count(state["2"]))
        t = _count(state[adam_key]) + 1
        moments = state[adam_key]
        new = {}
        for name, g in grads.items():
            new[name] = params[name].copy()
            k.adam_update(new[name], moments["m"][name], moments["v"][name], g, eta, t, b1, b2,
                          eps, weight_decay, decoupled)
        out = dict(state)
        out[adam_key], out["2"] = _bump(state[adam_key]), _bump(state["2"])
        return new, out

    return _fused(reference, update)
