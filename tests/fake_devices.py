"""Arrays that stand in for CuPy's on the CPU, for tests: NumPy under CuPy's rules.

``DeviceArray`` is an ndarray that plays a device array: results stay device arrays (0-d
arrays, never NumPy scalars, as in CuPy), it names its own array namespace, and every
conversion to a host value (``int``, ``float``, ``bool``, ``item``, ``get``, printing) is logged
in ``READS`` with the minibnn line that asked for it. ``Namespace(numpy)`` is the matching
module: NumPy whose functions return device arrays. ``tests/test_host_reads.py`` uses them as a
GPU that is NumPy; ``tests/test_cuda_emulated.py`` adds an emulated ``RawKernel``.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np

#: NumPy functions that answer about dtypes and shapes, not array values
_METADATA = {"dtype", "result_type", "can_cast", "issubdtype", "isscalar", "ndim", "shape",
             "size", "iinfo", "finfo", "promote_types", "broadcast_shapes"}


def _where() -> str:
    """The minibnn line that asked for the read (the innermost frame in the package)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if "/minibnn/" in name and "/tests/" not in name:
            return f"{Path(name).name}:{frame.f_lineno} ({frame.f_code.co_name})"
        frame = frame.f_back
    return "outside minibnn"


class DeviceArray(np.ndarray):
    """A NumPy array standing in for a CuPy array: results stay device arrays (0-d arrays,
    never scalars, as in CuPy) and every conversion to a host value is logged in ``READS``.
    ``NAMESPACE`` is the module ``__array_namespace__`` names (set by the test using it)."""

    NAMESPACE: Any = None

    def __array_namespace__(self, api_version: Any = None) -> Any:
        return DeviceArray.NAMESPACE

    def __array_wrap__(self, arr: Any, context: Any = None, return_scalar: bool = False) -> Any:
        return device(arr, type(self))

    def _host(self, how: str) -> np.ndarray:
        READS.append(f"{how} at {_where()}")
        return self.view(np.ndarray)

    def __int__(self) -> int:
        return int(self._host("int"))

    def __float__(self) -> float:
        return float(self._host("float"))

    def __bool__(self) -> bool:
        return bool(self._host("bool"))

    def __index__(self) -> int:
        return self._host("index").__index__()

    def item(self, *args: Any) -> Any:
        return self._host("item").item(*args)

    def tolist(self) -> Any:
        return self._host("tolist").tolist()

    def get(self) -> np.ndarray:
        """CuPy's device -> host copy (``backend.to_numpy`` calls it)."""
        return self._host("get").copy()

    def __repr__(self) -> str:
        return repr(self._host("repr"))

    def __format__(self, spec: str) -> str:
        return format(self._host("format"), spec)

    def __getitem__(self, key: Any) -> Any:
        return device(super().__getitem__(key), type(self))



def _reduction(name: str) -> Callable[..., Any]:
    """A reduction method of DeviceArray: a 0-d device array where NumPy gives a scalar."""
    def method(self: DeviceArray, *args: Any, **kwargs: Any) -> Any:
        return device(getattr(np.ndarray, name)(self, *args, **kwargs), type(self))
    method.__name__ = name
    return method


for _name in ("argmax", "argmin", "max", "min", "sum", "mean", "any", "all"):
    setattr(DeviceArray, _name, _reduction(_name))


def device(value: Any, kind: type = DeviceArray) -> Any:
    """NumPy results as device arrays: arrays viewed, scalars as 0-d arrays (CuPy's rules)."""
    if isinstance(value, np.ndarray):
        return value if isinstance(value, kind) else value.view(kind)
    if isinstance(value, (np.generic, bool, int, float)):
        return np.asarray(value).view(kind)
    if isinstance(value, tuple):
        return tuple(device(v, kind) for v in value)
    return value


class Namespace:
    """A module of NumPy (or a submodule) whose functions return ``kind`` device arrays."""

    def __init__(self, module: types.ModuleType, kind: type = DeviceArray) -> None:
        self._module = module
        self._kind = kind

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._module, name)
        if isinstance(value, types.ModuleType):
            return Namespace(value, self._kind)
        if not callable(value) or isinstance(value, type) or name in _METADATA:
            return value
        return lambda *args, **kwargs: device(value(*args, **kwargs), self._kind)


READS: list[str] = []
