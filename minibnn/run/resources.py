"""What this machine has room for: physical memory and free disk space, and byte sizes as
people read them.  The up-front refusals ("needs ~292 GiB, this machine has 24 GiB") use these.
"""
from __future__ import annotations

import os
import shutil

import numpy as np

from minibnn.errors import DataFileError, MinibnnError


def physical_memory() -> int | None:
    """This machine's physical memory in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``; whole bytes below 1 KiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def check_memory(need: float, what: str, advice: str, have: int | None = None) -> None:
    """Refuse now, in one line, work that needs more than ``have`` bytes (default: this
    machine's physical memory)."""
    have = physical_memory() if have is None else have
    if have is not None and need > have:
        raise MinibnnError(f"{what} needs ~{format_bytes(need)}, this machine has "
                           f"{format_bytes(have)}: {advice}")


def check_weight_fits(shape: tuple[int, ...], dtype: object) -> None:
    """Refuse, before allocating, a weight whose initialisation cannot fit in memory: its
    float64 random draw plus the weight in ``dtype`` (training needs more again: the gradient
    and the optimiser's buffers)."""
    need = float(np.prod(shape, dtype=np.float64)) * (8 + np.dtype(dtype).itemsize)
    check_memory(need, f"initialising a weight of shape {tuple(shape)}",
                 "make the model smaller")


def check_free_space(path: str, needed: int) -> None:
    """Fail now, in one line, when the folder of ``path`` has less than ``needed`` bytes free
    (a new run file is written beside the old one before it replaces it)."""
    directory = os.path.dirname(os.path.abspath(path))
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise DataFileError(f"not enough disk space for {path}: it needs ~"
                            f"{format_bytes(needed)}, {format_bytes(free)} free in {directory}")
