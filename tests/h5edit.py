"""Hand-editing a sealed HDF5 file in a test: open it for writing and re-seal its checksums
on close, so the test reaches the structural check it is aimed at instead of the checksum."""
from contextlib import contextmanager
from typing import Any, Iterator

import h5py

from minibnn.run import integrity


@contextmanager
def edited(path: str) -> Iterator[Any]:
    """``h5py.File(path, "a")`` whose checksums are recomputed when the block ends."""
    with h5py.File(path, "a") as f:
        yield f
        integrity.seal(f)
