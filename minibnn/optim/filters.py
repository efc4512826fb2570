"""Small gradient filters: the building blocks every minibnn optimiser is chained from.

Each filter maps an input stream ``x_t`` (a dict of arrays) to an output stream, keeping its
own state.  Rates and learning rates accept a number or a schedule; a filter that uses a
schedule keeps ``count`` (updates made so far) in its state.

    ema(r):                  s_t = (1 - r_t) s_{t-1} + r_t x_t            (an EMA; r = 1 is the identity)
    trace(mu, dampening):    m_t = mu m_{t-1} + (1 - dampening) x_t       (PyTorch momentum; m_1 = x_1)
    add_decayed_weights(l):  y_t = x_t + l * w_{t-1}                      (weight decay's gradient)
    scale_by_learning_rate:  y_t = -eta_t x_t
    scale_by_adam:           y_t = m_hat / (sqrt(v_hat) + eps)            (Adam's moments)
    normalize_by_rms:        y_t = m_t / (sqrt(s_t) + eps)                (Bop2ndOrder's statistic)
    iir2(a1, a2, c):         v_t = a1 v_{t-1} + a2 v_{t-2} + c x_t        (general 2nd-order filter)

and two terminals whose output is the new parameters:

    apply_updates():         w_t = w_{t-1} + y_t                           (latent weights)
    flip(tau, tie):          b_t = -b_{t-1} where x_t * b_{t-1} > tau      (binary weights)

Filters that a fused kernel step replaces keep the operation order of that kernel (see
``minibnn.kernels.reference``), so the two give the same bits.
"""
from __future__ import annotations

import numpy as np

from minibnn.errors import MinibnnError
from minibnn.optim.base import Params, State, Transform, array_module, copy_tree, zeros_like_tree
from minibnn.optim.checks import (FINITE, MOMENTUM, NONNEGATIVE, RATE, UNIT,
                                  hyperparameter)
from minibnn.optim.schedules import Schedule, as_schedule


def step_count(state: State) -> int:
    """Updates a filter has made so far (its schedules are evaluated at this count)."""
    if "count" not in state:
        raise MinibnnError(f"optimizer state has no step count: a stage's state has only "
                           f"{sorted(state)} (pass the state from this optimizer's init)")
    return int(state["count"])


def step_count_after(state: State) -> np.ndarray:
    """The count to store after one more update (a 0-d int64 array, so it checkpoints)."""
    return np.asarray(step_count(state) + 1, dtype=np.int64)


def _initial_buffer(params: Params, init: Params | None, what: str) -> Params:
    """Zero buffers, or copies of ``init`` checked against the parameters' shapes."""
    if init is None:
        return zeros_like_tree(params)
    buffers = {}
    for name, p in params.items():
        if name not in init:
            buffers[name] = zeros_like_tree({name: p})[name]
            continue
        value = init[name]
        if tuple(value.shape) != tuple(p.shape):
            raise MinibnnError(f"initial {what} for {name!r} has shape {tuple(value.shape)}, "
                               f"parameter has {tuple(p.shape)}")
        # same array module (NumPy or CuPy) and dtype as the parameter
        buffers[name] = array_module({name: p}).array(value, dtype=p.dtype, copy=True, order="C")
    return buffers


def ema(rate: float | Schedule, init: Params | None = None) -> Transform:
    """Exponential moving average ``s_t = (1 - r_t) s_{t-1} + r_t x_t``, zero buffers by default."""
    hyperparameter("ema", "rate", rate, RATE)
    schedule = as_schedule(rate)

    def init_fn(params: Params) -> State:
        return {"count": np.asarray(0, dtype=np.int64), "s": _initial_buffer(params, init, "EMA state")}

    def update(stream: Params, state: State, params: Params) -> tuple[Params, State]:
        r = schedule(step_count(state))
        s = {k: (1.0 - r) * state["s"][k] + r * x for k, x in stream.items()}
        return s, {"count": step_count_after(state), "s": s}

    return Transform(init_fn, update)


