"""The latent <-> filter hyperparameter map of docs/theory.md (Quist, Li & van Gemert, 2023).

A binary weight only sees ``sign(w)`` of its latent weight, so latent SGD matters only through
the linear filter it applies to the gradient stream.  Written with ``v = -k w`` (``k > 0``):

    decoupled (B), or momentum 0 (P1, P2):   CEMA with  alpha = eta*lam,  gamma = 1 - mu,
                                             k = lam*(1-mu),  v0 = -k w0,  m0 = 0
    coupled (A), constant eta (P3):          CEMA iff 1-alpha, 1-gamma are the roots of
                                             p^2 - (1+mu-eta*lam) p + mu = 0  (real iff
                                             eta*lam <= (1-sqrt(mu))^2),  k = lam,  m0 = v0 = -lam w0
    always, constant eta (P4):               v_t = a1 v_{t-1} + a2 v_{t-2} + c g_t

Everything here is plain Python arithmetic, so it works on ``fractions.Fraction`` too: with
rational poles the P3 map is returned exactly (the discriminant is then a rational square).
Bad input raises ``MinibnnError`` with one line.
"""
from __future__ import annotations

import cmath
import math
from dataclasses import dataclass
from fractions import Fraction
from numbers import Real
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from minibnn.errors import MinibnnError

__all__ = [
    "FilterEquivalent", "LatentEquivalent", "latent_to_filter", "filter_to_latent", "naive_map",
    "matched_initial_state", "matched_second_order_state", "time_constant",
    "latent_impulse_response", "filter_impulse_response", "second_order_impulse_response",
    "latent_frequency_response", "filter_frequency_response", "second_order_frequency_response",
    "rate_time_constant", "ema_log_decay", "initial_state_weight",
    "scheduled_filter_impulse_response", "scheduled_latent_impulse_response",
]

Number = Any  # int, float, numpy floating or Fraction


@dataclass(frozen=True)
class FilterEquivalent:
    """The filter a latent-SGD configuration applies to its gradient stream.

    ``alpha``/``gamma`` are set (and ``exact`` is True) when a CEMA reproduces every sign of
    the latent run; otherwise they are None and ``reason`` says why.  The second-order filter
    ``v_t = a1 v_{t-1} + a2 v_{t-2} + c g_t`` with ``v = -v_scale * w`` reproduces the latent
    run for every constant learning rate (docs/theory.md P4); ``poles`` are its two poles
    (complex when no real cascade exists).  ``schedule_exact`` says whether decaying ``lr`` is
    exactly the same as decaying ``alpha`` by the same factor (docs/theory.md P7).
    """

    lr: Number
    momentum: Number
    weight_decay: Number
    decoupled: bool
    alpha: Number | None
    gamma: Number | None
    exact: bool
    reason: str
    a1: Number
    a2: Number
    c: Number
    v_scale: Number
    poles: tuple[Any, Any]
    schedule_exact: bool

    @property
    def time_constants(self) -> tuple[float, float]:
        """Memory of each pole in steps, ``-1 / ln|p|`` (0 for p = 0, inf for |p| >= 1).

        When a CEMA exists the poles are ``1 - alpha`` and ``1 - gamma``: the memory is then
        computed from the rates (``-1 / log1p(-rate)``), which stays accurate for a rate so
        small that ``1 - rate`` rounds to 1 (the pole would read as an integrator).
        """
        if self.exact:
            return rate_time_constant(self.alpha), rate_time_constant(self.gamma)
        return time_constant(self.poles[0]), time_constant(self.poles[1])

    @property
    def log_decay(self) -> float:
        """``ln`` of the dominant (largest) ``|pole|``: per step, the slowest part of the state
        shrinks by ``exp(log_decay)`` (0 for an integrator, > 0 when unstable, -inf when both
        poles are 0).  From the rates when a CEMA exists, as ``time_constants``."""
        if self.exact:
            return ema_log_decay(self.alpha, self.gamma)
        return max(_log_abs(p) for p in self.poles)

    @property
    def naive(self) -> tuple[Number, Number]:
        """The textbook map ``alpha = lr*weight_decay``, ``gamma = 1 - momentum``."""
        return naive_map(self.lr, self.momentum, self.weight_decay)

    @property
    def naive_is_exact(self) -> bool:
        """The naive map is the exact one only for decoupled decay or zero momentum (P1/P2)."""
        return self.exact and (self.decoupled or self.momentum == 0)


