"""Hypothesis strategies: gradient streams, schedules and hyperparameters, exact and float.

Exact strategies draw ``fractions.Fraction`` values, including zeros, exact ties (streams that
cancel), and huge (10^30) and tiny (10^-30) magnitudes; hyperparameters have small
denominators so that the reference recursions stay fast.  For P3 the two poles are drawn
rational and the latent hyperparameters derived from them (``mu = p1 p2``,
``eta lam = (1-p1)(1-p2)``), so the exact map has rational rates.  Float strategies keep
magnitudes in [1e-100, 1e100] so that no product of a run under- or overflows.
"""
from __future__ import annotations

from fractions import Fraction as Q
from typing import Any

from hypothesis import strategies as st

MAX_STEPS = 16

_EXTREMES = [Q(10) ** 30, Q(1, 10 ** 30), Q(10) ** 12, Q(1, 10 ** 12)]


def exact_values(max_denominator: int = 8, bound: int = 4) -> st.SearchStrategy[Q]:
    """Fractions: zero, small integers, small-denominator fractions, huge and tiny magnitudes."""
    signed_extremes = st.sampled_from(_EXTREMES + [-x for x in _EXTREMES])
    return st.one_of(st.just(Q(0)), st.integers(-3, 3).map(Q),
                     st.fractions(-bound, bound, max_denominator=max_denominator),
                     signed_extremes)


def exact_streams(min_size: int = 1, max_size: int = MAX_STEPS) -> st.SearchStrategy[list[Q]]:
    """Gradient streams: arbitrary, constant (repeated values), and cancelling (g, then -g)."""
    values = exact_values()
    half = max(1, max_size // 2)
    return st.one_of(
        st.lists(values, min_size=min_size, max_size=max_size),
        st.tuples(values, st.integers(min_size, max_size)).map(lambda p: [p[0]] * p[1]),
        st.lists(values, min_size=1, max_size=half).map(lambda g: g + [-x for x in g]),
    )


def unit_rates() -> st.SearchStrategy[Q]:
    """Rates in (0, 1], including 1 and extreme small ones."""
    return st.one_of(st.sampled_from([Q(1), Q(1, 2), Q(1, 10 ** 6), Q(999, 1000)]),
                     st.fractions(0, 1, max_denominator=32).filter(lambda x: x > 0))


def momenta() -> st.SearchStrategy[Q]:
    """Momentum in [0, 1), including 0 and 0.9, 0.99."""
    return st.one_of(st.sampled_from([Q(0), Q(9, 10), Q(99, 100), Q(1, 2)]),
                     st.fractions(0, 1, max_denominator=32).filter(lambda x: x < 1))


def weight_decays() -> st.SearchStrategy[Q]:
    """Positive weight decay, from 10^-6 to 10^3."""
    return st.one_of(st.sampled_from([Q(1, 10 ** 6), Q(5, 10 ** 4), Q(1), Q(1000)]),
                     st.fractions(0, 8, max_denominator=16).filter(lambda x: x > 0))


def poles() -> st.SearchStrategy[Q]:
    """A rational pole in [0, 1)."""
    return st.one_of(st.sampled_from([Q(0), Q(9, 10), Q(999, 1000), Q(1, 2)]),
                     st.fractions(0, 1, max_denominator=32).filter(lambda x: x < 1))


def schedule_factors(steps: int) -> st.SearchStrategy[list[Q]]:
    """Per-step learning-rate factors in (0, 1]: constant, step decay, linear decay, arbitrary."""
    constant = st.just([Q(1)] * steps)
    step = st.tuples(st.integers(1, 5), st.sampled_from([Q(1, 2), Q(1, 10)])).map(
        lambda p: [p[1] ** (t // p[0]) for t in range(steps)])
    linear = st.integers(1, 8).map(lambda k: [1 - Q(t, steps + k) for t in range(steps)])
    arbitrary = st.lists(unit_rates(), min_size=steps, max_size=steps)
    return st.one_of(constant, step, linear, arbitrary)


def signs() -> st.SearchStrategy[int]:
    return st.sampled_from([1, -1])


@st.composite
def latent_case(draw: Any, momentum: bool = True, schedule: bool = True,
                max_steps: int = MAX_STEPS) -> dict[str, Any]:
    """A latent run: lam, per-step lr with eta_t lam in (0, 1], momentum, w0, b0, gradients."""
    grads = draw(exact_streams(max_size=max_steps))
    lam = draw(weight_decays())
    alpha0 = draw(unit_rates())                       # eta_0 * lam
    factors = draw(schedule_factors(len(grads))) if schedule else [Q(1)] * len(grads)
    return dict(grads=grads, lam=lam, lr=[alpha0 * f / lam for f in factors],
                mu=draw(momenta()) if momentum else Q(0), w0=draw(exact_values()),
                b0=draw(signs()), decoupled=draw(st.booleans()))


@st.composite
def p3_case(draw: Any, max_steps: int = MAX_STEPS) -> dict[str, Any]:
    """(A) with rational poles p1, p2: mu = p1 p2, eta lam = (1-p1)(1-p2), constant eta."""
    p1, p2 = draw(poles()), draw(poles())
    lam = draw(weight_decays())
    return dict(grads=draw(exact_streams(max_size=max_steps)), lam=lam, mu=p1 * p2,
                lr=(1 - p1) * (1 - p2) / lam, w0=draw(exact_values()), b0=draw(signs()),
                poles=(p1, p2))


def float_values() -> st.SearchStrategy[float]:
    """Floats: zero, ordinary, and huge/tiny magnitudes (1e+-100) that stay normal in a run."""
    ordinary = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, allow_subnormal=False)
    extreme = st.sampled_from([1e100, -1e100, 1e-100, -1e-100, 1e30, -1e-30])
    return st.one_of(st.just(0.0), ordinary, extreme)


def float_streams(min_size: int = 1, max_size: int = 64) -> st.SearchStrategy[list[float]]:
    return st.one_of(st.lists(float_values(), min_size=min_size, max_size=max_size),
                     st.lists(float_values(), min_size=1, max_size=max_size // 2).map(
                         lambda g: g + [-x for x in g]))


def powers_of_two(lo: int, hi: int) -> st.SearchStrategy[float]:
    """2**k for k in [lo, hi]: scaling by these is exact in binary floating point."""
    return st.integers(lo, hi).map(lambda k: 2.0 ** k)
