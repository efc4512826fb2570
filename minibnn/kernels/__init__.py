"""Hot loops behind the layers and optimisers, one registry of ops and their bodies.

    from minibnn import kernels
    cols = kernels.call("im2col", x, 3, 3, 1, 1)     # body chosen from the type of x
    with kernels.use_backend("numpy"):                # force the readable reference
        ...

Backend names and the module that holds each backend's bodies:

    "numpy"  kernels/reference.py   the reference body of every op, written against ``xp``
                                    (NumPy or CuPy arrays): the oracle and the documentation
    "numba"  kernels/cpu.py         compiled CPU bodies (Numba), for NumPy arrays
    "cuda"   kernels/gpu.py         compiled GPU bodies (CuPy kernels), for CuPy arrays

``kernels/registry.py`` says how ``call`` chooses; ``kernels/_common.py`` holds the argument
checks every body of an op shares. Not ops: bit-packed inference layers
(``kernels/bitpack.py``) and the folding of BatchNorm + sign into integer thresholds
(``kernels/threshold.py``). Nothing in this package imports ``minibnn.nn``.
"""
from __future__ import annotations

from minibnn.kernels.registry import (
    BACKENDS, BackendError, backend_for, call, get, has_compiled, register, registered,
    use_backend)

__all__ = ["BACKENDS", "BackendError", "backend_for", "call", "get", "has_compiled", "register",
           "registered", "use_backend"]
