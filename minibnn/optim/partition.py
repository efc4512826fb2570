"""Route parameter groups to different optimisers (binary weights to one, real ones to another).

``partition({"binary": cema(...), "real": adam(...)}, label_fn)`` splits params, gradients and
state by ``label_fn(name)``, runs each optimiser on its own group and merges the results; the
state is ``{label: that optimiser's state}``.  ``update`` runs every group's chain,
``step_in_place`` every group's fused step where one is compiled.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from minibnn.errors import MinibnnError
from minibnn.optim.base import Params, State, Transform, check_params, check_transform
from minibnn.optim.checks import check_keys, check_like_params


def _split(optimizers: Mapping[str, Transform], label_of: Callable[[str], str],
           tree: Params) -> dict[str, Params]:
    groups: dict[str, Params] = {label: {} for label in optimizers}
    for name, value in tree.items():
        label = label_of(name)
        if label not in groups:
            raise MinibnnError(f"parameter {name!r} has label {label!r}, which has no "
                               f"optimiser (have {sorted(optimizers)})")
        groups[label][name] = value
    return groups


def _route(optimizers: Mapping[str, Transform], label_of: Callable[[str], str], method: str,
           grads: Params, state: State, params: Params) -> tuple[Params, State]:
    """Run ``getattr(opt, method)`` on each group and merge parameters and states."""
    check_like_params("gradients", grads, params)
    check_keys(state, list(optimizers), "groups")
    grad_groups = _split(optimizers, label_of, grads)
    param_groups = _split(optimizers, label_of, params)
    new_params: Params = {}
    new_state: State = {}
    for label, opt in optimizers.items():
        updated, new_state[label] = getattr(opt, method)(grad_groups[label], state[label],
                                                         param_groups[label])
        new_params.update(updated)
    return new_params, new_state


@dataclass(frozen=True, kw_only=True)
class Partition(Transform):
    """``partition``'s transform: ``step_in_place`` routes each group to its optimiser's fused
    step (or chain).

    ``optimizers`` (label -> optimiser) and ``label_of`` (parameter name -> label) are
    required keywords: ``partition(...)`` builds them.
    """

    optimizers: Mapping[str, Transform]
    label_of: Callable[[str], str]

    def _fused_or_update(self, grads: Params, state: State, params: Params
                         ) -> tuple[Params, State]:
        return _route(self.optimizers, self.label_of, "_fused_or_update", grads, state, params)


def _mapping_labels(labels: Mapping[str, str]) -> Callable[[str], str]:
    """``labels[name]``, refusing a parameter the mapping does not label."""

    def label_of(name: str) -> str:
        if name not in labels:
            raise MinibnnError(f"parameter {name!r} has no label (labelled: {sorted(labels)})")
        return labels[name]

    return label_of


def partition(optimizers: Mapping[str, Transform],
              labels: Callable[[str], str] | Mapping[str, str]) -> Partition:
    """Apply ``optimizers[label(name)]`` to each parameter ``name``."""
    if not isinstance(optimizers, Mapping) or not optimizers:
        raise MinibnnError(f"partition: optimizers must be a non-empty dict label -> "
                           f"Transform, got {optimizers!r:.60}")
    for label, opt in optimizers.items():
        check_transform(f"partition's optimizer {label!r}", opt)
    label_of = _mapping_labels(labels) if isinstance(labels, Mapping) else labels
    optimizers = dict(optimizers)

    def init(params: Params) -> State:
        check_params("init", params)
        groups = _split(optimizers, label_of, params)
        return {label: opt.init(groups[label]) for label, opt in optimizers.items()}

    def update(grads: Params, state: State, params: Params) -> tuple[Params, State]:
        return _route(optimizers, label_of, "update", grads, state, params)

    return Partition(init, update, optimizers=optimizers, label_of=label_of)
