"""Reference recursions of docs/theory.md, written once and run in two arithmetics.

Every function below is plain arithmetic on its inputs: called with ``fractions.Fraction``
values it is exact (the strongest form of P1-P7, compared with ``==``); called with Python
floats it is the float64 twin with *the same expression order* (Python's ``float`` is IEEE
binary64).  Hyperparameters may be numbers or per-step sequences (``x[t-1]`` is used at step
``t``, so a schedule's first value drives the first update, as in ``minibnn.optim``).

Tie rule, shared by both views of CEMA and latent SGD (docs/theory.md, "Ties"): the binary
weight is

    latent:  b_t = sign(w_t) where w_t != 0, else b_{t-1}
    filter:  b_t = -sign(v_t) where v_t != 0, else b_{t-1}   (i.e. flip where v_t b_{t-1} > 0)

minibnn's stateless ``sign`` (``nn.functional.sign_forward``) has ``sign(0) = +1`` instead;
the latent side here uses the keep rule so that exact ties (``w_t == 0``, which Fractions hit
often) are compared like with like.  Bop and Bop2ndOrder use larq's rule instead
(``flip_positive``: ``b = +1`` where ``x * b == threshold``), as ``minibnn.optim.bop`` does.

A run is returned as ``Run(state, b)``: ``state[t]`` is the signed state after step t (``w``
for latent optimisers, ``v`` for filters) and ``b[t]`` the binary weight, t = 0..T.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

Number = Any
Stream = Sequence[Number]


@dataclass(frozen=True)
class Run:
    """States and binary weights at t = 0..T (index 0 is the initial value)."""

    state: list
    b: list


def sign_keep(x: Number, b_prev: int) -> int:
    """``sign(x)`` where ``x != 0``; the previous binary weight on an exact tie."""
    if x > 0:
        return 1
    if x < 0:
        return -1
    return b_prev


def initial_sign(w0: Number, b0: int) -> int:
    """``b_0 = sign(w_0)``, or the given ``b0`` when ``w_0 == 0``."""
    return sign_keep(w0, b0)


def per_step(x: Number | Stream, steps: int) -> list:
    """A hyperparameter as a list of per-step values (a number is held constant)."""
    if isinstance(x, (list, tuple)):
        if len(x) < steps:
            raise ValueError(f"schedule has {len(x)} values for {steps} steps")
        return list(x[:steps])
    return [x] * steps


def latent_sgd(grads: Stream, lr: Number | Stream, momentum: Number | Stream,
               weight_decay: Number, decoupled: bool, w0: Number, b0: int = 1,
               dampening: Number = 0, clip: Number | None = None,
               ste_mask: Number | None = None) -> Run:
    """PyTorch SGD on one latent weight; ``decoupled`` picks (B) (SGDW) over (A) of
    docs/theory.md.

    (A): d = g + lam w;  m = mu m + (1 - dampening) d;  w = w - eta m
    (B): m = mu m + (1 - dampening) g;  w = (1 - eta lam) w - eta m
    PyTorch starts the buffer with the first direction, undamped (m_1 = d_1), and with
    momentum 0 keeps no buffer at all (m = d, dampening ignored).
    ``clip``: w is clipped to [-clip, clip] after each step (latent clipping).
    ``ste_mask``: the gradient is zeroed where |w_{t-1}| > ste_mask (the hardtanh STE).
    """
    steps = len(grads)
    eta, mu = per_step(lr, steps), per_step(momentum, steps)
    lam = weight_decay
    w, m, b = w0, 0, initial_sign(w0, b0)
    ws, bs = [w], [b]
    for t, g in enumerate(grads):
        if ste_mask is not None and abs(w) > ste_mask:
            g = 0 * g
        d = g if decoupled else g + lam * w
        m = d if t == 0 or mu[t] == 0 else mu[t] * m + (1 - dampening) * d
        if decoupled:
            w = (1 - eta[t] * lam) * w - eta[t] * m
        else:
            w = w - eta[t] * m
        if clip is not None:
            w = min(max(w, -clip), clip)
        b = sign_keep(w, b)
        ws.append(w)
        bs.append(b)
    return Run(ws, bs)


def flip_keep(x: Number, b_prev: int, threshold: Number = 0) -> int:
    """The filter optimisers' terminal: ``b = -b_prev`` where ``x * b_prev > threshold``."""
    return -b_prev if x * b_prev > threshold else b_prev


