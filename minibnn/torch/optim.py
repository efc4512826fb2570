"""minibnn's filter optimisers as ``torch.optim.Optimizer`` subclasses, on +-1 parameters.

Each class runs the stages of its ``minibnn.optim`` chain (``minibnn/optim/optimizers.py``),
written with the filters below, which keep the operation order of ``minibnn/optim/filters.py``
element by element:

    class         minibnn chain                                       torch state per parameter
    CEMA          cema:   m=ema(gamma), v=ema(alpha), b=flip(0, tie)    count, m, v
    Bop           bop:    m=ema(gamma), b=flip(tau, "positive")         count, m
    Bop2nd        bop2nd: rms=normalize_by_rms(...), b=flip(tau, ...)   count, m, v
    SecondOrder   second_order: v=iir2(a1, a2, c), b=flip(0)            count, v1, v2

``NAMED`` and ``from_name`` also give latent ``sgd``'s twin, PyTorch's own SGD
(``minibnn.torch.latent.SGD``: not bit for bit, see there); the converters take it too.

``count`` is the number of updates made, the count minibnn's schedules are evaluated at (a
rate may be a number or a ``minibnn.optim.schedules`` schedule, as in minibnn).  A parameter
without a gradient is skipped and its count stays, PyTorch's rule.  ``minibnn_state`` and
``load_minibnn_state`` convert to and from a minibnn chain state (``opt.init(params)``, or one
group of a checkpoint's ``opt_state``): each class's ``BUFFERS`` says which minibnn stage and
buffer each torch state key is.

Bits.  Given the same gradients, the states and binary weights equal minibnn's bit for bit:
every stage is the same sequence of single-rounding tensor operations, a Python scalar
entering as the tensor's dtype on both sides (NumPy's weak scalars, PyTorch's ``opmath``), in
float64 and float32.  One exception: PyTorch's CPU ``sqrt`` is not correctly rounded (1 ulp
off on about 1 % of float64 inputs; NumPy's and CUDA's are exact), which only Bop2nd uses.
Its float32 statistic takes the root in float64 and rounds once, which is exact; its float64
statistic can differ by 1 ulp on CPU, so b can differ only where ``y b`` is within 1 ulp of
tau (its m, v states are still bitwise).  The steps use device-agnostic tensor operations
only (CPU and CUDA alike); a scalar divisor is made a tensor on the parameter's device,
because CUDA divides by a host scalar as a multiplication by its reciprocal.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from minibnn import optim as mo
from minibnn.errors import MinibnnError, ShapeError
from minibnn.optim.base import Transform
from minibnn.optim.checks import check_keys
from minibnn.optim.schedules import Schedule, as_schedule
from minibnn.torch.latent import SGD
from minibnn.torch.params import add_checked_group, check_owned, closure_loss

Tensor = torch.Tensor


# ------------------------------------------------------------------ the filters, in place
def ema_(s: Tensor, x: Tensor, rate: float) -> Tensor:
    """``s = (1 - r) s + r x`` in place (``filters.ema``; also both moments of
    ``filters.normalize_by_rms``)."""
    return s.mul_(1.0 - rate).add_(x * rate)


def _sqrt(x: Tensor) -> Tensor:
    """``sqrt(x)``, correctly rounded below float64: the float64 root rounded once is exact
    for float32 (53 >= 2 * 24 + 2 bits), where PyTorch's CPU float32 root is not."""
    if x.dtype == torch.float64:
        return torch.sqrt(x)
    return torch.sqrt(x.to(torch.float64)).to(x.dtype)


def rms_statistic(m: Tensor, v: Tensor, gamma: float, sigma: float, eps: float,
                  t: int | None) -> Tensor:
    """``filters.normalize_by_rms``'s output: ``m / (sqrt(v) + eps)``, or with Adam's
    corrections at update ``t``, ``(m / (1-(1-gamma)^t)) / (sqrt(v / (1-(1-sigma)^t)) + eps)``."""
    if t is None:
        return m / (_sqrt(v) + eps)
    c1, c2 = 1.0 - (1.0 - gamma) ** t, 1.0 - (1.0 - sigma) ** t
    # divisors as tensors on m's device: true division there, as NumPy divides (see header)
    return (m / m.new_tensor(c1)) / (_sqrt(v / v.new_tensor(c2)) + eps)


def iir2(v1: Tensor, v2: Tensor, x: Tensor, a1: float, a2: float, c: float) -> Tensor:
    """``v_t = a1 v_{t-1} + a2 v_{t-2} + c x_t`` (``filters.iir2``, same grouping)."""
    return v1 * a1 + v2 * a2 + x * c


