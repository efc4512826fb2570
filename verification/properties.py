"""Properties P1-P8 of docs/theory.md, one function each, returning a ``PropertyResult``.

P1-P7 are checked on the reference recursions of ``reference.py``: exactly over Fractions
(``v_t == -k w_t`` with ``==``, and identical binary weights), and where stated also in
float64, bitwise (powers of two, same expression order) or on signs outside a stated margin.
Each then runs on minibnn's own optimisers (``on_engine.py``: the chains and the fused steps
on every kernel backend present, float64), and on their PyTorch twins (``minibnn.torch``:
the filter optimisers', and PyTorch's own SGD for latent sgd) where PyTorch is installed.  P8
runs the real ``minibnn.optim`` optimisers (and the twins).
"""
from __future__ import annotations

from fractions import Fraction as Q
from typing import Any, Callable

import numpy as np
from hypothesis import strategies as st

from minibnn import theory
from verification import engine, on_engine
from verification import reference as ref
from verification import strategies as S
from verification.engine import Coverage, Recipe, latent_matches_binary, magnitude_bound
from verification.core import (FLOAT_MARGIN, MinTracker, Mismatch, PropertyResult, Timer,
                               describe, fmt, run_cases)

MapFn = Callable[[Any, Any, Any], "tuple[Any, Any] | None"]


def compare_exact(latent: ref.Run, filt: ref.Run, k: Any, case: str, first: int = 0) -> None:
    """Raise ``Mismatch`` unless the binary weights agree at every step and ``v_t == -k w_t``
    from step ``first`` on."""
    for t, (w, v, bl, bf) in enumerate(zip(latent.state, filt.state, latent.b, filt.b)):
        if t >= first and v != -k * w:
            raise Mismatch(f"{case}: step {t}: v = {fmt(v)} but -k*w = {fmt(-k * w)} "
                           f"(k = {fmt(k)})")
        if bl != bf:
            raise Mismatch(f"{case}: step {t}: latent b = {bl:+d}, filter b = {bf:+d}")


def compare_float_signs(latent: ref.Run, filt: ref.Run, k: float, scale: list[float],
                        case: str, errors: list[float]) -> None:
    """Signs of ``w_t`` and ``-v_t`` agree wherever ``|k w_t| > FLOAT_MARGIN * scale_t``.

    Rounding errors are relative to the largest magnitude the run has carried so far, so the
    reference at step t is ``k * max_{s<=t} max(scale_s, |w_s|)`` (``scale`` from
    ``magnitude_bound``); the largest relative error ``|v + k w| / reference`` is appended to
    ``errors``.
    """
    carried = 0.0
    for t, (w, v) in enumerate(zip(latent.state, filt.state)):
        carried = max(carried, scale[t], abs(w))
        ref_mag = k * carried
        if ref_mag == 0:
            continue
        errors.append(abs(v + k * w) / ref_mag)
        if abs(k * w) > FLOAT_MARGIN * ref_mag and (w > 0) != (v < 0):
            raise Mismatch(f"{case}: step {t}: w = {w:.17g} but v = {v:.17g} "
                           f"(margin {FLOAT_MARGIN:g} of {ref_mag:.3g})")


Stage = tuple[Any, Callable[[Any], None], int]


def run_stages(*stages: Stage) -> tuple[int, str | None]:
    """Run ``(strategy, check, examples)`` stages in order, stopping at the first
    counterexample; return (cases tried, counterexample)."""
    total = 0
    for strategy, check, examples in stages:
        n, cex = run_cases(strategy, check, max(1, examples))
        total += n
        if cex:
            return total, cex
    return total, None


