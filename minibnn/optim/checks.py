"""The argument checks every public optimiser shares, each a one-line ``MinibnnError``.

Hyperparameters (``hyperparameter``): a real, finite number in the option's range; a schedule
is checked at its first value.  Messages name the constructor, the option and the value::

    sgd: lr must be >= 0 and finite, got nan
    cema: alpha must be in (0, 1], got 1.5 (the schedule's first value)

Update arguments (``check_like_params``, ``check_state``): gradients and state buffers must
hold the parameters' names, shapes and dtypes (a float64 gradient is refused for a float32
parameter, as PyTorch refuses it, rather than silently promoting the parameter)::

    gradients must hold exactly the parameters' names: missing ['fc1.w']
    gradients['w'] has shape (3,), the parameter has (4,)          (ShapeError)
    gradients['w'] has dtype float64, the parameter has float32    (DTypeError)
    optimizer state must have the stages ['m', 'v', 'b'], got ['lr', 'w']
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from minibnn.errors import DTypeError, MinibnnError, ShapeError


class Range(NamedTuple):
    """An allowed set of values: how messages say it, and the test (on a finite float)."""

    text: str
    contains: Callable[[float], bool]


FINITE = Range("a finite number", lambda v: True)
NONNEGATIVE = Range(">= 0 and finite", lambda v: v >= 0.0)
POSITIVE = Range("> 0 and finite", lambda v: v > 0.0)
RATE = Range("in (0, 1]", lambda v: 0.0 < v <= 1.0)          # an EMA rate
UNIT = Range("in [0, 1]", lambda v: 0.0 <= v <= 1.0)
MOMENTUM = Range("in [0, 1)", lambda v: 0.0 <= v < 1.0)      # a decay that must forget


def hyperparameter(where: str, name: str, value: Any, allowed: Range = FINITE) -> float:
    """``value`` (a schedule: its first value) as a Python float, checked to be in ``allowed``.

    Bools, strings, complex numbers, NaN and infinities are refused; returning a Python float
    means a NumPy scalar hyperparameter cannot promote float32 arrays to float64.
    """
    first = value(0) if callable(value) else value
    number = not isinstance(first, bool) and isinstance(first, numbers.Real)
    v = float(first) if number else math.nan
    if not (math.isfinite(v) and allowed.contains(v)):
        shown = v if number else repr(first)
        suffix = " (the schedule's first value)" if callable(value) else ""
        raise MinibnnError(f"{where}: {name} must be {allowed.text}, got {shown}{suffix}")
    return v


def check_like_params(what: str, tree: Any, params: Mapping[str, Any]) -> None:
    """Refuse a dict (``what``: "gradients", a state buffer) not keyed, shaped and typed like
    ``params``: MinibnnError for names, ShapeError for shapes, DTypeError for dtypes."""
    if not isinstance(tree, Mapping):
        raise MinibnnError(f"{what} must be a dict name -> array, got {type(tree).__name__}")
    missing = sorted(set(params) - set(tree))
    unexpected = sorted(set(tree) - set(params))
    if missing or unexpected:
        parts = ([f"missing {missing}"] if missing else []) + \
                ([f"unexpected {unexpected}"] if unexpected else [])
        raise MinibnnError(f"{what} must hold exactly the parameters' names: {', '.join(parts)}")
    for name, p in params.items():
        a = tree[name]
        if not (hasattr(a, "shape") and hasattr(a, "dtype")):
            raise MinibnnError(f"{what}[{name!r}] must be an array, got {type(a).__name__}")
        if tuple(a.shape) != tuple(p.shape):
            raise ShapeError(f"{what}[{name!r}] has shape {tuple(a.shape)}, the parameter has "
                             f"{tuple(p.shape)}")
        if a.dtype != p.dtype:
            raise DTypeError(f"{what}[{name!r}] has dtype {a.dtype}, the parameter has {p.dtype}")


def check_keys(state: Any, names: Sequence[str], what: str) -> None:
    """Refuse a state that is not a dict with exactly the keys ``names`` (its ``what``:
    "stages" of a chain, "groups" of a partition)."""
    if not isinstance(state, Mapping):
        raise MinibnnError(f"optimizer state must be a dict (from this optimizer's init), got "
                           f"{type(state).__name__}")
    if set(state) != set(names):
        raise MinibnnError(f"optimizer state must have the {what} {list(names)}, got "
                           f"{list(state)} (pass the state from this optimizer's init)")


def check_state(state: Any, stages: Sequence[str], params: Mapping[str, Any]) -> None:
    """Refuse a chain state without exactly these stages, or whose buffers (the dict entries
    of a stage's state, e.g. ``state["m"]["s"]``) are not keyed, shaped and typed like
    ``params``."""
    check_keys(state, stages, "stages")
    for stage in stages:
        stage_state = state[stage]
        if not isinstance(stage_state, Mapping):
            raise MinibnnError(f"optimizer state {stage!r} must be a dict, got "
                               f"{type(stage_state).__name__}")
        for key, buffers in stage_state.items():
            if isinstance(buffers, Mapping):
                check_like_params(f"optimizer state {stage}/{key}", buffers, params)
