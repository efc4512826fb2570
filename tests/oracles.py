"""The oracle every kernel test compares a body with: an op's reference body on NumPy arrays,
every op it calls inside on its reference body too (``use_backend("numpy")``)."""
from __future__ import annotations

from typing import Any, Callable

from minibnn import kernels


def reference(op: str) -> Callable[..., Any]:
    """``op``'s reference body, run with every inner op on its reference body."""
    body = kernels.get(op, "numpy")

    def run(*args: Any, **kw: Any) -> Any:
        with kernels.use_backend("numpy"):
            return body(*args, **kw)
    return run