def engine_examples(examples: int) -> int:
    """Cases for a property's engine stage (each runs several implementations)."""
    return max(1, examples // 3)


def engine_stage(strategy: Any, check: Callable[[Any], bool], cov: Coverage, examples: int
                 ) -> Stage:
    """A property's engine stage: ``check(case)`` says whether the engine ran the case, and
    ``cov`` counts the cases it ran apart from those outside its domain."""
    return strategy, lambda c: cov.count(check(c)), engine_examples(examples)


def require_engine(cov: Coverage, cex: str | None) -> str | None:
    """The counterexample, or a failure when the engine stage ran no case: a property cannot
    hold on the engine without the engine exercised."""
    if cex is None and cov.cases == 0:
        return (f"the engine stage ran no case: all {cov.not_applicable} drawn cases were "
                "outside what the engine can run")
    return cex


def _case_text(c: dict[str, Any], *keys: str) -> str:
    return describe(**{k: c[k] for k in keys})


# --------------------------------------------------------------------------------------- P1
P1 = "no momentum: v = -lam w is CEMA(alpha_t = eta_t lam, gamma = 1), any lr schedule"


def _check_first_order(c: dict[str, Any], margin: MinTracker) -> None:
    """P1/P2 on one exact case: theory's map and initial state, then the two recursions."""
    grads, lam, lr, mu = c["grads"], c["lam"], c["lr"], c["mu"]
    eq = theory.latent_to_filter(lr[0], mu, lam, c["decoupled"])
    text = _case_text(c, "lr", "mu", "lam", "decoupled", "w0", "b0", "grads")
    if not eq.exact or eq.alpha != lr[0] * lam or eq.gamma != 1 - mu:
        raise Mismatch(f"{text}: theory gives alpha={fmt(eq.alpha)}, gamma={fmt(eq.gamma)}")
    m0, v0 = theory.matched_initial_state(c["w0"], lr[0], mu, lam, c["decoupled"])
    latent = ref.latent_sgd(grads, lr, mu, lam, c["decoupled"], c["w0"], c["b0"])
    filt = ref.cema(grads, [eta * lam for eta in lr], eq.gamma, m0, v0, c["b0"])
    compare_exact(latent, filt, eq.v_scale, text)
    margin.add(filt.state)


@st.composite
def _bitwise_case(draw: Any, momentum: bool) -> dict[str, Any]:
    """(B) in float64 with lam = 2^-i and 1 - mu = 2^-j: every scaling by k is exact."""
    grads = draw(S.float_streams(max_size=48))
    lam = draw(S.powers_of_two(-20, 4))
    gamma = draw(S.powers_of_two(-10, 0)) if momentum else 1.0
    alpha0 = draw(st.floats(1e-6, 1.0))
    factors = draw(st.lists(st.floats(1e-3, 1.0), min_size=len(grads), max_size=len(grads)))
    # eta_t = alpha_t / lam is exact, so eta_t * lam == alpha_t on both sides.
    return dict(grads=grads, lam=lam, mu=1.0 - gamma, gamma=gamma,
                lr=[alpha0 * f / lam for f in factors],
                w0=draw(S.float_values()), b0=draw(S.signs()))


def _check_bitwise(c: dict[str, Any]) -> None:
    grads, lam, lr = c["grads"], c["lam"], c["lr"]
    k = lam * c["gamma"]
    latent = ref.latent_sgd(grads, lr, c["mu"], lam, True, c["w0"], c["b0"])
    filt = ref.cema(grads, [eta * lam for eta in lr], c["gamma"], 0.0, -k * c["w0"], c["b0"])
    compare_exact(latent, filt, k, "float64 " + _case_text(c, "lam", "mu", "w0", "b0", "grads"))


def _first_order_property(pid: str, statement: str, momentum: bool, examples: int
                          ) -> PropertyResult:
    margin, cov = MinTracker(), Coverage()
    with Timer() as timer:
        cases = S.latent_case(momentum=momentum)
        if momentum:
            cases = cases.map(lambda c: {**c, "decoupled": True})
        n, cex = run_stages(
            (cases, lambda c: _check_first_order(c, margin), examples),
            (_bitwise_case(momentum), _check_bitwise, examples // 2),
            engine_stage(_bitwise_case(momentum), lambda c: on_engine.check_first_order(c, cov),
                         cov, examples))
    cex = require_engine(cov, cex)
    return PropertyResult(pid, statement, n, cex is None, cex,
                          "exact (Fraction) + float64 bitwise; engine: cema bitwise, "
                          f"sgd signs (margin {FLOAT_MARGIN:g})",
                          f"{margin.text()}; {cov.cases_text()}", timer.seconds,
                          implementations=cov.text(), skipped=cov.skipped())


def check_p1(examples: int = 150) -> PropertyResult:
    """P1: without momentum, (A) = (B) = CEMA(alpha_t = eta_t lam, gamma = 1), v0 = -lam w0."""
    return _first_order_property("P1", P1, False, examples)


# --------------------------------------------------------------------------------------- P2
P2 = ("decoupled (B): CEMA(gamma = 1-mu, alpha_t = eta_t lam), v0 = -lam(1-mu) w0, m0 = 0, "
      "any lr schedule")


def check_p2(examples: int = 150) -> PropertyResult:
    """P2: SGDW with momentum is CEMA; ``v = -lam (1-mu) w`` exactly."""
    return _first_order_property("P2", P2, True, examples)


# --------------------------------------------------------------------------------------- P3
P3 = ("coupled (A), constant lr, real poles: CEMA with 1-alpha, 1-gamma the roots of "
      "p^2-(1+mu-eta lam)p+mu, m0 = v0 = -lam w0")


def theory_p3_map(lr: Any, momentum: Any, weight_decay: Any) -> tuple[Any, Any] | None:
    """The map under test by default: ``minibnn.theory.latent_to_filter`` for (A)."""
    eq = theory.latent_to_filter(lr, momentum, weight_decay, decoupled=False)
    return (eq.alpha, eq.gamma) if eq.exact else None


def naive_p3_map(lr: Any, momentum: Any, weight_decay: Any) -> tuple[Any, Any]:
    """The textbook map ``alpha = eta lam``, ``gamma = 1 - mu``: wrong for (A) (planted error)."""
    return lr * weight_decay, 1 - momentum


def _check_p3_exact(c: dict[str, Any], map_fn: MapFn, margin: MinTracker) -> None:
    text = _case_text(c, "lr", "mu", "lam", "w0", "b0", "grads")
    rates = map_fn(c["lr"], c["mu"], c["lam"])
    if rates is None:
        raise Mismatch(f"{text}: the map gives no (alpha, gamma) for real poles {fmt(c['poles'])}")
    alpha, gamma = rates
    v0 = -c["lam"] * c["w0"]
    latent = ref.latent_sgd(c["grads"], c["lr"], c["mu"], c["lam"], False, c["w0"], c["b0"])
    filt = ref.cema(c["grads"], alpha, gamma, v0, v0, c["b0"])
    compare_exact(latent, filt, c["lam"], f"{text} -> alpha={fmt(alpha)}, gamma={fmt(gamma)}")
    margin.add(filt.state)


@st.composite
def _p3_float_case(draw: Any) -> dict[str, Any]:
    p1, p2 = draw(st.floats(0.0, 0.999)), draw(st.floats(0.0, 0.999))
    lam = draw(st.floats(1e-4, 10.0))
    return dict(grads=draw(S.float_streams(max_size=48)), lam=lam, mu=p1 * p2,
                lr=(1 - p1) * (1 - p2) / lam, w0=draw(S.float_values()), b0=draw(S.signs()))


def _check_p3_float(c: dict[str, Any], map_fn: MapFn, errors: list[float]) -> None:
    text = "float64 " + _case_text(c, "lr", "mu", "lam", "w0", "grads")
    rates = map_fn(c["lr"], c["mu"], c["lam"])
    if rates is None:
        # Rounding can push a double root just into the complex region: not a failure.
        return
    alpha, gamma = rates
    v0 = -c["lam"] * c["w0"]
    latent = ref.latent_sgd(c["grads"], c["lr"], c["mu"], c["lam"], False, c["w0"], c["b0"])
    filt = ref.cema(c["grads"], alpha, gamma, v0, v0, c["b0"])
    scale = magnitude_bound(c["grads"], c["lr"], c["mu"], c["lam"], False, c["w0"])
    compare_float_signs(latent, filt, c["lam"], scale, text, errors)


def check_p3(examples: int = 150, map_fn: MapFn | None = None) -> PropertyResult:
    """P3, exact over rational poles and in float64 (signs outside ``FLOAT_MARGIN``).

    ``map_fn(lr, momentum, weight_decay) -> (alpha, gamma)`` is the map under test (default:
    ``minibnn.theory``); pass ``naive_p3_map`` to see the counterexample it deserves.
    """
    map_fn = map_fn or theory_p3_map
    margin, errors, cov = MinTracker(), [0.0], Coverage()
    with Timer() as timer:
        n, cex = run_stages(
            (S.p3_case(), lambda c: _check_p3_exact(c, map_fn, margin), examples),
            (_p3_float_case(), lambda c: _check_p3_float(c, map_fn, errors), examples // 2),
            engine_stage(_p3_float_case(), lambda c: on_engine.check_p3(c, map_fn, cov), cov,
                         examples))
    cex = require_engine(cov, cex)
    return PropertyResult(
        "P3", P3, n, cex is None, cex,
        f"exact (Fraction) + float64 (sign margin {FLOAT_MARGIN:g}); engine: cema, sgd(A) "
        "bitwise (torch sgd: signs)",
        f"{margin.text()}; float64 max rel. error {max(errors):.2g}; {cov.cases_text()}",
        timer.seconds,
        implementations=cov.text(), skipped=cov.skipped())


# --------------------------------------------------------------------------------------- P4
P4 = ("any (eta, mu, lam), incl. complex poles: v_t = a1 v_{t-1} + a2 v_{t-2} + c g_t "
      "reproduces (A) and (B)")


@st.composite
def _p4_case(draw: Any) -> dict[str, Any]:
    el = draw(st.one_of(st.fractions(0, 4, max_denominator=16).filter(lambda x: x > 0),
                        st.sampled_from([Q(1), Q(1, 2), Q(3), Q(1, 10 ** 6)])))
    lam = draw(S.weight_decays())
    return dict(grads=draw(S.exact_streams()), lam=lam, mu=draw(S.momenta()), lr=el / lam,
                w0=draw(S.exact_values()), b0=draw(S.signs()), decoupled=draw(st.booleans()))


@st.composite
def _p4_float_case(draw: Any) -> dict[str, Any]:
    """Float64 (A)/(B) with eta lam in (0, 2] (stable poles), incl. complex poles."""
    el = draw(st.floats(1e-3, 2.0))
    lam = draw(st.floats(1e-3, 10.0))
    return dict(grads=draw(S.float_streams(max_size=32)), lam=lam, mu=draw(st.floats(0.0, 0.99)),
                lr=el / lam, w0=draw(S.float_values()), b0=draw(S.signs()),
                decoupled=draw(st.booleans()))


def _check_p4(c: dict[str, Any], counts: dict[str, int], margin: MinTracker) -> None:
    eq = theory.latent_to_filter(c["lr"], c["mu"], c["lam"], c["decoupled"])
    counts["complex"] += isinstance(eq.poles[0], complex)
    counts["no cascade"] += not eq.exact
    v0, v_prev = theory.matched_second_order_state(c["w0"], c["lr"], c["mu"], c["lam"],
                                                   c["decoupled"])
    latent = ref.latent_sgd(c["grads"], c["lr"], c["mu"], c["lam"], c["decoupled"], c["w0"],
                            c["b0"])
    # b0 = sign(w0) is the optimiser's starting parameter; v0 may be 0 (see theory's corner).
    filt = ref.second_order(c["grads"], eq.a1, eq.a2, eq.c, v0, v_prev,
                            ref.initial_sign(c["w0"], c["b0"]))
    text = _case_text(c, "lr", "mu", "lam", "decoupled", "w0", "b0", "grads")
    compare_exact(latent, filt, eq.v_scale, f"{text} -> a1={fmt(eq.a1)}, a2={fmt(eq.a2)}",
                  first=1)
    margin.add(filt.state)


def check_p4(examples: int = 150) -> PropertyResult:
    """P4: theory's second-order filter and state reproduce latent SGD for every setting."""
    counts, margin, cov = {"complex": 0, "no cascade": 0}, MinTracker(), Coverage()
    with Timer() as timer:
        n, cex = run_stages(
            (_p4_case(), lambda c: _check_p4(c, counts, margin), examples),
            engine_stage(_p4_float_case(), lambda c: on_engine.check_p4(c, cov), cov,
                         examples))
    cex = require_engine(cov, cex)
    return PropertyResult("P4", P4, n, cex is None, cex,
                          "exact (Fraction); engine float64: second_order, sgd(A) bitwise, "
                          "sgd(B) and torch sgd signs",
                          f"{counts['complex']} complex-pole and {counts['no cascade']} "
                          f"no-cascade cases; {margin.text()}; {cov.cases_text()}",
                          timer.seconds,
                          implementations=cov.text(), skipped=cov.skipped())


# --------------------------------------------------------------------------------------- P5
P5 = "(eta, lam, w0) -> (c eta, lam/c, c w0) gives w' = c w exactly: only eta lam, w0/eta matter"


def _exact_scales() -> st.SearchStrategy[Q]:
    return st.one_of(st.sampled_from([Q(1, 1000), Q(10 ** 6), Q(2)]),
                     st.fractions(0, 16, max_denominator=16).filter(lambda x: x > 0))


@st.composite
def _p5_case(draw: Any, scales: st.SearchStrategy | None = None) -> dict[str, Any]:
    c = draw(S.latent_case())
    if draw(st.booleans()):
        c = {**c, "lam": Q(0)}                       # lam = 0: (eta, w0) -> (c eta, c w0)
    return {**c, "c": draw(scales if scales is not None else _exact_scales())}


def _check_p5(c: dict[str, Any]) -> None:
    s = c["c"]
    base = ref.latent_sgd(c["grads"], c["lr"], c["mu"], c["lam"], c["decoupled"], c["w0"], c["b0"])
    scaled = ref.latent_sgd(c["grads"], [s * eta for eta in c["lr"]], c["mu"], c["lam"] / s,
                            c["decoupled"], s * c["w0"], c["b0"])
    text = _case_text(c, "c", "lr", "mu", "lam", "decoupled", "w0", "grads")
    for t, (w, w2) in enumerate(zip(base.state, scaled.state)):
        if w2 != s * w or base.b[t] != scaled.b[t]:
            raise Mismatch(f"{text}: step {t}: w' = {fmt(w2)}, c w = {fmt(s * w)}")


def check_p5(examples: int = 150) -> PropertyResult:
    """P5: scale invariance of latent SGD, (A) and (B), with momentum and schedules."""
    cov = Coverage()
    with Timer() as timer:
        n, cex = run_stages(
            (_p5_case(), _check_p5, examples),
            engine_stage(_p5_case(S.powers_of_two(-8, 8)).map(on_engine.float_case),
                         lambda c: on_engine.check_p5(c, cov), cov, examples))
    cex = require_engine(cov, cex)
    return PropertyResult("P5", P5, n, cex is None, cex,
                          "exact (Fraction); engine float64 bitwise (c a power of two)",
                          f"w' == c w with ==; {cov.cases_text()}", timer.seconds,
                          implementations=cov.text(),
                          skipped=cov.skipped())


# --------------------------------------------------------------------------------------- P6
P6 = ("init forgotten geometrically ((B): diff_t = prod(1-eta lam) diff_0; (A): <= (1+t) p^t); "
      "zero-buffer CEMA = latent init -> 0")


@st.composite
def _p6_case(draw: Any) -> dict[str, Any]:
    if draw(st.booleans()):
        c = {**draw(S.latent_case()), "decoupled": True}
    else:
        c = draw(S.p3_case())
        c = {**c, "decoupled": False, "lr": [c["lr"]] * len(c["grads"])}
    w1 = draw(S.exact_values())
    return {**c, "w1": w1}


def _check_forgetting(c: dict[str, Any]) -> None:
    """Two inits, same gradients: the gap obeys the homogeneous recursion."""
    args = (c["grads"], c["lr"], c["mu"], c["lam"], c["decoupled"])
    a, b = ref.latent_sgd(*args, c["w0"]), ref.latent_sgd(*args, c["w1"])
    text = _case_text(c, "lr", "mu", "lam", "decoupled", "w0", "w1", "grads")
    d0 = c["w0"] - c["w1"]
    if c["decoupled"]:
        # (B): w does not enter the momentum, so the gap is only decayed: prod (1 - eta_s lam).
        factor = Q(1)
        for t, (wa, wb) in enumerate(zip(a.state, b.state)):
            if t > 0:
                factor *= 1 - c["lr"][t - 1] * c["lam"]
            if wa - wb != factor * d0:
                raise Mismatch(f"{text}: step {t}: gap {fmt(wa - wb)} != {fmt(factor * d0)}")
        return
    # (A) with poles p1, p2 in [0, 1): CEMA form of the gap (m0 = v0) gives the bound.
    p = max(c["poles"])
    for t, (wa, wb) in enumerate(zip(a.state, b.state)):
        if abs(wa - wb) > (1 + t) * p ** t * abs(d0):
            raise Mismatch(f"{text}: step {t}: gap {fmt(wa - wb)} exceeds (1+t) p^t |diff_0|")


def _check_zero_buffer_limit(c: dict[str, Any], ties: list[int]) -> None:
    """CEMA from zero buffers equals latent SGD from ``eps * w0`` for small enough ``eps``.

    Latent SGD is linear: ``w_t = w_t(0) + eps h_t`` with ``h`` the response to ``w0`` alone,
    so ``eps < min |w_t(0)| / max |h_t|`` keeps every nonzero sign of the zero-init run.  Where
    ``v_t == 0`` exactly, CEMA keeps its previous b while the latent sign comes from ``h_t``:
    those steps are excluded (and counted).
    """
    grads, lr, mu, lam, dec = c["grads"], c["lr"], c["mu"], c["lam"], c["decoupled"]
    w0 = c["w0"] if c["w0"] != 0 else Q(1)
    b0 = 1 if w0 > 0 else -1
    zero = ref.latent_sgd(grads, lr, mu, lam, dec, Q(0), b0)
    h = ref.latent_sgd([0 * g for g in grads], lr, mu, lam, dec, w0, b0)
    nonzero = [abs(w) for w in zero.state if w != 0]
    h_max = max(abs(x) for x in h.state)
    eps = min(nonzero) / (2 * h_max) if nonzero else Q(1)
    latent = ref.latent_sgd(grads, lr, mu, lam, dec, eps * w0, b0)
    if dec:
        alpha, gamma = [eta * lam for eta in lr], 1 - mu
    else:
        eq = theory.latent_to_filter(lr[0], mu, lam, False)
        alpha, gamma = eq.alpha, eq.gamma
    filt = ref.cema(grads, alpha, gamma, 0, 0, b0)
    for t, (v, bl, bf) in enumerate(zip(filt.state, latent.b, filt.b)):
        if v == 0:
            ties[0] += 1
            continue
        if bl != bf:
            raise Mismatch(f"{_case_text(c, 'lr', 'mu', 'lam', 'decoupled', 'grads')}, "
                           f"w0 = {fmt(eps * w0)}: step {t}: latent b {bl:+d}, CEMA b {bf:+d}")


def check_p6(examples: int = 150) -> PropertyResult:
    """P6: initial weights are forgotten; zero-buffer CEMA is the small-init limit."""
    ties, engine_ties, cov = [0], [0], Coverage()
    with Timer() as timer:
        n, cex = run_stages(
            (_p6_case(), _check_forgetting, examples),
            (_p6_case(), lambda c: _check_zero_buffer_limit(c, ties), examples),
            engine_stage(_p6_case().map(on_engine.float_case),
                         lambda c: on_engine.check_p6(c, cov, engine_ties), cov, examples))
    cex = require_engine(cov, cex)
    return PropertyResult("P6", P6, n, cex is None, cex,
                          "exact (Fraction); engine float64: zero-buffer cema bitwise, "
                          f"sgd from 2^-300 w0 signs (margin {FLOAT_MARGIN:g})",
                          f"{ties[0]} exact and {engine_ties[0]} engine tie steps (v = 0) "
                          f"excluded from the limit check; {cov.cases_text()}", timer.seconds,
                          implementations=cov.text(), skipped=cov.skipped())


# --------------------------------------------------------------------------------------- P7
P7 = ("lr decay = alpha decay: exact for (B) and mu = 0; for (A) exact with "
      "mu_t = (1-gamma)(1-alpha_{t-1})")


@st.composite
def _p7_case(draw: Any) -> dict[str, Any]:
    grads = draw(S.exact_streams())
    factors = draw(S.schedule_factors(len(grads)))
    return dict(grads=grads, factors=factors, alpha0=draw(S.unit_rates()),
                gamma=draw(S.unit_rates()), lam=draw(S.weight_decays()),
                w0=draw(S.exact_values()), b0=draw(S.signs()), decoupled=draw(st.booleans()))


def _check_p7(c: dict[str, Any]) -> None:
    grads, lam, gamma = c["grads"], c["lam"], c["gamma"]
    alpha = [c["alpha0"] * f for f in c["factors"]]
    text = _case_text(c, "alpha0", "gamma", "lam", "factors", "w0", "grads")
    if c["decoupled"]:
        # (B), and mu = 0 when gamma = 1: eta_t = alpha_t / lam, mu = 1 - gamma.
        mu = 1 - gamma
        latent = ref.latent_sgd(grads, [a / lam for a in alpha], mu, lam, True, c["w0"], c["b0"])
        filt = ref.cema(grads, alpha, gamma, 0, -lam * gamma * c["w0"], c["b0"])
        compare_exact(latent, filt, lam * gamma, "(B) " + text)
        return
    # (A): eta_t = alpha_t gamma / lam, mu_t = (1 - gamma)(1 - alpha_{t-1}) for t >= 2
    # (mu_1 multiplies the empty buffer).  Derivation: eliminate m from both recursions and
    # match the coefficients of v_{t-1}, v_{t-2} and g_t with v = -lam w.
    mu_t = [(1 - gamma) * (1 - alpha[max(t - 1, 0)]) for t in range(len(grads))]
    latent = ref.latent_sgd(grads, [a * gamma / lam for a in alpha], mu_t, lam, False, c["w0"],
                            c["b0"])
    v0 = -lam * c["w0"]
    filt = ref.cema(grads, alpha, gamma, v0, v0, c["b0"])
    compare_exact(latent, filt, lam, "(A) " + text)


def check_p7(examples: int = 150) -> PropertyResult:
    """P7: decaying lr is decaying alpha, exactly, in the cases docs/theory.md names."""
    cov = Coverage()
    with Timer() as timer:
        n, cex = run_stages(
            (_p7_case(), _check_p7, examples),
            engine_stage(_p7_case().map(on_engine.float_case),
                         lambda c: on_engine.check_p7(c, cov), cov, examples))
    cex = require_engine(cov, cex)
    return PropertyResult("P7", P7, n, cex is None, cex,
                          "exact (Fraction); engine float64: cema bitwise, signs vs sgd(B) "
                          "and reference (A, mu_t)",
                          f"v == -k w with ==; (A) constant mu: see P10; {cov.cases_text()}",
                          timer.seconds,
                          implementations=cov.text(), skipped=cov.skipped())


# --------------------------------------------------------------------------------------- P8
P8 = ("Bop(tau=0) = CEMA(alpha=gamma_bop, gamma=1) = CEMA(alpha=1, gamma=gamma_bop) = latent P1; "
      "Bop2nd(tau=0) = Bop(tau=0); Bop2nd(tau>0) matches no CEMA")


@st.composite
def _p8_case(draw: Any) -> dict[str, Any]:
    k = draw(st.integers(1, 6))
    steps = draw(st.integers(1, 24))
    value = st.one_of(st.just(0.0), st.floats(-1e3, 1e3).filter(lambda x: x == 0 or abs(x) > 1e-6),
                      st.sampled_from([1.0, -1.0, 2.0, 0.5, -0.5]))
    grads = draw(st.lists(st.lists(value, min_size=k, max_size=k), min_size=steps,
                          max_size=steps))
    # thresholds that multiples of powers of two can hit exactly (larq's tie), and others
    tau = draw(st.one_of(st.sampled_from([0.25, 0.5, 1.0, 2.0]), st.floats(0.01, 2.0)))
    return dict(grads=np.array(grads, dtype=np.float64), b0=np.array(
                    draw(st.lists(S.signs(), min_size=k, max_size=k)), dtype=np.float64),
                gamma=draw(S.powers_of_two(-8, 0)), sigma=draw(S.powers_of_two(-8, 0)),
                lam=draw(S.powers_of_two(-6, 2)), tau=tau, alpha=draw(st.floats(1e-4, 1.0)),
                gamma2=draw(st.floats(1e-4, 1.0)), decoupled=draw(st.booleans()))


def _engine_runs(name: str, make: Callable[[], Any] | Recipe, b0: np.ndarray, grads: np.ndarray,
                 cov: Coverage, probe: Callable[[Any], Any] | None = None
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Optimiser ``name`` = ``make()`` in every implementation (a ``Recipe``: its PyTorch
    twin too): impl -> (params, probed state), each of shape (T+1, k)."""
    opt = make()
    if opt.fused is None:
        cov.no_kernel(name)
    out = {}
    for impl in cov.implementations(make if isinstance(make, Recipe) else opt):
        out[impl] = engine.run(make if isinstance(make, Recipe) else make(), impl, b0, grads,
                               probe)
        cov.add(impl)
    return out


def _check_p8(c: dict[str, Any], cov: Coverage, stats: dict[str, float]) -> None:
    from minibnn import optim

    grads, b0, gamma, lam, tau = c["grads"], c["b0"], c["gamma"], c["lam"], c["tau"]
    text = describe(gamma=gamma, sigma=c["sigma"], lam=lam, tau=tau, b0=list(b0),
                    grads=grads.tolist())
    m_of = lambda s: s["m"]["s"]["w"]  # noqa: E731
    # Bop against the reference recursion (larq's tie), at tau = 0 and tau > 0, bitwise
    for threshold in (0.0, tau):
        runs = _engine_runs("bop", Recipe("bop", dict(threshold=threshold, gamma=gamma)), b0,
                            grads, cov, m_of)
        for j in range(grads.shape[1]):
            want = ref.bop(list(grads[:, j]), threshold, gamma, int(b0[j]))
            for impl, (bs, ms) in runs.items():
                if list(bs[:, j]) != want.b or list(ms[:, j]) != want.state:
                    raise Mismatch(f"{text}: {impl} bop(tau={threshold:g}) differs from the "
                                   f"reference recursion, weight {j}")
            if threshold > 0:
                score = np.array(want.state[1:]) * np.array(want.b[:-1])
                stats["threshold ties"] += int(np.count_nonzero(score == threshold))
    bop0 = runs_b(_engine_runs("bop", Recipe("bop", dict(threshold=0.0, gamma=gamma)), b0,
                               grads, cov))
    # ... equals both CEMA forms (the first EMA exercised with gamma_bop < 1) and Bop2nd(0)
    rms = dict(threshold=0.0, gamma=gamma, sigma=c["sigma"])
    others = {
        "cema(alpha=gamma_bop, gamma=1)": Recipe("cema", dict(alpha=gamma, gamma=1.0,
                                                              tie="positive")),
        "cema(alpha=1, gamma=gamma_bop)": Recipe("cema", dict(alpha=1.0, gamma=gamma,
                                                              tie="positive")),
        "bop2nd(0)": Recipe("bop2nd", rms),
        "bop2nd(0, corrected)": Recipe("bop2nd", {**rms, "bias_correction": True}),
    }
    for name, make in others.items():
        for impl, bs in runs_b(_engine_runs(name.split("(")[0], make, b0, grads, cov)).items():
            if not np.array_equal(bs, bop0["chain"]):
                t = int(np.argmax(np.any(bs != bop0["chain"], axis=1)))
                raise Mismatch(f"{text}: step {t}: bop(0) {bop0['chain'][t]}, {impl} {name} "
                               f"{bs[t]}")
    stats["zero ties"] += int(np.count_nonzero(np.cumsum(np.abs(grads), axis=0) == 0))
    # Latent P1 with lr * lam = gamma_bop (exact: lam is a power of two), w0 = 0 <-> m0 = 0.
    lr = gamma / lam
    sgd = on_engine.sgd_recipe(lr, 0.0, lam, c["decoupled"])
    bop_m = engine.run(optim.bop(0.0, gamma), "chain", b0, grads, m_of)[1]
    for impl, (ws, _) in _engine_runs("sgd", sgd, np.zeros_like(b0), grads, cov).items():
        for j in range(grads.shape[1]):
            g = list(grads[:, j])
            scale = magnitude_bound(g, lr, 0.0, lam, c["decoupled"], 0.0)
            latent_matches_binary(list(ws[:, j]), list(bop0["chain"][:, j]), scale,
                                  f"{impl} sgd(lr*lam = gamma_bop) vs bop(0), {text}")
            nonzero = np.array(scale[1:]) > 0
            if np.any(nonzero):
                gap = np.abs(bop_m[1:, j] + lam * ws[1:, j])[nonzero]
                stats["max rel. error"] = max(stats["max rel. error"], float(
                    np.max(gap / (lam * np.array(scale[1:])[nonzero]))))
    # Bop2nd with tau > 0 (both moment conventions) matches the float reference recursion...
    for corrected in (False, True):
        make = Recipe("bop2nd", dict(threshold=tau, gamma=gamma, sigma=c["sigma"],
                                     bias_correction=corrected))
        for impl, bs in runs_b(_engine_runs("bop2nd", make, b0, grads, cov)).items():
            for j in range(grads.shape[1]):
                want = ref.bop2nd(list(grads[:, j]), tau, gamma, c["sigma"], 1e-10, int(b0[j]),
                                  corrected)
                if list(bs[:, j]) != want.b:
                    raise Mismatch(f"{text}: {impl} bop2nd(corrected={corrected}) differs from "
                                   f"the reference recursion, weight {j}")
    # ... and one small gradient separates it from every CEMA: at step 1 Bop2nd's statistic
    # is below tau (|y| <= g/eps = tau/2), while CEMA flips b = +1 on any g > 0.
    eps = 1e-10
    g1 = np.array([[tau * eps / 2]])
    one = np.ones(1)
    for corrected in (False, True):
        kept = engine.run(optim.bop2nd(tau, gamma, c["sigma"], eps, corrected), "chain", one,
                          g1)[0][1]
        if kept[0] != 1.0:
            raise Mismatch(f"{text}: g1 = {g1[0, 0]:g} flips bop2nd(tau, corrected={corrected})")
    cema = _engine_runs("cema", Recipe("cema", dict(alpha=c["alpha"], gamma=c["gamma2"])), one,
                        g1, cov)
    for impl, bs in runs_b(cema).items():
        if bs[1][0] != -1.0:
            raise Mismatch(f"{text}: g1 = {g1[0, 0]:g} does not flip {impl} cema")


def runs_b(runs: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """impl -> binary weights per step, from ``_engine_runs``."""
    return {impl: params for impl, (params, _) in runs.items()}


def check_p8(examples: int = 80) -> PropertyResult:
    """P8 on the real ``minibnn.optim`` optimisers (float64), every implementation."""
    stats = {"max rel. error": 0.0, "threshold ties": 0, "zero ties": 0}
    cov = Coverage()
    with Timer() as timer:
        n, cex = run_cases(_p8_case(), lambda c: _check_p8(c, cov, stats), examples)
    return PropertyResult("P8", P8, n, cex is None, cex,
                          f"float64, real optimisers (sign margin {FLOAT_MARGIN:g})",
                          f"bop = cema = bop2nd(0) bitwise; {stats['threshold ties']} steps on "
                          f"m b == tau, {stats['zero ties']} on m == 0 (larq's tie); latent max "
                          f"rel. error {stats['max rel. error']:.2g}", timer.seconds,
                          implementations=cov.text(), skipped=cov.skipped())
