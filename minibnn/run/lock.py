"""One writer at a time: an advisory ``fcntl`` lock on a lock file, naming its holder.

    with hold("runs/sweep/.lock", "the sweep in runs/sweep"):
        ...                      # a second process gets a one-line error naming our pid
    with one_writer("runs/x.h5"):   # the lock of a run file: runs/x.h5.lock
        ...

The lock is released when the block ends or the process dies (the kernel drops it, even after
kill -9), so a stale lock file never blocks anyone. A block that ends removes its lock file
(no ``RUN.h5.lock`` stays beside a run file, whether the command worked or failed). Removing a
lock file races with a second process that opened it just before: so a process that gets the
lock checks that the path still names the file it locked, and tries again if not. POSIX only
(``fcntl``). On a file system without locks (NFS without lockd, Lustre without ``-o flock``)
the block runs unlocked after a one-line warning.
"""
from __future__ import annotations

import errno
import fcntl
import os
import sys
from contextlib import contextmanager
from typing import Iterator

from minibnn.errors import MinibnnError, os_reason

#: what flock says on a file system that has no locks
NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP)


@contextmanager
def hold(path: str, what: str) -> Iterator[None]:
    """Hold the exclusive lock on ``path`` (created if needed) for the block; the block's end
    removes the file."""
    fd, locked = _acquire(path, what)
    try:
        yield
    finally:
        if locked:
            try:
                os.unlink(path)          # while still holding it: see the module docstring
            except OSError:
                pass
        os.close(fd)


def _acquire(path: str, what: str) -> tuple[int, bool]:
    """Open and lock ``path``: (fd, whether it is locked), or a one-line MinibnnError."""
    for _ in range(100):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise MinibnnError(f"cannot lock {what} ({path}: {os_reason(exc)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise MinibnnError(f"{what} is in use by process {holder} (one writer at a "
                               "time; wait for it or stop it)") from None
        except OSError as exc:
            if exc.errno not in NO_LOCKS:
                os.close(fd)
                raise MinibnnError(f"cannot lock {what} ({path}: {os_reason(exc)})"
                                   ) from None
            print(f"minibnn: warning: the file system of {path} has no locks; writing {what} "
                  "unlocked (do not start a second writer)", file=sys.stderr)
            return fd, False
        if _same_file(fd, path):
            try:                         # the holder's pid, for the next one's message; a
                os.ftruncate(fd, 0)      # full disk must not turn the lock into an error
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError:
                pass
            return fd, True
        os.close(fd)                     # its holder removed it meanwhile: lock the new one
    raise MinibnnError(f"cannot lock {what} ({path}: it keeps being replaced)")


def _same_file(fd: int, path: str) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def remove_stale_temporaries(path: str) -> list[str]:
    """Remove the temporary files a killed write of ``path`` left behind (only names of
    ``io.atomic_path``'s own pattern for ``path``); call it holding ``path``'s writer lock,
    so no live writer owns them.  Returns the names removed."""
    from minibnn.run.files import temporary_pattern

    directory = os.path.dirname(os.path.abspath(path))
    pattern, removed = temporary_pattern(path), []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in sorted(names):
        if pattern.fullmatch(name):
            try:
                os.remove(os.path.join(directory, name))
                removed.append(name)
            except OSError:
                pass
    return removed


@contextmanager
def one_writer(path: str, what: str = "run file") -> Iterator[None]:
    """Hold ``path``'s writer lock (the sidecar ``PATH.lock``) for the block, first clearing
    its stale temporaries: a second writer, or a ``--resume`` of a file being written, is a
    one-line error naming the holder's pid.  ``path`` must name a file."""
    if not path or path.endswith(os.sep) or os.path.isdir(path):
        raise MinibnnError(f"cannot write {what} {path!r}: give a file name")
    with hold(path + ".lock", f"{what} {path}"):
        remove_stale_temporaries(path)
        yield
