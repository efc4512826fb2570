"""Continue an exported run in PyTorch: its two optimisers, loaded with the run's state.

    net = minibnn.torch.build("model.pt")
    binary, real = optimizers(net, "model.pt")
    for x, y in batches:                       # standardised inputs, the run's dtype
        binary.zero_grad(); real.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        binary.step(); real.step()

As ``minibnn.run.train.optimizer_from_spec`` builds them for the run, from the stored spec:

    binary weights   the run's filter optimiser (cema, bop, bop2nd, bop2nd_corrected) as
                     ``minibnn.torch.optim``'s twin, its rates those of the trainer's
                     ``optimizer_rates`` (CEMA's alpha schedule included), its state (m, v,
                     count) the checkpoint's (``load_minibnn_state``); latent sgd runs:
                     ``minibnn.torch.SGD``, PyTorch's own SGD (coupled decay, or SGDW's
                     decoupled ``w <- (1 - eta lam) w`` before the step, as minibnn's sgd
                     defines them) on the latent weights, on the run's lr schedule, with the
                     checkpoint's momentum buffer and count; latent adam runs: Adam (AdamW
                     when decoupled) on the latent weights
    real parameters  Adam with minibnn's betas and eps (``optim.defaults("adam")``), the run's
                     weight decay (coupled, as minibnn's), the checkpoint's moments and step

Adam's rate follows the run's schedule of the update count (``ScheduledAdam``: before each
step, lr = schedule(updates made)), so update ``step + 1`` here uses minibnn's rate for it.
A run that finished its epochs has its decaying rates at their end (linear: 0);
``optimizers(net, path, epochs=N)`` re-plans the schedules over N epochs from the current
step, as ``minibnn train --resume RUN --epochs N --extend`` does. A binary optimiser with no
PyTorch form here is a one-line error naming it.

On the same gradients the filter optimisers follow minibnn's updates bit for bit; Adam and
SGD, PyTorch's own, to rounding (their own operation order; SGD: ``minibnn.torch.latent``).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from minibnn.errors import MinibnnError
from minibnn.optim import defaults
from minibnn.torch.model import read_export
from minibnn.torch.optim import NAMED, from_name, load_minibnn_state
from minibnn.torch.params import split_binary

Schedule = Callable[[int], float]


class _FollowsSchedule:
    """Mixin for a torch optimiser: before each step every group's ``lr`` is set to
    ``schedule(count)``, count = updates made so far (minibnn's schedules' argument)."""

    schedule: Schedule

    def updates_made(self) -> int:
        """The ``step`` count of the parameters' Adam state (0 before the first update)."""
        for state in self.state.values():                       # type: ignore[attr-defined]
            if "step" in state:
                return int(state["step"])
        return 0

    def step(self, closure: Any = None) -> Any:
        lr = self.schedule(self.updates_made())
        for group in self.param_groups:                         # type: ignore[attr-defined]
            group["lr"] = lr
        return super().step(closure)                            # type: ignore[misc]


class ScheduledAdam(_FollowsSchedule, torch.optim.Adam):
    """``torch.optim.Adam`` (coupled L2 decay, as minibnn's ``adam``) on a minibnn schedule."""

    def __init__(self, params: Any, schedule: Schedule, **options: Any):
        self.schedule = schedule
        super().__init__(params, lr=schedule(0), **options)


class ScheduledAdamW(_FollowsSchedule, torch.optim.AdamW):
    """``torch.optim.AdamW`` (decoupled decay, minibnn's ``adam(decoupled=True)``) on a
    minibnn schedule."""

    def __init__(self, params: Any, schedule: Schedule, **options: Any):
        self.schedule = schedule
        super().__init__(params, lr=schedule(0), **options)


def _adam(params: Mapping[str, torch.nn.Parameter], schedule: Schedule, weight_decay: float,
          decoupled: bool, state: Mapping[str, Any], where: str) -> torch.optim.Optimizer:
    """Adam on ``params`` with minibnn's constants, loaded with a minibnn adam chain state
    (``{"adam": {"count", "m": {name: ...}, "v": {name: ...}}, "lr": {"count"}, ...}``)."""
    d = defaults("adam")
    cls = ScheduledAdamW if decoupled else ScheduledAdam
    opt = cls(list(params.values()), schedule, betas=(d["b1"], d["b2"]), eps=d["eps"],
              weight_decay=weight_decay)
    moments = state.get("adam", {})
    count = int(moments.get("count", 0))
    if count != int(state.get("lr", {}).get("count", count)):
        raise MinibnnError(f"{where}: the optimiser state's adam and lr counts differ")
    if count == 0:
        return opt                                   # no update made yet: Adam starts empty
    saved = opt.state_dict()
    index = {id(p): i for i, p in enumerate(opt.param_groups[0]["params"])}
    for name, p in params.items():
        try:
            m, v = moments["m"][name], moments["v"][name]
        except KeyError:
            raise MinibnnError(f"{where}: the optimiser state has no Adam moments for "
                               f"{name!r}") from None
        # torch's Adam state: step (a float tensor), exp_avg = m, exp_avg_sq = v
        saved["state"][index[id(p)]] = {"step": torch.tensor(float(count)),
                                        "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
    opt.load_state_dict(saved)
    return opt


def optimizers(module: torch.nn.Module, path: str, epochs: int | None = None,
               map_location: Any = "cpu"
               ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """``(binary, real)``: the run's optimisers for ``module`` (``minibnn.torch.build(path)``),
    with the state exported in ``path``; ``epochs``: the schedules of a run that long
    (more than the epochs done), else the run's own (module header)."""
    from minibnn.run.spec import spec_from_dict, variant_options
    from minibnn.run.train import optimizer_rates

    data = read_export(path, map_location)
    spec = spec_from_dict(data["spec"])
    if epochs is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= data["epoch"]:
            raise MinibnnError(f"epochs={epochs!r}: the run has already finished "
                               f"{data['epoch']} epochs; give more than that")
        spec = spec.replace(epochs=epochs)
    rates = optimizer_rates(spec, int(data["steps_per_epoch"]))
    state = data["optimizer_state"]
    names = {name for name, _ in module.named_parameters()}
    if names != set(data["state_dict"]) - {name for name, _ in module.named_buffers()}:
        raise MinibnnError(f"{path}: the module's parameters are not the exported run's "
                           "(build it with minibnn.torch.build from the same file)")
    split = split_binary(module, data["binary"])
    b = spec.binary_optimizer
    binary: torch.optim.Optimizer
    if b.name in NAMED:
        # the trainer's choice (optimizer_from_spec): a scheduled rate where the trainer has
        # one (cema's alpha, sgd's lr), else the spec's number
        options = {f: rates.get(f, getattr(b, f)) for f in variant_options(type(b))
                   if f != "schedule"}
        binary = from_name(b.name, split.binary.values(), **options)
        load_minibnn_state(binary, state["binary"], split.binary)
    elif b.name == "adam":
        binary = _adam(split.binary, rates["lr"], b.weight_decay, b.decoupled,
                       state["binary"], path)
    else:
        raise MinibnnError(f"{path}: the binary optimiser {b.name!r} has no PyTorch form in "
                           f"minibnn.torch yet (have {', '.join([*NAMED, 'adam'])})")
    real = _adam(split.real, rates["real_lr"], spec.real_optimizer.weight_decay, False,
                 state["real"], path)
    return binary, real