def cema(grads: Stream, alpha: Number | Stream, gamma: Number, m0: Number = 0, v0: Number = 0,
         b0: int = 1) -> Run:
    """CEMA: m = (1-gamma) m + gamma g;  v = (1-alpha_t) v + alpha_t m;  flip where v b > 0."""
    a = per_step(alpha, len(grads))
    m, v, b = m0, v0, initial_sign(-v0, b0)
    vs, bs = [v], [b]
    for t, g in enumerate(grads):
        m = (1 - gamma) * m + gamma * g
        v = (1 - a[t]) * v + a[t] * m
        b = flip_keep(v, b)
        vs.append(v)
        bs.append(b)
    return Run(vs, bs)


def second_order(grads: Stream, a1: Number, a2: Number, c: Number, v0: Number = 0,
                 v_prev: Number = 0, b0: int = 1) -> Run:
    """General second-order filter v_t = a1 v_{t-1} + a2 v_{t-2} + c g_t; flip where v b > 0."""
    v1, v2, b = v0, v_prev, initial_sign(-v0, b0)
    vs, bs = [v1], [b]
    for g in grads:
        v1, v2 = a1 * v1 + a2 * v2 + c * g, v1
        b = flip_keep(v1, b)
        vs.append(v1)
        bs.append(b)
    return Run(vs, bs)


def flip_positive(x: Number, b_prev: int, threshold: Number = 0) -> int:
    """larq's Bop terminal: ``b = -b_prev`` where ``x * b_prev > threshold``, ``+1`` where
    ``x * b_prev == threshold`` exactly (``lq.math.sign(-sign(b*m - tau) * b)``, sign(0) = +1)."""
    score = x * b_prev
    if score == threshold:
        return 1
    return -b_prev if score > threshold else b_prev


def bop(grads: Stream, threshold: Number, gamma: Number, b0: int = 1) -> Run:
    """Bop: m = (1-gamma) m + gamma g; flip where m b > threshold, b = +1 where m b == threshold."""
    m, b = 0 * gamma, b0
    ms, bs = [m], [b]
    for g in grads:
        m = (1 - gamma) * m + gamma * g
        b = flip_positive(m, b, threshold)
        ms.append(m)
        bs.append(b)
    return Run(ms, bs)


def bop2nd(grads: Stream, threshold: float, gamma: float, sigma: float, eps: float = 1e-10,
           b0: int = 1, bias_correction: bool = False) -> Run:
    """Bop2ndOrder, float only: Bop (larq's tie) on ``y = m / (sqrt(s) + eps)``.

    m = (1-gamma) m + gamma g, s = (1-sigma) s + sigma g^2 from zero; ``bias_correction``
    divides m by 1 - (1-gamma)^t and s by 1 - (1-sigma)^t first (the authors' "unbiased").
    """
    m = s = 0.0
    b = b0
    xs, bs = [0.0], [b]
    for t, g in enumerate(grads, start=1):
        m = (1 - gamma) * m + gamma * g
        s = (1 - sigma) * s + sigma * (g * g)
        if bias_correction:
            x = (m / (1 - (1 - gamma) ** t)) / (math.sqrt(s / (1 - (1 - sigma) ** t)) + eps)
        else:
            x = m / (math.sqrt(s) + eps)
        b = flip_positive(x, b, threshold)
        xs.append(x)
        bs.append(b)
    return Run(xs, bs)