@dataclass(frozen=True)
class LatentEquivalent:
    """Latent-SGD hyperparameters reproducing a CEMA ``(alpha, gamma)``.

    Only the product ``lr * weight_decay`` is identified by the filter: one of ``lr`` and
    ``weight_decay`` is free (docs/theory.md P5), so both are None unless one was given.
    """

    alpha: Number
    gamma: Number
    decoupled: bool
    momentum: Number
    lr_times_weight_decay: Number
    lr: Number | None
    weight_decay: Number | None
    note: str


def _check_real(name: str, value: Any) -> Number:
    """A finite real number (bool, complex, NaN, inf and schedules are refused)."""
    if callable(value):
        raise MinibnnError(f"{name} must be a number, not a schedule: pass its initial value "
                           f"(under P1/P2 alpha follows the same schedule, docs/theory.md P7)")
    if isinstance(value, bool) or not isinstance(value, (Real, np.floating, np.integer)):
        raise MinibnnError(f"{name} must be a real number, got {value!r}")
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        raise MinibnnError(f"{name} must be finite, got {value}")
    return value.item() if isinstance(value, (np.floating, np.integer)) else value


def _as_is(name: str) -> str:
    return name


def check_latent(lr: Any, momentum: Any, weight_decay: Any,
                 name: Callable[[str], str] = _as_is) -> tuple[Number, Number, Number]:
    """Latent SGD's options as numbers in range; ``name`` shows an option in messages (the
    CLI passes ``spec.flag``: ``weight_decay`` -> ``--weight-decay``)."""
    lr = _check_real(name("lr"), lr)
    momentum = _check_real(name("momentum"), momentum)
    weight_decay = _check_real(name("weight_decay"), weight_decay)
    if lr <= 0:
        raise MinibnnError(f"{name('lr')} must be > 0, got {lr}")
    if not 0 <= momentum < 1:
        raise MinibnnError(f"{name('momentum')} must be in [0, 1), got {momentum}")
    if weight_decay < 0:
        raise MinibnnError(f"{name('weight_decay')} must be >= 0, got {weight_decay}")
    return lr, momentum, weight_decay


def check_rate(name: str, value: Any) -> Number:
    """An EMA rate: a finite real number in (0, 1] (``name`` as shown in the message)."""
    value = _check_real(name, value)
    if not 0 < value <= 1:
        raise MinibnnError(f"{name} must be in (0, 1], got {value}")
    return value


def _sqrt(x: Number) -> Number:
    """Square root, exact for a Fraction (or int) that is a rational square, float otherwise."""
    if isinstance(x, (Fraction, int)):
        q = Fraction(x)
        rn, rd = math.isqrt(q.numerator), math.isqrt(q.denominator)
        if rn * rn == q.numerator and rd * rd == q.denominator:
            return Fraction(rn, rd)
    return math.sqrt(x)


def time_constant(pole: Any) -> float:
    """Steps for a pole's response to shrink by e: ``-1 / ln|p|``."""
    r = abs(complex(pole))
    if r == 0:
        return 0.0
    if r >= 1:
        return math.inf
    return -1.0 / math.log(r)


def rate_time_constant(rate: Number) -> float:
    """``time_constant(1 - rate)`` for a rate in (0, 1], without rounding ``1 - rate``."""
    rate = float(rate)
    return 0.0 if rate >= 1 else -1.0 / math.log1p(-rate)


def _log_abs(pole: Any) -> float:
    """``ln|p|``; -inf for p = 0."""
    r = abs(complex(pole))
    return math.log(r) if r > 0 else -math.inf


