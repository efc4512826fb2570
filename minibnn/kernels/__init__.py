"""Hot loops behind the layers and optimisers: NumPy oracles, Numba CPU kernels, CuPy GPU kernels.

``get_kernels("numpy")`` returns ``kernels.reference`` (readable NumPy, the oracle) and
``get_kernels("numba")`` returns ``kernels.cpu`` (the same functions compiled with Numba); both
modules expose the same names with the same signatures. ``DEFAULT_CPU_BACKEND`` is "numba", or
"numpy" when Numba cannot be imported. Bit-packed binary inference layers live in
``kernels.bitpack``.
"""
from __future__ import annotations

from types import ModuleType

from minibnn.errors import MinibnnError

CPU_BACKENDS = ("numpy", "numba")


def _numba_importable() -> bool:
    try:
        import numba  # noqa: F401
    except Exception:
        return False
    return True


#: "numba" when Numba imports, else "numpy" (the reference kernels).
DEFAULT_CPU_BACKEND = "numba" if _numba_importable() else "numpy"


def get_kernels(backend: str = DEFAULT_CPU_BACKEND) -> ModuleType:
    """The kernel module of a CPU backend: "numpy" -> ``reference``, "numba" -> ``cpu``.

    Asking for "numba" where Numba does not import falls back to ``reference``.
    """
    if backend == "numpy":
        from minibnn.kernels import reference
        return reference
    if backend == "numba":
        try:
            from minibnn.kernels import cpu
        except ImportError:
            from minibnn.kernels import reference
            return reference
        return cpu
    raise MinibnnError(f"unknown kernel backend {backend!r}; expected one of {CPU_BACKENDS}")


__all__ = ["CPU_BACKENDS", "DEFAULT_CPU_BACKEND", "get_kernels"]
