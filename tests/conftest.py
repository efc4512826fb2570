"""Shared pytest setup: hypothesis profiles and access to the ``verification`` folder.

Profiles: ``ci`` (more examples, derandomised, no deadline: CI sets HYPOTHESIS_PROFILE=ci) and
``dev`` (the default: fewer examples, no deadline, since first Numba compiles take seconds).
``verification/`` is a plain folder at the repository root, not an installed package, so the
root is put on ``sys.path`` for the tests that import it.
"""
import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

settings.register_profile("ci", max_examples=200, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
