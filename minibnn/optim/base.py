"""The optimiser shape shared by every minibnn optimiser (optax's, with two differences).

A ``Transform`` is a pair of pure functions, plus an optional fused step::

    state = t.init(params)
    stream, state = t.update(stream, state, params)      # the readable chain (pure)
    t.step_in_place(grads, state, params)                # what the trainer calls: params
                                                         # and state updated in place

Transforms are chained by name, optax style: ``chain(m=ema(gamma), v=ema(alpha), b=flip())``
feeds the gradients to ``m``, its output to ``v`` and so on; the state is a dict keyed by the
stage names (``{"m": {...}, "v": {...}, "b": {}}``), so checkpoints name what they hold.  The
last link of a complete optimiser is a *terminal* whose output stream is the new parameters
(``apply_updates`` for latent weights, ``flip`` for binary weights), so ``update`` returns new
parameters directly (optax returns updates to add instead).

``fused`` is a ``FusedStep(op, step)``: one in-place kernel pass (``minibnn.kernels`` op
``op``) computing exactly the chain's bits and state.  ``step_in_place`` runs it where
``kernels.has_compiled(op, p)`` for a parameter array ``p`` at hand (Numba on NumPy arrays,
CUDA on CuPy arrays), else ``update``; either way the new parameters end up in the parameter
arrays it was given and the new state in the state dict it was given (as PyTorch's
``optimizer.step()`` updates its tensors): the fused kernel overwrites both, so a step holds
no second copy of the parameters.  A caller who needs the old values keeps a copy, or calls
the pure ``update``.

Parameters, gradients, streams and states are flat dicts ``name -> array`` (states nest one
level per stage); everything is a plain array, so a state can be written to an HDF5 file and
read back exactly.  A chain's ``update`` and a fused ``step`` check their arguments first
(``checked``): gradients and state buffers with the parameters' names, shapes and dtypes,
the state with the chain's stages (``minibnn.optim.checks``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from minibnn import kernels
from minibnn.backend import get_array_module
from minibnn.errors import MinibnnError
from minibnn.kernels._common import require_in_place
from minibnn.optim.checks import check_like_params, check_state

Params = dict[str, Any]
State = dict[str, Any]
StepFn = Callable[[Params, State, Params], "tuple[Params, State]"]


class FusedStep(NamedTuple):
    """A one-pass kernel step equal to a chain's ``update``: the kernel op it runs, the step."""

    op: str
    step: StepFn


@dataclass(frozen=True)
class Transform:
    """A gradient filter or a whole optimiser: ``init``, ``update`` and, optionally, ``fused``."""

    init: Callable[[Params], State]
    update: StepFn
    fused: FusedStep | None = None

    def step_in_place(self, grads: Params, state: State, params: Params) -> Params:
        """One step in place: ``params``' arrays become the new parameters and ``state`` the
        new state; returns ``params``. The fused kernel where it is compiled for these arrays,
        else ``update`` (its new arrays copied into ``params``'): the same bits either way.
        The parameter arrays must be writeable and C-contiguous (on every path, so that a
        step never works on one backend and fails on another)."""
        for name, p in params.items():
            if hasattr(p, "flags"):                     # not an array: the checks below say so
                require_in_place("step_in_place", f"parameter {name!r}", p)
        new_params, new_state = self._fused_or_update(grads, state, params)
        for name, new in new_params.items():
            if new is not params[name]:
                params[name][...] = new
        if new_state is not state:
            state.clear()
            state.update(new_state)
        return params

    def _fused_or_update(self, grads: Params, state: State, params: Params
                         ) -> tuple[Params, State]:
        """The fused step (which overwrites ``state``'s buffers) where compiled, else ``update``."""
        if self.fused is not None and uses_compiled(self.fused.op, params):
            return self.fused.step(grads, state, params)
        return self.update(grads, state, params)


def uses_compiled(op: str, params: Params) -> bool:
    """Would kernel op ``op`` (its name) run a compiled body on these parameters?"""
    return bool(params) and kernels.has_compiled(op, next(iter(params.values())))


@dataclass(frozen=True, kw_only=True)
class Chain(Transform):
    """``chain``'s transform; ``stages`` (a required keyword) names its state's keys in order."""

    stages: tuple[str, ...]


def checked(step: StepFn, stages: tuple[str, ...]) -> StepFn:
    """``step`` behind the checks of its arguments: gradients (and the state's buffers) keyed,
    shaped and typed like the parameters, the state holding exactly ``stages``."""

    def run(grads: Params, state: State, params: Params) -> tuple[Params, State]:
        check_like_params("gradients", grads, params)
        check_state(state, stages, params)
        return step(grads, state, params)

    return run


def chain(**stages: Transform) -> Chain:
    """Compose named transforms left to right; the state is ``{stage name: stage state}``."""
    if not stages:
        raise MinibnnError("chain needs at least one named stage")
    for name, t in stages.items():
        check_transform(f"chain stage {name!r}", t)
    names = tuple(stages)

    def init(params: Params) -> State:
        check_params("init", params)
        return {name: t.init(params) for name, t in stages.items()}

    def update(stream: Params, state: State, params: Params) -> tuple[Params, State]:
        new_state = {}
        for name, t in stages.items():
            stream, new_state[name] = t.update(stream, state[name], params)
        return stream, new_state

    return Chain(init, checked(update, names), stages=names)


def check_transform(what: str, t: Any) -> None:
    """``t`` must be a ``Transform`` (a filter or an optimiser), else a one-line error."""
    if not isinstance(t, Transform):
        raise MinibnnError(f"{what} must be a Transform (a filter or optimiser of "
                           f"minibnn.optim), got {type(t).__name__} {t!r:.40}")


def check_params(what: str, params: Any) -> None:
    """Parameters are a dict ``name -> array``, else a one-line error."""
    if not isinstance(params, dict):
        raise MinibnnError(f"{what}: parameters must be a dict name -> array, got "
                           f"{type(params).__name__}")


def array_module(tree: Params) -> Any:
    """``numpy`` or ``cupy``: the module holding the arrays of a flat dict."""
    return get_array_module(*tree.values())


def zeros_like_tree(params: Params) -> Params:
    """A dict of zero arrays shaped like ``params`` (same dtype and device), C-contiguous
    whatever the parameter's layout (fused steps update them in place)."""
    return {k: get_array_module(v).zeros(v.shape, dtype=v.dtype) for k, v in params.items()}


def copy_tree(tree: Params) -> Params:
    """Copy every array of a flat dict (so a caller's buffers are never aliased)."""
    return {k: v.copy() for k, v in tree.items()}
