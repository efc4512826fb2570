"""The public optimisers, each a chain of filters from ``filters.py``.

Latent-weight optimisers end in ``apply_updates`` (they move real weights ``w``); filter
optimisers end in ``flip`` (they act on ``b in {-1, +1}`` directly).  Reading the chains side
by side shows THEORY.md's relations:

    sgd, decoupled (B): trace(mu) -> add_decayed_weights(lam) -> scale(-eta) -> apply
    sgd, coupled   (A): add_decayed_weights(lam) -> trace(mu) -> scale(-eta) -> apply
    cema:               ema(gamma) -> ema(alpha)              -> flip(0)
    bop:                ema(gamma)                            -> flip(tau)   (= cema with gamma=1 at tau=0)
    bop2nd:             normalize_by_rms(gamma, sigma)        -> flip(tau)
    second_order:       iir2(a1, a2, c)                       -> flip(0)
"""
from __future__ import annotations

from typing import Any

from minibnn.errors import MinibnnError
from minibnn.optim.base import Params, Transform, chain
from minibnn.optim.filters import (add_decayed_weights, apply_updates, ema, flip, iir2,
                                   normalize_by_rms, scale_by_adam, scale_by_learning_rate,
                                   trace)
from minibnn.optim.schedules import Schedule


def _initial_value(value: float | Schedule) -> float:
    return float(value(0)) if callable(value) else float(value)


def _check_rate(name: str, value: float | Schedule) -> None:
    """An EMA rate must lie in (0, 1]; a schedule is checked at its first value."""
    v = _initial_value(value)
    if not 0.0 < v <= 1.0:
        raise MinibnnError(f"{name} must be in (0, 1], got {v}")


def _check_nonnegative(name: str, value: float | Schedule) -> None:
    v = _initial_value(value)
    if v < 0.0:
        raise MinibnnError(f"{name} must be >= 0, got {v}")


def _check_momentum(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise MinibnnError(f"{name} must be in [0, 1), got {value}")


def sgd(lr: float | Schedule, momentum: float = 0.0, weight_decay: float = 0.0,
        decoupled: bool = False, dampening: float = 0.0) -> Transform:
    """SGD on latent weights, PyTorch's ``SGD(lr, momentum, dampening, weight_decay)``.

    coupled (A):   d = g + lam w;  m = mu m + (1 - dampening) d;  w = w - eta m
    decoupled (B): m = mu m + (1 - dampening) g;  w = (1 - eta lam) w - eta m
    """
    _check_nonnegative("lr", lr)
    _check_momentum("momentum", momentum)
    _check_nonnegative("weight_decay", weight_decay)
    if not 0.0 <= dampening <= 1.0:
        raise MinibnnError(f"dampening must be in [0, 1], got {dampening}")
    if decoupled:
        # w - eta (m + lam w) = (1 - eta lam) w - eta m
        return chain(trace(momentum, dampening), add_decayed_weights(weight_decay),
                     scale_by_learning_rate(lr), apply_updates())
    return chain(add_decayed_weights(weight_decay), trace(momentum, dampening),
                 scale_by_learning_rate(lr), apply_updates())


def adam(lr: float | Schedule = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
         weight_decay: float = 0.0, decoupled: bool = False) -> Transform:
    """Adam (PyTorch's), with coupled L2 decay (``Adam``) or decoupled decay (``AdamW``)."""
    _check_nonnegative("lr", lr)
    _check_momentum("b1", b1)
    _check_momentum("b2", b2)
    _check_nonnegative("weight_decay", weight_decay)
    if decoupled:
        return chain(scale_by_adam(b1, b2, eps), add_decayed_weights(weight_decay),
                     scale_by_learning_rate(lr), apply_updates())
    return chain(add_decayed_weights(weight_decay), scale_by_adam(b1, b2, eps),
                 scale_by_learning_rate(lr), apply_updates())


def cema(alpha: float | Schedule, gamma: float, init_state: dict[str, Params] | None = None,
         tie: str = "keep") -> Transform:
    """The paper's filter optimiser (THEORY.md section 2) on binary weights ``b``.

    m_t = (1 - gamma) m_{t-1} + gamma g_t;  v_t = (1 - alpha_t) v_{t-1} + alpha_t m_t;
    flip b where v_t * b > 0.  ``init_state = {"m": ..., "v": ...}`` sets the buffers (zero
    by default); see ``minibnn.theory`` for the state that matches a latent initialisation.
    """
    _check_rate("alpha", alpha)
    _check_rate("gamma", gamma)
    init_state = init_state or {}
    _check_state_keys(init_state, ("m", "v"))
    return chain(ema(gamma, init_state.get("m")), ema(alpha, init_state.get("v")),
                 flip(0.0, tie))


def bop(threshold: float, gamma: float) -> Transform:
    """Bop (Helwegen et al. 2019): ``m = (1-gamma) m + gamma g``; flip where ``m b > tau``."""
    _check_nonnegative("threshold", threshold)
    _check_rate("gamma", gamma)
    return chain(ema(gamma), flip(threshold))


def bop2nd(threshold: float, gamma: float, sigma: float, eps: float = 1e-10) -> Transform:
    """Bop2ndOrder (Suarez-Ramirez et al. 2021): Bop on ``m_hat / (sqrt(s_hat) + eps)``."""
    _check_nonnegative("threshold", threshold)
    _check_rate("gamma", gamma)
    _check_rate("sigma", sigma)
    return chain(normalize_by_rms(gamma, sigma, eps), flip(threshold))


def second_order(a1: float, a2: float, c: float, init_state: dict[str, Params] | None = None
                 ) -> Transform:
    """General second-order filter optimiser: ``v_t = a1 v_{t-1} + a2 v_{t-2} + c g_t``, flip on v.

    Reproduces coupled SGD with momentum (A) for every ``(eta, mu, lam)`` (THEORY.md P4), with
    ``a1 = 1 + mu - eta lam``, ``a2 = -mu``, ``c = eta lam``.  ``init_state = {"v1", "v2"}``.
    """
    if c <= 0:
        raise MinibnnError(f"c must be > 0, got {c}")
    init_state = init_state or {}
    _check_state_keys(init_state, ("v1", "v2"))
    return chain(iir2(a1, a2, c, init_state.get("v1"), init_state.get("v2")), flip(0.0))


def _check_state_keys(init_state: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = set(init_state) - set(allowed)
    if unknown:
        raise MinibnnError(f"unknown init_state keys {sorted(unknown)}; expected {list(allowed)}")