def flip_(b: Tensor, x: Tensor, threshold: float, tie: str) -> Tensor:
    """``b = -b`` where ``x b > threshold``, in place (``filters.flip``); ``tie="positive"``
    sets ``b = +1`` where ``x b == threshold`` exactly, ``"keep"`` keeps b there."""
    xb = x * b
    new = torch.where(xb > threshold, -b, b)
    if tie == "positive":
        new = torch.where(xb == threshold, torch.ones_like(b), new)
    return b.copy_(new)


def _first(value: float | Schedule) -> float:
    """A number option: minibnn takes a schedule's first value for these (``hyperparameter``)."""
    return as_schedule(value)(0)


# ------------------------------------------------------------------------------ the base
class FilterOptimizer(torch.optim.Optimizer):
    """A minibnn filter optimiser on +-1 tensors; subclasses name their stages and update.

    ``STAGES``: the minibnn chain's stages (its state's keys), ``COUNTED``: those whose state
    has a ``count``, ``BUFFERS``: torch state key -> (minibnn stage, buffer).
    """

    STAGES: tuple[str, ...] = ()
    COUNTED: tuple[str, ...] = ()
    BUFFERS: dict[str, tuple[str, str]] = {}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        add_checked_group(super().add_param_group, self.param_groups, self._checked_twin,
                          param_group)

    def _checked_twin(self, group: Mapping[str, Any]) -> Transform:
        """``minibnn_twin(group)``, after checking that the parameters are real floating point
        (a sign flip means nothing on complex ones, which failed deep inside a step)."""
        for i, p in enumerate(group["params"]):
            if not p.is_floating_point():
                raise MinibnnError(f"{type(self).__name__}: parameter #{i} of the group is "
                                   f"{str(p.dtype).removeprefix('torch.')}; a filter optimiser "
                                   "takes real floating-point parameters")
        return self.minibnn_twin(group)

    @staticmethod
    def minibnn_twin(group: Mapping[str, Any]) -> Transform:
        """The minibnn optimiser with this group's hyperparameters."""
        raise NotImplementedError

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any], group: dict[str, Any]
               ) -> None:
        """One update of parameter ``p`` (in place) from gradient ``g``, at ``state["count"]``."""
        raise NotImplementedError

    def state_of(self, p: Tensor) -> dict[str, Any]:
        """``p``'s state, zero buffers (minibnn's ``init``) before its first update; a state
        that ``load_state_dict`` brought in must hold every buffer, shaped like ``p``."""
        state = self.state[p]
        if not state:
            state["count"] = 0
            for key in self.BUFFERS:
                state[key] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        for key in ("count", *self.BUFFERS):
            buf = state.get(key)
            shape = None if buf is None or key == "count" else tuple(buf.shape)
            if buf is None or (key != "count" and shape != tuple(p.shape)):
                found = "missing" if buf is None else f"of shape {shape}"
                raise MinibnnError(f"{type(self).__name__}: the state's {key!r} of a parameter "
                                   f"of shape {tuple(p.shape)} is {found} (a state_dict of "
                                   "another model or optimiser?)")
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient; returns ``closure()``'s loss."""
        loss = closure_loss(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise MinibnnError(f"{type(self).__name__} does not take sparse gradients")
                state = self.state_of(p)
                self.update(p, p.grad, state, group)
                state["count"] += 1
        return loss


def _rate(group: Mapping[str, Any], key: str, count: int) -> float:
    """Rate ``key`` at update ``count`` (a number, or a schedule evaluated at the count)."""
    return as_schedule(group[key])(count)


# ------------------------------------------------------------------------- the optimisers
class CEMA(FilterOptimizer):
    """CEMA, the paper's two-stage EMA filter on binary weights: ``minibnn.optim.cema``.

        m_t = (1 - gamma_t) m_{t-1} + gamma_t g_t
        v_t = (1 - alpha_t) v_{t-1} + alpha_t m_t
        b_t = -b_{t-1} where v_t b_{t-1} > 0 (``tie``: "keep" keeps b where v_t == 0,
              "positive" sets b = +1 there)

    ``alpha``, ``gamma``: numbers or minibnn schedules, evaluated at ``count``.  State per
    parameter: ``count`` (int, updates made), ``m`` (minibnn's ``state["m"]["s"][name]``),
    ``v`` (``state["v"]["s"][name]``); ``state["m"]["count"]`` and ``state["v"]["count"]``
    are both ``count``.  Start from a latent initialisation with ``load_minibnn_state`` and
    ``minibnn.theory.matched_initial_state``.  Defaults: minibnn's.
    """

    STAGES, COUNTED = ("m", "v", "b"), ("m", "v")
    BUFFERS = {"m": ("m", "s"), "v": ("v", "s")}

    def __init__(self, params: Iterable[Any], alpha: float | Schedule = 1e-3,
                 gamma: float | Schedule = 0.1, tie: str = "keep"):
        super().__init__(params, dict(alpha=alpha, gamma=gamma, tie=tie))

    @staticmethod
    def minibnn_twin(group: Mapping[str, Any]) -> Transform:
        return mo.cema(group["alpha"], group["gamma"], tie=group["tie"])

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any], group: dict[str, Any]
               ) -> None:
        count = state["count"]
        m = ema_(state["m"], g, _rate(group, "gamma", count))
        v = ema_(state["v"], m, _rate(group, "alpha", count))
        flip_(p, v, 0.0, group["tie"])