def ema_log_decay(*rates: Number) -> float:
    """``ln`` of the dominant pole of a cascade of EMAs with these rates (poles ``1 - rate``):
    ``max ln(1 - rate)``, from ``log1p`` so that a tiny rate does not round to an integrator;
    -inf when every rate is 1 (nothing is kept)."""
    checked = [float(check_rate("rate", r)) for r in rates]
    return max(math.log1p(-r) if r < 1 else -math.inf for r in checked)


def initial_state_weight(segments: Sequence[tuple[float, int]]) -> float:
    """The weight the initial state still has after a run of piecewise-constant filters.

    ``segments`` are ``(log_decay, steps)`` pairs (``log_decay``: ``ln`` of the dominant
    ``|pole|`` while the segment lasts, e.g. ``ema_log_decay(alpha_e, gamma)`` for an epoch of a
    scheduled CEMA).  The state's slowest part is multiplied by the dominant ``|pole|`` each step,
    so what is left of it is ``prod |p_i|^(n_i) = exp(sum n_i ln|p_i|)`` (docs/theory.md P6:
    ``(1 - alpha)^t`` for one EMA); each faster mode is left with less.  Summed in the log domain
    so that ``(1 - 1e-9)^(1e6)`` neither rounds to 1 nor underflows early; inf when the filter
    grows (an unstable pole) past float64.
    """
    total = 0.0
    for log_decay, steps in segments:
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
            raise MinibnnError(f"segment steps must be a non-negative integer, got {steps!r}")
        if steps:
            total += int(steps) * float(log_decay)
    try:
        return math.exp(total)
    except OverflowError:
        return math.inf


def _finite(x: Any) -> bool:
    """False for a float (or complex) inf or NaN; Fractions and ints are always finite."""
    if isinstance(x, complex):
        return math.isfinite(x.real) and math.isfinite(x.imag)
    if isinstance(x, (float, np.floating)):
        return math.isfinite(x)
    return True


def check_product(lr: Number, lam: Number, name: Callable[[str], str] = _as_is) -> Number:
    """``lr * weight_decay``, refused when a float product over- or underflows (``name`` as in
    ``check_latent``)."""
    el = lr * lam
    given = f"{name('lr')} {float(lr):g} times {name('weight_decay')} {float(lam):g}"
    if not _finite(el):
        raise MinibnnError(f"{given} overflows: lr*weight_decay = {el} is not a finite number, "
                           "so no filter with a finite rate exists (only the product matters, "
                           "docs/theory.md P5: use values whose product is finite)")
    if lam > 0 and el == 0:
        raise MinibnnError(f"{given} underflows to 0: the rate alpha = lr*weight_decay would "
                           "be 0 (pass weight_decay = 0 for no decay, or a larger product)")
    return el


def _check_finite_filter(eq: FilterEquivalent) -> FilterEquivalent:
    """Last line of defence: every number of the result is finite (no inf, no NaN)."""
    fields = dict(alpha=eq.alpha, gamma=eq.gamma, a1=eq.a1, a2=eq.a2, c=eq.c,
                  v_scale=eq.v_scale, pole=eq.poles[0], other_pole=eq.poles[1])
    bad = [k for k, v in fields.items() if v is not None and not _finite(v)]
    if bad:
        raise MinibnnError(f"lr = {float(eq.lr):g}, momentum = {float(eq.momentum):g}, "
                           f"weight_decay = {float(eq.weight_decay):g} give a filter that is "
                           f"not finite in float64 "
                           f"({', '.join(f'{k} = {fields[k]}' for k in bad)})")
    return eq


def naive_map(lr: Number, momentum: Number, weight_decay: Number) -> tuple[Number, Number]:
    """``alpha = lr*weight_decay``, ``gamma = 1 - momentum`` (exact only for (B) or mu = 0)."""
    lr, momentum, weight_decay = check_latent(lr, momentum, weight_decay)
    return lr * weight_decay, 1 - momentum


