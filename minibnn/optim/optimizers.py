"""The public optimisers, each a chain of named filters from ``filters.py`` plus a fused step.

Latent-weight optimisers end in ``apply_updates`` (stage ``w``: they move real weights);
filter optimisers end in ``flip`` (stage ``b``: they act on ``b in {-1, +1}`` directly).
Reading the chains side by side shows docs/theory.md's relations (stage names are the state keys,
fixed because checkpoints depend on them):

    sgd, decoupled (B): momentum=trace(mu), weight_decay=add_decayed_weights(lam),
                        lr=scale_by_learning_rate(eta), w=apply_updates()
    sgd, coupled   (A): weight_decay=..., momentum=..., lr=..., w=...
    adam:               like sgd with adam=scale_by_adam in place of momentum
    cema:               m=ema(gamma), v=ema(alpha), b=flip(0)
    bop:                m=ema(gamma), b=flip(tau, "positive")
                        (bop(0, r) = cema(alpha=r, gamma=1, tie="positive"): with gamma = 1,
                        cema's m is g and its v is bop's m; the tie rules must agree too)
    bop2nd:             rms=normalize_by_rms(gamma, sigma), b=flip(tau, "positive")
    second_order:       v=iir2(a1, a2, c), b=flip(0)

``cema``, ``bop``, ``sgd`` and ``adam`` also carry a fused step (``Transform.fused``): one
in-place kernel per parameter (``kernels.cema_update(...)`` etc.) that follows the
chain's operation order, so it gives the chain's bits and the chain's state (counts bumped as
the chain's filters bump them).  ``opt.step_in_place`` uses it where the kernel is compiled;
it writes the new parameters into the parameter arrays themselves (no copy: a step needs no
memory beyond the gradients).

The keyword defaults of these constructors are minibnn's defaults; ``defaults(name)`` reads
them for the trainer's optimiser names (the config and CLI take theirs from there).
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

from minibnn import kernels
from minibnn.errors import MinibnnError
from minibnn.optim.base import Chain, FusedStep, Params, State, StepFn, Transform, chain, checked
from minibnn.optim.checks import (FINITE, MOMENTUM, NONNEGATIVE, POSITIVE, RATE, UNIT,
                                  hyperparameter)
from minibnn.optim.filters import (add_decayed_weights, apply_updates, ema, flip, iir2,
                                   normalize_by_rms, scale_by_adam, scale_by_learning_rate,
                                   step_count, step_count_after, trace)
from minibnn.optim.schedules import Schedule, as_schedule


def _bumped(state: State) -> State:
    """A stage's state with ``count`` advanced by one, as the chain's filter advances it."""
    return {**state, "count": step_count_after(state)}


def _with_fused(opt: Chain, op: str, step: StepFn) -> Chain:
    """``opt`` with the fused ``step`` (behind the chain's argument checks) attached."""
    return dataclasses.replace(opt, fused=FusedStep(op, checked(step, opt.stages)))


def sgd(lr: float | Schedule = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
        decoupled: bool = False, dampening: float = 0.0) -> Transform:
    """SGD on latent weights, PyTorch's ``SGD(lr, momentum, dampening, weight_decay)``.

    coupled (A):   d = g + lam w;  m = mu m + (1 - dampening) d;  w = w - eta m
    decoupled (B): m = mu m + (1 - dampening) g;  w = (1 - eta lam) w - eta m
    (PyTorch's first buffer is ``m_1 = d_1``, undamped.)  Defaults: PyTorch's (momentum 0,
    no weight decay, coupled) with lr 0.01; ``minibnn train --optimizer sgd`` uses these too.
    """
    hyperparameter("sgd", "lr", lr, NONNEGATIVE)
    momentum = hyperparameter("sgd", "momentum", momentum, MOMENTUM)
    weight_decay = hyperparameter("sgd", "weight_decay", weight_decay, NONNEGATIVE)
    dampening = hyperparameter("sgd", "dampening", dampening, UNIT)
    if decoupled:
        # w - eta (m + lam w) = (1 - eta lam) w - eta m
        opt = chain(momentum=trace(momentum, dampening),
                    weight_decay=add_decayed_weights(weight_decay),
                    lr=scale_by_learning_rate(lr), w=apply_updates())
    else:
        opt = chain(weight_decay=add_decayed_weights(weight_decay),
                    momentum=trace(momentum, dampening),
                    lr=scale_by_learning_rate(lr), w=apply_updates())
    return _with_fused(opt, "sgd_update",
                       _sgd_step(as_schedule(lr), momentum, weight_decay, decoupled, dampening))


def _sgd_step(lr: Schedule, momentum: float, weight_decay: float, decoupled: bool,
              dampening: float) -> StepFn:
    """``sgd``'s fused step: ``kernels.sgd_update`` per parameter, in place
    on the parameter and ``m``."""

    def step(grads: Params, state: State, params: Params) -> tuple[Params, State]:
        eta = lr(step_count(state["lr"]))
        first = step_count(state["momentum"]) == 0
        for name, g in grads.items():
            m = state["momentum"]["m"][name] if momentum != 0.0 else None
            kernels.sgd_update(params[name], m, g, eta, momentum, weight_decay, dampening,
                               decoupled, first)
        return params, {**state, "momentum": _bumped(state["momentum"]),
                     "lr": _bumped(state["lr"])}

    return step


def adam(lr: float | Schedule = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
         weight_decay: float = 0.0, decoupled: bool = False) -> Transform:
    """Adam (PyTorch's), with coupled L2 decay (``Adam``) or decoupled decay (``AdamW``)."""
    hyperparameter("adam", "lr", lr, NONNEGATIVE)
    b1 = hyperparameter("adam", "b1", b1, MOMENTUM)
    b2 = hyperparameter("adam", "b2", b2, MOMENTUM)
    eps = hyperparameter("adam", "eps", eps, NONNEGATIVE)
    weight_decay = hyperparameter("adam", "weight_decay", weight_decay, NONNEGATIVE)
    if decoupled:
        opt = chain(adam=scale_by_adam(b1, b2, eps),
                    weight_decay=add_decayed_weights(weight_decay),
                    lr=scale_by_learning_rate(lr), w=apply_updates())
    else:
        opt = chain(weight_decay=add_decayed_weights(weight_decay),
                    adam=scale_by_adam(b1, b2, eps),
                    lr=scale_by_learning_rate(lr), w=apply_updates())
    return _with_fused(opt, "adam_update",
                       _adam_step(as_schedule(lr), b1, b2, eps, weight_decay, decoupled))


def _adam_step(lr: Schedule, b1: float, b2: float, eps: float, weight_decay: float,
               decoupled: bool) -> StepFn:
    """``adam``'s fused step: ``kernels.adam_update`` per parameter, in place
    on the parameter, ``m`` and ``v``."""

    def step(grads: Params, state: State, params: Params) -> tuple[Params, State]:
        eta = lr(step_count(state["lr"]))
        t = step_count(state["adam"]) + 1
        moments = state["adam"]
        for name, g in grads.items():
            kernels.adam_update(params[name], moments["m"][name], moments["v"][name], g,
                                eta, t, b1, b2, eps, weight_decay, decoupled)
        return params, {**state, "adam": _bumped(moments), "lr": _bumped(state["lr"])}

    return step


def cema(alpha: float | Schedule = 1e-3, gamma: float | Schedule = 0.1,
         init_state: dict[str, Params] | None = None, tie: str = "keep") -> Transform:
    """The paper's filter optimiser (docs/theory.md section 2) on binary weights ``b``.

    m_t = (1 - gamma_t) m_{t-1} + gamma_t g_t;  v_t = (1 - alpha_t) v_{t-1} + alpha_t m_t;
    flip b where v_t * b > 0 (``tie`` where v_t == 0: see ``flip``).  ``init_state =
    {"m": ..., "v": ...}`` sets the buffers (zero by default); see ``minibnn.theory`` for the
    state that matches a latent initialisation.  Defaults: the tuned MNIST values.
    """
    hyperparameter("cema", "alpha", alpha, RATE)
    hyperparameter("cema", "gamma", gamma, RATE)
    init_state = init_state or {}
    _check_state_keys(init_state, ("m", "v"))
    opt = chain(m=ema(gamma, init_state.get("m")), v=ema(alpha, init_state.get("v")),
                b=flip(0.0, tie))
    return _with_fused(opt, "cema_update", _cema_step(as_schedule(alpha), as_schedule(gamma), tie))


def _cema_step(alpha: Schedule, gamma: Schedule, tie: str) -> StepFn:
    """``cema``'s fused step: ``kernels.cema_update`` per parameter, in place
    on the parameter, ``m`` and ``v``."""

    def step(grads: Params, state: State, params: Params) -> tuple[Params, State]:
        a, r = alpha(step_count(state["v"])), gamma(step_count(state["m"]))
        for name, g in grads.items():
            kernels.cema_update(params[name], state["m"]["s"][name],
                                state["v"]["s"][name], g, a, r, 0.0, tie)
        return params, {**state, "m": _bumped(state["m"]), "v": _bumped(state["v"])}

    return step


def bop(threshold: float = 1e-8, gamma: float | Schedule = 1e-4) -> Transform:
    """Bop (Helwegen et al. 2019): ``m = (1-gamma) m + gamma g``; flip where ``m b > tau``.

    Ties ``m b == tau`` set ``b = +1``, larq's rule (``flip(tie="positive")``).  Defaults:
    larq's ``Bop(threshold=1e-8, gamma=1e-4)`` (``larq/optimizers.py``).
    """
    threshold = hyperparameter("bop", "threshold", threshold, NONNEGATIVE)
    hyperparameter("bop", "gamma", gamma, RATE)
    opt = chain(m=ema(gamma), b=flip(threshold, tie="positive"))
    return _with_fused(opt, "bop_update", _bop_step(threshold, as_schedule(gamma)))


def _bop_step(threshold: float, gamma: Schedule) -> StepFn:
    """``bop``'s fused step: ``kernels.bop_update`` per parameter, in place
    on the parameter and ``m``."""

    def step(grads: Params, state: State, params: Params) -> tuple[Params, State]:
        r = gamma(step_count(state["m"]))
        for name, g in grads.items():
            kernels.bop_update(params[name], state["m"]["s"][name], g, r, threshold,
                               "positive")
        return params, {**state, "m": _bumped(state["m"])}

    return step


def bop2nd(threshold: float = 1e-6, gamma: float = 1e-6, sigma: float = 1e-2,
           eps: float = 1e-10, bias_correction: bool = False) -> Transform:
    """Bop2ndOrder (Suarez-Ramirez et al. 2021, "Bop and Beyond"): Bop on ``m / (sqrt(s) + eps)``.

    ``m``, ``s``: EMAs of g and g^2 (rates gamma, sigma); flip where ``y b > tau``, ``b = +1``
    on the tie ``y b == tau`` (larq's rule, as ``bop``).  ``bias_correction=False`` is the
    authors' ``Bop2ndOrder`` (raw moments), ``True`` their ``Bop2ndOrder_unbiased`` (Adam's
    corrections).  Defaults: the authors' ``Bop2ndOrder(threshold=1e-6, gamma=1e-6,
    sigma=1e-2)`` with eps 1e-10 (github.com/CuauSuarez/Bop2ndOrder,
    ``bnn_optimization/optimizers.py``).  No fused kernel: ``step`` runs the chain.
    """
    threshold = hyperparameter("bop2nd", "threshold", threshold, NONNEGATIVE)
    gamma = hyperparameter("bop2nd", "gamma", gamma, RATE)
    sigma = hyperparameter("bop2nd", "sigma", sigma, RATE)
    eps = hyperparameter("bop2nd", "eps", eps, NONNEGATIVE)
    return chain(rms=normalize_by_rms(gamma, sigma, eps, bias_correction),
                 b=flip(threshold, tie="positive"))


def second_order(a1: float, a2: float, c: float, init_state: dict[str, Params] | None = None
                 ) -> Transform:
    """General second-order filter optimiser: ``v_t = a1 v_{t-1} + a2 v_{t-2} + c g_t``, flip on v.

    Reproduces coupled SGD with momentum (A) for every ``(eta, mu, lam)`` (docs/theory.md P4), with
    ``a1 = 1 + mu - eta lam``, ``a2 = -mu``, ``c = eta lam``.  ``init_state = {"v1", "v2"}``.
    No fused kernel: ``step`` runs the chain.
    """
    a1 = hyperparameter("second_order", "a1", a1, FINITE)
    a2 = hyperparameter("second_order", "a2", a2, FINITE)
    c = hyperparameter("second_order", "c", c, POSITIVE)
    init_state = init_state or {}
    _check_state_keys(init_state, ("v1", "v2"))
    return chain(v=iir2(a1, a2, c, init_state.get("v1"), init_state.get("v2")), b=flip(0.0))


#: trainer optimiser name -> (constructor, keywords that name fixes)
NAMED: dict[str, tuple[Callable[..., Transform], dict[str, Any]]] = {
    "cema": (cema, {}), "bop": (bop, {}), "bop2nd": (bop2nd, {}),
    "bop2nd_corrected": (bop2nd, {"bias_correction": True}), "sgd": (sgd, {}), "adam": (adam, {}),
}


def defaults(name: str) -> dict[str, Any]:
    """The keyword defaults of optimiser ``name`` (read from its constructor's signature)."""
    if name not in NAMED:
        raise MinibnnError(f"unknown optimizer {name!r}; expected one of {', '.join(NAMED)}")
    fn, fixed = NAMED[name]
    found = {p.name: p.default for p in inspect.signature(fn).parameters.values()
             if p.default is not inspect.Parameter.empty}
    return {**found, **fixed}


def _check_state_keys(init_state: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = set(init_state) - set(allowed)
    if unknown:
        raise MinibnnError(f"unknown init_state keys {sorted(unknown)}; expected {list(allowed)}")
