"""A restricted unpickler for the dataset pickles (MNIST's mnist.pkl.gz, CIFAR-10's batches).

``pickle`` can run arbitrary code while loading, so these files are read with an Unpickler whose
``find_class`` admits only what a pickled NumPy array needs (``_reconstruct``/``_frombuffer``,
``ndarray``, ``dtype``, ``scalar`` and ``_codecs.encode`` for Python 2 byte strings).  Old
pickles name ``numpy.core.*``; NumPy 2 moved it to ``numpy._core.*``, so both map to the same
objects.
"""
from __future__ import annotations

import codecs
import io
import pickle
from typing import Any

import numpy as np

try:  # NumPy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

_ALLOWED: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray,
                                        ("numpy", "dtype"): np.dtype,
                                        ("_codecs", "encode"): codecs.encode}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED[(_mod, "scalar")] = _multiarray.scalar
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_mod, "_frombuffer")] = _numeric._frombuffer


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def safe_loads(data: bytes, encoding: str = "latin1") -> Any:
    """Unpickle ``data`` allowing only NumPy arrays, builtins containers and scalars.

    Raises pickle.UnpicklingError (or EOFError, ValueError...) on anything else; callers turn
    that into a one-line DataFileError naming the file.
    """
    return _ArrayUnpickler(io.BytesIO(data), encoding=encoding).load()
