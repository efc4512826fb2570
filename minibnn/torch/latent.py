"""PyTorch's own latent SGD as the twin of ``minibnn.optim.sgd``: ``SGD``.

    opt = SGD(latent_weights, lr=optim.cosine(0.1, 1000), momentum=0.9, weight_decay=5e-4,
              decoupled=True)

``SGD`` is ``torch.optim.SGD`` (momentum, dampening, coupled weight decay: PyTorch's own step,
unchanged) with minibnn's options on top:

    lr          a number or a ``minibnn.optim.schedules`` schedule of the update count: before
                each step a group's ``lr`` is set to ``schedule(updates made)``, the count
                minibnn evaluates its schedules at;
    decoupled   SGDW, minibnn's (B): before SGD's step ``w <- (1 - eta_t lam) w``
                (``w.mul_(1 - lr * wd)``, as verification/closed_loop_torch.py writes it), and
                SGD then runs without weight decay, so ``w_t = (1 - eta_t lam) w_{t-1} - eta_t m_t``.

A group keeps PyTorch's keys (``weight_decay`` is the coupled decay, 0 when decoupled) and two
more: ``schedule`` and ``decoupled_weight_decay`` (0 when coupled). State per parameter:
PyTorch's ``momentum_buffer`` (minibnn's ``state["momentum"]["m"][name]``; absent before the
first update, where both engines start the buffer with the first gradient, undamped) and
``step``, the updates made (minibnn's ``momentum`` and ``lr`` counts). ``minibnn_state`` and
``load_minibnn_state`` convert to and from minibnn's chain state.

Bits: close to minibnn's, not equal. PyTorch evaluates ``a + alpha b`` (``add(b, alpha=...)``:
the coupled decay ``g + lam w``, the damped momentum, the step ``w - eta m``) as one fused
multiply-add on a CPU that has one (measured, PyTorch 2.13 on AVX-512, float64, tensors of 1, 5
and 64 elements: every result that differs from ``a + fl(alpha b)`` is the correctly rounded
``a + alpha b``),
where minibnn rounds ``alpha b`` first; and its decoupled step is ``(1 - eta lam) w - eta m``
where minibnn computes ``w + (-eta)(m + lam w)``. So the latent weights agree to a few
roundings of the terms summed into them, their signs wherever a weight is not within that
rounding of zero. Bit for bit equal: the momentum buffer when nothing feeds ``w`` back into it
and there is no dampening (decoupled decay or none: ``mu m + g`` is one rounding on both
sides); the whole coupled run without dampening when lr and weight decay are powers of two
(every product exact, so fusing changes nothing) (both: tests/test_torch_optim.py); and,
within PyTorch itself, docs/theory.md P5's scale invariance (every operation commutes with
scaling by a power of two: the "torch" entry of ``python -m verification``'s P5).
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
from minibnn.torch.params import add_checked_group, check_owned, closure_loss

Tensor = torch.Tensor


class SGD(torch.optim.SGD):
    """``torch.optim.SGD`` with minibnn's ``sgd`` options (module header): ``lr`` a number or a
    schedule of the update count, ``decoupled`` weight decay ``w <- (1 - eta lam) w`` before
    the step.  Defaults: minibnn's (PyTorch's, with lr 0.01)."""

    #: minibnn's sgd chain: its state's stages, and those that count updates
    STAGES, COUNTED = ("weight_decay", "momentum", "lr", "w"), ("momentum", "lr")

    def __init__(self, params: Iterable[Any], lr: float | Schedule = 0.01,
                 momentum: float = 0.0, weight_decay: float = 0.0, decoupled: bool = False,
                 dampening: float = 0.0):
        mo.sgd(lr, momentum, weight_decay, decoupled, dampening)   # minibnn's checks, messages
        #: what a group given without its own lr / decay takes (``add_param_group``)
        self._group_defaults = dict(schedule=as_schedule(lr),
                                    decoupled_weight_decay=weight_decay if decoupled else 0.0)
        super().__init__(params, lr=as_schedule(lr)(0), momentum=momentum, dampening=dampening,
                         weight_decay=0.0 if decoupled else weight_decay)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """A group's own ``lr`` (a number or a schedule) becomes its ``schedule``."""
        if "lr" in param_group:
            param_group["schedule"] = as_schedule(param_group["lr"])
        for key, value in self._group_defaults.items():
            param_group.setdefault(key, value)
        param_group["lr"] = param_group["schedule"](0)
        add_checked_group(super().add_param_group, self.param_groups, self.minibnn_twin,
                          param_group)

    @staticmethod
    def minibnn_twin(group: Mapping[str, Any]) -> Transform:
        """The minibnn optimiser with this group's hyperparameters."""
        decoupled = group["decoupled_weight_decay"] != 0.0
        if decoupled and group["weight_decay"] != 0.0:
            raise MinibnnError("sgd: a group has both coupled weight_decay and "
                               "decoupled_weight_decay; give one")
        return mo.sgd(group["schedule"], group["momentum"],
                      group["weight_decay"] + group["decoupled_weight_decay"], decoupled,
                      group["dampening"])

    def updates_made(self, group: Mapping[str, Any]) -> int:
        """The update count of the group's parameters that have a gradient (one count: the
        group's ``lr`` is one number per step)."""
        counts = {self.state[p].get("step", 0) for p in group["params"] if p.grad is not None}
        if len(counts) > 1:
            raise MinibnnError(f"the parameters of one group have made different numbers of "
                               f"updates {sorted(counts)}; their lr schedule needs one count")
        return counts.pop() if counts else 0

    @staticmethod
    def decoupled_decay_(p: Tensor, eta: float, lam: float) -> None:
        """SGDW's decay before SGD's step, in place: ``w <- (1 - eta lam) w``."""
        p.mul_(1.0 - eta * lam)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Set each group's lr from its schedule, apply decoupled decay, then PyTorch's step."""
        loss = closure_loss(closure)
        stepped = []
        for group in self.param_groups:
            group["lr"] = eta = group["schedule"](self.updates_made(group))
            lam = group["decoupled_weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                stepped.append(p)
                if lam != 0.0:
                    self.decoupled_decay_(p, eta, lam)
        super().step()
        for p in stepped:
            self.state[p]["step"] = self.state[p].get("step", 0) + 1
        return loss

    # ------------------------------------------------------------ minibnn's state layout
    def _momentum_of(self, params: Mapping[str, Tensor]) -> float:
        """The momentum of the groups holding ``params`` (one minibnn chain: one value)."""
        check_owned(self, params)
        group_of = {id(p): g for g in self.param_groups for p in g["params"]}
        values = {group_of[id(p)]["momentum"] for p in params.values()}
        if len(values) > 1:
            raise MinibnnError(f"the parameters are in groups with different momenta "
                               f"{sorted(values)}; a minibnn sgd state has one")
        return values.pop() if values else 0.0

    def minibnn_state(self, params: Mapping[str, Tensor]) -> dict[str, Any]:
        """minibnn's sgd chain state (NumPy) of the named parameters: the counts, and ``m``
        (zeros before the first update) where momentum is on."""
        momentum = self._momentum_of(params)
        counts = {self.state[p].get("step", 0) for p in params.values()}
        if len(counts) > 1:
            raise MinibnnError(f"the parameters have made different numbers of updates "
                               f"{sorted(counts)}; a minibnn state has one count per stage")
        count = np.asarray(counts.pop() if counts else 0, dtype=np.int64)
        out: dict[str, Any] = {"weight_decay": {}, "momentum": {"count": count},
                               "lr": {"count": count.copy()}, "w": {}}
        if momentum != 0.0:
            out["momentum"]["m"] = {
                name: (self.state[p]["momentum_buffer"].detach().cpu().numpy().copy()
                       if "momentum_buffer" in self.state[p]
                       else torch.zeros_like(p).detach().cpu().numpy())
                for name, p in params.items()}
        return out

    def load_minibnn_state(self, state: Mapping[str, Any],
                           params: Mapping[str, Tensor]) -> None:
        """Set the named parameters' state from minibnn's sgd chain state (``opt.init``, or
        a checkpoint group's ``opt_state``); the buffer takes each parameter's dtype, device."""
        momentum = self._momentum_of(params)
        check_keys(state, self.STAGES, "stages")
        counts = {int(state[stage]["count"]) for stage in self.COUNTED}
        if len(counts) > 1:
            raise MinibnnError(f"the state's stages have different counts {sorted(counts)}")
        count = counts.pop()
        for name, p in params.items():
            entry: dict[str, Any] = {"step": count}
            if momentum != 0.0:
                buffers = state["momentum"].get("m")
                if not isinstance(buffers, Mapping) or name not in buffers:
                    raise MinibnnError(f"optimizer state momentum/m has no entry for {name!r}")
                raw = buffers[name]          # NumPy (copied: it may be read-only) or torch
                value = torch.as_tensor(raw.copy() if isinstance(raw, np.ndarray) else raw)
                if tuple(value.shape) != tuple(p.shape):
                    raise ShapeError(f"optimizer state momentum/m[{name!r}] has shape "
                                     f"{tuple(value.shape)}, the parameter has {tuple(p.shape)}")
                if count > 0:                # before the first update both start from g_1
                    entry["momentum_buffer"] = value.to(device=p.device, dtype=p.dtype).clone(
                        memory_format=torch.contiguous_format)
            self.state[p] = entry