def latent_to_filter(lr: Number, momentum: Number = 0.0, weight_decay: Number = 0.0,
                     decoupled: bool = False) -> FilterEquivalent:
    """The CEMA ``(alpha, gamma)`` (or second-order filter) equivalent to latent SGD.

    ``decoupled=False`` is PyTorch's ``SGD`` (docs/theory.md (A)), ``True`` is SGDW
    (docs/theory.md (B)).
    """
    lr, mu, lam = check_latent(lr, momentum, weight_decay)
    el = check_product(lr, lam)
    common = dict(lr=lr, momentum=mu, weight_decay=lam, decoupled=bool(decoupled))
    if lam == 0:
        # w_t = w_0 - eta * sum(m): an integrator (pole 1) behind the momentum pole; v = -w.
        # Coupled and decoupled coincide.  No EMA rate alpha > 0 exists (docs/theory.md P6).
        return FilterEquivalent(
            **common, alpha=None, gamma=None, exact=False,
            reason=("weight_decay = 0: alpha = lr*weight_decay = 0, the latent weight is an "
                    "integrator and w0/lr acts as a per-weight flip threshold "
                    "(docs/theory.md P6); the second-order filter (pole 1) reproduces it"),
            a1=1 + mu, a2=-mu, c=lr, v_scale=1, poles=(1, mu), schedule_exact=True)
    if decoupled or mu == 0:
        return _check_finite_filter(_first_order_cascade(el, mu, lam, common))
    return _check_finite_filter(_coupled_momentum(el, mu, lam, common))


def _first_order_cascade(el: Number, mu: Number, lam: Number, common: dict) -> FilterEquivalent:
    """P1/P2: ``v = -lam(1-mu) w`` is CEMA with ``alpha = eta*lam``, ``gamma = 1 - mu``."""
    k = lam * (1 - mu)
    # Eliminating m from (B): w_t = (1 - el + mu) w_{t-1} - mu (1 - el) w_{t-2} - eta g_t.
    second = dict(a1=(1 - el) + mu, a2=-mu * (1 - el), c=el * (1 - mu), v_scale=k,
                  poles=(1 - el, mu), schedule_exact=True)
    prop = "P2 (decoupled, momentum)" if mu != 0 else "P1 (no momentum)"
    if el > 1:
        return FilterEquivalent(
            **common, **second, alpha=None, gamma=None, exact=False,
            reason=(f"lr*weight_decay = {float(el):g} > 1: the decay factor 1 - lr*weight_decay "
                    "is negative, so no EMA rate exists; the second-order filter reproduces it"))
    return FilterEquivalent(**common, **second, alpha=el, gamma=1 - mu, exact=True,
                            reason=f"{prop}: exact for any lr schedule")


def _coupled_momentum(el: Number, mu: Number, lam: Number, common: dict) -> FilterEquivalent:
    """P3/P4: coupled decay with momentum is the IIR filter
    ``w_t = (1 + mu - eta*lam) w_{t-1} - mu w_{t-2} - eta g_t``."""
    second = dict(a1=1 + mu - el, a2=-mu, c=el, v_scale=lam, schedule_exact=False)
    # alpha, gamma = 1 - poles are the roots of x^2 - (1 - mu + el) x + el = 0 (sum and product
    # of the rates); the discriminant equals that of the pole polynomial.
    s = 1 - mu + el
    disc = s * s - 4 * el
    if disc >= 0 and el <= 1 + mu:
        # Real poles, both in [0, 1): el <= (1 - sqrt(mu))^2.  gamma takes the larger rate
        # (the fast pole, ~ 1 - mu) and alpha the smaller (the slow pole, ~ el / (1 - mu)), so
        # the map tends to the naive one as el -> 0; the swapped assignment is exact as well.
        gamma = (s + _sqrt(disc)) / 2
        alpha = el / gamma  # product of the roots is el: avoids cancellation in (s - sqrt)/2
        return FilterEquivalent(
            **common, **second, alpha=alpha, gamma=gamma, exact=True, poles=(1 - alpha, 1 - gamma),
            reason=("P3 (coupled, real poles): exact for a constant lr with m0 = v0 = "
                    "-weight_decay*w0; an lr schedule is only approximate (docs/theory.md P7)"))
    if disc < 0:
        root = cmath.sqrt(-disc) * 1j
        poles = ((second["a1"] + root) / 2, (second["a1"] - root) / 2)
        why = (f"complex poles (lr*weight_decay = {float(el):g} > (1 - sqrt(momentum))^2 = "
               f"{(1 - math.sqrt(mu)) ** 2:g}): no cascade of two real EMAs exists "
               "(docs/theory.md P4)")
    else:
        # Both poles negative (a1 < 0).  For a huge el, s*s overflows: then scale by |a1|.
        # The large pole is a1/2 - root/2 (no cancellation, no overflow); the small one is
        # mu / large (the product of the poles is mu > 0), not (a1 + root)/2, which cancels.
        try:
            a1 = float(second["a1"])
        except OverflowError:  # a Fraction beyond float range
            raise MinibnnError("lr*weight_decay is beyond float64 range (about 1.8e308): the "
                               "poles are not representable") from None
        try:
            root = math.sqrt(disc)
        except OverflowError:
            root = math.inf
        if not _finite(root):
            root = abs(a1) * math.sqrt(max(0.0, 1 - 4 * (float(mu) / a1) / a1))
        large = a1 / 2 - root / 2
        poles = (float(mu) / large, large)
        why = (f"negative real poles (lr*weight_decay = {float(el):g} >= (1 + sqrt(momentum))^2):"
               " EMA rates would exceed 1")
    return FilterEquivalent(**common, **second, alpha=None, gamma=None, exact=False, poles=poles,
                            reason=why + "; the second-order filter a1, a2, c reproduces it")


