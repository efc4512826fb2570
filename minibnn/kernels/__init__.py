"""Hot loops behind the layers and optimisers, one registry of ops and their bodies.

    from minibnn import kernels
    cols = kernels.call("im2col", x, 3, 3, 1, 1)     # body chosen from the type of x
    with kernels.use_backend("numpy"):                # force the readable reference
        ...

Each op has a reference body in ``kernels.reference`` (written against ``xp``: NumPy or CuPy
arrays, the oracle and the documentation of the arithmetic) and optional compiled bodies in
``kernels.cpu`` (Numba, NumPy arrays) and ``kernels.gpu`` (CUDA, CuPy arrays); see
``kernels.registry`` for how ``call`` chooses. Bit-packed inference layers live in
``kernels.bitpack``. Nothing in this package imports ``minibnn.nn``.
"""
from __future__ import annotations

from minibnn.kernels.registry import (
    BACKENDS, BackendError, backend_for, call, get, has_compiled, implementation, register,
    registered, use_backend)

__all__ = ["BACKENDS", "BackendError", "backend_for", "call", "get", "has_compiled",
           "implementation", "register", "registered", "use_backend"]
