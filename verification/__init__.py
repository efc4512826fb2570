"""The equivalence suite of docs/theory.md: properties P1-P10, exact and float, as a report.

    python -m verification [--examples N] [--only P3,P10]

``run(examples=None, only=None)`` returns one ``PropertyResult`` per property; ``main(argv)``
prints the table and the P10 counterexamples and returns the exit status (non-zero when a
property fails or an expected counterexample is not found).  This folder is not installed:
run it from a checkout (``minibnn verify`` imports it from there).
"""
from verification.core import PropertyResult
from verification.runner import PROPERTIES, format_report, main, run

__all__ = ["PROPERTIES", "PropertyResult", "format_report", "main", "run"]