def filter_to_latent(alpha: Number, gamma: Number, decoupled: bool = True, lr: Number | None = None,
                     weight_decay: Number | None = None) -> LatentEquivalent:
    """Latent SGD reproducing CEMA ``(alpha, gamma)``; give ``lr`` or ``weight_decay`` (not both).

    decoupled (P2): momentum = 1 - gamma, lr*weight_decay = alpha (alpha may follow a schedule).
    coupled (P3):   momentum = (1-alpha)(1-gamma), lr*weight_decay = alpha*gamma (constant lr).
    """
    alpha, gamma = check_rate("alpha", alpha), check_rate("gamma", gamma)
    if decoupled:
        mu, el = 1 - gamma, alpha
    else:
        mu, el = (1 - alpha) * (1 - gamma), alpha * gamma
    free = "only lr*weight_decay is identified by the filter (docs/theory.md P5)"
    if lr is not None and weight_decay is not None:
        raise MinibnnError(f"give lr or weight_decay, not both: {free}")
    if lr is not None:
        lr = _check_real("lr", lr)
        if lr <= 0:
            raise MinibnnError(f"lr must be > 0, got {lr}")
        weight_decay, note = el / lr, f"weight_decay = {float(el):g} / lr; {free}"
    elif weight_decay is not None:
        weight_decay = _check_real("weight_decay", weight_decay)
        if weight_decay <= 0:
            raise MinibnnError(f"weight_decay must be > 0 to match an alpha > 0, got {weight_decay}")
        lr, note = el / weight_decay, f"lr = {float(el):g} / weight_decay; {free}"
    else:
        note = f"lr*weight_decay = {float(el):g}; {free}: pass lr= or weight_decay= to fix one"
    return LatentEquivalent(alpha=alpha, gamma=gamma, decoupled=bool(decoupled), momentum=mu,
                            lr_times_weight_decay=el, lr=lr, weight_decay=weight_decay, note=note)


def matched_initial_state(w0: Any, lr: Number, momentum: Number, weight_decay: Number,
                          decoupled: bool) -> tuple[Any, Any]:
    """CEMA buffers ``(m0, v0)`` that reproduce a latent initialisation ``w0`` (zero momentum).

    P1/P2: ``v0 = -lam (1-mu) w0``, ``m0 = 0``.  P3: ``m0 = v0 = -lam w0``: matching the first
    step ``v1 = (1 - eta lam) v0 + eta lam g1`` against CEMA's
    ``v1 = (1-alpha) v0 + alpha (1-gamma) m0 + alpha gamma g1`` needs ``alpha (1-gamma) m0 =
    alpha (1-gamma) v0`` (using ``alpha gamma = eta lam``); later steps follow from the
    shared second-order recursion.  ``w0`` may be a number, a Fraction or an array.
    """
    eq = latent_to_filter(lr, momentum, weight_decay, decoupled)
    if not eq.exact:
        raise MinibnnError(f"no CEMA reproduces this latent run: {eq.reason}")
    v0 = -eq.v_scale * w0
    if eq.decoupled or eq.momentum == 0:
        return w0 * 0, v0
    return v0, v0