def trace(decay: float, dampening: float = 0.0) -> Transform:
    """PyTorch momentum: ``m_1 = x_1``, then ``m_t = mu m_{t-1} + (1 - dampening) x_t``.

    With ``decay == 0`` the filter is the identity and keeps no buffer: its state is only
    ``{"count"}`` (``{"count", "m"}`` otherwise).
    """
    decay = hyperparameter("trace", "decay", decay, MOMENTUM)
    dampening = hyperparameter("trace", "dampening", dampening, UNIT)

    def init_fn(params: Params) -> State:
        if decay == 0.0:
            return {"count": np.asarray(0, dtype=np.int64)}
        return {"count": np.asarray(0, dtype=np.int64), "m": zeros_like_tree(params)}

    def update(stream: Params, state: State, params: Params) -> tuple[Params, State]:
        if decay == 0.0:
            return stream, {"count": step_count_after(state)}
        if step_count(state) == 0:
            # PyTorch initialises the buffer with the first gradient, undamped.
            m = copy_tree(stream)
        else:
            m = {k: decay * state["m"][k] + (1.0 - dampening) * x for k, x in stream.items()}
        return m, {"count": step_count_after(state), "m": m}

    return Transform(init_fn, update)


def add_decayed_weights(weight_decay: float) -> Transform:
    """``y = x + lambda * w``: the gradient of ``lambda/2 ||w||^2`` added to the stream."""
    weight_decay = hyperparameter("add_decayed_weights", "weight_decay", weight_decay,
                                  NONNEGATIVE)

    def update(stream: Params, state: State, params: Params) -> tuple[Params, State]:
        if weight_decay == 0.0:
            return stream, state
        return {k: x + weight_decay * params[k] for k, x in stream.items()}, state

    return Transform(lambda params: {}, update)


def scale_by_learning_rate(lr: float | Schedule) -> Transform:
    """``y_t = -eta_t x_t`` (the step of gradient descent)."""
    hyperparameter("scale_by_learning_rate", "lr", lr, NONNEGATIVE)
    schedule = as_schedule(lr)

    def init_fn(params: Params) -> State:
        return {"count": np.asarray(0, dtype=np.int64)}

    def update(stream: Params, state: State, params: Params) -> tuple[Params, State]:
        eta = schedule(step_count(state))
        return {k: -eta * x for k, x in stream.items()}, {"count": step_count_after(state)}

    return Transform(init_fn, update)


def scale_by_schedule(schedule: float | Schedule) -> Transform:
    """``y_t = s(t) x_t`` for an arbitrary schedule (no sign change)."""
    hyperparameter("scale_by_schedule", "schedule", schedule, FINITE)
    sched = as_schedule(schedule)

    def init_fn(params: Params) -> State:
        return {"count": np.asarray(0, dtype=np.int64)}

    def update(stream: Params, state: State, params: Params) -> tuple[Params, State]:
        s = sched(step_count(state))
        return {k: s * x for k, x in stream.items()}, {"count": step_count_after(state)}

    return Transform(init_fn, update)


def _bias_corrected_moments(stream: Params, state: State, b1: float, b2: float
                            ) -> tuple[Params, Params, float, float]:
    """Adam-style moments ``m = b1 m + (1-b1) x``, ``v = b2 v + (1-b2) x^2`` and corrections."""
    t = step_count(state) + 1
    m = {k: b1 * state["m"][k] + (1.0 - b1) * x for k, x in stream.items()}
    v = {k: b2 * state["v"][k] + (1.0 - b2) * (x * x) for k, x in stream.items()}
    return m, v, 1.0 - b1 ** t, 1.0 - b2 ** t


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Transform:
    """Adam's direction ``(m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`` (PyTorch's formula)."""
    b1 = hyperparameter("scale_by_adam", "b1", b1, MOMENTUM)
    b2 = hyperparameter("scale_by_adam", "b2", b2, MOMENTUM)
    eps = hyperparameter("scale_by_adam", "eps", eps, NONNEGATIVE)

    def init_fn(params: Params) -> State:
        return {"count": np.asarray(0, dtype=np.int64), "m": zeros_like_tree(params),
                "v": zeros_like_tree(params)}

    def update(stream: Params, state: State, params: Params) -> tuple[Params, State]:
        m, v, c1, c2 = _bias_corrected_moments(stream, state, b1, b2)
        xp = array_module(stream)
        out = {k: (m[k] / c1) / (xp.sqrt(v[k] / c2) + eps) for k in stream}
        return out, {"count": step_count_after(state), "m": m, "v": v}

    return Transform(init_fn, update)


