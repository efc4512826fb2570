"""Array backend: which array module (NumPy or CuPy) holds the data, and the dtype policy.

Layer code is written once against ``xp`` (``numpy`` or ``cupy``); ``get_array_module(x)``
picks it at module boundaries.  CuPy is optional: importing minibnn never requires it, and
asking for the GPU where there is none is a one-line ``DeviceError``.  Which kernel body runs
on those arrays (reference, Numba, CUDA) is chosen by ``minibnn.kernels`` (each op picks its
body; ``kernels.use_backend``), never by a setting here.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from minibnn.errors import DeviceError, DTypeError

#: The one list of dtypes minibnn trains in (name -> dtype); float32 is the default, float64 is
#: used by the verification suite. Layers, kernels, models and the CLI all read this.
FLOAT_DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


def _cupy() -> Any | None:
    """Return the cupy module if it imports, else None (no exception escapes)."""
    try:
        import cupy  # type: ignore[import-not-found]
    except Exception:
        return None
    return cupy


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    cp = _cupy()
    if cp is None:
        return False
    try:
        return bool(cp.cuda.is_available())
    except Exception:
        return False


def get_array_module(*arrays: Any) -> Any:
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``.

    Decided from the argument types, so it never tries to import CuPy: a CuPy array can only
    exist once CuPy is imported.
    """
    for a in arrays:
        kind = type(a)
        if kind is np.ndarray:
            continue
        if kind.__module__.startswith("cupy"):
            import cupy  # type: ignore[import-not-found]

            return cupy
        # anything else that names its namespace (the array API's protocol): an ndarray
        # subclass, or data.StandardisedImages (whose bytes may be on the GPU)
        namespace = getattr(a, "__array_namespace__", None)
        if namespace is not None and not isinstance(a, (np.generic, type)):
            module = namespace()
            if module is not np:
                return module
    return np


def device_module(device: str) -> Any:
    """Array module for a device name: ``"cpu"`` -> numpy, ``"gpu"`` -> cupy (if present)."""
    if device == "cpu":
        return np
    if device == "gpu":
        if not gpu_available():
            raise DeviceError("--device gpu requested but no CUDA GPU is available "
                              "(CuPy is not installed or sees no device)")
        return _cupy()
    raise DeviceError(f"unknown device {device!r}; expected 'cpu' or 'gpu'")


def to_device(x: Any, device: str) -> Any:
    """Copy an array to ``device`` (no copy when it is already there)."""
    xp = device_module(device)
    if xp is np:
        return to_numpy(x)
    return xp.asarray(x)


def to_numpy(x: Any) -> np.ndarray:
    """Return a NumPy array on the host, whatever module holds ``x`` (a device array's
    ``get()`` copies it; an array that names another namespace is treated as a device array)."""
    if type(x) is np.ndarray:
        return x
    if hasattr(x, "get"):
        return x.get()
    return np.asarray(x)


def resolve_dtype(name: str | np.dtype | type) -> np.dtype:
    """Map ``"float32"``/``"float64"`` (or a NumPy float dtype) to a dtype, else DTypeError."""
    key = name if isinstance(name, str) else np.dtype(name).name
    if key not in FLOAT_DTYPES:
        raise DTypeError(f"unsupported dtype {key!r}; expected one of {sorted(FLOAT_DTYPES)}")
    return np.dtype(FLOAT_DTYPES[key])


def first_nonfinite(tree: Any, prefix: str = "") -> str | None:
    """The path ("params/fc2.w") of the first floating array in a nested dict that holds a NaN
    or an infinity, on either device; None when every one is finite."""
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            found = first_nonfinite(value, path + "/")
            if found is not None:
                return found
            continue
        xp = get_array_module(value)
        array = xp.asarray(value)
        if array.dtype.kind in "fc" and not bool(xp.isfinite(array).all()):
            return path
    return None


def check_finite_input(who: str, x: Any) -> None:
    """A one-line error when the input ``x`` of a trained model holds NaN or infinite values,
    naming how many and where the first is.

    Not allowed on purpose either: BatchNorm and sign turn NaN into a confident class (sign(NaN)
    reads as -1), so such an input would get an answer it does not deserve. Replace the values
    first if that is what you mean (``np.nan_to_num(x)``).
    """
    xp = get_array_module(x)
    bad = ~xp.isfinite(x)
    count = int(bad.sum())
    if count:
        first = tuple(int(i) for i in np.unravel_index(int(bad.argmax()), x.shape))
        raise DTypeError(f"{who}: x holds {count} NaN or infinite value{'s' if count > 1 else ''}"
                         f" (the first at index {first}, sample {first[0]}); a model cannot "
                         f"answer for them: replace them first (np.nan_to_num)")


# --- the array checks every layer, op and kernel body shares ------------------------------

#: what each array kind accepts, for the error message
_KIND_NAMES = {"numpy": "a NumPy array", "cupy": "a CuPy array on the GPU",
               "any": "a NumPy or CuPy array"}


def require_array(fn: str, name: str, x: Any, kind: str = "any") -> None:
    """``x`` must be an array of ``kind``: "numpy", "cupy" or "any" (either)."""
    is_cupy = type(x).__module__.startswith("cupy")
    ok = {"numpy": isinstance(x, np.ndarray), "cupy": is_cupy,
          "any": isinstance(x, np.ndarray) or is_cupy}[kind]
    if not ok:
        hint = " (move it with minibnn.backend.to_device(x, 'gpu'))" if kind == "cupy" else ""
        raise DTypeError(f"{fn}: {name} must be {_KIND_NAMES[kind]}, got "
                         f"{type(x).__name__}{hint}")


def require_float(fn: str, name: str, x: Any, kind: str = "any") -> None:
    """``x`` must be a float32 or float64 array of ``kind`` (see ``require_array``)."""
    require_array(fn, name, x, kind)
    if x.dtype.kind != "f" or x.dtype.itemsize not in (4, 8):   # what NumPy names float32/float64
        raise DTypeError(f"{fn}: {name} must have dtype float32 or float64, got {x.dtype}")