def matched_second_order_state(w0: Any, lr: Number, momentum: Number, weight_decay: Number,
                               decoupled: bool) -> tuple[Any, Any]:
    """Second-order filter buffers ``(v_0, v_{-1})`` (``optim.second_order``'s ``v1``, ``v2``).

    With zero latent momentum the first latent step is ``v1 = (1 - eta lam) v0 + c g1``, so
    ``a1 v0 + a2 v_{-1} = (1 - eta lam) v0`` fixes ``v_{-1}`` (irrelevant when ``a2 = 0``).
    One corner has no solution: decoupled decay with ``lr*weight_decay == 1`` and momentum
    (``a2 = 0``, ``a1 = mu``).  There ``w0`` is forgotten after one step, so the state is zero
    and ``b0 = sign(w0)`` is carried by the flip rule alone (``v`` is not ``-v_scale w`` at t = 0).
    """
    eq = latent_to_filter(lr, momentum, weight_decay, decoupled)
    v0 = -eq.v_scale * w0
    decay = 1 - eq.lr * eq.weight_decay
    if eq.a2 == 0:
        return (v0 if eq.a1 == decay else w0 * 0), w0 * 0
    return v0, (decay - eq.a1) * v0 / eq.a2


def _steps(n: int) -> int:
    """A validated response length (the impulse ``g = (1, 0, 0, ...)`` is never stored)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise MinibnnError(f"n must be a positive integer, got {n!r}")
    return int(n)


#: bytes one impulse response needs per step: its float64 output array (the input impulse is
#: not stored and the recursions keep O(1) state), see ``explain`` for the plot's total.
RESPONSE_BYTES_PER_STEP = 8


def latent_impulse_response(lr: Number, momentum: Number, weight_decay: Number, decoupled: bool,
                            n: int) -> np.ndarray:
    """``-v_scale * w_t``, t = 1..n, of latent SGD from zero state after a unit gradient at t = 1."""
    return scheduled_latent_impulse_response([(lr, n)], momentum, weight_decay, decoupled, n)


def _per_step(segments: Sequence[tuple], n: int) -> Iterator[tuple]:
    """The values of piecewise-constant ``(value..., steps)`` segments for steps 1..n, one tuple
    per step; the last segment's values hold beyond its own steps."""
    if not segments:
        raise MinibnnError("a schedule needs at least one (value..., steps) segment")
    left = n
    for i, (*values, steps) in enumerate(segments):
        last = i == len(segments) - 1
        for _ in range(left if last else min(int(steps), left)):
            yield tuple(values)
        left -= int(steps)
        if left <= 0:
            return


def scheduled_latent_impulse_response(lr_segments: Sequence[tuple[Number, int]],
                                      momentum: Number, weight_decay: Number, decoupled: bool,
                                      n: int) -> np.ndarray:
    """``latent_impulse_response`` with a piecewise-constant learning rate: ``(lr, steps)``
    segments in order (the last lr holds beyond its steps), e.g. one per epoch of a run.

    The latent recursion itself, (A) or (B) of docs/theory.md, so it is exact for any schedule;
    ``v_scale`` (``lam (1-mu)``, ``lam`` or 1) does not depend on lr.
    """
    out = np.empty(_steps(n))
    checked = [(latent_to_filter(lr, momentum, weight_decay, decoupled), steps)
               for lr, steps in lr_segments]  # each lr checked (and lr*wd's over/underflow)
    if not checked:
        raise MinibnnError("a schedule needs at least one (lr, steps) segment")
    eq = checked[0][0]
    mu, lam = float(eq.momentum), float(eq.weight_decay)
    scale = -float(eq.v_scale)
    w = m = 0.0
    g = 1.0
    for t, (lr,) in enumerate(_per_step([(float(e.lr), s) for e, s in checked], out.size)):
        if decoupled:
            m = mu * m + g
            w = (1 - lr * lam) * w - lr * m
        else:
            m = mu * m + g + lam * w
            w = w - lr * m
        out[t] = scale * w
        g = 0.0
    return out


