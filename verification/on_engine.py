"""Properties P1-P7 on minibnn's own optimisers, float64, in every implementation.

Each check takes a float64 case of its property, runs the reference recursions of
``reference.py`` on Python floats (IEEE binary64) and the real ``optim.cema``, ``optim.sgd``
and ``optim.second_order`` on float64 arrays, as the chain and as each fused step
(``engine.implementations``), and compares:

  filter side (cema, second_order): bitwise, b and v, with the reference filter run: both
      evaluate ``(1 - r) s + r x`` (resp. ``a1 v1 + a2 v2 + c g``) in the same order;
  latent side (sgd): coupled (A) bitwise with the reference (both ``w - eta m``);
      decoupled (B) on signs outside the float margin (the engine computes
      ``w + (-eta)(m + lam w)``, the reference ``(1 - eta lam) w - eta m``); PyTorch's SGD
      (the "torch" entry) on signs outside the float margin, (A) too: it fuses
      ``a + alpha b`` into one rounding where minibnn and the reference round twice;
  the property itself, on the engine: the latent optimiser's signs are the filter
      optimiser's binary weights wherever ``w`` is outside the margin.

The optimisers run as ``engine.Recipe``s, so their PyTorch twins (``minibnn.torch``) are
checked against the same reference run too, where PyTorch is installed: the filter
optimisers' bitwise, PyTorch's SGD on signs (above); and the property itself on each of them.

Cases come from the property's own strategies (Fractions converted to the nearest floats) or,
for P1-P3, from its float64 strategies.  Each ``check_*`` returns True when the engine ran the
case and False when the case lies outside what the engine can run (a float map that rounds a
rate just outside (0, 1], no exact filter for the rates): the property counts the two apart
(``Coverage.count``) and fails when its engine stage ran no case at all.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any, Callable, Sequence

import numpy as np

from minibnn import theory
from verification import reference as ref
from verification.core import Mismatch, describe
from verification.engine import (TORCH, Coverage, Recipe, ScalarRun, latent_matches_binary,
                                 magnitude_bound, same_bits, same_latent_signs, scalar_run)


def as_float(x: Any) -> Any:
    """Fractions (and lists of them) to the nearest floats; other values unchanged."""
    if isinstance(x, Fraction):
        return float(x)
    if isinstance(x, (list, tuple)):
        return [as_float(v) for v in x]
    return x


def float_case(c: dict[str, Any]) -> dict[str, Any]:
    return {k: as_float(v) for k, v in c.items()}


def _rate(x: float | Sequence[float]) -> Any:
    """A per-step list becomes a schedule (``schedule(count) = x[count]``)."""
    if isinstance(x, (list, tuple)):
        values = list(x)
        return lambda count: values[count]
    return x


def _one(x: float) -> dict[str, np.ndarray]:
    return {"w": np.array([float(x)])}


def _cema_v(state: Any) -> Any:
    return state["v"]["s"]["w"]


def _second_order_v(state: Any) -> Any:
    return state["v"]["v1"]["w"]


def _valid_rates(*rates: Any) -> bool:
    """CEMA rates must lie in (0, 1] (a float map can round just outside)."""
    values = [v for r in rates for v in (r if isinstance(r, (list, tuple)) else [r])]
    return all(0.0 < v <= 1.0 for v in values)


def engine_cema(cov: Coverage, text: str, grads: list[float], alpha: Any, gamma: float,
                m0: float, v0: float, b0: int) -> ScalarRun:
    """optim.cema in every implementation (and its PyTorch twin), each bitwise equal to
    ``ref.cema``; the chain run."""
    want = ref.cema(grads, alpha, gamma, m0, v0, b0)
    recipe = Recipe("cema", {"alpha": _rate(alpha), "gamma": gamma},
                    init_state={"m": _one(m0), "v": _one(v0)})
    runs = []
    for impl in cov.implementations(recipe):
        run = scalar_run(recipe, impl, want.b[0], grads, _cema_v)
        same_bits(want, run, f"{impl} cema, {text}")
        cov.add(impl)
        runs.append(run)
    return runs[0]


def sgd_recipe(lr: Any, mu: float, lam: float, decoupled: bool) -> Recipe:
    """optim.sgd (and its PyTorch twin, PyTorch's SGD) with a constant or per-step ``lr``."""
    return Recipe("sgd", dict(lr=_rate(lr), momentum=mu, weight_decay=lam, decoupled=decoupled))


def engine_sgd(cov: Coverage, text: str, grads: list[float], lr: Any, mu: float, lam: float,
               decoupled: bool, w0: float, b0: int, scale: list[float]) -> list[ScalarRun]:
    """optim.sgd in every implementation against ``ref.latent_sgd``: (A) bitwise, (B) signs;
    PyTorch's SGD (``TORCH``) signs, both (it rounds ``a + alpha b`` once)."""
    want = ref.latent_sgd(grads, lr, mu, lam, decoupled, w0, b0)
    recipe = sgd_recipe(lr, mu, lam, decoupled)
    runs = []
    for impl in cov.implementations(recipe):
        run = scalar_run(recipe, impl, w0, grads)
        what = f"{impl} sgd({'B' if decoupled else 'A'}), {text}"
        if decoupled or impl == TORCH:
            same_latent_signs(want.state, run.params, scale, what)
        else:
            same_bits(want, run, what, binary=False, state=False)
        cov.add(impl)
        runs.append(run)
    return runs


def _latent_vs_filter(latent: list[ScalarRun], filt: ScalarRun, scale: list[float], text: str,
                      skip: Callable[[int], bool] = lambda t: False) -> None:
    for run in latent:
        latent_matches_binary(run.params, filt.params, scale, text, skip)


# ------------------------------------------------------------------------------- P1, P2
def check_first_order(c: dict[str, Any], cov: Coverage) -> bool:
    """(B) (and (A) when mu = 0) vs CEMA(alpha_t = eta_t lam, gamma = 1 - mu), v0 = -k w0."""
    grads, lam, lr, mu, gamma = c["grads"], c["lam"], c["lr"], c["mu"], c["gamma"]
    text = describe(lam=lam, mu=mu, w0=c["w0"], b0=c["b0"], grads=grads)
    alphas = [eta * lam for eta in lr]
    filt = engine_cema(cov, text, grads, alphas, gamma, 0.0, -lam * gamma * c["w0"], c["b0"])
    for decoupled in ((True, False) if mu == 0 else (True,)):
        scale = magnitude_bound(grads, lr, mu, lam, decoupled, c["w0"])
        latent = engine_sgd(cov, text, grads, lr, mu, lam, decoupled, c["w0"], c["b0"], scale)
        _latent_vs_filter(latent, filt, scale, f"engine sgd vs engine cema, {text}")
    return True


# ----------------------------------------------------------------------------------- P3
def check_p3(c: dict[str, Any], map_fn: Callable[..., Any], cov: Coverage) -> bool:
    """(A), constant lr: optim.sgd (bitwise = reference) vs optim.cema under ``map_fn``."""
    rates = map_fn(c["lr"], c["mu"], c["lam"])
    if rates is None or not _valid_rates(*rates):
        return False                # rounding pushed a double root out of the real region
    alpha, gamma = rates
    text = describe(lr=c["lr"], mu=c["mu"], lam=c["lam"], w0=c["w0"], grads=c["grads"])
    v0 = -c["lam"] * c["w0"]
    filt = engine_cema(cov, text, c["grads"], alpha, gamma, v0, v0, c["b0"])
    scale = magnitude_bound(c["grads"], c["lr"], c["mu"], c["lam"], False, c["w0"])
    latent = engine_sgd(cov, text, c["grads"], c["lr"], c["mu"], c["lam"], False, c["w0"],
                        c["b0"], scale)
    _latent_vs_filter(latent, filt, scale, f"engine sgd(A) vs engine cema {alpha!r}, "
                                           f"{gamma!r}, {text}")
    return True


# ----------------------------------------------------------------------------------- P4
def check_p4(c: dict[str, Any], cov: Coverage) -> bool:
    """optim.second_order with theory's (a1, a2, c) and state vs the reference and optim.sgd."""
    eq = theory.latent_to_filter(c["lr"], c["mu"], c["lam"], c["decoupled"])
    v0, v_prev = theory.matched_second_order_state(c["w0"], c["lr"], c["mu"], c["lam"],
                                                   c["decoupled"])
    text = describe(lr=c["lr"], mu=c["mu"], lam=c["lam"], decoupled=c["decoupled"],
                    w0=c["w0"], grads=c["grads"])
    want = ref.second_order(c["grads"], eq.a1, eq.a2, eq.c, v0, v_prev,
                            ref.initial_sign(c["w0"], c["b0"]))
    recipe = Recipe("second_order", {"a1": eq.a1, "a2": eq.a2, "c": eq.c},
                    init_state={"v1": _one(v0), "v2": _one(v_prev)})
    cov.no_kernel("second_order")
    runs = {}
    for impl in cov.implementations(recipe):
        runs[impl] = scalar_run(recipe, impl, want.b[0], c["grads"], _second_order_v)
        same_bits(want, runs[impl], f"{impl} second_order, {text}")
        cov.add(impl)
    filt = runs["chain"]
    scale = magnitude_bound(c["grads"], c["lr"], c["mu"], c["lam"], c["decoupled"], c["w0"])
    latent = engine_sgd(cov, text, c["grads"], c["lr"], c["mu"], c["lam"], c["decoupled"],
                        c["w0"], c["b0"], scale)
    _latent_vs_filter(latent, filt, scale, f"engine sgd vs engine second_order, {text}")
    return True


# ----------------------------------------------------------------------------------- P5
def check_p5(c: dict[str, Any], cov: Coverage) -> bool:
    """optim.sgd with (c eta, lam / c, c w0), c a power of two, gives w' == c w bitwise; so
    does PyTorch's SGD (each of its operations, fused or not, commutes with the scaling)."""
    s, lam = c["c"], c["lam"]
    text = describe(c=s, lr=c["lr"], mu=c["mu"], lam=lam, decoupled=c["decoupled"],
                    w0=c["w0"], grads=c["grads"])
    base_opt = sgd_recipe(c["lr"], c["mu"], lam, c["decoupled"])
    scaled_opt = sgd_recipe([s * eta for eta in c["lr"]], c["mu"], lam / s, c["decoupled"])
    for impl in cov.implementations(base_opt):
        base = scalar_run(base_opt, impl, c["w0"], c["grads"])
        scaled = scalar_run(scaled_opt, impl, s * c["w0"], c["grads"])
        for t, (w, w2) in enumerate(zip(base.params, scaled.params)):
            if w2 != s * w:
                raise Mismatch(f"{impl} sgd, {text}: step {t}: w' = {w2!r}, c w = {s * w!r}")
        cov.add(impl)
    return True


# ----------------------------------------------------------------------------------- P6
TINY = 2.0 ** -300


def check_p6(c: dict[str, Any], cov: Coverage, ties: list[int]) -> bool:
    """Zero-buffer optim.cema (bitwise = reference) vs optim.sgd from a tiny init, ``2^-300 w0``.

    Where the zero-buffer CEMA sits on an exact tie (v = 0) it keeps b while the latent sign
    comes from the tiny init: those steps are excluded (and counted), as in the exact check.
    """
    grads, lr, mu, lam, dec = c["grads"], c["lr"], c["mu"], c["lam"], c["decoupled"]
    w0 = c["w0"] if c["w0"] != 0 else 1.0
    b0 = 1 if w0 > 0 else -1
    if dec:
        alpha, gamma = [eta * lam for eta in lr], 1.0 - mu
    else:
        eq = theory.latent_to_filter(lr[0], mu, lam, False)
        if not eq.exact:
            return False            # rounding pushed the poles out of the real region
        alpha, gamma = eq.alpha, eq.gamma
    if not _valid_rates(alpha, gamma):
        return False
    text = describe(lr=lr, mu=mu, lam=lam, decoupled=dec, w0=TINY * w0, grads=grads)
    filt = engine_cema(cov, text, grads, alpha, gamma, 0.0, 0.0, b0)
    scale = magnitude_bound(grads, lr, mu, lam, dec, 0.0)
    latent = engine_sgd(cov, text, grads, lr, mu, lam, dec, TINY * w0, b0, scale)
    tie = [v == 0 for v in filt.probe]
    ties[0] += sum(tie)
    _latent_vs_filter(latent, filt, scale, f"engine sgd (tiny init) vs zero-buffer cema, {text}",
                      skip=lambda t: tie[t])
    return True


# ----------------------------------------------------------------------------------- P7
def check_p7(c: dict[str, Any], cov: Coverage) -> bool:
    """Decaying alpha in optim.cema vs decaying lr: (B) through optim.sgd; (A) with
    mu_t = (1-gamma)(1-alpha_{t-1}) against the reference latent run (optim.sgd's momentum is
    a constant)."""
    grads, lam, gamma = c["grads"], c["lam"], c["gamma"]
    alpha = [c["alpha0"] * f for f in c["factors"]]
    text = describe(alpha0=c["alpha0"], gamma=gamma, lam=lam, factors=c["factors"], w0=c["w0"],
                    grads=grads)
    if not _valid_rates(alpha, gamma):
        return False
    if c["decoupled"]:
        mu, lr = 1.0 - gamma, [a / lam for a in alpha]
        filt = engine_cema(cov, "(B) " + text, grads, alpha, gamma, 0.0, -lam * gamma * c["w0"],
                           c["b0"])
        scale = magnitude_bound(grads, lr, mu, lam, True, c["w0"])
        latent = engine_sgd(cov, "(B) " + text, grads, lr, mu, lam, True, c["w0"], c["b0"],
                            scale)
        _latent_vs_filter(latent, filt, scale, f"engine sgd(B) vs engine cema, {text}")
        return True
    mu_t = [(1 - gamma) * (1 - alpha[max(t - 1, 0)]) for t in range(len(grads))]
    lr = [a * gamma / lam for a in alpha]
    v0 = -lam * c["w0"]
    filt = engine_cema(cov, "(A) " + text, grads, alpha, gamma, v0, v0, c["b0"])
    latent = ref.latent_sgd(grads, lr, mu_t, lam, False, c["w0"], c["b0"])
    scale = magnitude_bound(grads, lr, mu_t, lam, False, c["w0"])
    latent_matches_binary(latent.state, filt.params, scale,
                          f"reference sgd(A, mu_t) vs engine cema, {text}")
    return True