def normalize_by_rms(gamma: float, sigma: float, eps: float = 1e-10,
                     bias_correction: bool = False) -> Transform:
    """Bop2ndOrder's statistic: the first moment over the root of the second.

    ``m_t = (1-gamma) m + gamma x``, ``s_t = (1-sigma) s + sigma x^2`` (zero buffers), then
    ``y_t = m_t / (sqrt(s_t) + eps)``; with ``bias_correction`` Adam's corrections,
    ``y_t = (m_t / (1-(1-gamma)^t)) / (sqrt(s_t / (1-(1-sigma)^t)) + eps)``.  State:
    ``{"count", "m", "v"}`` (``v`` holds ``s``).
    """
    gamma = hyperparameter("normalize_by_rms", "gamma", gamma, RATE)
    sigma = hyperparameter("normalize_by_rms", "sigma", sigma, RATE)
    eps = hyperparameter("normalize_by_rms", "eps", eps, NONNEGATIVE)

    def init_fn(params: Params) -> State:
        return {"count": np.asarray(0, dtype=np.int64), "m": zeros_like_tree(params),
                "v": zeros_like_tree(params)}

    def update(stream: Params, state: State, params: Params) -> tuple[Params, State]:
        m = {k: (1.0 - gamma) * state["m"][k] + gamma * x for k, x in stream.items()}
        v = {k: (1.0 - sigma) * state["v"][k] + sigma * (x * x) for k, x in stream.items()}
        xp = array_module(stream)
        if bias_correction:
            t = step_count(state) + 1
            c1, c2 = 1.0 - (1.0 - gamma) ** t, 1.0 - (1.0 - sigma) ** t
            out = {k: (m[k] / c1) / (xp.sqrt(v[k] / c2) + eps) for k in stream}
        else:
            out = {k: m[k] / (xp.sqrt(v[k]) + eps) for k in stream}
        return out, {"count": step_count_after(state), "m": m, "v": v}

    return Transform(init_fn, update)


def iir2(a1: float, a2: float, c: float, init: Params | None = None,
         init_previous: Params | None = None) -> Transform:
    """General second-order filter ``v_t = a1 v_{t-1} + a2 v_{t-2} + c x_t`` (docs/theory.md P4)."""
    a1, a2, c = (hyperparameter("iir2", name, value, FINITE)
                 for name, value in (("a1", a1), ("a2", a2), ("c", c)))

    def init_fn(params: Params) -> State:
        return {"v1": _initial_buffer(params, init, "v_{t-1}"),
                "v2": _initial_buffer(params, init_previous, "v_{t-2}")}

    def update(stream: Params, state: State, params: Params) -> tuple[Params, State]:
        v = {k: a1 * state["v1"][k] + a2 * state["v2"][k] + c * x for k, x in stream.items()}
        return v, {"v1": v, "v2": state["v1"]}

    return Transform(init_fn, update)


def apply_updates() -> Transform:
    """Terminal for latent weights: ``w_t = w_{t-1} + y_t``; the output stream is ``w_t``."""

    def update(stream: Params, state: State, params: Params) -> tuple[Params, State]:
        return {k: params[k] + y for k, y in stream.items()}, state

    return Transform(lambda params: {}, update)


TIE_RULES = ("keep", "positive")


def flip(threshold: float = 0.0, tie: str = "keep") -> Transform:
    """Terminal for binary weights: ``b_t = -b_{t-1}`` where ``x_t * b_{t-1} > threshold``.

    With threshold 0 this is ``b_t = -sign(x_t)`` wherever ``x_t != 0``.  ``tie`` says what
    happens where ``x_t * b_{t-1} == threshold`` exactly:

      * ``"keep"`` keeps ``b_{t-1}`` (the CEMA paper's code);
      * ``"positive"`` sets ``b_t = +1``: larq's Bop, ``b = lq.math.sign(-sign(b*m - tau) * b)``
        with ``lq.math.sign(0) = +1`` (``larq/optimizers.py``, ``Bop._resource_apply_dense``).
        At threshold 0 this is ``b = +1`` where ``x_t == 0``, i.e. ``b = sign(-x)`` with
        minibnn's ``sign(0) = +1``.

    The kernels' ``cema_update``/``bop_update`` implement the same two rules.
    """
    if tie not in TIE_RULES:
        raise MinibnnError(f"unknown tie rule {tie!r}; expected one of {', '.join(TIE_RULES)}")
    threshold = hyperparameter("flip", "threshold", threshold, NONNEGATIVE)

    def update(stream: Params, state: State, params: Params) -> tuple[Params, State]:
        xp = array_module(params)
        new = {}
        for k, x in stream.items():
            b = params[k]
            xb = x * b
            flipped = xp.where(xb > threshold, -b, b)
            if tie == "positive":
                flipped = xp.where(xb == threshold, xp.ones_like(b), flipped)
            new[k] = flipped
        return new, state

    return Transform(lambda params: {}, update)


