"""What every property check shares: the result record, the hypothesis runner, formatting.

A property check draws cases with hypothesis and raises ``Mismatch`` (with a one-line
description of the case) when the property fails; ``run_cases`` turns that into a count of
examples tried and the *shrunk* counterexample text.  Settings inherit the loaded hypothesis
profile (``ci`` in the tests) and always disable the deadline and the example database.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable

from hypothesis import HealthCheck, Verbosity, given, settings
from hypothesis import strategies as st


#: float sign comparisons ignore states within this fraction of the run's magnitude.
FLOAT_MARGIN = 1e-9


class Mismatch(AssertionError):
    """A property failed on one case; the message describes the case."""


@dataclass
class PropertyResult:
    """One row of the report."""

    pid: str
    statement: str
    examples: int
    holds: bool
    counterexample: str | None
    arithmetic: str
    margin: str
    seconds: float = 0.0
    details: list[tuple[str, str]] = field(default_factory=list)
    #: which implementations were checked ("reference, chain, fused[numpy,numba], ...")
    implementations: str = "reference"
    #: implementations that could not run here -> why (e.g. fused[cuda] without a GPU)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return "holds" if self.holds else "COUNTEREXAMPLE"


def hypothesis_settings(examples: int, derandomize: bool | None = None) -> settings:
    """The loaded profile with ``examples`` examples, no deadline, no database, quiet."""
    kwargs: dict[str, Any] = dict(max_examples=max(1, int(examples)), deadline=None,
                                  database=None, verbosity=Verbosity.quiet,
                                  report_multiple_bugs=False,
                                  suppress_health_check=list(HealthCheck))
    if derandomize is not None:
        kwargs["derandomize"] = derandomize
    return settings(settings.default, **kwargs)


_DERANDOMIZE: list[bool | None] = [None]


def set_derandomize(value: bool | None) -> None:
    """Make every later check deterministic (True), random (False) or follow the profile."""
    _DERANDOMIZE[0] = value


def current_settings(examples: int) -> settings:
    return hypothesis_settings(examples, _DERANDOMIZE[0])


def run_cases(strategy: st.SearchStrategy, check: Callable[[Any], None],
              examples: int) -> tuple[int, str | None]:
    """Run ``check`` on up to ``examples`` drawn cases; return (cases tried, counterexample).

    ``check`` raises ``Mismatch``; hypothesis shrinks the failing case and re-raises it, so the
    text returned is that of the minimal case found.  Tried cases include shrinking attempts.
    """
    tried = [0]

    def body(case: Any) -> None:
        tried[0] += 1
        check(case)

    test = current_settings(examples)(given(strategy)(body))
    try:
        test()
    except Mismatch as exc:
        return tried[0], str(exc)
    return tried[0], None


class Timer:
    """``with Timer() as t: ...; t.seconds``."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


class MinTracker:
    """Smallest positive magnitude seen (the tightest sign decision that was checked)."""

    def __init__(self) -> None:
        self.value: Any = None

    def add(self, values: Any) -> None:
        for x in values:
            x = abs(x)
            if x != 0 and (self.value is None or x < self.value):
                self.value = x

    def text(self, what: str = "min nonzero |state| at a decision") -> str:
        return f"{what} = {fmt(self.value)}" if self.value is not None else "no nonzero state"


def fmt(x: Any) -> str:
    """Short text for a number or a list of numbers (long Fractions as floats)."""
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in x) + "]"
    if isinstance(x, Fraction):
        s = str(x)
        return s if len(s) <= 14 else f"{float(x):.6g}"
    if isinstance(x, float):
        return f"{x:.6g}"
    return str(x)


def describe(**items: Any) -> str:
    """``name=value`` pairs, formatted with ``fmt``."""
    return ", ".join(f"{k}={fmt(v)}" for k, v in items.items())