class Bop(FilterOptimizer):
    """Bop (Helwegen et al. 2019): ``minibnn.optim.bop``.

        m_t = (1 - gamma_t) m_{t-1} + gamma_t g_t
        b_t = -b_{t-1} where m_t b_{t-1} > tau;  b_t = +1 where m_t b_{t-1} == tau (larq's tie)

    ``gamma``: a number or a schedule; ``threshold`` a number.  State per parameter:
    ``count`` (``state["m"]["count"]``) and ``m`` (``state["m"]["s"][name]``).  Defaults:
    minibnn's (larq's).
    """

    STAGES, COUNTED = ("m", "b"), ("m",)
    BUFFERS = {"m": ("m", "s")}

    def __init__(self, params: Iterable[Any], threshold: float = 1e-8,
                 gamma: float | Schedule = 1e-4):
        super().__init__(params, dict(threshold=threshold, gamma=gamma))

    @staticmethod
    def minibnn_twin(group: Mapping[str, Any]) -> Transform:
        return mo.bop(group["threshold"], group["gamma"])

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any], group: dict[str, Any]
               ) -> None:
        m = ema_(state["m"], g, _rate(group, "gamma", state["count"]))
        flip_(p, m, _first(group["threshold"]), "positive")


class Bop2nd(FilterOptimizer):
    """Bop2ndOrder (Suarez-Ramirez et al. 2021): ``minibnn.optim.bop2nd``; both variants.

        m_t = (1 - gamma) m_{t-1} + gamma g_t,   v_t = (1 - sigma) v_{t-1} + sigma g_t^2
        y_t = m_t / (sqrt(v_t) + eps)            (``bias_correction=True``: Adam's corrections,
                                                  minibnn's ``bop2nd_corrected``)
        b_t = -b_{t-1} where y_t b_{t-1} > tau;  b_t = +1 where y_t b_{t-1} == tau

    All options are numbers (minibnn takes a schedule's first value).  State per parameter:
    ``count`` (``state["rms"]["count"]``), ``m`` (``state["rms"]["m"][name]``), ``v``
    (``state["rms"]["v"][name]``).  Float64 on CPU: see the module header (sqrt).
    """

    STAGES, COUNTED = ("rms", "b"), ("rms",)
    BUFFERS = {"m": ("rms", "m"), "v": ("rms", "v")}

    def __init__(self, params: Iterable[Any], threshold: float = 1e-6, gamma: float = 1e-6,
                 sigma: float = 1e-2, eps: float = 1e-10, bias_correction: bool = False):
        super().__init__(params, dict(threshold=threshold, gamma=gamma, sigma=sigma, eps=eps,
                                      bias_correction=bias_correction))

    @staticmethod
    def minibnn_twin(group: Mapping[str, Any]) -> Transform:
        return mo.bop2nd(group["threshold"], group["gamma"], group["sigma"], group["eps"],
                         group["bias_correction"])

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any], group: dict[str, Any]
               ) -> None:
        gamma, sigma = _first(group["gamma"]), _first(group["sigma"])
        m = ema_(state["m"], g, gamma)
        v = ema_(state["v"], g * g, sigma)
        t = state["count"] + 1 if group["bias_correction"] else None
        y = rms_statistic(m, v, gamma, sigma, _first(group["eps"]), t)
        flip_(p, y, _first(group["threshold"]), "positive")


class SecondOrder(FilterOptimizer):
    """The general second-order filter: ``minibnn.optim.second_order``.

        v_t = a1 v_{t-1} + a2 v_{t-2} + c g_t;   b_t = -b_{t-1} where v_t b_{t-1} > 0 (keep on
        ties)

    With ``minibnn.theory.latent_to_filter``'s ``(a1, a2, c)`` it reproduces latent SGD, coupled
    or decoupled (docs/theory.md P4).  Options are numbers.  State per parameter: ``count``
    (not part of minibnn's state: iir2 keeps none), ``v1`` (``state["v"]["v1"][name]``,
    v_{t-1}) and ``v2`` (``state["v"]["v2"][name]``, v_{t-2}).
    """

    STAGES, COUNTED = ("v", "b"), ()
    BUFFERS = {"v1": ("v", "v1"), "v2": ("v", "v2")}

    def __init__(self, params: Iterable[Any], a1: float, a2: float, c: float):
        super().__init__(params, dict(a1=a1, a2=a2, c=c))

    @staticmethod
    def minibnn_twin(group: Mapping[str, Any]) -> Transform:
        return mo.second_order(group["a1"], group["a2"], group["c"])

    def update(self, p: Tensor, g: Tensor, state: dict[str, Any], group: dict[str, Any]
               ) -> None:
        v = iir2(state["v1"], state["v2"], g, _first(group["a1"]), _first(group["a2"]),
                 _first(group["c"]))
        state["v2"], state["v1"] = state["v1"], v
        flip_(p, v, 0.0, "keep")


