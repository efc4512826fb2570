"""The optimiser shape shared by every minibnn optimiser (optax's, with one difference).

A ``Transform`` is a pair of pure functions::

    state = t.init(params)
    stream, state = t.update(stream, state, params)

Transforms are chained: the first receives the gradients, each passes its filtered stream on.
The last link of a complete optimiser is a *terminal* transform whose output stream is the new
parameters (``apply_updates`` for latent weights, ``flip`` for binary weights), so::

    params, state = opt.update(grads, state, params)

returns new parameters directly, as DESIGN.md asks.  Parameters, gradients, streams and states
are flat dicts ``name -> array`` (states may nest dicts); everything is a plain array, so a
state can be written to an HDF5 file and read back exactly.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

Params = dict[str, Any]
State = dict[str, Any]


class Transform(NamedTuple):
    """A gradient filter (or a whole optimiser): ``init(params)`` and ``update(stream, state, params)``."""

    init: Callable[[Params], State]
    update: Callable[[Params, State, Params], tuple[Params, State]]


def chain(*transforms: Transform) -> Transform:
    """Compose transforms left to right: the stream of one is the input of the next."""

    def init(params: Params) -> State:
        return {str(i): t.init(params) for i, t in enumerate(transforms)}

    def update(stream: Params, state: State, params: Params) -> tuple[Params, State]:
        new_state = {}
        for i, t in enumerate(transforms):
            stream, new_state[str(i)] = t.update(stream, state[str(i)], params)
        return stream, new_state

    return Transform(init, update)


def zeros_like_tree(params: Params) -> Params:
    """A dict of zero arrays shaped like ``params`` (same dtype and device)."""
    return {k: _xp(v).zeros_like(v) for k, v in params.items()}


def _xp(array: Any) -> Any:
    from minibnn.backend import get_array_module

    return get_array_module(array)


def copy_tree(tree: Params) -> Params:
    """Copy every array of a flat dict (so a caller's buffers are never aliased)."""
    return {k: v.copy() for k, v in tree.items()}
