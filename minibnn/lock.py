"""One writer at a time: an advisory ``fcntl`` lock on a lock file, naming its holder.

    with hold("runs/sweep/.lock", "the sweep in runs/sweep"):
        ...                      # a second process gets a one-line error naming our pid

The lock is released when the block ends or the process dies (the kernel drops it, even after
kill -9), so a stale lock file never blocks anyone.  POSIX only (``fcntl``).
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from typing import Iterator

from minibnn.errors import MinibnnError


@contextmanager
def hold(path: str, what: str) -> Iterator[None]:
    """Hold the exclusive lock on ``path`` (created if needed) for the block."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise MinibnnError(f"cannot lock {what} ({path}: {exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise MinibnnError(f"{what} is in use by process {holder} (one writer at a "
                               "time; wait for it or stop it)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