#: minibnn optimiser name (the trainer's, and ``second_order``) -> (class, keywords it fixes):
#: the filter optimisers here, and latent sgd as PyTorch's own SGD (``minibnn.torch.latent``)
NAMED: dict[str, tuple[type[FilterOptimizer] | type[SGD], dict[str, Any]]] = {
    "cema": (CEMA, {}), "bop": (Bop, {}), "bop2nd": (Bop2nd, {}),
    "bop2nd_corrected": (Bop2nd, {"bias_correction": True}), "second_order": (SecondOrder, {}),
    "sgd": (SGD, {}),
}


def from_name(name: str, params: Iterable[Any], **kwargs: Any) -> FilterOptimizer | SGD:
    """The PyTorch twin of minibnn optimiser ``name`` with minibnn's keywords (``alpha``...)."""
    if name not in NAMED:
        raise MinibnnError(f"no PyTorch twin of the optimiser {name!r}; expected one of "
                           f"{', '.join(NAMED)}")
    cls, fixed = NAMED[name]
    return cls(params, **{**kwargs, **fixed})


# ------------------------------------------------------------------------- the converters
def minibnn_state(optimizer: FilterOptimizer | SGD, params: Mapping[str, Tensor]
                  ) -> dict[str, Any]:
    """The minibnn chain state (NumPy arrays) of the named parameters ``params`` (minibnn name
    -> torch parameter): ``{stage: {"count": ..., buffer: {name: array}}}``, as minibnn's
    ``init`` lays it out.  A parameter never updated has zero buffers.  (``SGD``: its own
    ``minibnn_state``.)"""
    if isinstance(optimizer, SGD):
        return optimizer.minibnn_state(params)
    check_owned(optimizer, params)
    counts = {optimizer.state_of(p)["count"] for p in params.values()}
    if len(counts) > 1:
        raise MinibnnError(f"the parameters have made different numbers of updates "
                           f"{sorted(counts)}; a minibnn state has one count per stage")
    count = counts.pop() if counts else 0
    out: dict[str, Any] = {stage: {} for stage in optimizer.STAGES}
    for stage in optimizer.COUNTED:
        out[stage]["count"] = np.asarray(count, dtype=np.int64)
    for key, (stage, buffer) in optimizer.BUFFERS.items():
        out[stage][buffer] = {name: optimizer.state_of(p)[key].detach().cpu().numpy().copy()
                              for name, p in params.items()}
    return out


def load_minibnn_state(optimizer: FilterOptimizer | SGD, state: Mapping[str, Any],
                       params: Mapping[str, Tensor]) -> None:
    """Set the state of the named parameters ``params`` (minibnn name -> torch parameter)
    from a minibnn chain state of the twin optimiser (``opt.init(...)``, or a checkpoint
    group's ``opt_state``); buffers take each parameter's dtype and device.  (``SGD``: its
    own ``load_minibnn_state``.)"""
    if isinstance(optimizer, SGD):
        return optimizer.load_minibnn_state(state, params)
    check_owned(optimizer, params)
    check_keys(state, optimizer.STAGES, "stages")
    counts = {int(state[stage]["count"]) for stage in optimizer.COUNTED}
    if len(counts) > 1:
        raise MinibnnError(f"the state's stages have different counts {sorted(counts)}")
    count = counts.pop() if counts else 0
    for name, p in params.items():
        entry: dict[str, Any] = {"count": count}
        for key, (stage, buffer) in optimizer.BUFFERS.items():
            buffers = state[stage].get(buffer)
            if not isinstance(buffers, Mapping) or name not in buffers:
                raise MinibnnError(f"optimizer state {stage}/{buffer} has no entry for {name!r}")
            raw = buffers[name]      # NumPy (copied: it may be read-only), CuPy or torch
            value = torch.as_tensor(raw.copy() if isinstance(raw, np.ndarray) else raw)
            value = value.to(device=p.device, dtype=p.dtype)
            if tuple(value.shape) != tuple(p.shape):
                raise ShapeError(f"optimizer state {stage}/{buffer}[{name!r}] has shape "
                                 f"{tuple(value.shape)}, the parameter has {tuple(p.shape)}")
            entry[key] = value.clone(memory_format=torch.contiguous_format)
        optimizer.state[p] = entry