def filter_impulse_response(alpha: Number, gamma: Number, n: int) -> np.ndarray:
    """CEMA ``v_t``, t = 1..n, from zero buffers after a unit gradient at t = 1."""
    return scheduled_filter_impulse_response([(alpha, gamma, n)], n)


def scheduled_filter_impulse_response(segments: Sequence[tuple[Number, Number, int]],
                                      n: int) -> np.ndarray:
    """``filter_impulse_response`` with piecewise-constant rates: ``(alpha, gamma, steps)``
    segments in order (the last holds beyond its steps), e.g. one per epoch of a run whose
    ``alpha`` follows a per-epoch schedule (``alpha_t`` of docs/theory.md section 2)."""
    rates = [(float(check_rate("alpha", a)), float(check_rate("gamma", c)), s)
             for a, c, s in segments]
    out = np.empty(_steps(n))
    m = v = 0.0
    g = 1.0
    for t, (alpha, gamma) in enumerate(_per_step(rates, out.size)):
        m = (1 - gamma) * m + gamma * g
        v = (1 - alpha) * v + alpha * m
        out[t] = v
        g = 0.0
    return out


def second_order_impulse_response(a1: Number, a2: Number, c: Number, n: int) -> np.ndarray:
    """``v_t = a1 v_{t-1} + a2 v_{t-2} + c g_t``, t = 1..n, after a unit gradient at t = 1."""
    a1, a2, c = (float(_check_real(k, x)) for k, x in (("a1", a1), ("a2", a2), ("c", c)))
    out = np.empty(_steps(n))
    v1 = v2 = 0.0
    g = 1.0
    for t in range(out.size):
        v1, v2 = a1 * v1 + a2 * v2 + c * g, v1
        out[t] = v1
        g = 0.0
    return out


def _unit_circle(freqs: Sequence[float] | np.ndarray) -> np.ndarray:
    """``z^-1 = exp(-2 pi i f)`` for frequencies in cycles per step."""
    return np.exp(-2j * np.pi * np.asarray(freqs, dtype=np.float64))


def second_order_frequency_response(a1: Number, a2: Number, c: Number,
                                    freqs: Sequence[float] | np.ndarray) -> np.ndarray:
    """``|H(e^{2 pi i f})|`` with ``H(z) = c / (1 - a1 z^-1 - a2 z^-2)``."""
    zi = _unit_circle(freqs)
    return np.abs(float(c) / (1 - float(a1) * zi - float(a2) * zi * zi))


def latent_frequency_response(lr: Number, momentum: Number, weight_decay: Number, decoupled: bool,
                              freqs: Sequence[float] | np.ndarray) -> np.ndarray:
    """Gain of latent SGD from gradient to ``-v_scale * w`` at frequencies ``freqs`` (cycles/step)."""
    eq = latent_to_filter(lr, momentum, weight_decay, decoupled)
    return second_order_frequency_response(eq.a1, eq.a2, eq.c, freqs)


def filter_frequency_response(alpha: Number, gamma: Number,
                              freqs: Sequence[float] | np.ndarray) -> np.ndarray:
    """Gain of CEMA, ``alpha gamma / ((1 - (1-alpha) z^-1)(1 - (1-gamma) z^-1))``."""
    alpha, gamma = float(check_rate("alpha", alpha)), float(check_rate("gamma", gamma))
    zi = _unit_circle(freqs)
    return np.abs(alpha * gamma / ((1 - (1 - alpha) * zi) * (1 - (1 - gamma) * zi)))
