"""Shared pytest setup: hypothesis profiles and access to the ``verification`` folder.

Profiles: ``ci`` (more examples, derandomised, no deadline: CI sets HYPOTHESIS_PROFILE=ci) and
``dev`` (the default: fewer examples, no deadline, since first Numba compiles take seconds).
``verification/`` is a plain folder at the repository root, not an installed package, so the
root is put on ``sys.path`` for the tests that import it. The ``without_torch`` fixture makes
``import torch`` fail for one test, as on a machine without PyTorch.
"""
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

settings.register_profile("ci", max_examples=200, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture
def without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import torch`` fails (ImportError) and ``minibnn.torch`` is forgotten, for one test."""
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    for mod in [m for m in sys.modules if m == "minibnn.torch" or m.startswith("minibnn.torch.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", no_torch)

