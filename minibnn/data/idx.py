"""The IDX file format of MNIST and Fashion-MNIST (LeCun et al.), gzip-compressed or raw.

Layout (all integers big-endian):
    bytes 0-1   0x00 0x00
    byte  2     element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
                0x0E float64
    byte  3     number of dimensions d
    4*d bytes   the size of each dimension (uint32)
    then        prod(sizes) elements, row-major
So train-images-idx3-ubyte has magic 0x00000803 and dims (60000, 28, 28), and
train-labels-idx1-ubyte has magic 0x00000801 and dims (60000,).
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from minibnn.errors import DataFileError, os_reason

#: IDX element type code -> big-endian NumPy dtype.
IDX_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
             0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_CODES = {dt.newbyteorder("=").str[1:]: code for code, dt in IDX_TYPES.items()}
GZIP_MAGIC = b"\x1f\x8b"


def read_bytes_maybe_gzip(path: str | os.PathLike) -> bytes:
    """The file's contents, gunzipped when it starts with the gzip magic (whatever its name)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataFileError(f"{path}: cannot read ({os_reason(e)})") from None
    if raw[:2] != GZIP_MAGIC:
        if path.suffix == ".gz":
            raise DataFileError(f"{path}: not a gzip file (bad gzip header)")
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataFileError(f"{path}: corrupt gzip data ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'truncated'})") from None


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes into an array in native byte order; DataFileError naming ``source``."""
    if len(data) < 4:
        raise DataFileError(f"{source}: too short for an IDX header ({len(data)} bytes)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in IDX_TYPES or ndim == 0:
        raise DataFileError(f"{source}: bad IDX magic number 0x{data[:4].hex()} "
                            "(expected 0x0000TTDD: type TT, DD dimensions)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFileError(f"{source}: truncated IDX header (needs {header} bytes, "
                            f"file has {len(data)})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_TYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header
    if found < expected:
        raise DataFileError(f"{source}: truncated IDX data (dims {dims} need {expected} bytes, "
                            f"found {found})")
    if found > expected:
        raise DataFileError(f"{source}: {found - expected} unexpected bytes after the IDX data "
                            f"(dims {dims})")
    arr = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return arr.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw, detected by content) into a NumPy array."""
    return parse_idx(read_bytes_maybe_gzip(path), str(path))


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX bytes of ``array`` (used by the tests and by converters)."""
    a = np.asarray(array)
    key = a.dtype.newbyteorder("=").str[1:]
    if key not in _CODES:
        raise DataFileError(f"IDX cannot store dtype {a.dtype}")
    code = _CODES[key]
    head = struct.pack(">HBB", 0, code, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    return head + np.ascontiguousarray(a, dtype=IDX_TYPES[code]).tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` as IDX; gzip it when ``compress`` (default: the name ends in .gz)."""
    path = Path(path)
    data = encode_idx(array)
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path
