"""Route parameter groups to different optimisers (binary weights to one, real ones to another).

``partition({"binary": cema(...), "real": adam(...)}, label_fn)`` splits params, gradients and
state by ``label_fn(name)``, runs each optimiser on its own group and merges the results.
"""
from __future__ import annotations

from typing import Callable, Mapping

from minibnn.errors import MinibnnError
from minibnn.optim.base import Params, State, Transform


def partition(optimizers: Mapping[str, Transform],
              labels: Callable[[str], str] | Mapping[str, str]) -> Transform:
    """Apply ``optimizers[label(name)]`` to each parameter ``name``."""
    label_of = labels.__getitem__ if isinstance(labels, Mapping) else labels

    def split(tree: Params) -> dict[str, Params]:
        groups: dict[str, Params] = {label: {} for label in optimizers}
        for name, value in tree.items():
            label = label_of(name)
            if label not in groups:
                raise MinibnnError(f"parameter {name!r} has label {label!r}, which has no "
                                   f"optimiser (have {sorted(optimizers)})")
            groups[label][name] = value
        return groups

    def init(params: Params) -> State:
        groups = split(params)
        return {label: opt.init(groups[label]) for label, opt in optimizers.items()}

    def update(grads: Params, state: State, params: Params) -> tuple[Params, State]:
        grad_groups, param_groups = split(grads), split(params)
        new_params: Params = {}
        new_state: State = {}
        for label, opt in optimizers.items():
            updated, new_state[label] = opt.update(grad_groups[label], state[label],
                                                   param_groups[label])
            new_params.update(updated)
        return new_params, new_state

    return Transform(init, update)
