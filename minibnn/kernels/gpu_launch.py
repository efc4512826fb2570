"""Launching the kernels of ``cuda_sources`` on CuPy arrays: the one place CuPy is asked for.

``kernel(spec, *types)`` is the ``cupy.RawKernel`` of one instance (compiled by CuPy on its
first launch from exactly the text ``cuda_build`` compiles in CI); ``launch`` runs it over a
number of items with a grid that never exceeds the device's limits. ``gpu.py`` and
``gpu_channels_last.py`` (the CUDA bodies) launch through here. Importing this module never
imports CuPy; ``cupy_for(fn)`` does on first use, or raises a one-line ``DeviceError``.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from minibnn.errors import DeviceError, ShapeError
from minibnn.kernels import cuda_sources as src

#: threads per block of the elementwise kernels
BLOCK = 256
#: the most blocks an elementwise launch uses: the kernels walk grid-stride loops, so larger
#: arrays need no larger grid (and the flip counters get at most this many atomics)
MAX_BLOCKS = 8192

_CUPY: Any = None       # the cupy module, once a device has been seen


def cupy_for(fn: str) -> Any:
    """The ``cupy`` module, or a one-line DeviceError when there is no usable CUDA GPU."""
    global _CUPY
    if _CUPY is None:
        from minibnn.backend import gpu_available

        if not gpu_available():
            raise DeviceError(f"{fn} needs a CUDA GPU, but none is available "
                              f"(CuPy is not installed or sees no device)")
        import cupy

        _CUPY = cupy
    return _CUPY


def ctype(dtype: Any) -> str:
    """The C type of a NumPy dtype a kernel is instantiated for (``cuda_sources.CTYPES``)."""
    return src.CTYPES[np.dtype(dtype).name]


def instance(spec: src.CudaKernel, *dtypes: Any) -> tuple[str, ...] | None:
    """The C types of ``spec``'s instance for these NumPy dtypes, or None when it has none
    (the body then runs its reference, which handles every dtype the op accepts)."""
    types = tuple(src.CTYPES.get(np.dtype(d).name, "") for d in dtypes)
    return types if types in spec.variants else None


@lru_cache(maxsize=None)
def kernel(spec: src.CudaKernel, *types: str) -> Any:
    """The ``cupy.RawKernel`` of one instance of ``spec`` (compiled on its first launch)."""
    entry, source = spec.instance(*types)
    return cupy_for(spec.name).RawKernel(source, entry, options=src.NVRTC_OPTIONS)


def launch(spec: src.CudaKernel, types: tuple[str, ...], total: int, args: tuple[Any, ...],
           threads_per_item: int = 1) -> None:
    """Launch an instance of ``spec`` over ``total`` items of ``threads_per_item`` threads
    each (1 for the grid-stride kernels, 32 for the one-warp-per-word packers)."""
    if total == 0:
        return
    blocks = -(-total * threads_per_item // BLOCK)
    if threads_per_item == 1:
        blocks = min(blocks, MAX_BLOCKS)
    elif blocks >= 2 ** 31:
        raise ShapeError(f"{spec.name}: {total} words need more than 2**31 - 1 blocks")
    kernel(spec, *types)((blocks,), (BLOCK,), args)
