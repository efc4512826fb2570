"""Schedules: callables ``step_count -> value`` for learning rates and the CEMA rate ``alpha``.

``count`` is the number of updates already made, so the first update uses ``schedule(0)``
(PyTorch's convention: the value of epoch ``e`` is used for all of epoch ``e``'s steps).
``per_epoch_steps=k`` holds the value constant within each block of ``k`` steps, i.e. the
schedule advances once per epoch, as the paper's code does (``alpha_t = alpha_0 (1 - e/E)``).
"""
from __future__ import annotations

import math
from typing import Callable

from minibnn.errors import MinibnnError
from minibnn.optim.checks import hyperparameter

Schedule = Callable[[int], float]


def _epoch_floor(count: int, per_epoch_steps: int | None) -> int:
    """Round ``count`` down to the first step of its epoch when stepping per epoch."""
    if per_epoch_steps is None:
        return count
    return (count // per_epoch_steps) * per_epoch_steps


def _check_positive_int(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise MinibnnError(f"{name} must be a positive integer, got {value!r}")


def constant(value: float) -> Schedule:
    """``s(t) = value``."""
    value = hyperparameter("constant", "value", value)
    return lambda count: value


def linear(init: float, total_steps: int, end: float = 0.0,
           per_epoch_steps: int | None = None) -> Schedule:
    """Linear decay ``s(t) = init + (end - init) * min(t / total_steps, 1)``."""
    init, end = hyperparameter("linear", "init", init), hyperparameter("linear", "end", end)
    _check_positive_int("total_steps", total_steps)
    _check_positive_int("per_epoch_steps", per_epoch_steps)

    def schedule(count: int) -> float:
        t = _epoch_floor(count, per_epoch_steps)
        return init + (end - init) * min(t / total_steps, 1.0)

    return schedule


def cosine(init: float, total_steps: int, end: float = 0.0,
           per_epoch_steps: int | None = None) -> Schedule:
    """Cosine decay ``s(t) = end + (init - end) * (1 + cos(pi * min(t/T, 1))) / 2``."""
    init, end = hyperparameter("cosine", "init", init), hyperparameter("cosine", "end", end)
    _check_positive_int("total_steps", total_steps)
    _check_positive_int("per_epoch_steps", per_epoch_steps)

    def schedule(count: int) -> float:
        t = _epoch_floor(count, per_epoch_steps)
        return end + (init - end) * 0.5 * (1.0 + math.cos(math.pi * min(t / total_steps, 1.0)))

    return schedule


def step_decay(init: float, step_size: int, factor: float = 0.1,
               per_epoch_steps: int | None = None) -> Schedule:
    """Step decay ``s(t) = init * factor ** (t // step_size)`` (``step_size`` in steps)."""
    init = hyperparameter("step_decay", "init", init)
    factor = hyperparameter("step_decay", "factor", factor)
    _check_positive_int("step_size", step_size)
    _check_positive_int("per_epoch_steps", per_epoch_steps)

    def schedule(count: int) -> float:
        return init * factor ** (_epoch_floor(count, per_epoch_steps) // step_size)

    return schedule


def as_schedule(value: float | Schedule) -> Schedule:
    """Accept a number or a schedule and return a schedule of Python floats (so a schedule
    returning NumPy float64 scalars cannot promote float32 parameters)."""
    if callable(value):
        return lambda count: float(value(count))
    return constant(float(value))


SCHEDULE_NAMES = ("constant", "linear", "cosine", "step")


def by_name(name: str, init: float, total_steps: int, per_epoch_steps: int | None = None,
            step_size: int | None = None, factor: float = 0.1) -> Schedule:
    """Build a schedule from its CLI name (``constant``, ``linear``, ``cosine``, ``step``)."""
    if name == "constant":
        return constant(init)
    if name == "linear":
        return linear(init, total_steps, per_epoch_steps=per_epoch_steps)
    if name == "cosine":
        return cosine(init, total_steps, per_epoch_steps=per_epoch_steps)
    if name == "step":
        return step_decay(init, step_size or max(1, total_steps // 3), factor, per_epoch_steps)
    raise MinibnnError(f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULE_NAMES)}")
